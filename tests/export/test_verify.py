"""``medfuse export`` / ``medfuse verify``: what is written, what fails, and exit statuses."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medfuse.cli import main
from medfuse.core.errors import MedfuseError
from medfuse.core.package import read_meta, update_package
from medfuse.export.verify import VERIFICATION, verify_package


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_export_writes_into_the_package(exported_package: Path) -> None:
    import onnx

    meta = read_meta(exported_package)  # every checksum verified
    assert {"model.onnx", VERIFICATION, "model.safetensors"} <= set(meta["files"])
    assert meta["runtime"] == {
        "default": "onnx",
        "onnx_file": "model.onnx",
        "precision": "fp32",
        "opset": 17,
    }
    assert meta["exports"]["onnx"]["max_abs_diff"] <= 1e-4
    assert meta["verification"]["source"].startswith("val split of synthetic")
    graph = onnx.load(str(exported_package / "model.onnx")).graph
    names = [i.name for i in graph.input]
    mods = list(meta["spec"]["modalities"])
    assert names == [*mods, *(f"mask_{m}" for m in mods)]
    for i in graph.input:  # dynamic batch axis on every input
        assert i.type.tensor_type.shape.dim[0].dim_param
    with np.load(exported_package / VERIFICATION) as d:
        assert d["logits"].shape == (16, 1)
        assert all((d[f"mask_{m}"] == 0).sum() >= 1 for m in mods)  # each modality masked once
        assert np.isnan(d["raw.tabular"][d["mask_tabular"] == 0]).all()


def test_verify_cli_ok_and_parity_failure(exported_package: Path, tmp_path: Path, capsys) -> None:
    assert main(["verify", str(exported_package), "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    # expected outputs off by 1e-3 (checksums kept valid): every runtime must fail, exit 1
    bad = _copy(exported_package, tmp_path / "bad")
    with np.load(bad / VERIFICATION) as d:
        arrays = {k: d[k] for k in d.files}
    arrays["logits"] = arrays["logits"] + 1e-3
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    update_package(bad, add={VERIFICATION: buf.getvalue()})
    assert main(["verify", str(bad), "--runtime", "onnx"]) == 1
    report = verify_package(bad)
    assert not report.ok
    assert {c.runtime: c.status for c in report.checks} == {
        "package": "fail",  # the stored probabilities no longer follow from the stored logits
        "torch": "fail",
        "onnx": "fail",
        "pt2": "skipped",
    }
    # a looser tolerance passes
    assert main(["verify", str(bad), "--tolerance", "2e-3"]) == 0


def test_tampered_file_fails_checksums(exported_package: Path, tmp_path: Path, capsys) -> None:
    bad = _copy(exported_package, tmp_path / "tampered")
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert main(["verify", str(bad)]) == 4
    assert "sha256" in capsys.readouterr().err


def test_named_runtime_that_is_absent_fails(exported_package: Path) -> None:
    report = verify_package(exported_package, runtimes=["pt2"])
    pt2 = next(c for c in report.checks if c.runtime == "pt2")
    assert not report.ok and "no model.pt2" in pt2.note


def test_verify_on_a_whole_split(exported_package: Path) -> None:
    report = verify_package(exported_package, split="test")
    assert report.ok, report.to_dict()
    assert all(c.n == 48 for c in report.checks if c.status == "ok")


def test_bad_format_is_refused(exported_package: Path) -> None:
    from medfuse.export.exporter import export_package

    with pytest.raises(MedfuseError, match="Allowed: onnx, pt2"):
        export_package(exported_package, format="tflite")


def test_int8_package_is_verified_by_label_agreement(exported_package: Path, tmp_path: Path):
    """An INT8 package as ``medfuse quantize`` writes it: verified by label agreement."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    shutil.copyfile(exported_package / "model.onnx", src)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    q = update_package(
        exported_package,
        tmp_path / "q",
        add={"model.onnx": dst.read_bytes()},
        meta_updates={
            "runtime": {"default": "onnx", "onnx_file": "model.onnx", "precision": "int8"}
        },
    )
    report = verify_package(q)
    rows = {c.runtime: c for c in report.checks}
    onnx = rows["onnx"]
    assert onnx.precision == "int8" and onnx.criterion.startswith("label agreement")
    assert onnx.max_abs_diff is not None and onnx.max_abs_diff > 0  # it IS a different model
    assert onnx.status == ("ok" if onnx.label_agreement >= 0.99 else "fail")
    assert rows["torch"].status == "ok"  # the fp32 weights are kept
    # export on an INT8 package keeps its model.onnx
    from medfuse.export.exporter import export_package

    before = read_meta(q)["files"]["model.onnx"]
    res = export_package(q, format="onnx", refresh=True)
    assert read_meta(q)["files"]["model.onnx"] == before
    assert any("INT8" in n for n in res.notes)


def test_moved_package_verifies_on_cpu_in_a_fresh_process(
    exported_package: Path, tmp_path: Path
) -> None:
    """Migration: the directory alone, copied elsewhere, verifies in a new process on CPU."""
    moved = _copy(exported_package, tmp_path / "elsewhere" / "model")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "medfuse", "verify", str(moved), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "verified" in res.stdout


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device to train on"
)
def test_gpu_trained_package_verifies_on_cpu(tiny_spec, tmp_path: Path) -> None:
    from medfuse.api import train
    from medfuse.export.exporter import export_package

    pkg = train(tiny_spec, out=tmp_path / "gpu", device="cuda", progress=False).package
    assert read_meta(pkg)["training"]["device"].startswith("cuda")
    gpu = export_package(pkg, device="cuda")  # expected outputs computed on CPU, checked on GPU
    assert gpu.report is not None and gpu.report.ok, gpu.report.to_dict()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [sys.executable, "-m", "medfuse", "verify", str(pkg), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_single_modality_package_exports_and_verifies(tmp_path: Path) -> None:
    """A one-modality package's verification inputs hold a sample with that modality absent;
    the raw -> preprocess -> ORT path (the input contract, which refuses a row with no usable
    input) is compared on the other samples instead of failing the export."""
    from medfuse.api import train
    from medfuse.export.exporter import export_package

    spec = {
        "name": "image-only",
        "task": {"type": "binary"},
        "data": {
            "source": "synthetic",
            "options": {"n_train": 64, "n_val": 32, "n_test": 32, "image_size": 8},
        },
        "modalities": {"image": {"kind": "image", "channels": 1, "size": [8, 8]}},
        "branches": {"image": {"type": "cnn", "width": 4, "depth": 1, "out_features": 4}},
        "fusion": {"type": "concat"},
        "head": {"hidden": 4},
        "train": {"epochs": 1, "batch_size": 32, "early_stopping": None},
    }
    pkg = train(spec, out=tmp_path / "pkg", device="cpu", progress=False).package
    res = export_package(pkg, format="onnx")
    assert res.report is not None and res.report.ok, res.report
    onnx = next(c for c in res.report.checks if c.runtime == "onnx")
    assert onnx.status == "ok" and "raw -> preprocess -> ORT" in onnx.note
