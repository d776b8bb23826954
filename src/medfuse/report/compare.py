"""Compare packages on the same test set: metrics with CIs and a paired test of the AUROC gap.

Two tests, both paired (the same patients score every model):
  - DeLong et al. (1988), with the fast midrank algorithm of Sun & Xu (2014), for binary tasks
    whose samples are independent (one sample per patient);
  - a paired bootstrap: the same resamples (patients when ``patient_id`` exists) score both
    models; the two-sided p-value is twice the smaller tail of the difference around 0.
The decision (``significant``) uses DeLong when it applies, else the paired bootstrap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from medfuse.core.errors import DataError, PackageError, SpecError, not_allowed
from medfuse.inference.helpers import package_data
from medfuse.inference.predictor import load
from medfuse.report.ci import (
    LEVEL,
    RESAMPLES,
    bootstrap,
    difference_interval,
    metric_intervals,
    metric_rows,
    ranking_metrics,
    resampling_unit,
    too_few,
)
from medfuse.report.clinical import SUMMARY

ALPHA = 0.05


def _structural(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs ``(k,)`` and DeLong's structural components ``V10 (k, m)``, ``V01 (k, n)``."""
    y = np.asarray(y).astype(bool).ravel()
    s = np.atleast_2d(np.asarray(scores, float))
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tx = np.apply_along_axis(stats.rankdata, 1, pos)
    ty = np.apply_along_axis(stats.rankdata, 1, neg)
    tz = np.apply_along_axis(stats.rankdata, 1, np.concatenate([pos, neg], axis=1))
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n  # per positive: fraction of negatives ranked below
    v01 = 1 - (tz[:, m:] - ty) / m  # per negative: fraction of positives ranked above
    return aucs, v10, v01


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``scores`` (k models x N samples) and their DeLong covariance ``(k, k)``."""
    y = np.asarray(y).astype(bool).ravel()
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise DataError(f"DeLong needs >= 2 positives and negatives; got {m} and {n}")
    aucs, v10, v01 = _structural(y, scores)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(
    y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, *, groups: Any = None
) -> dict[str, Any]:
    """Two-sided DeLong test of AUROC(a) == AUROC(b) on the same samples; no test (interval and
    p NaN, ``note`` says why) from fewer than 5 of a class (``too_few``, as every interval):
    its variance from a handful of one class can be 0 and call any difference significant."""
    why = too_few("binary", y, groups)
    if why:
        ones = np.ones((1, len(y)))
        a, b = (float(ranking_metrics(y, q, ones)["auroc"][0]) for q in (p_a, p_b))
        out: dict[str, Any] = {"auroc_a": a, "auroc_b": b, "diff": a - b}
        return {**out, **dict.fromkeys(("se", "lo", "hi", "z", "p"), float("nan")), "note": why}
    aucs, cov = delong_covariance(y, np.stack([p_a, p_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        z, p = 0.0, 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        z = diff / np.sqrt(var)
        p = float(2 * stats.norm.sf(abs(z)))
    se = float(np.sqrt(max(var, 0.0)))
    q = stats.norm.ppf(0.5 + LEVEL / 2)
    return {
        "auroc_a": float(aucs[0]),
        "auroc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "lo": diff - q * se,
        "hi": diff + q * se,
        "z": float(z),
        "p": float(p),
    }


def delong_interval(y: np.ndarray, p: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """One AUROC with DeLong's normal-approximation interval (an analytic cross-check)."""
    aucs, cov = delong_covariance(y, p[None])
    se = float(np.sqrt(cov[0, 0]))
    q = stats.norm.ppf(0.5 + level / 2)
    return {"value": float(aucs[0]), "se": se, "lo": aucs[0] - q * se, "hi": aucs[0] + q * se}


def paired_bootstrap(
    task: str,
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    *,
    metric: str = "auroc",
    threshold_a: float = 0.5,
    threshold_b: float = 0.5,
    groups: Any = None,
    n_boot: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, float]:
    """Difference ``metric(a) - metric(b)`` with its percentile CI and a two-sided p-value."""

    def rows(w: np.ndarray) -> dict[str, np.ndarray]:
        a = metric_rows(task, y, p_a, w, threshold_a)[metric]
        b = metric_rows(task, y, p_b, w, threshold_b)[metric]
        return {"d": a - b}

    d = bootstrap(rows, len(y), groups=groups, n_boot=n_boot, seed=seed)["d"]
    ones = np.ones((1, len(y)))
    point = float(
        metric_rows(task, y, p_a, ones, threshold_a)[metric][0]
        - metric_rows(task, y, p_b, ones, threshold_b)[metric][0]
    )
    ok = d[np.isfinite(d)]
    if ok.size == 0:
        p = float("nan")
    elif np.all(ok == 0):
        p = 1.0
    else:
        p = float(min(1.0, 2 * min(np.mean(ok <= 0), np.mean(ok >= 0))))
        p = max(p, 1.0 / ok.size)  # a bootstrap cannot resolve smaller p-values
    iv = difference_interval(task, metric, y, point, d, groups=groups, level=level)
    if not np.isfinite(iv["lo"]):  # too few of a class: no interval, and no p-value either
        p = float("nan")
    return {"diff": point, **{k: v for k, v in iv.items() if k != "value"}, "p": p}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the comparisons); a NaN p-value
    (no test: too few of a class) stays NaN and is not counted in the family."""
    pv = np.asarray(pvalues, float)
    adj = np.full(len(pv), np.nan)
    valid = np.flatnonzero(np.isfinite(pv))
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(pv[valid])]):
        running = max(running, min(1.0, (m - rank) * pv[i]))
        adj[i] = running
    return adj.tolist()


def _other_inputs(a: Any, b: Any, spec_a: Any = None, spec_b: Any = None) -> str | None:
    """How two packages' reads of one split differ where it matters for a comparison, ``None``
    when they agree: a data option both specs set to other values (e.g. ``missing``), or the
    presence of a modality both read. What each model makes of the same files (its image size,
    window, tokenizer, columns; streamed or in memory) is the models' difference, compared."""
    if spec_a is not None and spec_b is not None and spec_a.data.source == spec_b.data.source:
        oa, ob = dict(spec_a.data.options), dict(spec_b.data.options)
        for k in sorted(set(oa) & set(ob)):
            if oa[k] != ob[k] and k not in READING_OPTIONS:
                return f"data option {k!r}: {oa[k]!r} vs {ob[k]!r}"
    for m in sorted(set(a.masks) & set(b.masks)):
        if not np.array_equal(np.asarray(a.masks[m]), np.asarray(b.masks[m])):
            return f"modality {m!r} present in other samples"
    return None


#: data options that say how a model reads the data, not which data it is (the columns mapped
#: to its modalities, its categories): two models may differ in them and be compared
READING_OPTIONS = ("columns", "keep_columns", "categories")


def compare_packages(
    packages: list[str | Path],
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    device: str = "cpu",
    metric: str = "auroc",
    n_boot: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    alpha: float = ALPHA,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Each package's metrics with CIs on the same split, and each package vs the first."""

    if len(packages) < 2:
        raise PackageError("compare needs at least two packages")

    if metric not in SUMMARY:
        raise SpecError("metric", not_allowed("metric", metric, SUMMARY))
    if not 0 < alpha < 1:
        raise SpecError("--alpha", f"the significance level must be in (0, 1); got {alpha}")
    if int(n_boot) < 1:
        raise SpecError("--bootstrap", f"must be >= 1; got {n_boot}")
    scored = []
    for path in packages:
        pred = load(path, device=device, deployed=True)  # an INT8 package: its INT8 model
        bundle = package_data(pred.spec, pred.meta, data_dir, data=data, split=split)
        split_data = bundle.split(split)
        p = pred.predict_proba(split_data)
        scored.append((Path(path), pred, split_data, p))
    ref_path, ref_pred, ref, _ = scored[0]
    for path, pred, data, _ in scored[1:]:
        if pred.task != ref_pred.task:
            raise PackageError(f"{path} is a {pred.task} model; {ref_path} is {ref_pred.task}")
        same = len(data.y) == len(ref.y) and np.array_equal(
            np.asarray(data.y, float), np.asarray(ref.y, float)
        )
        if same and "id" in data.meta.columns and "id" in ref.meta.columns:
            same = list(data.meta["id"]) == list(ref.meta["id"])
        if not same:
            raise DataError(
                f"{path} and {ref_path} were not scored on the same {split} set "
                f"({pred.spec.data.source} vs {ref_pred.spec.data.source}); compare needs one test "
                "set for every package (same data source and options)"
            )
        if differs := _other_inputs(data, ref, pred.spec, ref_pred.spec):
            raise DataError(
                f"{path} and {ref_path} were scored on the same {split} samples with other "
                f"inputs ({differs}): a difference between them would be the data's, not the "
                "models'. Compare packages on one data source with the same options"
            )
    task = ref_pred.task
    y = np.asarray(ref.y)
    groups, unit, n_units = resampling_unit(ref.meta, len(y))
    independent = groups is None or n_units == len(y)
    models = []
    for path, pred, _, p in scored:
        iv = metric_intervals(
            task,
            y,
            p,
            pred.threshold,
            groups=groups,
            n_boot=n_boot,
            seed=seed,
            level=level,
            labels=pred.labels,
        )
        models.append(
            {
                "name": path.name,
                "path": str(path),
                "modalities": list(pred.spec.modalities),
                "model": pred.scored,
                "threshold": pred.threshold,
                "metrics": {k: iv[k] for k in SUMMARY if k in iv},
            }
        )
    comparisons = []
    for (path, pred, _, p), model in zip(scored[1:], models[1:]):
        c: dict[str, Any] = {
            "a": model["name"],
            "a_path": str(path),
            "b": models[0]["name"],
            "b_path": str(ref_path),
            "metric": metric,
            "bootstrap": paired_bootstrap(
                task,
                y,
                p,
                scored[0][3],
                metric=metric,
                threshold_a=pred.threshold,
                threshold_b=ref_pred.threshold,
                groups=groups,
                n_boot=n_boot,
                seed=seed,
                level=level,
            ),
        }
        if task == "binary" and metric == "auroc" and independent:
            c["delong"] = delong_test(y, p, scored[0][3], groups=groups)
            c["test"], c["p"] = "DeLong", c["delong"]["p"]
        else:
            c["test"], c["p"] = "paired bootstrap", c["bootstrap"]["p"]
        c["diff"] = c["bootstrap"]["diff"]
        comparisons.append(c)
    if len(comparisons) > 1:
        for c, adj in zip(comparisons, holm([c["p"] for c in comparisons])):
            c["p_holm"] = adj
    for c in comparisons:
        c["significant"] = bool(c.get("p_holm", c["p"]) < alpha)
    return {
        "split": split,
        "n": len(y),
        "metric": metric,
        "alpha": alpha,
        "bootstrap": {
            "resamples": n_boot,
            "seed": seed,
            "level": level,
            "method": "percentile",
            "unit": unit,
        },
        "reference": models[0]["name"],
        "models": models,
        "comparisons": comparisons,
    }
