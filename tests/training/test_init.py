"""train.init: starting a model from another package's weights."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from safetensors.torch import load_file

from medfuse.api import train
from medfuse.core.errors import SpecError


def test_init_copies_the_named_branch_and_nothing_else(tiny_spec, tiny_package, tmp_path) -> None:
    spec = copy.deepcopy(tiny_spec)
    spec["train"].update(
        epochs=0, init={"package": str(tiny_package), "modules": ["branches.image"]}
    )
    res = train(spec, out=tmp_path / "b", device="cpu", progress=False, seed=123)
    src = load_file(str(tiny_package / "model.safetensors"))
    dst = load_file(str(res.package / "model.safetensors"))
    image = [k for k in src if k.startswith("branches.image.")]
    assert image and all((src[k] == dst[k]).all() for k in image)
    # the rest was initialised afresh from another seed
    assert not (src["head.0.weight"] == dst["head.0.weight"]).all()
    rec = json.loads((res.package / "medfuse.json").read_text())["training"]["init"]
    assert rec["tensors"] == len(image) and rec["modules"] == {"branches.image": "branches.image"}
    assert (
        rec["weights_sha256"]
        == json.loads((tiny_package / "medfuse.json").read_text())["files"]["model.safetensors"]
    )


def test_init_then_training_starts_from_the_copy(tiny_spec, tiny_package, tmp_path) -> None:
    spec = copy.deepcopy(tiny_spec)
    # every branch; a learning rate so small that one epoch barely moves the weights
    spec["train"].update(epochs=1, lr=1e-6, init={"package": str(tiny_package)})
    res = train(spec, out=tmp_path / "b", device="cpu", progress=False, seed=123)
    src = load_file(str(tiny_package / "model.safetensors"))
    dst = load_file(str(res.package / "model.safetensors"))
    for k in ("branches.image.stem.0.weight", "branches.signal.rnn.weight_ih_l0"):
        # trained (not frozen), and from the copied weights, not from a fresh seed-123 start
        assert 0 < float((src[k] - dst[k]).abs().max()) < 1e-3, k
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["training"]["init"]["modules"] == {"branches": "branches"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"modules": ["branches.ecg"]}, "no weights under 'branches.ecg'"),
        ({"modules": {"branches.image": "branches.nothing"}}, "no counterpart 'branches.nothing"),
        ({"package": "/nonexistent/pkg"}, "cannot load /nonexistent/pkg"),
    ],
)
def test_init_errors_name_the_field(tiny_spec, tiny_package, tmp_path, change, message) -> None:
    spec = copy.deepcopy(tiny_spec)
    spec["train"].update(epochs=0, init={"package": str(tiny_package), **change})
    with pytest.raises(SpecError, match=r"train\.init") as e:
        train(spec, out=tmp_path / "b", device="cpu", progress=False)
    assert message in str(e.value)
    assert not (tmp_path / "b").exists()  # no package written


def test_init_refuses_a_shape_mismatch_and_a_tampered_package(
    tiny_spec, tiny_package, tmp_path
) -> None:
    spec = copy.deepcopy(tiny_spec)
    spec["branches"]["image"]["width"] = 6
    spec["train"].update(epochs=0, init={"package": str(tiny_package)})
    with pytest.raises(SpecError, match="has shape"):
        train(spec, out=tmp_path / "b", device="cpu", progress=False)
    bad = tmp_path / "tampered"
    bad.mkdir()
    for f in tiny_package.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    w = bytearray((bad / "model.safetensors").read_bytes())
    w[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(w))
    spec = copy.deepcopy(tiny_spec)
    spec["train"].update(epochs=0, init={"package": str(bad)})
    with pytest.raises(SpecError, match="cannot load"):
        train(spec, out=tmp_path / "c", device="cpu", progress=False)


def test_resume_needs_the_checkpoint_not_the_source_package(
    tiny_spec, tiny_package, tmp_path
) -> None:
    src = shutil.copytree(tiny_package, tmp_path / "src")
    spec = copy.deepcopy(tiny_spec)
    spec["train"].update(epochs=3, init={"package": str(src), "modules": ["branches.image"]})

    def crash(record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt("simulated crash after epoch 2")

    with pytest.raises(KeyboardInterrupt):
        train(spec, out=tmp_path / "b", device="cpu", progress=False, on_epoch=crash)
    shutil.rmtree(src)  # the source package is gone; the checkpoint must suffice
    res = train(spec, out=tmp_path / "b", device="cpu", progress=False, resume=True)
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["training"]["init"]["package"] == str(src)
    assert meta["training"]["stages"][0]["epochs_run"] == 3
    # without the checkpoint, the missing source is an error again
    with pytest.raises(SpecError, match="cannot load"):
        train(spec, out=tmp_path / "c", device="cpu", progress=False, resume=True)


def test_init_refuses_a_branch_whose_inputs_mean_something_else(tiny_spec, tiny_package) -> None:
    """train.init copied a tabular branch into a spec listing the same columns in another order
    (same shapes): its first layer multiplied one column by another's weights, and froze them,
    without a word."""
    from medfuse.core.spec import InitSpec, parse_spec
    from medfuse.inference.package import load_package
    from medfuse.models import build_model
    from medfuse.training.init import init_from_package

    src = load_package(tiny_package).spec.to_dict()
    cols = src["modalities"]["tabular"]["columns"]
    perm = copy.deepcopy(src)
    perm["modalities"]["tabular"]["columns"] = cols[::-1]
    spec = parse_spec(perm)
    for modules in (["branches.tabular"], ["branches"]):
        init = InitSpec(package=str(tiny_package), modules=modules)
        with pytest.raises(SpecError, match=r"tabular\.columns: .* there, .* here"):
            init_from_package(build_model(spec), init, spec)
    same = parse_spec(src)  # the same inputs: copied
    init = InitSpec(package=str(tiny_package), modules=["branches.tabular"])
    assert init_from_package(build_model(same), init, same)["tensors"] > 0


def test_init_refuses_a_head_over_modalities_in_another_order(tiny_package) -> None:
    """The head reads the branches' features in the modalities' order: copied into a spec that
    lists them in another order (equal widths), it read one modality's features as another's."""
    from medfuse.core.spec import InitSpec, parse_spec
    from medfuse.inference.package import load_package
    from medfuse.models import build_model
    from medfuse.training.init import init_from_package

    src = load_package(tiny_package).spec.to_dict()
    moved = copy.deepcopy(src)
    moved["modalities"] = dict(reversed(list(src["modalities"].items())))
    spec = parse_spec(moved)
    init = InitSpec(package=str(tiny_package), modules=["head"])
    with pytest.raises(SpecError, match=r"reads its modalities in the order"):
        init_from_package(build_model(spec), init, spec)


def _sex_table(path, values) -> str:
    rng = __import__("numpy").random.default_rng(0)
    rows = ["id,age,sex,label"] + [
        f"c{i},{40 + i % 30},{values[i % len(values)]},{int(rng.random() < 0.5)}" for i in range(40)
    ]
    path.write_text("\n".join(rows) + "\n")
    return f"manifest:{path}"


def _sex_spec(source: str) -> dict:
    return {
        "name": "sex",
        "task": {"type": "binary"},
        "data": {"source": source},
        "modalities": {"clinical": {"kind": "tabular", "columns": ["age", "sex"]}},
        "branches": {"clinical": {"type": "mlp", "hidden": 4, "out_features": 4}},
        "head": {"hidden": 4},
        "train": {"epochs": 1, "batch_size": 8, "early_stopping": None, "seed": 0},
    }


def test_init_refuses_a_branch_whose_text_columns_are_coded_otherwise(tmp_path) -> None:
    """The same column names in the same order, but the text values coded otherwise: a site
    writing sex as M/W (M coded 0) got the branch trained where F was 0 and M 1, so each
    patient's sex was read as the other, without a word."""
    src = train(
        _sex_spec(_sex_table(tmp_path / "a.csv", ["F", "M"])), out=tmp_path / "a", progress=False
    ).package
    spec = _sex_spec(_sex_table(tmp_path / "b.csv", ["M", "W"]))
    spec["train"]["init"] = {"package": str(src), "modules": ["branches.clinical"]}
    with pytest.raises(
        SpecError, match=r"clinical\.sex: coded \['F', 'M'\] there, \['M', 'W'\] here"
    ):
        train(spec, out=tmp_path / "b", device="cpu", progress=False)
    assert not (tmp_path / "b").exists()
    # a number here where the source read text: refused alike
    spec["data"]["source"] = _sex_table(tmp_path / "c.csv", ["0", "1"])
    with pytest.raises(SpecError, match=r"clinical\.sex: coded \['F', 'M'\] there, 'as a number'"):
        train(spec, out=tmp_path / "c", device="cpu", progress=False)
    # a site without one of the source's values: the shared ones coded alike, copied
    three = _sex_spec(_sex_table(tmp_path / "e.csv", ["F", "M", "U"]))
    src3 = train(three, out=tmp_path / "e", progress=False).package
    spec["train"]["init"]["package"] = str(src3)
    spec["data"]["source"] = _sex_table(tmp_path / "f.csv", ["F", "M"])
    assert train(spec, out=tmp_path / "f", device="cpu", progress=False).package.exists()
    spec["train"]["init"]["package"] = str(src)
    # the same values: copied
    spec["data"]["source"] = _sex_table(tmp_path / "d.csv", ["M", "F"])
    res = train(spec, out=tmp_path / "d", device="cpu", progress=False)
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["training"]["init"]["tensors"] > 0
