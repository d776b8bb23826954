"""File readers, chosen by file type. Each returns float32 channel-first arrays.

``read_image(path) -> (C, H, W)`` or ``(C, D, H, W)``; ``read_signal(path) -> (C, T)``;
``read_modality(path, modality)`` reads and fits a file to a modality's shape, honouring its
``window`` (images) and ``leads`` / ``rate`` (signals). Register more readers with
``@IMAGE_READERS.register('.ext')`` / ``SIGNAL_READERS``: an image reader is
``fn(path, *, window=None)``, a signal reader ``fn(path, *, leads=None, rate=None)``.

Formats: Pillow images and ``.npy`` here; DICOM, NIfTI, WFDB and CSV signals in
``medfuse.core.readers.medical`` (imported with the package).

The intensity scale of an image (docs/data.md, "One intensity scale"): with a ``window`` every
reader returns [0, 1]: ``[centre, width]`` maps that range linearly; ``'file'`` applies a
DICOM's own VOI LUT or window (pydicom's ``apply_voi_lut``); ``'unit'`` (and ``'file'`` where a
file has no window) divides by the file's full range: 255 for 8-bit, 65535 for 16-bit display
images, the stored bit range after rescale slope/intercept for DICOM; ``.npy`` and NIfTI have
no declared range and must already lie in [0, 1]. Without a window each reader returns the
file's own values (display levels, DICOM modality units such as HU, NIfTI/``.npy`` as stored),
and ``native_scale`` names that scale so that a manifest mixing scales can be refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medfuse.core.errors import DataError, csv_rows
from medfuse.core.readers.image_math import fit_image, fit_signal, fit_signal_windows
from medfuse.core.registry import Registry

if TYPE_CHECKING:
    from medfuse.core.spec import ModalitySpec

#: a reader: ``(path, **options) -> array``
Reader = Callable[..., np.ndarray]
IMAGE_READERS: Registry[Reader] = Registry("image file type")
SIGNAL_READERS: Registry[Reader] = Registry("signal file type")

Window = list[float] | str | None

#: the other files a reader opens besides the one a cell names, by file type (a WFDB header's
#: data files): ``fn(path) -> [paths]``; what a decoded value depends on (:func:`files_read`)
COMPANION_FILES: Registry[Callable[[Path], list[Path]]] = Registry("companion-file type")


def suffix_of(path: str | Path) -> str:
    name = str(path).lower()
    for double in (".nii.gz",):
        if name.endswith(double):
            return double
    return Path(name).suffix


#: the distributions whose code turns a file's bytes into values: another release may decode the
#: same bytes to other values (a resampling filter, a LUT), so the caches of decoded or extracted
#: values key on them
READER_LIBRARIES = ("numpy", "pillow", "pydicom", "nibabel", "wfdb", "scipy")


@functools.cache
def reader_versions() -> dict[str, str | None]:
    """The installed release of each of :data:`READER_LIBRARIES` (``None``: not installed)."""
    out: dict[str, str | None] = {}
    for dist in READER_LIBRARIES:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def files_read(path: str | Path) -> list[Path]:
    """Every file that reading ``path`` opens: the file itself, then the companions its type
    names (:data:`COMPANION_FILES`), e.g. a WFDB header's ``.dat`` files. A decoded value is
    stale when any of them changed (the stream cache keys on all of them)."""
    p = Path(path)
    suf = suffix_of(p)
    return [p, *COMPANION_FILES.get(suf)(p)] if suf in COMPANION_FILES else [p]


def _reader(reg: Registry[Reader], path: str | Path, what: str) -> Reader:
    suf = suffix_of(path)
    if suf not in reg:
        raise DataError(
            f"{path}: cannot read a {what} from '{suf or '(no extension)'}' files; "
            f"supported: {', '.join(reg.names())}"
        )
    return reg.get(suf)


def read_image(path: str | Path, *, window: Window = None) -> np.ndarray:
    """An image ``(C, H, W)`` or volume ``(C, D, H, W)``; ``window`` as in ``ModalitySpec``."""
    p = Path(path)
    reader = _reader(IMAGE_READERS, p, "image")
    if not p.exists():
        raise DataError(f"{p}: file not found")
    try:
        return reader(p, window=window)
    except DataError:
        raise
    except Exception as err:  # a library's own error: say which file
        raise DataError(f"{p}: not a readable image ({type(err).__name__}: {err})") from None


def read_signal(
    path: str | Path, *, leads: list[str] | None = None, rate: float | None = None
) -> np.ndarray:
    """A signal ``(C, T)``: ``leads`` picks channels by name, ``rate`` resamples (Hz)."""
    p = Path(path)
    reader = _reader(SIGNAL_READERS, p, "signal")
    if not p.exists():
        raise DataError(f"{p}: file not found")
    try:
        return reader(p, leads=leads, rate=rate)
    except DataError as err:
        msg = str(err)
        raise DataError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
    except Exception as err:
        raise DataError(f"{p}: not a readable signal ({type(err).__name__}: {err})") from None


def read_modality(path: str | Path, m: ModalitySpec) -> np.ndarray:
    """Read one file and fit it to ``m.shape`` (:func:`read_fitted` without the file's shape)."""
    return read_fitted(path, m)[0]


def image_aspect(shape: tuple[int, ...]) -> float:
    """An image's width over its height, from its shape (``(..., H, W)``); 0 for no image."""
    if len(shape) < 2 or not shape[-2] or not shape[-1]:
        return 0.0
    return float(shape[-1]) / float(shape[-2])


def raw_extent(shape: tuple[int, ...], kind: str) -> float:
    """What a package records of a file before it was fitted (``data.aspects``): an image's
    width / height (:func:`image_aspect`), a signal's length in samples at the modality's rate
    (its record is then centre-cropped or padded to ``length``); 0 for anything else."""
    if kind == "image":
        return image_aspect(shape)
    if kind == "signal" and shape and shape[-1]:
        return float(shape[-1])
    return 0.0


def aspect_range(aspects: list[float]) -> list[float] | None:
    """What a package records of its files before they were fitted (``data.aspects``): the
    least and the largest :func:`raw_extent`, ``None`` for none."""
    got = [a for a in aspects if a > 0]
    return [round(min(got), 4), round(max(got), 4)] if got else None


def read_fitted(path: str | Path, m: ModalitySpec) -> tuple[np.ndarray, tuple[int, ...]]:
    """Read one file and fit it to ``m.shape`` (any failure is a DataError naming the file); and
    the shape the file held before it was fitted (an image's proportions: :func:`image_aspect`).

    Images: channels matched (grey <-> RGB) and resized to ``size``; a single-slice volume fits
    a 2D size. With ``sequence: S`` an image modality is ``(S, C, H, W)``: the frames (DICOM
    multi-frame) or slices (NIfTI depth) of the file, resampled to ``S`` elements. Signals:
    centre-cropped / zero-padded to ``length``; with ``sequence: S`` the signal is cut into
    ``S`` consecutive windows of ``length`` samples, ``(S, C, length)``.
    """
    p = Path(path)
    try:
        if m.kind == "image":
            raw = read_image(p, window=m.window)
            size = list(m.size or [])
            if m.sequence:
                if len(size) != 2:
                    raise DataError(f"a sequence image modality needs size [H, W]; got {size}")
                vol = raw[:, None] if raw.ndim == 3 else raw  # (C, D, H, W)
                x = fit_image(vol, int(m.channels or 1), [m.sequence, *size])
                return np.ascontiguousarray(x.transpose(1, 0, 2, 3)), raw.shape  # (S, C, H, W)
            if len(size) == 2 and raw.ndim == 4 and raw.shape[1] == 1:
                raw = raw[:, 0]  # one slice / one frame
            return fit_image(raw, int(m.channels or 1), size), raw.shape
        if m.kind == "signal":
            raw = read_signal(p, leads=m.leads, rate=m.rate)
            c, t = int(m.channels or 1), int(m.length or 1)
            if m.sequence:
                return fit_signal_windows(raw, c, t, m.sequence), raw.shape  # (S, C, T)
            return fit_signal(raw, c, t), raw.shape
    except DataError as err:
        msg = str(err)
        raise DataError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
    except Exception as err:
        raise DataError(f"{p}: cannot fit to {m.shape} ({type(err).__name__}: {err})") from None
    raise DataError(f"{p}: a {m.kind} modality is not read from files (use manifest columns)")


#: an image file type's own scale, for types whose scale the file's header declares:
#: ``fn(path) -> str`` (header only), e.g. DICOM's in ``medfuse.core.readers.medical``
NATIVE_SCALES: Registry[Callable[[Path], str]] = Registry("image scale file type")

#: what packages trained before the DICOM scale named the modality and bit depth recorded for
#: every DICOM file: any DICOM scale matches it (:func:`same_scale`)
LEGACY_DICOM_SCALE = "DICOM modality values (e.g. HU)"


def native_scale(path: str | Path) -> str:
    """What the values an image file gives without a window mean (header only): files of one
    modality must agree, or be read with a window; a package records its files' scale and
    refuses files on another (:func:`same_scale`)."""
    suf = suffix_of(path)
    if suf in NATIVE_SCALES:
        return NATIVE_SCALES.get(suf)(Path(path))
    if suf in PILLOW_SUFFIXES:
        # lazy: Pillow, only when an image file is read
        from PIL import Image

        with Image.open(path) as im:
            mode = im.mode
        if mode in ("L", "1", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr"):
            return "8-bit display levels (0-255)"
        if mode.startswith("I;16") or (mode == "I" and suf == ".png"):
            return "16-bit display levels (0-65535)"
        return f"{mode} values (no bit depth)"
    return {
        ".npy": "stored array values",
        ".nii": "NIfTI stored values",
        ".nii.gz": "NIfTI stored values",
    }.get(suf, f"{suf} values")


#: a signal file type's layout from its header where it can: ``fn(path) -> (sampling rate in
#: Hz or None, lead names in file order or None)``; WFDB and CSV in ``...readers.medical``
SIGNAL_LAYOUTS: Registry[Callable[[Path], tuple[float | None, list[str] | None]]] = Registry(
    "signal layout file type"
)


#: under ``window: 'file'``, what a file type's values mean when the file itself decides: ``fn(path)
#: -> str`` (header only), e.g. DICOM's in ``medfuse.core.readers.medical``: its own window, or
#: without one the stored bit range ('unit'). A type not registered reads alike under 'file'
FILE_WINDOW_SCALES: Registry[Callable[[Path], str]] = Registry("file-window scale file type")


def file_scale(path: str | Path, m: Any) -> str:
    """What a file's values mean that its modality ``m`` does not fix, ``""`` when it fixes all:
    an image read without a window, its :func:`native_scale`; a signal without ``rate``, its
    sampling rate, and without ``leads``, its lead names in order (:data:`SIGNAL_LAYOUTS`), as
    the reader then keeps them. The files of one modality must agree (a manifest mixing 100 and
    400 Hz records, or leads I, II with II, I, is refused), and a package refuses files on
    another than its training files' (:func:`same_scale`). Under ``window: 'file'`` a DICOM's
    scale is its own window, or the stored bit range when it has none
    (:data:`FILE_WINDOW_SCALES`): a column of windowed and unwindowed DICOMs is two scales."""
    if m.kind == "image":
        if m.window is None:
            return native_scale(path)
        suf = suffix_of(path)
        if m.window == "file" and suf in FILE_WINDOW_SCALES:
            return FILE_WINDOW_SCALES.get(suf)(Path(path))
        return ""
    if m.kind != "signal" or (m.rate and m.leads):
        return ""
    suf = suffix_of(path)
    fs, names = SIGNAL_LAYOUTS.get(suf)(Path(path)) if suf in SIGNAL_LAYOUTS else (None, None)
    parts = []
    if not m.rate:
        parts.append(f"{fs:g} Hz sampling" if fs else "no stated sampling rate")
    if not m.leads:
        parts.append(f"leads {', '.join(names)}" if names else "unnamed leads")
    return " and ".join(parts)


def same_scale(recorded: str, found: str) -> bool:
    """Whether a file on scale ``found`` (:func:`file_scale`) may be given to a model trained
    on files of scale ``recorded``: the same scale; a package of an older medfuse recorded
    :data:`LEGACY_DICOM_SCALE` for every DICOM, which any DICOM scale matches."""
    return found == recorded or (recorded == LEGACY_DICOM_SCALE and found.startswith("DICOM"))


def _fix(kind: str, modality: str) -> str:
    """The modality setting that reads files of any scale (or layout) as one."""
    if kind == "signal":
        return (
            f"modalities.{modality}.rate (Hz: every record resampled to it) and "
            f"modalities.{modality}.leads (names: picked in that order)"
        )
    return (
        f"modalities.{modality}.window: 'unit' (every file on [0, 1] by its bit depth or stored "
        "range), 'file' (DICOM windows) or [centre, width]"
    )


def scale_refusal(where: str, modality: str, recorded: str, found: str, kind: str = "image") -> str:
    """The one message for files on another scale (a signal: rate or leads) than a package's
    training files (:func:`file_scale`)."""
    return (
        f"{where}: {kind} modality {modality!r} was trained on files with {recorded}; these "
        f"have {found}: a model given values on another scale or layout predicts nonsense "
        "without an error. Give files like the training ones (convert them), or train a model that reads "
        f"them all alike ({_fix(kind, modality)}; docs/data.md)"
    )


def mixed_scales_refusal(where: str, modality: str, kind: str, scales: dict[str, list[int]]) -> str:
    """The one message for a manifest whose files of one modality differ in :func:`file_scale`
    (``scales``: each scale's rows, 0-based data rows)."""

    mixed = "; ".join(f"{k} ({csv_rows(v)})" for k, v in scales.items())
    what = "sampling rates or lead orders" if kind == "signal" else "intensity scales"
    return (
        f"{where}: the files of {kind} modality {modality!r} come on different {what}: "
        f"{mixed}. They cannot be trained on together as they are: set {_fix(kind, modality)} "
        "(docs/data.md)"
    )


def require_unit(x: np.ndarray, path: Path, window: Window) -> np.ndarray:
    """Files without a declared range (``.npy``, NIfTI) meet ``window: unit``/``file`` only when
    their values already lie in [0, 1]."""
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{path}: window {window!r} needs values on [0, 1], but this file has no bit depth "
            f"or window and holds {lo:g}..{hi:g}; give the modality a numeric window "
            "[centre, width]"
        )
    return x


def apply_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Map ``[centre - width/2, centre + width/2]`` linearly to ``[0, 1]``, clipping outside."""
    lo = float(centre) - float(width) / 2.0
    return np.clip((x - lo) / float(width), 0.0, 1.0).astype(np.float32)


def numeric_window(window: Window) -> tuple[float, float] | None:
    """The ``[centre, width]`` of a window option, or None ('file' is handled by DICOM)."""
    if isinstance(window, list | tuple):
        return float(window[0]), float(window[1])
    return None


#: the EXIF tag saying how a camera's image is to be turned to be shown upright
ORIENTATION = 0x0112


def exif_orientation(path: str | Path) -> int:
    """A Pillow image file's EXIF orientation (1: as stored; header only); 1 for other files."""
    if suffix_of(path) not in PILLOW_SUFFIXES:
        return 1
    from PIL import Image  # lazy: Pillow, only when an image file is read

    try:
        with Image.open(path) as im:
            return int(im.getexif().get(ORIENTATION, 1) or 1)
    except Exception:  # the reader reports an unreadable file
        return 1


def _pil(path: Path, *, window: Window = None) -> np.ndarray:
    """Pillow: grey -> 1 channel, colour -> RGB, turned as its EXIF orientation says (a phone's
    photo is read as it is shown); a multi-page file is refused. Display images (already windowed):
    any ``window`` scales them to [0, 1] by their bit depth (8-bit: /255, 16-bit: /65535), to
    match windowed DICOM/NIfTI; 32-bit and float images have no bit depth: a numeric window."""
    from PIL import Image, ImageOps  # lazy: Pillow, only when an image file is read

    with Image.open(path) as im:
        # a z-stack or animation: its first frame alone was read, without a word (a phone's MPO
        # JPEG holds its photo first and a depth or gain map after it: the photo is the image)
        frames = int(getattr(im, "n_frames", 1) or 1) if im.format != "MPO" else 1
        if frames > 1:
            raise DataError(
                f"{path}: holds {frames} pages/frames; a {path.suffix} file is read as one "
                "image: save the page to use as its own file, or give a stack as DICOM or NIfTI "
                "(read as a volume)"
            )
        im.load()
        if im.getexif().get(ORIENTATION, 1) != 1:  # shown rotated/flipped: read as shown
            ImageOps.exif_transpose(im, in_place=True)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float32)[None]
            sixteen = im.mode.startswith("I;16") or (im.mode == "I" and path.suffix == ".png")
            full = 65535.0 if sixteen else None
            if window is not None and full is None:
                w = numeric_window(window)
                if w is None:
                    raise DataError(
                        f"{path}: a {im.mode} image has no bit depth to scale by; give the "
                        "modality a numeric window [centre, width]"
                    )
                return apply_window(arr, *w)
        elif im.mode in ("L", "1", "LA"):
            grey = im if im.mode == "L" else im.convert("L")  # no copy of a grey image
            arr = np.asarray(grey, dtype=np.float32)[None]
            full = 255.0
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
            full = 255.0
    if window is not None and full is not None:
        arr = arr / full
    return np.ascontiguousarray(arr, dtype=np.float32)


PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
for _ext in PILLOW_SUFFIXES:
    IMAGE_READERS.register(_ext, doc="Pillow: grey -> 1 channel, colour -> RGB")(_pil)


@IMAGE_READERS.register(".npy", doc="numpy array (H, W) or (C, H, W) / (C, D, H, W)")
def _npy_image(path: Path, *, window: Window = None) -> np.ndarray:
    arr = np.load(path, allow_pickle=False)
    if arr.ndim not in (2, 3, 4) or not np.issubdtype(arr.dtype, np.number):
        raise DataError(
            f"{path}: an image .npy must be numeric (H, W), (C, H, W) or (C, D, H, W); "
            f"got {arr.dtype} {arr.shape}"
        )
    arr = arr.astype(np.float32)
    arr = arr[None] if arr.ndim == 2 else arr
    w = numeric_window(window)
    if w is not None:
        return apply_window(arr, *w)
    return require_unit(arr, path, window) if window is not None else arr


@SIGNAL_READERS.register(".npy", doc="numpy array (C, T) or (T,)")
def _npy_signal(path: Path, *, leads: list[str] | None = None, rate: float | None = None) -> Any:
    if leads or rate:
        raise DataError(
            f"{path}: an .npy signal has no lead names or sampling rate; 'leads' and 'rate' "
            "need WFDB (.hea) or CSV files"
        )
    arr = np.load(path, allow_pickle=False)
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.number):
        raise DataError(
            f"{path}: a signal .npy must be numeric (T,) or (C, T); got {arr.dtype} {arr.shape}"
        )
    arr = arr.astype(np.float32)
    return arr[None] if arr.ndim == 1 else arr
