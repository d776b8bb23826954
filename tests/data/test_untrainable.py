"""Data a model cannot learn from is refused at training, before anything trains: a tabular
column empty in every training row (its weights would never see a value; audit repro_3), a class
(or a multilabel label's positives or negatives) without a training row (an output never learnt,
yet evaluated; audit repro_4). Data read for an existing package is not refused."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medfuse.api import evaluate, train
from medfuse.core.errors import DataError

SPLITS = ("train", "train", "train", "val", "test")


def _manifest(path: Path, n: int = 30, **columns: Any) -> Path:
    """A tiny manifest: ids, a split column (3:1:1), ``age``, a ``label`` alternating 0/1, and
    ``columns`` (a list of values, or a function of (row, split))."""
    split = [SPLITS[i % 5] for i in range(n)]
    df = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(n)],
            "age": [40.0 + i % 17 for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "split": split,
        }
    )
    for name, v in columns.items():
        df[name] = [v(i, s) for i, s in enumerate(split)] if callable(v) else v
    df.to_csv(path, index=False)
    return path


def _spec(csv: Path, task: str = "binary", label: Any = "label", **modalities: Any) -> dict:
    mods = modalities or {"clinical": ["age", "crp"]}
    return {
        "name": "untrainable",
        "task": {"type": task},
        "data": {"source": f"manifest:{csv}", "options": {"label": label}, "stream": False},
        "modalities": {m: {"kind": "tabular", "columns": cols} for m, cols in mods.items()},
        "branches": {m: {"type": "mlp", "hidden": 4, "out_features": 4} for m in mods},
        "head": {"hidden": 4},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.01, "early_stopping": None, "seed": 0},
    }


def _refused(spec: dict, out: Path, *needles: str) -> str:
    """``train`` refuses with a DataError holding every needle, having trained nothing."""
    with pytest.raises(DataError) as err:
        train(spec, out=out, device="cpu", progress=False)
    text = str(err.value)
    for needle in needles:
        assert needle in text, (needle, text)
    assert not (out / "medfuse.json").exists()
    assert not out.with_name(out.name + ".train").exists()  # no work directory: nothing ran
    return text


def _crp(i: int, split: str) -> float:
    return np.nan if split == "train" else 5.0 + 7 * i


def test_a_column_empty_in_every_training_row_is_refused_a_constant_one_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv = _manifest(tmp_path / "m.csv", crp=_crp, ward=lambda i, s: 3.0 if s == "train" else i)
    spec = _spec(csv, clinical=["age", "crp", "ward"])
    text = _refused(
        spec,
        tmp_path / "pkg",
        "'clinical'",
        "column 'crp' empty in every training row (18 rows)",
        "Drop the column from modalities.clinical.columns, or fill in values",
    )
    assert "ward" not in text  # constant but present: not refused
    # with values in the training rows, the constant column is a warning, as before
    _manifest(csv, crp=lambda i, s: 5.0 + 7 * i, ward=lambda i, s: 3.0 if s == "train" else i)
    with caplog.at_level(logging.WARNING):
        res = train(spec, out=tmp_path / "pkg", device="cpu", progress=False)
    assert (res.package / "medfuse.json").exists()
    assert "constant or empty in training (no information): ward" in caplog.text


def test_a_tabular_modality_empty_in_every_training_row_is_refused(tmp_path: Path) -> None:
    """Every column of ``labs`` empty in training: the modality is missing in every training
    row (its mask), which only warned."""
    csv = _manifest(tmp_path / "m.csv", crp=_crp, pct=_crp)
    spec = _spec(csv, clinical=["age"], labs=["crp", "pct"])
    _refused(
        spec,
        tmp_path / "pkg",
        "'labs' (tabular): columns 'crp', 'pct' empty in every training row",
        "Drop the columns (or modality 'labs')",
    )


def test_a_class_or_column_missing_from_training_is_refused_at_training_only(
    tmp_path: Path,
) -> None:
    """A package trained on good data evaluates other data whose train split has an empty
    column and no positive row (an external set laid out alike); training on it is refused."""
    good = _manifest(tmp_path / "good.csv", crp=lambda i, s: 5.0 + 7 * i)
    res = train(_spec(good), out=tmp_path / "pkg", device="cpu", progress=False)
    other = _manifest(
        tmp_path / "other.csv",
        crp=_crp,
        label=[0 if SPLITS[i % 5] == "train" else i % 2 for i in range(30)],
    )
    ev = evaluate(res.package, data=other, device="cpu")
    assert ev["n"] == 6
    _refused(_spec(other), tmp_path / "pkg2", "empty in every training row")


@pytest.mark.parametrize(
    ("task", "needles"),
    [
        (
            "multiclass",
            (
                "no training row of class 'other'",
                "rows per class in the training split: AF 9, normal 9, other 0",
                "Give the class training rows",
                "or drop it (its rows, and its name from the spec's labels)",
            ),
        ),
        (
            "binary",
            (
                "no training row of class '1'",
                "rows per class in the training split: 0 18, 1 0",
                "training rows of both classes",
            ),
        ),
    ],
)
def test_a_class_without_training_rows_is_refused(
    tmp_path: Path, task: str, needles: tuple[str, ...]
) -> None:
    if task == "multiclass":  # 'other' only in val and test
        names = ("AF", "normal", "other")
        label = [names[i % 3] if s != "train" else names[i % 2] for i, s in _rows()]
    else:  # no positive in train
        label = [i % 2 if s != "train" else 0 for i, s in _rows()]
    csv = _manifest(tmp_path / "m.csv", crp=lambda i, s: 1.0 + i, label=label)
    _refused(_spec(csv, task), tmp_path / "pkg", *needles)


def _rows(n: int = 30) -> list[tuple[int, str]]:
    return [(i, SPLITS[i % 5]) for i in range(n)]


def test_a_multilabel_label_never_positive_or_negative_in_training_is_refused(
    tmp_path: Path,
) -> None:
    cols = {
        "a": [i % 2 for i, _ in _rows()],
        "b": [int(s != "train" and i % 2 == 0) for i, s in _rows()],  # never positive in train
        "c": [int(s == "train" or i % 3 == 0) for i, s in _rows()],  # never negative in train
    }
    csv = _manifest(tmp_path / "m.csv", crp=lambda i, s: 1.0 + i, **cols)
    _refused(
        _spec(csv, "multilabel", label=["a", "b", "c"]),
        tmp_path / "pkg",
        "never positive in the training split: 'b'",
        "never negative in the training split: 'c'",
        "positives per label among the 18 training rows: a 9, b 0, c 18",
        "Give each label positive and negative training rows",
    )


def test_a_validation_split_of_one_class_cannot_choose_the_threshold(tmp_path: Path) -> None:
    """The threshold is chosen on validation: val rows of one class would make any threshold
    'optimal' (Youden's fell back to 0.5, recorded as chosen on val). Refused before training,
    with the fix; a fixed threshold needs no choice and trains."""
    csv = _manifest(
        tmp_path / "m.csv",
        crp=[1.0] * 30,
        label=lambda i, s: 0 if s == "val" else i % 2,  # every val row negative
    )
    spec = _spec(csv, clinical=["age"])
    _refused(spec, tmp_path / "out", "validation split, which holds '0' samples only (6 rows)")
    spec["threshold"] = {"method": "fixed", "value": 0.5}
    pkg = train(spec, out=tmp_path / "fixed", device="cpu", progress=False).package
    assert (pkg / "medfuse.json").exists()


def test_training_says_how_many_signal_records_are_mostly_padding(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records shorter than the modality's length are zero-padded at their end: training says
    how many fill under half of it (the prediction flag's rule, said once for the data)."""
    from medfuse.core.spec import ModalitySpec
    from medfuse.data import load_data
    from medfuse.data.examples import write_csv_signal
    from medfuse.data.validate import check_trainable

    rng = np.random.default_rng(0)
    csv = _manifest(tmp_path / "m.csv", ecg=[f"s{i}.csv" for i in range(30)])
    for i in range(30):  # every third record 100 samples long, the others 450 of 500
        write_csv_signal(
            tmp_path / f"s{i}.csv",
            rng.normal(0, 1, (2, 100 if i % 3 == 0 else 450)),
            100.0,
            ["I", "II"],
        )
    mods = {"ecg": ModalitySpec(kind="signal", channels=2, length=500)}
    bundle = load_data(f"manifest:{csv}", {}, modalities=mods, task="binary")
    with caplog.at_level(logging.INFO, logger="medfuse.data"):
        check_trainable(bundle)
    said = [r for r in caplog.records if "zero padding" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    short = sum(1 for i in range(30) if i % 3 == 0 and SPLITS[i % 5] == "train")
    train_n = sum(1 for i in range(30) if SPLITS[i % 5] == "train")
    assert (
        f"'ecg': {short} of {train_n} training records fill under half of the 500"
        in said[0].getMessage()
    )
