"""The base install, measured: ``pip install .`` (no extras) into a fresh venv, its size, and
prediction + verification there on a package exported by the full install.

    python benchmarks/install_size.py [--venv /tmp/medfuse-base] [--package EXPORTED_PKG]

1. With the full install (this interpreter: torch), train a tiny synthetic package and export it
   to ONNX (or use ``--package``, an exported package), and predict a small ``.npz`` with
   ``medfuse predict`` (the default runtime: torch).
2. Create a venv, ``pip install .`` (no extras; pip uses this machine's configured index), and
   assert that ``pip list`` holds no torch, pandas, scipy or scikit-learn.
3. Report the venv's size on disk (MB, every file under it; the full install's environment was
   2.1 GB before the extras were split).
4. In the venv, ``medfuse predict`` (ONNX Runtime) on the same input and ``medfuse verify``;
   the probabilities must equal the full install's to 1e-5 and verification must pass.

Prints one JSON summary (and writes it to ``--json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("torch", "pandas", "scipy", "scikit-learn", "safetensors", "matplotlib")
TINY = {
    "name": "tiny",
    "task": {"type": "binary"},
    "data": {
        "source": "synthetic",
        "options": {
            "n_train": 96,
            "n_val": 48,
            "n_test": 48,
            "image_size": 16,
            "signal_length": 32,
            "signal_channels": 2,
        },
    },
    "branches": {
        "image": {"type": "cnn", "width": 4, "depth": 2, "out_features": 8},
        "signal": {"type": "lstm", "hidden": 8, "out_features": 8},
        "tabular": {"type": "mlp", "hidden": 8, "out_features": 4},
    },
    "fusion": {"type": "concat"},
    "head": {"hidden": 8},
    "train": {"epochs": 2, "batch_size": 32, "early_stopping": None, "seed": 0},
}


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r


def size_mb(root: Path) -> float:
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 1e6


def probs(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])


def exported_package(work: Path) -> Path:
    """A tiny package trained and exported by the full install (this interpreter)."""
    from medfuse.api import train
    from medfuse.export.exporter import export_package

    res = train(TINY, out=work / "tiny", device="cpu", progress=False)
    rep = export_package(res.package, format="onnx").report
    if rep is None or not rep.ok:
        raise SystemExit(f"export did not verify: {rep}")
    return Path(res.package)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default="/tmp/medfuse-base", help="venv to create (replaced)")
    ap.add_argument("--package", help="an exported package (default: train and export a tiny one)")
    ap.add_argument("--json", help="also write the summary here")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medfuse-install-"))
    pkg = Path(a.package) if a.package else exported_package(work)

    rng = np.random.default_rng(0)
    npz = work / "x.npz"
    np.savez(
        npz,
        image=rng.random((8, 1, 16, 16), dtype=np.float32),
        signal=rng.standard_normal((8, 2, 32)).astype(np.float32),
        tabular=rng.random((8, 3), dtype=np.float32),
        mask_tabular=np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32),
    )
    full = work / "full.csv"
    run(
        [
            sys.executable,
            "-m",
            "medfuse",
            "predict",
            str(pkg),
            "--input",
            str(npz),
            "--out",
            str(full),
        ]
    )

    venv = Path(a.venv)
    shutil.rmtree(venv, ignore_errors=True)
    t0 = time.perf_counter()
    run([sys.executable, "-m", "venv", str(venv)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    run([*pip, "install", "-q", "--upgrade", "pip"], env)
    run([*pip, "install", "-q", str(REPO)], env)
    seconds = time.perf_counter() - t0
    listed = json.loads(run([*pip, "list", "--format", "json"], env).stdout)
    names = sorted(d["name"].lower() for d in listed)
    present = [n for n in TRAINING_STACK if n in names]
    assert not present, f"the base install pulled in {present}"

    bare = work / "bare.csv"
    medfuse = str(venv / "bin" / "medfuse")
    run([medfuse, "predict", str(pkg), "--input", str(npz), "--out", str(bare)], env)
    ver = json.loads(run([medfuse, "verify", str(pkg), "--json"], env).stdout)
    diff = float(np.abs(probs(bare) - probs(full)).max())
    summary = {
        "command": f"{venv}/bin/pip install {REPO}",
        "venv": str(venv),
        "size_mb": round(size_mb(venv), 1),
        "install_seconds": round(seconds, 1),
        "packages": names,
        "torch_installed": "torch" in names,
        "package": str(pkg),
        "max_abs_prob_diff_vs_full_install": diff,
        "verify_ok": ver["ok"],
        "verify_checks": {c["runtime"]: c["status"] for c in ver["checks"]},
    }
    print(json.dumps(summary, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))
    assert diff <= 1e-5, f"probabilities differ from the full install by {diff}"
    assert ver["ok"], ver
    return 0


if __name__ == "__main__":
    sys.exit(main())
