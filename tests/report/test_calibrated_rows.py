"""A calibrated package is scored as it decides, in every row: its stored threshold lives on the
calibrated scale, so evaluate's fused rows (each modality removed) and the pruned package's
"before" are scored at its temperature (a branch alone is its auxiliary head: uncalibrated and
threshold-free); calibration keeps decisions, so every
threshold metric equals the uncalibrated package's. Subgroups of a text column are named by
its categories, not by the codes the model reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfuse.api import evaluate
from medfuse.compress.prune import prune
from medfuse.core.package import read_meta, update_package
from medfuse.report.calibration import calibrate_package, map_threshold

DECISIONS = ("accuracy", "sensitivity", "specificity")


@pytest.fixture(scope="module")
def calibrated(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny package calibrated as `medfuse calibrate` stores it, at a temperature far from 1
    (its threshold mapped through it, decisions unchanged), so that a row scored at T = 1
    against that threshold decides otherwise."""
    out = tmp_path_factory.mktemp("cal") / "calibrated"
    calibrate_package(tiny_package, out=out, device="cpu")
    meta = read_meta(out)
    t = 0.2
    thr = {
        **meta["threshold"],
        "value": map_threshold(meta["threshold"]["value_before_calibration"], 1.0, t),
    }
    update_package(
        out,
        meta_updates={"calibration": {**meta["calibration"], "temperature": t}, "threshold": thr},
    )
    return out


def test_every_evaluated_row_keeps_the_uncalibrated_decisions(
    tiny_package: Path, calibrated: Path
) -> None:
    raw, cal = evaluate(tiny_package, device="cpu"), evaluate(calibrated, device="cpu")
    assert cal["ece"] != raw["ece"]  # the temperature is applied (probabilities changed)
    assert set(cal["without"]) == {"image", "signal", "tabular"}
    for m, row in raw["without"].items():
        for k in DECISIONS:
            assert cal["without"][m][k] == pytest.approx(row[k]), ("without", m, k)
    # a branch alone is its auxiliary head, which the package never decides with: reported
    # uncalibrated and threshold-free, the same for both (as the clinical evaluation has it)
    assert cal["branches"] == raw["branches"]
    assert all(set(r) == {"n", "auroc", "auprc", "brier"} for r in cal["branches"].values())
    for k in DECISIONS:
        assert cal[k] == pytest.approx(raw[k])


def test_prune_records_the_calibrated_source_as_evaluate_scores_it(
    calibrated: Path, tmp_path: Path
) -> None:
    before = prune(calibrated, out=tmp_path / "p", amount=0.5, finetune_epochs=1).record
    source = evaluate(calibrated, device="cpu")
    for k in (*DECISIONS, "ece", "auroc"):
        assert before["metrics"]["before"][k] == pytest.approx(source[k], abs=1e-6), k


def test_subgroups_of_a_text_tabular_column_are_named_by_its_categories() -> None:
    import numpy as np
    import pandas as pd

    from medfuse.report.subgroups import subgroup_values

    codes = np.array([[0.0, 61.0], [1.0, 40.0], [np.nan, 52.0], [1.0, 70.0]], np.float32)
    tab = {"clinical": ["sex", "age"]}
    cats = {"clinical": {"sex": ["F", "M"]}}
    vals, how = subgroup_values("sex", pd.DataFrame(), {"clinical": codes}, tab, cats)
    assert list(vals) == ["F", "M", "missing", "M"] and how.endswith("(categories)")
    vals, how = subgroup_values("age", pd.DataFrame(), {"clinical": codes}, tab, cats)
    assert how.endswith("(values)") and "61.0" in list(vals)  # a numeric column as before
