"""Subgroup metrics: per-group CIs, the best-worst gap, banding, and graceful 'no column' cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfuse.core.errors import DataError
from medfuse.report.subgroups import auto_column, band, subgroup_metrics, subgroup_values


def test_gap_between_a_good_and_a_poor_group() -> None:
    rng = np.random.default_rng(0)
    n = 600
    sex = rng.choice(["F", "M"], n)
    y = (rng.random(n) < 0.4).astype(float)
    signal = np.where(sex == "F", 0.6, 0.1)  # the model is much better for F
    p = np.clip(signal * y + (1 - signal) * rng.random(n), 0, 1)
    res = subgroup_metrics("binary", y, p, sex, 0.5, n_boot=300, seed=0)
    f, m = res["groups"]["F"], res["groups"]["M"]
    assert f["n"] + m["n"] == n
    assert f["metrics"]["auroc"]["value"] > m["metrics"]["auroc"]["value"]
    for g in (f, m):
        iv = g["metrics"]["auroc"]
        assert iv["lo"] <= iv["value"] <= iv["hi"]
    gap = res["gap"]
    assert gap["best"] == "F" and gap["worst"] == "M"
    assert gap["value"] == pytest.approx(
        f["metrics"]["auroc"]["value"] - m["metrics"]["auroc"]["value"]
    )
    assert gap["lo"] > 0  # a real gap: its interval excludes zero


def test_small_or_single_class_groups_are_not_ranked() -> None:
    y = np.r_[np.zeros(50), np.ones(50), np.zeros(5)]
    p = np.r_[np.linspace(0, 0.6, 50), np.linspace(0.4, 1, 50), np.full(5, 0.2)]
    site = np.r_[np.repeat("a", 100), np.repeat("b", 5)]
    res = subgroup_metrics("binary", y, p, site, 0.5, n_boot=100)
    assert res["groups"]["b"]["ranked"] is False
    assert res["gap"] is None and "b" in res["note"]


def test_numeric_columns_become_quartile_bands() -> None:
    vals, how = band(pd.Series(np.arange(100, dtype=float)))
    assert how == "quartile bands" and len(set(vals)) == 4
    vals, how = band(pd.Series(["x", None, "y"]))
    assert list(vals) == ["x", "missing", "y"]


def test_columns_from_meta_or_tabular_and_clear_errors() -> None:
    meta = pd.DataFrame({"id": ["a", "b", "c", "d"], "sex": ["F", "M", "F", "M"]})
    arrays = {"tabular": np.array([[60.0, 1], [70, 2], [np.nan, 3], [50, 4]])}
    cols = {"tabular": ["age", "marker"]}
    vals, how = subgroup_values("sex", meta, arrays, cols)
    assert list(vals) == ["F", "M", "F", "M"] and "metadata" in how
    vals, how = subgroup_values("age", meta, arrays, cols)
    assert vals[2] == "missing" and "tabular" in how
    with pytest.raises(DataError, match=r"did you mean 'sex'.*Available: sex, age, marker"):
        subgroup_values("sx", meta, arrays, cols)
    with pytest.raises(DataError, match="no subgroup columns"):
        subgroup_values("sex", pd.DataFrame({"id": ["a"]}), {}, {})
    assert auto_column(meta) == "sex"
    assert auto_column(pd.DataFrame({"id": ["m-1", "m-2"]})) is None  # MedMNIST: none


def test_a_multilabel_subgroup_of_one_gets_no_zero_width_accuracy_interval() -> None:
    """A multilabel subgroup of one sample got accuracy 1.0 [1.0, 1.0] from the bootstrap (a
    binary one of one gets Clopper-Pearson 0.025-1): withheld, as sensitivity's is."""
    import numpy as np

    from medfuse.report.subgroups import subgroup_metrics

    rng = np.random.default_rng(0)
    y = (rng.random((60, 2)) > 0.5).astype(int)
    p = np.clip(y * 0.6 + rng.random((60, 2)) * 0.4, 0, 1)
    vals = np.array(["big"] * 59 + ["one"])
    got = subgroup_metrics("multilabel", y, p, vals, 0.5, n_boot=50)
    acc = got["groups"]["one"]["metrics"]["accuracy"]
    assert np.isnan(acc["lo"]) and "no interval" in acc["method"]
