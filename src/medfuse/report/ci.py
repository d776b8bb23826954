"""Confidence intervals for every clinical metric: exact intervals for proportions, a bootstrap
(vectorised over resamples) for everything else.

**Proportions** (accuracy, sensitivity, specificity, PPV, NPV, prevalence: a count of successes
over a count of samples) get the exact Clopper-Pearson interval computed from the counts, never
a percentile bootstrap: a bootstrap of 1/1 detected positives is [1, 1] in every resample, while
the exact 95% interval for 1/1 is 0.025-1. When patients are resampled (several samples per
patient), the counts are replaced by effective counts (Korn & Graubard 1998): ``n_eff =
p(1-p) / var``, ``var`` the patient-clustered (linearised ratio) variance, capped at ``n``; at
``p`` = 0 or 1, where within-patient correlation cannot be estimated, ``n_eff`` is the number of
patients in the denominator (conservative).

**Everything else** (AUROC, AUPRC, balanced accuracy, F1, kappa, ECE, Brier, differences and
gaps) gets the percentile bootstrap. A ranking metric or one that averages over both classes
(AUROC, AUPRC, balanced accuracy, F1; macro sensitivity/specificity for multiclass and
multilabel tasks) gets **no interval** (NaN, printed ``n/a``) when a class has fewer than
:data:`MIN_CLASS_COUNT` resampling units (samples, or patients when patients are resampled): with
so few, the resamples take a handful of distinct values and the percentile interval collapses
towards the point (to it exactly with one positive). Each interval says which ``method`` gave it.

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
from scipy import stats

if TYPE_CHECKING:
    import pandas as pd

import warnings

from medfuse.training.metrics import ECE_BINS, SUMMARY_KEYS, compute_metrics

#: default number of bootstrap resamples and the confidence level
RESAMPLES = 1000
LEVEL = 0.95
#: weight-matrix cells scored at once (bounds memory: ~8 bytes x a few temporaries each)
CHUNK_CELLS = 2_000_000
#: fewest positives and negatives (resampling units: samples, or patients) for a bootstrap
#: interval of a ranking or both-class metric; below it the interval is withheld (NaN, "n/a")
MIN_CLASS_COUNT = 5
#: metrics whose bootstrap needs both classes well represented (binary; for multiclass and
#: multilabel tasks sensitivity and specificity are macro averages over classes and join them)
BOTH_CLASS_METRICS = ("auroc", "auprc", "balanced_accuracy", "f1")

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
    """The percentile bootstrap interval of ``dist`` around the point ``value``."""
    lo, hi = percentile_interval(dist, level)
    return {
        "value": float(value),
        "lo": lo,
        "hi": hi,
        "valid_resamples": int(np.isfinite(dist).sum()),
    }


def clopper_pearson(k: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of ``k`` successes in ``n`` trials; NaN for ``n = 0``.

    ``k`` and ``n`` may be fractional (effective counts of clustered data)."""
    if not n > 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo = 0.0 if k <= 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k >= n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def effective_counts(
    success: np.ndarray, denom: np.ndarray, groups: Any = None
) -> tuple[float, float, str]:
    """``(k, n, how)`` for the proportion ``sum(success) / sum(denom)`` (0/1 per sample, success
    only where denom). Without clusters (or one denominator sample per patient) the raw counts;
    with patients, effective counts (Korn & Graubard): ``n_eff = p(1-p) / var`` with the
    patient-clustered variance of the ratio, at most ``n``; at ``p`` = 0 or 1 the number of
    patients in the denominator."""
    s = np.asarray(success, float).ravel()
    d = np.asarray(denom, float).ravel()
    k, n = float(s.sum()), float(d.sum())
    if groups is None or n == 0:
        return k, n, "clopper-pearson"
    codes, units = cluster_codes(groups, len(d))
    a = np.bincount(codes, s, minlength=units)
    b = np.bincount(codes, d, minlength=units)
    used = b > 0
    c = int(used.sum())
    if c == n:  # one sample of the denominator per patient: the samples are independent
        return k, n, "clopper-pearson"
    p = k / n
    if p <= 0 or p >= 1 or c < 2:
        n_eff = float(c)
    else:
        var = c / (c - 1) * float(np.sum((a[used] - p * b[used]) ** 2)) / n**2
        n_eff = min(n, p * (1 - p) / var) if var > 0 else n
    return p * n_eff, n_eff, "clopper-pearson (effective n, patients)"


def count_interval(
    value: float,
    success: np.ndarray,
    denom: np.ndarray,
    *,
    groups: Any = None,
    level: float = LEVEL,
) -> dict[str, Any]:
    """A proportion's exact interval from its counts (see :func:`effective_counts`)."""
    k, n, how = effective_counts(success, denom, groups)
    lo, hi = clopper_pearson(k, n, level)
    return {
        "value": float(value),
        "lo": lo,
        "hi": hi,
        "valid_resamples": 0,
        "method": how,
    }


def proportion_counts(
    task: str, y: np.ndarray, p: np.ndarray, threshold: float = 0.5
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{metric: (success, denominator)}`` 0/1 per sample, for the metrics that are proportions
    (binary: accuracy, sensitivity, specificity, PPV, NPV, prevalence; multiclass: accuracy)."""
    if task == "binary":
        yy = np.asarray(y, float).ravel() > 0.5
        pred = np.asarray(p, float).ravel() >= threshold
        one = np.ones(len(yy), bool)
        return {
            "accuracy": (pred == yy, one),
            "sensitivity": (pred & yy, yy),
            "specificity": (~pred & ~yy, ~yy),
            "ppv": (pred & yy, pred),
            "npv": (~pred & ~yy, ~pred),
            "prevalence": (yy, one),
        }
    if task == "multiclass":
        yi = np.asarray(y).astype(int).ravel()
        correct = np.asarray(p, float).argmax(axis=1) == yi
        return {"accuracy": (correct, np.ones(len(yi), bool))}
    return {}


def class_counts(task: str, y: np.ndarray, groups: Any = None) -> list[tuple[str, int, int]]:
    """``(class, positives, negatives)`` in resampling units (patients with a sample of that
    class when ``groups`` is given) for each class a ranking metric averages over: binary, the
    positive class; multiclass, each class present; multilabel, each label with a positive."""
    y = np.asarray(y)
    n = len(y)
    if task == "multiclass":
        yi = y.astype(int).ravel()
        cols = [(str(c), yi == c) for c in np.unique(yi)]
    elif task == "multilabel":
        ym = np.asarray(y, float).reshape(n, -1) > 0.5
        cols = [(str(j), ym[:, j]) for j in range(ym.shape[1]) if ym[:, j].any()]
    else:
        cols = [("positive", np.asarray(y, float).ravel() > 0.5)]
    codes, _ = cluster_codes(groups, n)

    def units(sel: np.ndarray) -> int:
        return int(len(np.unique(codes[sel]))) if groups is not None else int(sel.sum())

    return [(name, units(sel), units(~sel)) for name, sel in cols]


def too_few(task: str, y: np.ndarray, groups: Any = None) -> str | None:
    """Why a ranking/both-class bootstrap interval is withheld, or None when it is not: some
    class has fewer than :data:`MIN_CLASS_COUNT` positive or negative units."""
    unit = "patient" if groups is not None else "sample"
    counts = class_counts(task, y, groups)
    if not counts:
        return f"no interval: no positive {unit}"
    for name, pos, neg in counts:
        for count, what in ((pos, "positive"), (neg, "negative")):
            if count < MIN_CLASS_COUNT:
                cls = "" if task == "binary" else f" of class {name}"
                return (
                    f"no interval: {count} {what} {unit}{'s' if count != 1 else ''}{cls} "
                    f"(fewer than {MIN_CLASS_COUNT})"
                )
    return None


def difference_interval(
    task: str,
    metric: str,
    y: np.ndarray,
    value: float,
    dist: np.ndarray,
    *,
    groups: Any = None,
    level: float = LEVEL,
) -> dict[str, Any]:
    """The percentile interval of a paired difference of ``metric`` (two models, or a model with
    and without a modality, on the same resamples), withheld as :func:`too_few` says for a
    ranking or both-class metric, and for a binary proportion (sensitivity, specificity, PPV,
    NPV, accuracy: each alone gets an exact interval, their paired difference only this
    bootstrap, which on 3 positives put a difference of 1 at [1, 1], p 0.001)."""
    return bootstrap_interval(value, dist, difference_withheld(task, metric, y, groups), level)


def difference_withheld(task: str, metric: str, y: np.ndarray, groups: Any = None) -> str | None:
    """Why a bootstrap interval of a difference of ``metric`` involving these samples is
    withheld (a paired difference of two models, a subgroup's part in a best-worst gap), else
    ``None``: as :func:`too_few` says for a ranking or both-class metric, by its own
    denominator for a binary proportion."""
    if task == "binary" and metric in PROPORTIONS:
        return _few_in_denominator(metric, y, groups)
    return too_few(task, y, groups) if metric in both_class_metrics(task) else None


def _few_in_denominator(metric: str, y: np.ndarray, groups: Any = None) -> str | None:
    """Why a paired difference of a binary proportion is withheld: fewer than
    :data:`MIN_CLASS_COUNT` units in what it is a proportion of (sensitivity: positives;
    specificity: negatives; accuracy: all; PPV and NPV, whose denominators are each model's own
    calls: either class), else ``None``."""
    unit = "patient" if groups is not None else "sample"
    ((_, pos, neg),) = class_counts("binary", y, groups) or [("positive", 0, len(np.ravel(y)))]
    need = {"sensitivity": [(pos, "positive")], "specificity": [(neg, "negative")],
            "accuracy": [(pos + neg, "")]}.get(metric, [(pos, "positive"), (neg, "negative")])  # fmt: skip
    for count, what in need:
        if count < MIN_CLASS_COUNT:
            kind = f"{what} " if what else ""
            return (
                f"no interval: {count} {kind}{unit}{'s' if count != 1 else ''} "
                f"(fewer than {MIN_CLASS_COUNT})"
            )
    return None


#: binary metrics that are proportions of a class (exact intervals alone; a paired difference of
#: them is withheld from few of a class, as a ranking metric's)
PROPORTIONS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def bootstrap_interval(
    value: float, dist: np.ndarray, withheld: str | None = None, level: float = LEVEL
) -> dict[str, Any]:
    """The percentile bootstrap interval with its ``method``; ``withheld``: why there is none
    (:func:`too_few`), which then stands as the method, with NaN bounds."""
    iv: dict[str, Any] = {**interval(value, dist, level), "method": "percentile bootstrap"}
    if withheld:
        iv.update(lo=float("nan"), hi=float("nan"), method=withheld)
    return iv


def both_class_metrics(task: str) -> tuple[str, ...]:
    """The metrics whose bootstrap interval :func:`too_few` can withhold for ``task``."""
    if task == "binary":
        return BOTH_CLASS_METRICS
    return (*BOTH_CLASS_METRICS, "sensitivity", "specificity")


def finish_intervals(
    task: str,
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    values: dict[str, float],
    dist: Metrics,
    *,
    groups: Any = None,
    level: float = LEVEL,
) -> dict[str, dict[str, Any]]:
    """``{metric: {value, lo, hi, valid_resamples, method}}`` for every metric in ``dist`` (the
    bootstrap distributions of one set of samples): proportions by their exact interval, the
    rest by the percentile bootstrap, withheld (NaN) when :func:`too_few` says so."""
    counts = proportion_counts(task, y, p, threshold)
    withheld = too_few(task, y, groups)
    guarded = both_class_metrics(task)
    out: dict[str, dict[str, Any]] = {}
    for k, d in dist.items():
        if k in counts:
            out[k] = count_interval(values[k], *counts[k], groups=groups, level=level)
            out[k]["valid_resamples"] = int(np.isfinite(d).sum())
            continue
        why = withheld if k in guarded else None
        if why is None and task == "multilabel" and k == "accuracy":
            # a mean over labels, resampled (no exact interval): from few units it collapses
            why = _few_units(len(np.asarray(y)), groups)
        out[k] = bootstrap_interval(values[k], d, why, level)
    return out


def _few_units(n: int, groups: Any = None) -> str | None:
    """Why a bootstrap interval over ``n`` samples (or their patients) is withheld: fewer than
    :data:`MIN_CLASS_COUNT` resampling units (a subgroup of one sample gave [1, 1])."""
    units = n if groups is None else len(np.unique(cluster_codes(groups, n)[0]))
    if units >= MIN_CLASS_COUNT:
        return None
    unit = "patient" if groups is not None else "sample"
    return f"no interval: {units} {unit}{'s' if units != 1 else ''} (fewer than {MIN_CLASS_COUNT})"


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
) -> dict[str, dict[str, Any]]:
    """``{metric: {value, lo, hi, valid_resamples, method}}``: point estimates as in
    ``metrics.json`` (scikit-learn); exact intervals for proportions, percentile bootstrap
    intervals from ``n_boot`` seeded resamples for the rest, none (NaN) for ranking metrics with
    fewer than :data:`MIN_CLASS_COUNT` units of a class (see the module docstring)."""
    point = compute_metrics(task, y, p, threshold, labels)
    extra = point_rows(task, y, p, threshold)
    dist = bootstrap(
        lambda w: metric_rows(task, y, p, w, threshold),
        len(y),
        groups=groups,
        n_boot=n_boot,
        seed=seed,
    )
    values = {}
    for k in dist:
        v = point.get(k, extra.get(k))
        values[k] = v if isinstance(v, float) else extra[k]
    return finish_intervals(task, y, p, threshold, values, dist, groups=groups, level=level)


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
