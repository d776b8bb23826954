"""The clinical evaluation of a package: every metric with a bootstrap CI, the operating point,
calibration, subgroups and per-modality ablations, on one split of the package's own data.

``clinical_evaluation`` returns an :class:`Evaluation`: ``summary`` is JSON (what ``medfuse
evaluate --json`` prints and the HTML report renders), the rest keeps the arrays the plots need.
Probabilities are the package's calibrated ones (its temperature), compared with its stored
threshold, exactly as ``medfuse predict`` decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import SpecError, not_allowed
from medfuse.data import DataBundle, Split
from medfuse.inference.helpers import package_data, to_tensors
from medfuse.inference.predictor import Predictor, load
from medfuse.report import calibration as cal
from medfuse.report.ci import (
    LEVEL,
    RESAMPLES,
    bootstrap,
    curve_bands,
    difference_interval,
    metric_intervals,
    ranking_metrics,
    resampling_unit,
)
from medfuse.report.subgroups import auto_column, subgroup_metrics, subgroup_values
from medfuse.training.metrics import (
    choose_threshold,
    compute_metrics,
    paired_subsets,
    probabilities,
    threshold_caution,
)
from medfuse.training.pipeline import SplitScores, score_split

THRESHOLD_METHODS = ("youden", "sensitivity", "specificity", "fixed")


@dataclass
class Predictions:
    """One split scored by a package. ``p`` is calibrated (the package's temperature)."""

    split: str
    y: np.ndarray
    logits: np.ndarray
    p: np.ndarray
    meta: pd.DataFrame
    masks: dict[str, np.ndarray]
    #: calibrated probabilities with each modality removed (inputs zeroed, mask 0)
    without: dict[str, np.ndarray] = field(default_factory=dict)
    #: each branch's auxiliary head (uncalibrated) and where that modality is present
    branches: dict[str, np.ndarray] = field(default_factory=dict)
    branch_present: dict[str, np.ndarray] = field(default_factory=dict)
    #: the logits these came from (``medfuse evaluate``'s table is computed from them too)
    scores: SplitScores | None = None

    def __len__(self) -> int:
        return len(self.y)


def predict_split(
    pred: Predictor, split: Split, name: str, *, per_modality: bool = True
) -> Predictions:
    """Score a split once with the package (:func:`~medfuse.training.pipeline.score_split`):
    fused; with ``per_modality``, each branch alone and each modality removed."""
    task, temp = pred.task, pred.temperature
    t = to_tensors(split, pred.meta["preprocessing"])
    s = score_split(pred.model, pred.spec, t, pred.device, branches=per_modality)
    out = Predictions(
        name,
        s.y,
        s.logits,
        probabilities(task, s.logits, temp),
        split.meta,
        dict(s.masks),
        scores=s,
    )
    out.without = {m: probabilities(task, lg, temp) for m, lg in s.without.items()}
    for m, lg in (s.branches or {}).items():
        out.branches[m] = probabilities(task, lg)
        out.branch_present[m] = s.masks[m] > 0
    return out


@dataclass
class Evaluation:
    """What ``clinical_evaluation`` computed: JSON ``summary`` plus arrays for plots."""

    summary: dict[str, Any]
    predictions: Predictions
    val: Predictions | None
    predictor: Predictor
    bundle: DataBundle
    #: patient ids of the test split when the bootstrap resamples patients, else None
    groups: np.ndarray | None = None
    bands: dict[str, Any] = field(default_factory=dict)
    subgroup_values: np.ndarray | None = None

    @property
    def auroc(self) -> dict[str, float]:
        return self.summary["metrics"]["auroc"]


def operating_point(
    pred: Predictor,
    val: Predictions | None,
    method: str | None,
    target: float | None,
    value: float | None = None,
) -> dict[str, Any]:
    """The package's stored threshold, or one re-chosen on validation (not stored)."""
    stored = dict(pred.meta.get("threshold") or {"method": "fixed", "value": 0.5})
    if method is None:
        return {**stored, "value": pred.threshold, "source": "package"}
    if pred.task != "binary":
        raise SpecError(
            "threshold.method", f"operating points are chosen for binary tasks; this is {pred.task}"
        )
    if method not in THRESHOLD_METHODS:
        raise SpecError(
            "threshold.method", not_allowed("threshold method", method, THRESHOLD_METHODS)
        )
    if method in ("sensitivity", "specificity") and target is None:
        raise SpecError("threshold.target", f"method {method!r} needs --target in (0, 1]")
    if target is not None and not 0 < target <= 1:
        raise SpecError("threshold.target", f"must be in (0, 1]; got {target}")
    if val is None:
        raise SpecError("threshold.method", "re-choosing a threshold needs a validation split")
    v = choose_threshold(val.y, val.p, method, target, value)
    caution = threshold_caution(val.y, val.p, method)
    return {
        **({"caution": caution} if caution else {}),
        "method": method,
        "target": target,
        "value": v,
        "chosen_on": "val",
        "source": "re-chosen on val for this evaluation (not stored; `medfuse calibrate "
        "--threshold-method` stores one)",
    }


SUMMARY = (
    "auroc",
    "auprc",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "kappa",
    "ece",
    "brier",
)


def _modality_rows(
    task: str,
    pr: Predictions,
    thr: float,
    full: dict[str, Any],
    *,
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    keys = ("auroc", "auprc", "sensitivity", "specificity", "brier")
    rows: dict[str, Any] = {"full model": {k: full[k] for k in keys if k in full}}
    deltas: dict[str, Any] = {}
    for m, p in pr.without.items():
        iv = metric_intervals(
            task, pr.y, p, thr, groups=groups, n_boot=n_boot, seed=seed, level=level
        )
        rows[f"without {m}"] = {k: iv[k] for k in keys if k in iv}
        if task == "binary":
            # paired: the same resamples score both, so the drop has its own interval
            def diff(w: np.ndarray, p: np.ndarray = p) -> dict[str, np.ndarray]:
                a = ranking_metrics(pr.y, pr.p, w)["auroc"]
                b = ranking_metrics(pr.y, p, w)["auroc"]
                return {"d": a - b}

            d = bootstrap(diff, len(pr.y), groups=groups, n_boot=n_boot, seed=seed)["d"]
            drop = full["auroc"]["value"] - iv["auroc"]["value"]
            deltas[m] = difference_interval(
                task, "auroc", pr.y, drop, d, groups=groups, level=level
            )
    # the samples with every modality vs those missing one, at the package's operating point
    names = {"paired": "fully paired", "partial": "partial (a modality missing)"}
    for key, sel in paired_subsets(list(pr.masks.values())):
        rows[names[key]] = {"n": int(sel.sum())}
        if sel.sum() >= 2:  # an interval needs a resample of more than one
            g = None if groups is None else np.asarray(groups)[sel]
            iv = metric_intervals(
                task, pr.y[sel], pr.p[sel], thr, groups=g, n_boot=n_boot, seed=seed, level=level
            )
            rows[names[key]].update({k: iv[k] for k in keys if k in iv})
    for m, p in pr.branches.items():
        sel = pr.branch_present[m]
        if sel.sum() < 2:
            continue
        g = None if groups is None else np.asarray(groups)[sel]
        iv = metric_intervals(
            task, pr.y[sel], p[sel], 0.5, groups=g, n_boot=n_boot, seed=seed, level=level
        )
        rows[f"{m} only (branch head)"] = {k: iv[k] for k in ("auroc", "auprc", "brier") if k in iv}
    return {
        "rows": rows,
        "auroc_drop_without": deltas,
        "note": "'without m': the fused model with modality m absent (inputs zeroed, mask 0). "
        "'fully paired' / 'partial': the fused model on the samples with every modality / with "
        "one missing (when some are). "
        "'m only': the branch's auxiliary head alone, uncalibrated (threshold-free metrics).",
    }


def check_options(
    n_boot: int,
    threshold_method: str | None = None,
    target: float | None = None,
    threshold_value: float | None = None,
    level: float = LEVEL,
) -> None:
    """The evaluation options, checked before any work (a SpecError naming the option)."""
    if n_boot < 1:
        raise SpecError("", f"--bootstrap must be >= 1; got {n_boot}")
    if not 0 < level < 1:
        raise SpecError("", f"the confidence level must be in (0, 1); got {level}")
    if threshold_method in ("sensitivity", "specificity") and target is None:
        raise SpecError("threshold.target", f"method {threshold_method!r} needs --target in (0, 1]")
    if target is not None and not 0 < target <= 1:
        raise SpecError("threshold.target", f"must be in (0, 1]; got {target}")
    if threshold_value is not None and not 0 <= threshold_value <= 1:
        raise SpecError("threshold.value", f"must be in [0, 1]; got {threshold_value}")


def clinical_evaluation(
    package: str | Path | Predictor,
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    device: str = "cpu",
    n_boot: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    subgroup: str | None = "auto",
    threshold_method: str | None = None,
    target: float | None = None,
    threshold_value: float | None = None,
    per_modality: bool = True,
    curves: bool = False,
    data: str | Path | None = None,
) -> Evaluation:
    """Evaluate a package on ``split`` of its data with CIs (``medfuse.report.ci``: exact for
    proportions, percentile bootstrap otherwise, none from too few of a class).

    ``subgroup``: a metadata or tabular column, ``"auto"`` (a sensible one if the data has one),
    or None. ``threshold_method``: re-choose the operating point on validation for this
    evaluation (binary only); default is the package's stored threshold.
    """
    check_options(n_boot, threshold_method, target, threshold_value, level)
    pred = (
        package if isinstance(package, Predictor) else load(package, device=device, deployed=True)
    )
    task = pred.task
    bundle = package_data(pred.spec, pred.meta, data_dir, data=data, split=split)
    if threshold_method is not None and "val" in (bundle.info.get("empty_splits") or []):
        raise SpecError(
            "--threshold-method",
            f"re-chooses the operating point on the val split, and {data or 'the data'} has no "
            "val rows; leave --threshold-method out to apply the package's stored threshold, or "
            "mark the rows to choose it on with 'val' in the split column",
        )
    data = bundle.split(split)
    pr = predict_split(pred, data, split, per_modality=per_modality)
    val = pr if split == "val" else predict_split(pred, bundle.val, "val", per_modality=False)
    thr = operating_point(pred, val, threshold_method, target, threshold_value)
    groups, unit, n_units = resampling_unit(data.meta, len(pr))
    common = {"groups": groups, "n_boot": n_boot, "seed": seed, "level": level}
    labels = pred.labels
    iv = metric_intervals(task, pr.y, pr.p, thr["value"], labels=labels, **common)
    point = compute_metrics(task, pr.y, pr.p, thr["value"], labels)
    summary: dict[str, Any] = {
        "package": {
            "name": pred.meta.get("name"),
            "path": str(pred.package.path),
            "task": task,
            "labels": labels,
            "model": pred.scored,
        },
        "split": split,
        "n": len(pr),
        "bootstrap": {
            "resamples": n_boot,
            "seed": seed,
            "level": level,
            # proportions get exact intervals from their counts, each interval names its method
            "method": "percentile; exact (Clopper-Pearson) for proportions",
            "unit": unit,
            "units": n_units,
        },
        "threshold": thr,
        "metrics": {k: iv[k] for k in SUMMARY if k in iv},
        "confusion_matrix": point.get("confusion_matrix"),
    }
    if task == "binary":
        summary["prevalence"] = float(np.mean(pr.y))
    for k in ("per_class", "per_label"):
        if k in point:
            summary[k] = point[k]
    summary["calibration"] = _calibration(pred, pr, val)
    if per_modality and (pr.without or pr.branches):
        summary["per_modality"] = _modality_rows(
            task, pr, thr["value"], summary["metrics"], **common
        )
    ev = Evaluation(summary, pr, val, pred, bundle, groups)
    summary["subgroups"] = _subgroups(ev, data, subgroup, thr["value"], common)
    if curves:
        ev.bands = _bands(task, pr, groups, n_boot, seed, level, labels)
    return ev


def _calibration(pred: Predictor, pr: Predictions, val: Predictions | None) -> dict[str, Any]:
    task = pred.task
    stored = dict(pred.meta.get("calibration") or {})
    temp = pred.temperature
    out: dict[str, Any] = {
        "temperature": temp,
        "stored": stored.get("method", "none") != "none" and temp != 1.0,
        "binning": cal.BINNING,
        "ece": cal.calibration_error(task, pr.y, pr.p),
        "brier": cal.brier(task, pr.y, pr.p),
        "reliability": cal.reliability(task, pr.y, pr.p),
    }
    if not out["stored"] and val is not None and len(val.y):
        # what temperature scaling fit on validation would do (not applied: `medfuse calibrate`)
        temp = cal.fit_temperature(task, val.logits, val.y)
        out["suggested_temperature"] = temp
    out["before_after_temperature"] = temp
    out["before_after"] = {}
    for s in (val, pr) if val is not pr else (pr,):
        if s is None or not len(s.y):
            continue
        out["before_after"][s.split] = {
            **cal.calibration_summary(task, s.logits, s.y, temp),
            "before": cal.reliability(task, s.y, probabilities(task, s.logits, 1.0)),
            "after": cal.reliability(task, s.y, probabilities(task, s.logits, temp)),
        }
    for k in ("fitted_on", "ece_before", "ece_after", "fitted"):
        if k in stored:
            out[f"stored_{k}"] = stored[k]
    return out


def _subgroups(
    ev: Evaluation, data: Split, column: str | None, thr: float, common: dict[str, Any]
) -> dict[str, Any]:
    spec = ev.predictor.spec
    tab = {n: list(m.columns or []) for n, m in spec.modalities.items() if m.kind == "tabular"}
    if column is None:
        return {"column": None, "note": "subgroup analysis not requested"}
    if column == "auto":
        column = auto_column(data.meta, tab)  # metadata, else a tabular input (sex, site, ...)
        if column is None:
            name = ev.predictor.meta.get("data", {}).get("name") or spec.data.source
            return {
                "column": None,
                "note": f"{name}: neither the metadata nor the tabular inputs have a subgroup "
                "column (sex, age band, site, ...); "
                "MedMNIST, for one, provides none. Name a column with --subgroup "
                "(a tabular input such as 'age' also works).",
            }
    stats = ev.predictor.meta.get("preprocessing") or {}
    cats = {m: (stats.get(m) or {}).get("categories") or {} for m in tab}
    values, how = subgroup_values(column, data.meta, data.arrays, tab, cats)
    ev.subgroup_values = values
    res = subgroup_metrics(
        ev.predictor.task,
        ev.predictions.y,
        ev.predictions.p,
        values,
        thr,
        labels=list(ev.predictor.labels),
        **common,
    )
    return {"column": column, "source": how, **res}


def _bands(
    task: str,
    pr: Predictions,
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
    level: float,
    labels: list[str],
) -> dict[str, Any]:
    kw = {"groups": groups, "n_boot": n_boot, "seed": seed, "level": level}
    if task == "binary":
        return {labels[1] if len(labels) > 1 else "positive": curve_bands(pr.y, pr.p, **kw)}
    y = np.eye(pr.p.shape[1])[pr.y.astype(int)] if task == "multiclass" else pr.y
    out = {}
    for j in range(min(pr.p.shape[1], 10)):
        if 0 < y[:, j].sum() < len(y):
            out[labels[j]] = curve_bands(y[:, j], pr.p[:, j], **kw)
    return out


def jsonable(o: Any) -> Any:
    """Plain JSON types (NaN becomes None) for ``json.dumps``."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, np.generic):
        return jsonable(o.item())
    if isinstance(o, float):
        return None if math.isnan(o) or math.isinf(o) else o
    if isinstance(o, Path):
        return str(o)
    return o
