"""Clinical metrics (scikit-learn for the standard ones) and the decision threshold."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

from medfuse.core.decision import SUMMARY_KEYS, probabilities  # noqa: F401  (one implementation, torch-free)
from medfuse.core.errors import DataError

ECE_BINS = 10


def ece(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of P(y=1), equal-width bins over [0, 1]."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(total)


def top_label_ece(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    return ece(correct, conf, bins)


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 on (validation) data.

    The cut is placed midway between the last score called positive and the next lower score
    (not on a validation score itself), and among equally good cuts the middle one is taken:
    on a small validation set this generalises better than the first maximiser.
    """
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, float).ravel()
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max()))
    k = int(best[len(best) // 2])
    upper = min(float(thr[k]), 1.0)
    lower = float(thr[k + 1]) if k + 1 < len(thr) else 0.0
    return float(min(max((upper + lower) / 2, 0.0), 1.0))


def choose_threshold(
    y: np.ndarray,
    p: np.ndarray,
    method: str = "youden",
    target: float | None = None,
    value: float | None = None,
) -> float:
    """Operating point on validation: Youden's J, a target sensitivity/specificity, or fixed.
    A chosen one needs validation samples of both classes (:func:`check_operating_data`)."""
    if method == "fixed":
        return float(0.5 if value is None else value)
    check_operating_data(y, method)
    if method == "youden":
        return youden_threshold(y, p)
    fpr, tpr, thr = skm.roc_curve(y, p)
    thr = np.clip(thr, 0.0, 1.0)
    if method == "sensitivity":
        ok = np.flatnonzero(tpr >= float(target))  # highest threshold reaching the target
        return float(thr[ok[0]]) if len(ok) else float(thr[-1])
    ok = np.flatnonzero(1 - fpr >= float(target))  # specificity: lowest threshold keeping it
    return float(thr[ok[-1]]) if len(ok) else float(thr[0])


#: an operating point chosen on fewer validation samples of a class than this is cautioned
MIN_OPERATING_CLASS = 5


def threshold_caution(y: np.ndarray, p: np.ndarray, method: str) -> str | None:
    """Why an operating point chosen on validation (``method`` not ``fixed``) deserves little
    trust, or ``None``: fewer than :data:`MIN_OPERATING_CLASS` samples of a class (another
    split would move it), or a model that does not separate the validation classes (AUROC at
    most 0.5: every cut is as good as another, and the one taken is arbitrary; Youden's J put it
    where every test case was called positive)."""
    if method == "fixed":
        return None
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, float).ravel()
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    why = []
    if min(pos, neg) < MIN_OPERATING_CLASS:
        why.append(
            f"it was chosen on {pos} positive and {neg} negative validation samples, few enough "
            "that another split would move it"
        )
    if pos and neg:
        auroc = _safe(skm.roc_auc_score, y, p)
        if auroc <= 0.5:
            why.append(
                f"the model does not separate the validation classes (AUROC {auroc:.3f}): every "
                "threshold is as good as another on them, so this one is arbitrary"
            )
    if not why:
        return None
    return (
        "; ".join(why)
        + ": check it on more data (medfuse evaluate --threshold-method on a larger val split, "
        "or set threshold: {method: fixed, value: ...})"
    )


def check_operating_data(y: np.ndarray, method: str, labels: list[str] | None = None) -> None:
    """Refuse to choose an operating point (``method``: youden, sensitivity, specificity) on
    validation samples of one class: any threshold would be as good on them, and the one
    recorded as chosen would be arbitrary (Youden's fell back to 0.5, a target sensitivity to a
    threshold that calls every case positive)."""
    classes = np.unique(np.asarray(y).astype(int).ravel())
    if len(classes) >= 2:
        return
    only = (
        "no" if not len(classes) else repr(labels[classes[0]]) if labels else f"class {classes[0]}"
    )
    raise DataError(
        f"the operating point (threshold method {method!r}) is chosen on the validation split, "
        f"which holds {only} samples only ({len(np.ravel(y))} rows): it needs both classes. Give "
        "the validation split rows of both classes, or set the threshold yourself "
        "(threshold: {method: fixed, value: 0.5})"
    )


def _safe(fn, *a, **k) -> float:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = float(fn(*a, **k))
        return v if np.isfinite(v) else float("nan")
    except ValueError:
        return float("nan")


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, float).ravel()
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "auroc": _safe(skm.roc_auc_score, y, p),
        # undefined without a positive (scikit-learn warns and gives 0.0)
        "auprc": _safe(skm.average_precision_score, y, p) if y.any() else float("nan"),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": _safe(skm.balanced_accuracy_score, y, pred),
        "sensitivity": float(sens),
        "specificity": float(spec),
        "ppv": float(tp / (tp + fp)) if tp + fp else float("nan"),
        "npv": float(tn / (tn + fn)) if tn + fn else float("nan"),
        "f1": _safe(skm.f1_score, y, pred, zero_division=0),
        "ece": ece(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "threshold": float(threshold),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "n": len(y),
    }


def multiclass_metrics(
    y: np.ndarray, p: np.ndarray, labels: list[str] | None = None
) -> dict[str, Any]:
    y = np.asarray(y).astype(int).ravel()
    k = p.shape[1]
    pred = p.argmax(axis=1)
    present = np.unique(y)
    cm = skm.confusion_matrix(y, pred, labels=list(range(k)))
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.diag(cm) / cm.sum(axis=1)
        ppv = np.diag(cm) / cm.sum(axis=0)
        spec = np.array(
            [
                (cm.sum() - cm[i].sum() - cm[:, i].sum() + cm[i, i]) / (cm.sum() - cm[i].sum())
                for i in range(k)
            ]
        )
    onehot = np.eye(k)[y]
    # macro one-vs-rest over the classes present: scikit-learn's multi_class="ovr" when all are,
    # and defined with two classes too (where that raises)
    auroc = float(np.nanmean([_safe(skm.roc_auc_score, onehot[:, i], p[:, i]) for i in present]))
    names = labels or [str(i) for i in range(k)]
    return {
        "auroc": auroc,
        "auprc": float(
            np.nanmean([_safe(skm.average_precision_score, onehot[:, i], p[:, i]) for i in present])
        ),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(np.nanmean(sens[present])),
        "sensitivity": float(np.nanmean(sens[present])),
        "specificity": float(np.nanmean(spec[present])),
        "f1": _safe(skm.f1_score, y, pred, average="macro", labels=list(present), zero_division=0),
        "kappa": _safe(skm.cohen_kappa_score, y, pred),
        "ece": top_label_ece(y, p),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "per_class": {
            names[i]: {
                "sensitivity": float(sens[i]),
                "ppv": float(ppv[i]),
                "support": int(cm[i].sum()),
            }
            for i in range(k)
        },
        "confusion_matrix": cm.tolist(),
        "n": len(y),
        **_absent_note(names, left_out("multiclass", y, k), cm),
    }


def left_out(task: str, y: np.ndarray, k: int) -> list[int]:
    """The classes a multiclass or multilabel split's macro means leave out: a class without a
    sample (multiclass), a label of one class only (multilabel)."""
    if task == "multilabel":
        ym = np.asarray(y).reshape(len(y), -1) > 0.5
        return [j for j in range(k) if ym[:, j].all() or not ym[:, j].any()]
    present = set(np.asarray(y).astype(int).ravel().tolist())
    return [j for j in range(k) if j not in present]


def _absent_note(names: list[str], absent: list[int], cm: np.ndarray) -> dict[str, str]:
    """A multiclass split missing a class: its macro means are over the classes it has (a
    class without a sample has no sensitivity or AUROC): ``{"macro_note": ...}``, said, never
    implied (as a multilabel label of one class). The model's calls of an absent class are
    misses of the true classes (their sensitivity counts them); the absent class's own F1, 0
    when it was called, is left out of the macro F1."""
    if not absent:
        return {}
    called = int(cm[:, absent].sum())
    calls = f"; the model called {called} sample(s) {' or '.join(names[i] for i in absent)}" + (
        " (misses of their true classes; the absent class's own F1, 0, is left out of the macro F1)"
    )
    return {
        "macro_note": (
            f"{len(absent)} of {len(names)} classes ({', '.join(names[i] for i in absent)}) have "
            f"no sample in this split: the macro AUROC, AUPRC, sensitivity, specificity, "
            f"balanced accuracy and F1 are over the other {len(names) - len(absent)}"
            + (calls if called else "")
        )
    }


#: metrics a label of one class in a split has no value for (left out of the macro means)
ONE_CLASS_UNDEFINED = ("auroc", "auprc", "f1", "balanced_accuracy", "kappa")


def multilabel_metrics(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: float | list[float] = 0.5,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    y = np.asarray(y).astype(int)
    k = y.shape[1]
    thr = np.broadcast_to(np.asarray(thresholds, float), (k,))
    per = [binary_metrics(y[:, i], p[:, i], float(thr[i])) for i in range(k)]
    names = labels or [str(i) for i in range(k)]
    one_class = left_out("multilabel", y, k)
    for i in one_class:  # F1 0, balanced accuracy and kappa of one class: not a measurement
        per[i].update({key: float("nan") for key in ONE_CLASS_UNDEFINED if key in per[i]})
    out: dict[str, Any] = {key: float(np.nanmean([m[key] for m in per])) for key in SUMMARY_KEYS}
    out["per_label"] = {
        names[i]: {key: per[i][key] for key in ("auroc", "auprc", "sensitivity", "specificity")}
        for i in range(k)
    }
    out["n"] = len(y)
    # a label with no positive (or no negative) in the split has no AUROC, AUPRC or sensitivity:
    # those macro means leave it out, accuracy and specificity do not; said, never implied
    if one_class:
        out["macro_note"] = (
            f"{len(one_class)} of {k} labels ({', '.join(names[i] for i in one_class)}) have "
            "one class only in this split: the macro AUROC, AUPRC, F1, balanced accuracy and "
            "kappa (and sensitivity or specificity, whichever has no case) are over the other "
            f"{k - len(one_class)}; accuracy and the other of sensitivity/specificity over all"
        )
    return out


def paired_subsets(masks: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The samples with every modality present and those missing one (``[("paired", sel),
    ("partial", ~sel)]``, boolean), when some miss one; ``[]`` when every sample is complete.
    Every evaluation reports the model on each (a pooled figure hides one that is poor on
    incomplete cases)."""
    paired = np.all([np.asarray(k) > 0 for k in masks], axis=0)
    return [] if paired.all() else [("paired", paired), ("partial", ~paired)]


def compute_metrics(
    task: str,
    y: np.ndarray,
    p: np.ndarray,
    threshold: float | list[float] = 0.5,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """The standard metric set for a task; names as in ``metrics.json``."""
    if task == "binary":
        return binary_metrics(y, p, float(threshold if np.isscalar(threshold) else threshold[0]))  # type: ignore[index]
    if task == "multiclass":
        return multiclass_metrics(y, p, labels)
    return multilabel_metrics(y, p, threshold, labels)
