"""Probabilities from logits and decisions from probabilities: the one implementation that
training, evaluation and every predictor use (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

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


def decide(task: str, p: np.ndarray, labels: list[str], threshold: float) -> list[Any]:
    """Labels from probabilities: threshold (binary, multilabel) or argmax (multiclass)."""
    if task == "binary":
        return [labels[int(v >= threshold)] for v in p]
    if task == "multiclass":
        return [labels[int(i)] for i in p.argmax(axis=1)]
    return [[labels[j] for j in np.flatnonzero(row >= threshold)] for row in p]


def reference_decisions(
    task: str, logits: np.ndarray, labels: list[str], threshold: float, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """The stored outputs of a package's decision path on its verification logits
    (``verification.npz``: ``probabilities`` and ``decisions``, a multilabel row as JSON), so that
    ``medfuse verify`` can recompute them from ``medfuse.json`` and refuse any edit of labels,
    threshold or temperature that changes them."""
    import json

    p = probabilities(task, np.asarray(logits), temperature)
    d = decide(task, p, list(labels), threshold)
    rows = [json.dumps(x) if isinstance(x, list) else str(x) for x in d]
    return {"probabilities": np.asarray(p, np.float64), "decisions": np.asarray(rows, dtype=str)}
