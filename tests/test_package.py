"""The model package: reload gives identical outputs; tampering and truncation are refused;
saving is atomic."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import medfuse
from medfuse.core.errors import PackageError, SpecError
from medfuse.core.package import META, WEIGHTS, read_meta, update_package, write_package
from medfuse.data import load_data
from medfuse.inference.package import load_package


def test_package_contents(tiny_package) -> None:
    meta = read_meta(tiny_package)
    assert set(meta["files"]) >= {WEIGHTS, "metrics.json", "README.md", "metrics.jsonl"}
    assert meta["preprocessing"]["tabular"]["mean"] and meta["threshold"]["method"] == "youden"
    assert meta["versions"]["torch"] and meta["spec"]["modalities"]["signal"]["kind"] == "signal"
    metrics = json.loads((tiny_package / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in (
            "auroc",
            "auprc",
            "accuracy",
            "balanced_accuracy",
            "sensitivity",
            "specificity",
            "f1",
            "ece",
            "brier",
        ):
            assert key in metrics[split]
    assert "SYNTHETIC" in (tiny_package / "README.md").read_text()
    assert not (tiny_package.parent / "tiny.train").exists()  # training state cleaned up


def test_reload_predicts_identically_to_in_memory(tiny_package) -> None:
    pred = medfuse.load(tiny_package)
    spec = pred.spec
    bundle = load_data(spec.data.source, spec.data.options)
    test = bundle.test
    p1 = pred.predict_proba(test)
    # the in-memory model is the same weights: rebuild by hand and compare
    pkg = load_package(tiny_package)
    from medfuse.core.preprocess import normalize

    stats = pkg.meta["preprocessing"]
    inputs = {
        m: torch.from_numpy(normalize(test.arrays[m], test.masks[m], stats[m]))
        for m in spec.modalities
    }
    masks = {m: torch.from_numpy(test.masks[m]) for m in spec.modalities}
    with torch.no_grad():
        p2 = torch.sigmoid(pkg.model(inputs, masks)[:, 0]).numpy()
    assert np.abs(p1 - p2).max() < 1e-6
    labels = pred.predict(test)
    assert set(labels) <= set(pred.labels)


def test_missing_modality_at_prediction(tiny_package) -> None:
    pred = medfuse.load(tiny_package)
    sample = {
        "image": np.random.rand(1, 16, 16).astype(np.float32),
        "signal": None,
        "tabular": np.array([60, 25, np.nan], np.float32),
    }
    p = pred.predict_proba([sample, {"tabular": np.array([50, 20, 1.0], np.float32)}])
    assert p.shape == (2,) and np.isfinite(p).all()


def test_modified_weights_are_refused(tiny_package, tmp_path) -> None:
    pkg = tmp_path / "p"
    shutil.copytree(tiny_package, pkg)
    data = bytearray((pkg / WEIGHTS).read_bytes())
    data[-10] ^= 0xFF
    (pkg / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(PackageError, match="does not match its recorded sha256"):
        medfuse.load(pkg)


def test_truncated_and_missing_files_are_refused(tiny_package, tmp_path) -> None:
    pkg = tmp_path / "p"
    shutil.copytree(tiny_package, pkg)
    with open(pkg / WEIGHTS, "r+b") as f:
        f.truncate(100)
    with pytest.raises(PackageError, match="tampered or truncated"):
        load_package(pkg)
    (pkg / WEIGHTS).unlink()
    with pytest.raises(PackageError, match="missing"):
        load_package(pkg)
    (pkg / META).unlink()
    with pytest.raises(PackageError, match="not a medfuse package"):
        load_package(pkg)


def test_interrupted_save_leaves_no_package(tmp_path, monkeypatch) -> None:
    target = tmp_path / "pkg"
    import medfuse.core.package as P

    real = P.sha256_file
    calls = {"n": 0}

    def boom(path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-save")
        return real(path)

    monkeypatch.setattr(P, "sha256_file", boom)
    with pytest.raises(KeyboardInterrupt):
        write_package(target, {"name": "x"}, {"a.bin": b"1", "b.bin": b"2"})
    assert not target.exists()
    assert not list(tmp_path.iterdir())  # no half-written sibling either


def test_update_in_place_keeps_package_valid(tiny_package, tmp_path) -> None:
    pkg = tmp_path / "p"
    shutil.copytree(tiny_package, pkg)
    update_package(
        pkg,
        add={"note.txt": "hello"},
        meta_updates={"calibration": {"method": "temperature", "temperature": 2.0}},
    )
    meta = read_meta(pkg)
    assert "note.txt" in meta["files"] and meta["calibration"]["temperature"] == 2.0
    p_hot = medfuse.load(pkg).predict_proba([{"tabular": np.array([50, 20, 1.0], np.float32)}])
    p_cold = medfuse.load(tiny_package).predict_proba(
        [{"tabular": np.array([50, 20, 1.0], np.float32)}]
    )
    assert abs(p_hot[0] - 0.5) <= abs(p_cold[0] - 0.5) + 1e-9  # temperature 2 pulls towards 0.5


def test_refuses_to_overwrite_a_non_package(tmp_path) -> None:
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("...")
    with pytest.raises(SpecError, match="not a medfuse package"):
        write_package(d, {"name": "x"}, {"a.bin": b"1"})
    assert (d / "thesis.tex").exists()


def test_loads_to_cpu_whatever_the_training_device(tiny_package) -> None:
    pred = medfuse.load(tiny_package, device="cpu")
    assert all(p.device.type == "cpu" for p in pred.model.parameters())
