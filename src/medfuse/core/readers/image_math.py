"""Fitting raw arrays to a modality's shape (numpy only) and decoding in-memory payloads
(``.npy``, Pillow images) with their sizes checked before any allocation."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from numpy.lib import format as npformat

from medfuse.core.errors import DataError

#: images larger than this many pixels per channel are refused before decoding (no memory bombs)
MAX_PIXELS = 4096 * 4096


def _resize_axis(x: np.ndarray, axis: int, out: int) -> np.ndarray:
    """Linear interpolation on pixel centres, edges repeated (scipy zoom, grid_mode, 'nearest')."""
    n = x.shape[axis]
    if n == out:
        return x
    pos = np.clip((np.arange(out, dtype=np.float64) + 0.5) * (n / out) - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).reshape([-1 if i == axis else 1 for i in range(x.ndim)])
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def fit_image(arr: np.ndarray, channels: int, size: Sequence[int]) -> np.ndarray:
    """Match channels (grey <-> RGB) and resize to ``size``, as ``medfuse.data.readers`` does."""
    arr = np.asarray(arr)
    if arr.ndim == len(size):
        arr = arr[None]
    if arr.shape == (channels, *(int(s) for s in size)):  # nothing to fit: no float64 round trip
        return np.ascontiguousarray(arr, dtype=np.float32)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != len(size) + 1:
        raise DataError(f"an image of shape {arr.shape} cannot be fitted to size {list(size)}")
    if arr.shape[0] != channels:
        if channels == 1:
            arr = arr.mean(axis=0, keepdims=True)
        elif arr.shape[0] == 1:
            arr = np.repeat(arr, channels, axis=0)
        else:
            raise DataError(f"image has {arr.shape[0]} channels; the model expects {channels}")
    if min(arr.shape[1:]) < 1:
        raise DataError(f"an empty image (shape {arr.shape}) cannot be resized")
    for axis, target in enumerate(size, start=1):
        arr = _resize_axis(arr, axis, int(target))
    return np.ascontiguousarray(arr, dtype=np.float32)


def fit_signal(arr: np.ndarray, channels: int, length: int) -> np.ndarray:
    """Check channels; centre-crop or zero-pad the time axis to ``length``."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise DataError(f"signal has shape {arr.shape}; the model expects ({channels}, T)")
    if arr.shape[0] != channels:
        raise DataError(f"signal has {arr.shape[0]} channels; the model expects {channels}")
    t = arr.shape[1]
    if t < 1:
        raise DataError("an empty signal (no samples)")
    if t > length:
        start = (t - length) // 2
        arr = arr[:, start : start + length]
    elif t < length:
        arr = np.pad(arr, ((0, 0), (0, length - t)))
    return np.ascontiguousarray(arr, dtype=np.float32)


def fit_signal_windows(arr: np.ndarray, channels: int, length: int, windows: int) -> np.ndarray:
    """A recording ``(C, T)`` as ``windows`` consecutive windows of ``length`` samples,
    ``(windows, C, length)`` (:func:`fit_signal` to ``windows * length`` first): a signal
    modality with ``sequence``."""
    x = fit_signal(arr, channels, windows * length)  # (C, S*T)
    return np.ascontiguousarray(x.reshape(channels, windows, length).transpose(1, 0, 2))


def read_npy_bytes(data: bytes, *, max_elements: int = MAX_PIXELS * 4) -> np.ndarray:
    """An ``.npy`` payload as a float32 array; the header is checked before any allocation."""

    buf = io.BytesIO(data)
    try:
        version = npformat.read_magic(buf)
        if version == (1, 0):
            shape, _fortran, dtype = npformat.read_array_header_1_0(buf)
        else:
            shape, _fortran, dtype = npformat.read_array_header_2_0(buf)
    except Exception as err:
        raise DataError(f"not an .npy array ({err})") from None
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise DataError(f"an .npy input must be numeric; got dtype {dtype}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > max_elements:
        raise DataError(
            f"an .npy input of shape {shape} is too large (limit {max_elements} values)"
        )
    if len(data) - buf.tell() < count * dtype.itemsize:
        raise DataError(f".npy data is truncated: the header says {shape} {dtype}")
    buf.seek(0)
    try:
        arr = np.load(buf, allow_pickle=False)
    except Exception as err:
        raise DataError(f"not a readable .npy array ({err})") from None
    return np.asarray(arr, dtype=np.float32)
