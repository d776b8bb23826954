"""``manifest:<file.csv>``: one row per sample; label column(s); a column per file modality holding
a path (relative paths are relative to the CSV); tabular columns. An empty cell = missing."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import (
    DataError,
    SpecError,
    csv_rows,
    did_you_mean,
    refuse_duplicate_columns,
)
from medfuse.core.paths import require_contained
from medfuse.core.readers import aspect_range, raw_extent, read_fitted
from medfuse.core.readers.base import file_scale, mixed_scales_refusal
from medfuse.core.spec import ModalitySpec
from medfuse.data import DATASETS, DataBundle, Split, manifest_record
from medfuse.data.splits import group_stratified_split
from medfuse.data.stream import LazyColumn, Source, choose_stream

log = logging.getLogger("medfuse.data")

OPTIONS = (
    "base_dir",
    "contain_paths",
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


#: column names that identify a patient (case and surrounding spaces aside): without
#: ``data.options.patient_column`` a manifest's split groups rows by the first such column
PATIENT_NAMES = ("patient_id", "patientid", "patient", "subject_id", "subjectid", "subject",
                 "mrn", "pid", "participant_id", "participant")  # fmt: skip


def named_column(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    """The first column of ``df`` whose name (lower case, stripped) is one of ``names``."""
    return next((str(c) for c in df.columns if str(c).strip().lower() in names), None)


def split_column(df: pd.DataFrame, options: dict[str, Any]) -> str:
    """The column assigning each row its split: ``data.options.split_column`` (default
    ``split``), in any case or spacing (``Split``, ``SPLIT``: a split column spelled so was an
    input feature, and the split drawn by the seed, without a word; an external CSV's ``split``
    is a package's recorded ``Split``); the name itself when there is none (the split is then
    drawn)."""
    name = str(options.get("split_column", "split"))
    key = name.strip().lower()
    found = [str(c) for c in df.columns if str(c).strip().lower() == key]
    if len(found) > 1:
        raise DataError(
            f"columns {', '.join(map(repr, found))} are each named like the split column "
            f"{name!r}; keep one"
        )
    return found[0] if found else name


def patient_column(
    df: pd.DataFrame, options: dict[str, Any], where: str, drawn: bool
) -> str | None:
    """The column holding each row's patient: ``data.options.patient_column`` (``null``: none),
    else the first column named like one (:data:`PATIENT_NAMES`), so that a split drawn by the
    seed (``drawn``) keeps a patient's rows together. A named column that is missing is refused
    when the split is drawn (its rows would be split apart silently); with a split column it
    only feeds the overlap check (:func:`find_overlap`), which then says it is skipped."""
    if "patient_column" not in options:
        found = named_column(df, PATIENT_NAMES)
        if found is not None and found != "patient_id":
            log.info(
                "%s: rows are grouped by patient with column %r (named like a patient "
                "identifier; data.options.patient_column chooses another, null none)",
                where,
                found,
            )
        return found
    given = options["patient_column"]
    if given is None or given in df.columns:
        return None if given is None else str(given)
    msg = (
        f"{where}: no patient column {given!r}{did_you_mean(str(given), df.columns)} Columns: "
        f"{', '.join(map(str, df.columns))}"
    )
    if drawn:
        raise DataError(
            f"{msg}. The split is drawn by the seed and would part a patient's rows: name the "
            "column in data.options.patient_column, or set it to null when each row is its own "
            "patient"
        )
    log.warning("%s; held-out rows are not checked for patients seen in training", msg)
    return None


def patient_groups(values: pd.Series) -> np.ndarray:
    """Each row's patient for a drawn split: a row without one is its own (never one group of
    every empty cell)."""
    return np.array([k or f"\0row {i}" for i, k in enumerate(_keys(values))], dtype=object)


def read_csv_frame(path: Path) -> pd.DataFrame:
    """A manifest or table CSV as a DataFrame; a file pandas cannot read as one table is a
    DataError naming it and, where known, the line: empty (no header line), an unclosed quote,
    a row with more cells than the header (pandas would silently turn its first column into an
    index), text that is not UTF-8."""
    try:
        with warnings.catch_warnings():
            # index_col=False: a row with one cell too many warns (never shifts the columns)
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, index_col=False)
        with open(path, newline="", encoding="utf-8-sig") as f:  # as written (pandas renames)
            refuse_duplicate_columns(str(path), next(csv.reader(f), []))
        return df
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: an empty manifest (no header line)") from None
    except pd.errors.ParserWarning:
        raise DataError(f"{path}{_long_row(path)}: more cells than the header's columns") from None
    except pd.errors.ParserError as err:
        why = " ".join(str(err).split()).removeprefix("Error tokenizing data. C error: ")
        raise DataError(f"{path}: not a readable CSV ({why})") from None
    except UnicodeDecodeError:
        raise DataError(
            f"{path}{_undecodable_line(path)}: not UTF-8 text; save the CSV as UTF-8"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None


def _undecodable_line(path: Path) -> str:
    """' line N' of the first line that is not UTF-8 ('' if none is found)."""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for i, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return f" line {i}"
    return ""


def _long_row(path: Path) -> str:
    """' line N' of the first row with more cells than the header ('' if none is found)."""
    with (
        contextlib.suppress(OSError, UnicodeDecodeError, csv.Error),
        open(path, newline="", encoding="utf-8-sig") as f,
    ):
        reader = csv.reader(f)
        width = len(next(reader, []))
        for row in reader:
            if len(row) > width:
                return f" line {reader.line_num}"
    return ""


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
        if col not in categories and _boolean(s):  # True/False cells (any case): two categories
            categories[col] = ["False", "True"]
        if len(text) and col not in categories:
            _refuse_text_in_numeric(s, num, text, col, where)
            categories[col] = sorted(map(str, s.dropna().astype(str).str.strip().unique()))
            _warn_case_variants(categories[col], col, where)
        if col in categories:
            lut = {v: i for i, v in enumerate(categories[col])}
            num = s.map(
                lambda v, lut=lut: lut.get(str(v).strip(), np.nan) if not _empty(v) else np.nan
            ).astype(float)
            bad = [i for i, v in enumerate(s) if not _empty(v) and np.isnan(num.iloc[i])]
            if bad:  # only with a package's stored codes: codes fit here know every value
                values = sorted({str(s.iloc[i]).strip() for i in bad})
                raise DataError(
                    f"{where}: column {col!r}: {len(bad)} row(s) (first at row {bad[0] + 2}, counting the header as row 1) hold "
                    f"values the model never saw in training: {', '.join(values[:5])}. Allowed: "
                    f"{categories[col]}; correct them, or leave the cells empty to read them as "
                    "missing"
                )
        out[:, j] = num.to_numpy(dtype=np.float32)
    return out, categories


def _case_twins(values: list[str]) -> list[list[str]]:
    """The groups of ``values`` that differ only in letter case ('F', 'f'), in order."""
    groups: dict[str, list[str]] = {}
    for v in values:
        groups.setdefault(v.casefold(), []).append(v)
    return [g for g in groups.values() if len(g) > 1]


def _warn_case_variants(values: list[str], col: str, where: str) -> None:
    """Categories fit on the data that differ only in letter case ('F', 'f') stay separate
    categories (a column may mean them apart); said once, since most often one value is
    written two ways and the model then learns it as two."""
    twins = ["/".join(g) for g in _case_twins(values)]
    if twins:
        log.warning(
            "%s: column %r holds values that differ only in letter case (%s); they are separate "
            "categories as they are: write each value one way in the CSV if they mean the same",
            where,
            col,
            ", ".join(twins),
        )


def _boolean(s: pd.Series) -> bool:
    """A column pandas read as booleans (every non-empty cell True or False in any case)."""
    if s.dtype == bool:
        return len(s) > 0
    cells = s.dropna()
    return s.dtype == object and len(cells) > 0 and all(type(v) in (bool, np.bool_) for v in cells)


#: a cell that starts with a number ("12.3 mg/dL", "<5", "7,2"): a measurement written as text
_NUMBER_LIKE = r"^\s*[<>~≤≥]?\s*[-+]?\d"


def number_like_share(text: pd.Series) -> float:
    """The share of text cells that start like a number (``12 mg``, ``>90``, ``2021-03``,
    ``1a``): a column where it is at least half is read as numbers written as text, never as
    categories (refused by :func:`encode_tabular`; ``--table`` leaves such a column out)."""
    return (
        float(text.astype(str).str.contains(_NUMBER_LIKE, regex=True).mean()) if len(text) else 0.0
    )


#: :func:`number_like_share` from which a text column is numbers written as text
NUMBER_LIKE_SHARE = 0.5


def _refuse_text_in_numeric(
    s: pd.Series, num: pd.Series, text: pd.Series, col: str, where: str
) -> None:
    """A column is numeric (some cells are numbers, or its text starts with numbers) or
    categorical (text labels); text cells in a numeric column are refused, never turned into
    categories or missing values."""
    examples = ", ".join(repr(str(v)) for v in text.astype(str).unique()[:3])
    if num.notna().any():
        raise DataError(
            f"{where}: column {col!r} holds numbers and text ({csv_rows(text.index)}: {examples}); "
            "write the numbers alone (units in the column name) and leave a missing value empty"
        )
    if number_like_share(text) >= NUMBER_LIKE_SHARE:
        raise DataError(
            f"{where}: column {col!r} holds numbers written as text ({csv_rows(text.index)}: "
            f"{examples}); it would be read as {text.nunique()} unrelated categories. Write the "
            "numbers alone (units in the column name)"
        )


def _read_texts(
    cells: list[Any], base: Path, name: str, where: str, contain: list[Path] | None
) -> tuple[np.ndarray, np.ndarray]:
    texts = np.full(len(cells), "", dtype=object)
    for i, cell in enumerate(cells):
        if _empty(cell):
            continue
        t = str(cell)
        if t.strip().endswith(".txt"):
            path = Path(t.strip())
            path = path if path.is_absolute() else base / path
            if contain is not None:
                require_contained(path, contain, f"{where} row {i + 2} ({name})")
            try:
                t = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(
                    f"{where} row {i + 2} ({name}): cannot read {path}: {err}"
                ) from None
        texts[i] = t
    mask = np.array([1.0 if str(t).strip() else 0.0 for t in texts], np.float32)
    return texts, mask


def read_rows(
    df: pd.DataFrame,
    base: Path,
    modalities: dict[str, ModalitySpec],
    columns: dict[str, str],
    *,
    on_bad_row: str,
    categories: dict[str, dict[str, list[str]]] | None,
    where: str,
    contain: list[Path] | None = None,
    lazy: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Read every modality of every row. Returns arrays, masks and a report (bad rows, categories).
    With ``contain``, a file path outside those folders is refused (never read). With ``lazy``,
    file modalities are not read: each becomes a ``LazyColumn`` (``medfuse.data.stream``) whose
    mask says which cells name a file; the stream pass reads them."""
    n = len(df)
    arrays: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {"bad_rows": [], "categories": {}, "paths": {}}
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
        if m.kind == "text":  # the text itself, or a .txt file per row (tokenized after the split)
            arrays[name], masks[name] = _read_texts(df[col].tolist(), base, name, where, contain)
            continue
        report["paths"][name] = ["" if _empty(c) else str(c).strip() for c in df[col].tolist()]
        if lazy:
            arrays[name], masks[name] = _lazy_column(
                name, m, report["paths"][name], base, where, contain
            )
            continue
        x = np.zeros((n, *m.shape), np.float32)
        mask = np.zeros(n, np.float32)
        scales: dict[str, list[int]] = {}  # each file's own scale (file_scale), one allowed
        aspects: list[float] = []  # each file's width / height or length before it was fitted
        for i, cell in enumerate(df[col].tolist()):
            if _empty(cell):
                continue
            path = cell_path(str(cell).strip(), base, contain, f"{where} row {i + 2} ({name})")
            try:
                x[i], raw = read_fitted(path, m)  # reader by file type, fitted to m.shape
                scale = file_scale(path, m)  # an image's scale, a signal's rate and leads
                mask[i] = 1.0  # read whole, as the stream pass counts a row
                aspects.append(raw_extent(raw, m.kind))
                if scale:
                    scales.setdefault(scale, []).append(i)
            except DataError as err:
                msg = f"{where} row {i + 2} ({name}): {err}"
                if on_bad_row == "fail":
                    raise DataError(
                        msg
                        + " (use data.on_bad_row=missing to treat such rows as a missing modality)"
                    ) from None
                report["bad_rows"].append(msg)
        if len(scales) > 1:
            raise DataError(mixed_scales_refusal(where, name, m.kind, scales))
        report.setdefault("scales", {})[name] = next(iter(scales), None)
        if rec := aspect_range(aspects):
            report.setdefault("aspects", {})[name] = rec
        arrays[name], masks[name] = x, mask
    if report["bad_rows"]:
        log.warning(
            "%d unreadable cells treated as missing modalities; first: %s",
            len(report["bad_rows"]),
            report["bad_rows"][0],
        )
    return arrays, masks, report


def cell_path(cell: str, base: Path, contain: list[Path] | None, where: str) -> Path:
    """The file a manifest cell names, as both the in-memory and the streamed path read it:
    relative to ``base``, made absolute but not resolved (``..`` and links are the file
    system's to follow when the file is opened, so a WFDB header reached through a link finds
    the data files beside the link, as wfdb does); with ``contain``, refused when it lies
    outside those folders."""
    path = Path(cell)
    path = (path if path.is_absolute() else base / path).absolute()
    if contain is not None:
        require_contained(path, contain, where)
    return path


def _lazy_column(
    name: str,
    m: ModalitySpec,
    cells: list[str],
    base: Path,
    where: str,
    contain: list[Path] | None,
) -> tuple[Any, np.ndarray]:
    """A file modality to stream: each cell's path (:func:`cell_path`), unread."""

    paths = []
    for i, cell in enumerate(cells):
        if not cell:
            paths.append("")
            continue
        paths.append(str(cell_path(cell, base, contain, f"{where} row {i + 2} ({name})")))
    mask = np.array([1.0 if p else 0.0 for p in paths], np.float32)
    return LazyColumn(Source(name, m, paths, where=where), np.arange(len(paths))), mask


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
    blank = values.map(_empty).to_numpy(bool)  # NaN, or only spaces: no label
    if blank.any():
        raise DataError(
            f"{where} row {int(np.argmax(blank)) + 2}: empty label in column {col!r} (every "
            "row needs a label; drop unlabelled rows, or predict them)"
        )
    vals = values.astype(str).str.strip()
    if names is not None:  # YAML numbers ([0, 1], [0.0, 1.0]) name the classes '0' and '1'
        names = [v if isinstance(v, str) else _label_text(v) for v in names]
    if task == "multilabel":  # one column of ';'-separated labels
        sets = [{t.strip() for t in v.split(";") if t.strip()} for v in vals]
        if none := [r for r, s in enumerate(sets) if not s]:  # ';' alone: not "no label" unsaid
            raise DataError(
                f"{where} row {none[0] + 2}: label {vals.iloc[none[0]]!r} in column {col!r} names "
                f"no label ({len(none)} such row(s)); a case with none of the labels is a row of "
                "zeros in one 0/1 column per label (data.options.label: [MI, STTC, ...])"
            )
        if names is None:
            names = sorted(set().union(*sets))
            refuse_case_variants(names, col, where)
        for r, s in enumerate(sets):
            if s - set(names):
                raise DataError(
                    f"{where} row {r + 2}: labels {sorted(s - set(names))} not in {names}"
                )
        y = np.array([[float(n in s) for n in names] for s in sets], np.float32)
        return y, list(names), "multilabel"
    vals = vals.map(_label_text)  # 0/1, 0.0/1.0: one spelling per class, names given or not
    if names is None:
        names = sorted(vals.unique(), key=lambda v: (float(v) if _isnum(v) else np.inf, v))
        refuse_case_variants(names, col, where)
    lut = {_label_text(v): i for i, v in enumerate(names)}
    if len(lut) < len(names):
        raise DataError(f"{where}: data.options.labels {names} name a class twice")
    bad = ~vals.isin(list(lut))
    if bad.any():
        r = int(np.argmax(bad.to_numpy()))
        raise DataError(f"{where} row {r + 2}: label {vals.iloc[r]!r} not in {names}")
    kind = task or ("binary" if len(names) == 2 else "multiclass")
    if kind == "binary" and len(names) != 2:
        raise DataError(
            f"{where}: a binary task needs 2 labels; column {col!r} holds {len(names)}: "
            f"{', '.join(names)}"
        )
    y = vals.map(lut).to_numpy()
    return (y.astype(np.float32) if kind == "binary" else y.astype(np.int64)), names, kind


def refuse_case_variants(names: list[str], col: str, where: str) -> None:
    """Labels found in the data that differ only in letter case ('Normal', 'normal') would be
    two classes, one class's rows split between them: refused, unless ``data.options.labels``
    names both (then they are the classes declared); ``medfuse train --table`` refuses them
    before it declares the labels it found."""
    twins = _case_twins(names)
    if twins:
        shown = "; ".join(" and ".join(repr(v) for v in g) for g in twins)
        raise DataError(
            f"{where}: column {col!r} holds labels that differ only in letter case: {shown}. As "
            "they are they would be separate classes; write each class one way in the CSV, or, "
            f"if they are different classes, declare them: data.options.labels: {names}"
        )


def _canonical(v: str) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else v


def _label_text(v: Any) -> str:
    """A label cell or a given label name as a class name: a whole number in any spelling (1,
    1.0, '1.0') is its integer's text ('1'); anything else its stripped text."""
    s = str(v).strip()
    return _canonical(s) if _isnum(s) else s


def declared_positive(labels: list[str], explicit: bool) -> str | None:
    """The positive class a manifest's labels declare: the second of an explicit ``labels``
    option ([negative, positive]), ``1`` of 0/1 labels; else None (``task.positive`` decides)."""
    if len(labels) != 2:
        return None
    if explicit or labels == ["0", "1"]:
        return labels[1]
    return None


def _isnum(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


#: while an existing package's data is read for one split (:func:`reading_split`): its name
_READING: ContextVar[str | None] = ContextVar("_READING", default=None)


@contextlib.contextmanager
def reading_split(name: str | None) -> Iterator[None]:
    """Manifests loaded inside this block are read for the one split ``name`` (``medfuse
    evaluate --split``): it must have rows, and train and val may be empty (an external test set
    whose every row is ``test``); outside it, training's rule holds (train and val need rows)."""
    token = _READING.set(name)
    try:
        yield
    finally:
        _READING.reset(token)


#: the pairs of splits checked for shared samples: (the earlier split, the held-out one)
SPLIT_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))

#: how many shared rows a warning (and ``info["overlap"]``) shows per split pair
SHOWN = 3


def _file_keys(cells: list[str], base: Path) -> list[str]:
    """Each cell's file as one key: absolute, ``..`` and links resolved ("" for an empty cell).
    Cheap: each folder is resolved once; a file is only looked at to see if it is a link (never
    opened)."""
    folders: dict[str, str] = {}
    out = []
    for cell in cells:
        if not cell:
            out.append("")
            continue
        full = os.path.join(base, cell)  # an absolute cell stays as written
        if os.path.islink(full):
            out.append(os.path.realpath(full))
            continue
        head, tail = os.path.split(full)
        if head not in folders:
            folders[head] = os.path.realpath(head)
        out.append(os.path.join(folders[head], tail))
    return out


def _keys(values: pd.Series) -> list[str]:
    return ["" if _empty(v) else str(v).strip() for v in values.tolist()]


def find_overlap(
    df: pd.DataFrame,
    assign: np.ndarray,
    paths: dict[str, list[str]],
    columns: dict[str, str],
    base: Path,
    *,
    id_col: str | None,
    patient_col: str | None,
    split_col: str | None,
    where: str,
) -> list[dict[str, Any]]:
    """Held-out rows (val, test) that share a file (per file modality column, resolved), an id
    (``id_col``) or a patient (``patient_col``) with a row of an earlier split (train; val for
    test): their metrics would be partly measured on samples the model was trained (or
    selected) on. One warning per kind, naming the split pairs, the row count and the first rows
    (CSV rows) with what they share; returned as JSON-able records (``info["overlap"]``).
    A warning, not a refusal: some tables legitimately name one file in several rows."""
    checks: list[tuple[str, str, list[str]]] = [
        ("file", columns.get(m, m), _file_keys(cells, base)) for m, cells in paths.items()
    ]
    if id_col is not None:
        checks.append(("id", id_col, _keys(df[id_col])))
    if patient_col is not None:
        checks.append(("patient", patient_col, _keys(df[patient_col])))
    found: list[dict[str, Any]] = []
    for kind, col, keys in checks:
        for early, held in SPLIT_PAIRS:
            first: dict[str, int] = {}
            for i in np.flatnonzero(assign == early):
                if keys[i]:
                    first.setdefault(keys[i], int(i))
            hits = [
                (int(i), first[keys[i]]) for i in np.flatnonzero(assign == held) if keys[i] in first
            ]
            if not hits:
                continue
            found.append(
                {
                    "kind": kind,
                    "column": col,
                    "splits": [early, held],
                    "rows": len(hits),
                    "shared": len({keys[i] for i, _ in hits}),
                    "first": [
                        {"row": i + 2, f"{early}_row": j + 2, kind: keys[i]}
                        for i, j in hits[:SHOWN]
                    ],
                }
            )
    for kind in ("file", "id", "patient"):
        recs = [r for r in found if r["kind"] == kind]
        if recs:
            log.warning("%s", _overlap_message(kind, recs, split_col, where))
    return found


def _overlap_message(
    kind: str, recs: list[dict[str, Any]], split_col: str | None, where: str
) -> str:
    """One warning for one kind of overlap: what, where (per split pair), what to do."""
    what = {"file": "file", "id": "sample id", "patient": "patient"}[kind]
    parts = []
    for r in recs:
        early, held = r["splits"]
        shown = ", ".join(
            f"row {x['row']} ({early} row {x[f'{early}_row']}: {x[kind]})" for x in r["first"]
        )
        more = f" and {r['rows'] - len(r['first'])} more" if r["rows"] > len(r["first"]) else ""
        parts.append(
            f"{r['rows']} {held} row{'s' if r['rows'] > 1 else ''} share{'' if r['rows'] > 1 else 's'} "
            f"a {what} (column {r['column']!r}) with {early} rows: {shown}{more}"
        )
    seen = sorted({r["splits"][0] for r in recs}, key=("train", "val").index)
    on = " and ".join(
        {
            "train": "training samples",
            "val": "the validation samples that chose the epoch and threshold",
        }[s]
        for s in seen
    )
    held = sorted({r["splits"][1] for r in recs}, key=("val", "test").index)
    if split_col is not None:
        fix = f"give each {what} to one split in column {split_col!r}"
    else:
        fix = (
            "the split was drawn by the seed: name the column that groups a sample's rows in "
            "data.options.patient_column (a patient's rows then stay in one split)"
        )
    if kind == "file":
        fix += ", or, if these rows are meant to share a file, read this as a note"
    return (
        f"{where}: the same {what} in two splits: {'; '.join(parts)}. The "
        f"{'/'.join(held)} metrics are then partly measured on {on}; {fix}"
    )


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
    stream: bool | str = False,
    categories: dict[str, dict[str, list[str]]] | None = None,
) -> DataBundle:
    """A CSV manifest: per-modality file columns, tabular columns, label(s), optional split column.
    ``stream`` (``data.stream``): true or ``auto`` on large data leaves file modalities unread
    (``medfuse.data.stream``). ``categories``: a package's category codes per tabular modality
    and column (a value outside them is refused, naming it); without them, codes are fit on this
    file. Inside :func:`reading_split` the one split named there is the one the caller
    reads (an existing package's ``evaluate``): it must have rows, and train and val may then be
    empty (an external test set, every row ``test``; ``info["empty_splits"]``). Without it,
    train and val must have rows (training).

    ``info["splits"]`` records how the rows were split (rows, counts, the split column or the
    seed); ``info["overlap"]`` the held-out rows that share a file, id or patient with an earlier
    split (:func:`find_overlap`, one warning per kind)."""

    split = _READING.get()
    for k in options:
        if k not in OPTIONS:
            raise SpecError(
                f"data.options.{k}",
                f"unknown manifest option{did_you_mean(k, OPTIONS)} Allowed: {', '.join(OPTIONS)}",
            )
    if not arg:
        raise SpecError("data.source", "use manifest:<path/to/file.csv>")
    path = Path(arg).expanduser()
    if not path.exists() and not path.is_absolute() and (root / path).exists():
        path = root / path  # relative manifests: from here, else under the data root
    if not path.exists():
        raise DataError(f"manifest {path} not found (nor under the data root {root})")
    if not modalities:
        raise SpecError(
            "modalities",
            "a manifest source needs the spec to declare its modalities (kind and shape)",
        )
    df = read_csv_frame(path)
    where = str(path)
    if len(df) == 0:
        raise DataError(f"{where}: the manifest has no rows (a header line only)")
    # relative file paths: against base_dir (a DataFrame's, medfuse.fit), else the CSV's folder
    base = Path(options["base_dir"]).expanduser() if options.get("base_dir") else path.parent
    y, labels, kind = _labels(df, options.get("label", "label"), options.get("labels"), task, where)
    arrays, masks, report = read_rows(
        df,
        base,
        modalities,
        dict(options.get("columns", {})),
        on_bad_row=on_bad_row,
        categories=categories,
        where=where,
        contain=[base, root] if options.get("contain_paths", False) else None,
        lazy=choose_stream(stream, len(df), modalities),
    )
    split_col = split_column(df, options)
    patient_col = patient_column(df, options, where, drawn=split_col not in df.columns)
    groups = patient_groups(df[patient_col]) if patient_col else None
    if split_col in df.columns:
        assign = df[split_col].astype(str).str.strip().str.lower().to_numpy()
        bad = ~np.isin(assign, ["train", "val", "test"])
        if bad.any():
            r = int(np.argmax(bad))
            raise DataError(f"{where} row {r + 2}: split {assign[r]!r} must be train, val or test")
    else:
        fr = (float(options.get("val_fraction", 0.15)), float(options.get("test_fraction", 0.15)))
        try:
            assign = group_stratified_split(y, groups, fr, seed)
        except DataError as few:  # grouped by a column that holds too few patients
            raise DataError(
                f"{where}: column {patient_col!r} holds {few}. If it does not identify patients, "
                "set data.options.patient_column: null (each row its own patient) or name the "
                "column that does; else give the rows a split column"
            ) from None
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
    counts = {s: len(p) for s, p in parts.items()}
    how = (
        f"by column {split_col!r}"
        if split_col in df.columns
        else f"drawn by seed {seed} (no column {split_col!r})"
    )
    empty = [s for s in ("train", "val") if counts[s] == 0]
    if split is not None and counts.get(split, 0) == 0:
        raise DataError(
            f"{where}: no row of the {split} split to read ({counts}, {how}); mark the rows to "
            f"read with {split!r} in column {split_col!r}"
        )
    if split is None and empty:
        raise DataError(
            f"{where}: the split leaves train or val empty ({counts}, {how}); training needs "
            f"rows in both (calibration: val rows): mark some rows 'train' and some 'val' in "
            f"column {split_col!r}, or leave the column out to have them drawn by the seed. A "
            "set with test rows only (an external test set) is read by `medfuse evaluate`"
        )
    overlap = find_overlap(
        df,
        assign,
        report["paths"],
        dict(options.get("columns", {})),
        base,
        id_col=id_col if id_col in df.columns else None,
        patient_col=patient_col if patient_col in df.columns else None,
        split_col=split_col if split_col in df.columns else None,
        where=where,
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
            "manifest": manifest_record(path, arg, root),
            "synthetic": False,
            "bad_rows": report["bad_rows"],
            # what prediction needs to read the same layout again (medfuse.core.inputs.Layout)
            "layout": {
                "columns": dict(options.get("columns", {})),
                "id_column": id_col,
                # the column found, else the option (prediction accepts it as a key)
                "patient_column": patient_col or options.get("patient_column", "patient_id"),
                "base_dir": str(base.resolve()),
            },
            "categories": report["categories"],
            "paths": report["paths"],
            # per image modality read without a window, signal without rate or leads: the
            # files' one scale (file_scale)
            "scales": {k: v for k, v in report.get("scales", {}).items() if v},
            # per image modality: the least and largest width / height of its files before they
            # were fitted (a prediction input far outside is flagged: resizing distorts it)
            "aspects": dict(report.get("aspects", {})),
            # how the rows were split: what `medfuse evaluate` says of the rows it evaluated
            "splits": {
                "rows": len(df),
                "counts": counts,
                "column": split_col if split_col in df.columns else None,
                "split_column": split_col,
                "seed": None if split_col in df.columns else seed,
            },
            "empty_splits": empty,
            "overlap": overlap,
        },
        positive=declared_positive(labels, "labels" in options) if kind == "binary" else None,
    )
