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
import itertools
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medfuse.core.console import broken_pipe
from medfuse.core.errors import (
    INTERNAL_ERROR,
    DataError,
    MedfuseError,
    PackageError,
    SpecError,
    internal_error,
    one_line,
)
from medfuse.core.inputs import iter_batches
from medfuse.core.onnx import OnnxPredictor, load
from medfuse.core.optional import RUNTIMES, installed
from medfuse.core.package import WEIGHTS, package_id, read_meta
from medfuse.core.paths import output_file
from medfuse.core.predictor import Predictions, RunResult, deployed_onnx, table_columns

__all__ = ["OnnxPredictor", "choose_runtime", "load", "main", "predict_file", "write_predictions"]


def choose_runtime(package: str | Path, runtime: str = "auto") -> str:
    """The runtime ``auto`` means for ``package`` here: ``onnx`` for a package that deploys an
    INT8 ``model.onnx`` (``medfuse quantize``: its weights are the fp32 source, kept to
    re-export), so that ``medfuse predict`` gives the INT8 model's predictions, as ``medfuse
    serve`` does; otherwise ``torch`` when PyTorch is installed and the package has its weights
    (the full install's behaviour), else ``onnx`` (``model.onnx`` through ONNX Runtime, what the
    base install runs). Other names are returned as given."""
    if runtime not in RUNTIMES:
        raise MedfuseError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    meta = read_meta(package, verify=False)
    files = meta.get("files", {})
    if deployed_onnx(meta):
        return "onnx"
    if installed("torch") and WEIGHTS in files:
        return "torch"
    if "model.onnx" not in files and WEIGHTS in files:
        raise PackageError(
            f"{package} has no model.onnx and PyTorch is not installed here: export it where "
            "PyTorch is (`medfuse export`), or install it: pip install 'medfuse[train]'"
        )
    return "onnx"


def write_predictions(results: Iterable[Predictions], model: OnnxPredictor, out: Any) -> int:
    """CSV rows in the ``medfuse predict`` layout (``Predictions.columns``), cell for cell as
    the full install writes them: a row without a prediction has empty probability cells (as
    pandas writes NaN), never ``nan``."""
    w = csv.DictWriter(
        out,
        fieldnames=table_columns(model.task, model.labels, list(model.schema.modalities)),
        lineterminator="\n",  # as pandas writes it (csv's default is \r\n)
    )
    w.writeheader()
    n = 0
    for res in results:
        for row in res.rows():
            w.writerow({k: "" if isinstance(v, float) and v != v else v for k, v in row.items()})
            n += 1
    return n


def predict_file(
    package: str | Path,
    input_path: str | Path,
    out: str | Path | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 256,
    threads: int | None = None,
    on_bad_row: str = "fail",
    base_dir: str | Path | None = None,
    issues_out: str | Path | None = None,
) -> RunResult:
    """Predict ``input_path`` (read by the one input contract: a manifest laid out as in
    training, an ``.npz`` or one file) with ONNX Runtime; write the ``medfuse predict`` CSV
    layout to ``out`` (stdout when None; a file appears whole or not at all). Returns the rows
    written and the affected rows (errors, unusable inputs, plausibility flags); beyond
    ``MAX_LISTED`` of them they are listed in ``issues_out`` (default ``<out>.issues.csv``), as
    ``medfuse predict`` does with the full install."""
    if out is not None and Path(out).suffix.lower() != ".csv":
        raise DataError(
            f"--out {out}: the torch-free runtime writes .csv; Parquet output needs "
            "pip install 'medfuse[train]'"
        )
    if batch_size < 1:
        raise SpecError("--batch-size", f"must be at least 1; got {batch_size}")
    if out is not None:  # before any work: a folder that is missing or not writable
        output_file(out, "--out")
    if issues_out is not None:
        output_file(issues_out, "--issues")
    model = load(package, device=device, threads=threads)
    batches = iter_batches(input_path, model.schema, on_bad_row=on_bad_row, base_dir=base_dir)
    first = next(batches, None)  # input errors before the output file is created
    run = RunResult(0, package=package_id(model.meta))

    def results() -> Iterable[Predictions]:
        for b in itertools.chain([first] if first is not None else [], batches):
            res = model.predict_batch(b, batch_size=batch_size, on_bad_row=on_bad_row)
            run.take(res)
            yield res

    if out is None:
        run.rows = write_predictions(results(), model, sys.stdout)
        return run.list_issues(out, issues_out)
    tmp = Path(out).with_name(f".{Path(out).name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            run.rows = write_predictions(results(), model, f)
        tmp.replace(out)  # a failed run leaves no truncated output
    finally:
        tmp.unlink(missing_ok=True)
    return run.list_issues(out, issues_out)


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
    ap.add_argument(
        "--issues",
        help="file listing affected rows when more than 20 (default: OUT.issues.csv; with no "
        "--out the first 20 are printed)",
    )
    ap.add_argument(
        "-v", "--verbose", action="store_true", help="the traceback of an internal error"
    )
    a = ap.parse_args(argv)
    try:
        res = predict_file(
            a.package,
            a.input,
            a.out,
            batch_size=a.batch_size,
            threads=a.threads,
            on_bad_row=a.on_bad_row,
            base_dir=a.base_dir,
            issues_out=a.issues,
        )
        print(f"predictions of package {res.package}", file=sys.stderr)
        if a.out:
            print(f"{res.rows} predictions -> {a.out}", file=sys.stderr)
    except MedfuseError as err:
        print(f"medfuse.runtime: error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # whoever read stdout went away (`... | head`)
        return broken_pipe()
    except ImportError as err:  # an install without onnxruntime (or one of its libraries)
        print(
            f"medfuse.runtime: error: {type(err).__name__}: {one_line(err)}; the runtime needs "
            "numpy and onnxruntime (pip install medfuse)",
            file=sys.stderr,
        )
        return 2
    except Exception as err:  # after every user-caused failure above: a defect
        if a.verbose:
            raise
        rerun = "python -m medfuse.runtime -v ..."
        print(internal_error("medfuse.runtime", err, rerun), file=sys.stderr)
        return INTERNAL_ERROR
    for line in res.summary():
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
