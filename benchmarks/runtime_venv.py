"""Migration to a machine without PyTorch: BreastMNIST test labels, torch vs a FRESH numpy+ORT venv.

1. trains a single-composite BreastMNIST package (``ensemble=1``, ``train.keep=best``; or reuses ``--package``) and
   exports it (``medfuse export``);
2. writes the BreastMNIST test split, as the data pipeline reads it, to an ``.npz``;
3. predicts it with ``medfuse predict --runtime torch`` (this environment);
4. creates a new virtual environment with ``python -m venv`` and ``pip install numpy onnxruntime
   pillow pydantic pyyaml`` only (pydantic: medfuse.json's schema, checked on every load), copies ``src/medfuse`` (no install, no dependencies) into a folder on its
   ``PYTHONPATH``, checks that ``import torch`` FAILS there, and predicts with
   ``python -m medfuse.runtime``;
5. prints the label agreement and the largest probability difference.

    python benchmarks/runtime_venv.py --data-dir /work/shared/data [--epochs 8] [--package DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(map(str, cmd)), flush=True)
    res = subprocess.run(list(map(str, cmd)), text=True, capture_output=True, **kw)
    if res.returncode != 0:
        print(res.stdout[-4000:], res.stderr[-4000:], sep="\n")
        raise SystemExit(f"command failed ({res.returncode})")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("MEDFUSE_DATA_DIR", "/work/shared/data"))
    ap.add_argument("--package", help="an existing BreastMNIST package (skips training)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--work", help="working directory (default: a temporary one, removed)")
    a = ap.parse_args()

    work = Path(a.work or tempfile.mkdtemp(prefix="medfuse-venv-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    medfuse = [sys.executable, "-m", "medfuse"]
    t0 = time.perf_counter()
    try:
        pkg = Path(a.package) if a.package else work / "breastmnist"
        if not a.package:
            run([*medfuse, "train", "breastmnist", "--out", pkg, "--data-dir", a.data_dir,
                 "--set", f"train.epochs={a.epochs}", "--set", "ensemble=1", "--set", "train.keep=best", "--device", "cpu"], env=env)  # fmt: skip
        run([*medfuse, "export", pkg, "--data-dir", a.data_dir], env=env)

        # the test split exactly as the data pipeline reads it (raw values, no normalisation)
        from medfuse.core.package import read_meta
        from medfuse.core.spec import parse_spec
        from medfuse.data import load_data

        spec = parse_spec(read_meta(pkg)["spec"])
        test = load_data(spec.data.source, spec.data.options, data_root=a.data_dir,
                         modalities=spec.modalities, task=spec.task.type).test  # fmt: skip
        mod = next(iter(spec.modalities))
        inputs = work / "breastmnist_test.npz"
        np.savez(inputs, **{mod: test.arrays[mod], "id": test.meta["id"].to_numpy().astype(str)})
        run([*medfuse, "predict", pkg, "--input", inputs, "--runtime", "torch",
             "--out", work / "torch.csv"], env=env)  # fmt: skip

        venv = work / "venv"
        t1 = time.perf_counter()
        run([sys.executable, "-m", "venv", venv])
        py = venv / "bin" / "python"
        run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "numpy", "onnxruntime", "pillow", "pydantic", "pyyaml"])  # fmt: skip
        site = work / "medfuse-src"
        shutil.copytree(REPO / "src" / "medfuse", site / "medfuse",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        venv_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(site),
                    "OMP_NUM_THREADS": "1", "HOME": str(work)}  # fmt: skip
        setup_s = time.perf_counter() - t1
        probe = run([py, "-c", "import importlib.util as u, json; print(json.dumps("
                     "{m: u.find_spec(m) is not None for m in ('torch', 'pandas', 'scipy', "
                     "'sklearn', 'pydantic', 'numpy', 'onnxruntime', 'PIL')}))"], env=venv_env)  # fmt: skip
        print("venv has:", probe.stdout.strip())
        pkgs = run([py, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                   env=venv_env).stdout.split()  # fmt: skip
        print("venv packages:", " ".join(pkgs))
        run([py, "-m", "medfuse.runtime", pkg, "--input", inputs, "--out", work / "ort.csv"],
            env=venv_env)  # fmt: skip

        a_df, b_df = pd.read_csv(work / "torch.csv"), pd.read_csv(work / "ort.csv")
        prob = [c for c in a_df.columns if c.startswith("prob_")]
        assert list(a_df["id"]) == list(b_df["id"]), "row order differs"
        same = int((a_df["label"] == b_df["label"]).sum())
        diff = float(np.abs(a_df[prob].to_numpy() - b_df[prob].to_numpy()).max())
        print()
        print(f"BreastMNIST test: {len(a_df)} images")
        print(f"labels identical: {same}/{len(a_df)} ({same / len(a_df):.2%})")
        print(f"max |P(torch) - P(onnxruntime, no torch)|: {diff:.2e}")
        has_torch = '"torch": true' in probe.stdout
        print(f"torch importable in the venv: {has_torch}")
        print(
            f"venv creation + pip install: {setup_s:.0f} s; total {time.perf_counter() - t0:.0f} s"
        )
        if same != len(a_df):
            raise SystemExit("labels differ")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
