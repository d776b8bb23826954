"""Calibration: reliability bins, ECE/Brier, and temperature scaling fit on validation.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` chosen to minimise
the validation negative log-likelihood. For a binary or multilabel model it never changes the
ranking (AUROC is unchanged; a multiclass softmax's one-vs-rest AUROC does change, and the record
says by how much on validation) and,
because ``medfuse calibrate`` maps the stored decision threshold through the same transform,
it never changes a decision either unless a new operating point is asked for; it only makes the
probabilities honest. ECE uses ``ECE_BINS`` (10) equal-width bins over [0, 1] of P(positive)
(binary, per label for multilabel) or of the top-label confidence (multiclass).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from medfuse.core.card import model_card
from medfuse.core.errors import SpecError
from medfuse.core.package import package_out, read_meta, update_package
from medfuse.inference.helpers import package_data
from medfuse.inference.predictor import load
from medfuse.training.metrics import (
    ECE_BINS,
    choose_threshold,
    compute_metrics,
    ece,
    probabilities,
    threshold_caution,
    top_label_ece,
)

#: where T is searched (log-uniform bounds)
T_BOUNDS = (0.05, 20.0)
BINNING = f"{ECE_BINS} equal-width bins over [0, 1]"

log = logging.getLogger("medfuse.report")


def nll(task: str, logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under ``logits / temperature``."""
    z = np.asarray(logits, np.float64) / float(temperature)
    if task == "multiclass":
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(z)), np.asarray(y).astype(int)].mean())
    z = z[:, 0] if task == "binary" and z.ndim == 2 else z
    yy = np.asarray(y, np.float64).reshape(z.shape)
    # log(1 + exp(-|z|)) form: stable binary cross-entropy with logits
    loss = np.maximum(z, 0) - z * yy + np.log1p(np.exp(-np.abs(z)))
    return float(loss.mean() if task == "binary" else loss.sum(axis=1).mean())


def fit_temperature(task: str, logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising validation NLL (bounded 1-D search over log T)."""
    if len(y) == 0:
        raise ValueError("cannot fit a temperature on an empty split")
    res = minimize_scalar(
        lambda lt: nll(task, logits, y, math.exp(lt)),
        bounds=(math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    t = float(math.exp(res.x))
    # never worse than leaving it alone
    return t if nll(task, logits, y, t) <= nll(task, logits, y, 1.0) else 1.0


def temperature_bound(t: float) -> str:
    """What a fitted temperature at the search's bound (:data:`T_BOUNDS`) means, ``""`` inside:
    at the upper bound the scores barely predict the labels (every probability is pulled to
    chance: data on another scale, other labels?); at the lower, the likelihood wanted the
    scores sharpened further still: they are small next to what separates the validation
    samples (an under-trained model's near-zero logits, or few samples), so the calibrated
    probabilities are only as sharp as the bound allows and rest on few samples' evidence."""
    lo, hi = T_BOUNDS
    if t >= hi * 0.99:
        return (
            f"the fitted temperature is the search's upper bound ({hi:g}): the model's scores "
            "barely predict these labels, so the calibrated probabilities sit near chance; "
            "check the data (medfuse evaluate: another scale, other labels?) before using them"
        )
    if t <= lo * 1.01:
        return (
            f"the fitted temperature is the search's lower bound ({lo:g}): the fit wanted the "
            "model's scores sharpened further still (its scores are small next to what "
            "separates the validation samples: an under-trained model, or few validation "
            "samples), so the calibrated probabilities are as sharp as the bound allows; "
            "check medfuse evaluate's validation numbers before trusting them"
        )
    return ""


def calibration_error(task: str, y: np.ndarray, p: np.ndarray) -> float:
    """ECE with ``BINNING`` (top-label for multiclass, mean over labels for multilabel)."""
    if task == "multiclass":
        return top_label_ece(np.asarray(y).astype(int), p)
    if task == "multilabel":
        return float(np.mean([ece(y[:, j], p[:, j]) for j in range(y.shape[1])]))
    return ece(y, p)


def brier(task: str, y: np.ndarray, p: np.ndarray) -> float:
    if task == "multiclass":
        onehot = np.eye(p.shape[1])[np.asarray(y).astype(int)]
        return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


def reliability(task: str, y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Per-bin count, mean predicted probability and observed frequency (the diagram's points)."""
    if task == "multiclass":
        conf, hit = p.max(axis=1), (p.argmax(axis=1) == np.asarray(y).astype(int)).astype(float)
    else:
        conf, hit = np.asarray(p, float).ravel(), np.asarray(y, float).ravel()
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, conf, minlength=bins) / count
        freq = np.bincount(idx, hit, minlength=bins) / count
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": mean_p.tolist(),
        "observed": freq.tolist(),
        "ece": calibration_error(task, y, p),
        "binning": BINNING,
        "x": "top-label confidence" if task == "multiclass" else "predicted probability",
    }


def calibration_summary(
    task: str, logits: np.ndarray, y: np.ndarray, temperature: float
) -> dict[str, Any]:
    """ECE, Brier and NLL before (T=1) and after (``temperature``) on one split."""
    before, after = probabilities(task, logits, 1.0), probabilities(task, logits, temperature)
    return {
        "ece_before": calibration_error(task, y, before),
        "ece_after": calibration_error(task, y, after),
        "brier_before": brier(task, y, before),
        "brier_after": brier(task, y, after),
        "nll_before": nll(task, logits, y, 1.0),
        "nll_after": nll(task, logits, y, temperature),
        "n": len(y),
    }


def map_threshold(value: float, t_old: float, t_new: float) -> float:
    """The probability threshold under ``t_new`` that makes exactly the decisions ``value`` made
    under ``t_old`` (thresholds live on the calibrated probability scale)."""
    v = min(max(float(value), 1e-12), 1 - 1e-12)
    z = math.log(v / (1 - v)) * t_old
    return float(1.0 / (1.0 + math.exp(-z / t_new)))


def calibrate_package(
    package: str | Path,
    *,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    threshold_method: str | None = None,
    target: float | None = None,
    value: float | None = None,
    command: str | None = None,
    data: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit a temperature on the validation split and store it (and the operating point) in the
    package (atomically; ``out`` writes a calibrated copy instead). Returns the record stored in
    ``meta['calibration']`` plus the threshold and the package path."""
    if out is not None:  # before any work: a file in the way, a folder that is not writable
        package_out(out, overwrite=overwrite)
    if value is not None and not 0 <= value <= 1:
        raise SpecError("threshold.value", f"must be in [0, 1]; got {value}")
    pred = load(package, device=device, deployed=True)  # an INT8 package: its INT8 model
    task = pred.task
    if threshold_method is not None and task != "binary":
        raise SpecError(
            "threshold.method",
            f"operating points are chosen for binary tasks; this package is {task}",
        )
    if threshold_method in ("sensitivity", "specificity") and target is None:
        raise SpecError("threshold.target", f"--threshold-method {threshold_method} needs --target")
    if target is not None and not 0 < target <= 1:
        raise SpecError("threshold.target", f"must be in (0, 1]; got {target}")
    bundle = package_data(pred.spec, pred.meta, data_dir, data=data, split="val")
    val_logits = pred.logits(bundle.val)
    t_old = pred.temperature
    t_new = fit_temperature(task, val_logits, bundle.val.y)
    record: dict[str, Any] = {
        "method": "temperature",
        "temperature": t_new,
        "fitted_on": "val",
        "objective": "negative log-likelihood",
        "binning": BINNING,
        **calibration_summary(task, val_logits, bundle.val.y, t_new),
        "previous_temperature": t_old,
        "model": pred.scored,  # the logits it was fitted on: the model the package deploys
    }
    bound = temperature_bound(t_new)
    if bound:
        record["note"] = bound
        log.warning("%s: %s", package, bound)
    if task == "multiclass":  # a softmax temperature reorders each class's one-vs-rest scores
        labels = pred.labels
        before = compute_metrics(  # at T = 1, as the record's other *_before
            task, bundle.val.y, probabilities(task, val_logits, 1.0), 0.5, labels
        )
        after = compute_metrics(
            task, bundle.val.y, probabilities(task, val_logits, t_new), 0.5, labels
        )
        record["auroc_change"] = {
            "val_before": before.get("auroc"),
            "val_after": after.get("auroc"),
        }
        change = (
            f"a multiclass temperature changes each class's one-vs-rest ranking: validation "
            f"AUROC {before.get('auroc', float('nan')):.4f} -> {after.get('auroc', float('nan')):.4f} "
            "(decisions, by argmax, do not change)"
        )
        log.warning("%s: %s", package, change)
        record["note"] = "; ".join(filter(None, [record.get("note"), change]))
    test_logits = pred.logits(bundle.test) if bundle.test is not None else None
    if bundle.test is not None:
        test = calibration_summary(task, test_logits, bundle.test.y, t_new)
        record.update({f"test_{k}": v for k, v in test.items() if k != "n"})
    record["fitted"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if command:
        record["command"] = command
    thr = dict(pred.meta.get("threshold") or {})
    if task != "multiclass":
        old = float(thr.get("value", 0.5))
        if threshold_method is None:
            thr["value"] = map_threshold(old, t_old, t_new)
            thr["note"] = "mapped through the temperature: decisions unchanged"
        else:
            p_val = probabilities(task, val_logits, t_new)
            thr = {
                "method": threshold_method,
                "target": target,
                "value": choose_threshold(bundle.val.y, p_val, threshold_method, target, value),
                "chosen_on": "val",
                "calibrated": True,
            }
            if caution := threshold_caution(bundle.val.y, p_val, threshold_method):
                log.warning("threshold (%s): %s", threshold_method, caution)
                thr["caution"] = caution
        thr["value_before_calibration"] = old
    meta = read_meta(package)
    meta_new = {**meta, "calibration": record, "threshold": thr}
    mfile = Path(package) / "metrics.json"
    metrics = json.loads(mfile.read_text()) if mfile.exists() else {}
    # the card's table as the package now decides: at the new temperature and threshold (the
    # training record, metrics.json, keeps what training measured)
    labels = list(pred.meta["labels"])
    for name, lg, split in (("val", val_logits, bundle.val), ("test", test_logits, bundle.test)):
        if lg is not None and split is not None:
            p_now = probabilities(task, lg, t_new)
            at = float(thr["value"])  # read_meta checked it is there
            metrics = {**metrics, name: compute_metrics(task, split.y, p_now, at, labels)}
    path = update_package(
        package,
        out,
        add={"README.md": model_card(meta_new, metrics)},
        meta_updates={"calibration": record, "threshold": thr},
    )
    return {"package": str(path), "calibration": record, "threshold": thr}
