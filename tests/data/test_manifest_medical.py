"""A manifest mixing DICOM, PNG, WFDB, CSV signals and tabular columns, with 30% of images
missing and some corrupt files: loading, ``on_bad_row``, and the CLI end to end (train, then
evaluate with paired / partial metrics)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfuse.core.errors import DataError
from medfuse.core.spec import ModalitySpec, load_spec
from medfuse.data import load_data
from medfuse.data.examples import make_dicom_example, make_volume_example

REPO = Path(__file__).resolve().parents[2]
N = 60


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dicom-manifest example, small, with 2 corrupt files (a DICOM and a WFDB record)."""
    d = tmp_path_factory.mktemp("dicom-example")
    return make_dicom_example(d, n=N, image_size=16, bad_files=2, seed=3)


def _modalities() -> dict[str, ModalitySpec]:
    spec = load_spec("dicom-manifest")
    mods = dict(spec.modalities)
    mods["image"] = mods["image"].model_copy(update={"size": [16, 16]})
    return mods


def test_example_files_are_what_the_manifest_says(example: Path) -> None:
    df = pd.read_csv(example)
    assert len(df) == N
    img = df["image"].fillna("")
    missing = (img == "").mean()
    assert 0.15 <= missing <= 0.45  # about 30% of images missing
    kinds = {Path(v).suffix for v in img if v}
    assert kinds == {".dcm", ".png"}
    assert {Path(v).suffix for v in df["ecg"]} == {".hea", ".csv"}
    assert df["marker"].isna().any() and df["sex"].isin(["F", "M"]).all()


def test_on_bad_row_fail_names_the_row(example: Path) -> None:
    with pytest.raises(
        DataError, match=r"manifest\.csv row \d+ \((image|ecg)\): .*(corrupt|nodata)"
    ):
        load_data(
            f"manifest:{example}",
            {},
            modalities=_modalities(),
            on_bad_row="fail",
            positive="positive",
        )
    with pytest.raises(DataError, match=r"use data\.on_bad_row=missing"):
        load_data(
            f"manifest:{example}",
            {},
            modalities=_modalities(),
            on_bad_row="fail",
            positive="positive",
        )


def test_on_bad_row_missing_counts_rows_and_reads_every_format(example: Path) -> None:
    b = load_data(
        f"manifest:{example}",
        {},
        modalities=_modalities(),
        on_bad_row="missing",
        positive="positive",
    )
    bad = b.info["bad_rows"]
    assert len(bad) == 2
    assert any("(image)" in m and "corrupt.dcm" in m for m in bad)
    assert any("(ecg)" in m and "nodata.hea" in m for m in bad)
    df = pd.read_csv(example)
    splits = [b.train, b.val, b.test]
    rows = np.concatenate([s.meta["row"].to_numpy() for s in splits])
    img_mask = np.concatenate([s.masks["image"] for s in splits])
    ecg_mask = np.concatenate([s.masks["ecg"] for s in splits])
    img = np.concatenate([s.arrays["image"] for s in splits])
    ecg = np.concatenate([s.arrays["ecg"] for s in splits])
    cells = df["image"].fillna("").to_numpy()[rows - 2]
    readable = np.array([bool(c) and "corrupt" not in c for c in cells])
    np.testing.assert_array_equal(img_mask > 0, readable)  # empty cell or corrupt -> missing
    assert (ecg_mask == 0).sum() == 1
    # windowed DICOM (MONOCHROME1 or 2) and bit-depth-scaled PNG agree in range and level
    is_png = np.array([c.endswith(".png") for c in cells])
    present = img_mask > 0
    assert img[present].min() >= 0.0 and img[present].max() <= 1.0
    assert abs(img[present & is_png].mean() - img[present & ~is_png].mean()) < 0.1
    assert img[~present].max() == 0.0
    # ECGs in uV and mV, WFDB and CSV: all millivolts at 128 Hz, length 128, 2 leads
    assert ecg.shape[1:] == (2, 128)
    amp = ecg[ecg_mask > 0].std(axis=(1, 2))
    assert amp.max() / amp.min() < 5


@pytest.mark.slow
def test_cli_train_then_evaluate_reports_paired_metrics(example: Path, tmp_path: Path) -> None:
    """The acceptance run: mixed formats, 30% images missing, corrupt rows -> no crash."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pkg = tmp_path / "pkg"
    train = subprocess.run(
        [sys.executable, "-m", "medfuse", "train", "dicom-manifest", "--out", str(pkg),
         "--set", f"data.source=manifest:{example}", "--set", "modalities.image.size=[16, 16]",
         "--set", "train.epochs=3", "--device", "cpu", "--on-bad-row", "missing", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert "2 unreadable cells treated as missing modalities" in train.stderr
    out = json.loads(train.stdout)
    assert {"paired", "partial", "without"} <= set(out["metrics"]["test"])
    meta = json.loads((pkg / "medfuse.json").read_text())
    assert meta["data"]["bad_rows"] == 2
    assert meta["spec"]["data"]["on_bad_row"] == "missing"

    ev = subprocess.run(
        [sys.executable, "-m", "medfuse", "evaluate", str(pkg), "--device", "cpu",
         "--bootstrap", "20", "-o", str(tmp_path / "m.json")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-3000:]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["paired"]["n"] + m["partial"]["n"] == m["n"]
    assert 0 < m["paired"]["n"] < m["n"]
    assert set(m["without"]) == {"image", "ecg", "clinical"}
    for row in ("fully paired vs partial", "paired (n=", "partial (n=", "without image"):
        assert row in ev.stdout
    assert np.isfinite(m["auroc"]) and np.isfinite(m["paired"]["auroc"])

    # the training manifest itself is a valid prediction input (its layout, its categories)
    run = [sys.executable, "-m", "medfuse", "predict", str(pkg), "--input", str(example)]
    bad = subprocess.run(run, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 3 and "--on-bad-row missing" in bad.stderr, bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr
    preds = tmp_path / "preds.csv"
    ok = subprocess.run(
        [*run, "--on-bad-row", "missing", "--out", str(preds)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    df = pd.read_csv(preds, keep_default_na=False)
    assert len(df) == len(pd.read_csv(example))
    given = df[[c for c in df.columns if c.startswith("reason_")]].ne("").sum().sum()
    assert given == 2  # the two unreadable cells, each with its reason
    assert (df["label"] != "").all()


def test_volume3d_config_trains_on_generated_nifti(tmp_path: Path) -> None:
    from medfuse.api import train

    manifest = make_volume_example(tmp_path / "vol", n=40, size=12)
    res = train(
        "volume3d",
        out=tmp_path / "pkg",
        device="cpu",
        progress=False,
        overrides=[
            f"data.source=manifest:{manifest}",
            "modalities.volume.size=[4, 12, 12]",
            "train.epochs=2",
        ],
    )
    assert res.package.is_dir()
    assert np.isfinite(res.metrics["test"]["auroc"])
    assert set(res.metrics["test"]["without"]) == {"volume", "clinical"}
    assert "paired" not in res.metrics["test"]  # nothing missing: no paired/partial split
