"""Prediction and verification of an exported package where the base install is all there is:
no torch, pandas, scipy or scikit-learn (a finder refuses them, as if not installed)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from medfuse.cli import main

BLOCKER = Path(__file__).resolve().parents[1] / "blocked_run.py"
TRAINING_STACK = "torch,pandas,scipy,sklearn,safetensors,pyarrow,matplotlib"


def without(modules: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BLOCKER), modules, *args], capture_output=True, text=True, timeout=300
    )


def read_probs(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c.startswith("prob_")]
    p = np.array([[float(r[c]) for c in cols] for r in rows])
    return [r["id"] for r in rows], p, [r["label"] for r in rows]


def inputs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    npz = tmp_path / "x.npz"
    np.savez(
        npz,
        image=rng.random((5, 1, 16, 16), dtype=np.float32),
        signal=rng.standard_normal((5, 2, 32)).astype(np.float32),
        tabular=rng.random((5, 3), dtype=np.float32),
        mask_signal=np.array([1, 1, 0, 1, 1], np.float32),
        id=np.array([f"s{i}" for i in range(5)]),
    )
    return npz


def test_predict_without_the_training_stack_matches_the_full_install(
    exported_package: Path, tmp_path: Path
) -> None:
    npz = inputs(tmp_path)
    full = tmp_path / "full.csv"
    assert main(["predict", str(exported_package), "--input", str(npz), "--out", str(full)]) == 0
    bare = tmp_path / "bare.csv"
    r = without(
        TRAINING_STACK, "predict", str(exported_package), "--input", str(npz), "--out", str(bare)
    )
    assert r.returncode == 0, r.stderr
    assert "blocked-loaded: []" in r.stderr
    ids_full, p_full, lab_full = read_probs(full)
    ids_bare, p_bare, lab_bare = read_probs(bare)
    assert ids_bare == ids_full == [f"s{i}" for i in range(5)]
    assert np.abs(p_bare - p_full).max() <= 1e-5 and lab_bare == lab_full
    with open(bare, newline="") as f, open(full, newline="") as g:
        assert next(csv.reader(f)) == next(csv.reader(g))  # same columns

    # what the base install cannot do names the extra that can (pandas and pyarrow)
    r = without(
        TRAINING_STACK,
        "predict",
        str(exported_package),
        "--input",
        str(npz),
        "--out",
        str(tmp_path / "x.parquet"),
    )
    assert r.returncode == 2 and "pip install 'medfuse[train]'" in r.stderr

    # a manifest laid out as in training predicts there too (stdlib csv, the one input contract)
    meta = json.loads((exported_package / "medfuse.json").read_text())
    cols = meta["spec"]["modalities"]["tabular"]["columns"]
    with np.load(npz) as d:
        lines = [f"id,image,signal,{','.join(cols)}"]
        for i in range(5):
            np.save(tmp_path / f"im{i}.npy", d["image"][i])
            np.save(tmp_path / f"sig{i}.npy", d["signal"][i])
            sig = f"sig{i}.npy" if d["mask_signal"][i] else ""
            vals = ",".join(str(float(v)) for v in d["tabular"][i])
            lines.append(f"s{i},im{i}.npy,{sig},{vals}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    from_manifest = tmp_path / "manifest.csv"
    r = without(
        TRAINING_STACK,
        "predict",
        str(exported_package),
        "--input",
        str(manifest),
        "--out",
        str(from_manifest),
    )
    assert r.returncode == 0, r.stderr
    ids_m, p_m, lab_m = read_probs(from_manifest)
    assert ids_m == ids_full and np.abs(p_m - p_full).max() <= 1e-5 and lab_m == lab_full


def test_verify_without_the_training_stack(exported_package: Path) -> None:
    r = without(TRAINING_STACK, "verify", str(exported_package), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    checks = {c["runtime"]: c for c in rep["checks"]}
    assert rep["ok"] and checks["onnx"]["status"] == "ok"
    assert checks["onnx"]["max_abs_diff"] <= 1e-4  # against the stored PyTorch logits
    assert checks["torch"]["status"] == "skipped" and "torch" in checks["torch"]["note"]
    # asking for the torch runtime where there is none is a failure, not a skip
    r = without(TRAINING_STACK, "verify", str(exported_package), "--runtime", "torch")
    assert r.returncode == 1 and "torch is not installed" in r.stdout


def test_verify_without_the_training_stack_still_checks_checksums(
    exported_package: Path, tmp_path: Path
) -> None:
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(exported_package, pkg)
    with open(pkg / "model.onnx", "ab") as f:
        f.write(b"\0")
    r = without(TRAINING_STACK, "verify", str(pkg))
    assert r.returncode != 0 and "model.onnx" in r.stderr


def test_predict_without_torch_on_a_package_never_exported(tiny_package: Path, tmp_path) -> None:
    r = without("torch", "predict", str(tiny_package), "--input", str(inputs(tmp_path)))
    assert r.returncode != 0 and "medfuse export" in r.stderr and "medfuse[train]" in r.stderr


def test_predict_one_image_file_without_the_training_stack(
    exported_package: Path, tmp_path: Path
) -> None:
    from PIL import Image

    png = tmp_path / "case.png"
    pixels = np.random.default_rng(1).integers(0, 256, (20, 24), dtype=np.uint8)
    Image.fromarray(pixels).save(png)  # resized to the package's 16x16 by the one resize
    full, bare = tmp_path / "full.csv", tmp_path / "bare.csv"
    assert main(["predict", str(exported_package), "--input", str(png), "--out", str(full)]) == 0
    r = without(
        TRAINING_STACK, "predict", str(exported_package), "--input", str(png), "--out", str(bare)
    )
    assert r.returncode == 0, r.stderr
    ids_full, p_full, _ = read_probs(full)
    ids_bare, p_bare, _ = read_probs(bare)
    assert ids_bare == ids_full == ["case.png"]
    assert np.abs(p_bare - p_full).max() <= 1e-5
