"""A table in, a spec out: type a CSV's columns and infer the medfuse spec that trains on it.

``infer_table_spec(table, label=..., positive=...)`` reads a CSV (or takes a DataFrame), types
every column and returns a :class:`TableSpec`: a plain spec dict for the existing ``manifest:``
source, plus the typing it was made from. ``medfuse train --table`` and ``medfuse.fit`` save it
next to the package (``<out>.spec.yaml``) and train from that file, so ``medfuse train
<out>.spec.yaml`` repeats the run.

Column typing, in this order (each overridable by argument):

- the **label** column (given); **id** column by name (``id``, ``case_id``, ``sample_id``, ...);
  **patient** column by name (``patient_id``, ``patient``, ``subject_id``, ``mrn``, ...);
  a ``split`` column (``train``/``val``/``test``) is used as the split;
- a **file** column: at least 80% of its non-empty cells end in a known extension. Images:
  PNG, JPEG, BMP, TIFF, DICOM (``.dcm``/``.dicom``), NIfTI (``.nii``/``.nii.gz``); signals:
  WFDB headers (``.hea``) and CSV signals (``.csv``); ``.npy`` is an image or a signal by the
  array's shape. Shape (channels, size or length) is read from a few files;
- **numeric** when every non-empty cell parses as a number; **categorical** when it is text with
  at most ``MAX_CATEGORIES`` distinct values, unless half of it starts like numbers (dates,
  ``12 mg``, ``1a``: training refuses those as numbers written as text); any other text column
  (free text, dates) is **ignored** and listed as such. All numeric and categorical columns
  form one tabular modality, ``clinical``.

The task comes from the label column: ``;``-separated cells are multilabel; two distinct values
binary (string labels need ``positive``; numeric 0/1 take 1); more are multiclass (numeric labels
in numeric order, text sorted). The label order is written to both ``task.labels`` and
``data.options.labels``, so the class order (and the positive class, the second) is explicit.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medfuse.core.errors import DataError, SpecError, did_you_mean, refuse_duplicate_columns
from medfuse.core.package import package_out
from medfuse.core.readers import read_image, read_signal
from medfuse.core.readers.base import SIGNAL_LAYOUTS, suffix_of
from medfuse.core.spec import DEFAULT_BRANCH, apply_overrides, parse_spec
from medfuse.data.manifest import (
    NUMBER_LIKE_SHARE,
    PATIENT_NAMES,
    named_column,
    number_like_share,
    read_csv_frame,
    refuse_case_variants,
    split_column,
)

#: what ``medfuse train --table`` / ``medfuse.fit`` train with when nothing is set; chosen by
#: ``benchmarks/table_defaults.py`` (cross-validation over train + val, never a test split)
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 64,
    "optimizer": "adamw",
    "lr": 0.001,
    "weight_decay": 0.0001,
    "schedule": "cosine",
    "keep": "last",
    "early_stopping": None,
    "class_weights": "none",
}
#: optimizer steps the epoch count aims at, and its bounds
TARGET_STEPS, MIN_EPOCHS, MAX_EPOCHS = 3000, 8, 40
#: the manifest source's split defaults (``data.options.val_fraction`` / ``test_fraction``)
VAL_FRACTION, TEST_FRACTION = 0.15, 0.15

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz")
SIGNAL_EXTS = (".hea", ".csv")
DISPLAY_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ID_NAMES = ("id", "case_id", "caseid", "sample_id", "sampleid", "study_id", "studyid", "exam_id",
            "accession", "accession_number", "record_id", "image_id", "uid")  # fmt: skip
SPLIT_NAME = "split"
MAX_CATEGORIES = 20
FILE_SHARE = 0.8  # share of non-empty cells with a known extension that makes a file column
SAMPLE_FILES = 8  # files read per file column to infer its shape
MAX_IMAGE_SIDE = 128  # larger images (volumes) are resized to this longest side, aspect kept
TABULAR_NAME = "clinical"


def default_epochs(n_train: int, batch_size: int = 64) -> int:
    """Epochs for ``n_train`` training samples: about TARGET_STEPS steps, within the bounds."""
    steps = max(1, math.ceil(n_train / batch_size))
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(TARGET_STEPS / steps))))


def train_defaults(n_train: int) -> dict[str, Any]:
    """The ``train:`` section for a table of ``n_train`` training rows."""
    d = dict(TRAIN_DEFAULTS)
    d["epochs"] = default_epochs(n_train, d["batch_size"])
    return d


@dataclass
class Column:
    """How one column of the table was typed."""

    name: str
    kind: str  # label | id | patient | split | image | signal | numeric | categorical | ignored
    detail: str = ""


@dataclass
class TableSpec:
    """An inferred spec (a plain dict, valid for ``parse_spec``) and the typing behind it."""

    spec: dict[str, Any]
    columns: list[Column]
    csv: Path
    notes: list[str] = field(default_factory=list)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.spec, sort_keys=False)

    def describe(self) -> str:
        """The column typing and the spec, as printed by ``medfuse train --table``."""
        width = max(len(c.name) for c in self.columns) + 2
        lines = [f"medfuse: columns of {self.csv}"]
        lines += [f"  {c.name:<{width}}{c.kind:<12}{c.detail}" for c in self.columns]
        lines += [f"  note: {n}" for n in self.notes]
        lines += ["inferred spec:", *("  " + x for x in self.to_yaml().splitlines())]
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write the spec YAML (with a header saying where it came from)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        head = f"# inferred by medfuse from {self.csv}; train again with: medfuse train {p}\n"
        p.write_text(head + self.to_yaml())
        return p


def table_path_for(out: str | Path) -> Path:
    """Where a DataFrame trained into a package at ``out`` is written: ``<out>.table.csv``."""
    out = Path(out)
    return out.with_name(out.name + ".table.csv")


def spec_path_for(out: str | Path) -> Path:
    """Where the inferred spec of a package at ``out`` is saved: ``<out>.spec.yaml`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".spec.yaml")


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (str(v).strip() == "")


def _cells(s: pd.Series) -> list[str]:
    return [str(v).strip() for v in s.tolist() if not _empty(v)]


def _ext_share(cells: list[str], exts: tuple[str, ...]) -> float:
    return sum(suffix_of(c) in exts for c in cells) / max(1, len(cells))


def _resolve(cell: str, base: Path) -> Path:
    p = Path(cell).expanduser()
    return p if p.is_absolute() else base / p


def _by_name(df: pd.DataFrame, names: tuple[str, ...], given: str | None, what: str) -> str | None:
    if given is not None:
        if given not in df.columns:
            raise DataError(
                f"no {what} column {given!r}{did_you_mean(given, df.columns)} "
                f"Columns: {', '.join(map(str, df.columns))}"
            )
        return given
    return named_column(df, names)


def _name(text: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z_]+", "_", text).strip("_").lower()
    return s or "table"


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def _image_modality(col: str, cells: list[str], base: Path) -> tuple[dict[str, Any], str]:
    """Channels and size from a few readable files; ``window: file`` for DICOM mixed with PNG."""
    exts = {suffix_of(c) for c in cells}
    dicom = exts & {".dcm", ".dicom"}
    display = exts & set(DISPLAY_EXTS)
    shapes, windowed, errors = [], [], []
    for cell in cells:
        if len(shapes) >= SAMPLE_FILES:
            break
        path = _resolve(cell, base)
        if not path.exists():
            continue
        try:
            x = read_image(path)
        except DataError as err:
            errors.append(str(err))
            continue
        shapes.append(x.shape)
        if suffix_of(cell) in (".dcm", ".dicom"):
            windowed.append(_dicom_has_window(path))
    if not shapes:
        first = errors[0] if errors else f"none of its files exists (first: {cells[0]})"
        raise DataError(f"column {col!r} holds image paths but no file could be read: {first}")
    channels = int(_most_common([s[0] for s in shapes]))
    spatial = tuple(int(v) for v in _most_common([s[1:] for s in shapes]))
    size = list(spatial)
    big = max(size)
    if big > MAX_IMAGE_SIDE:  # keep the aspect ratio, longest side (depth too) MAX_IMAGE_SIDE
        size = [max(1, round(v * MAX_IMAGE_SIDE / big)) for v in size]
    m: dict[str, Any] = {"kind": "image", "channels": channels, "size": size}
    detail = f"{', '.join(sorted(exts))}; {channels} channel(s), read {list(spatial)} -> {size}"
    if dicom and display:  # display images (0-255) and DICOM (modality units) in one column
        if not windowed or not all(windowed):
            raise DataError(
                f"column {col!r} mixes DICOM ({', '.join(sorted(dicom))}) with display images "
                f"({', '.join(sorted(display))}) and not every DICOM carries a window "
                "(WindowCenter/WindowWidth), so they cannot be put on one intensity scale; "
                "convert them to one format, or give a spec with modalities."
                f"{col}.window: [centre, width]"
            )
        m["window"] = "file"
        detail += "; window: file (DICOM window, display images scaled to [0, 1])"
    return m, detail


def _dicom_has_window(path: Path) -> bool:
    # lazy: pydicom (medfuse[medical]), only for DICOM
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return "WindowCenter" in ds and "WindowWidth" in ds


def _signal_modality(col: str, cells: list[str], base: Path) -> tuple[dict[str, Any], str]:
    shapes, errors, layouts = [], [], []
    for cell in cells:
        if len(shapes) >= SAMPLE_FILES:
            break
        path = _resolve(cell, base)
        if not path.exists():
            continue
        try:
            shapes.append(read_signal(path).shape)
            suf = suffix_of(path)
            layouts.append(SIGNAL_LAYOUTS.get(suf)(path) if suf in SIGNAL_LAYOUTS else None)
        except DataError as err:
            errors.append(str(err))
    if not shapes:
        first = errors[0] if errors else f"none of its files exists (first: {cells[0]})"
        raise DataError(f"column {col!r} holds signal paths but no file could be read: {first}")
    channels = int(_most_common([s[0] for s in shapes]))
    length = int(_most_common([s[-1] for s in shapes]))
    exts = sorted({suffix_of(c) for c in cells})
    mod: dict[str, Any] = {"kind": "signal", "channels": channels, "length": length}
    mod.update(_fixed_layout(layouts, channels))
    said = f"; {mod['rate']:g} Hz" if "rate" in mod else ""
    said += f"; leads {', '.join(mod['leads'])}" if "leads" in mod else ""
    return mod, f"{', '.join(exts)}; {channels} channel(s), {length} samples{said}"


def _fixed_layout(
    layouts: list[tuple[float | None, list[str] | None] | None], channels: int
) -> dict[str, Any]:
    """``rate`` and ``leads`` for a signal column whose sampled files all state the same ones
    (WFDB headers, CSV time and lead columns): set, a record from another device is resampled
    and its leads picked by name at prediction instead of being refused (docs/data.md). Left
    out when a file states neither (``.npy``) or the files disagree (training then refuses the
    mix, naming the fix)."""
    if not layouts or any(lay is None for lay in layouts):
        return {}
    rates = {lay[0] for lay in layouts if lay is not None}
    names = {tuple(lay[1] or ()) for lay in layouts if lay is not None}
    out: dict[str, Any] = {}
    if len(rates) == 1 and None not in rates:
        out["rate"] = float(next(iter(rates)))  # type: ignore[arg-type]
    if len(names) == 1 and len(lead := list(next(iter(names)))) == channels:
        out["leads"] = lead
    return out


def _npy_kind(cells: list[str], base: Path) -> str:
    """``.npy`` files: a signal when 1D or (C, T) with T > 8 C, else an image."""
    for cell in cells:
        path = _resolve(cell, base)
        if path.exists():
            shape = np.load(path, mmap_mode="r").shape
            if len(shape) == 1 or (len(shape) == 2 and shape[1] > 8 * shape[0]):
                return "signal"
            return "image"
    return "image"


def _task(
    df: pd.DataFrame, label: str, positive: str | None, where: str
) -> tuple[str, list[str], str]:
    """Task type, label order ([negative, positive] for binary) and a description."""
    if label not in df.columns:
        raise DataError(
            f"{where}: no label column {label!r}{did_you_mean(label, df.columns)} "
            f"Columns: {', '.join(map(str, df.columns))}"
        )
    s = df[label]
    empty = s.map(_empty)
    if empty.any():
        raise DataError(
            f"{where} row {int(np.argmax(empty.to_numpy())) + 2}: empty label in column {label!r} "
            "(every training row needs a label; drop unlabelled rows, or predict them later)"
        )
    cells = s.astype(str).str.strip()
    if cells.str.contains(";").any():
        names = sorted({t.strip() for c in cells for t in c.split(";") if t.strip()})
        refuse_case_variants(names, label, where)  # the spec then declares these labels
        if positive is not None:
            raise SpecError("positive", f"applies to binary tasks; {label!r} is multilabel")
        return "multilabel", names, f"multilabel ({len(names)} labels, ';'-separated)"
    values = sorted(cells.unique(), key=lambda v: (float(v) if _isnum(v) else math.inf, v))
    refuse_case_variants(values, label, where)
    counts = cells.value_counts()
    if len(values) < 2:
        raise DataError(f"{where}: label column {label!r} holds one value only ({values})")
    if len(values) == 2:
        if positive is None:
            if set(values) <= {"0", "1"} or set(values) <= {"0.0", "1.0"}:
                positive = values[1]
            else:
                raise SpecError(
                    "positive",
                    f"the binary label {label!r} has values {values}: say which is the positive "
                    f"class (the one whose probability is predicted), e.g. --positive {values[1]} "
                    f"or fit(..., positive={values[1]!r})",
                )
        positive = str(positive).strip()
        if positive not in values:
            raise SpecError(
                "positive",
                f"{positive!r} is not a value of {label!r}{did_you_mean(positive, values)} "
                f"Values: {', '.join(values)}",
            )
        order = [v for v in values if v != positive] + [positive]
        desc = ", ".join(f"{v}: {int(counts[v])}" for v in order)
        return "binary", order, f"binary, positive {positive!r} ({desc})"
    if all(_isnum(v) for v in values) and len(values) > MAX_CATEGORIES:
        raise DataError(
            f"{where}: label {label!r} has {len(values)} distinct numbers; it looks continuous, "
            "and medfuse predicts classes (binary, multiclass, multilabel): bin it into classes"
        )
    if positive is not None:
        raise SpecError(
            "positive", f"applies to binary tasks; {label!r} has {len(values)} classes ({values})"
        )
    rare = [v for v in values if counts[v] < 2]
    if rare:
        raise DataError(
            f"{where}: label {rare[0]!r} of {label!r} occurs once; every class needs at least "
            "2 rows (one could never be both trained on and validated)"
        )
    desc = ", ".join(f"{v}: {int(counts[v])}" for v in values)
    return "multiclass", values, f"multiclass, {len(values)} classes ({desc})"


def _isnum(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def read_table(table: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, Path | None]:
    """The table and its CSV file (None for a DataFrame)."""
    if isinstance(table, pd.DataFrame):
        refuse_duplicate_columns("the DataFrame", table.columns)
        return table.reset_index(drop=True), None
    path = Path(table).expanduser()
    if not path.exists():
        raise DataError(f"table {path} not found")
    if suffix_of(path) != ".csv":
        raise DataError(f"{path}: a table must be a .csv file (or a pandas DataFrame)")
    return read_csv_frame(path), path


def infer_table_spec(
    table: str | Path | pd.DataFrame,
    *,
    label: str,
    positive: str | None = None,
    id_column: str | None = None,
    patient_column: str | None = None,
    base_dir: str | Path | None = None,
    name: str | None = None,
    seed: int = 0,
    csv_path: str | Path | None = None,
) -> TableSpec:
    """Type the table's columns and build the spec that trains on it (see the module docstring).

    ``base_dir``: where relative file paths resolve (default: the CSV's folder; for a DataFrame,
    the working directory). A DataFrame must be written to a CSV for the manifest source:
    ``csv_path`` names it (``fit`` writes ``<out>.table.csv``), and its relative file paths are
    written as absolute paths there; ``base_dir`` is recorded as ``data.options.base_dir``, the
    folder where prediction resolves relative paths of in-memory inputs (as the CSV's folder is
    for a CSV table).
    """
    df, src = read_table(table)
    if src is not None:
        base = Path(base_dir).expanduser() if base_dir else src.parent
        where = str(src)
    else:
        base = Path(base_dir).expanduser() if base_dir else Path.cwd()
        where = "table"
    if len(df) == 0:
        raise DataError(f"{where}: the table has no rows")
    df.columns = [str(c) for c in df.columns]
    task, labels, task_desc = _task(df, label, positive, where)
    id_col = _by_name(df, ID_NAMES, id_column, "id")
    patient_col = _by_name(df, PATIENT_NAMES, patient_column, "patient")
    if id_col is not None and id_col == patient_col:
        raise DataError(f"{where}: {id_col!r} cannot be both the id and the patient column")
    columns: list[Column] = [Column(label, "label", task_desc)]
    notes: list[str] = []
    if id_col:
        columns.append(Column(id_col, "id"))
    if patient_col:
        n_pat = df[patient_col].nunique()
        columns.append(Column(patient_col, "patient", f"{n_pat} patients; splits group by it"))
    split_col = split_column(df, {})  # "split" in any case
    has_split = split_col in df.columns
    if has_split:
        counts = df[split_col].astype(str).str.strip().str.lower().value_counts().to_dict()
        columns.append(
            Column(split_col, "split", ", ".join(f"{k}: {v}" for k, v in counts.items()))
        )
    modalities: dict[str, dict[str, Any]] = {}
    mapping: dict[str, str] = {}
    tabular: list[str] = []
    file_cols: list[tuple[str, str, list[str]]] = []
    for col in df.columns:
        if col in (label, id_col, patient_col) or (has_split and col == split_col):
            continue
        s = df[col]
        cells = _cells(s)
        if not cells:
            columns.append(Column(col, "ignored", "every cell is empty"))
            continue
        num = pd.to_numeric(pd.Series(cells), errors="coerce")
        if num.notna().all():
            holes = int(s.map(_empty).sum())
            tabular.append(col)
            detail = f"range {num.min():g} to {num.max():g}" + (f"; {holes} empty" if holes else "")
            columns.append(Column(col, "numeric", detail))
            if len(cells) > 20 and (num % 1 == 0).all() and num.nunique() == len(cells):
                notes.append(
                    f"column {col!r} holds a different whole number in every row: if it is an "
                    f"identifier, name it with --id-column or drop it (it is used as a feature)"
                )
            continue
        if _ext_share(cells, (*IMAGE_EXTS, *SIGNAL_EXTS, ".npy")) >= FILE_SHARE:
            if _ext_share(cells, IMAGE_EXTS) >= FILE_SHARE:
                kind = "image"
            elif _ext_share(cells, SIGNAL_EXTS) >= FILE_SHARE:
                kind = "signal"
            elif _ext_share(cells, (".npy",)) >= FILE_SHARE:
                kind = _npy_kind(cells, base)
            else:
                raise DataError(
                    f"{where}: column {col!r} mixes image and signal files "
                    f"({', '.join(sorted({suffix_of(c) for c in cells}))}); one kind per column"
                )
            file_cols.append((col, kind, cells))
            continue
        uniq = sorted(set(cells))
        text = pd.Series(cells)[num.isna()]
        if number_like_share(text) >= NUMBER_LIKE_SHARE:  # training would refuse it
            columns.append(Column(col, "ignored", f"numbers written as text ({uniq[0]!r}, ...)"))
            notes.append(
                f"column {col!r} holds text that starts like numbers "
                f"({', '.join(map(repr, uniq[:3]))}): "
                "dates, values with units or codes such as '1a' are not used; write numbers "
                "alone (units in the column name), or categories as words"
            )
            continue
        if len(uniq) <= MAX_CATEGORIES and (len(uniq) <= 2 or len(uniq) <= 0.5 * len(cells)):
            tabular.append(col)
            columns.append(Column(col, "categorical", ", ".join(uniq)))
        else:
            columns.append(Column(col, "ignored", f"text with {len(uniq)} distinct values"))
            notes.append(f"column {col!r} is free text ({len(uniq)} distinct values): not used")
    kinds = Counter(k for _, k, _ in file_cols)
    for col, kind, cells in file_cols:
        mname = kind if kinds[kind] == 1 else _name(col)
        if mname in modalities or mname == TABULAR_NAME:
            mname = f"{mname}_{_name(col)}"
        reader = _image_modality if kind == "image" else _signal_modality
        m, detail = reader(col, cells, base)
        missing = int(df[col].map(_empty).sum())
        absent = sum(not _resolve(c, base).exists() for c in cells)
        detail += f"; {missing} empty" if missing else ""
        detail += f"; {absent} not found" if absent else ""
        modalities[mname] = m
        mapping[mname] = col
        columns.append(Column(col, kind, f"modality {mname!r}: {detail}"))
        if absent:
            notes.append(
                f"{absent} file(s) of {col!r} do not exist: training stops at the first "
                "(data.on_bad_row: fail) unless --on-bad-row missing treats them as missing"
            )
    if tabular:
        modalities[TABULAR_NAME] = {"kind": "tabular", "columns": tabular}
    if not modalities:
        raise DataError(f"{where}: no column besides the label could be used as an input")
    if src is None:  # a DataFrame: written as a CSV the manifest source reads
        if csv_path is None:
            raise SpecError("csv_path", "a DataFrame table needs a CSV path to be written to")
        src = Path(csv_path).expanduser().resolve()
        out_df = df.copy()
        for col in mapping.values():
            out_df[col] = [
                v if _empty(v) else str(_resolve(str(v).strip(), base).resolve())
                for v in out_df[col].tolist()
            ]
        src.parent.mkdir(parents=True, exist_ok=True)
        out_df.to_csv(src, index=False)
    elif base_dir is not None and Path(base_dir).resolve() != src.parent.resolve():
        raise SpecError(
            "base_dir",
            f"file paths in a CSV resolve relative to the CSV's folder ({src.parent}); "
            "move the CSV or write absolute paths",
        )
    n = len(df)
    n_train = (
        int((df[split_col].astype(str).str.strip().str.lower() == "train").sum())
        if has_split
        else round(n * (1 - VAL_FRACTION - TEST_FRACTION))
    )
    options: dict[str, Any] = {"label": label, "labels": list(labels)}
    if mapping:
        options["columns"] = mapping
    if patient_col:
        options["patient_column"] = patient_col
    if id_col:
        options["id_column"] = id_col
    if has_split and split_col != SPLIT_NAME:
        options["split_column"] = split_col
    if not has_split:
        options["val_fraction"], options["test_fraction"] = VAL_FRACTION, TEST_FRACTION
    if isinstance(table, pd.DataFrame) and mapping:
        # where the DataFrame's relative paths resolve: recorded, so that predicting another
        # DataFrame laid out the same way finds its files as the CSV route's package does
        options["base_dir"] = str(base.resolve())
    spec: dict[str, Any] = {
        "name": name or _name(src.stem),
        "task": {
            "type": task,
            "labels": list(labels),
            **({"positive": labels[1]} if task == "binary" else {}),
        },
        "data": {
            "source": f"manifest:{src.resolve()}",
            "options": options,
            "on_bad_row": "fail",
        },
        "modalities": modalities,
        "branches": {m: {"type": DEFAULT_BRANCH[v["kind"]]} for m, v in modalities.items()},
        "fusion": {"type": "concat"},
        "train": {**train_defaults(n_train), "seed": int(seed)},
    }
    if not patient_col:
        notes.append(
            "no patient column: rows are split independently; name one with --patient-column "
            "if a patient has several rows"
        )
    return TableSpec(spec, columns, src.resolve(), notes)


@contextlib.contextmanager
def table_run(
    table: str | Path | pd.DataFrame,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    resumable: Callable[[Path], bool] | None = None,
    **infer: Any,
) -> Iterator[tuple[TableSpec, Path, Path]]:
    """:func:`write_table_spec` (``infer``: its arguments: label, positive, ...) for a run that
    trains from it: ``out`` is checked first (a
    package there needs ``overwrite``: a refused run wrote its spec beside another package),
    and when the body fails (the training failed, the package in ``out`` kept) the files
    beside it are put back as they were, so the spec beside a package is the one it was
    trained from; unless ``resumable(out)`` says the run left a checkpoint (killed, interrupted,
    a rank lost): ``--resume`` continues it from that spec."""
    _, out = table_out(table, out)
    package_out(out, overwrite=overwrite)
    beside = [spec_path_for(out), table_path_for(out)]
    before = {f: f.read_bytes() for f in beside if f.is_file()}
    try:
        yield write_table_spec(table, out=out, **infer)
    except BaseException:
        if resumable is not None and resumable(out):
            raise
        for f in beside:
            if f in before:
                f.write_bytes(before[f])
            else:
                f.unlink(missing_ok=True)
        raise


def table_out(table: str | Path | pd.DataFrame, out: str | Path | None) -> tuple[str, Path]:
    """The model's name and package directory of a table run: the folder's name (``out=
    "runs/hospital"``: ``hospital``), else the CSV's stem (``table`` for a DataFrame), and
    ``runs/<name>`` by default."""
    if out is not None:
        name = _name(Path(out).name)
    else:
        name = "table" if isinstance(table, pd.DataFrame) else _name(Path(table).stem)
    return name, Path(out) if out is not None else Path("runs") / name


def write_table_spec(
    table: str | Path | pd.DataFrame,
    *,
    label: str,
    positive: str | None = None,
    out: str | Path | None = None,
    id_column: str | None = None,
    patient_column: str | None = None,
    base_dir: str | Path | None = None,
    seed: int = 0,
    overrides: list[str] | None = None,
) -> tuple[TableSpec, Path, Path]:
    """Infer the spec of a table, apply ``--set`` overrides and save it beside the package.

    Returns the TableSpec, the package directory (default ``runs/<name>``) and the spec file
    (``<out>.spec.yaml``). A DataFrame is first written to ``<out>.table.csv``. The model's
    name is the package folder's (``out="runs/hospital"``: ``hospital``), else the CSV's stem
    (``table`` for a DataFrame): a CSV and the DataFrame read from it make the same package."""

    name, out = table_out(table, out)
    ts = infer_table_spec(
        table,
        label=label,
        positive=positive,
        id_column=id_column,
        patient_column=patient_column,
        base_dir=base_dir,
        name=name,
        seed=seed,
        csv_path=table_path_for(out),
    )
    ts.spec = apply_overrides(ts.spec, overrides)
    parse_spec(ts.spec)  # a bad --set fails here, naming the field
    return ts, out, ts.save(spec_path_for(out))
