"""The one input contract: every way of giving a package samples, coerced to one ``Batch``.

``coerce(samples, schema)`` is what every prediction entry point calls (the torch and ONNX
predictors, ``medfuse predict``, ``explain``, the HTTP service and its web page,
``python -m medfuse.runtime``). It accepts:

- a dict per sample ``{"image": array | path | Upload, "tabular": {"age": 61, "sex": "F"}}``
  (tabular columns may also be given at the top level: ``{"image": ..., "age": 61}``);
- a list of such dicts; a pandas DataFrame (duck-typed: one sample per ROW) or Series;
- a batched dict ``{m: (N, ...), "mask": {m: (N,)}, "id": [...]}`` (a leading batch axis);
- a path: a CSV (stdlib ``csv``) or Parquet manifest laid out like the training one (the
  package's column mapping, id and patient columns; relative file paths resolve against the
  manifest's directory), an ``.npz`` (arrays ``<m>``, ``mask_<m>``, ``id``) or one file (PNG,
  JPEG, DICOM, NIfTI, ``.npy``, WFDB ``.hea``, a CSV signal: a header naming no manifest column
  and numbers below it) for a model with one image or signal modality;
- a ``Split`` (``.arrays`` / ``.masks``, the data pipeline's own output: passed through).

Images and signals given as arrays are fitted to the modality's shape by the same code as the
file readers (``fit_image`` / ``fit_signal``: a 56-px image feeds a 28-px model). An ``.npy``
signal (a path or an upload) is an array in a file: no lead names, no rate, so its rows are the
model's leads in the model's order at the model's rate (training's readers refuse it for a
modality with ``leads``/``rate``; prediction follows the model card). Structural
mistakes are ``InputError`` naming the row and field and what is allowed (unknown keys with a
did-you-mean, wrong types, shapes that cannot be fitted, a list of strings, a row with no
modality at all). Bad *values* (an unreadable file, NaN or infinite image/signal values, an
infinite tabular value) are errors by default; with ``on_bad_row="missing"`` the modality is
predicted as absent and the row says why (``Batch.reasons``). A tabular NaN / None / empty cell
is a missing value of its column (as in training), and so, in a CSV manifest, is every cell
that training's CSV reader (pandas) reads as missing (``NA``, ``null``, ``N/A``, ...:
``CSV_MISSING``), named per row (``Batch.missing_values``). Values outside the training ranges stored in the package
are flagged (``Batch.flags``), never used unflagged.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medfuse.core.errors import DataError, PackageError, did_you_mean, refuse_duplicate_columns
from medfuse.core.paths import contained, resolve_data_root
from medfuse.core.readers.image_math import fit_image, fit_signal, fit_signal_windows
from medfuse.core.readers.medical import CSV_MISSING

OnBadRow = Literal["fail", "missing"]
ON_BAD_ROW = ("fail", "missing")
UNSEEN = ("error", "flag")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
ACCEPTED = (
    "a dict per sample, a list of dicts, a pandas DataFrame, a batched dict {modality: (N, ...), "
    "'mask': {...}}, or a path (.csv/.parquet manifest, .npz, one image/signal file)"
)
FLOAT32_MAX = float(np.finfo(np.float32).max)


# ---- what the package says about its inputs --------------------------------------------------


@dataclass(frozen=True)
class Modality:
    """One input of the model as ``medfuse.json`` describes it (no pydantic needed); it has
    what ``medfuse.core.readers.read_modality`` needs to read a file for it."""

    name: str
    kind: str
    shape: tuple[int, ...]
    channels: int | None = None
    size: tuple[int, ...] | None = None
    length: int | None = None
    columns: tuple[str, ...] = ()
    sequence: int | None = None
    categories: dict[str, list[str]] = field(default_factory=dict)
    window: Any = None
    leads: list[str] | None = None
    rate: float | None = None
    #: text: the tokenizer (JSON) trained on the training texts, or the pretrained model's own
    #: (the package's preprocessing), and what is added to its ids (``medfuse.core.text``)
    tokenizer: str | None = None
    token_offset: int = 0
    #: the scale the training files came on (``data.scales``: an image read without a window,
    #: a signal's rate and leads without ``rate`` / ``leads``;
    #: ``medfuse.core.readers.base.file_scale``); a file on another is refused
    scale: str | None = None
    #: an image modality's least and largest width / height of its data's files (a signal's:
    #: length in samples; every split of the training manifest) before they were fitted
    #: (``data.aspects``); an input resized from far outside, or a record far longer, is flagged
    aspect: tuple[float, float] | None = None
    #: the package's images were read turned as their EXIF orientation says (packages of
    #: earlier releases read them as stored: a photo with the tag is flagged for them)
    exif_oriented: bool = True

    @property
    def missing_value(self) -> float:
        """What fills an absent sample: NaN for tabular (a missing value), else 0."""
        return float("nan") if self.kind == "tabular" else 0.0


def _aspect(rec: Any, name: str) -> tuple[float, float] | None:
    """``data.aspects[name]`` as :attr:`Modality.aspect` (``None``: not recorded); anything but
    two finite positive numbers, least first, is refused naming the field (an edited package)."""
    if rec is None:
        return None
    try:
        lo, hi = (float(v) for v in rec)
        ok = 0 < lo <= hi < math.inf
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PackageError(
            f"medfuse.json data.aspects.{name} is {rec!r}; it must be [least, largest] "
            "width/height (images) or length (signals) of the training files, two positive "
            "numbers"
        )
    return lo, hi


def modalities_from_meta(meta: dict[str, Any]) -> dict[str, Modality]:
    """The spec's modalities, in model input order, with their per-sample shapes."""
    out: dict[str, Modality] = {}
    stats = meta.get("preprocessing", {})
    scales = (meta.get("data") or {}).get("scales") or {}
    aspects = (meta.get("data") or {}).get("aspects") or {}
    if not isinstance(aspects, dict):
        raise PackageError(f"medfuse.json data.aspects is {aspects!r}; it must map modalities")
    for name, m in meta["spec"]["modalities"].items():
        kind = m["kind"]
        lead = (int(m["sequence"]),) if m.get("sequence") else ()
        if kind == "image":
            shape = (*lead, int(m["channels"]), *(int(v) for v in m["size"]))
        elif kind == "signal":
            shape = (*lead, int(m["channels"]), int(m["length"]))
        elif kind == "text":
            shape = (int(m["length"]),)
        else:
            shape = (*lead, len(m["columns"]))
        out[name] = Modality(
            name=name,
            kind=kind,
            shape=shape,
            channels=m.get("channels"),
            size=tuple(m["size"]) if m.get("size") else None,
            length=m.get("length"),
            columns=tuple(m.get("columns") or ()),
            sequence=m.get("sequence"),
            categories=dict(stats.get(name, {}).get("categories", {}) or {}),
            window=m.get("window"),
            leads=m.get("leads"),
            rate=m.get("rate"),
            tokenizer=stats.get(name, {}).get("tokenizer"),
            token_offset=int(stats.get(name, {}).get("token_offset", 0)),
            scale=scales.get(name),
            aspect=_aspect(aspects.get(name), name),
            exif_oriented=kind != "image" or bool(stats.get(name, {}).get("exif_oriented")),
        )
    return out


@dataclass(frozen=True)
class Layout:
    """How a manifest lays out samples: the column of each file modality (the training spec's
    ``data.options.columns``), the id and patient columns, the training manifest's directory."""

    columns: dict[str, str] = field(default_factory=dict)
    id_column: str = "id"
    patient_column: str | None = "patient_id"
    base_dir: str | None = None

    def column(self, modality: str) -> str:
        return self.columns.get(modality, modality)


def layout_from_meta(meta: dict[str, Any]) -> Layout:
    """The layout recorded at training (``meta["data"]["layout"]``), else the spec's options."""
    rec = (meta.get("data") or {}).get("layout") or {}
    opts = ((meta.get("spec") or {}).get("data") or {}).get("options") or {}
    # the spec's id column first: earlier packages recorded "id" whatever the spec named
    return Layout(
        columns=dict(rec.get("columns", opts.get("columns")) or {}),
        id_column=str(opts.get("id_column") or rec.get("id_column") or "id"),
        patient_column=rec.get("patient_column", opts.get("patient_column", "patient_id")),
        base_dir=rec.get("base_dir"),
    )


@dataclass(frozen=True)
class Schema:
    """Everything coercion needs of a package: modalities, layout, training statistics."""

    modalities: dict[str, Modality]
    layout: Layout = field(default_factory=Layout)
    stats: dict[str, Any] = field(default_factory=dict)
    unseen_category: str = "error"

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Schema:
        data = (meta.get("spec") or {}).get("data") or {}
        return cls(
            modalities=modalities_from_meta(meta),
            layout=layout_from_meta(meta),
            stats=dict(meta.get("preprocessing") or {}),
            unseen_category=str(data.get("unseen_category", "error")),
        )

    @property
    def tabular_columns(self) -> dict[str, str]:
        """Column name -> its tabular modality."""
        return {
            c: m.name for m in self.modalities.values() if m.kind == "tabular" for c in m.columns
        }


# ---- results --------------------------------------------------------------------------------


class InputError(DataError):
    """An input the contract refuses; ``loc`` locates it (row index, modality, column)."""

    def __init__(self, msg: str, loc: tuple[Any, ...] = ()) -> None:
        self.loc = tuple(loc)
        self.msg = msg
        super().__init__(msg)


@dataclass(frozen=True)
class Upload:
    """The bytes of one file (an HTTP upload), with its type as a suffix (``.png``, ``.dcm``).
    ``name``: the file name to read it under (default ``upload<suffix>``); ``companions``: other
    files the reader needs beside it, by plain file name (a WFDB header's ``.dat`` file)."""

    data: bytes
    suffix: str
    name: str = ""
    companions: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Batch:
    """Raw arrays ``{m: (N, *shape)}`` and presence masks ``{m: (N,)}`` as training saw them,
    with per row: its id, per modality why it is absent when a given input was unusable
    (``reasons[m][i]``, "" otherwise), plausibility flags, an error when the row cannot be
    predicted at all (``errors[i]``, "" otherwise), and the tabular columns without a value
    (``missing_values[i]``: NaN / None / empty cells of a present tabular modality, each a
    missing value as in training; an absent modality is ``masks[m][i] == 0`` instead)."""

    arrays: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    ids: list[str]
    reasons: dict[str, list[str]]
    flags: list[list[str]]
    errors: list[str]
    missing_values: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.missing_values:
            self.missing_values = [[] for _ in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, sl: slice) -> Batch:
        return Batch(
            {m: a[sl] for m, a in self.arrays.items()},
            {m: k[sl] for m, k in self.masks.items()},
            self.ids[sl],
            {m: r[sl] for m, r in self.reasons.items()},
            self.flags[sl],
            self.errors[sl],
            self.missing_values[sl],
        )

    def present(self, m: str) -> np.ndarray:
        return np.asarray(self.masks[m]) > 0


def _new_batch(schema: Schema, n: int, ids: list[str]) -> Batch:
    return Batch(
        {
            m: np.full((n, *mod.shape), mod.missing_value, np.float32)
            for m, mod in schema.modalities.items()
        },
        {m: np.zeros(n, np.float32) for m in schema.modalities},
        ids,
        {m: [""] * n for m in schema.modalities},
        [[] for _ in range(n)],
        [""] * n,
    )


# ---- values ---------------------------------------------------------------------------------


class _Bad(Exception):
    """A bad value (unreadable file, non-finite values): fatal or a missing modality."""


def _empty(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float | np.floating):
        return bool(np.isnan(v))
    if isinstance(v, str):
        return not v.strip()
    return type(v).__name__ in ("NAType", "NaTType")


def _tab_value(v: Any, col: str, cats: list[str] | None, policy: str) -> tuple[float, str]:
    """One tabular cell as a float (NaN = missing) and a flag ("" if none)."""
    if _empty(v):
        return float("nan"), ""
    if isinstance(v, bool | np.bool_) and str(bool(v)) not in (cats or []):
        raise InputError(
            f"{v!r} is a boolean; give a number" + (f" or one of {cats}" if cats else "")
        )
    if cats:
        key = str(v).strip()
        if isinstance(v, float | np.floating) and float(v).is_integer():
            key = str(int(v))
        if key not in cats and key.lower() in ("true", "false"):
            key = key.capitalize()  # as pandas read the training CSV: a boolean column's cell
        if key in cats:
            return float(cats.index(key)), ""
        msg = f"{v!r} was never seen in training{did_you_mean(key, cats)} Allowed: {cats}"
        if policy == "flag":
            return float("nan"), f"{col}: {msg} (used as missing)"
        raise InputError(
            msg + " (this package refuses unseen categories; one trained with "
            "data.unseen_category: flag reads them as missing values, flagged)"
        )
    if isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            raise InputError(f"{v!r} is not a number") from None
    elif isinstance(v, int | float | np.integer | np.floating):
        x = float(v)
    else:
        raise InputError(f"a {type(v).__name__} is not a number")
    if math.isnan(x):
        return x, ""
    if not math.isfinite(x) or abs(x) > FLOAT32_MAX:
        raise _Bad(f"{col}: {v!r} is not a finite number (use an empty value for a missing one)")
    return x, ""


def _as_array(v: Any, what: str) -> np.ndarray:
    if np.iscomplexobj(v):
        raise InputError(f"{what}: complex values are not image, signal or tabular input")
    try:
        x = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what}: a {type(v).__name__} is not a numeric array") from None
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(np.float32)
        big = np.abs(x) > FLOAT32_MAX  # beyond float32 is infinite, even if it rounds down
    if big.any():
        y[big] = np.inf
    return y


def _fit(x: np.ndarray, m: Modality) -> np.ndarray:
    """An array fitted to one sample of ``m`` (resize, channels) or an InputError."""
    if x.shape == m.shape:
        return x
    exp = f"({', '.join(map(str, m.shape))})"
    if m.kind == "image" and not m.sequence and m.size:
        c = int(m.channels or 1)
        if x.ndim == len(m.size) + 1 and x.shape[0] not in (1, 3, c):
            raise InputError(
                f"shape {x.shape}: {x.shape[0]} channels cannot be fitted to {c}; expected {exp} "
                "(one sample; a batch needs a leading batch axis and a 'mask' key or an array per sample)"
            )
        try:
            return fit_image(x, c, m.size)
        except DataError as err:
            raise InputError(f"shape {x.shape} cannot be fitted to {exp}: {err}") from None
    if m.kind == "signal" and m.length and (not m.sequence or x.ndim <= 2):
        try:  # a recording (C, T) of a sequence modality: cut into its windows, as training did
            c, t = int(m.channels or 1), int(m.length)
            return fit_signal_windows(x, c, t, m.sequence) if m.sequence else fit_signal(x, c, t)
        except DataError as err:
            raise InputError(f"shape {x.shape} cannot be fitted to {exp}: {err}") from None
    raise InputError(f"shape {x.shape}; expected {exp}")


#: how far (a factor) an image's width / height may lie beyond its training files' before a
#: prediction says that resizing it to the model's size distorts it
ASPECT_MARGIN = 1.25


def fit_note(shape: tuple[int, ...], m: Modality) -> str:
    """What fitting a file's or array's sample of ``shape`` to the model's shape did to it that
    the model's output does not show: an image whose width / height lies beyond its data's
    files' (``Modality.aspect``) by more than :data:`ASPECT_MARGIN` is stretched; a signal over
    :data:`CROPPED_SHARE` longer than the model reads is centre-cropped (most of it unseen).
    ``""`` when neither (an image not resized, or of a package that recorded no proportions)."""
    if m.kind == "signal" and m.length and len(shape) >= 2:
        return _crop_note(int(shape[-1]), m)
    if m.kind != "image" or not m.aspect or not m.size or len(shape) < 2:
        return ""
    h, w = int(shape[-2]), int(shape[-1])
    size = tuple(int(v) for v in m.size[-2:])
    if (h, w) == size or not h or not w:
        return ""
    ratio, (lo, hi) = w / h, m.aspect
    if lo / ASPECT_MARGIN <= ratio <= hi * ASPECT_MARGIN:
        return ""
    held = f"{lo:.2f}" if lo == hi else f"{lo:.2f}..{hi:.2f}"
    return (
        f"{m.name}: a {w}x{h} image (width/height {ratio:.2f}) resized to {size[1]}x{size[0]}; "
        f"the model's images (its training data's files) had width/height {held}, so its "
        "content is stretched: crop or pad it to their proportions"
    )


#: a signal record longer than the model reads by more than this share of itself is flagged:
#: its middle alone is read (``fit_signal``), most of it unseen (as PADDED_SHARE for shorter)
CROPPED_SHARE = 0.5


def _crop_note(held: int, m: Modality) -> str:
    """A record over :data:`CROPPED_SHARE` longer than the model reads, and (when the package
    recorded its files' lengths) longer than its training records by more than
    :data:`ASPECT_MARGIN`: a model trained on long records cropped alike is not flagged."""
    reads = int(m.length or 0) * int(m.sequence or 1)
    if not reads or held - reads <= CROPPED_SHARE * held:
        return ""
    if m.aspect is not None and held <= m.aspect[1] * ASPECT_MARGIN:
        return ""
    secs = f" ({reads / float(m.rate):.3g} s of {held / float(m.rate):.3g} s)" if m.rate else ""
    trained = f" (the training records held {m.aspect[0]:g}..{m.aspect[1]:g})" if m.aspect else ""
    return (
        f"{m.name}: the record holds {held} samples and the model reads its middle {reads}"
        f"{secs}{trained}; the rest is not seen: give the part to read, or train on longer "
        "windows"
    )


def _read_path(path: Path, m: Modality) -> tuple[np.ndarray, str]:
    """A file's sample, fitted, and :func:`fit_note` of what it held."""
    # lazy: keeps the torch-free core's import light
    from medfuse.core.readers import read_fitted
    from medfuse.core.readers.base import exif_orientation, file_scale, same_scale, scale_refusal

    try:
        x, raw = read_fitted(path, m)  # type: ignore[arg-type]
        # "": a file whose type the modality's window reads alike (a PNG under window 'file')
        was = m.scale or ""
        found = file_scale(path, m) if was else ""
        if found and not same_scale(was, found):
            raise _Bad(scale_refusal(str(path), m.name, was, found, m.kind))
        note = fit_note(raw, m)
        if not m.exif_oriented and (turn := exif_orientation(path)) != 1:
            note = "; ".join(filter(None, [note, (
                f"{m.name}: the file's EXIF orientation ({turn}) turns it, and it is read as "
                "shown; this package is of an earlier medfuse, which read photos as stored: if "
                "its training photos carried such a tag, they were read unturned"
            )]))  # fmt: skip
        return np.asarray(x, np.float32), note
    except DataError as err:
        raise _Bad(str(err)) from None
    except MemoryError:
        raise _Bad(f"{path}: the file is too large to decode") from None


def _npy_signal(data: bytes, what: str, m: Modality) -> tuple[np.ndarray, str]:
    """An ``.npy`` signal is an array in a file, fitted as an array is: it has no lead names and
    no sampling rate, so its rows are the model's leads in the model's order, sampled at the
    model's rate (nothing is picked by name or resampled). Images keep their reader (a numeric
    window applies to ``.npy`` images)."""
    # lazy: keeps the torch-free core's import light
    from medfuse.core.readers.image_math import read_npy_bytes

    try:
        x = read_npy_bytes(data)
    except DataError as err:
        raise _Bad(f"{what}: {err}") from None
    try:
        return _fit(x, m), fit_note(x.shape, m)
    except InputError as err:
        raise _Bad(f"{what}: {err.msg}") from None


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and Path(name).name == name and "\\" not in name


def _read_upload(up: Upload, m: Modality) -> tuple[np.ndarray, str]:
    if up.suffix == ".npy" and m.kind == "signal":
        return _npy_signal(up.data, "the uploaded .npy file", m)
    name = up.name or f"upload{up.suffix}"
    for n in (name, *(c for c, _ in up.companions)):
        if not _plain_name(n):
            raise _Bad(f"{n!r} is not a plain file name")
    with tempfile.TemporaryDirectory(prefix="medfuse-upload-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(up.data)
        for cname, data in up.companions:
            (Path(tmp) / cname).write_bytes(data)

        def hide(msg: str) -> str:  # no server paths in a message
            msg = msg.replace(str(path), f"the uploaded {up.suffix} file")
            return msg.replace(tmp + os.sep, "").replace(tmp, "the upload")

        try:
            return _read_path(path, m)
        except _Bad as err:
            raise _Bad(hide(str(err))) from None
        except Exception as err:  # a decoder's own failure on hostile input
            raise _Bad(
                f"cannot decode the uploaded {up.suffix} file ({type(err).__name__})"
            ) from None


def _sniff(data: bytes) -> str:
    if data[:6] == b"\x93NUMPY":
        return ".npy"
    if data[128:132] == b"DICM":
        return ".dcm"
    return ".png"  # Pillow sniffs the image type itself


def _tensor_value(
    v: Any,
    m: Modality,
    base: Path,
    roots: tuple[Path, ...] | None = None,
    alt: Path | None = None,
) -> tuple[np.ndarray, str]:
    """An image/signal value (path, upload, bytes or array) as one fitted, finite sample, and
    :func:`fit_note` of what it held before it was fitted. ``roots``: the folders a file path
    must lie in (a manifest's paths), None for no limit; ``alt``: :func:`_input_path`."""
    note = ""
    if isinstance(v, bytes | bytearray):
        v = Upload(bytes(v), _sniff(bytes(v)))
    if isinstance(v, Upload):
        x, note = _read_upload(v, m)
    elif isinstance(v, str | os.PathLike):
        p = _input_path(v, base, roots, alt)
        if m.kind == "signal" and p.suffix.lower() == ".npy":
            try:
                data = p.read_bytes()
            except OSError as err:
                raise _Bad(f"{p}: cannot be read ({err.strerror})") from None
            x, note = _npy_signal(data, str(p), m)
        else:
            x, note = _read_path(p, m)
    elif isinstance(v, Mapping):
        raise InputError(f"a mapping is not an {m.kind}; give an array, a file path or file bytes")
    else:
        given = _as_array(v, m.kind)
        x = _fit(given, m)
        note = fit_note(given.shape, m)
        unwindowed = _unwindowed(x, m)
        if unwindowed:
            raise _Bad(unwindowed)
    bad = int(x.size - np.isfinite(x).sum())
    if bad == x.size:
        raise _Bad(f"all {x.size} values are NaN or infinite (or beyond float32)")
    if bad:
        raise _Bad(f"{bad} of {x.size} values are NaN or infinite (or beyond float32)")
    return x, note


def _unwindowed(x: np.ndarray, m: Modality) -> str:
    """Why an array cannot be what training saw of a modality read with a window (every
    windowed reader returns [0, 1]: docs/data.md), or ``""``: its values leave [0, 1], so they
    are the file's own (e.g. HU), not windowed, and would be scored as if they were."""
    if m.window is None:
        return ""
    finite = x[np.isfinite(x)]
    slack = 1e-4  # a resize's rounding around the window's ends
    if not finite.size or (finite.min() >= -slack and finite.max() <= 1.0 + slack):
        return ""
    return (
        f"values {finite.min():.4g}..{finite.max():.4g} lie outside [0, 1], but modality "
        f"{m.name!r} is read with window {m.window!r}: the model takes windowed values in "
        "[0, 1]; give the file (the window is applied when it is read) or window the array"
    )


def _input_path(
    v: str | os.PathLike[str],
    base: Path,
    roots: tuple[Path, ...] | None,
    alt: Path | None = None,
) -> Path:
    """A file named in the input: relative to ``base``; inside ``roots`` (a manifest's folder
    and the data root) when given, else refused. ``alt``: another folder the caller may have
    meant (the working directory, when ``base`` is the training manifest's folder chosen for
    want of one): a relative path naming a file in both is refused, not read from either."""
    p = Path(str(v).strip()).expanduser()
    if not p.is_absolute() and alt is not None:
        here, there = base / p, alt / p
        if here.is_file() and there.is_file() and not os.path.samefile(here, there):
            raise InputError(
                f"{v} names a file in the training manifest's folder ({base}) and another in "
                f"the working directory ({alt}); say which: base_dir=... (--base-dir), or "
                "absolute paths"
            )
    p = p if p.is_absolute() else base / p
    if roots is not None and not contained(p, roots):
        raise InputError(
            f"{v} lies outside the allowed folders ({', '.join(map(str, roots))}); paths in "
            "a manifest must stay inside its folder (--base-dir) or the data root"
        )
    return p


def _text_value(
    v: Any,
    m: Modality,
    base: Path,
    roots: tuple[Path, ...] | None = None,
    alt: Path | None = None,
) -> np.ndarray:
    """One text (the text itself, or a path to a UTF-8 ``.txt`` file) as ``(1, length)`` ids.
    Bytes or an upload (HTTP) are the text itself, never a path, whatever they end with: a note
    ``.../x.txt`` sent to the service was read from the server's disk."""
    if isinstance(v, bytes | bytearray | Upload):
        data = v.data if isinstance(v, Upload) else bytes(v)
        try:
            v = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("the uploaded text is not UTF-8") from None
    elif isinstance(v, os.PathLike) or (isinstance(v, str) and v.strip().endswith(".txt")):
        p = _input_path(v, base, roots, alt)
        try:
            v = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise _Bad(f"{p}: cannot read the text file ({type(err).__name__})") from None
    if not isinstance(v, str):
        if isinstance(v, list | tuple | np.ndarray) and np.ndim(v) == 1:  # token ids already
            x = _as_array(v, m.name)
            if x.shape != m.shape:
                raise InputError(f"token ids of shape {x.shape}; expected {m.shape}")
            return x[None]
        raise InputError(f"a {type(v).__name__} is not text; give a string or a .txt file path")
    if m.tokenizer is None:
        raise InputError(f"the package stores no tokenizer for the text modality {m.name!r}")
    # lazy: keeps the torch-free core's import light
    from medfuse.core.text import encode

    return encode([v], m.tokenizer, int(m.length or 0), m.token_offset)


def _texts(v: Any, m: Modality, ctx: _Ctx) -> np.ndarray:
    """Texts, one per sample (None or "" for a missing one), as ``(N, length)`` ids."""
    if isinstance(v, str) or not isinstance(v, list | tuple | np.ndarray):
        raise ctx.error(f"{m.name!r}: give a list of texts, one per sample", (None, m.name))
    if np.ndim(v) == 2 and not any(isinstance(e, str) for e in v):  # rows of token ids
        return _as_array(v, m.name)
    out = np.zeros((len(v), *m.shape), np.float32)
    for i, t in enumerate(v):
        if _empty(t):
            continue
        try:
            out[i] = _text_value(t, m, ctx.base, ctx.roots, ctx.alt)[0]
        except (_Bad, InputError) as err:
            raise ctx.error(str(err), (i, m.name)) from None
    return out


# ---- coercion -------------------------------------------------------------------------------


@dataclass
class _Ctx:
    schema: Schema
    on_bad_row: str
    base: Path
    where: str
    unseen: str
    row_label: Any  # i -> "row 12" / "sample 3"
    #: the folders a file named in the input must lie in (a manifest's); None: no limit
    roots: tuple[Path, ...] | None = None
    #: a folder relative paths may also have meant (``_input_path``)
    alt: Path | None = None

    def bad(self, batch: Batch, i: int, m: str, msg: str) -> None:
        if self.on_bad_row == "fail":
            raise InputError(
                f"{self.where}{self.row_label(i)} ({m}): {msg} (use on_bad_row='missing' / "
                "--on-bad-row missing to predict such rows without this input, flagged)".strip(),
                (i, m),
            )
        batch.masks[m][i] = 0.0
        batch.reasons[m][i] = msg

    def error(self, msg: str, loc: tuple[Any, ...]) -> InputError:
        i = loc[0] if loc else None
        at = self.row_label(i) if isinstance(i, int) else ""
        sub = f" ({', '.join(map(str, loc[1:]))})" if len(loc) > 1 else ""
        return InputError(f"{self.where}{at}{sub}: {msg}".strip().removeprefix(": "), loc)


def _check_policy(on_bad_row: str, unseen: str) -> None:
    if on_bad_row not in ON_BAD_ROW:
        raise DataError(f"on_bad_row must be one of {', '.join(ON_BAD_ROW)}; got {on_bad_row!r}")
    if unseen not in UNSEEN:
        raise DataError(f"unseen_category must be one of {', '.join(UNSEEN)}; got {unseen!r}")


def is_streamed(samples: Any) -> bool:
    """A ``Split`` with a streamed column (``medfuse.data.stream.LazyColumn``: values read from
    the decode-once cache by ``read``, never held whole)."""
    arrays = getattr(samples, "arrays", None)
    return isinstance(arrays, dict) and any(hasattr(a, "read") for a in arrays.values())


#: rows of a split (a streamed one: read from its cache) taken into memory at a time
STREAMED_ROWS = 1024


def split_parts(split: Any) -> list[Any]:
    """A split as consecutive parts of :data:`STREAMED_ROWS` rows (``Split.subset``; a split of
    no more rows: itself)."""
    n = len(split)
    if n <= STREAMED_ROWS:
        return [split]
    return [
        split.subset(np.arange(s, min(s + STREAMED_ROWS, n))) for s in range(0, n, STREAMED_ROWS)
    ]


def split_values(a: Any) -> np.ndarray:
    """A ``Split`` column's values as float32: a streamed column's rows read from its cache
    (checked there against the digests the data pass wrote)."""
    return np.asarray(a.read(np.arange(len(a))) if hasattr(a, "read") else a, np.float32)


def coerce(
    samples: Any,
    schema: Schema,
    *,
    on_bad_row: OnBadRow | str = "fail",
    base_dir: str | Path | None = None,
    unseen_category: str | None = None,
    where: str | None = None,
) -> Batch:
    """Any accepted input (see the module's docstring) as one ``Batch``."""
    unseen = unseen_category or schema.unseen_category
    _check_policy(on_bad_row, unseen)
    if isinstance(samples, Batch):
        return samples
    if isinstance(samples, str | os.PathLike):
        return _concat(
            list(
                iter_batches(
                    Path(samples),
                    schema,
                    on_bad_row=on_bad_row,
                    base_dir=base_dir,
                    unseen_category=unseen,
                )
            ),
            schema,
        )
    base, alt = _in_memory_base(schema, base_dir)
    if hasattr(samples, "arrays") and hasattr(samples, "masks"):  # a Split: the data pipeline's
        arrays = {m: split_values(samples.arrays[m]) for m in schema.modalities}
        masks = {m: np.asarray(samples.masks[m], np.float32) for m in schema.modalities}
        n = len(next(iter(masks.values()))) if masks else 0
        meta = getattr(samples, "meta", None)
        ids = (
            [str(v) for v in meta["id"]]
            if meta is not None and "id" in getattr(meta, "columns", ())
            else [f"row-{i}" for i in range(n)]
        )
        b = Batch(
            arrays,
            masks,
            ids,
            {m: [""] * n for m in schema.modalities},
            [[] for _ in range(n)],
            [""] * n,
            missing_values(arrays, masks, schema),
        )
        return b
    if hasattr(samples, "to_dict") and hasattr(samples, "columns") and hasattr(samples, "iloc"):
        # a column named twice: to_dict keeps its last (training's reader, its first)
        refuse_duplicate_columns(where or "the DataFrame", samples.columns)
        rows = samples.to_dict(orient="records")  # a DataFrame: one sample per row
        ctx = _Ctx(schema, on_bad_row, base, where or "", unseen, lambda i: f" row {i}", alt=alt)
        cols = [str(c) for c in samples.columns]
        return _from_rows(
            [{str(k): v for k, v in r.items()} for r in rows], ctx, table=cols, default_id="row-{i}"
        )
    if (
        hasattr(samples, "to_dict")
        and hasattr(samples, "index")
        and not isinstance(samples, Mapping)
    ):
        samples = {str(k): v for k, v in samples.to_dict().items()}  # a Series: one sample
    if isinstance(samples, Mapping):
        if _is_batched(samples, schema):
            ctx = _Ctx(
                schema, on_bad_row, base, where or "", unseen, lambda i: f" sample {i}", alt=alt
            )
            return _from_batched(samples, ctx, default_id="row-{i}")
        samples = [samples]
    if isinstance(samples, np.ndarray):
        raise InputError(
            f"a bare array is ambiguous; give {ACCEPTED} (keys: {', '.join(schema.modalities)})"
        )
    if isinstance(samples, Iterable):
        rows = list(samples)
        if not rows:
            raise InputError("no samples given (an empty list)")
        if all(isinstance(r, str) for r in rows):
            raise InputError(
                f"a list of strings {rows[:5]} (column names?) is not a sample; give {ACCEPTED}"
            )
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping):
                raise InputError(
                    f"sample {i}: a {type(r).__name__} is not a sample; each sample is a dict "
                    f"keyed by modality ({', '.join(schema.modalities)})",
                    (i,),
                )
        ctx = _Ctx(schema, on_bad_row, base, where or "", unseen, lambda i: f" sample {i}", alt=alt)
        return _from_rows([dict(r) for r in rows], ctx, table=None, default_id="row-{i}")
    raise InputError(f"a {type(samples).__name__} is not an accepted input; give {ACCEPTED}")


def _in_memory_base(schema: Schema, base_dir: str | Path | None) -> tuple[Path, Path | None]:
    """Relative file paths of in-memory samples: ``base_dir``, else the training manifest's
    directory when it exists here, else the working directory; and, when the training folder
    was taken for want of ``base_dir``, the working directory as the folder the caller may
    have meant instead (a path naming a file in both is refused)."""
    if base_dir is not None:
        return Path(base_dir).expanduser(), None
    rec = schema.layout.base_dir
    if rec and Path(rec).is_dir():
        cwd = Path.cwd()
        return Path(rec), (None if os.path.samefile(rec, cwd) else cwd)
    return Path.cwd(), None


def _is_batched(d: Mapping[str, Any], schema: Schema) -> bool:
    if "mask" in d:
        return True
    for k, v in d.items():
        m = schema.modalities.get(k)
        if m is not None and m.kind == "text":
            if isinstance(v, list | tuple | np.ndarray):  # texts (or id rows), one per sample
                return any(isinstance(e, str) or e is None for e in v) or np.ndim(v) == 2
            continue
        if m is None or v is None or isinstance(v, str | bytes | os.PathLike | Upload | Mapping):
            continue
        try:
            nd = np.ndim(v)
        except ValueError:
            continue
        return nd == len(m.shape) + 1
    return False


def _from_batched(d: Mapping[str, Any], ctx: _Ctx, default_id: str) -> Batch:
    schema = ctx.schema
    mods = schema.modalities
    allowed = [*mods, "mask", "id"]
    for k in d:
        if k not in allowed:
            raise ctx.error(
                f"unknown key {k!r}{did_you_mean(k, allowed)} Allowed: {', '.join(allowed)}", ()
            )
    masks_in = d.get("mask") or {}
    if not isinstance(masks_in, Mapping):
        raise ctx.error("'mask' must be a dict {modality: (N,) array of 0/1}", ())
    for k in masks_in:
        if k not in mods:
            raise ctx.error(
                f"mask for unknown modality {k!r}{did_you_mean(k, mods)} Allowed: {', '.join(mods)}",
                (),
            )
    given = {
        m: _texts(d[m], mods[m], ctx) if mods[m].kind == "text" else _as_array(d[m], m)
        for m in mods
        if d.get(m) is not None
    }
    if not given:
        raise ctx.error(f"no input for any modality; expected some of {', '.join(mods)}", ())
    ns = {m: (len(x) if x.ndim else -1) for m, x in given.items()}
    n = next(iter(ns.values()))
    if any(v != n for v in ns.values()) or n < 0:
        raise ctx.error(f"the arrays disagree on the number of samples: {ns}", ())
    raw_ids = d.get("id")
    if raw_ids is not None and (
        isinstance(raw_ids, str | bytes | Mapping) or not isinstance(raw_ids, Iterable)
    ):
        raise ctx.error(f"'id' must be a list of {n} ids; got a {type(raw_ids).__name__}", ())
    ids = (
        [str(v) for v in raw_ids]
        if raw_ids is not None
        else [default_id.format(i=i) for i in range(n)]
    )
    if len(ids) != n:
        raise ctx.error(f"'id' has {len(ids)} values for {n} samples", ())
    b = _new_batch(schema, n, ids)
    for m, x in given.items():
        mod = mods[m]
        mk = masks_in.get(m)
        mask = np.ones(n, np.float32) if mk is None else _as_array(mk, f"mask {m}").reshape(-1)
        if mask.shape != (n,):
            raise ctx.error(f"mask of {m!r} has {mask.size} values for {n} samples", (None, m))
        if not np.isin(mask, (0.0, 1.0)).all():
            bad = mask[~np.isin(mask, (0.0, 1.0))][0]
            raise ctx.error(f"mask of {m!r} must hold 0 or 1; got {bad}", (None, m))
        if (
            mod.kind == "image"
            and x.ndim == len(mod.shape)
            and int(mod.channels or 1) == 1
            and not mod.sequence
        ):
            x = x[:, None]  # (N, H, W) grey
        if x.shape[1:] != mod.shape:
            if x.ndim != len(mod.shape) + 1:
                raise ctx.error(
                    f"arrays of shape {x.shape}; expected (N, {', '.join(map(str, mod.shape))})",
                    (None, m),
                )
            note = fit_note(x.shape[1:], mod)
            try:
                x = (
                    np.stack([_fit(s, mod) for s in x])
                    if n
                    else np.zeros((0, *mod.shape), np.float32)
                )
            except InputError as err:
                raise ctx.error(err.msg, (None, m)) from None
            for i in np.flatnonzero(mask > 0) if note else []:
                b.flags[int(i)].append(note)
        b.arrays[m] = np.ascontiguousarray(x, np.float32)
        b.masks[m] = mask
        flat = x.reshape(n, -1)
        if mod.kind == "text":  # an empty text (no token) is a missing one
            b.masks[m] = mask * (flat != 0).any(axis=1)
        elif mod.kind == "tabular":
            inf = np.isinf(flat).any(axis=1) & (mask > 0)
            for i in np.flatnonzero(inf):
                ctx.bad(b, int(i), m, "infinite values (use NaN for a missing value)")
                b.arrays[m][i] = np.nan
            b.masks[m] = b.masks[m] * (~np.isnan(b.arrays[m].reshape(n, -1)).all(axis=1))
            for i in np.flatnonzero(np.asarray(mask) > 0):
                b.flags[int(i)].extend(_category_flags(b.arrays[m][i], mod, ctx))
        else:
            nonfinite = (~np.isfinite(flat)).sum(axis=1)
            for i in np.flatnonzero((nonfinite > 0) & (mask > 0)):
                what = "all" if nonfinite[i] == flat.shape[1] else str(int(nonfinite[i]))
                ctx.bad(b, int(i), m, f"{what} of {flat.shape[1]} values are NaN or infinite")
            for i in np.flatnonzero((nonfinite == 0) & (mask > 0)):
                unwindowed = _unwindowed(flat[i], mod)  # "" without a window
                if unwindowed:
                    ctx.bad(b, int(i), m, unwindowed)
    return _finish(b, ctx)


def _category_flags(row: np.ndarray, mod: Modality, ctx: _Ctx) -> list[str]:
    """Coded categorical values given as numbers must be valid codes."""
    out: list[str] = []
    for j, col in enumerate(mod.columns):
        cats = mod.categories.get(col)
        v = row[..., j]
        if not cats:
            continue
        ok = np.isnan(v) | ((v >= 0) & (v < len(cats)) & (v == np.round(v)))
        if not np.all(ok):
            raise ctx.error(
                f"column {col!r}: codes must be 0..{len(cats) - 1} ({cats}); got {v[~ok][:3].tolist()}",
                (None, mod.name, col),
            )
    return out


def _from_rows(
    rows: list[dict[str, Any]], ctx: _Ctx, *, table: list[str] | None, default_id: str
) -> Batch:
    """Rows keyed by column (a manifest, a DataFrame) or sample dicts keyed by modality."""
    schema, lay = ctx.schema, ctx.schema.layout
    mods = schema.modalities
    tab_cols = schema.tabular_columns
    if table is not None:  # a table: every modality's columns must be there (as in training)
        for m, mod in mods.items():
            need = list(mod.columns) if mod.kind == "tabular" else [lay.column(m)]
            for col in need:
                if col not in table and not (mod.kind == "tabular" and m in table):
                    raise ctx.error(
                        f"no column {col!r} for modality {m!r}{did_you_mean(col, table)} "
                        f"Columns: {', '.join(table)}",
                        (),
                    )
    else:  # sample dicts: every key must mean something
        allowed = [*mods, *(lay.column(m) for m in mods), *tab_cols, lay.id_column]
        if lay.patient_column:
            allowed.append(lay.patient_column)
        for i, r in enumerate(rows):
            for k in r:
                if k not in allowed:
                    raise ctx.error(
                        f"unknown key {k!r}{did_you_mean(k, allowed)} Allowed: "
                        f"{', '.join(dict.fromkeys(allowed))}",
                        (i, k),
                    )
    n = len(rows)
    ids = []
    for i, r in enumerate(rows):
        rid = r.get(lay.id_column)
        if _empty(rid) and lay.patient_column:
            rid = r.get(lay.patient_column)
        ids.append(default_id.format(i=i) if _empty(rid) else _id_str(rid))
    b = _new_batch(schema, n, ids)
    for i, r in enumerate(rows):
        for m, mod in mods.items():
            if mod.kind == "tabular":
                _tab_row(b, i, r, mod, ctx, table is not None)
                continue
            col = lay.column(m)
            if table is not None or m not in r:  # a table: the mapped column, as in training
                v = r.get(col)
            else:
                v = r.get(m)
            if _empty(v):
                continue
            try:
                if mod.kind == "text":
                    b.arrays[m][i] = _text_value(v, mod, ctx.base, ctx.roots, ctx.alt)[0]
                    b.masks[m][i] = float(b.arrays[m][i].any())  # no word: missing
                    continue
                b.arrays[m][i], note = _tensor_value(v, mod, ctx.base, ctx.roots, ctx.alt)
                b.masks[m][i] = 1.0
                if note:
                    b.flags[i].append(note)
            except _Bad as err:
                ctx.bad(b, i, m, str(err))
            except InputError as err:
                raise ctx.error(err.msg, (i, m)) from None
    return _finish(b, ctx)


def _id_str(v: Any) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _tab_row(
    b: Batch, i: int, r: dict[str, Any], mod: Modality, ctx: _Ctx, table: bool = False
) -> None:
    """One row's tabular modality: a ``{column: value}`` mapping or an array under its name,
    else its columns as top-level keys. A table's row (CSV, DataFrame) holds columns only, and
    a column named like the modality is that column (elsewhere too, unless a mapping): a
    manifest with a ``clinical`` column (``medfuse train --table`` names its tabular modality
    so) was read as the modality."""
    m = mod.name
    v = None if table else r.get(m)
    if m in mod.columns and not isinstance(v, Mapping):  # the column, not the modality
        v = None
    if v is not None and not isinstance(v, Mapping):  # an array of the columns' values
        if isinstance(v, str):
            raise ctx.error(
                f"a string is not tabular input; give {{column: value}} for {list(mod.columns)}",
                (i, m),
            )
        x = _as_array(v, m)
        if x.shape != mod.shape:
            raise ctx.error(
                f"shape {x.shape}; expected ({len(mod.columns)},) for columns {list(mod.columns)}",
                (i, m),
            )
        if np.isinf(x).any():
            ctx.bad(b, i, m, "infinite values (use NaN for a missing value)")
            return
        b.arrays[m][i] = x
        b.masks[m][i] = float(not np.isnan(x).all())
        b.flags[i].extend(_category_flags(x[None], mod, ctx))
        return
    named = dict(v) if isinstance(v, Mapping) else {}
    for k in named:
        if k not in mod.columns:
            raise ctx.error(
                f"unknown column {k!r}{did_you_mean(k, mod.columns)} Allowed: {', '.join(mod.columns)}",
                (i, m, k),
            )
    row = np.full(len(mod.columns), np.nan, np.float32)
    for j, col in enumerate(mod.columns):
        val = named[col] if col in named else r.get(col)
        try:
            val_x, flag = _tab_value(val, col, mod.categories.get(col), ctx.unseen)
        except InputError as err:
            raise ctx.error(f"column {col!r}: {err.msg}", (i, m, col)) from None
        except _Bad as err:
            ctx.bad(b, i, m, str(err))
            return
        row[j] = val_x
        if flag:
            b.flags[i].append(flag)
    b.arrays[m][i] = row
    b.masks[m][i] = float(not np.isnan(row).all())


def _finish(b: Batch, ctx: _Ctx) -> Batch:
    """Rows with no modality present cannot be predicted; plausibility flags for the others."""
    n = len(b)
    anyp = np.zeros(n, bool)
    for m in b.masks:
        anyp |= b.masks[m] > 0
    for i in np.flatnonzero(~anyp):
        why = [f"{m}: {r[i]}" for m, r in b.reasons.items() if r[i]]
        msg = (
            "no usable input"
            + (f" ({'; '.join(why)})" if why else "")
            + (f"; give at least one of {', '.join(ctx.schema.modalities)}")
        )
        if ctx.on_bad_row == "fail":
            raise ctx.error(msg, (int(i),))
        b.errors[int(i)] = msg
    for k, flags in enumerate(plausibility(b.arrays, b.masks, ctx.schema)):
        b.flags[k].extend(flags)
    b.missing_values = missing_values(b.arrays, b.masks, ctx.schema)
    return b


def _concat(batches: list[Batch], schema: Schema) -> Batch:
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return _new_batch(schema, 0, [])
    return Batch(
        {m: np.concatenate([b.arrays[m] for b in batches]) for m in schema.modalities},
        {m: np.concatenate([b.masks[m] for b in batches]) for m in schema.modalities},
        [i for b in batches for i in b.ids],
        {m: [r for b in batches for r in b.reasons[m]] for m in schema.modalities},
        [f for b in batches for f in b.flags],
        [e for b in batches for e in b.errors],
        [v for b in batches for v in b.missing_values],
    )


# ---- files ----------------------------------------------------------------------------------


def iter_batches(
    path: str | Path,
    schema: Schema,
    *,
    chunk: int = 1024,
    on_bad_row: OnBadRow | str = "fail",
    base_dir: str | Path | None = None,
    unseen_category: str | None = None,
) -> Iterator[Batch]:
    """A prediction input file, ``chunk`` rows at a time for a manifest (constant memory):
    a ``.csv`` / ``.parquet`` manifest, an ``.npz``, or one image/signal file."""
    # lazy: keeps the torch-free core's import light
    from medfuse.core.readers import IMAGE_READERS, SIGNAL_READERS, suffix_of

    unseen = unseen_category or schema.unseen_category
    _check_policy(on_bad_row, unseen)
    p = Path(path)
    if not p.exists():
        raise DataError(f"input {p} not found")
    if p.is_dir():
        raise DataError(f"input {p} is a directory; give a manifest, an .npz or one file")
    suf = suffix_of(p)
    base = Path(base_dir).expanduser() if base_dir is not None else p.parent
    signal_csv = _signal_csv(p, schema) if suf == ".csv" else None
    if suf in TABLE_SUFFIXES and signal_csv is None:
        start = 0
        offset = 2 if suf == ".csv" else 1  # a CSV's first data row is line 2

        def label(i: int) -> str:
            return f" row {i + offset}"

        for cols, rows in _table_chunks(p, chunk):
            ctx = _Ctx(
                schema,
                on_bad_row,
                base,
                str(p),
                unseen,
                functools.partial(lambda s, i: label(s + i), start),
                (base, resolve_data_root()),
            )
            first = start + (2 if suf == ".csv" else 1)
            yield _renumbered(_from_rows(rows, ctx, table=cols, default_id="\0{i}"), first)
            start += len(rows)
        if start == 0:
            raise DataError(
                f"{p}: the manifest has no rows (a header line only); nothing to predict"
            )
        return
    if suf == ".npz":
        b = _read_npz(p, schema, on_bad_row, unseen)
    elif signal_csv is not None:
        ctx = _Ctx(schema, on_bad_row, base, str(p), unseen, lambda i: "")
        b = _from_rows([{signal_csv: str(p.resolve())}], ctx, table=None, default_id=p.name)
    else:
        kinds = [
            k for k, reg in (("image", IMAGE_READERS), ("signal", SIGNAL_READERS)) if suf in reg
        ]
        names = [m for m, s in schema.modalities.items() if s.kind in kinds]
        if len(names) > 1 and suf == ".npy":  # an image or a signal: the one it fits
            names = [m for m in names if _fits(p, schema.modalities[m])]
        if len(names) != 1:
            raise DataError(
                f"{p}: give a manifest .csv/.parquet, an .npz with one array per modality, or one "
                f"image/signal file for a model with one such modality (this model: "
                f"{', '.join(f'{m} ({s.kind})' for m, s in schema.modalities.items())})"
            )
        ctx = _Ctx(schema, on_bad_row, base, str(p), unseen, lambda i: "")
        b = _from_rows([{names[0]: str(p.resolve())}], ctx, table=None, default_id=p.name)
    for s in range(0, len(b), chunk):
        yield b.take(slice(s, s + chunk))


def _signal_csv(p: Path, schema: Schema) -> str | None:
    """The signal modality a ``.csv`` input is a recording of, or None for a manifest: a model
    with one signal modality, a header naming none of the manifest's columns (no modality's
    file column, no tabular column) and a first data line of numbers (a ``time`` column and one
    column per lead, as ``medfuse.core.readers`` reads CSV signals)."""
    signals = [m for m, s in schema.modalities.items() if s.kind == "signal"]
    if len(signals) != 1:
        return None
    lay = schema.layout
    manifest_cols = {lay.column(m) for m in schema.modalities} | set(schema.modalities)
    manifest_cols |= set(schema.tabular_columns)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            first = next(reader, [])
    except (OSError, csv.Error, UnicodeDecodeError):
        return None  # the manifest reader says what is wrong
    header = [c.strip() for c in header]
    if not header or manifest_cols & set(header) or not first:
        return None
    for cell in first:
        try:
            float(cell.strip() or "nan")
        except ValueError:
            return None
    return signals[0]


def _fits(p: Path, m: Modality) -> bool:
    try:
        _fit(_as_array(np.load(p, allow_pickle=False), m.name), m)
    except (InputError, ValueError, OSError):
        return False
    return True


def _renumbered(b: Batch, first: int) -> Batch:
    """Default ids of a manifest are its line numbers (``row-2`` is the first data line)."""
    b.ids = [f"row-{first + int(x[1:])}" if x.startswith("\0") else x for x in b.ids]
    return b


def _table_chunks(p: Path, chunk: int) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
    if p.suffix.lower() == ".csv":
        try:
            f = open(p, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
        except OSError as err:
            raise DataError(f"{p}: cannot be read ({err.strerror})") from None
        with f:
            reader = csv.DictReader(f)
            try:
                cols = list(reader.fieldnames or [])
            except (csv.Error, UnicodeDecodeError) as err:
                raise DataError(f"{p}: not a readable CSV ({err})") from None
            if not cols:
                raise DataError(f"{p}: an empty manifest (no header line)")
            refuse_duplicate_columns(str(p), cols)
            rows: list[dict[str, Any]] = []
            try:
                for r in reader:
                    if None in r:
                        raise DataError(
                            f"{p} line {reader.line_num}: more cells than the header's {len(cols)} columns"
                        )
                    # the cells training's CSV reader (pandas) reads as missing: missing here too
                    rows.append({k: "" if v in CSV_MISSING else v for k, v in r.items()})
                    if len(rows) >= chunk:
                        yield cols, rows
                        rows = []
            except (csv.Error, UnicodeDecodeError) as err:
                raise DataError(f"{p} line {reader.line_num}: not a readable CSV ({err})") from None
            if rows or not cols:
                yield cols, rows
        return
    try:
        # lazy: pyarrow, only for Parquet (optional: its absence is handled here)
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - without pyarrow
        raise DataError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(str(p))
    except Exception as err:
        raise DataError(f"{p}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    cols = list(pf.schema_arrow.names)
    refuse_duplicate_columns(str(p), cols)
    for rb in pf.iter_batches(batch_size=chunk):
        yield cols, rb.to_pylist()


def _read_npz(p: Path, schema: Schema, on_bad_row: str, unseen: str) -> Batch:
    mods = schema.modalities
    try:
        with np.load(p, allow_pickle=False) as d:
            keys = set(d.files)
            npz_modalities(p, keys, mods)
            batch: dict[str, Any] = {m: d[m] for m in mods if m in keys}
            masks = {m: d[f"mask_{m}"] for m in mods if f"mask_{m}" in keys}
            if masks:
                batch["mask"] = masks
            if "id" in keys:
                batch["id"] = [str(v) for v in d["id"]]
    except DataError:
        raise
    except Exception as err:  # a truncated or corrupt archive, an object array
        raise DataError(f"{p}: not a readable .npz ({type(err).__name__}: {err})") from None
    batch.setdefault("mask", {})
    ctx = _Ctx(schema, on_bad_row, p.parent, str(p), unseen, lambda i: f" sample {i}")
    return _from_batched(batch, ctx, default_id=f"{p.stem}-{{i}}")


def npz_modalities(path: Path | str, keys: set[str], modalities: Iterable[str]) -> list[str]:
    """The model's modalities an ``.npz`` input holds (arrays ``<m>``, ``mask_<m>``, ``id``);
    an array that is none of these, or no modality at all, is an error naming what is allowed."""
    mods = list(modalities)
    allowed = [*mods, *(f"mask_{m}" for m in mods), "id"]
    unknown = keys - set(allowed)
    if unknown:
        k = sorted(unknown)[0]
        raise DataError(
            f"{path}: arrays {sorted(unknown)} are not modalities of this model "
            f"({', '.join(mods)}){did_you_mean(k, allowed)} Allowed: {', '.join(allowed)}"
        )
    present = [m for m in mods if m in keys]
    if not present:
        raise DataError(f"{path}: holds none of the model's modalities ({', '.join(mods)})")
    return present


# ---- missing values and plausibility ------------------------------------------------------


def missing_values(
    arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray], schema: Schema
) -> list[list[str]]:
    """Per row, the columns of a present tabular modality that hold no value (NaN: an empty
    cell, None, NaN), as training treats them: a missing value of that column (standardised to
    the training mean). A column of a sequence counts when any step lacks it. Rows whose
    tabular modality is absent altogether list nothing (``masks[m] == 0`` says so)."""
    n = len(next(iter(masks.values()))) if masks else 0
    out: list[list[str]] = [[] for _ in range(n)]
    for m, mod in schema.modalities.items():
        if mod.kind != "tabular" or m not in arrays or not mod.columns:
            continue
        present = np.flatnonzero(np.asarray(masks[m]) > 0)
        if not len(present):
            continue
        flat = np.asarray(arrays[m])[present].reshape(len(present), -1, len(mod.columns))
        holes = np.isnan(flat).any(axis=1)
        for k, j in zip(*np.nonzero(holes)):
            out[present[k]].append(mod.columns[j])
    return out


def missing_summary(
    arrays: dict[str, Any], masks: dict[str, np.ndarray], schema: Schema
) -> dict[str, Any]:
    """How many rows hold a missing tabular value (:func:`missing_values`: each standardised to
    the training mean) and how many of each column: ``{"rows", "n", "columns"}``."""
    return tally_missing(missing_values(arrays, masks, schema))


def tally_missing(per_row: list[list[str]], into: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`missing_summary` of rows' missing columns (:func:`missing_values`), added to
    ``into``, the summary of earlier rows (a prediction run's batches)."""
    rows, n = (into["rows"], into["n"]) if into else (0, 0)
    columns: dict[str, int] = dict(into["columns"]) if into else {}
    for cols in per_row:
        for c in cols:
            columns[c] = columns.get(c, 0) + 1
    ranked = dict(sorted(columns.items(), key=lambda kv: (-kv[1], kv[0])))
    return {"rows": rows + sum(1 for c in per_row if c), "n": n + len(per_row), "columns": ranked}


def missing_text(summary: dict[str, Any], short: bool = False) -> str:
    """:func:`missing_summary` in words (``short``: ``2 (age 2)``, or ``none``)."""
    cols = ", ".join(f"{c} {k}" for c, k in summary["columns"].items())
    if short:
        return f"{summary['rows']} ({cols})" if summary["rows"] else "none"
    if not summary["rows"]:
        return "no tabular value missing"
    return (
        f"{summary['rows']} of {summary['n']} rows miss a tabular value, each standardised to "
        f"the training mean ({cols})"
    )


def plausibility_summary(split: Any, schema: Schema) -> dict[str, Any]:
    """:func:`plausibility` over a split of a package's data (an evaluation's): how many rows
    hold an input unlike the training data (``rows`` of ``n``), how many per input (a tabular
    column, else the modality: ``inputs``), and the first flag as an ``example``. Read
    :data:`STREAMED_ROWS` rows at a time (:func:`split_parts`), as the coerced ``Batch``."""
    n = len(split)
    per: dict[str, int] = {}
    flagged, example = 0, ""
    for part in split_parts(split):
        b = coerce(part, schema)
        for flags in plausibility(b.arrays, b.masks, schema):
            if not flags:
                continue
            flagged += 1
            example = example or flags[0]
            for key in {re.split(r"[=:]", f, maxsplit=1)[0] for f in flags}:
                per[key] = per.get(key, 0) + 1
    ranked = dict(sorted(per.items(), key=lambda kv: (-kv[1], kv[0])))
    return {"rows": flagged, "n": n, "inputs": ranked, "example": example}


def plausibility_text(summary: dict[str, Any]) -> str:
    """:func:`plausibility_summary` in words."""
    if not summary.get("rows"):
        return "every row within what the model saw in training"
    inputs = ", ".join(f"{k} {v}" for k, v in summary["inputs"].items())
    return (
        f"{summary['rows']} of {summary['n']} rows hold an input unlike the training data "
        f"({inputs}), e.g. {summary['example']}: another unit, scale or population? (medfuse "
        "predict lists each row's flags)"
    )


def plausibility(
    arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray], schema: Schema
) -> list[list[str]]:
    """Per row, what lies outside the training ranges stored in the package (none stored: no
    flags). Tabular: a value below the training minimum or above its maximum. Images and
    signals: the sample's 1st/99th percentile beyond the training 0.5/99.5 percentiles by more
    than half their span, or its mean beyond the training means by as much (a 0-255 image for
    a model trained on 0-1); or its span (largest less least value) under half the 1st
    percentile of the training samples' (a blank image, 8-bit values in a 16-bit file). Text: one that fills
    every token the model reads (a longer one is cut there), or with a larger share of unknown
    words than the training texts had. Signals: a record mostly zero padding (shorter than the
    model reads), or zero throughout. Any modality: missing where the model never trained
    without it (``trained_without``). (An image resized from other proportions than the
    training files' is flagged where it is read, the only place that sees its shape:
    :func:`fit_note`.)"""
    n = len(next(iter(masks.values()))) if masks else 0
    out: list[list[str]] = [[] for _ in range(n)]
    for m, mod in schema.modalities.items():
        if (schema.stats.get(m) or {}).get("trained_without") is False and m in masks:
            for k in np.flatnonzero(np.asarray(masks[m]) <= 0):
                out[k].append(
                    f"{m}: missing, and the model never trained without it (every training "
                    f"sample had it; train.modality_dropout.{m} trains for its absence): the "
                    "prediction rests on inputs unlike any it learned from"
                )
        if mod.kind == "text" and m in arrays:
            _text_flags(out, m, mod, arrays[m], masks[m], schema.stats.get(m) or {})
            continue
        if mod.kind == "signal" and m in arrays:
            _padding_flags(out, m, mod, arrays[m], masks[m])
        rng = (schema.stats.get(m) or {}).get("range")
        if not rng or m not in arrays:
            continue
        present = np.flatnonzero(np.asarray(masks[m]) > 0)
        if not len(present):
            continue
        x = np.asarray(arrays[m])[present]
        if mod.kind == "tabular":
            flat = x.reshape(len(present), -1, len(mod.columns))
            for j, col in enumerate(mod.columns):
                if col in mod.categories:
                    _unseen_category(out, present, flat[..., j], col, mod, rng)
                    continue
                lo, hi = rng["min"][j], rng["max"][j]
                if lo is None or hi is None:
                    continue
                v = flat[..., j]
                with np.errstate(invalid="ignore"):
                    off = ((v < lo) | (v > hi)).any(axis=1)
                for k in np.flatnonzero(off):
                    vals = v[k][np.isfinite(v[k])]
                    shown = f"{vals[0]:g}" if vals.size == 1 else f"{vals.min():g}..{vals.max():g}"
                    out[present[k]].append(
                        f"{col}={shown} outside the training range [{lo:g}, {hi:g}]"
                    )
            continue
        lo, hi = float(rng["p0_5"]), float(rng["p99_5"])
        span = max(hi - lo, 1e-6)
        mlo, mhi = float(rng["mean_min"]), float(rng["mean_max"])
        flat2 = x.reshape(len(present), -1).astype(np.float64)
        with np.errstate(all="ignore"):
            q = np.percentile(flat2, [1, 99], axis=1)
            means = flat2.mean(axis=1)
        off = (
            (q[1] > hi + span / 2)
            | (q[0] < lo - span / 2)
            | (means > mhi + span / 2)
            | (means < mlo - span / 2)
        )
        for k in np.flatnonzero(off):
            out[present[k]].append(
                f"{m}: intensities {q[0][k]:.4g}..{q[1][k]:.4g} (mean {means[k]:.4g}) outside "
                f"the training range {lo:.4g}..{hi:.4g} (means {mlo:.4g}..{mhi:.4g}); a different "
                "scale or kind of input?"
            )
        # a blank or near-constant sample, or one on a compressed scale (8-bit values stored in a
        # 16-bit file, read / 65535): within the range, so never flagged above
        least = float(rng.get("contrast_min") or 0.0)  # none in packages of older releases
        with np.errstate(all="ignore"):
            contrast = np.nanmax(flat2, axis=1) - np.nanmin(flat2, axis=1)
        for k in np.flatnonzero(~off & (contrast < least / 2)):
            out[present[k]].append(
                f"{m}: values {np.nanmin(flat2[k]):.4g}..{np.nanmax(flat2[k]):.4g} span "
                f"{contrast[k]:.4g}, under half the 1st percentile of the training samples' spans "
                f"({least:.4g}): blank, or values on another scale (e.g. 8-bit values in a 16-bit "
                "file)?"
            )
    return out


def _unseen_category(
    out: list[list[str]],
    present: np.ndarray,
    v: np.ndarray,
    col: str,
    mod: Modality,
    rng: dict[str, Any],
) -> None:
    """:func:`plausibility`'s flag of a text column's value that no training row held (a
    package knows its data's values from every split: one only in val or test has a code the
    model never trained on). A package of an earlier release recorded none: no flag."""
    seen = (rng.get("seen") or {}).get(col)
    if seen is None:
        return
    names, known = mod.categories[col], set(seen)
    a = np.asarray(v, np.float64).reshape(len(present), -1)
    trained = [i for i, name in enumerate(names) if name in known]
    with np.errstate(invalid="ignore"):
        off = (np.isfinite(a) & ~np.isin(a, trained)).any(axis=1)
    for k in np.flatnonzero(off):
        codes = {int(c) for c in a[k] if np.isfinite(c)}
        new = [names[c] for c in sorted(codes) if 0 <= c < len(names) and names[c] not in known]
        if new:
            out[present[k]].append(
                f"{col}={', '.join(new)}, a value no training row held (the package knows it "
                f"from its other splits; training saw {', '.join(seen) or 'none'}): the model "
                "learned nothing for it"
            )


#: how far a text's share of unknown tokens may exceed the training texts' 99th percentile
#: before it is flagged (another language, or another kind of text than the model read)
UNKNOWN_MARGIN = 0.25


def _text_flags(
    out: list[list[str]],
    m: str,
    mod: Modality,
    ids: np.ndarray,
    mask: np.ndarray,
    stat: dict[str, Any],
) -> None:
    """:func:`plausibility`'s flags of a text modality (``medfuse.core.text``)."""
    from medfuse.core.text import filled, unknown_shares  # lazy: tokenizers, for text only

    present = np.flatnonzero(np.asarray(mask) > 0)
    if not len(present):
        return
    x = np.asarray(ids)[present].reshape(len(present), -1)
    for k in np.flatnonzero(filled(x)):
        out[present[k]].append(
            f"{m}: the text fills all {x.shape[1]} tokens the model reads; a longer one is cut "
            "there"
        )
    p99 = stat.get("unknown_p99")
    if p99 is None or mod.tokenizer is None or float(p99) + UNKNOWN_MARGIN >= 1.0:
        return  # a package before this record, or a vocabulary too small to tell
    shares = unknown_shares(x, mod.tokenizer, mod.token_offset)
    for k in np.flatnonzero(shares > float(p99) + UNKNOWN_MARGIN):
        n = int((x[k] != 0).sum())
        out[present[k]].append(
            f"{m}: {round(shares[k] * n)} of {n} tokens are words the model's vocabulary does "
            f"not hold ({shares[k]:.0%}; training texts: {float(p99):.0%} at the 99th "
            "percentile); another language or kind of text?"
        )


#: the share of what a signal modality reads that may be zero padding before a prediction says so
PADDED_SHARE = 0.5


def signal_fill(x: np.ndarray, sequence: bool = False) -> tuple[np.ndarray, int]:
    """Per signal record (``(N, C, T)``, or ``(N, S, C, T)`` with ``sequence``: the windows of
    one record, in order): how many samples it fills before the zero padding at its end
    (``fit_signal`` pads a shorter record there), and how many the model reads."""
    v = np.asarray(x)
    if sequence:
        v = np.moveaxis(v, 1, 2).reshape(len(v), v.shape[2], -1)
    total = int(v.shape[-1])
    live = (v != 0).any(axis=1)  # (N, T): a sample where some lead is not 0
    held = np.where(live.any(axis=1), total - np.argmax(live[:, ::-1], axis=1), 0)
    return held, total


def _padding_flags(
    out: list[list[str]], m: str, mod: Modality, x: np.ndarray, mask: np.ndarray
) -> None:
    """:func:`plausibility`'s flags of a signal modality: a record shorter than the model reads
    is zero-padded at its end (``fit_signal``); one whose padding is over
    :data:`PADDED_SHARE` of it, or that is zero in every lead throughout, is named; so is a
    lead that is zero throughout beside others that are not (a lead off)."""
    present = np.flatnonzero(np.asarray(mask) > 0)
    if not len(present):
        return
    xs = np.asarray(x)[present]
    # (N, C, T), or (N, S, C, T) with sequence: a lead with no non-zero sample anywhere
    flat_leads = ~(xs != 0).any(axis=(1, 3) if mod.sequence else 2)
    names = list(mod.leads or [])
    for k in np.flatnonzero(flat_leads.any(axis=1) & ~flat_leads.all(axis=1)):
        off = [names[c] if c < len(names) else f"{c + 1}" for c in np.flatnonzero(flat_leads[k])]
        out[present[k]].append(
            f"{m}: lead {', '.join(off)} is 0 throughout (a lead off, or a lead the file lacks "
            "filled with 0?)"
        )
    held, total = signal_fill(xs, bool(mod.sequence))
    rate = float(mod.rate) if mod.rate else None
    for k in np.flatnonzero(total - held > PADDED_SHARE * total):
        if not held[k]:
            out[present[k]].append(f"{m}: every sample is 0 in every lead (no signal)")
            continue
        secs = f" ({held[k] / rate:.3g} s of {total / rate:.3g} s)" if rate else ""
        out[present[k]].append(
            f"{m}: the record fills {held[k]} of the {total} samples the model reads{secs}; "
            "the rest is zero padding"
        )
