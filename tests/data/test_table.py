"""A table in, a spec out (``medfuse.data.table``): column typing on real files (PNG, 12-bit
DICOM, WFDB, CSV signals, ``.npy``), the task and label order, the refusals, and that the manifest
source reads the inferred spec as it was meant (label order, ``;`` multilabel, ids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfuse.core.errors import DataError, SpecError
from medfuse.core.spec import complete_spec, parse_spec
from medfuse.data import load_data, load_spec_data
from medfuse.data.examples import write_csv_signal, write_dicom, write_png, write_wfdb
from medfuse.data.table import (
    default_epochs,
    infer_table_spec,
    spec_path_for,
    write_table_spec,
)

N = 24


def _export(d: Path, *, dicom_window: bool = True, labels: list[str] | None = None) -> Path:
    """A small hospital-style CSV: PNG and 12-bit DICOM images, WFDB and CSV ECGs, holes."""
    rng = np.random.default_rng(0)
    labels = labels or ["benign", "malignant"]
    rows = []
    for i in range(N):
        img = rng.integers(0, 256, (20, 24), dtype=np.uint8)
        if i % 6 == 5:
            image = ""
        elif i % 2:
            image = f"img/{i}.png"
            write_png(d / image, img)
        else:
            image = f"img/{i}.dcm"
            write_dicom(
                d / image,
                img.astype(np.uint16) * 16,
                intercept=-1024.0,
                window=(1016.0, 4080.0) if dicom_window else None,
                bits=12,
            )
        sig = rng.normal(size=(2, 100)).astype(np.float32)
        if i % 2:
            ecg = f"ecg/{i}.csv"
            write_csv_signal(d / ecg, sig, 100.0, ["I", "II"])
        else:
            ecg = f"ecg/{i}.hea"
            write_wfdb(d / f"ecg/{i}", sig, 100.0, ["I", "II"])
        rows.append(
            {
                "case_id": f"c{i}",
                "patient_id": f"p{i // 2}",
                "image": image,
                "ecg": ecg,
                "age": np.nan if i % 5 == 0 else 40 + i,
                "sex": "F" if i % 3 else "M",
                "note": f"free text {i}",
                "diagnosis": labels[i % len(labels)],
            }
        )
    path = d / "cases.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("table"))


def test_columns_are_typed_and_shapes_read_from_files(export: Path) -> None:
    ts = infer_table_spec(export, label="diagnosis", positive="malignant")
    kinds = {c.name: c.kind for c in ts.columns}
    assert kinds == {
        "diagnosis": "label",
        "case_id": "id",
        "patient_id": "patient",
        "image": "image",
        "ecg": "signal",
        "age": "numeric",
        "sex": "categorical",
        "note": "ignored",
    }
    spec = ts.spec
    assert spec["modalities"]["image"] == {
        "kind": "image",
        "channels": 1,
        "size": [20, 24],
        "window": "file",  # DICOM mixed with PNG: one scale through the DICOM's window
    }
    # every sampled record states 100 Hz and leads I, II: set, so that a record from another
    # device is resampled and picked by lead name at prediction instead of being refused
    assert spec["modalities"]["signal"] == {
        "kind": "signal",
        "channels": 2,
        "length": 100,
        "rate": 100.0,
        "leads": ["I", "II"],
    }
    assert spec["modalities"]["clinical"] == {"kind": "tabular", "columns": ["age", "sex"]}
    assert spec["data"]["options"]["columns"] == {"image": "image", "signal": "ecg"}
    assert spec["data"]["options"]["patient_column"] == "patient_id"
    assert spec["data"]["options"]["id_column"] == "case_id"
    assert spec["task"] == {
        "type": "binary",
        "labels": ["benign", "malignant"],
        "positive": "malignant",
    }
    assert spec["data"]["options"]["labels"] == ["benign", "malignant"]
    assert spec["data"]["source"] == f"manifest:{export.resolve()}"
    parse_spec(spec)  # valid as it stands
    text = ts.describe()
    assert "positive 'malignant'" in text and "free text" in text and "window: file" in text


def test_the_manifest_source_reads_the_inferred_spec(export: Path) -> None:
    spec = parse_spec(infer_table_spec(export, label="diagnosis", positive="benign").spec)
    bundle = load_spec_data(spec)
    assert bundle.labels == ["malignant", "benign"]  # the declared order, not sorted
    every = pd.concat([s.meta for s in (bundle.train, bundle.val, bundle.test) if s is not None])
    ys = np.concatenate([s.y for s in (bundle.train, bundle.val, bundle.test) if s is not None])
    truth = pd.read_csv(export).set_index("case_id")["diagnosis"]
    assert set(every["id"]) == set(truth.index)  # ids from the id column, not row-N
    assert all(
        y == (truth[i] == "benign") for i, y in zip(every["id"], ys, strict=True)
    )  # positive (1) is benign here
    # patient-grouped split: no patient in two splits
    parts = [set(s.meta["patient_id"]) for s in (bundle.train, bundle.val, bundle.test) if s]
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    # DICOM (12 bit, windowed) and PNG end on one scale: [0, 1]
    img = np.concatenate([bundle.train.arrays["image"], bundle.val.arrays["image"]])
    assert img.min() >= 0.0 and img.max() <= 1.0 and img.max() > 0.9


def test_binary_text_labels_need_a_positive_class(export: Path) -> None:
    with pytest.raises(SpecError, match=r"\['benign', 'malignant'\].*--positive malignant"):
        infer_table_spec(export, label="diagnosis")
    with pytest.raises(SpecError, match="did you mean 'malignant'"):
        infer_table_spec(export, label="diagnosis", positive="malignent")
    with pytest.raises(DataError, match="did you mean 'diagnosis'"):
        infer_table_spec(export, label="diagnosys", positive="malignant")


def test_numeric_binary_multiclass_and_multilabel_labels(tmp_path: Path) -> None:
    df = pd.DataFrame({"x": np.arange(12.0), "y": [0, 1] * 6})
    ts = infer_table_spec(df, label="y", csv_path=tmp_path / "a.csv")
    assert ts.spec["task"] == {"type": "binary", "labels": ["0", "1"], "positive": "1"}
    df["grade"] = [1, 2, 10] * 4  # ordinal grades: numeric order, not text order
    ts = infer_table_spec(df.drop(columns="y"), label="grade", csv_path=tmp_path / "b.csv")
    assert ts.spec["task"] == {"type": "multiclass", "labels": ["1", "2", "10"]}
    with pytest.raises(SpecError, match="applies to binary tasks"):
        infer_table_spec(df, label="grade", positive="2", csv_path=tmp_path / "c.csv")
    df = pd.DataFrame({"x": np.arange(12.0), "dx": ["MI;STTC", "NORM", "STTC", "CD;MI"] * 3})
    ts = infer_table_spec(df, label="dx", csv_path=tmp_path / "d.csv")
    assert ts.spec["task"] == {"type": "multilabel", "labels": ["CD", "MI", "NORM", "STTC"]}
    spec = parse_spec(ts.spec)
    bundle = load_spec_data(spec)
    y = np.concatenate([s.y for s in (bundle.train, bundle.val, bundle.test) if s is not None])
    assert y.shape[1] == 4 and sorted(y.sum(0).tolist()) == [3.0, 3.0, 6.0, 6.0]


def test_refusals(tmp_path: Path) -> None:
    d = tmp_path / "nowin"
    d.mkdir()
    path = _export(d, dicom_window=False)
    with pytest.raises(DataError, match=r"mixes DICOM.*not every DICOM carries a window"):
        infer_table_spec(path, label="diagnosis", positive="malignant")
    df = pd.DataFrame({"x": [1.0, 2, 3, 4], "y": ["a", "b", "c", "c"]})
    with pytest.raises(DataError, match="'a' of 'y' occurs once"):
        infer_table_spec(df, label="y", csv_path=tmp_path / "e.csv")
    df = pd.DataFrame({"x": np.arange(30.0), "y": np.linspace(0, 1, 30)})
    with pytest.raises(DataError, match="looks continuous"):
        infer_table_spec(df, label="y", csv_path=tmp_path / "h.csv")
    df = pd.DataFrame({"x": [1.0, 2, 3, 4], "y": ["a", None, "b", "b"]})
    with pytest.raises(DataError, match="row 3: empty label"):
        infer_table_spec(df, label="y", csv_path=tmp_path / "f.csv")
    df = pd.DataFrame({"x": [1.0, 2, 3, 4], "y": ["a", "b", "a", "b"]})
    with pytest.raises(DataError, match="no patient column 'pid'"):
        infer_table_spec(df, label="y", positive="b", patient_column="pid", csv_path=tmp_path / "g")


def test_task_labels_in_another_order_than_the_data_are_refused(export: Path) -> None:
    """A spec saying labels: [malignant, benign] over data coded [benign, malignant] would
    silently swap the classes; complete_spec refuses it."""
    spec = infer_table_spec(export, label="diagnosis", positive="malignant").spec
    spec["task"]["labels"] = ["malignant", "benign"]
    spec["task"].pop("positive")  # else the spec itself is refused: positive is labels[1]
    s = parse_spec(spec)
    bundle = load_data(s.data.source, s.data.options, modalities=s.modalities, task=s.task.type)
    with pytest.raises(SpecError, match=r"task\.labels.*data\.options\.labels"):
        complete_spec(s, bundle.modalities, bundle.labels)


def test_dataframe_paths_resolve_against_base_dir(export: Path, tmp_path: Path) -> None:
    df = pd.read_csv(export)
    ts, out, spec_file = write_table_spec(
        df,
        label="diagnosis",
        positive="malignant",
        out=tmp_path / "runs" / "m",
        base_dir=export.parent,
        overrides=["train.epochs=3"],
    )
    assert out == tmp_path / "runs" / "m" and spec_file == spec_path_for(out)
    assert spec_file == tmp_path / "runs" / "m.spec.yaml" and spec_file.exists()
    written = pd.read_csv(tmp_path / "runs" / "m.table.csv")
    cells = [c for c in written["image"].tolist() if isinstance(c, str)]
    assert cells and all(Path(c).is_absolute() and Path(c).exists() for c in cells)
    # where the DataFrame's relative paths resolve is recorded for prediction; the model is
    # named after the package folder, as for a CSV table
    assert ts.spec["data"]["options"]["base_dir"] == str(export.parent.resolve())
    assert ts.spec["name"] == "m"
    assert ts.spec["train"]["epochs"] == 3  # the override is in the saved spec
    assert "epochs: 3" in spec_file.read_text()


def test_default_epochs_aim_at_a_step_budget() -> None:
    assert default_epochs(350) == 40  # 6 steps an epoch: capped
    assert default_epochs(35_000) == 8  # 547 steps an epoch: the floor
    assert default_epochs(10_000) == 19


def test_cli_needs_a_spec_or_a_table(export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medfuse.cli import main

    cases = [
        (["synthetic", "--table", str(export)], "not both"),
        (["--table", str(export)], "--table needs --label"),
        (["synthetic", "--label", "diagnosis"], "go with --table"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["train", *args])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert main(["train", "--table", str(export), "--label", "diagnosis"]) == 2
    assert "--positive malignant" in capsys.readouterr().err


def test_npy_by_shape_and_large_images_scaled_down(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(8):
        np.save(tmp_path / f"s{i}.npy", rng.normal(size=(3, 500)).astype(np.float32))
        np.save(tmp_path / f"v{i}.npy", rng.normal(size=(1, 64, 256, 200)).astype(np.float32))
        write_png(tmp_path / f"p{i}.png", rng.integers(0, 256, (300, 200), dtype=np.uint8))
        rows.append({"sig": f"s{i}.npy", "vol": f"v{i}.npy", "photo": f"p{i}.png", "y": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    mods = infer_table_spec(tmp_path / "t.csv", label="y").spec["modalities"]
    assert mods["signal"] == {"kind": "signal", "channels": 3, "length": 500}
    assert mods["vol"] == {"kind": "image", "channels": 1, "size": [32, 128, 100]}
    assert mods["photo"] == {"kind": "image", "channels": 1, "size": [128, 85]}


def test_small_text_columns_are_categories_and_id_like_numbers_are_flagged(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {"sex": ["F", "M", "F", "M"] * 6, "mrn_no": np.arange(1000, 1024), "y": [0, 1] * 12}
    )
    ts = infer_table_spec(df, label="y", csv_path=tmp_path / "a.csv")
    assert {c.name: c.kind for c in ts.columns}["sex"] == "categorical"
    assert any("'mrn_no' holds a different whole number in every row" in n for n in ts.notes)
    small = infer_table_spec(df.iloc[:4], label="y", csv_path=tmp_path / "b.csv")
    assert {c.name: c.kind for c in small.columns}["sex"] == "categorical"


def test_text_that_starts_like_numbers_is_left_out_not_typed_categorical(tmp_path: Path) -> None:
    """A visit month (``2021-03``) or a stage code (``1a``) was printed as a categorical input,
    then training refused the column as numbers written as text: the inferred spec failed."""
    n = 24
    df = pd.DataFrame(
        {
            "visit": ["2021-03", "2021-04", "2021-05"] * (n // 3),
            "stage": ["1a", "2b", "3c"] * (n // 3),
            "sex": ["F", "M"] * (n // 2),
            "age": np.arange(40, 40 + n),
            "y": [0, 1] * (n // 2),
        }
    )
    ts = infer_table_spec(df, label="y", csv_path=tmp_path / "a.csv")
    kinds = {c.name: c.kind for c in ts.columns}
    assert kinds["visit"] == kinds["stage"] == "ignored" and kinds["sex"] == "categorical"
    assert any("'visit' holds text that starts like numbers" in x for x in ts.notes)
    assert ts.spec["modalities"]["clinical"]["columns"] == ["sex", "age"]
    spec = parse_spec(ts.spec)
    load_spec_data(spec)  # the inferred spec reads its own table
