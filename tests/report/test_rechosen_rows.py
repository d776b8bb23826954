"""``medfuse evaluate --threshold-method``: every row of the output is at the re-chosen operating
point (an audit found the paired/partial, branch and modality-removed rows left at the stored
threshold, beside a headline at the new one)."""

from __future__ import annotations

import json
from pathlib import Path

from medfuse.cli import main
from medfuse.core.package import read_meta


def test_every_row_is_at_the_rechosen_threshold(tiny_package: Path, capsys) -> None:
    from medfuse.api import evaluate

    stored = read_meta(tiny_package)["threshold"]["value"]
    args = ["evaluate", str(tiny_package), "--json", "--bootstrap", "50"]
    assert main([*args, "--threshold-method", "sensitivity", "--target", "0.99"]) == 0
    out = json.loads(capsys.readouterr().out)
    new = out["threshold"]
    assert abs(new - stored) > 1e-6 and out["operating_point"]["value"] == new
    at_new, at_stored = evaluate(tiny_package, threshold=new), evaluate(tiny_package)
    rows = ["branches", "without", *(k for k in ("paired", "partial") if k in out)]
    for k in rows:
        assert json.loads(json.dumps(at_new[k])) == out[k], k  # JSON: NaN as in the output
    assert any(at_stored[k] != at_new[k] for k in rows)  # the stored threshold gives others
    # each branch row says on how many rows it was computed (those with the modality)
    assert all(v["n"] <= out["n"] for v in out["branches"].values())


def test_the_card_after_calibrate_shows_the_package_as_it_now_decides(
    tiny_package: Path, tmp_path: Path
) -> None:
    """calibrate --threshold-method changes decisions: the model card's metrics table is
    recomputed at the new threshold and temperature (it showed training's numbers under the
    new threshold's line)."""
    from medfuse.api import evaluate
    from medfuse.report.calibration import calibrate_package

    out = tmp_path / "cal"
    calibrate_package(tiny_package, out=out, threshold_method="sensitivity", target=0.99)
    now = evaluate(out)
    card = (out / "README.md").read_text()
    test_row = next(line for line in card.splitlines() if line.startswith("| test |"))
    cells = [c.strip() for c in test_row.strip("|").split("|")][1:]
    from medfuse.core.decision import SUMMARY_KEYS

    shown = dict(zip(SUMMARY_KEYS, cells, strict=True))
    for k in ("sensitivity", "specificity"):
        assert abs(float(shown[k]) - now[k]) < 1e-4, (k, shown[k], now[k])


def test_evaluate_with_cis_reads_and_scores_the_split_once(
    tiny_package: Path, capsys, monkeypatch
) -> None:
    """``medfuse evaluate`` with CIs read the data and scored the split twice (once for its
    table, once for the CIs; three times with --threshold-method), and its fused model once more
    for the branch rows: at scale, each is a pass over every file. Now one load, one scoring of
    the split (one pass with the branch heads, one per modality removed) and one of val, and the
    table is the one ``evaluate`` gives."""
    import medfuse.inference.helpers as helpers
    import medfuse.training.pipeline as pipeline
    from medfuse.api import evaluate

    loads: list[str | None] = []
    passes: list[int] = []
    load_real, logits_real = helpers.load_spec_data, pipeline.predict_logits

    def counted_load(*a, **k):
        loads.append(k.get("data"))
        return load_real(*a, **k)

    def counted_logits(model, data, *a, **k):
        passes.append(len(data))
        return logits_real(model, data, *a, **k)

    monkeypatch.setattr(helpers, "load_spec_data", counted_load)
    monkeypatch.setattr(pipeline, "predict_logits", counted_logits)
    args = ["evaluate", str(tiny_package), "--json", "--bootstrap", "20"]
    assert main([*args, "--threshold-method", "youden"]) == 0
    out = json.loads(capsys.readouterr().out)
    modalities = read_meta(tiny_package)["spec"]["modalities"]
    assert len(loads) == 1
    # the test split: with the branch heads, then each modality removed; val: fused only
    assert passes == [out["n"]] * (1 + len(modalities)) + [passes[-1]]
    monkeypatch.undo()
    alone = evaluate(tiny_package, threshold=out["threshold"])
    for k in ("auroc", "sensitivity", "branches", "without"):
        assert json.loads(json.dumps(alone[k])) == out[k], k


def test_evaluating_the_split_that_chose_the_threshold_says_it_is_optimistic(
    tiny_package: Path, capsys
) -> None:
    """``evaluate --split val`` printed its table under the same header as test, though val
    chose the threshold (and with keep: best, the epoch)."""
    from medfuse.api import evaluate

    assert "optimistic" not in evaluate(tiny_package)
    val = evaluate(tiny_package, split="val")
    assert "the val split chose" in val["optimistic"] and "the threshold" in val["optimistic"]
    assert "fitted on the train split" in evaluate(tiny_package, split="train")["optimistic"]
    assert main(["evaluate", str(tiny_package), "--split", "val", "--no-ci"]) == 0
    assert "optimistic:" in capsys.readouterr().err
