"""Your own data: a declared positive class, validation before training, paths that travel and a
data fingerprint checked at evaluate (issues 15 and 17)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medfuse.core.errors import DataError, SpecError
from medfuse.core.spec import ModalitySpec, load_spec, parse_spec
from medfuse.data import Split, load_data
from medfuse.data.examples import write_png
from medfuse.data.validate import validate_bundle

N = 48


def _hospital(root: Path, n: int = N) -> Path:
    """A hospital-style export: PNG paths relative to the CSV, text labels (normal / abnormal;
    'abnormal' sorts first), a marker that separates them, a split column."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        y = i % 2
        img = write_png(root / "img" / f"c{i}.png", rng.integers(0, 255, (8, 8)).astype(np.uint8))
        rows.append(
            {
                "id": f"case{i}",
                "patient_id": f"p{i}",
                "diagnosis": ["normal", "abnormal"][y],
                "image": img.relative_to(root).as_posix(),
                "marker": 3.0 * y + rng.normal(0, 0.3),
                "age": 40 + (i * 7) % 30,
                "split": ["train", "train", "train", "val", "test", "train"][i % 6]
                if i >= 12
                else ["train", "val", "test"][i % 3],
            }
        )
    csv = root / "cases.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _spec(csv: Path | str, **task: Any) -> dict[str, Any]:
    return {
        "name": "own",
        "task": {"type": "binary", **task},
        "data": {
            "source": f"manifest:{csv}",
            "options": {"label": "diagnosis", "split_column": "split"},
        },
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [8, 8]},
            "clinical": {"kind": "tabular", "columns": ["marker", "age"]},
        },
        "branches": {
            "image": {"type": "cnn", "width": 4, "depth": 1, "out_features": 4},
            "clinical": {"type": "mlp", "hidden": 8, "out_features": 4},
        },
        "head": {"hidden": 8},
        "train": {"epochs": 4, "batch_size": 16, "lr": 0.01, "early_stopping": None},
    }


MODS = {
    "image": ModalitySpec(kind="image", channels=1, size=[8, 8]),
    "clinical": ModalitySpec(kind="tabular", columns=["marker", "age"]),
}
OPTS = {"label": "diagnosis", "split_column": "split"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(package, data folder): trained with task.positive: abnormal on a manifest."""
    from medfuse.api import train

    root = tmp_path_factory.mktemp("own")
    csv = _hospital(root / "data")
    pkg = train(_spec(csv, positive="abnormal"), out=root / "pkg", device="cpu", progress=False)
    return pkg.package, root / "data"


# ---- a declared positive class ----------------------------------------------------------------


def test_text_labels_without_a_positive_class_are_refused_with_the_line_to_add(
    tmp_path: Path,
) -> None:
    from medfuse.api import train

    csv = _hospital(tmp_path)
    with pytest.raises(SpecError, match=r"task\.positive") as e:
        train(_spec(csv), out=tmp_path / "pkg", device="cpu", progress=False)
    msg = str(e.value)
    assert "'abnormal' and 'normal'" in msg
    assert "task: {type: binary, positive: abnormal}" in msg
    assert "task: {type: binary, positive: normal}" in msg
    assert not (tmp_path / "pkg").exists()


def test_positive_class_orders_labels_negative_then_positive(tmp_path: Path) -> None:
    csv = _hospital(tmp_path)
    b = load_data(f"manifest:{csv}", OPTS, modalities=MODS, positive="abnormal")
    assert b.labels == ["normal", "abnormal"] and b.positive == "abnormal"
    df = pd.read_csv(csv)
    for s in (b.train, b.val, b.test):
        rows = s.meta["row"].to_numpy() - 2
        assert np.array_equal(s.y, (df["diagnosis"].to_numpy()[rows] == "abnormal").astype(float))
    # declaring the other class flips the targets
    b2 = load_data(f"manifest:{csv}", OPTS, modalities=MODS, positive="normal")
    assert b2.labels == ["abnormal", "normal"]
    assert np.array_equal(b2.train.y, 1 - b.train.y)
    with pytest.raises(SpecError, match="'malignant' is not one of the data's labels"):
        load_data(f"manifest:{csv}", OPTS, modalities=MODS, positive="malignant")


def test_prediction_ids_come_from_the_spec_id_column(tmp_path: Path) -> None:
    """Issue 15 item 5: a spec naming ``id_column: case_id`` predicts with case ids, never
    ``row-N`` nor the patient id (two cases of one patient must not share an id)."""
    from medfuse.core.inputs import Modality, Schema, coerce, layout_from_meta

    csv = _hospital(tmp_path)
    df = pd.read_csv(csv).rename(columns={"id": "case_id"})
    df["patient_id"] = [f"p{i // 2}" for i in range(len(df))]  # two cases per patient
    df.to_csv(csv, index=False)
    opts = {**OPTS, "id_column": "case_id"}
    b = load_data(f"manifest:{csv}", opts, modalities=MODS, positive="abnormal")
    layout = b.info["layout"]
    assert layout["id_column"] == "case_id" and layout["patient_column"] == "patient_id"
    meta = {"spec": {"data": {"options": opts}}, "data": {"layout": layout}}
    assert layout_from_meta(meta).id_column == "case_id"
    # packages written before this was recorded say "id": the spec's option decides
    old = {"spec": {"data": {"options": opts}}, "data": {"layout": {**layout, "id_column": "id"}}}
    assert layout_from_meta(old).id_column == "case_id"
    schema = Schema(
        {"image": Modality("image", "image", (1, 8, 8), channels=1, size=(8, 8))},
        layout_from_meta(meta),
    )
    batch = coerce(csv, schema)
    assert batch.ids == df["case_id"].tolist()
    assert set(b.train.meta["id"]) <= set(df["case_id"])


def test_numeric_01_labels_default_to_positive_1(tmp_path: Path) -> None:
    csv = _hospital(tmp_path)
    df = pd.read_csv(csv)
    df["diagnosis"] = (df["diagnosis"] == "abnormal").astype(float)  # 0.0 / 1.0
    df.to_csv(csv, index=False)
    b = load_data(f"manifest:{csv}", OPTS, modalities=MODS)
    assert b.labels == ["0", "1"] and b.positive == "1"
    df["diagnosis"] = df["diagnosis"].map({0.0: -1, 1.0: 1})
    df.loc[0, "diagnosis"] = 0
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"binary task needs 2 labels.*holds 3: -1, 0, 1"):
        load_data(f"manifest:{csv}", OPTS, modalities=MODS, task="binary")


def test_built_in_sources_and_shipped_configs_declare_their_positive_class() -> None:
    b = load_data("synthetic", {"n_train": 16, "n_val": 8, "n_test": 8})
    assert b.positive == "positive" and b.labels == ["negative", "positive"]
    expected = {
        "breastmnist": "normal/benign",  # MedMNIST's label 1, as its benchmark scores it
        "pneumoniamnist": "pneumonia",
        "synthetic": "positive",
        "dicom-manifest": "positive",
        "volume3d": "positive",
    }
    for name, positive in expected.items():
        assert load_spec(name).task.positive == positive, name
    for name in ("mitbih-interpatient", "ptbxl"):
        assert load_spec(name).task.positive is None


def test_positive_applies_to_binary_tasks_and_matches_declared_labels() -> None:
    base = {"data": {"source": "synthetic"}}
    with pytest.raises(SpecError, match="binary tasks only"):
        parse_spec({**base, "task": {"type": "multiclass", "positive": "x"}})
    with pytest.raises(SpecError, match=r"write labels: \['b', 'a'\]"):
        parse_spec({**base, "task": {"labels": ["a", "b"], "positive": "a"}})


def test_the_package_stores_and_shows_the_positive_class(trained, tmp_path: Path) -> None:
    from medfuse.api import evaluate
    from medfuse.report.html import write_report

    pkg, _ = trained
    meta = json.loads((pkg / "medfuse.json").read_text())
    assert meta["labels"] == ["normal", "abnormal"]
    assert meta["spec"]["task"]["positive"] == "abnormal"
    assert meta["data"]["scales"] == {"image": "8-bit display levels (0-255)"}  # no window
    m = evaluate(pkg, device="cpu")
    assert m["positive"] == "abnormal"
    assert m["auroc"] > 0.8  # P(abnormal) ranks the abnormal cases first
    path, _ = write_report(pkg, tmp_path / "r.html", n_boot=20)
    assert "Positive class: <b>abnormal</b>" in path.read_text()


def test_service_model_info_names_the_positive_class(trained) -> None:
    from medfuse.serve.service import Service

    info = Service(trained[0], runtime="torch").info()
    assert info["positive"] == "abnormal" and info["labels"] == ["normal", "abnormal"]


# ---- paths that travel, fingerprint at evaluate -----------------------------------------------


def test_prediction_reads_as_missing_the_strings_training_reads_as_missing(
    trained, tmp_path: Path
) -> None:
    """Training reads a manifest with pandas, whose default NA strings (``NA``, ``null``,
    ``N/A``, ...) are missing values; prediction's CSV reader reads the same cells as missing
    (it used to refuse them: the same file trained on but could not be predicted)."""
    from pandas._libs.parsers import STR_NA_VALUES

    import medfuse
    from medfuse.core.readers.medical import CSV_MISSING

    assert CSV_MISSING == STR_NA_VALUES  # one list: pandas' own
    pkg, data = trained
    shutil.copytree(data, tmp_path / "d")
    df = pd.read_csv(tmp_path / "d" / "cases.csv").head(8)
    df.assign(age="").to_csv(tmp_path / "d" / "blank.csv", index=False)
    na = ["NA", "null", "N/A", "nan", "NULL", "None", "<NA>", "#N/A"]
    df.assign(age=na).to_csv(tmp_path / "d" / "na.csv", index=False)
    assert pd.read_csv(tmp_path / "d" / "na.csv")["age"].isna().all()  # as training reads them
    pred = medfuse.load(pkg, device="cpu")
    blank = pred.predict_proba(str(tmp_path / "d" / "blank.csv"))
    np.testing.assert_array_equal(pred.predict_proba(str(tmp_path / "d" / "na.csv")), blank)


def test_moved_data_is_found_again_with_data(trained, tmp_path: Path, capsys) -> None:
    from medfuse.api import evaluate
    from medfuse.cli import main

    pkg, data = trained
    meta = json.loads((pkg / "medfuse.json").read_text())
    rec = meta["data"]["manifest"]
    assert rec["absolute"] == str((data / "cases.csv").resolve())
    assert set(meta["data"]["fingerprint"]) == {"train", "val", "test"}
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    hidden = data.with_name("hidden")
    data.rename(hidden)  # the data is no longer where training read it
    try:
        with pytest.raises(DataError, match="--data FILE"):
            evaluate(pkg, device="cpu")
        m = evaluate(pkg, device="cpu", data=moved / "cases.csv")
        assert m["data_check"] == {"same": True, "differences": []}
        rc = main(["evaluate", str(pkg), "--data", str(moved / "cases.csv"), "--no-ci"])
        err = capsys.readouterr().err
        assert rc == 0 and "positive class: 'abnormal'" in err
        assert "the same as recorded" in err
    finally:
        hidden.rename(data)


def test_a_relative_manifest_is_found_beside_the_spec_file(tmp_path: Path, monkeypatch) -> None:
    import yaml

    csv = _hospital(tmp_path / "study")
    spec_file = tmp_path / "study" / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec("cases.csv", positive="abnormal")))
    monkeypatch.chdir(tmp_path)  # cases.csv is not here, but beside the spec
    assert load_spec(spec_file).data.source == f"manifest:{csv}"
    (tmp_path / "cases.csv").write_text("id\n")  # one here wins: paths are from the working dir
    assert load_spec(spec_file).data.source == "manifest:cases.csv"


def test_manifest_under_the_data_root_travels_with_data_dir(tmp_path: Path) -> None:
    from medfuse.api import evaluate, train

    root = tmp_path / "root"
    _hospital(root / "study")
    spec = _spec("study/cases.csv", positive="abnormal")
    spec["train"]["epochs"] = 1
    res = train(spec, out=tmp_path / "pkg", data_dir=root, device="cpu", progress=False)
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["data"]["manifest"]["root_relative"] == "study/cases.csv"
    new_root = tmp_path / "moved"
    root.rename(new_root)
    m = evaluate(res.package, device="cpu", data_dir=new_root)
    assert m["data_check"]["same"] is True


def test_evaluate_says_when_the_data_differs_and_refuses_unknown_labels(
    trained, tmp_path: Path, capsys
) -> None:
    from medfuse.api import evaluate
    from medfuse.cli import main

    pkg, data = trained
    df = pd.read_csv(data / "cases.csv")
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    test_rows = df.index[df["split"] == "test"][:2]
    df2 = df.copy()
    df2.loc[test_rows, "diagnosis"] = "normal"
    df2.to_csv(changed / "cases.csv", index=False)
    m = evaluate(pkg, device="cpu", data=changed / "cases.csv")
    assert m["data_check"]["same"] is False
    assert any("label counts" in d for d in m["data_check"]["differences"])
    rc = main(["evaluate", str(pkg), "--data", str(changed / "cases.csv"), "--no-ci"])
    assert rc == 0 and "data DIFFERS" in capsys.readouterr().err
    from medfuse.report.html import write_report

    html, _ = write_report(pkg, tmp_path / "r.html", n_boot=20, data=changed / "cases.csv")
    assert "The data differs from what the package recorded" in html.read_text()
    df3 = df.copy()
    df3.loc[test_rows[0], "diagnosis"] = "borderline"
    df3.to_csv(changed / "cases.csv", index=False)
    with pytest.raises(DataError, match=r"label 'borderline' not in \['normal', 'abnormal'\]"):
        evaluate(pkg, device="cpu", data=changed / "cases.csv")
    rc = main(["evaluate", str(pkg), "--data", str(changed / "cases.csv"), "--no-ci"])
    assert rc != 0 and "borderline" in capsys.readouterr().err


# ---- every source validated once, before training ---------------------------------------------


def _bundle():
    return load_data("synthetic", {"n_train": 24, "n_val": 12, "n_test": 12})


def test_nan_and_infinite_images_are_refused_naming_array_and_rows() -> None:
    b = _bundle()
    b.train.arrays["image"][[3, 7]] = np.nan
    with pytest.raises(
        DataError, match=r"array 'image' \(image\): NaN or infinite.*train rows 3, 7"
    ):
        validate_bundle(b)
    b = _bundle()
    b.val.arrays["signal"][1, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"array 'signal'.*val row 1"):
        validate_bundle(b)


def test_lengths_dtypes_and_label_range_are_checked() -> None:
    b = _bundle()
    b.train = Split(
        {**b.train.arrays, "image": np.concatenate([b.train.arrays["image"]] * 5)},
        b.train.masks,
        b.train.y,
        b.train.meta,
    )
    with pytest.raises(DataError, match=r"array 'image' has 120 rows .* there are 24 labels"):
        validate_bundle(b)
    b = _bundle()
    b.test.y[[2, 5]] = -1
    with pytest.raises(DataError, match=r"labels: -1.0 at test rows 2, 5.*allows 0 \(negative\)"):
        validate_bundle(b)
    b = _bundle()
    b.labels, b.task = ["a", "b", "c"], "multiclass"
    for s in (b.train, b.val, b.test):
        s.y = s.y.astype(np.int64)
    b.train.y[0] = 3
    with pytest.raises(
        DataError, match=r"labels: 3 at train row 0 \(id synthetic-\d+-0\); a multiclass task"
    ):
        validate_bundle(b)


def test_infinite_tabular_cells_are_refused_nan_is_missing(tmp_path: Path) -> None:
    csv = _hospital(tmp_path)
    df = pd.read_csv(csv)
    df.loc[5, "age"] = np.nan
    df.to_csv(csv, index=False)
    load_data(f"manifest:{csv}", OPTS, modalities=MODS, positive="abnormal")  # NaN: missing
    df.loc[[7, 9], "marker"] = [np.inf, -np.inf]
    df.to_csv(csv, index=False)
    with pytest.raises(
        DataError,
        match=r"'clinical' column 'marker': infinite values at train row 3 \(manifest line 11\)",
    ):
        load_data(f"manifest:{csv}", OPTS, modalities=MODS, positive="abnormal")


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        (
            {3: "12 years", 4: "unknown"},
            r"column 'age' holds numbers and text \(rows 5, 6: '12 years'",
        ),
        ("all", r"column 'age' holds numbers written as text"),
    ],
)
def test_text_in_a_numeric_column_is_refused(tmp_path: Path, cells, message: str) -> None:
    csv = _hospital(tmp_path)
    df = pd.read_csv(csv)
    if cells == "all":
        df["age"] = [f"{a} y" for a in df["age"]]
    else:
        df["age"] = df["age"].astype(object)
        for i, v in cells.items():
            df.loc[i, "age"] = v
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=message):
        load_data(f"manifest:{csv}", OPTS, modalities=MODS, positive="abnormal")


def test_constant_inputs_warn_and_all_constant_is_refused(caplog) -> None:
    b = _bundle()
    b.train.arrays["tabular"][:, 1] = 5.0
    validate_bundle(b)
    assert "constant or empty in training (no information): bmi" in caplog.text
    for m in ("image", "signal", "tabular"):
        b.train.arrays[m][:] = 0.0
    with pytest.raises(DataError, match="every input is constant"):
        validate_bundle(b)


def test_zero_epochs_is_refused_unless_a_package_is_copied() -> None:
    base = {"data": {"source": "synthetic"}}
    with pytest.raises(SpecError, match=r"train\.epochs.*at least 1"):
        parse_spec({**base, "train": {"epochs": 0}})
    with pytest.raises(SpecError, match=r"train\.epochs"):
        parse_spec({**base, "train": {"stages": [{"name": "end_to_end", "epochs": 0}]}})
    spec = parse_spec({**base, "train": {"epochs": 0, "init": {"package": "p"}}})
    assert spec.train.epochs == 0
    copy.deepcopy(spec)


# ---- one intensity scale ----------------------------------------------------------------------


def test_a_package_refuses_files_on_another_scale_than_its_training_files(
    trained, tmp_path: Path
) -> None:
    """The package records its files' scale (8-bit PNGs, no window): the same pictures as 16-bit
    PNGs (x257) are refused by evaluate, calibrate and prediction, which would otherwise score
    values 257 times off; the 8-bit copy is evaluated as usual."""
    from PIL import Image

    from medfuse.api import evaluate
    from medfuse.core.inputs import InputError
    from medfuse.inference.predictor import load
    from medfuse.report.calibration import calibrate_package

    pkg, data = trained
    shutil.copytree(data, tmp_path / "d16")
    for png in (tmp_path / "d16" / "img").glob("*.png"):
        write_png(png, np.asarray(Image.open(png)).astype(np.uint16) * 257)
    csv16 = tmp_path / "d16" / "cases.csv"
    scales = r"trained on files with 8-bit display levels \(0-255\); these have 16-bit display"
    with pytest.raises(DataError, match=f"cases.csv: image modality 'image' was {scales}"):
        evaluate(pkg, data=csv16, device="cpu")
    with pytest.raises(DataError, match=scales):
        calibrate_package(pkg, data=csv16, out=tmp_path / "calibrated", device="cpu")
    assert not (tmp_path / "calibrated").exists()
    pred = load(pkg, device="cpu")
    row = {"clinical": {"marker": 3.0, "age": 50}}
    with pytest.raises(InputError, match=f"c0.png: image modality 'image' was {scales}"):
        pred.predict_proba([{**row, "image": str(tmp_path / "d16" / "img" / "c0.png")}])
    p8 = pred.predict_proba([{**row, "image": str(data / "img" / "c0.png")}])
    assert np.isfinite(p8).all()
    assert evaluate(pkg, data=data / "cases.csv", device="cpu")["data_check"]["same"]


def test_a_dicoms_scale_is_its_modality_and_bit_depth_except_ct_in_hu(tmp_path: Path) -> None:
    """8-bit and 12-bit MR DICOMs of the same pictures are two scales (refused together); CT is
    in Hounsfield units at any bit depth; a package of an older medfuse, which recorded one
    scale for every DICOM, still accepts DICOMs."""
    from medfuse.core.readers.base import LEGACY_DICOM_SCALE, native_scale, same_scale
    from medfuse.data.examples import write_dicom

    px = np.random.default_rng(0).integers(0, 255, (8, 8)).astype(np.uint16)
    mr8 = write_dicom(tmp_path / "mr8.dcm", px.astype(np.uint8), bits=8, modality="MR")
    mr12 = write_dicom(tmp_path / "mr12.dcm", px * 16, bits=12, modality="MR")
    ct12 = write_dicom(tmp_path / "ct12.dcm", px * 16, bits=12, intercept=-1024)
    ct16 = write_dicom(tmp_path / "ct16.dcm", px * 16, bits=16, intercept=-1024)
    assert native_scale(mr8) == "DICOM MR values (8-bit unsigned stored)"
    assert native_scale(mr12) == "DICOM MR values (12-bit unsigned stored)"
    assert native_scale(ct12) == native_scale(ct16) == "DICOM CT values (HU)"
    assert same_scale(LEGACY_DICOM_SCALE, native_scale(mr12))
    assert not same_scale(native_scale(mr8), native_scale(mr12))
    assert not same_scale(LEGACY_DICOM_SCALE, "8-bit display levels (0-255)")

    csv = _hospital(tmp_path)
    df = pd.read_csv(csv)
    for i in range(len(df)):
        bits = 8 if i % 2 else 12
        stored = px.astype(np.uint8) if bits == 8 else px * 16
        write_dicom(tmp_path / f"d{i}.dcm", stored, bits=bits, modality="MR")
        df.loc[i, "image"] = f"d{i}.dcm"
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"different intensity scales: DICOM MR values \(12-bit"):
        load_data(f"manifest:{csv}", OPTS, modalities=MODS, positive="abnormal")


def _ecg(y: int, fs: float, rng: np.random.Generator) -> np.ndarray:
    """Two leads, 1.28 s: the class in lead I's frequency, lead II small."""
    t = np.arange(int(fs * 1.28)) / fs
    sig = np.stack([np.sin(2 * np.pi * (2 + 6 * y) * t), 0.2 * np.cos(2 * np.pi * t)])
    return sig + 0.05 * rng.normal(size=sig.shape)


def _ecg_manifest(root: Path, n: int = 30) -> Path:
    from medfuse.data.examples import write_wfdb

    rng, rows = np.random.default_rng(0), []
    for i in range(n):
        hea = write_wfdb(root / f"r{i}", _ecg(i % 2, 100, rng), 100, ["I", "II"])
        split = ["train", "train", "train", "val", "test"][i % 5]
        rows.append({"id": f"c{i}", "ecg": hea.name, "label": i % 2, "split": split})
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return root / "m.csv"


ECG = ModalitySpec(kind="signal", channels=2, length=128)


def test_a_signals_scale_is_its_rate_and_lead_order_unless_the_modality_fixes_them(
    tmp_path: Path,
) -> None:
    from medfuse.core.readers.base import file_scale
    from medfuse.data.examples import write_csv_signal, write_wfdb

    sig = _ecg(1, 100, np.random.default_rng(0))
    hea = write_wfdb(tmp_path / "r", sig, 100, ["I", "II"])
    csv = write_csv_signal(tmp_path / "s.csv", sig, 250, ["I", "II"])
    untimed = write_csv_signal(tmp_path / "u.csv", sig, 250, ["I", "II"], time=False)
    assert file_scale(hea, ECG) == "100 Hz sampling and leads I, II"
    assert file_scale(csv, ECG) == "250 Hz sampling and leads I, II"
    assert file_scale(untimed, ECG) == "no stated sampling rate and leads I, II"
    rate = ECG.model_copy(update={"rate": 100.0})
    both = rate.model_copy(update={"leads": ["I", "II"]})
    assert file_scale(hea, rate) == "leads I, II" and file_scale(hea, both) == ""
    # the table spec sets what every sampled record states alike, nothing the records disagree on
    from medfuse.data.table import _fixed_layout

    i_ii = ["I", "II"]
    assert _fixed_layout([(100.0, i_ii), (100.0, i_ii)], 2) == {"rate": 100.0, "leads": i_ii}
    assert _fixed_layout([(100.0, i_ii), (400.0, i_ii)], 2) == {"leads": i_ii}
    assert _fixed_layout([(100.0, i_ii), (100.0, ["II", "I"])], 2) == {"rate": 100.0}
    assert _fixed_layout([(100.0, i_ii), None], 2) == {}  # an .npy states neither


def test_invalid_samples_are_interpolated_with_rate_whatever_the_records_own_rate(
    tmp_path: Path,
) -> None:
    """A gap (NaN) in a record read with ``rate``: interpolated at 100 Hz stored (no resampling
    needed) as at 400 Hz; without ``rate`` the reader keeps it (refused later as non-finite)."""
    from medfuse.core.readers import read_modality
    from medfuse.data.examples import write_csv_signal

    rng = np.random.default_rng(0)
    at = ECG.model_copy(update={"rate": 100.0})
    for fs in (100, 400):
        sig = _ecg(1, fs, rng)
        sig[0, 10:14] = np.nan
        path = write_csv_signal(tmp_path / f"gap{fs}.csv", sig, fs, ["I", "II"])
        assert np.isfinite(read_modality(path, at)).all(), fs
    assert np.isnan(read_modality(tmp_path / "gap100.csv", ECG)).any()


@pytest.mark.parametrize("stream", [False, True])
def test_a_manifest_mixing_rates_or_lead_orders_is_refused_unless_rate_and_leads_are_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """100 and 400 Hz records, or leads I, II and II, I, without rate / leads: the reader would
    keep each file's own, so they are refused with the rows of each; rate and leads read them
    all alike."""
    from medfuse.data.examples import write_wfdb

    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(tmp_path / "cache"))
    csv = _ecg_manifest(tmp_path)
    rng = np.random.default_rng(1)
    write_wfdb(tmp_path / "fast", _ecg(1, 400, rng), 400, ["I", "II"])
    write_wfdb(tmp_path / "swap", _ecg(1, 100, rng)[::-1], 100, ["II", "I"])
    df = pd.read_csv(csv)
    df.loc[0, "ecg"], df.loc[1, "ecg"] = "fast.hea", "swap.hea"
    df.to_csv(csv, index=False)
    opts = {"label": "label", "split_column": "split"}
    kw = {"task": "binary", "stream": stream}
    with pytest.raises(DataError, match=r"different sampling rates or lead orders: 400 Hz samp"):
        load_data(f"manifest:{csv}", opts, modalities={"ecg": ECG}, **kw)
    fixed = ECG.model_copy(update={"rate": 100.0, "leads": ["I", "II"]})
    b = load_data(f"manifest:{csv}", opts, modalities={"ecg": fixed}, **kw)
    assert "ecg" not in b.info.get("scales", {})


def test_a_package_refuses_a_record_of_another_rate_or_lead_order(tmp_path: Path) -> None:
    """Trained on 100 Hz records with leads I, II and no rate / leads: the same recording from a
    400 Hz device, or stored II, I, is refused at prediction (it was scored silently, its
    decision flipped); with rate and leads the package reads all three alike."""
    from scipy.signal import resample_poly

    from medfuse.api import train
    from medfuse.core.inputs import InputError
    from medfuse.data.examples import write_wfdb
    from medfuse.inference.predictor import load

    csv = _ecg_manifest(tmp_path)
    sig = _ecg(1, 100, np.random.default_rng(2))
    q = {
        "100": write_wfdb(tmp_path / "q100", sig, 100, ["I", "II"]),
        "400": write_wfdb(tmp_path / "q400", resample_poly(sig, 4, 1, axis=1), 400, ["I", "II"]),
        "swap": write_wfdb(tmp_path / "qswap", sig[::-1], 100, ["II", "I"]),
    }
    for extra in ({}, {"rate": 100, "leads": ["I", "II"]}):
        spec = {
            "name": "ecg",
            "task": {"type": "binary"},
            "data": {"source": f"manifest:{csv}", "options": {"split_column": "split"}},
            "modalities": {"ecg": {"kind": "signal", "channels": 2, "length": 128, **extra}},
            "branches": {"ecg": {"type": "cnn1d", "width": 4, "depth": 1, "out_features": 4}},
            "head": {"hidden": 8},
            "train": {"epochs": 1, "batch_size": 8, "early_stopping": None},
        }
        pkg = train(spec, out=tmp_path / f"pkg{len(extra)}", device="cpu", progress=False)
        meta = json.loads((pkg.package / "medfuse.json").read_text())
        pred = load(pkg.package, device="cpu")
        p100 = pred.predict_proba([{"ecg": str(q["100"])}])
        if extra:
            assert "ecg" not in meta["data"].get("scales", {})
            for k in ("400", "swap"):
                np.testing.assert_allclose(
                    pred.predict_proba([{"ecg": str(q[k])}]), p100, atol=0.05
                )
            continue
        assert meta["data"]["scales"] == {"ecg": "100 Hz sampling and leads I, II"}
        from fastapi.testclient import TestClient

        from medfuse.serve.app import create_app

        app = TestClient(create_app(pkg.package, runtime="torch"))
        shown = app.get("/v1/model").json()["modalities"]["ecg"]
        assert (shown["scale"], shown["rate"], shown["leads"]) == (
            "100 Hz sampling and leads I, II",
            None,
            None,
        )
        for k, found in (("400", "400 Hz sampling and leads I, II"), ("swap", "leads II, I")):
            with pytest.raises(InputError, match=f"q{k}.hea: signal modality 'ecg' was trained"):
                pred.predict_proba([{"ecg": str(q[k])}])
            with pytest.raises(InputError, match=found):
                pred.predict_proba([{"ecg": str(q[k])}])


def test_a_manifest_mixing_png_and_dicom_trains_on_one_scale_or_is_refused(tmp_path: Path) -> None:
    """8-bit PNGs (0-255) and 12-bit DICOMs (0-4095) of the same pictures: refused as they are,
    read on one [0, 1] scale with window: unit."""
    from medfuse.data.examples import write_dicom

    csv = _hospital(tmp_path)
    df = pd.read_csv(csv)
    rng = np.random.default_rng(1)
    pictures = rng.uniform(0, 1, (len(df), 8, 8))
    for i in range(len(df)):
        if i % 2:
            write_dicom(
                tmp_path / f"d{i}.dcm", np.round(pictures[i] * 4095).astype(np.uint16), bits=12
            )
            df.loc[i, "image"] = f"d{i}.dcm"
        else:
            write_png(tmp_path / df.loc[i, "image"], np.round(pictures[i] * 255).astype(np.uint8))
    df.to_csv(csv, index=False)
    with pytest.raises(
        DataError, match=r"different intensity scales: 8-bit display levels \(0-255\) \(rows 2, 4"
    ):
        load_data(f"manifest:{csv}", OPTS, modalities=MODS, positive="abnormal")
    mods = {**MODS, "image": ModalitySpec(kind="image", channels=1, size=[8, 8], window="unit")}
    b = load_data(f"manifest:{csv}", OPTS, modalities=mods, positive="abnormal")
    for s in (b.train, b.val, b.test):
        rows = s.meta["row"].to_numpy() - 2
        np.testing.assert_allclose(s.arrays["image"][:, 0], pictures[rows], atol=2.5e-3)
