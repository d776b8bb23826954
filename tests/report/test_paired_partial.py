"""The clinical evaluation (and the HTML report made from it) shows the model on the samples
with every modality and on those missing one, with intervals: a model that is good on complete
cases and poor on the others is not hidden in one pooled figure."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import medfuse
from medfuse.report.clinical import clinical_evaluation
from medfuse.report.html import write_report


@pytest.fixture
def partial_package(tiny_spec: dict, tmp_path: Path) -> Path:
    """The tiny three-modality package, trained with the signal missing in 40% of the samples."""
    spec = copy.deepcopy(tiny_spec)
    spec["data"]["options"]["missing"] = {"signal": 0.4}
    return medfuse.train(spec, out=tmp_path / "pkg", device="cpu", progress=False).package


def test_paired_and_partial_samples_get_their_own_rows(partial_package: Path) -> None:
    ev = clinical_evaluation(partial_package, n_boot=50, subgroup=None)
    pr = ev.predictions
    paired = np.all([np.asarray(k) > 0 for k in pr.masks.values()], axis=0)
    assert 2 <= paired.sum() < len(paired) - 2  # some samples of each kind
    rows = ev.summary["per_modality"]["rows"]
    full, part = rows["fully paired"], rows["partial (a modality missing)"]
    assert full["n"] == paired.sum() and part["n"] == (~paired).sum()
    for sel, row in ((paired, full), (~paired, part)):
        want = roc_auc_score(pr.y[sel], pr.p[sel])
        assert row["auroc"]["value"] == pytest.approx(want, abs=1e-12)
        assert "sensitivity" in row and "lo" in row["auroc"]
    assert "'fully paired' / 'partial'" in ev.summary["per_modality"]["note"]
    html = write_report(partial_package, partial_package.parent / "r.html", n_boot=20)[0]
    text = html.read_text()
    assert "fully paired (n=" in text and "partial (a modality missing) (n=" in text


def test_no_partial_rows_when_every_sample_is_complete(tiny_package: Path) -> None:
    rows = clinical_evaluation(tiny_package, n_boot=20, subgroup=None).summary["per_modality"]
    assert not [k for k in rows["rows"] if k.startswith(("fully paired", "partial"))]
