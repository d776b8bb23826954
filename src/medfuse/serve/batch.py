"""Streaming batch prediction for ``medfuse predict``: constant memory over large manifests.

A manifest CSV is read ``chunk`` rows at a time (``medfuse.core.inputs.iter_batches``); each chunk's files are
read, predicted in batches and appended to the output (CSV, or Parquet through a pyarrow
``ParquetWriter``) before the next chunk is read, so memory does not grow with the input. An
``.npz`` or a single file is read whole (as before) and written the same way. Runtimes: ``torch``
(the package's weights) or ``onnx`` (``model.onnx`` with ONNX Runtime).
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import IO, Any

import pandas as pd

from medfuse.core.errors import SpecError
from medfuse.core.inputs import iter_batches
from medfuse.core.paths import output_file
from medfuse.core.predictor import RunResult, table_columns


def count_rows(path: Path) -> int | None:
    """Data rows of a CSV (one pass, constant memory), for the progress bar."""
    try:
        with open(path, "rb") as f:
            n = sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
            f.seek(-1, 2)
            last_newline = f.read(1) == b"\n"
    except OSError:
        return None
    return max(0, n - 1 + (0 if last_newline else 1))


class TableWriter:
    """Append tables to a CSV (file or stream) or a Parquet file, header/schema once. A file is
    written beside its destination and renamed into place by ``close()``; ``close(ok=False)``
    (a failed run) removes it, so an existing output is never replaced by a truncated one."""

    def __init__(self, out: str | Path | None, stream: IO[str] | None = None) -> None:
        self.final = Path(out) if out is not None else None
        self.path = (
            self.final.with_name(f".{self.final.name}.tmp-{os.getpid()}")
            if self.final is not None
            else None
        )
        self.stream = stream if stream is not None else sys.stdout
        self.parquet = self.final is not None and self.final.suffix.lower() in (".parquet", ".pq")
        self._pq: Any = None
        self._csv: IO[str] | None = None
        self.rows = 0

    def write(self, df: pd.DataFrame) -> None:
        if self.parquet:
            import pyarrow as pa  # lazy: pyarrow, only for Parquet output

            # lazy: pyarrow, only for Parquet
            import pyarrow.parquet as pq

            t = pa.Table.from_pandas(df, preserve_index=False)
            if self._pq is None:
                self._pq = pq.ParquetWriter(str(self.path), t.schema)
            self._pq.write_table(t.cast(self._pq.schema))
        else:
            if self._csv is None:
                self._csv = (
                    open(self.path, "w", newline="")  # noqa: SIM115 (closed in close())
                    if self.path
                    else self.stream
                )
                df.to_csv(self._csv, index=False)
            else:
                df.to_csv(self._csv, index=False, header=False)
        self.rows += len(df)

    def close(self, ok: bool = True) -> None:
        if self._pq is not None:
            self._pq.close()
        if self._csv is not None and self.path is not None:
            self._csv.close()
        elif self._csv is not None:
            self._csv.flush()
        if self.path is not None and self.final is not None and self.path.exists():
            if ok:
                self.path.replace(self.final)
            else:
                self.path.unlink()


def load_predictor(package: str | Path, runtime: str, device: str) -> Any:
    from medfuse.serve.service import load_predictor as _load  # lazy: torch, only to predict

    return _load(Path(package), runtime, device=device)


def predict_stream(
    package: str | Path,
    input_path: str | Path,
    out: str | Path | None = None,
    *,
    runtime: str = "torch",
    device: str = "cpu",
    batch_size: int = 256,
    chunk: int | None = None,
    progress: bool | None = None,
    stream: IO[str] | None = None,
    on_bad_row: str = "fail",
    base_dir: str | Path | None = None,
    issues_out: str | Path | None = None,
) -> RunResult:
    """Predict ``input_path`` chunk by chunk and append to ``out`` (stdout when None).

    Inputs are read by the one input contract (``medfuse.core.inputs.iter_batches``): the
    training manifest's layout, an ``.npz`` or one file. Every row carries ``present_<m>`` and
    ``reason_<m>`` per modality, plausibility ``flags`` and an ``error`` (no label) when it
    cannot be predicted; ``on_bad_row`` is "fail" (the default, as in training: an unusable
    input stops the run) or "missing". Affected rows are returned; beyond ``MAX_LISTED`` they
    are written to ``issues_out`` (default: ``<out>.issues.csv``; with the table on stdout, the
    first ones are listed and ``issues_out`` lists them all). ``progress`` (default: when
    stderr is a terminal) shows a rich progress bar.
    """

    if batch_size < 1:
        raise SpecError("--batch-size", f"must be at least 1; got {batch_size}")
    if out is not None:  # before any work: a folder that is missing or not writable
        output_file(out, "--out")
    if issues_out is not None:
        output_file(issues_out, "--issues")
    pred = load_predictor(package, runtime, device)
    chunk = int(chunk or max(batch_size, 1024))
    batches = iter_batches(
        input_path, pred.schema, chunk=chunk, on_bad_row=on_bad_row, base_dir=base_dir
    )
    first = next(batches, None)  # input errors before any output file is created
    writer = TableWriter(out, stream)
    show = sys.stderr.isatty() if progress is None else progress
    total = count_rows(Path(input_path)) if show and str(input_path).endswith(".csv") else None
    bar = None
    if show:
        # lazy: rich, only to print
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
            console=__import__("rich.console").console.Console(stderr=True),
        )
        bar.start()
        job = bar.add_task("predict", total=total)
    columns = table_columns(pred.task, pred.labels, list(pred.schema.modalities))
    run = RunResult(0)
    try:
        if first is None:
            writer.write(pd.DataFrame(columns=columns))
        for batch in itertools.chain([first] if first is not None else [], batches):
            res = pred.predict_batch(batch, batch_size=batch_size, on_bad_row=on_bad_row)
            writer.write(pd.DataFrame(res.rows(), columns=columns))
            run.take(res)
            if bar is not None:
                bar.advance(job, len(batch))
    except BaseException:
        writer.close(ok=False)
        raise
    else:
        writer.close()
    finally:
        if bar is not None:
            bar.stop()
    run.rows = writer.rows
    return run.list_issues(out, issues_out)
