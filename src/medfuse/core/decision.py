"""Probabilities from logits and decisions from probabilities: the one implementation that
training, evaluation and every predictor use (numpy only)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from medfuse.core.errors import DataError

#: the metrics every summary table shows, in order
SUMMARY_KEYS = (
    "auroc",
    "auprc",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "f1",
    "ece",
    "brier",
)


def probabilities(task: str, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Binary: (N,) P(positive); multiclass: (N, K) softmax; multilabel: (N, K) sigmoids."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if task == "multiclass":
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    p = 1.0 / (1.0 + np.exp(-z))
    return p[:, 0] if task == "binary" and p.ndim == 2 else p


def nonfinite_rows(p: np.ndarray) -> np.ndarray:
    """Indices of rows whose probability (or any of its K probabilities) is NaN or infinite."""
    p = np.asarray(p, dtype=np.float64)
    bad = ~np.isfinite(p)
    return np.flatnonzero(bad if bad.ndim == 1 else bad.reshape(len(p), -1).any(axis=1))


NONFINITE = (
    "the model produced a non-finite probability (NaN or infinite), so no label is given; the "
    "input is probably far outside what the model was trained on (values, scale)"
)


def decide(
    task: str, p: np.ndarray, labels: list[str], threshold: float, *, nonfinite: str = "error"
) -> list[Any]:
    """Labels from probabilities: threshold (binary, multilabel) or argmax (multiclass).

    A non-finite probability never becomes a label: it is a ``DataError`` naming the rows, or,
    with ``nonfinite="none"``, ``None`` for those rows (the caller flags them)."""
    p = np.asarray(p, dtype=np.float64)
    bad = nonfinite_rows(p)
    if len(bad) and nonfinite != "none":
        rows = ", ".join(map(str, bad[:10].tolist())) + (" ..." if len(bad) > 10 else "")
        raise DataError(f"rows {rows}: {NONFINITE}")
    skip = set(bad.tolist())
    if task == "binary":
        return [None if i in skip else labels[int(v >= threshold)] for i, v in enumerate(p)]
    if task == "multiclass":
        return [None if i in skip else labels[int(row.argmax())] for i, row in enumerate(p)]
    return [
        None if i in skip else [labels[j] for j in np.flatnonzero(row >= threshold)]
        for i, row in enumerate(p)
    ]


def reference_decisions(
    task: str, logits: np.ndarray, labels: list[str], threshold: float, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """The stored outputs of a package's decision path on its verification logits
    (``verification.npz``: ``probabilities`` and ``decisions``, a multilabel row as JSON), so that
    ``medfuse verify`` can recompute them from ``medfuse.json`` and refuse any edit of labels,
    threshold or temperature that changes them."""

    p = probabilities(task, np.asarray(logits), temperature)
    d = decide(task, p, list(labels), threshold)
    rows = [json.dumps(x) if isinstance(x, list) else str(x) for x in d]
    return {"probabilities": np.asarray(p, np.float64), "decisions": np.asarray(rows, dtype=str)}
