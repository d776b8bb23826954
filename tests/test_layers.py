"""The layers as the code enforces them: import-linter's contracts (pyproject), a torch-free
``import medfuse`` with a typed public surface, and extras that match what each verb imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or pytest.fail("import-linter is a [dev] dependency")
    r = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "0 broken" in r.stdout and "3 kept" in r.stdout


def test_import_medfuse_is_torch_free_and_lists_its_surface() -> None:
    code = (
        "import sys, medfuse\n"
        "heavy = {'torch', 'pandas', 'scipy', 'sklearn', 'pydantic', 'onnxruntime'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
        "print(','.join(dir(medfuse)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded, names = r.stdout.splitlines()
    assert loaded == "[]"
    want = {"train", "evaluate", "load", "load_spec", "Spec", "Package", "Predictor"}
    want |= {"MedfuseError", "SpecError", "DataError", "PackageError", "OnnxPredictor"}
    assert want <= set(names.split(",")), names
    assert "TYPE_CHECKING" not in names and "importlib" not in names


def test_the_onnx_runtime_module_needs_only_the_base_install() -> None:
    """numpy, onnxruntime, and pydantic/pyyaml for the schema of medfuse.json (checked on every
    load); Pillow only once an image file is read, rich never."""
    code = (
        "import sys, medfuse.runtime\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pandas', 'scipy', "
        "'sklearn', 'rich', 'PIL', 'pyarrow'}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_every_public_name_resolves_to_its_definition() -> None:
    import medfuse
    from medfuse.core.spec import Spec
    from medfuse.inference.package import Package
    from medfuse.inference.predictor import Predictor

    for name in medfuse.__all__:
        assert getattr(medfuse, name) is not None, name
    assert medfuse.Spec is Spec and medfuse.Package is Package and medfuse.Predictor is Predictor
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = medfuse.nope  # type: ignore[attr-defined]


def test_package_is_typed() -> None:
    import typing

    from medfuse.inference.package import Package

    hints = typing.get_type_hints(Package)
    assert "Any" not in str(hints["spec"]) and "Any" not in str(hints["model"])
    assert "CompositeModel" in str(hints["model"]) and hints["spec"].__name__ == "Spec"


# distribution name -> its top-level module, where they differ
MODULE_OF = {
    "scikit-learn": "sklearn",
    "python-multipart": "multipart",
    "torch-pruning": "torch_pruning",
    "pillow": "PIL",
    "pyyaml": "yaml",
    "mlflow-skinny": "mlflow",
    "pyopenssl": "OpenSSL",
}


def _name(req: str) -> str:
    for sep in "<>=;[ ":
        req = req.split(sep)[0]
    return req.strip().lower()


def test_extras_in_pyproject_match_medfuse_core_optional() -> None:
    from medfuse.core.optional import EXTRA_INCLUDES, EXTRA_OF_MODULE

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    own: dict[str, str] = {}  # module -> the extra that lists its distribution itself
    includes: dict[str, set[str]] = {}
    for extra, reqs in extras.items():
        includes[extra] = {extra}
        for req in reqs:
            name = _name(req)
            if name == "medfuse":
                includes[extra] |= set(req.split("[")[1].split("]")[0].split(","))
            elif extra not in ("all", "dev"):
                own[MODULE_OF.get(name, name.replace("-", "_"))] = extra
    for _ in extras:  # transitive: compress includes export, which includes train
        for extra, inc in includes.items():
            includes[extra] = inc.union(*(includes.get(i, set()) for i in inc))
    for module, extra in EXTRA_OF_MODULE.items():
        if module not in ("starlette",):  # comes with fastapi
            assert own.get(module) == extra, module
    for extra, inc in EXTRA_INCLUDES.items():
        assert set(inc) == includes[extra], extra
    assert includes["all"] >= set(EXTRA_INCLUDES) and "all" in includes["dev"]
    base = {MODULE_OF.get(_name(r), _name(r)) for r in project["dependencies"]}
    assert base == {"numpy", "yaml", "pydantic", "onnxruntime", "PIL", "rich"}
    assert not base & set(EXTRA_OF_MODULE)
