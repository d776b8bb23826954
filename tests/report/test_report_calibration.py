"""Temperature scaling: recovers a known temperature, lowers ECE, is stored in the package
atomically, is applied by predict, and keeps decisions unless a new operating point is asked for."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse.cli import main
from medfuse.core.package import read_meta
from medfuse.inference.helpers import package_data
from medfuse.inference.predictor import load
from medfuse.report.calibration import (
    calibrate_package,
    calibration_error,
    fit_temperature,
    map_threshold,
    reliability,
    temperature_bound,
)
from medfuse.training.metrics import probabilities


def test_fit_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(float)
    logits = 3.0 * true_logit  # a model three times too confident
    t = fit_temperature("binary", logits[:, None], y)
    assert t == pytest.approx(3.0, rel=0.15)
    before = calibration_error("binary", y, probabilities("binary", logits[:, None]))
    after = calibration_error("binary", y, probabilities("binary", logits[:, None], t))
    assert after < 0.5 * before
    rel = reliability("binary", y, probabilities("binary", logits[:, None], t))
    assert sum(rel["count"]) == 4000 and rel["binning"].startswith("10 equal-width")


def test_fit_temperature_multiclass() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (3000, 3))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert fit_temperature("multiclass", 0.5 * z, y) == pytest.approx(0.5, rel=0.15)


def test_a_temperature_at_the_search_bound_says_what_it_means() -> None:
    """Scores unrelated to the labels drive the fit to the upper bound (every probability pulled
    to chance); perfectly separated scores to the lower; either is named, a usual fit is not."""
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.5).astype(float)
    unrelated = rng.normal(0, 8, (400, 1))
    t_hi = fit_temperature("binary", unrelated, y)
    assert "upper bound (20)" in temperature_bound(t_hi)
    separated = np.where(y == 1, 6.0, -6.0)[:, None] + rng.normal(0, 0.1, (400, 1))
    assert "lower bound (0.05)" in temperature_bound(fit_temperature("binary", separated, y))
    assert temperature_bound(1.0) == "" and temperature_bound(3.0) == ""


def test_map_threshold_keeps_decisions() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, 500)
    old_t, new_t, thr = 1.0, 1.7, 0.62
    v = map_threshold(thr, old_t, new_t)
    before = 1 / (1 + np.exp(-logits / old_t)) >= thr
    after = 1 / (1 + np.exp(-logits / new_t)) >= v
    assert np.array_equal(before, after)


def test_calibrate_package_stores_and_predict_applies(tiny_package, tmp_path) -> None:
    out = tmp_path / "cal"
    res = calibrate_package(tiny_package, out=out)
    meta = read_meta(out)  # checksums verified: the rewrite was complete
    c = meta["calibration"]
    assert c["method"] == "temperature" and c["fitted_on"] == "val"
    assert c["temperature"] == pytest.approx(res["calibration"]["temperature"])
    assert c["nll_after"] <= c["nll_before"] + 1e-12
    assert {"ece_before", "ece_after", "binning"} <= set(c)
    assert read_meta(tiny_package)["calibration"]["temperature"] == 1.0  # source untouched
    src, dst = load(tiny_package), load(out)
    test = package_data(src.spec, src.meta).test
    assert dst.temperature == pytest.approx(c["temperature"])
    assert np.allclose(
        dst.predict_proba(test), probabilities("binary", src.logits(test), dst.temperature)
    )
    assert dst.predict(test) == src.predict(test)  # the threshold was mapped
    assert f"T = {c['temperature']:.4f}" in (out / "README.md").read_text()


def test_calibrate_rechooses_operating_point(tiny_package, tmp_path) -> None:
    out = tmp_path / "cal95"
    res = calibrate_package(tiny_package, out=out, threshold_method="sensitivity", target=0.9)
    thr = read_meta(out)["threshold"]
    assert thr["method"] == "sensitivity" and thr["target"] == 0.9
    assert thr["value"] == pytest.approx(res["threshold"]["value"])
    pred = load(out)
    val = package_data(pred.spec, pred.meta).val
    p = pred.predict_proba(val)
    sens = float(((p >= pred.threshold) & (val.y == 1)).sum() / (val.y == 1).sum())
    assert sens >= 0.9


def test_calibrate_cli_errors(tiny_package, tmp_path, capsys) -> None:
    rc = main(
        [
            "calibrate",
            str(tiny_package),
            "--out",
            str(tmp_path / "x"),
            "--threshold-method",
            "sensitivity",
        ]
    )
    assert rc == 2
    assert "--target" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "nope")]) == 4


def test_calibrating_a_multiclass_package_says_its_auroc_moves(tmp_path) -> None:
    """The docs said calibration never changes the ranking; a softmax temperature changes each
    class's one-vs-rest AUROC (0.832 -> 0.820 in a helper's run), without a word."""
    import pandas as pd

    import medfuse

    rng = np.random.default_rng(0)
    n = 90
    y = np.arange(n) % 3
    df = pd.DataFrame(
        {
            "x1": y + rng.normal(0, 1.0, n),
            "x2": (y == 1) + rng.normal(0, 1.0, n),
            "grade": np.array(["low", "mid", "high"])[y],
            "split": np.array(["train", "train", "train", "val", "test"])[np.arange(n) % 5],
        }
    )
    df.to_csv(tmp_path / "mc.csv", index=False)
    pkg = medfuse.fit(
        tmp_path / "mc.csv", "grade", out=tmp_path / "mc", overrides=["train.epochs=3"],
        verbose=False, device="cpu", progress=False,
    ).package  # fmt: skip
    rec = calibrate_package(pkg, out=tmp_path / "cal")["calibration"]
    assert set(rec["auroc_change"]) == {"val_before", "val_after"}
    assert "one-vs-rest ranking" in rec["note"]
    card = (tmp_path / "cal" / "README.md").read_text()
    assert "**Note:**" in card and "one-vs-rest ranking" in card
