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
from medfuse.core.errors import DataError, MedfuseError, PackageError
from medfuse.core.inputs import npz_modalities
from medfuse.core.onnx import OnnxPredictor, load
from medfuse.core.optional import RUNTIMES, installed
from medfuse.core.package import WEIGHTS, read_meta
from medfuse.core.readers import suffix_of
from medfuse.core.readers.base import read_one_file

__all__ = ["OnnxPredictor", "choose_runtime", "load", "main", "predict_file"]


def choose_runtime(package: str | Path, runtime: str = "auto") -> str:
    """The runtime ``auto`` means for ``package`` here: ``torch`` when PyTorch is installed and
    the package has its weights (the full install's behaviour), else ``onnx`` (``model.onnx``
    through ONNX Runtime, what the base install runs). Other names are returned as given."""
    if runtime not in RUNTIMES:
        raise MedfuseError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    files = read_meta(package, verify=False).get("files", {})
    if installed("torch") and WEIGHTS in files:
        return "torch"
    if "model.onnx" not in files and WEIGHTS in files:
        raise PackageError(
            f"{package} has no model.onnx and PyTorch is not installed here: export it where "
            "PyTorch is (`medfuse export`), or install it: pip install 'medfuse[train]'"
        )
    return "onnx"


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


def read_input(path: Path, model: OnnxPredictor) -> tuple[dict[str, Any], list[str]]:
    """A batch and its ids from an ``.npz`` (one array per modality) or one image/signal file."""
    if not path.exists():
        raise DataError(f"input {path} not found")
    if suffix_of(path) == ".npz":
        return _read_npz(path, model)
    # lazy: pydantic; a numpy + onnxruntime machine (no pydantic) predicts .npz inputs
    from medfuse.core.spec import ModalitySpec

    specs = {n: ModalitySpec.model_validate(m) for n, m in model.meta["spec"]["modalities"].items()}
    one = read_one_file(path, specs)
    if one is None:
        raise DataError(
            f"{path}: without pandas (the base install) the input is an .npz with one array per "
            "modality or one image/signal file; a manifest .csv needs pip install 'medfuse[train]'"
        )
    arrays, masks = one
    return {**arrays, "mask": masks}, [path.name]


def predict_file(
    package: str | Path,
    input_path: str | Path,
    out: str | Path | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 256,
    threads: int | None = None,
) -> int:
    """Predict ``input_path`` with ONNX Runtime and write the ``medfuse predict`` CSV layout to
    ``out`` (stdout when None); the number of rows written."""
    if out is not None and Path(out).suffix.lower() != ".csv":
        raise DataError(
            f"--out {out}: without pandas and pyarrow (the base install) the output is a .csv; "
            "Parquet needs pip install 'medfuse[train]'"
        )
    model = load(package, device=device, threads=threads)
    batch, ids = read_input(Path(input_path), model)
    p = model.predict_proba(batch, batch_size=batch_size)
    rows = zip(ids, p, decide(model.task, p, model.labels, model.threshold))
    if out is None:
        return write_predictions(rows, model, sys.stdout)
    with open(out, "w", newline="") as f:
        return write_predictions(rows, model, f)


def main(argv: list[str] | None = None) -> int:
    """``python -m medfuse.runtime PACKAGE --input batch.npz [--out preds.csv]``."""
    ap = argparse.ArgumentParser(
        prog="python -m medfuse.runtime",
        description="Predict with an exported medfuse package using onnxruntime (no PyTorch).",
    )
    ap.add_argument("package")
    ap.add_argument(
        "--input",
        required=True,
        help=".npz with one array per modality (+ mask_<m>), or one image/signal file",
    )
    ap.add_argument("--out", help="output .csv (default: stdout)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        n = predict_file(a.package, a.input, a.out, batch_size=a.batch_size, threads=a.threads)
        if a.out:
            print(f"{n} predictions -> {a.out}", file=sys.stderr)
    except (DataError, PackageError) as err:
        print(f"medfuse.runtime: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
