"""``manifest:<file.csv>``: one row per sample; label column(s); a column per file modality holding
a path (relative paths are relative to the CSV); tabular columns. An empty cell = missing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import DataError, SpecError, did_you_mean
from medfuse.core.readers import read_modality
from medfuse.core.spec import ModalitySpec
from medfuse.data import DATASETS, DataBundle, Split
from medfuse.data.splits import group_stratified_split

log = logging.getLogger("medfuse.data")

OPTIONS = (
    "label",
    "labels",
    "columns",
    "split_column",
    "patient_column",
    "id_column",
    "val_fraction",
    "test_fraction",
    "keep_columns",
)


def _empty(v: Any) -> bool:
    return (
        v is None
        or (isinstance(v, float) and np.isnan(v))
        or (isinstance(v, str) and not v.strip())
    )


def encode_tabular(
    df: pd.DataFrame, columns: list[str], categories: dict[str, list[str]] | None, *, where: str
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Numeric columns as float (NaN = missing); text columns as category codes (stored)."""
    categories = dict(categories or {})
    out = np.full((len(df), len(columns)), np.nan, np.float32)
    for j, col in enumerate(columns):
        if col not in df.columns:
            raise DataError(
                f"{where}: no column {col!r}{did_you_mean(col, df.columns)} Columns: {', '.join(map(str, df.columns))}"
            )
        s = df[col]
        num = pd.to_numeric(s, errors="coerce")
        text = s[num.isna() & s.notna() & (s.astype(str).str.strip() != "")]
        if len(text) and col not in categories:
            categories[col] = sorted(map(str, s.dropna().astype(str).str.strip().unique()))
        if col in categories:
            lut = {v: i for i, v in enumerate(categories[col])}
            num = s.map(
                lambda v, lut=lut: lut.get(str(v).strip(), np.nan) if not _empty(v) else np.nan
            ).astype(float)
        out[:, j] = num.to_numpy(dtype=np.float32)
    return out, categories


def read_rows(
    df: pd.DataFrame,
    base: Path,
    modalities: dict[str, ModalitySpec],
    columns: dict[str, str],
    *,
    on_bad_row: str,
    categories: dict[str, dict[str, list[str]]] | None,
    where: str,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Read every modality of every row. Returns arrays, masks and a report (bad rows, categories)."""
    n = len(df)
    arrays: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {"bad_rows": [], "categories": {}}
    for name, m in modalities.items():
        if m.kind == "tabular":
            x, cats = encode_tabular(
                df, list(m.columns or []), (categories or {}).get(name), where=where
            )
            arrays[name] = x
            masks[name] = (~np.isnan(x).all(axis=1)).astype(np.float32)
            report["categories"][name] = cats
            continue
        col = columns.get(name, name)
        if col not in df.columns:
            raise DataError(
                f"{where}: no column {col!r} for modality {name!r}{did_you_mean(col, df.columns)}"
            )
        x = np.zeros((n, *m.shape), np.float32)
        mask = np.zeros(n, np.float32)
        for i, cell in enumerate(df[col].tolist()):
            if _empty(cell):
                continue
            path = Path(str(cell).strip())
            path = path if path.is_absolute() else base / path
            try:
                x[i] = read_modality(path, m)  # reader by file type, fitted to m.shape
                mask[i] = 1.0
            except DataError as err:
                msg = f"{where} row {i + 2} ({name}): {err}"
                if on_bad_row == "fail":
                    raise DataError(
                        msg
                        + " (use data.on_bad_row=missing to treat such rows as a missing modality)"
                    ) from None
                report["bad_rows"].append(msg)
        arrays[name], masks[name] = x, mask
    if report["bad_rows"]:
        log.warning(
            "%d unreadable cells treated as missing modalities; first: %s",
            len(report["bad_rows"]),
            report["bad_rows"][0],
        )
    return arrays, masks, report


def _labels(
    df: pd.DataFrame, label: str | list[str], names: list[str] | None, task: str | None, where: str
) -> tuple[np.ndarray, list[str], str]:
    if isinstance(label, list) and len(label) > 1:
        for c in label:
            if c not in df.columns:
                raise DataError(f"{where}: no label column {c!r}")
        y = df[label].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
        if np.isnan(y).any():
            r = int(np.argwhere(np.isnan(y))[0][0])
            raise DataError(f"{where} row {r + 2}: label columns must hold 0/1")
        return y, list(label), "multilabel"
    col = label[0] if isinstance(label, list) else label
    if col not in df.columns:
        raise DataError(
            f"{where}: no label column {col!r}{did_you_mean(col, df.columns)} (set data.options.label)"
        )
    values = df[col]
    if values.isna().any():
        raise DataError(
            f"{where} row {int(np.argmax(values.isna().to_numpy())) + 2}: empty label in column {col!r}"
        )
    vals = values.astype(str).str.strip()
    if task == "multilabel":  # one column of ';'-separated labels
        sets = [{t.strip() for t in v.split(";") if t.strip()} for v in vals]
        names = names or sorted(set().union(*sets))
        for r, s in enumerate(sets):
            if s - set(names):
                raise DataError(
                    f"{where} row {r + 2}: labels {sorted(s - set(names))} not in {names}"
                )
        y = np.array([[float(n in s) for n in names] for s in sets], np.float32)
        return y, list(names), "multilabel"
    if names is None:
        uniq = sorted(vals.unique(), key=lambda v: (float(v) if _isnum(v) else np.inf, v))
        names = list(uniq)
    lut = {v: i for i, v in enumerate(names)}
    bad = ~vals.isin(list(lut))
    if bad.any():
        r = int(np.argmax(bad.to_numpy()))
        raise DataError(f"{where} row {r + 2}: label {vals.iloc[r]!r} not in {names}")
    kind = task or ("binary" if len(names) == 2 else "multiclass")
    y = vals.map(lut).to_numpy()
    return (y.astype(np.float32) if kind == "binary" else y.astype(np.int64)), names, kind


def _isnum(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


@DATASETS.register("manifest")
def load_manifest(
    arg: str,
    options: dict[str, Any],
    *,
    root: Path,
    modalities: dict[str, ModalitySpec],
    task: str | None,
    on_bad_row: str,
    seed: int,
) -> DataBundle:
    """A CSV manifest: per-modality file columns, tabular columns, label(s), optional split column."""
    for k in options:
        if k not in OPTIONS:
            raise SpecError(
                f"data.options.{k}",
                f"unknown manifest option{did_you_mean(k, OPTIONS)} Allowed: {', '.join(OPTIONS)}",
            )
    if not arg:
        raise SpecError("data.source", "use manifest:<path/to/file.csv>")
    path = Path(arg).expanduser()
    if not path.exists():
        raise DataError(f"manifest {path} not found")
    if not modalities:
        raise SpecError(
            "modalities",
            "a manifest source needs the spec to declare its modalities (kind and shape)",
        )
    df = pd.read_csv(path)
    where = str(path)
    y, labels, kind = _labels(df, options.get("label", "label"), options.get("labels"), task, where)
    arrays, masks, report = read_rows(
        df,
        path.parent,
        modalities,
        dict(options.get("columns", {})),
        on_bad_row=on_bad_row,
        categories=None,
        where=where,
    )
    patient_col = options.get("patient_column", "patient_id")
    groups = df[patient_col].astype(str).to_numpy() if patient_col in df.columns else None
    split_col = options.get("split_column", "split")
    if split_col in df.columns:
        assign = df[split_col].astype(str).str.strip().str.lower().to_numpy()
        bad = ~np.isin(assign, ["train", "val", "test"])
        if bad.any():
            r = int(np.argmax(bad))
            raise DataError(f"{where} row {r + 2}: split {assign[r]!r} must be train, val or test")
    else:
        fr = (float(options.get("val_fraction", 0.15)), float(options.get("test_fraction", 0.15)))
        assign = group_stratified_split(y, groups, fr, seed)
    id_col = options.get("id_column", "id")
    if id_col not in df.columns and "id_column" in options:
        raise DataError(f"{where}: no id column {id_col!r}{did_you_mean(id_col, df.columns)}")
    keep = [id_col, patient_col, *options.get("keep_columns", [])]
    meta = df[[c for c in dict.fromkeys(keep) if c in df.columns]].copy()
    meta["row"] = np.arange(len(df)) + 2
    if id_col != "id" and id_col in meta:
        meta["id"] = meta[id_col].astype(str)
    if "id" not in meta:
        meta["id"] = [f"row-{r}" for r in meta["row"]]
    if patient_col in meta and patient_col != "patient_id":
        meta["patient_id"] = meta[patient_col]
    full = Split(arrays, masks, y, meta)
    parts = {s: full.subset(np.flatnonzero(assign == s)) for s in ("train", "val", "test")}
    if len(parts["train"]) == 0 or len(parts["val"]) == 0:
        raise DataError(
            f"{where}: the split leaves train or val empty ({ {s: len(p) for s, p in parts.items()} })"
        )
    return DataBundle(
        parts["train"],
        parts["val"],
        parts["test"] if len(parts["test"]) else None,
        dict(modalities),
        labels,
        kind,
        info={
            "name": f"manifest {path.name}",
            "file": str(path),
            "synthetic": False,
            "bad_rows": report["bad_rows"],
            "categories": report["categories"],
        },
    )
