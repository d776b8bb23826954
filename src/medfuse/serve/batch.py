"""Streaming batch prediction for ``medfuse predict``: constant memory over large manifests.

A manifest CSV is read ``chunk`` rows at a time (pandas ``chunksize``); each chunk's files are
read, predicted in batches and appended to the output (CSV, or Parquet through a pyarrow
``ParquetWriter``) before the next chunk is read, so memory does not grow with the input. An
``.npz`` or a single file is read whole (as before) and written the same way. Runtimes: ``torch``
(the package's weights) or ``onnx`` (``model.onnx`` with ONNX Runtime).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from medfuse.core.errors import DataError

Chunk = tuple[dict[str, np.ndarray], dict[str, np.ndarray], pd.DataFrame]


def spec_modalities(meta: dict[str, Any]) -> dict[str, Any]:
    from medfuse.core.spec import ModalitySpec

    return {n: ModalitySpec.model_validate(m) for n, m in meta["spec"]["modalities"].items()}


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


def iter_chunks(path: str | Path, meta: dict[str, Any], chunk: int) -> Iterator[Chunk]:
    """Raw arrays, masks and ids, ``chunk`` rows at a time."""
    from medfuse.core.readers import suffix_of
    from medfuse.inference.inputs import read_inputs

    p = Path(path)
    mods = spec_modalities(meta)
    stats = meta["preprocessing"]
    if not p.exists():
        raise DataError(f"input {p} not found")
    if suffix_of(p) != ".csv":
        arrays, masks, ids = read_inputs(p, mods, stats)
        n = len(ids)
        for s in range(0, n, chunk):
            sl = slice(s, s + chunk)
            yield (
                {m: a[sl] for m, a in arrays.items()},
                {m: k[sl] for m, k in masks.items()},
                ids.iloc[sl].reset_index(drop=True),
            )
        return
    from medfuse.data import resolve_data_root
    from medfuse.data.manifest import read_rows

    cats = {m: s.get("categories", {}) for m, s in stats.items()}
    roots = [p.parent, resolve_data_root(None)]  # files only under the manifest's folder/data root
    start = 0
    for df in pd.read_csv(p, chunksize=chunk):
        df = df.reset_index(drop=True)
        where = f"{p} (rows {start + 2}-{start + len(df) + 1})"
        arrays, masks, _ = read_rows(
            df,
            p.parent,
            mods,
            {},
            on_bad_row="missing",
            categories=cats,
            where=where,
            contain=roots,
        )
        if "id" in df.columns:
            ids = df["id"].astype(str)
        else:
            ids = pd.Series([f"row-{start + i + 2}" for i in range(len(df))])
        yield arrays, masks, pd.DataFrame({"id": ids})
        start += len(df)


def table(
    ids: pd.DataFrame, p: np.ndarray, labels: list[str], task: str, threshold: float
) -> pd.DataFrame:
    """``id, prob_<label>..., label[, threshold]`` (the ``medfuse predict`` layout)."""
    from medfuse.inference.inputs import prediction_table

    return prediction_table(ids, p, labels, task, threshold)


class TableWriter:
    """Append tables to a CSV (file or stream) or a Parquet file, header/schema once."""

    def __init__(self, out: str | Path | None, stream: IO[str] | None = None) -> None:
        self.path = Path(out) if out is not None else None
        self.stream = stream if stream is not None else sys.stdout
        self.parquet = self.path is not None and self.path.suffix.lower() in (".parquet", ".pq")
        self._pq: Any = None
        self._csv: IO[str] | None = None
        self.rows = 0

    def write(self, df: pd.DataFrame) -> None:
        if self.parquet:
            import pyarrow as pa
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

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()
        if self._csv is not None and self.path is not None:
            self._csv.close()
        elif self._csv is not None:
            self._csv.flush()


def load_predictor(package: str | Path, runtime: str, device: str) -> Any:
    from medfuse.serve.service import load_predictor as _load

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
) -> int:
    """Predict ``input_path`` chunk by chunk and append to ``out`` (stdout when None).

    Returns the number of rows written. ``progress`` (default: when stderr is a terminal) shows
    a rich progress bar.
    """
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1; got {batch_size}")
    pred = load_predictor(package, runtime, device)
    meta = pred.meta
    labels, task = list(meta["labels"]), str(meta["task"])
    chunk = int(chunk or max(batch_size, 1024))
    writer = TableWriter(out, stream)
    show = sys.stderr.isatty() if progress is None else progress
    total = count_rows(Path(input_path)) if show and str(input_path).endswith(".csv") else None
    bar = None
    if show:
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
    try:
        for arrays, masks, ids in iter_chunks(input_path, meta, chunk):
            p = pred.predict_proba({**arrays, "mask": masks}, batch_size=batch_size)
            writer.write(table(ids, p, labels, task, pred.threshold))
            if bar is not None:
                bar.advance(job, len(ids))
    finally:
        writer.close()
        if bar is not None:
            bar.stop()
    return writer.rows
