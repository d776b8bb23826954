"""Bootstrap confidence intervals for every clinical metric, vectorised over resamples.

A bootstrap resample is a vector of integer *weights* (how often each sample was drawn), so one
``(B, N)`` weight matrix scores ``B`` resamples at once: AUROC and average precision come from
cumulative sums over the samples sorted once by score, threshold metrics from matrix-vector
products. With a patient id, whole patients are drawn (a cluster bootstrap): every sample of a
patient gets that patient's draw count, so correlated samples of one patient never split across
"independent" draws. With weights all 1 the functions return the ordinary point metrics (checked
against scikit-learn in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

import warnings

from medfuse.training.metrics import ECE_BINS, SUMMARY_KEYS, compute_metrics

#: default number of bootstrap resamples and the confidence level
RESAMPLES = 1000
LEVEL = 0.95
#: weight-matrix cells scored at once (bounds memory: ~8 bytes x a few temporaries each)
CHUNK_CELLS = 2_000_000

Metrics = dict[str, np.ndarray]


# ---- resampling ------------------------------------------------------------------------------


def cluster_codes(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Map group labels (e.g. patient ids) to codes ``0..P-1``; ``None`` means one per sample."""
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups)
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries for {n} samples")
    _, codes = np.unique(g.astype(str), return_inverse=True)
    return codes.ravel(), int(codes.max()) + 1 if n else 0


def iter_weights(
    n: int,
    *,
    groups: Any = None,
    n_boot: int = RESAMPLES,
    seed: int = 0,
    chunk: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield ``(b, n)`` float weight matrices (draw counts), ``n_boot`` rows in all, seeded.

    Patients (``groups``) are drawn with replacement, as many as there are; each sample carries
    its patient's count. The sequence depends only on ``(n, groups, n_boot, seed)``.
    """
    codes, p = cluster_codes(groups, n)
    rng = np.random.default_rng(seed)
    step = chunk or max(1, min(n_boot, CHUNK_CELLS // max(n, 1)))
    pvals = np.full(p, 1.0 / p) if p else np.zeros(0)
    done = 0
    while done < n_boot:
        b = min(step, n_boot - done)
        counts = rng.multinomial(p, pvals, size=b) if p else np.zeros((b, 0), np.int64)
        yield counts[:, codes].astype(np.float64)
        done += b


def bootstrap(
    fn: Callable[[np.ndarray], Metrics],
    n: int,
    *,
    groups: Any = None,
    n_boot: int = RESAMPLES,
    seed: int = 0,
) -> Metrics:
    """Apply ``fn(W) -> {name: (b,) values}`` to every chunk of resample weights; concatenate."""
    parts: dict[str, list[np.ndarray]] = {}
    for w in iter_weights(n, groups=groups, n_boot=n_boot, seed=seed):
        for k, v in fn(w).items():
            parts.setdefault(k, []).append(np.asarray(v, np.float64))
    return {k: np.concatenate(v) for k, v in parts.items()}


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval (NaN resamples, e.g. one class only, are left out)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [a, 100 - a])
    return float(lo), float(hi)


# ---- weighted metrics (rows of W are resamples) ----------------------------------------------


def _div(a: np.ndarray, b: np.ndarray, zero: float = float("nan")) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(a, float) / np.asarray(b, float)
    return np.where(np.asarray(b) > 0, out, zero)


def ranking_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> Metrics:
    """AUROC (ties count one half, as Mann-Whitney) and average precision (scikit-learn's step
    definition) for each row of weights, from cumulative sums over one shared sort by score."""
    y = np.asarray(y, float).ravel()
    p = np.asarray(p, float).ravel()
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1] if len(ps) else np.zeros(0, int)
    ws = w[:, order]
    tp = np.cumsum(ws * ys, axis=1)[:, last]  # (B, G) at the end of each tie group
    fp = np.cumsum(ws * (1 - ys), axis=1)[:, last]
    pos, neg = tp[:, -1:], fp[:, -1:]
    tpr = _div(tp, pos)
    fpr = _div(fp, neg)
    tpr0 = np.concatenate([np.zeros((len(w), 1)), tpr], axis=1)
    fpr0 = np.concatenate([np.zeros((len(w), 1)), fpr], axis=1)
    auroc = np.sum(np.diff(fpr0, axis=1) * (tpr0[:, 1:] + tpr0[:, :-1]) / 2, axis=1)
    precision = _div(tp, tp + fp, zero=0.0)
    ap = np.sum(np.diff(tpr0, axis=1) * precision, axis=1)
    ok_auc = (pos[:, 0] > 0) & (neg[:, 0] > 0)
    return {
        "auroc": np.where(ok_auc, auroc, np.nan),
        "auprc": np.where(pos[:, 0] > 0, ap, np.nan),
    }


def _ece_rows(correct: np.ndarray, conf: np.ndarray, w: np.ndarray, bins: int) -> np.ndarray:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    onehot = np.eye(bins)[idx]  # (N, bins)
    sp = w @ (onehot * conf[:, None])
    sy = w @ (onehot * correct[:, None])
    return _div(np.abs(sp - sy).sum(axis=1), w.sum(axis=1))


def binary_rows(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, threshold: float = 0.5, bins: int = ECE_BINS
) -> Metrics:
    """The binary metric set of ``train.metrics.binary_metrics`` for each row of weights."""
    y = np.asarray(y, float).ravel()
    p = np.asarray(p, float).ravel()
    pred = (p >= threshold).astype(float)
    total = w.sum(axis=1)
    tp, fp = w @ (y * pred), w @ ((1 - y) * pred)
    fn, tn = w @ (y * (1 - pred)), w @ ((1 - y) * (1 - pred))
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    out = ranking_metrics(y, p, w)
    out.update(
        {
            "accuracy": _div(tp + tn, total),
            "balanced_accuracy": _nanmean_rows(np.stack([sens, spec], axis=1)),
            "sensitivity": sens,
            "specificity": spec,
            "ppv": _div(tp, tp + fp),
            "npv": _div(tn, tn + fn),
            "f1": _div(2 * tp, 2 * tp + fp + fn, zero=0.0),
            "ece": _ece_rows(y, p, w, bins),
            "brier": _div(w @ ((p - y) ** 2), total),
            "prevalence": _div(tp + fn, total),
        }
    )
    return out


def multiclass_rows(y: np.ndarray, p: np.ndarray, w: np.ndarray, bins: int = ECE_BINS) -> Metrics:
    """Macro one-vs-rest metrics of ``train.metrics.multiclass_metrics`` for each row."""
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, float)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    cm = (w @ np.eye(k * k)[y * k + pred]).reshape(len(w), k, k)  # (B, true, predicted)
    rows, cols, diag = cm.sum(axis=2), cm.sum(axis=1), np.diagonal(cm, axis1=1, axis2=2)
    total = cm.sum(axis=(1, 2))
    present = rows > 0
    sens = np.where(present, _div(diag, rows), np.nan)
    spec = np.where(
        present, _div(total[:, None] - rows - cols + diag, total[:, None] - rows), np.nan
    )
    f1 = np.where(present, _div(2 * diag, rows + cols, zero=0.0), np.nan)
    ranking = [ranking_metrics((y == c).astype(float), p[:, c], w) for c in range(k)]
    with np.errstate(invalid="ignore"), _quiet():
        auroc = np.nanmean(np.stack([r["auroc"] for r in ranking], axis=1), axis=1)
        auprc = np.nanmean(
            np.where(present, np.stack([r["auprc"] for r in ranking], axis=1), np.nan), axis=1
        )
        bal = np.nanmean(sens, axis=1)
        po = _div(diag.sum(axis=1), total)
        pe = _div((rows * cols).sum(axis=1), total**2)
        kappa = _div(po - pe, 1 - pe)
        onehot = np.eye(k)[y]
        return {
            "auroc": auroc,
            "auprc": auprc,
            "accuracy": po,
            "balanced_accuracy": bal,
            "sensitivity": bal,
            "specificity": np.nanmean(spec, axis=1),
            "f1": np.nanmean(f1, axis=1),
            "kappa": kappa,
            "ece": _ece_rows((pred == y).astype(float), p.max(axis=1), w, bins),
            "brier": _div(w @ np.sum((p - onehot) ** 2, axis=1), total),
        }


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN (NaN when a whole row is NaN), without the warning."""
    ok = np.isfinite(a)
    return _div(np.where(ok, a, 0.0).sum(axis=1), ok.sum(axis=1))


class _quiet:
    def __enter__(self) -> None:

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)


def multilabel_rows(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, threshold: float = 0.5, bins: int = ECE_BINS
) -> Metrics:
    """Mean over labels of the binary metrics (as ``train.metrics.multilabel_metrics``)."""
    y = np.asarray(y, float)
    per = [binary_rows(y[:, j], p[:, j], w, threshold, bins) for j in range(y.shape[1])]
    with _quiet():
        return {
            key: np.nanmean(np.stack([m[key] for m in per], axis=1), axis=1) for key in SUMMARY_KEYS
        }


def metric_rows(
    task: str, y: np.ndarray, p: np.ndarray, w: np.ndarray, threshold: float = 0.5
) -> Metrics:
    """Every metric of a task for each row of the weight matrix ``w`` ``(B, N)``."""
    w = np.atleast_2d(np.asarray(w, np.float64))
    if task == "binary":
        return binary_rows(y, p, w, threshold)
    if task == "multiclass":
        return multiclass_rows(y, p, w)
    if task == "multilabel":
        return multilabel_rows(y, p, w, threshold)
    raise ValueError(f"unknown task {task!r}; allowed: binary, multiclass, multilabel")


def point_rows(task: str, y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The weighted formulas with every weight 1: the ordinary point estimates."""
    out = metric_rows(task, y, p, np.ones((1, len(y))), threshold)
    return {k: float(v[0]) for k, v in out.items()}


# ---- intervals -------------------------------------------------------------------------------


def interval(value: float, dist: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    lo, hi = percentile_interval(dist, level)
    return {
        "value": float(value),
        "lo": lo,
        "hi": hi,
        "valid_resamples": int(np.isfinite(dist).sum()),
    }


def metric_intervals(
    task: str,
    y: np.ndarray,
    p: np.ndarray,
    threshold: float = 0.5,
    *,
    groups: Any = None,
    n_boot: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    labels: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """``{metric: {value, lo, hi, valid_resamples}}``: point estimates as in ``metrics.json``
    (scikit-learn), 95% percentile bootstrap intervals from ``n_boot`` seeded resamples."""
    point = compute_metrics(task, y, p, threshold, labels)
    extra = point_rows(task, y, p, threshold)
    dist = bootstrap(
        lambda w: metric_rows(task, y, p, w, threshold),
        len(y),
        groups=groups,
        n_boot=n_boot,
        seed=seed,
    )
    out = {}
    for k, d in dist.items():
        v = point.get(k, extra.get(k))
        out[k] = interval(v if isinstance(v, float) else extra[k], d, level)
    return out


def resampling_unit(meta: pd.DataFrame | None, n: int) -> tuple[np.ndarray | None, str, int]:
    """Patient ids from ``meta['patient_id']`` when present (a cluster bootstrap), else samples.

    Returns ``(groups or None, description, number of units)``.
    """
    col = "patient_id"
    if meta is not None and len(meta) == n and col in getattr(meta, "columns", ()):
        ids = meta[col].astype(str).to_numpy()
        units = len(np.unique(ids))
        return ids, f"patients (meta '{col}', {units} for {n} samples)", units
    return None, f"samples ({n}; no patient id in the metadata)", n


def fmt_interval(iv: dict[str, float], digits: int = 3) -> str:
    """``0.866 (0.801-0.925)``; NaN-safe."""

    def f(x: float) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

    return f"{f(iv['value'])} ({f(iv['lo'])}-{f(iv['hi'])})"


# ---- curves with bands -----------------------------------------------------------------------

GRID = np.linspace(0.0, 1.0, 101)


def _curve_points(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """(fpr, tpr, precision) at the end of each tie group, for each row; origin prepended."""
    y = np.asarray(y, float).ravel()
    order = np.argsort(-np.asarray(p, float).ravel(), kind="mergesort")
    ps, ys = np.asarray(p, float).ravel()[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1]
    ws = w[:, order]
    tp = np.cumsum(ws * ys, axis=1)[:, last]
    fp = np.cumsum(ws * (1 - ys), axis=1)[:, last]
    zero = np.zeros((len(w), 1))
    tpr = np.concatenate([zero, _div(tp, tp[:, -1:])], axis=1)
    fpr = np.concatenate([zero, _div(fp, fp[:, -1:])], axis=1)
    prec = np.concatenate([np.ones((len(w), 1)), _div(tp, tp + fp, zero=1.0)], axis=1)
    return fpr, tpr, prec


def curve_bands(
    y: np.ndarray,
    p: np.ndarray,
    *,
    groups: Any = None,
    n_boot: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """ROC (TPR at a fixed FPR grid) and PR (interpolated precision at a fixed recall grid) for
    the data and each bootstrap resample; returns the curves and their percentile bands."""

    def rows(w: np.ndarray) -> dict[str, np.ndarray]:
        fpr, tpr, prec = _curve_points(y, p, w)
        roc = np.full((len(w), GRID.size), np.nan)
        pr = np.full((len(w), GRID.size), np.nan)
        for i in range(len(w)):
            if not (np.isfinite(fpr[i, -1]) and np.isfinite(tpr[i, -1])):
                continue  # one class only in this resample
            roc[i] = np.interp(GRID, fpr[i], tpr[i])
            # interpolated precision: the best precision at any recall >= r
            best = np.maximum.accumulate(prec[i][::-1])[::-1]
            j = np.clip(np.searchsorted(tpr[i], GRID, side="left"), 0, tpr.shape[1] - 1)
            pr[i] = best[j]
        return {"roc": roc, "pr": pr}

    point = rows(np.ones((1, len(y))))
    dist = bootstrap(rows, len(y), groups=groups, n_boot=n_boot, seed=seed)
    a = (1 - level) / 2 * 100
    out: dict[str, Any] = {"grid": GRID}
    with _quiet():
        for k in ("roc", "pr"):
            lo, hi = np.nanpercentile(dist[k], [a, 100 - a], axis=0)
            out[k] = {"value": point[k][0], "lo": lo, "hi": hi}
    out["prevalence"] = float(np.mean(np.asarray(y, float)))
    return out
