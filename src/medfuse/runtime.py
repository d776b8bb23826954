"""Prediction from an exported package with numpy + onnxruntime only: no PyTorch.

This is the migration target for a machine without the training stack (a hospital server, an
edge box). ``python -m medfuse.runtime PACKAGE --input cases.csv --out preds.csv`` predicts from
a shell (a manifest laid out as in training, an ``.npz``, or one PNG/JPEG/DICOM/.npy file: the
one input contract, ``medfuse.core.inputs``); in Python:

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

from medfuse.core.errors import MedfuseError
from medfuse.core.inputs import iter_batches
from medfuse.core.onnx import OnnxPredictor, load
from medfuse.core.predictor import Predictions, table_columns

__all__ = ["OnnxPredictor", "load", "main", "write_predictions"]


def write_predictions(results: Iterable[Predictions], model: OnnxPredictor, out: Any) -> int:
    """CSV rows in the ``medfuse predict`` layout (``Predictions.columns``)."""
    w = csv.DictWriter(
        out, fieldnames=table_columns(model.task, model.labels, list(model.schema.modalities))
    )
    w.writeheader()
    n = 0
    for res in results:
        for row in res.rows():
            w.writerow(row)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    """``python -m medfuse.runtime PACKAGE --input cases.csv [--out preds.csv]``."""
    ap = argparse.ArgumentParser(
        prog="python -m medfuse.runtime",
        description="Predict with an exported medfuse package using onnxruntime (no PyTorch).",
    )
    ap.add_argument("package")
    ap.add_argument(
        "--input",
        required=True,
        help="manifest .csv/.parquet (the training layout), .npz with one array per modality "
        "(+ mask_<m>, id), or one image/signal file (PNG, JPEG, DICOM, NIfTI, .npy)",
    )
    ap.add_argument("--out", help="output .csv (default: stdout)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--on-bad-row", default="fail", choices=["fail", "missing"])
    ap.add_argument("--base-dir", help="directory relative file paths resolve against")
    a = ap.parse_args(argv)
    affected: list[dict[str, str]] = []
    try:
        model = load(a.package, threads=a.threads)
        batches = iter_batches(a.input, model.schema, on_bad_row=a.on_bad_row, base_dir=a.base_dir)
        first = next(batches, None)  # input errors before the output file is created

        def results() -> Iterable[Predictions]:
            for b in [first] if first is not None else []:
                yield _predict(model, b, a)
            for b in batches:
                yield _predict(model, b, a)

        def _predict(model: OnnxPredictor, b: Any, a: argparse.Namespace) -> Predictions:
            res = model.predict_batch(b, batch_size=a.batch_size, on_bad_row=a.on_bad_row)
            affected.extend(res.affected())
            return res

        if a.out:
            tmp = Path(a.out).with_name(f".{Path(a.out).name}.tmp-{os.getpid()}")
            try:
                with open(tmp, "w", newline="") as f:
                    n = write_predictions(results(), model, f)
                tmp.replace(a.out)  # a failed run leaves no truncated output
            finally:
                tmp.unlink(missing_ok=True)
            print(f"{n} predictions -> {a.out}", file=sys.stderr)
        else:
            write_predictions(results(), model, sys.stdout)
    except MedfuseError as err:
        print(f"medfuse.runtime: error: {_one_line(err)}", file=sys.stderr)
        return err.exit_code
    except (OSError, ValueError, ImportError) as err:
        print(f"medfuse.runtime: error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 1
    for line in _summary(affected):
        print(line, file=sys.stderr)
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _summary(affected: list[dict[str, str]]) -> list[str]:
    if not affected:
        return []
    return [
        f"{len(affected)} rows need attention:",
        *(f"  {x['id']}: {x['issue']}" for x in affected),
    ]


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
