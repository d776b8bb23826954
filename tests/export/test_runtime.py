"""The torch-free runtime: same labels as the PyTorch predictor, without importing PyTorch."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medfuse import runtime
from medfuse.core import decision
from medfuse.core.errors import DataError, PackageError
from medfuse.core.readers import image_math

#: what a numpy + onnxruntime (+ pillow) machine lacks; importing any of them must fail there
#: the core needs numpy, pydantic and pyyaml (issue 16): medfuse.json's schema is checked on every
#: load, the torch-free runtime's included
FORBIDDEN = ("torch", "pandas", "scipy", "sklearn", "fastapi", "safetensors")


def _test_arrays(package: Path) -> dict[str, np.ndarray]:
    """Raw test inputs of the package's own data (synthetic), with some modalities masked.

    (Not validation: a Youden threshold is exactly one validation sample's probability, whose
    label is then decided by float rounding.)"""
    from medfuse.api import prepare_data
    from medfuse.core.package import read_meta

    meta = read_meta(package)
    from medfuse.core.spec import parse_spec

    _, bundle = prepare_data(parse_spec(meta["spec"]))
    val = bundle.test
    out = {m: a for m, a in val.arrays.items()}
    masks = {m: k.copy() for m, k in val.masks.items()}
    masks["signal"][::5] = 0
    out["signal"][::5] = 0
    masks["tabular"][1::7] = 0
    out["tabular"][1::7] = np.nan
    out.update({f"mask_{m}": k for m, k in masks.items()})
    return out


def test_runtime_predicts_like_torch_without_torch(exported_package: Path, tmp_path: Path) -> None:
    from medfuse.inference.predictor import load

    arrays = _test_arrays(exported_package)
    np.savez(tmp_path / "x.npz", **arrays)
    mods = ["image", "signal", "tabular"]
    batch = {m: arrays[m] for m in mods} | {"mask": {m: arrays[f"mask_{m}"] for m in mods}}
    ref = load(exported_package, device="cpu")
    p_ref = ref.predict_proba(batch)
    labels_ref = ref.predict(batch)

    script = textwrap.dedent(
        f"""
        import importlib.abc, json, sys
        FORBIDDEN = {FORBIDDEN!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:
                    raise ImportError(f"{{name}} is not installed on this machine")
        sys.meta_path.insert(0, Block())
        for name in FORBIDDEN:
            sys.modules.pop(name, None)
        import numpy as np
        from medfuse.core.onnx import load
        model = load(sys.argv[1])
        with np.load(sys.argv[2]) as d:
            mods = list(model.modalities)
            batch = {{m: d[m] for m in mods}}
            batch["mask"] = {{m: d["mask_" + m] for m in mods}}
        p = model.predict_proba(batch, batch_size=7)
        out = {{"p": p.tolist(), "labels": model.predict(batch),
               "loaded": sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)}}
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", script, str(exported_package), str(tmp_path / "x.npz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["labels"] == labels_ref
    assert np.abs(np.asarray(out["p"]) - p_ref).max() < 1e-5


def test_runtime_cli_matches_predict_verb(exported_package: Path, tmp_path: Path) -> None:
    """``python -m medfuse.runtime`` (torch-free) vs ``medfuse predict --runtime torch``."""
    import pandas as pd

    from medfuse.cli import main

    arrays = _test_arrays(exported_package)
    np.savez(tmp_path / "x.npz", **arrays)
    assert (
        main(
            [
                "predict",
                str(exported_package),
                "--input",
                str(tmp_path / "x.npz"),
                "--runtime",
                "torch",
                "--out",
                str(tmp_path / "torch.csv"),
            ]
        )
        == 0
    )
    rc = runtime.main(
        [
            str(exported_package),
            "--input",
            str(tmp_path / "x.npz"),
            "--out",
            str(tmp_path / "o.csv"),
        ]
    )
    assert rc == 0
    a, b = pd.read_csv(tmp_path / "torch.csv"), pd.read_csv(tmp_path / "o.csv")
    assert list(a.columns) == list(b.columns)
    assert (a["label"] == b["label"]).all()
    assert np.abs(a.iloc[:, 1].to_numpy() - b.iloc[:, 1].to_numpy()).max() < 1e-5


def test_runtime_needs_an_export(tiny_package: Path) -> None:
    with pytest.raises(PackageError, match="medfuse export"):
        runtime.load(tiny_package)


def test_runtime_checks_checksums(exported_package: Path, tmp_path: Path) -> None:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(exported_package, dst)
    data = bytearray((dst / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (dst / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="sha256"):
        runtime.load(dst)


@pytest.mark.parametrize(
    ("shape", "channels", "size"),
    [((1, 40, 30), 1, [16, 16]), ((3, 20, 20), 1, [28, 28]), ((1, 9, 13), 3, [16, 8])],
)
def test_fit_image_matches_scipy_zoom(shape, channels, size) -> None:
    """The one resize (numpy, used by every reader and entry point) is scipy's pixel-centre
    aligned linear zoom with edges repeated."""
    from scipy.ndimage import zoom

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    ref = x.mean(axis=0, keepdims=True) if channels == 1 and shape[0] != 1 else x
    ref = np.repeat(ref, channels, axis=0) if ref.shape[0] == 1 and channels > 1 else ref
    factors = [1.0] + [t / s for t, s in zip(size, ref.shape[1:])]
    ref = zoom(ref, factors, order=1, grid_mode=True, mode="nearest")
    ref = ref[(slice(None), *(slice(0, t) for t in size))]
    np.testing.assert_allclose(image_math.fit_image(x, channels, size), ref, atol=1e-5)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_probabilities_with_temperature(task: str) -> None:
    """Checked against scipy (training, evaluation and the runtime all use this function)."""
    from scipy.special import expit, softmax

    z = np.random.default_rng(1).normal(size=(9, 1 if task == "binary" else 4)) * 3
    want = {
        "binary": expit(z[:, 0] / 1.7),
        "multiclass": softmax(z / 1.7, axis=1),
        "multilabel": expit(z / 1.7),
    }[task]
    got = decision.probabilities(task, z, 1.7)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-12)
    labels = ["a", "b", "c", "d"][: 2 if task == "binary" else 4]
    decided = decision.decide(task, got, labels, 0.5)
    if task == "binary":
        assert decided == [labels[int(v >= 0.5)] for v in got]
    elif task == "multiclass":
        assert decided == [labels[i] for i in got.argmax(1)]
    else:
        assert decided[0] == [labels[j] for j in range(4) if got[0, j] >= 0.5]


def test_npy_header_is_checked_before_allocation() -> None:
    from numpy.lib import format as npformat

    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (200000, 200000)}
    npformat.write_array_header_1_0(buf, header)
    buf.write(b"\0" * 64)  # 160 GB promised, 64 bytes sent
    with pytest.raises(DataError, match="too large"):
        image_math.read_npy_bytes(buf.getvalue())
    ok = io.BytesIO()
    np.save(ok, np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(DataError, match="truncated"):
        image_math.read_npy_bytes(ok.getvalue()[:-4])
    assert image_math.read_npy_bytes(ok.getvalue()).shape == (2, 3)
    text = io.BytesIO()
    np.save(text, np.array(["a", "b"]))
    with pytest.raises(DataError, match="numeric"):
        image_math.read_npy_bytes(text.getvalue())


def test_npz_inputs_name_unknown_and_missing_modalities(tmp_path) -> None:
    from medfuse.core.inputs import Modality, Schema, coerce

    schema = Schema({"image": Modality("image", "image", (1, 4, 4), channels=1, size=(4, 4))})
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((2, 4, 4), np.float32), ecg=np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"\['ecg'\] are not modalities of this model \(image\)"):
        coerce(bad, schema)
    empty = tmp_path / "empty.npz"
    np.savez(empty, id=np.array(["a"]))
    with pytest.raises(DataError, match=r"holds none of the model's modalities \(image\)"):
        coerce(empty, schema)
    ok = tmp_path / "ok.npz"
    np.savez(ok, image=np.zeros((2, 4, 4), np.float32), mask_image=np.ones(2))
    b = coerce(ok, schema)
    assert b.arrays["image"].shape == (2, 1, 4, 4) and b.masks["image"].tolist() == [1.0, 1.0]
    assert b.ids == ["ok-0", "ok-1"]
    (tmp_path / "broken.npz").write_bytes(ok.read_bytes()[:40])
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        coerce(tmp_path / "broken.npz", schema)


def test_runtime_csv_equals_the_predict_verbs_cell_for_cell(
    exported_package: Path, tmp_path: Path
) -> None:
    """A row with no usable input: the torch-free runtime wrote ``nan`` where ``medfuse
    predict`` leaves the probability empty, so the two files of one run differed."""
    from medfuse.cli import main

    np.save(tmp_path / "img.npy", np.zeros((1, 16, 16), np.float32))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "m.csv").write_text(
        "id,image,signal,age,bmi,marker\na,img.npy,,50,25,0.1\nb,,,,,\nc,bad.png,,,,\n"
    )
    args = ["--input", str(tmp_path / "m.csv"), "--on-bad-row", "missing"]
    out = tmp_path / "torch.csv"
    assert (
        main(["predict", str(exported_package), *args, "--runtime", "onnx", "--out", str(out)]) == 0
    )
    assert runtime.main([str(exported_package), *args, "--out", str(tmp_path / "rt.csv")]) == 0
    text = (tmp_path / "rt.csv").read_bytes()
    assert text == out.read_bytes()  # bytes: line ends too (csv's default is \r\n)
    assert b"\nb,,," in text and b"\r" not in text
