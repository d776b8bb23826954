"""17.3c: verify recomputes the package's stored decisions through medfuse.json's own labels,
threshold, temperature and statistics: an edit that changes a decision fails verify."""

from __future__ import annotations

import pytest

from medfuse.export.verify import verify_package


def _swap_labels(m):
    m["labels"] = m["labels"][::-1]
    m["spec"]["task"]["labels"] = m["labels"]
    if m["spec"]["task"].get("positive"):  # the careful forger keeps the spec consistent
        m["spec"]["task"]["positive"] = m["labels"][1]


EDITS = {
    "labels swapped": _swap_labels,
    "threshold moved": lambda m: m["threshold"].update(value=0.97),
    "temperature changed": lambda m: m["calibration"].update(temperature=3.0),
    "a normalisation mean edited": lambda m: m["preprocessing"]["tabular"]["mean"].__setitem__(
        0, m["preprocessing"]["tabular"]["mean"][0] + 25.0
    ),
}


def test_the_untouched_package_verifies(pkg) -> None:
    report = verify_package(pkg)
    assert report.ok
    assert next(c for c in report.checks if c.runtime == "package").status == "ok"


@pytest.mark.parametrize("edit_name", list(EDITS))
def test_an_edited_decision_field_fails_verify(pkg, edit, cli, edit_name) -> None:
    edit(pkg, EDITS[edit_name])
    report = verify_package(pkg, runtimes=["onnx"])
    assert not report.ok, edit_name
    assert any(c.status == "fail" for c in report.checks)


def test_the_cli_says_verification_failed(pkg, edit, cli) -> None:
    edit(pkg, _swap_labels)
    code, out = cli("verify", str(pkg), "--runtime", "onnx")
    assert code == 1 and "FAILED" in out and "labels" in out


def test_calibrate_refreshes_the_stored_decisions(pkg) -> None:
    """A legitimate writer that changes a decision field keeps the package verifiable."""
    from medfuse.core.package import update_package

    update_package(pkg, meta_updates={"calibration": {"method": "temperature", "temperature": 2.0}})
    assert verify_package(pkg, runtimes=["onnx"]).ok
