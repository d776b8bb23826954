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


#: the ECG model: leads by name and a sampling rate, as PTB-XL's config declares them
ECG_SPEC = {
    "name": "ecg-upload",
    "task": {"type": "binary", "positive": "positive"},
    "data": {
        "options": {"label": "label", "patient_column": "patient_id", "split_column": "split"}
    },
    "modalities": {
        "ecg": {"kind": "signal", "channels": 2, "length": 128, "leads": ["I", "II"], "rate": 128},
        "clinical": {"kind": "tabular", "columns": ["age", "bmi"]},
    },
    "branches": {
        "ecg": {"type": "cnn1d", "width": 4, "depth": 2, "out_features": 8},
        "clinical": {"type": "mlp", "hidden": 8, "out_features": 4},
    },
    "fusion": {"type": "concat"},
    "head": {"hidden": 8},
    "train": {"epochs": 2, "batch_size": 16, "early_stopping": None},
}


@pytest.fixture(scope="session")
def ecg_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An exported ECG package whose signal modality declares ``leads`` (I, II) and ``rate``
    (128 Hz), trained on the dicom-manifest example's WFDB and CSV records (leads I, II, V1 at
    256 Hz, some in uV); returns ``(package, example directory)``."""
    import copy

    from medfuse.api import train
    from medfuse.data.examples import make_dicom_example
    from medfuse.export.exporter import export_package

    root = tmp_path_factory.mktemp("ecg")
    manifest = make_dicom_example(root / "example", n=40, image_size=8, seed=1)
    spec = copy.deepcopy(ECG_SPEC)
    spec["data"]["source"] = f"manifest:{manifest}"
    pkg = train(spec, out=root / "pkg", device="cpu", progress=False).package
    res = export_package(pkg, format="onnx")
    assert res.report is not None and res.report.ok, res.report
    return pkg, manifest.parent
