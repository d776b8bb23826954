"""Readers for what hospitals and PhysioNet produce: DICOM, NIfTI, WFDB records, CSV signals.

Registered on import (``medfuse.data.readers`` imports this module):

- ``.dcm`` / ``.dicom`` (pydicom): modality LUT (rescale slope/intercept, pydicom's
  ``apply_modality_lut``); with a window, pydicom's ``apply_voi_lut`` (the file's VOI LUT or
  window, ``'file'``) or ``apply_windowing`` (``[centre, width]``, LINEAR_EXACT), scaled from its
  output range to [0, 1]; ``'unit'``: the fraction of the stored bit range after rescale.
  MONOCHROME1 inverted so that higher always means brighter; multi-frame grey files become a
  volume ``(1, frames, H, W)`` (frames are the depth axis), colour files ``(3, [frames,] H, W)``.
- ``.nii`` / ``.nii.gz`` (nibabel): reoriented to the closest canonical (RAS+) orientation and
  returned as ``(C, D, H, W)``: D from inferior to superior, H from anterior to posterior, W
  from the patient's right to left (axial slices as a radiologist views them); a 4th axis
  (time, echoes) becomes channels.
- ``.hea`` (wfdb): physical units (voltages in millivolts), leads chosen by name, resampled.
- ``.csv`` signals: a time column (``time`` or ``t`` in seconds; ``time_ms``, ``time (ms)`` in
  milliseconds: :data:`TIME_UNITS`) and one column per lead.
"""

from __future__ import annotations

import csv
import glob
import math
import re
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.errors import DataError
from medfuse.core.readers.base import (
    COMPANION_FILES,
    FILE_WINDOW_SCALES,
    IMAGE_READERS,
    NATIVE_SCALES,
    SIGNAL_LAYOUTS,
    SIGNAL_READERS,
    Window,
    apply_window,
    numeric_window,
    require_unit,
)

#: a resampled signal may hold at most this many values (channels x samples)
MAX_RESAMPLED_VALUES = 2**24
#: voltage units converted to millivolts, so records written in uV and mV agree
_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}
#: a CSV signal's time column by its name (lower case, without spaces, ``_``, ``-`` or brackets:
#: ``time (ms)`` and ``time_ms`` are ``timems``) -> seconds per unit of its values
TIME_UNITS = {
    **dict.fromkeys(("time", "t", "times", "ts", "timesec", "timeseconds", "sec", "seconds"), 1.0),
    **dict.fromkeys(("timems", "tms", "timemsec", "ms", "msec", "milliseconds"), 1e-3),
}
#: the most a record may be upsampled: further, resampling invents the record's samples; a CSV
#: time column in milliseconds read as seconds (named ``time``) is a thousandfold
MAX_UPSAMPLE = 20.0
#: cells of a CSV read as missing: a CSV signal's missing sample, a prediction manifest's missing
#: value (pandas' default NA strings, what training's manifest reader reads as missing)
CSV_MISSING = frozenset(
    [
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    ]
)


# ---- DICOM ---------------------------------------------------------------------------------


def _stored_range(ds: object) -> np.ndarray:
    bits = int(getattr(ds, "BitsStored", 16))
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        return np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], np.int64)
    return np.array([0, 2**bits - 1], np.int64)


def _own_window(ds: object) -> bool:
    """Whether a DICOM carries its own VOI LUT or window (what ``window: 'file'`` applies)."""
    return "VOILUTSequence" in ds or "WindowCenter" in ds  # type: ignore[operator]


def _colour(ds: object) -> bool:
    """A colour DICOM (RGB or palette): display levels, divided by their bit depth whatever the
    window."""
    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "").upper()
    return int(getattr(ds, "SamplesPerPixel", 1) or 1) == 3 or photometric == "PALETTE COLOR"


def _to_unit(x: np.ndarray, ds: object, window: Window) -> np.ndarray:
    """Modality values -> [0, 1]: pydicom's VOI LUT / windowing, divided by its output range;
    ``'unit'`` (or ``'file'`` without a VOI LUT or window in the file): the fraction of the
    stored bit range after rescale."""
    # lazy: pydicom (medfuse[medical]), only for DICOM
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    w = numeric_window(window)
    has_voi = _own_window(ds)
    probe = np.array([-1e300, 1e300])  # below and above any window: its output range
    if w is not None:
        ds.WindowCenter, ds.WindowWidth = w  # type: ignore[attr-defined]
        ds.VOILUTFunction = "LINEAR_EXACT"  # type: ignore[attr-defined]
        out, ends = apply_windowing(x, ds), apply_windowing(probe.copy(), ds)
    elif window == "file" and has_voi:
        if "VOILUTSequence" in ds:  # type: ignore[operator]  # a LUT: its ends over the range
            probe = apply_modality_lut(_stored_range(ds), ds).astype(np.float64)
        out, ends = apply_voi_lut(x, ds), apply_voi_lut(probe.copy(), ds)
    else:
        out, ends = x, apply_modality_lut(_stored_range(ds), ds)
    lo, hi = float(np.min(ends)), float(np.max(ends))
    if not hi > lo:
        raise DataError(f"the file's value range [{lo:g}, {hi:g}] is empty; cannot scale it")
    return np.clip((np.asarray(out, np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _dicom(path: Path, *, window: Window = None) -> np.ndarray:
    import pydicom  # lazy: [medical] extra, only for DICOM files
    from pydicom.errors import InvalidDicomError  # lazy: [medical] extra, only for DICOM files
    from pydicom.pixels import (  # lazy: [medical] extra, only for DICOM files
        apply_color_lut,
        apply_modality_lut,
    )

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise DataError(f"{path}: not a DICOM file ({err})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID", None)
        what = f"{sop.name} ({sop})" if sop is not None else "unknown SOP class"
        raise DataError(f"{path}: DICOM holds no pixel data ({what}); it is not an image")
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    if photometric == "PALETTE COLOR":
        arr, spp = apply_color_lut(arr, ds), 3
    if spp == 1:
        x = apply_modality_lut(arr, ds).astype(np.float32)
        if window is not None:
            try:  # in modality units (e.g. HU), before any inversion
                x = _to_unit(x, ds, window)
            except ValueError as err:  # pydicom: a window or LUT it cannot apply
                raise DataError(f"{path}: cannot apply window {window!r}: {err}") from None
        if photometric == "MONOCHROME1":  # low values are white: invert over the value range
            if window is not None:
                x = 1.0 - x
            else:
                lo, hi = apply_modality_lut(_stored_range(ds), ds).astype(np.float64)
                x = (lo + hi - x).astype(np.float32)
        x = x[None]  # (1, [F,] H, W)
    elif spp == 3:
        x = np.moveaxis(np.asarray(arr, np.float32), -1, 0)  # (3, [F,] H, W)
        if window is not None:  # colour images are already display values: scale to [0, 1]
            x = x / float(2 ** int(ds.get("BitsStored", 8)) - 1)
    else:
        raise DataError(f"{path}: {spp} samples per pixel ({photometric}) is not supported")
    want = 4 if frames > 1 else 3
    if x.ndim != want:
        raise DataError(f"{path}: pixel data of shape {arr.shape} does not match {frames} frame(s)")
    return np.ascontiguousarray(x, dtype=np.float32)


for _ext in (".dcm", ".dicom"):
    IMAGE_READERS.register(_ext, doc="DICOM: rescale, window, MONOCHROME1, multi-frame")(_dicom)


def _dicom_header(path: Path) -> Any:
    """A DICOM's header (no pixels), for the scale checks; a header that fails is a DataError
    naming the file (the reader read it; it changed, or pydicom reads the header alone
    otherwise)."""
    import pydicom  # lazy: [medical] extra, only for DICOM files

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        raise DataError(
            f"{path}: cannot read the DICOM header ({type(err).__name__}: {err})"
        ) from None


def _dicom_scale(path: Path) -> str:
    """A DICOM's values without a window (header only): CT in Hounsfield units whatever its bit
    depth (the rescale maps stored values to HU); other modalities' values carry no physical
    unit, so their scale is the modality, the stored bit depth and sign, and a declared rescale
    type (8-bit and 12-bit MR are two scales); colour images are display levels."""
    ds = _dicom_header(path)
    modality = str(ds.get("Modality", "") or "").strip().upper() or "unknown-modality"
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 16)
    if _colour(ds):
        return f"DICOM colour display levels ({bits}-bit)"
    rescale = str(ds.get("RescaleType", "") or "").strip().upper()
    if modality == "CT" and rescale in ("", "HU"):
        return "DICOM CT values (HU)"
    sign = "signed" if int(ds.get("PixelRepresentation", 0) or 0) == 1 else "unsigned"
    unit = f", rescale type {rescale}" if rescale and rescale != "US" else ""
    return f"DICOM {modality} values ({bits}-bit {sign} stored{unit})"


for _ext in (".dcm", ".dicom"):
    NATIVE_SCALES.register(_ext, doc="DICOM: CT in HU; else modality, bit depth, sign")(
        _dicom_scale
    )


def _dicom_window_scale(path: Path) -> str:
    """A DICOM's values under ``window: 'file'`` (header only): its own VOI LUT or window, or
    without one the fraction of its stored bit range (what ``'unit'`` reads), another scale."""
    ds = _dicom_header(path)
    if _colour(ds):  # read by its bit depth under any window: as a PNG is
        return ""
    if _own_window(ds):
        return "the DICOM's own window (window: file)"
    return "no DICOM window: its stored bit range (window: file falls back to 'unit')"


for _ext in (".dcm", ".dicom"):
    FILE_WINDOW_SCALES.register(_ext, doc="DICOM: its own window, else the stored bit range")(
        _dicom_window_scale
    )


# ---- NIfTI ---------------------------------------------------------------------------------


def _nifti(path: Path, *, window: Window = None) -> np.ndarray:
    import nibabel as nib  # lazy: [medical] extra, only for NIfTI files

    img = nib.load(str(path))
    if len(img.shape) >= 3:
        img = nib.as_closest_canonical(img)
    data = np.asarray(img.get_fdata(dtype=np.float32))  # applies scl_slope / scl_inter
    if data.ndim == 2:  # (i, j): one slice
        data = data[:, :, None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise DataError(f"{path}: NIfTI with {data.ndim} dimensions {data.shape} is not supported")
    # (i=R, j=A, k=S, c) -> (c, k, j, i), then flip j and i: rows anterior->posterior, columns
    # patient right->left
    x = data.transpose(3, 2, 1, 0)[:, :, ::-1, ::-1]
    w = numeric_window(window)
    if w is not None:
        x = apply_window(x, *w)
    elif window is not None:  # 'unit' / 'file': a NIfTI has no bit depth or window
        x = require_unit(x, path, window)
    return np.ascontiguousarray(x, dtype=np.float32)


for _ext in (".nii", ".nii.gz"):
    IMAGE_READERS.register(_ext, doc="NIfTI volume, canonical (RAS+) orientation")(_nifti)


# ---- signals -------------------------------------------------------------------------------


def _pick(path: Path, names: list[str], leads: list[str] | None) -> list[int]:
    if not leads:
        return list(range(len(names)))
    lower = {n.lower(): i for i, n in enumerate(names)}
    idx = []
    for lead in leads:
        if lead in names:
            idx.append(names.index(lead))
        elif lead.lower() in lower:
            idx.append(lower[lead.lower()])
        else:
            raise DataError(f"{path}: no lead {lead!r}; the file has {', '.join(names)}")
    return idx


#: a lead with more of its samples invalid (NaN: WFDB's invalid value, an empty CSV cell) than
#: this share is refused: what interpolation would fill in is more invention than record
MAX_INVALID_SHARE = 0.5


def fill_invalid(x: np.ndarray, names: list[str] | None = None) -> np.ndarray:
    """Linear interpolation over NaN samples (WFDB invalid samples) so filters do not spread
    them; a lead over :data:`MAX_INVALID_SHARE` invalid (or with none valid) is refused: it was
    filled with its edge values or 0 and predicted on as a record."""
    bad_all = np.isnan(x)
    if not bad_all.any():
        return x
    share = bad_all.mean(axis=1)
    over = np.flatnonzero(share > MAX_INVALID_SHARE)
    if len(over):
        c = int(over[0])
        lead = repr(names[c]) if names and c < len(names) else f"{c + 1} of {x.shape[0]}"
        raise DataError(
            f"lead {lead} has {share[c]:.0%} of its {x.shape[1]} samples invalid (NaN, empty, or "
            f"WFDB's invalid value); over {MAX_INVALID_SHARE:.0%} filled in by interpolation "
            "would be invented: leave the record out (in training data.on_bad_row: missing, in "
            "prediction --on-bad-row missing: the modality is then missing), or leave the lead "
            "out (the modality's leads)"
        )
    x = x.copy()
    t = np.arange(x.shape[1])
    for c in range(x.shape[0]):
        bad = bad_all[c]
        if bad.any():
            x[c, bad] = np.interp(t[bad], t[~bad], x[c, ~bad])
    return x


def _check_resampled_size(channels: int, samples: float, fs: float, rate: float) -> None:
    """Refuse a resampling whose output would exceed ``MAX_RESAMPLED_VALUES`` (a header or time
    column declaring an absurd rate must not allocate gigabytes), or that would upsample more than
    ``MAX_UPSAMPLE``-fold (a time column in the wrong unit)."""
    if not (math.isfinite(fs) and fs > 0):
        raise DataError(f"the sampling rate {fs:g} Hz is not a positive number")
    out = channels * samples * (rate / fs)
    if out > MAX_RESAMPLED_VALUES:
        raise DataError(
            f"resampling {channels} x {samples:.0f} samples from {fs:g} Hz to {rate:g} Hz would "
            f"give {out:.3g} values, over the limit of {MAX_RESAMPLED_VALUES}"
        )
    if rate > MAX_UPSAMPLE * fs:
        raise DataError(
            f"a record sampled at {fs:g} Hz would be upsampled {rate / fs:.3g}-fold to "
            f"{rate:g} Hz, over the limit of {MAX_UPSAMPLE:g}-fold: its samples would be "
            "invented. A CSV time column in milliseconds named 'time' is read as seconds: name "
            "it time_ms; else give records sampled at "
            f"{rate / MAX_UPSAMPLE:g} Hz or more"
        )


def resample(x: np.ndarray, fs: float, rate: float, names: list[str] | None = None) -> np.ndarray:
    """Polyphase resampling ``(C, T)`` from ``fs`` to ``rate`` Hz (anti-aliased); invalid
    (NaN) samples are interpolated first, also when the record is already at ``rate``, so a
    record's gaps do not depend on the rate it was stored at."""
    if abs(fs - rate) < 1e-9 * rate:
        return fill_invalid(x, names)
    _check_resampled_size(x.shape[0], x.shape[1], fs, rate)
    from scipy.signal import resample_poly  # lazy: scipy (with wfdb in [medical]), only to resample

    frac = Fraction(rate / fs).limit_denominator(1000)
    out = resample_poly(
        fill_invalid(x.astype(np.float64), names), frac.numerator, frac.denominator, axis=1
    )
    return out.astype(np.float32)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _wfdb_header(header: bytes, *, ascii_only: bool = True) -> tuple[str, bool, list[str]]:
    """A WFDB header's record name, whether it is a multi-segment record, and the first field of
    each line after the record line that it declares: the data file of each signal, or the name
    of each segment (``~``: a gap). Text only, no wfdb needed. ``ascii_only=False`` reads any
    bytes (wfdb accepts comments such as a patient's name in Latin-1 or UTF-8)."""
    try:
        text = header.decode("ascii") if ascii_only else header.decode("latin-1")
    except UnicodeDecodeError:
        raise DataError("not a WFDB header (not ASCII text)") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise DataError("not a WFDB header (no record line)")
    head = lines[0].split()
    name, _, segments = head[0].partition("/")
    if len(head) < 2 or not head[1].isdigit() or (segments and not segments.isdigit()):
        raise DataError(f"not a WFDB header (record line {lines[0][:60]!r})")
    n = int(segments) if segments else int(head[1])
    if len(lines) < 1 + n:
        what = "segment(s)" if segments else "signal(s)"
        raise DataError(f"the WFDB header declares {n} {what} but describes {len(lines) - 1}")
    return name, bool(segments), [ln.split()[0] for ln in lines[1 : 1 + n]]


def wfdb_record_files(header: bytes) -> tuple[str, list[str]]:
    """The record name and the data files a WFDB header names, for writing an uploaded record
    beside its header. Multi-segment records, and names that are not plain file names (a path,
    ``-`` for standard input), are refused."""
    record, multi, names = _wfdb_header(header)
    if multi:
        raise DataError("a multi-segment WFDB record cannot be uploaded; give a single-segment one")
    if not _PLAIN_NAME.fullmatch(record):
        raise DataError(f"the WFDB record name {record[:60]!r} is not a plain file name")
    if not names:
        raise DataError("the WFDB header declares 0 signals; give a record with at least one")
    files: list[str] = []
    for name in names:
        if not _PLAIN_NAME.fullmatch(name):
            raise DataError(f"the WFDB data file name {name[:60]!r} is not a plain file name")
        if name not in files:
            files.append(name)
    return record, files


def _wfdb_files(path: Path, depth: int = 0) -> list[Path]:
    """The files wfdb reads for the record of header ``path`` besides the header: the data file
    of each signal; for a multi-segment record each segment's header and its files. A header
    that cannot be parsed here (wfdb will most likely refuse it too) gives every file named
    after the record (``rec.*``)."""
    try:
        _, multi, names = _wfdb_header(path.read_bytes(), ascii_only=False)
    except (OSError, DataError):  # unreadable here: the reader will most likely refuse it too
        stem = glob.escape(path.name[: -len(".hea")])
        return sorted(p for p in path.parent.glob(f"{stem}.*") if p != path)
    out: list[Path] = []
    for name in dict.fromkeys(names):  # in order, once each
        if name == "~":  # a gap in a multi-segment record: no file
            continue
        if not multi:
            out.append(path.parent / name)
        elif depth < 2:  # a segment is a record of its own (a layout or a single segment)
            seg = path.parent / f"{name}.hea"
            out += [seg, *_wfdb_files(seg, depth + 1)]
    return out


COMPANION_FILES.register(".hea", doc="WFDB record: the data files (and segments) it names")(
    _wfdb_files
)


@SIGNAL_READERS.register(".hea", doc="WFDB record: physical units (mV), leads by name, resampled")
def _wfdb(path: Path, *, leads: list[str] | None = None, rate: float | None = None) -> np.ndarray:
    import wfdb  # lazy: [medical] extra, only for WFDB records

    record = str(path)[: -len(".hea")]
    with warnings.catch_warnings():  # wfdb's own pandas deprecation noise, once per file
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        header = wfdb.rdheader(record)
        names = list(header.sig_name or [])
        channels = _pick(path, names, leads)
        rec = wfdb.rdrecord(record, channels=channels, physical=True)
    if rec.p_signal is None or rec.p_signal.size == 0:
        raise DataError(f"{path}: WFDB record holds no samples")
    x = rec.p_signal.T.astype(np.float32)  # (C, T)
    for c, unit in enumerate(rec.units or []):
        x[c] *= _TO_MV.get(str(unit).strip().lower(), 1.0)
    if rate:
        x = resample(x, float(rec.fs), float(rate), [names[c] for c in channels])
    return np.ascontiguousarray(x)


@SIGNAL_LAYOUTS.register(".hea", doc="WFDB: the header's sampling rate and signal names")
def _wfdb_layout(path: Path) -> tuple[float | None, list[str] | None]:
    import wfdb  # lazy: [medical] extra, only for WFDB records

    with warnings.catch_warnings():  # wfdb's own pandas deprecation noise
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        header = wfdb.rdheader(str(path)[: -len(".hea")])
    return (float(header.fs) if header.fs else None), (list(header.sig_name or []) or None)


def _csv_header(path: Path, table: list[list[str]]) -> tuple[list[str], set[int]]:
    """A CSV signal's header and the columns that are none: a blank name over empty cells (a
    trailing comma on every line, as spreadsheets export). A blank name (or pandas' ``Unnamed:
    0``) over values is refused, not read as a lead: a DataFrame saved with its index became a
    lead named '' of row numbers, and the same record saved without it could not be
    predicted."""
    header = [c.strip() for c in table[0]]
    blank = [i for i, c in enumerate(header) if not c or re.fullmatch(r"Unnamed: \d+", c)]
    empty = {i for i in blank if all(i >= len(r) or not r[i].strip() for r in table[1:])}
    named = [i for i in blank if i not in empty]
    if named:
        raise DataError(
            f"{path}: column {named[0] + 1} of its header has no name (a pandas index saved "
            "with it? df.to_csv(path, index=False)); a CSV signal's columns are its time and "
            "its leads, each named: name it or drop it"
        )
    return header, empty


def _time_column(header: list[str]) -> tuple[int | None, float]:
    """A CSV signal's time column (:data:`TIME_UNITS`; ``None``: none) and its unit in seconds."""
    for i, c in enumerate(header):
        unit = TIME_UNITS.get(re.sub(r"[\s_\-\[\]()]", "", c.lower()))
        if unit is not None:
            return i, unit
    return None, 1.0


@SIGNAL_LAYOUTS.register(".csv", doc="CSV signal: the lead columns; the rate from the time column")
def _csv_layout(path: Path) -> tuple[float | None, list[str] | None]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        table = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    header, empty = _csv_header(path, table) if table else ([], set())
    tcol, unit = _time_column(header)
    names = [c for i, c in enumerate(header) if i != tcol and i not in empty] or None
    if tcol is None or len(table) < 3:
        return None, names
    try:
        step = unit * float(np.median(np.diff([float(r[tcol]) for r in table[1:]])))
    except (ValueError, IndexError):  # the reader reports a bad time column when it needs one
        return None, names
    return (float(f"{1.0 / step:.6g}") if step > 0 else None), names  # 100, not 99.99999


@SIGNAL_READERS.register(
    ".csv", doc="CSV signal: a time column (time/t: seconds, time_ms: ms) + one column per lead"
)
def _csv_signal(
    path: Path, *, leads: list[str] | None = None, rate: float | None = None
) -> np.ndarray:
    with open(path, newline="", encoding="utf-8-sig") as f:
        table = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if len(table) < 2:
        raise DataError(f"{path}: CSV signal has no rows")
    (header, empty), body = _csv_header(path, table), table[1:]
    tcol, unit = _time_column(header)
    cols = [i for i in range(len(header)) if i != tcol and i not in empty]
    names = [header[i] for i in cols]
    if not cols:
        raise DataError(f"{path}: CSV signal has no lead columns besides {header[0]!r}")
    values = np.full((len(body), len(header)), np.nan, np.float64)
    for r, row in enumerate(body):
        if len(row) > len(header):
            raise DataError(f"{path} row {r + 2}: more cells than the header's {len(header)}")
        for c, cell in enumerate(row):
            cell = cell.strip()
            if cell in CSV_MISSING:
                continue
            try:
                values[r, c] = float(cell)
            except ValueError:
                raise DataError(
                    f"{path} row {r + 2}, column {header[c]!r}: {cell!r} is not a number"
                ) from None
    idx = _pick(path, names, leads)
    x = np.ascontiguousarray(values[:, [cols[i] for i in idx]].T, np.float32)  # (C, T)
    if not rate:
        return np.ascontiguousarray(x)
    if tcol is None:
        raise DataError(
            f"{path}: resampling to {rate} Hz needs a time column named time or t "
            "(seconds), or time_ms (milliseconds)"
        )
    t = values[:, tcol] * unit
    dt = np.diff(t)
    if len(t) < 2 or not (dt > 0).all():
        raise DataError(f"{path}: the time column must increase strictly")
    step = float(np.median(dt))
    if np.abs(dt - step).max() <= 0.01 * step:  # regular: proper anti-aliased resampling
        return resample(x, 1.0 / step, float(rate), [names[i] for i in idx])
    _check_resampled_size(x.shape[0], len(t), (len(t) - 1) / (t[-1] - t[0]), rate)  # irregular
    # rows missing from the time column are samples interpolation would invent, as invalid
    # cells are (fill_invalid): a record mostly gaps is refused alike
    gaps = float((dt - step)[dt > 2 * step].sum()) / float(t[-1] - t[0])
    if gaps > MAX_INVALID_SHARE:
        raise DataError(
            f"{path}: its time column skips {gaps:.0%} of the record (gaps over twice its usual "
            f"step of {step:g} s); over {MAX_INVALID_SHARE:.0%} filled in by interpolation "
            "would be invented: leave the record out (data.on_bad_row / --on-bad-row missing)"
        )
    grid = t[0] + np.arange(int(np.floor((t[-1] - t[0]) * rate)) + 1) / rate
    x = fill_invalid(x, [names[i] for i in idx])
    return np.stack([np.interp(grid, t, ch) for ch in x]).astype(np.float32)
