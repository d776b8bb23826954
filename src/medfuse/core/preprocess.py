"""Normalisation statistics (fit on the training split only) and their application.

Pure numpy on purpose: the torch-free runtime (``medfuse.runtime``) imports this module to
preprocess inputs exactly as training did.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

EPS = 1e-6


def channel_axis(kind: str, has_sequence: bool) -> int:
    """Axis of channels (image/signal) or columns (tabular) within one sample: after the
    sequence axis when samples are sequences, else first."""
    return 1 if has_sequence else 0


#: samples converted to float64 at a time by :func:`_nan_mean_std`
STATS_ROWS = 256


def _nan_mean_std(x: np.ndarray, reduce: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware mean and (population) std over the axes ``reduce``, every value and every
    deviation in float64, a few samples at a time (``np.nanstd(..., dtype=float64)`` subtracts
    the mean in the input's float32, which costs ~1e-9 of relative precision: the streamed
    statistics, merged from float64 per-sample sums, would then round to other float32)."""

    def chunks() -> Any:
        for i in range(0, len(x), STATS_ROWS):
            yield np.asarray(x[i : i + STATS_ROWS], np.float64)

    n = s1 = m2 = 0.0
    for ch in chunks():
        n = n + (~np.isnan(ch)).sum(axis=reduce)
        s1 = s1 + np.nansum(ch, axis=reduce)
    shape = [1 if i in reduce else x.shape[i] for i in range(x.ndim)]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.asarray(s1 / n, np.float64)
        for ch in chunks():
            m2 = m2 + np.nansum((ch - mean.reshape(shape)) ** 2, axis=reduce)
        std = np.sqrt(np.asarray(m2 / n, np.float64))
    return mean, std


def fit_stats(
    arrays: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    axes: dict[str, int],
    kinds: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Per-channel / per-column mean and std over the present training samples (NaN-aware);
    with ``kinds`` (modality -> image/signal/tabular) also the ``range`` that prediction checks
    inputs against (``fit_ranges``)."""
    stats: dict[str, Any] = {}
    for name, x in arrays.items():
        present = x[masks[name] > 0]
        c = axes[name] + 1  # + batch axis
        reduce = tuple(i for i in range(x.ndim) if i != c)
        if present.shape[0] == 0:
            mean, std = np.zeros(x.shape[c]), np.ones(x.shape[c])
        else:
            mean, std = _nan_mean_std(present, reduce)
            mean = np.nan_to_num(mean, nan=0.0)
            std = np.where(np.isfinite(std) & (std > EPS), std, 1.0)
        stats[name] = {"mean": mean.tolist(), "std": std.tolist(), "channel_axis": axes[name]}
        if kinds and name in kinds:
            rng = fit_ranges(x, masks[name], kinds[name])
            if rng is not None:
                stats[name]["range"] = rng
    return stats


def fit_ranges(x: np.ndarray, mask: np.ndarray, kind: str) -> dict[str, Any] | None:
    """What plausibility checks compare against, from the training split: tabular per-column
    min/max; images and signals value percentiles (0.5, 99.5), the range of sample means and
    the 1st percentile of the samples' spans (largest value less least)."""
    present = np.asarray(x)[np.asarray(mask) > 0]
    if present.shape[0] == 0:
        return None
    if kind == "tabular":
        flat = present.reshape(-1, present.shape[-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanmin(flat, axis=0), np.nanmax(flat, axis=0)
        return {"min": [_num(v) for v in lo], "max": [_num(v) for v in hi]}
    n = present.shape[0]
    flat = present.reshape(n, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.asarray(np.nanmean(flat, axis=1, dtype=np.float64))
        contrasts = np.nanmax(flat, axis=1).astype(np.float64) - np.nanmin(flat, axis=1)
    return value_ranges(flat[range_subsample(n)], means, contrasts)


def seen_categories(
    x: np.ndarray, mask: np.ndarray, columns: list[str], categories: dict[str, list[str]]
) -> dict[str, list[str]]:
    """Per text column of a tabular modality, the values its training rows hold: a package's
    categories come from every split of its data, so a value only in val or test has a code
    the model never trained on (a prediction with it is flagged)."""
    present = np.asarray(x)[np.asarray(mask) > 0]
    flat = present.reshape(-1, present.shape[-1]) if present.size else present
    out = {}
    for col, names in categories.items():
        if col not in columns:
            continue
        v = flat[:, columns.index(col)] if len(flat) else np.zeros(0)
        codes = {int(c) for c in v[np.isfinite(v)]}
        out[col] = [name for i, name in enumerate(names) if i in codes]
    return out


def range_subsample(n: int) -> np.ndarray:
    """Positions of the (at most 512) present samples whose values give an image/signal
    modality's percentiles: deterministic, spread over the split."""
    return np.unique(np.linspace(0, n - 1, min(n, 512)).astype(int))


def range_step(values: int) -> int:
    """The stride through a subsample of ``values`` values that reads at most ~2M of them."""
    return max(1, values // 2_000_000)


def value_ranges(
    sub: np.ndarray, means: np.ndarray, contrasts: np.ndarray
) -> dict[str, Any] | None:
    """The stored range of an image/signal modality: value percentiles of the subsample ``sub``
    (``(k, ...)``, at most ~2M values read), the range of the per-sample ``means`` and the least
    of the per-sample ``contrasts`` (largest value less least)."""
    return ranges_of(sub.reshape(-1)[:: range_step(sub.size)], means, contrasts)


def ranges_of(vals: np.ndarray, means: np.ndarray, contrasts: np.ndarray) -> dict[str, Any] | None:
    """:func:`value_ranges` from the subsample's values already strided (:func:`range_step`)."""
    vals = vals[np.isfinite(vals)]
    means = means[np.isfinite(means)]
    contrasts = contrasts[np.isfinite(contrasts)]
    if not vals.size or not means.size:
        return None
    lo, hi = np.percentile(vals, [0.5, 99.5])
    out: dict[str, Any] = {
        "p0_5": float(lo),
        "p99_5": float(hi),
        "mean_min": float(means.min()),
        "mean_max": float(means.max()),
        # a sample flatter than half of this is flagged (core.inputs.plausibility): the 1st
        # percentile of the training samples' spans, so one blank training image does not
        # turn the flag off
        "contrast_min": float(np.percentile(contrasts, 1)) if contrasts.size else 0.0,
    }
    if two := span_groups(contrasts):
        out["span_groups"] = two
    return out


#: two groups of training samples whose spans lie at least this factor apart (their medians),
#: each at least :data:`SPAN_GROUP_SHARE` of the samples, are reported (files in two units)
SPAN_GROUP_FACTOR = 100.0
SPAN_GROUP_SHARE = 0.02


def span_groups(contrasts: np.ndarray) -> dict[str, float] | None:
    """The training samples' spans (largest less least value) in two groups far apart: the
    widest gap between consecutive sorted spans (on a log scale) with at least
    :data:`SPAN_GROUP_SHARE` of the samples (2 at least) on each side, when its groups'
    medians lie :data:`SPAN_GROUP_FACTOR` apart, as ``{low, high, low_n, high_n}``; else None.
    A CSV signal carries no unit: records in µV beside records in mV train together, and widen
    the range that would flag either at prediction."""
    c = np.sort(contrasts[np.isfinite(contrasts) & (contrasts > 0)])
    n = len(c)
    k = max(2, math.ceil(SPAN_GROUP_SHARE * n))
    if n < 2 * k:
        return None
    logs = np.log10(c)
    gaps = logs[k : n - k + 1] - logs[k - 1 : n - k]  # between sample j - 1 and j, j in [k, n - k]
    i = int(np.argmax(gaps)) + k  # the first sample of the high group
    low, high = float(np.median(c[:i])), float(np.median(c[i:]))
    if high < SPAN_GROUP_FACTOR * low:
        return None
    return {"low": low, "high": high, "low_n": i, "high_n": n - i}


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def normalize(x: np.ndarray, mask: np.ndarray | None, stat: dict[str, Any]) -> np.ndarray:
    """Standardise a batch ``(N, *shape)``; NaN (missing value) and absent samples become 0."""
    x = np.asarray(x, dtype=np.float32)
    c = int(stat["channel_axis"]) + 1
    shape = [1] * x.ndim
    shape[c] = -1
    mean = np.asarray(stat["mean"], dtype=np.float32).reshape(shape)
    std = np.asarray(stat["std"], dtype=np.float32).reshape(shape)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.subtract(x, mean, dtype=np.float32)  # the one new array: the rest in place
        np.divide(out, std, out=out)
        # NaN is a missing (tabular) value: the training mean. An infinite result (a huge
        # input) is kept: the model's output becomes non-finite and the row is refused, never a
        # silent 0. A NaN makes the sum NaN: the values are searched only then.
        if out.size and not np.isfinite(np.add.reduce(out, axis=None)):
            out[np.isnan(out)] = 0.0
    if mask is not None and out.ndim:
        keep = np.asarray(mask, dtype=np.float32).reshape(-1) > 0  # NaN: not kept
        if keep.size not in (1, len(out)):
            raise ValueError(f"a mask of {keep.size} values for a batch of {len(out)} samples")
        if not keep.all():
            out[~np.broadcast_to(keep, out.shape[:1])] = 0.0
    return out
