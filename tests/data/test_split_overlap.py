"""Manifest splits: held-out rows sharing a file, id or patient with training rows are warned
about (and recorded); an existing package's evaluation reads only the split it evaluates (an
external test set whose every row is ``test``) and says how many manifest rows it evaluated."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medfuse.core.errors import DataError
from medfuse.core.spec import ModalitySpec
from medfuse.data import load_data
from medfuse.data.examples import write_png

MODS = {
    "image": ModalitySpec(kind="image", channels=1, size=[8, 8]),
    "clinical": ModalitySpec(kind="tabular", columns=["age"]),
}


def _manifest(root: Path, n: int = 20, seed: int = 0, splits: bool = True) -> Path:
    """n 8x8 PNGs (brighter when positive), an age column, ids s0..; 60/20/20 split column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        y = i % 2
        img = np.clip(rng.normal(90 + 60 * y, 30, (8, 8)), 0, 255).astype(np.uint8)
        write_png(root / "img" / f"{i}.png", img)
        row: dict[str, Any] = {
            "id": f"s{i}",
            "label": y,
            "image": f"img/{i}.png",
            "age": 50 + 10 * rng.normal() + 5 * y,
        }
        if splits:
            row["split"] = "train" if i < n * 0.6 else ("val" if i < n * 0.8 else "test")
        rows.append(row)
    csv = root / "cases.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _load(csv: Path, **kw: Any):
    return load_data(f"manifest:{csv}", {}, modalities=MODS, task="binary", **kw)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "medfuse.data" and r.levelno == logging.WARNING
    ]


# ---- train/test overlap -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_shared_files_and_ids_are_warned_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Test rows 16..19 (CSV rows 18..21) copy train rows 0..3: the file once relative, once
    absolute, once through a link; two also share the id. One warning per kind, naming the split
    pair, the count, the CSV rows and what is shared; the records in info["overlap"]."""
    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(tmp_path / "cache"))
    csv = _manifest(tmp_path)
    df = pd.read_csv(csv)
    os.symlink(tmp_path / "img" / "3.png", tmp_path / "img" / "link3.png")
    df.loc[16, "image"] = "img/0.png"  # relative, as train row 0 names it
    df.loc[17, "image"] = str(tmp_path / "img" / "1.png")  # absolute
    df.loc[18, "image"] = str(tmp_path / "img" / ".." / "img" / "2.png")  # with '..'
    df.loc[19, "image"] = "img/link3.png"  # a link to train row 3's file
    df.loc[16, "id"], df.loc[17, "id"] = "s0", "s1"
    df.to_csv(csv, index=False)

    with caplog.at_level(logging.WARNING, logger="medfuse.data"):
        b = _load(csv, stream=stream)
    msgs = _warnings(caplog)
    files = [m for m in msgs if "the same file in two splits" in m]
    ids = [m for m in msgs if "the same sample id in two splits" in m]
    assert len(files) == 1 and len(ids) == 1, msgs
    assert "4 test rows share a file (column 'image') with train rows" in files[0]
    assert f"row 18 (train row 2: {(tmp_path / 'img' / '0.png').resolve()})" in files[0]
    assert "and 1 more" in files[0]
    assert "test metrics are then partly measured on training samples" in files[0]
    assert "column 'split'" in files[0]
    assert "2 test rows share a sample id (column 'id') with train rows" in ids[0]
    assert "row 18 (train row 2: s0), row 19 (train row 3: s1)" in ids[0]

    rec = {r["kind"]: r for r in b.info["overlap"]}
    assert rec["file"]["splits"] == ["train", "test"] and rec["file"]["rows"] == 4
    assert rec["file"]["first"][0] == {
        "row": 18,
        "train_row": 2,
        "file": str((tmp_path / "img" / "0.png").resolve()),
    }
    assert rec["id"]["rows"] == 2 and rec["id"]["shared"] == 2
    assert len(b.test) == 4  # a warning, not a refusal


def test_val_test_and_patient_overlap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A patient in train and val, and a test file also in val: the patient warning names the
    patient column; the file warning the val/test pair and the samples that chose the epoch."""
    csv = _manifest(tmp_path)
    df = pd.read_csv(csv)
    df["patient_id"] = [f"p{i}" for i in range(len(df))]
    df.loc[12, "patient_id"] = "p0"  # val row 12 (CSV row 14): train row 0's patient
    df.loc[18, "image"] = "img/13.png"  # test row 18 (CSV row 20): val row 13's file
    df.to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING, logger="medfuse.data"):
        b = _load(csv)
    msgs = _warnings(caplog)
    (patient,) = [m for m in msgs if "the same patient in two splits" in m]
    assert "1 val row shares a patient (column 'patient_id') with train rows: row 14 " in patient
    assert "(train row 2: p0)" in patient and "The val metrics" in patient
    (file,) = [m for m in msgs if "the same file in two splits" in m]
    assert "1 test row shares a file (column 'image') with val rows: row 20 (val row 15" in file
    assert "validation samples that chose the epoch" in file
    kinds = sorted((r["kind"], tuple(r["splits"])) for r in b.info["overlap"])
    assert kinds == [("file", ("val", "test")), ("patient", ("train", "val"))]


def test_no_overlap_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Distinct files and ids: nothing logged, an empty record; a file shared within one split is
    not an overlap."""
    csv = _manifest(tmp_path)
    df = pd.read_csv(csv)
    df.loc[1, "image"] = "img/0.png"  # two train rows, one file
    df.to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING, logger="medfuse.data"):
        b = _load(csv)
    assert not [m for m in _warnings(caplog) if "in two splits" in m]
    assert b.info["overlap"] == []


def test_training_still_needs_train_and_val(tmp_path: Path) -> None:
    """Outside an evaluation, an all-test manifest is refused, saying what to do."""
    csv = _manifest(tmp_path)
    df = pd.read_csv(csv)
    df["split"] = "test"
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"train or val empty .*mark some rows 'train'.*evaluate"):
        _load(csv)


# ---- evaluating an external test set -------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory, image_age_spec: Any) -> Path:
    """A tiny image + tabular package trained on a 20-row manifest (in memory)."""
    from medfuse.api import train

    root = tmp_path_factory.mktemp("overlap_train")
    csv = _manifest(root, n=20)
    spec = image_age_spec(csv, "overlap", 1)
    return train(spec, out=root / "pkg", device="cpu", progress=False).package


def _external(root: Path, split: str | None = "test") -> Path:
    csv = _manifest(root, n=16, seed=2, splits=split is not None)
    if split is not None:
        df = pd.read_csv(csv)
        df["split"] = split
        df.to_csv(csv, index=False)
    return csv


def test_evaluate_an_all_test_external_set(package: Path, tmp_path: Path) -> None:
    from medfuse.api import evaluate

    out = evaluate(package, data=_external(tmp_path), device="cpu")
    assert out["n"] == 16
    # the package keeps what the check found in its training manifest (nothing shared here)
    assert json.loads((package / "medfuse.json").read_text())["data"]["overlap"] == []
    rows = out["data_rows"]
    assert (rows["evaluated"], rows["rows"], rows["column"]) == (16, 16, "split")
    assert rows["empty_splits"] == ["train", "val"]
    assert rows["text"] == "16 of 16 manifest rows evaluated: those marked 'test' in column 'split'"


def test_evaluate_without_split_column_says_so(package: Path, tmp_path: Path) -> None:
    from medfuse.api import evaluate

    out = evaluate(package, data=_external(tmp_path, None), device="cpu")
    rows = out["data_rows"]
    assert rows["rows"] == 16 and rows["evaluated"] == out["n"] < 16
    assert rows["column"] is None and rows["seed"] == 0
    assert f"{out['n']} of 16 manifest rows evaluated" in rows["text"]
    assert "split by the training seed (0)" in rows["text"]
    assert "add a column 'split' holding 'test' in every row" in rows["text"]


def test_evaluate_refuses_an_empty_requested_split(package: Path, tmp_path: Path) -> None:
    from medfuse.api import evaluate

    with pytest.raises(DataError, match=r"no row of the val split .*'val' in column 'split'"):
        evaluate(package, data=_external(tmp_path), split="val", device="cpu")


def test_cli_evaluate_external_set(
    package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's default evaluation (bootstrap CIs) reads the all-test set too, and prints how
    many rows; --threshold-method (chosen on val) is refused without val rows."""
    from medfuse.cli import main

    csv = _external(tmp_path)
    rc = main(
        ["evaluate", str(package), "--data", str(csv), "--device", "cpu", "--bootstrap", "50"]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "16 of 16 manifest rows evaluated: those marked 'test' in column 'split'" in err
    argv = ["evaluate", str(package), "--data", str(csv), "--device", "cpu"]
    assert main([*argv, "--threshold-method", "youden"]) != 0
    err = capsys.readouterr().err
    assert "--threshold-method" in err and "has no val rows" in err


def test_report_and_compare_read_an_external_set(
    package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``medfuse report`` and ``compare`` read the data as ``evaluate`` does: an external set
    whose every row is ``test`` (they refused it: "the split leaves train or val empty")."""
    from medfuse.cli import main

    csv, out = _external(tmp_path), tmp_path / "report.html"
    argv = ["--data", str(csv), "--device", "cpu", "--bootstrap", "20"]
    assert main(["report", str(package), "-o", str(out), *argv]) == 0, capsys.readouterr().err
    html = out.read_text()
    assert "<td>train</td><td>0</td>" in html and "nan%" not in html
    assert main(["compare", str(package), str(package), *argv]) == 0, capsys.readouterr().err


# ---- the patient column -------------------------------------------------------------------------


def _by_subject(csv: Path, column: str = "subject_id", empty: int = 0) -> Path:
    """The manifest without its split column, 4 rows per subject (its first ``empty`` rows with
    an empty patient cell)."""
    df = pd.read_csv(csv).drop(columns="split")
    df[column] = [f"p{i // 4}" for i in range(len(df))]
    df.loc[: empty - 1, column] = None
    df.to_csv(csv, index=False)
    return csv


def _spans(bundle: Any, csv: Path, column: str) -> set[str]:
    """The patients (``column`` of the CSV) whose rows lie in more than one split."""
    patients = pd.read_csv(csv)[column]
    seen: dict[str, set[str]] = {}
    for name in ("train", "val", "test"):
        split = getattr(bundle, name)
        for r in [] if split is None else split.meta["row"]:
            if pd.notna(patients.iloc[r - 2]):
                seen.setdefault(str(patients.iloc[r - 2]), set()).add(name)
    return {p for p, s in seen.items() if len(s) > 1}


def test_a_column_named_like_a_patient_id_groups_the_drawn_split(tmp_path: Path) -> None:
    """Without data.options.patient_column, a column named like a patient identifier
    (subject_id) keeps each patient's rows in one split, as medfuse train --table does; the
    layout records it. patient_column: null splits the rows apart (the check could fail)."""
    csv = _by_subject(_manifest(tmp_path, n=80))
    b = _load(csv)
    assert not _spans(b, csv, "subject_id")
    assert b.info["layout"]["patient_column"] == "subject_id"
    apart = load_data(f"manifest:{csv}", {"patient_column": None}, modalities=MODS, task="binary")
    assert _spans(apart, csv, "subject_id")  # 80 rows of 20 patients, split row by row


def test_a_missing_patient_column_is_refused_when_the_split_is_drawn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv = _by_subject(_manifest(tmp_path, n=40))
    with pytest.raises(
        DataError, match=r"no patient column 'subjectid'; did you mean 'subject_id'"
    ):
        load_data(
            f"manifest:{csv}", {"patient_column": "subjectid"}, modalities=MODS, task="binary"
        )
    # with a split column the name only feeds the overlap check: said, not refused
    csv2 = _manifest(tmp_path / "s", n=20)
    with caplog.at_level(logging.WARNING, logger="medfuse.data"):
        load_data(f"manifest:{csv2}", {"patient_column": "mrn"}, modalities=MODS, task="binary")
    assert any("no patient column 'mrn'" in w and "not checked" in w for w in _warnings(caplog))


def test_rows_without_a_patient_are_each_their_own(tmp_path: Path) -> None:
    """Half the rows have an empty patient cell: each is its own patient, never one group of
    every empty cell (which would put all of them in one split)."""
    csv = _by_subject(_manifest(tmp_path, n=80), column="patient_id", empty=40)
    b = _load(csv)
    unnamed = {
        name: int(getattr(b, name).meta["patient_id"].isna().sum()) for name in ("train", "val")
    }
    assert unnamed["train"] > 0 and unnamed["val"] > 0, unnamed
    assert not _spans(b, csv, "patient_id")


def test_a_patient_column_with_too_few_patients_is_refused_by_name(tmp_path: Path) -> None:
    """A column named like a patient id that holds 3 values for 40 rows (e.g. a body part)
    cannot group a drawn split: refused with the column and the way out, not a library error."""
    csv = _manifest(tmp_path, n=40, splits=False)
    df = pd.read_csv(csv)
    df["subject"] = ["chest", "head", "abdomen", "chest"] * 10
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"column 'subject' holds 3 distinct patients for 40 rows"):
        _load(csv)
    b = load_data(f"manifest:{csv}", {"patient_column": None}, modalities=MODS, task="binary")
    assert len(b.val) and len(b.test)
