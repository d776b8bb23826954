"""CLI integration on a tiny synthetic run: train -> evaluate -> predict -> models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import yaml


def medfuse(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "medfuse", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_train_evaluate_predict(tmp_path, tiny_spec) -> None:
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump(tiny_spec))
    out = tmp_path / "pkg"
    r = medfuse(
        "train",
        str(cfg),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--seed",
        "3",
        "--set",
        "train.epochs=1",
    )
    assert "auroc" in r.stdout and str(out) in r.stdout
    meta = json.loads((out / "medfuse.json").read_text())
    assert meta["spec"]["train"]["seed"] == 3 and meta["spec"]["train"]["epochs"] == 1

    r = medfuse("evaluate", str(out), "--json", "--split", "val")
    m = json.loads(r.stdout)
    stored = json.loads((out / "metrics.json").read_text())["val"]
    assert abs(m["auroc"] - stored["auroc"]) < 1e-9 and m["split"] == "val"
    assert "image only" in medfuse("evaluate", str(out)).stdout

    # predict from an .npz holding one array per modality (one modality missing entirely)
    rng = np.random.default_rng(0)
    npz = tmp_path / "x.npz"
    np.savez(
        npz,
        image=rng.random((3, 1, 16, 16), dtype=np.float32),
        tabular=rng.random((3, 3), dtype=np.float32),
    )
    preds = tmp_path / "preds.csv"
    medfuse("predict", str(out), "--input", str(npz), "--out", str(preds))
    df = pd.read_csv(preds)
    assert list(df.columns)[:4] == ["id", "prob_positive", "label", "threshold"] and len(df) == 3
    assert df["present_signal"].eq(0).all() and df["present_image"].eq(1).all()
    assert df["prob_positive"].between(0, 1).all() and set(df["label"]) <= {"negative", "positive"}

    bad = tmp_path / "bad.npz"
    np.savez(bad, picture=np.zeros((1, 16, 16)))
    r = medfuse("predict", str(out), "--input", str(bad), check=False)
    assert r.returncode == 3 and "picture" in r.stderr and "image" in r.stderr


def test_models_lists_registries() -> None:
    out = json.loads(medfuse("models", "--json").stdout)
    assert {"cnn", "resnet18", "cnn1d", "lstm", "gru", "mlp"} <= set(out["branches"])
    assert {"concat", "late", "gated"} <= set(out["fusions"])
    assert out["branches"]["lstm"]["params"]["bidirectional"] is False


def test_missing_package_is_a_clear_error(tmp_path) -> None:
    r = medfuse("evaluate", str(tmp_path / "nope"), check=False)
    assert r.returncode == 4 and "not a directory" in r.stderr
