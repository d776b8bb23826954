"""Prediction from an exported package with numpy + onnxruntime only: no PyTorch.

This is the migration target for a machine without the training stack (a hospital server, an
edge box). ``python -m medfuse.runtime PACKAGE --input batch.npz --out preds.csv`` predicts from a
shell; in Python:

>>> from medfuse.runtime import load
>>> model = load("runs/breastmnist")                 # checksums verified, ORT session created
>>> model.predict_proba({"image": x})                # raw (N, 1, 28, 28) arrays, as training saw them
>>> model.predict({"image": x, "mask": {"image": m}})
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.decision import decide
from medfuse.core.errors import DataError, PackageError
from medfuse.core.inputs import npz_modalities
from medfuse.core.onnx import OnnxPredictor, load

__all__ = ["OnnxPredictor", "load", "main"]


def _read_npz(path: Path, model: OnnxPredictor) -> tuple[dict[str, Any], list[str]]:
    with np.load(path, allow_pickle=False) as d:
        keys = set(d.files)
        mods = model.modalities
        present = npz_modalities(path, keys, mods)
        n = len(d[present[0]])
        batch: dict[str, Any] = {"mask": {}}
        for m in present:
            x = d[m].astype(np.float32)
            if x.shape[1:] != mods[m].shape and x.ndim == len(mods[m].shape):  # (N, H, W) grey
                x = x[:, None]
            batch[m] = x
            batch["mask"][m] = d[f"mask_{m}"] if f"mask_{m}" in keys else np.ones(n, np.float32)
        ids = [str(v) for v in d["id"]] if "id" in keys else [f"{path.stem}-{i}" for i in range(n)]
    return batch, ids


def write_predictions(
    rows: Iterable[tuple[str, np.ndarray, Any]], model: OnnxPredictor, out: Any
) -> int:
    """CSV rows ``id, prob_<label>..., label[, threshold]`` (the ``medfuse predict`` layout)."""
    labels = model.labels
    probs = [f"prob_{labels[1]}"] if model.task == "binary" else [f"prob_{x}" for x in labels]
    header = ["id", *probs, "label", *(["threshold"] if model.task == "binary" else [])]
    w = csv.writer(out)
    w.writerow(header)
    n = 0
    for rid, p, lab in rows:
        vals = [float(p)] if np.ndim(p) == 0 else [float(v) for v in p]
        lab = ";".join(lab) if isinstance(lab, list) else lab
        w.writerow([rid, *vals, lab, *([model.threshold] if model.task == "binary" else [])])
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    """``python -m medfuse.runtime PACKAGE --input batch.npz [--out preds.csv]``."""
    ap = argparse.ArgumentParser(
        prog="python -m medfuse.runtime",
        description="Predict with an exported medfuse package using onnxruntime (no PyTorch).",
    )
    ap.add_argument("package")
    ap.add_argument("--input", required=True, help=".npz with one array per modality (+ mask_<m>)")
    ap.add_argument("--out", help="output .csv (default: stdout)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        model = load(a.package, threads=a.threads)
        inp = Path(a.input)
        if not inp.exists():
            raise DataError(f"input {inp} not found")
        batch, ids = _read_npz(inp, model)
        p = model.predict_proba(batch, batch_size=a.batch_size)
        labels = decide(model.task, p, model.labels, model.threshold)
        rows = zip(ids, p, labels)
        if a.out:
            with open(a.out, "w", newline="") as f:
                n = write_predictions(rows, model, f)
            print(f"{n} predictions -> {a.out}", file=sys.stderr)
        else:
            write_predictions(rows, model, sys.stdout)
    except (DataError, PackageError) as err:
        print(f"medfuse.runtime: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
