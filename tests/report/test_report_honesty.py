"""Honest intervals and subgroups: exact intervals for proportions (never [1, 1] from 1/1), no
interval for AUROC from too few positives, the automatic subgroup pick sees tabular inputs, and
a numeric subgroup column with empty cells gives a "missing" group instead of a crash."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medfuse.report.ci import (
    MIN_CLASS_COUNT,
    clopper_pearson,
    effective_counts,
    fmt_interval,
    metric_intervals,
)
from medfuse.report.subgroups import auto_column, band, subgroup_metrics, subgroup_values


def _few_positives(npos: int, nneg: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(npos), np.zeros(nneg)]
    p = np.r_[rng.uniform(0.6, 0.9, npos), rng.uniform(0.0, 0.45, nneg)]  # all called correctly
    return y, p


def _exact(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return ci.low, ci.high


# ---- A: intervals ----------------------------------------------------------------------------


def test_one_positive_gets_the_exact_interval_not_a_point() -> None:
    y, p = _few_positives(1)
    iv = metric_intervals("binary", y, p, 0.5, n_boot=200, seed=0)
    sens = iv["sensitivity"]
    assert sens["value"] == 1.0
    assert (sens["lo"], sens["hi"]) == pytest.approx(_exact(1, 1))  # 0.025-1
    assert sens["lo"] < 0.03 and sens["method"] == "clopper-pearson"
    for k, (succ, n) in {"specificity": (40, 40), "npv": (40, 40), "accuracy": (41, 41)}.items():
        assert (iv[k]["lo"], iv[k]["hi"]) == pytest.approx(_exact(succ, n)), k
        assert iv[k]["lo"] < iv[k]["hi"], k
    # AUROC (and the both-class metrics) from one positive: no interval, printed n/a
    for k in ("auroc", "auprc", "balanced_accuracy", "f1"):
        assert iv[k]["value"] == pytest.approx(1.0), k
        assert math.isnan(iv[k]["lo"]) and math.isnan(iv[k]["hi"]), k
        assert "1 positive sample" in iv[k]["method"], k
    assert fmt_interval(iv["auroc"]) == "1.000 (n/a-n/a)"
    # the rest keeps its bootstrap interval
    assert iv["brier"]["method"] == "percentile bootstrap" and iv["brier"]["lo"] < iv["brier"]["hi"]


def test_all_detected_and_a_middle_proportion_match_scipy() -> None:
    y, p = _few_positives(10)
    iv = metric_intervals("binary", y, p, 0.5, n_boot=200, seed=0)
    assert (iv["sensitivity"]["lo"], iv["sensitivity"]["hi"]) == pytest.approx(_exact(10, 10))
    assert iv["sensitivity"]["lo"] == pytest.approx(0.6915, abs=1e-3)
    assert iv["auroc"]["method"] == "percentile bootstrap"  # 10 positives: enough
    # 7 of 20 positives detected
    y = np.r_[np.ones(20), np.zeros(30)]
    p = np.r_[np.full(7, 0.9), np.full(13, 0.1), np.linspace(0, 0.4, 30)]
    iv = metric_intervals("binary", y, p, 0.5, n_boot=100, seed=0)
    assert iv["sensitivity"]["value"] == pytest.approx(0.35)
    assert (iv["sensitivity"]["lo"], iv["sensitivity"]["hi"]) == pytest.approx(_exact(7, 20))
    assert (iv["ppv"]["lo"], iv["ppv"]["hi"]) == pytest.approx(_exact(7, 7))
    # no predicted positive: PPV undefined, no interval
    iv = metric_intervals("binary", y, np.zeros(50), 0.5, n_boot=50)
    assert math.isnan(iv["ppv"]["value"]) and math.isnan(iv["ppv"]["lo"])


def test_min_class_count_boundary() -> None:
    below = metric_intervals("binary", *_few_positives(MIN_CLASS_COUNT - 1), 0.5, n_boot=100)
    at = metric_intervals("binary", *_few_positives(MIN_CLASS_COUNT), 0.5, n_boot=100)
    assert math.isnan(below["auroc"]["lo"])
    assert not math.isnan(at["auroc"]["lo"])
    # too few negatives withholds it as well
    y, p = _few_positives(40, nneg=2)
    assert (
        "2 negative samples" in metric_intervals("binary", y, p, 0.5, n_boot=50)["auroc"]["method"]
    )


def test_patients_count_for_proportions_and_minimum() -> None:
    # one positive patient with 4 positive images, all detected: that is 1/1, not 4/4
    y = np.r_[np.ones(4), np.zeros(40)]
    p = np.r_[np.full(4, 0.9), np.linspace(0, 0.4, 40)]
    ids = np.r_[np.repeat("P0", 4), [f"N{i}" for i in range(40)]]
    iv = metric_intervals("binary", y, p, 0.5, groups=ids, n_boot=100)
    assert (iv["sensitivity"]["lo"], iv["sensitivity"]["hi"]) == pytest.approx(_exact(1, 1))
    assert "patients" in iv["sensitivity"]["method"]
    assert "1 positive patient" in iv["auroc"]["method"] and math.isnan(iv["auroc"]["lo"])
    # one sample per patient: the plain exact interval
    k, n, how = effective_counts(np.r_[np.ones(3), np.zeros(7)], np.ones(10), np.arange(10))
    assert (k, n, how) == (3.0, 10.0, "clopper-pearson")
    # identical copies of each patient: the effective n is the number of patients
    s0 = (np.arange(50) < 20).astype(float)
    k, n, _ = effective_counts(np.repeat(s0, 4), np.ones(200), np.repeat(np.arange(50), 4))
    assert n == pytest.approx(50, rel=0.03) and k / n == pytest.approx(0.4)
    assert clopper_pearson(0, 0) != clopper_pearson(0, 0)  # NaN: no denominator


def test_multiclass_accuracy_is_exact_and_rare_class_withholds_auroc() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30), np.ones(30), np.full(2, 2)].astype(int)
    z = rng.normal(size=(62, 3))
    z[np.arange(62), y] += 2.0
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    iv = metric_intervals("multiclass", y, p, n_boot=100)
    correct = int((p.argmax(1) == y).sum())
    assert (iv["accuracy"]["lo"], iv["accuracy"]["hi"]) == pytest.approx(_exact(correct, 62))
    assert "of class 2" in iv["auroc"]["method"] and math.isnan(iv["auroc"]["hi"])
    assert iv["kappa"]["method"] == "percentile bootstrap"


def test_subgroup_of_one_is_not_a_point_interval() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[(rng.random(80) < 0.4).astype(float), 1.0]
    p = np.clip(0.3 * y + 0.7 * rng.random(81), 0, 1)
    p[-1] = 0.95
    site = np.r_[np.repeat(["A", "B"], 40), ["Z"]]
    res = subgroup_metrics("binary", y, p, site, 0.5, n_boot=100, seed=0)
    z = res["groups"]["Z"]["metrics"]
    assert z["sensitivity"]["value"] == 1.0
    assert z["sensitivity"]["lo"] == pytest.approx(0.025, abs=1e-3)
    assert math.isnan(z["auroc"]["lo"])  # no negative, one positive
    a = res["groups"]["A"]["metrics"]["auroc"]
    assert a["lo"] < a["value"] < a["hi"]


def test_gap_interval_withheld_when_a_ranked_group_has_few_positives() -> None:
    rng = np.random.default_rng(2)
    y = np.r_[(rng.random(100) < 0.4).astype(float), np.r_[np.ones(2), np.zeros(20)]]
    p = np.clip(0.5 * y + 0.5 * rng.random(122), 0, 1)
    site = np.r_[np.repeat("A", 100), np.repeat("B", 22)]
    res = subgroup_metrics("binary", y, p, site, 0.5, n_boot=100, seed=0)
    assert res["groups"]["B"]["ranked"]  # >= 10 samples, both classes: still ranked
    gap = res["gap"]
    assert math.isfinite(gap["value"]) and math.isnan(gap["lo"]) and math.isnan(gap["hi"])
    assert "B" in gap["method"]


# ---- B: the automatic subgroup pick ----------------------------------------------------------


def test_auto_column_finds_a_tabular_input() -> None:
    meta = pd.DataFrame({"case_id": ["c1", "c2", "c3"], "patient_id": ["p1", "p2", "p3"]})
    tab = {"clinical": ["age", "sex", "marker"]}
    assert auto_column(meta) is None  # the metadata alone has none
    assert auto_column(meta, tab) == "sex"
    # a named candidate in the metadata is preferred by the candidate order, not by the source
    meta2 = meta.assign(site=["a", "b", "a"])
    assert auto_column(meta2, tab) == "sex"
    assert auto_column(meta2, {"clinical": ["age", "marker"]}) == "site"
    assert auto_column(pd.DataFrame(), {"clinical": ["age", "gender"]}) == "gender"
    assert auto_column(pd.DataFrame(), {"clinical": ["age", "marker"]}) is None


# ---- C: empty cells in a numeric subgroup column ---------------------------------------------


def test_numeric_column_with_empty_cells_gets_a_missing_group() -> None:
    vals, how = band(pd.Series([np.nan, *range(20), np.nan], dtype=float))
    assert how == "quartile bands"
    assert vals[0] == vals[-1] == "missing" and list(vals).count("missing") == 2
    assert len(set(vals) - {"missing"}) == 4
    # through a tabular input, as `--subgroup marker` reads it
    rng = np.random.default_rng(3)
    marker = rng.normal(40, 10, 60)
    marker[::7] = np.nan
    arrays = {"clinical": np.c_[rng.integers(30, 80, 60), marker]}
    vals, how = subgroup_values("marker", pd.DataFrame(), arrays, {"clinical": ["age", "marker"]})
    assert "quartile bands" in how and (vals == "missing").sum() == 9
    y = (rng.random(60) < 0.5).astype(float)
    res = subgroup_metrics("binary", y, rng.random(60), vals, 0.5, n_boot=20)
    assert res["groups"]["missing"]["n"] == 9
    assert sum(g["n"] for g in res["groups"].values()) == 60


def test_paired_differences_follow_the_same_minimum_count() -> None:
    """A paired AUROC difference (compare, the drop without a modality) from 3 positives gets
    no interval and no p-value (the p of a collapsed bootstrap is no evidence), and Holm's
    adjustment leaves such a comparison out of the family; with enough of both it has both."""
    from medfuse.report.ci import difference_interval
    from medfuse.report.compare import holm, paired_bootstrap

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(3), np.zeros(40)]
    pa, pb = rng.random(43) * 0.5 + 0.5 * y, rng.random(43)
    thin = paired_bootstrap("binary", y, pa, pb, n_boot=200)
    assert np.isnan(thin["lo"]) and np.isnan(thin["hi"]) and np.isnan(thin["p"])
    assert "3 positive samples" in thin["method"] and np.isfinite(thin["diff"])
    y2 = np.r_[np.ones(20), np.zeros(23)]
    ok = paired_bootstrap("binary", y2, pa, pb, n_boot=200)
    assert ok["lo"] <= ok["diff"] <= ok["hi"] and np.isfinite(ok["p"])
    adj = holm([0.01, float("nan"), 0.04])
    assert np.isnan(adj[1]) and adj[0] == 0.02 and adj[2] == 0.04  # a family of two
    iv = difference_interval("binary", "brier", y, 0.1, np.linspace(0, 0.2, 50))
    assert np.isfinite(iv["lo"])  # not a ranking metric: the bootstrap interval stands


def test_delong_makes_no_test_from_a_handful_of_one_class() -> None:
    """DeLong's variance from 2 positives can be 0 and call any AUROC difference significant
    (p = 0): no test is made (p and interval NaN, a note saying why); the AUROCs stay."""
    from sklearn import metrics as skm

    from medfuse.report.compare import delong_test

    y = np.r_[np.ones(2), np.zeros(30)]
    a = np.r_[0.9, 0.8, np.linspace(0.0, 0.5, 30)]  # both positives on top
    b = np.r_[0.9, 0.3, np.linspace(0.0, 0.5, 30)]
    t = delong_test(y, a, b)
    assert np.isnan(t["p"]) and np.isnan(t["lo"]) and "2 positive samples" in t["note"]
    assert t["auroc_a"] == pytest.approx(skm.roc_auc_score(y, a)) and t["diff"] > 0


def test_a_sensitivity_gap_is_withheld_when_a_group_has_few_positives() -> None:
    """The gap of a proportion (here sensitivity) was never withheld: a group with 2 positives
    gave a bootstrap interval for the sensitivity gap as if it were measured."""
    rng = np.random.default_rng(2)
    y = np.r_[(rng.random(100) < 0.4).astype(float), np.r_[np.ones(2), np.zeros(20)]]
    p = np.clip(0.5 * y + 0.5 * rng.random(122), 0, 1)
    site = np.r_[np.repeat("A", 100), np.repeat("B", 22)]
    gap = subgroup_metrics("binary", y, p, site, 0.5, n_boot=100, seed=0, gap_metric="sensitivity")
    assert gap["gap"]["metric"] == "sensitivity"
    assert math.isnan(gap["gap"]["lo"]) and "B: 2 positive samples" in gap["gap"]["method"]
    # specificity's denominator is the negatives: 20 in B, so its gap keeps an interval
    spec = subgroup_metrics("binary", y, p, site, 0.5, n_boot=100, seed=0, gap_metric="specificity")
    assert math.isfinite(spec["gap"]["lo"]) and spec["gap"]["lo"] <= spec["gap"]["value"]


def test_multilabel_groups_averaged_over_different_labels_are_said_and_their_gap_withheld() -> None:
    """A group without a positive of one label averaged its macro metrics over the other
    labels: a sensitivity of 1/4 beside 1/5, reported as a gap between groups."""
    rng = np.random.default_rng(0)
    n = 80
    y = (rng.random((n, 3)) < 0.4).astype(float)
    sex = np.where(np.arange(n) < 40, "F", "M")
    y[sex == "F", 2] = 0  # label C: no positive among F
    p = np.clip(0.6 * y + 0.4 * rng.random((n, 3)), 0, 1)
    res = subgroup_metrics("multilabel", y, p, sex, 0.5, n_boot=50, labels=["A", "B", "C"])
    assert "C with one class only" in res["groups"]["F"]["macro_note"]
    assert "macro_note" not in res["groups"]["M"]
    assert "over different classes (left out: F: C; M: none)" in res["macro_note"]
    assert math.isnan(res["gap"]["lo"]) and "unlike means" in res["gap"]["method"]
    same = subgroup_metrics("multilabel", y[:, :2], p[:, :2], sex, 0.5, n_boot=50)
    assert "macro_note" not in same and math.isfinite(same["gap"]["lo"])


def test_multiclass_groups_lacking_different_classes_are_said() -> None:
    """The multiclass side of the rule above: a group without a sample of a class averages
    its macro means over the others, by the labels' names."""
    rng = np.random.default_rng(1)
    n = 90
    y = np.arange(n) % 3
    site = np.where(np.arange(n) < 45, "A", "B")
    y[(site == "A") & (y == 2)] = 0  # site A: no 'high'
    p = np.clip(np.eye(3)[y] * 0.6 + 0.4 * rng.random((n, 3)), 0, None)
    p = p / p.sum(axis=1, keepdims=True)
    res = subgroup_metrics("multiclass", y, p, site, n_boot=50, labels=["low", "mid", "high"])
    assert res["groups"]["A"]["macro_note"].startswith("high with no sample in this group")
    assert "macro_note" not in res["groups"]["B"]
    assert "left out: A: high; B: none" in res["macro_note"] and math.isnan(res["gap"]["lo"])
