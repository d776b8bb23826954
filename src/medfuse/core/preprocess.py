"""Normalisation statistics (fit on the training split only) and their application.

Pure numpy on purpose: the torch-free runtime (``medfuse.runtime``) imports this module to
preprocess inputs exactly as training did.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

EPS = 1e-6


def channel_axis(kind: str, has_sequence: bool) -> int:
    """Axis of channels (image/signal) or columns (tabular) within one sample: after the
    sequence axis when samples are sequences, else first."""
    return 1 if has_sequence else 0


def fit_stats(
    arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray], axes: dict[str, int]
) -> dict[str, Any]:
    """Per-channel / per-column mean and std over the present training samples (NaN-aware)."""
    stats: dict[str, Any] = {}
    for name, x in arrays.items():
        present = x[masks[name] > 0]
        c = axes[name] + 1  # + batch axis
        reduce = tuple(i for i in range(x.ndim) if i != c)
        if present.shape[0] == 0:
            mean, std = np.zeros(x.shape[c]), np.ones(x.shape[c])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(present, axis=reduce, dtype=np.float64)
                std = np.nanstd(present, axis=reduce, dtype=np.float64)
            mean = np.nan_to_num(mean, nan=0.0)
            std = np.where(np.isfinite(std) & (std > EPS), std, 1.0)
        stats[name] = {"mean": mean.tolist(), "std": std.tolist(), "channel_axis": axes[name]}
    return stats


def normalize(x: np.ndarray, mask: np.ndarray | None, stat: dict[str, Any]) -> np.ndarray:
    """Standardise a batch ``(N, *shape)``; NaN (missing value) and absent samples become 0."""
    x = np.asarray(x, dtype=np.float32)
    c = int(stat["channel_axis"]) + 1
    shape = [1] * x.ndim
    shape[c] = -1
    mean = np.asarray(stat["mean"], dtype=np.float32).reshape(shape)
    std = np.asarray(stat["std"], dtype=np.float32).reshape(shape)
    out = (x - mean) / std
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    if mask is not None:
        out = out * (np.asarray(mask, dtype=np.float32).reshape((-1,) + (1,) * (x.ndim - 1)) > 0)
    return out.astype(np.float32, copy=False)
