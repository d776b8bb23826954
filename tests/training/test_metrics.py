"""Metric definitions against scikit-learn, and the decision threshold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from medfuse.training.metrics import (
    choose_threshold,
    compute_metrics,
    ece,
    probabilities,
    youden_threshold,
)


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1)
    m = compute_metrics("binary", y, p, 0.5)
    pred = (p >= 0.5).astype(int)
    assert np.isclose(m["auroc"], skm.roc_auc_score(y, p))
    assert np.isclose(m["auprc"], skm.average_precision_score(y, p))
    assert np.isclose(m["accuracy"], skm.accuracy_score(y, pred))
    assert np.isclose(m["balanced_accuracy"], skm.balanced_accuracy_score(y, pred))
    assert np.isclose(m["sensitivity"], skm.recall_score(y, pred))
    assert np.isclose(m["specificity"], skm.recall_score(1 - y, 1 - pred))
    assert np.isclose(m["f1"], skm.f1_score(y, pred))
    assert np.isclose(m["brier"], skm.brier_score_loss(y, p))


def test_multiclass_and_multilabel() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    logits = rng.standard_normal((200, 3)) + 2 * np.eye(3)[y]
    p = probabilities("multiclass", logits)
    m = compute_metrics("multiclass", y, p, labels=["a", "b", "c"])
    assert np.isclose(m["auroc"], skm.roc_auc_score(y, p, multi_class="ovr"))
    assert np.isclose(m["kappa"], skm.cohen_kappa_score(y, p.argmax(1)))
    assert np.isclose(m["balanced_accuracy"], skm.balanced_accuracy_score(y, p.argmax(1)))
    assert set(m["per_class"]) == {"a", "b", "c"}
    ym = (rng.random((200, 3)) < 0.3).astype(int)
    pm = np.clip(ym * 0.5 + rng.random((200, 3)) * 0.5, 0, 1)
    mm = compute_metrics("multilabel", ym, pm, 0.5, ["x", "y", "z"])
    assert np.isclose(mm["auroc"], skm.roc_auc_score(ym, pm, average="macro"))


def test_multiclass_with_two_classes_has_its_auroc() -> None:
    """A multiclass task of two classes: its AUROC is the binary one (scikit-learn's
    multi_class="ovr" raises there, which once left it NaN beside a finite CI)."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 120)
    p = probabilities("multiclass", rng.standard_normal((120, 2)) + 1.5 * np.eye(2)[y])
    m = compute_metrics("multiclass", y, p, labels=["a", "b"])
    assert np.isclose(m["auroc"], skm.roc_auc_score(y, p[:, 1])) and m["auroc"] > 0.7


def _completed(task: str, threshold: dict) -> object:
    from medfuse.core.spec import ModalitySpec, complete_spec, parse_spec

    labels = ["a", "b", "c"]
    spec = parse_spec(
        {
            "data": {"source": "synthetic"},
            "task": {"type": task, "labels": labels},
            "modalities": {"t": {"kind": "tabular", "columns": ["x"]}},
            **({"threshold": threshold} if threshold else {}),
        }
    )
    return complete_spec(spec, {"t": ModalitySpec(kind="tabular", columns=["x"])}, labels)


def test_thresholds_of_multiclass_and_multilabel_tasks_are_applied_or_refused() -> None:
    """A multilabel task decides every label at its spec's fixed threshold (it was replaced by
    0.5 without a word); an operating point chosen on validation, or any threshold of a
    multiclass task (argmax), is refused at training instead of being ignored."""
    from medfuse.core.errors import SpecError
    from medfuse.training.pipeline import threshold_for

    y, p = np.zeros((4, 3)), np.full((4, 3), 0.5)
    spec = _completed("multilabel", {"method": "fixed", "value": 0.3})
    assert threshold_for(spec, y, p) == {"method": "fixed", "value": 0.3}
    assert threshold_for(_completed("multilabel", {}), y, p)["value"] == 0.5
    with pytest.raises(SpecError, match=r"'threshold\.method': 'sensitivity' chooses an operating"):
        _completed("multilabel", {"method": "sensitivity", "target": 0.95})
    with pytest.raises(SpecError, match=r"'threshold': a multiclass task decides by argmax"):
        _completed("multiclass", {"method": "fixed", "value": 0.3})
    assert threshold_for(_completed("multiclass", {}), y[:, 0], p)["method"] == "argmax"
    # a stored spec (a package's, a resumed run's) holds the default written out: it passes
    dumped = {"method": "youden", "target": None, "value": None}
    assert threshold_for(_completed("multilabel", dumped), y, p)["value"] == 0.5
    assert threshold_for(_completed("multiclass", dumped), y[:, 0], p)["method"] == "argmax"


def test_no_threshold_is_chosen_on_one_class_and_auprc_needs_a_positive() -> None:
    from medfuse.core.errors import DataError

    y, p = np.zeros(8, int), np.linspace(0.1, 0.9, 8)
    for method, target in (("youden", None), ("sensitivity", 0.95), ("specificity", 0.9)):
        with pytest.raises(DataError, match=rf"threshold method '{method}'.*class 0 samples only"):
            choose_threshold(y, p, method, target)
    assert choose_threshold(y, p, "fixed", value=0.3) == 0.3
    m = compute_metrics("binary", y, p, 0.5)
    assert np.isnan(m["auprc"]) and np.isnan(m["auroc"])  # undefined, never 0.0


def test_ece_known_cases() -> None:
    y = np.array([0, 1] * 50)
    assert ece(y, y.astype(float)) == 0.0  # perfectly confident and right
    assert np.isclose(ece(y, np.full(100, 0.5)), 0.0)  # calibrated at 0.5
    assert np.isclose(ece(np.zeros(100), np.full(100, 0.9)), 0.9)


def test_youden_threshold_is_between_scores_and_optimal() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    t = youden_threshold(y, p)
    assert 0.3 < t < 0.6 and np.isclose(t, 0.45)
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.25 * y + rng.random(500) * 0.75, 0, 1)
    t = youden_threshold(y, p)

    def j(th):
        return ((p >= th) & (y == 1)).sum() / (y == 1).sum() - ((p >= th) & (y == 0)).sum() / (
            y == 0
        ).sum()

    assert np.isclose(j(t), max(j(th) for th in np.unique(p)))


def test_target_sensitivity_and_specificity() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 1000)
    p = np.clip(0.3 * y + rng.random(1000) * 0.7, 0, 1)
    t = choose_threshold(y, p, "sensitivity", 0.95)
    assert ((p >= t) & (y == 1)).sum() / (y == 1).sum() >= 0.95
    t = choose_threshold(y, p, "specificity", 0.9)
    assert ((p < t) & (y == 0)).sum() / (y == 0).sum() >= 0.9
    assert choose_threshold(y, p, "fixed", value=0.3) == 0.3


def test_class_weights_balanced_and_sqrt() -> None:
    import torch

    from medfuse.training.losses import TaskLoss

    y = np.array([0] * 90 + [1] * 9 + [2] * 1)
    bal = TaskLoss("multiclass", y, class_weights="balanced", num_outputs=3).weight
    sq = TaskLoss("multiclass", y, class_weights="sqrt", num_outputs=3).weight
    assert torch.allclose(bal, torch.tensor([100 / 270, 100 / 27, 100 / 3]))
    assert torch.allclose(sq, bal.sqrt())
    yb = np.array([0] * 80 + [1] * 20)
    assert float(TaskLoss("binary", yb, class_weights="sqrt").weight) == pytest.approx(2.0)
    assert TaskLoss("binary", yb).weight.numel() == 0  # none


def test_a_threshold_chosen_on_little_or_inseparable_validation_is_cautioned() -> None:
    """Youden's J on one positive and one negative the model ranked the wrong way round gave
    0.2, recorded as chosen on val, and every test case was called positive without a word."""
    from medfuse.core.spec import parse_spec
    from medfuse.training.metrics import threshold_caution
    from medfuse.training.pipeline import threshold_for

    y, p = np.array([0, 1]), np.array([0.6, 0.4])
    why = threshold_caution(y, p, "youden")
    assert "1 positive and 1 negative" in why and "AUROC 0.000" in why
    assert threshold_caution(y, p, "fixed") is None
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    assert threshold_caution(y, y * 0.5 + rng.random(40) * 0.4, "youden") is None
    spec = parse_spec(
        {"data": {"source": "synthetic"}, "task": {"type": "binary"},
         "modalities": {"t": {"kind": "tabular", "columns": ["a"]}},
         "branches": {"t": {"type": "mlp"}}}
    )  # fmt: skip
    rec = threshold_for(spec, np.array([0, 1]), np.array([0.6, 0.4]))
    assert rec["chosen_on"] == "val" and "does not separate" in rec["caution"]


def test_a_multilabel_macro_mean_says_which_labels_it_left_out() -> None:
    """A label never positive in the split was dropped from the macro AUROC and sensitivity
    (nanmean) but kept in accuracy and specificity, without a word."""
    from medfuse.training.metrics import multilabel_metrics

    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.7], [0.7, 0.6, 0.2], [0.2, 0.3, 0.1]])
    out = multilabel_metrics(y, p, 0.5, ["A", "B", "C"])
    assert out["macro_note"].startswith("1 of 3 labels (C) have one class only")
    two = multilabel_metrics(y[:, :2], p[:, :2], 0.5, ["A", "B"])
    for key in ("auroc", "f1", "balanced_accuracy"):  # C counted in none (its F1 was a 0)
        assert out[key] == pytest.approx(two[key]), key
    assert out["accuracy"] != pytest.approx(two["accuracy"])  # over all three labels
    assert "macro_note" not in two


def test_multiclass_macro_note_names_a_class_absent_from_the_split() -> None:
    """A 3-class model evaluated on a split without one class: its macro AUROC and balanced
    accuracy were means over 2 classes, reported as the model's, without a word."""
    from medfuse.training.metrics import multiclass_metrics

    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]] * 2)
    m = multiclass_metrics(y, p, ["low", "mid", "high"])
    assert m["per_class"]["high"]["support"] == 0
    assert "1 of 3 classes (high) have no sample" in m["macro_note"]
    assert "called 2 sample(s) high" in m["macro_note"]
    full = multiclass_metrics(np.array([0, 1, 2, 0, 1, 2]), p, ["low", "mid", "high"])
    assert "macro_note" not in full
