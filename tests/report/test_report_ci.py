"""Bootstrap CIs: the vectorised weighted metrics equal scikit-learn's point metrics, known cases
(perfect and random classifiers) give the intervals theory says, patients are resampled whole."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from medfuse.report.ci import (
    curve_bands,
    iter_weights,
    metric_intervals,
    point_rows,
    resampling_unit,
)
from medfuse.report.compare import delong_interval, delong_test, holm, paired_bootstrap
from medfuse.training.metrics import compute_metrics


def _binary(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    p = np.clip(0.25 * y + 0.75 * rng.random(n), 0, 1).round(2)  # rounding makes ties
    return y, p


def test_weighted_point_metrics_equal_sklearn_binary() -> None:
    y, p = _binary()
    mine = point_rows("binary", y, p, 0.4)
    ref = compute_metrics("binary", y, p, 0.4)
    assert mine["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert mine["auprc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv"):
        assert mine[k] == pytest.approx(ref[k], abs=1e-12), k
    for k in ("f1", "ece", "brier"):
        assert mine[k] == pytest.approx(ref[k], abs=1e-12), k


def test_weighted_point_metrics_equal_sklearn_multiclass_and_multilabel() -> None:
    rng = np.random.default_rng(1)
    n, k = 300, 4
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 1.2
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    mine, ref = point_rows("multiclass", y, p), compute_metrics("multiclass", y, p)
    assert mine["auroc"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert mine["kappa"] == pytest.approx(skm.cohen_kappa_score(y, p.argmax(1)), abs=1e-12)
    for key in ("auprc", "accuracy", "balanced_accuracy", "specificity", "f1", "ece", "brier"):
        assert mine[key] == pytest.approx(ref[key], abs=1e-12), key
    ym = (rng.random((n, 3)) < 0.4).astype(float)
    pm = np.clip(0.3 * ym + 0.7 * rng.random((n, 3)), 0, 1)
    mine, ref = point_rows("multilabel", ym, pm, 0.5), compute_metrics("multilabel", ym, pm, 0.5)
    for key in ("auroc", "auprc", "sensitivity", "specificity", "f1", "ece", "brier"):
        assert mine[key] == pytest.approx(ref[key], abs=1e-12), key


def test_perfect_classifier_intervals() -> None:
    from scipy import stats

    y = np.r_[np.zeros(60), np.ones(40)]
    p = np.r_[np.linspace(0.0, 0.4, 60), np.linspace(0.6, 1.0, 40)]
    iv = metric_intervals("binary", y, p, 0.5, n_boot=300, seed=0)
    # the bootstrap of a ranking metric cannot leave 1 when every resample is separated
    for k in ("auroc", "auprc"):
        assert iv[k]["value"] == iv[k]["lo"] == iv[k]["hi"] == 1.0, k
    # proportions: the exact interval of k/k, not [1, 1]
    for k, n in (("sensitivity", 40), ("specificity", 60), ("accuracy", 100)):
        lo = stats.binomtest(n, n).proportion_ci(0.95, method="exact").low
        assert iv[k]["value"] == iv[k]["hi"] == 1.0, k
        assert iv[k]["lo"] == pytest.approx(lo) and iv[k]["lo"] < 1.0, k


def test_random_classifier_interval_matches_theory() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(600) < 0.5).astype(float)
    p = rng.random(600)
    iv = metric_intervals("binary", y, p, 0.5, n_boot=1000, seed=0)["auroc"]
    assert iv["lo"] < 0.5 < iv["hi"]
    assert iv["lo"] < iv["value"] < iv["hi"]
    # DeLong's analytic interval has (nearly) the same width as the bootstrap's
    d = delong_interval(y, p)
    assert d["value"] == pytest.approx(iv["value"], abs=1e-12)
    assert (iv["hi"] - iv["lo"]) == pytest.approx(d["hi"] - d["lo"], rel=0.15)


def test_bootstrap_is_seeded() -> None:
    y, p = _binary(200)
    a = metric_intervals("binary", y, p, 0.4, n_boot=200, seed=7)["auroc"]
    b = metric_intervals("binary", y, p, 0.4, n_boot=200, seed=7)["auroc"]
    c = metric_intervals("binary", y, p, 0.4, n_boot=200, seed=8)["auroc"]
    assert a == b
    assert (a["lo"], a["hi"]) != (c["lo"], c["hi"])


def test_patients_are_resampled_whole() -> None:
    import pandas as pd

    # 100 patients, 4 identical samples each: the cluster bootstrap sees 100 units, not 400
    y0, p0 = _binary(100, seed=5)
    y, p = np.repeat(y0, 4), np.repeat(p0, 4)
    ids = np.repeat([f"pt{i}" for i in range(100)], 4)
    groups, unit, n_units = resampling_unit(pd.DataFrame({"patient_id": ids}), len(y))
    assert n_units == 100 and "patient" in unit
    for w in iter_weights(len(y), groups=groups, n_boot=50, seed=0):
        assert np.all(w.reshape(len(w), 100, 4) == w.reshape(len(w), 100, 4)[:, :, :1])
        assert np.all(w.sum(axis=1) == 400)
    clustered = metric_intervals("binary", y, p, 0.4, groups=groups, n_boot=500)["auroc"]
    naive = metric_intervals("binary", y, p, 0.4, n_boot=500)["auroc"]
    unique = metric_intervals("binary", y0, p0, 0.4, n_boot=500)["auroc"]
    width = {k: v["hi"] - v["lo"] for k, v in (("c", clustered), ("n", naive), ("u", unique))}
    assert width["c"] == pytest.approx(width["u"], rel=0.2)
    assert width["n"] < 0.7 * width["c"]  # treating copies as independent is overconfident


def test_curve_bands_follow_sklearn_roc() -> None:
    y, p = _binary(300, seed=2)
    b = curve_bands(y, p, n_boot=200, seed=0)
    fpr, tpr, _ = skm.roc_curve(y, p)
    grid = b["grid"]
    ref = np.interp(grid[1:], fpr, tpr)
    assert np.allclose(b["roc"]["value"][1:], ref, atol=1e-9)
    inside = (b["roc"]["lo"] <= b["roc"]["value"] + 1e-9) & (
        b["roc"]["value"] <= b["roc"]["hi"] + 1e-9
    )
    assert inside.mean() > 0.95
    assert np.all(np.diff(b["pr"]["value"]) <= 1e-12)  # interpolated precision never rises


def test_delong_and_paired_bootstrap() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.4).astype(float)
    good = np.clip(0.5 * y + 0.5 * rng.random(300), 0, 1)
    weak = np.clip(0.1 * y + 0.9 * rng.random(300), 0, 1)
    t = delong_test(y, good, weak)
    assert t["auroc_a"] == pytest.approx(skm.roc_auc_score(y, good))
    assert t["p"] < 1e-4 and t["lo"] > 0
    same = delong_test(y, good, good)
    assert same["p"] == 1.0 and same["diff"] == 0.0
    b = paired_bootstrap("binary", y, good, weak, n_boot=500, seed=0)
    assert b["lo"] > 0 and b["p"] <= 0.01
    assert paired_bootstrap("binary", y, good, good, n_boot=100)["p"] == 1.0
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
