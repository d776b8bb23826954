"""File readers, chosen by file type. Each returns float32 channel-first arrays.

``read_image(path) -> (C, H, W)`` or ``(C, D, H, W)``; ``read_signal(path) -> (C, T)``.
Register more with ``@IMAGE_READERS.register('.ext')`` / ``SIGNAL_READERS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medfuse.errors import DataError
from medfuse.registry import Registry

IMAGE_READERS: Registry = Registry("image file type")
SIGNAL_READERS: Registry = Registry("signal file type")


def suffix_of(path: str | Path) -> str:
    name = str(path).lower()
    for double in (".nii.gz",):
        if name.endswith(double):
            return double
    return Path(name).suffix


def _reader(reg: Registry, path: str | Path, what: str):
    suf = suffix_of(path)
    if suf not in reg:
        raise DataError(
            f"{path}: cannot read a {what} from '{suf or '(no extension)'}' files; supported: {', '.join(reg.names())}"
        )
    return reg.get(suf)


def read_image(path: str | Path, **kw: Any) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    try:
        return _reader(IMAGE_READERS, p, "image")(p, **kw)
    except DataError:
        raise
    except Exception as err:  # a library's own error: say which file
        raise DataError(f"{p}: not a readable image ({type(err).__name__}: {err})") from None


def read_signal(path: str | Path, **kw: Any) -> np.ndarray:
    p = Path(path)
    if not p.exists() and suffix_of(p) != ".hea":
        raise DataError(f"{p}: file not found")
    try:
        return _reader(SIGNAL_READERS, p, "signal")(p, **kw)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{p}: not a readable signal ({type(err).__name__}: {err})") from None


def _pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I", "F"):
            arr = np.asarray(im, dtype=np.float32)[None]
        elif im.mode in ("L", "1", "P") and im.mode != "P":
            arr = np.asarray(im.convert("L"), dtype=np.float32)[None]
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


for _ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
    IMAGE_READERS.register(_ext, doc="Pillow: grey -> 1 channel, colour -> RGB")(_pil)


@IMAGE_READERS.register(".npy", doc="numpy array (H, W) or (C, H, W) / (C, D, H, W)")
def _npy_image(path: Path) -> np.ndarray:
    arr = np.load(path, allow_pickle=False).astype(np.float32)
    return arr[None] if arr.ndim == 2 else arr


@SIGNAL_READERS.register(".npy", doc="numpy array (C, T) or (T,)")
def _npy_signal(path: Path) -> np.ndarray:
    arr = np.load(path, allow_pickle=False).astype(np.float32)
    return arr[None] if arr.ndim == 1 else arr


def fit_image(arr: np.ndarray, channels: int, size: list[int]) -> np.ndarray:
    """Match channels (grey <-> RGB) and resize to ``size`` (bilinear / trilinear-ish)."""
    if arr.shape[0] != channels:
        if channels == 1:
            arr = arr.mean(axis=0, keepdims=True)
        elif arr.shape[0] == 1:
            arr = np.repeat(arr, channels, axis=0)
        else:
            raise DataError(f"image has {arr.shape[0]} channels; the model expects {channels}")
    if list(arr.shape[1:]) != list(size):
        if len(size) != arr.ndim - 1:
            raise DataError(f"image of shape {arr.shape[1:]} cannot be fitted to size {size}")
        from scipy.ndimage import zoom

        factors = [1.0] + [t / s for t, s in zip(size, arr.shape[1:])]
        arr = zoom(arr, factors, order=1)
        arr = arr[(slice(None), *(slice(0, t) for t in size))]
    return np.ascontiguousarray(arr, dtype=np.float32)


def fit_signal(arr: np.ndarray, channels: int, length: int) -> np.ndarray:
    """Check channels; centre-crop or zero-pad the time axis to ``length``."""
    if arr.shape[0] != channels:
        raise DataError(f"signal has {arr.shape[0]} channels; the model expects {channels}")
    t = arr.shape[1]
    if t > length:
        start = (t - length) // 2
        arr = arr[:, start : start + length]
    elif t < length:
        arr = np.pad(arr, ((0, 0), (0, length - t)))
    return np.ascontiguousarray(arr, dtype=np.float32)
