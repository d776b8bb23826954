"""An exported copy of the session's tiny package (export writes into a package: never into
the shared fixture itself)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def exported_package(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medfuse.export.exporter import export_package

    dst = tmp_path_factory.mktemp("exported") / "tiny"
    shutil.copytree(tiny_package, dst)
    res = export_package(dst, format="onnx")
    assert res.report is not None and res.report.ok, res.report
    return dst
