"""Labels written 0.0/1.0 or named by YAML numbers, the suggested ``task.positive`` line for
boolean-like labels, and a True/False tabular column read alike in training and prediction."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medfuse.core.errors import DataError, SpecError
from medfuse.core.inputs import InputError
from medfuse.core.spec import load_spec
from medfuse.data import load_spec_data
from medfuse.data.examples import write_png

N = 30
SPLITS = ["train", "train", "train", "val", "test"]


def _cases(root: Path, **columns: list[Any]) -> Path:
    """N 8x8 PNGs (brighter when positive), an age column, a split column, and ``columns``."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(N)],
            "image": [f"img/{i}.png" for i in range(N)],
            "age": [40 + (i * 7) % 30 for i in range(N)],
            "label": [i % 2 for i in range(N)],
            "split": [SPLITS[i % 5] for i in range(N)],
            **columns,
        }
    )
    for i in range(N):  # class i % 2
        img = np.clip(rng.normal(90 + 60 * (i % 2), 30, (8, 8)), 0, 255).astype(np.uint8)
        write_png(root / "img" / f"{i}.png", img)
    csv = root / "cases.csv"
    df.to_csv(csv, index=False)
    return csv


def _yaml_spec(root: Path, csv: Path, task: str = "{type: binary}") -> Path:
    path = root / "spec.yaml"
    path.write_text(
        f"name: labels\ntask: {task}\n"
        f'data: {{source: "manifest:{csv}", stream: false}}\n'
        "modalities: {clinical: {kind: tabular, columns: [age]}}\n"
        "branches: {clinical: {type: mlp, hidden: 4, out_features: 4}}\n"
    )
    return path


# ---- labels written 0.0 / 1.0, label names given as YAML numbers ---------------------------------


def test_float_labels_evaluate_on_the_packages_own_training_manifest(
    tmp_path: Path, image_age_spec: Any
) -> None:
    from medfuse.api import evaluate, train
    from medfuse.core.package import read_meta

    csv = _cases(tmp_path, label=[float(i % 2) for i in range(N)])
    assert ",0.0," in csv.read_text()
    pkg = train(
        image_age_spec(csv, "float-labels", 1), out=tmp_path / "pkg", device="cpu", progress=False
    ).package
    assert read_meta(pkg)["labels"] == ["0", "1"]
    out = evaluate(pkg, device="cpu")  # the package's labels given: '0.0' is its class '0'
    assert out["n"] == N // 5 and out["positive"] == "1"


def test_label_names_given_as_text_or_yaml_numbers_match_labels_however_written(
    tmp_path: Path,
) -> None:
    for written in ([i % 2 for i in range(N)], [float(i % 2) for i in range(N)]):
        csv = _cases(tmp_path, label=written)
        for names in ("['0','1']", "[0,1]", "[0.0,1.0]", "['0.0','1.0']"):
            spec = load_spec(_yaml_spec(tmp_path, csv), [f"data.options.labels={names}"])
            b = load_spec_data(spec)
            assert b.labels[0] in ("0", "0.0") and b.positive == b.labels[1], (written, names)
            rows = b.train.meta["row"].to_numpy() - 2
            assert np.array_equal(b.train.y, np.asarray(written, np.float32)[rows])
    spec = load_spec(_yaml_spec(tmp_path, csv), ["data.options.labels=['1','1.0']"])
    with pytest.raises(DataError, match="name a class twice"):
        load_spec_data(spec)


def test_labels_differing_only_in_letter_case_are_refused_unless_declared(tmp_path: Path) -> None:
    """'Normal' and 'normal' would be two classes splitting one class's rows: refused with both
    fixes; declared in data.options.labels they are the classes asked for."""
    labels = [["AF", "Normal", "normal"][i % 3] for i in range(N)]
    csv = _cases(tmp_path, label=labels)
    spec = load_spec(_yaml_spec(tmp_path, csv, "{type: multiclass}"))
    with pytest.raises(DataError, match=r"differ only in letter case: 'Normal' and 'normal'"):
        load_spec_data(spec)
    names = "data.options.labels=[AF, Normal, normal]"
    declared = load_spec(_yaml_spec(tmp_path, csv, "{type: multiclass}"), [names])
    assert load_spec_data(declared).labels == ["AF", "Normal", "normal"]
    multi = [["MI;STTC", "mi", "STTC"][i % 3] for i in range(N)]
    csv = _cases(tmp_path, label=multi)
    with pytest.raises(DataError, match=r"'MI' and 'mi'"):
        load_spec_data(load_spec(_yaml_spec(tmp_path, csv, "{type: multilabel}")))


def test_categories_differing_only_in_letter_case_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """'F' and 'f' in a text feature column stay two categories (a column may mean them apart),
    with one warning naming the column and the values."""
    import logging

    csv = _cases(tmp_path, sex=[["F", "M", "f"][i % 3] for i in range(N)])
    path = _yaml_spec(tmp_path, csv)
    path.write_text(path.read_text().replace("columns: [age]", "columns: [age, sex]"))
    with caplog.at_level(logging.WARNING, logger="medfuse.data"):
        b = load_spec_data(load_spec(path))
    assert b.info["categories"]["clinical"]["sex"] == ["F", "M", "f"]
    said = [r.getMessage() for r in caplog.records if "letter case" in r.getMessage()]
    assert len(said) == 1 and "column 'sex'" in said[0] and "(F/f)" in said[0]


# ---- the suggested task.positive line, applied as written ----------------------------------------


@pytest.mark.parametrize("pair", [("True", "False"), ("yes", "no"), ("On", "OFF"), ("y", "n")])
def test_the_suggested_positive_line_is_accepted_as_written(
    tmp_path: Path, pair: tuple[str, str]
) -> None:
    csv = _cases(tmp_path, label=[pair[i % 2] for i in range(N)])
    with pytest.raises(SpecError, match=r"task\.positive") as e:
        load_spec_data(load_spec(_yaml_spec(tmp_path, csv)))
    msg = str(e.value)
    lines = re.findall(r"^  (task: \{type: binary, positive: .*\})$", msg, re.M)
    assert len(lines) == 2 and f'positive: "{pair[0]}"' in msg  # YAML 1.1's booleans too
    for line in lines:  # the YAML line, pasted into the spec
        b = load_spec_data(load_spec(_yaml_spec(tmp_path, csv, line.removeprefix("task: "))))
        assert b.positive in b.labels and b.labels[1] == b.positive
        assert str(b.positive).lower() in {w.lower() for w in pair}
    # the command line, as a shell splits it
    cmd = re.search(r"\(or on the command line: (.*)\)$", msg)
    assert cmd is not None
    flag, override = shlex.split(cmd.group(1))
    assert flag == "--set"
    b = load_spec_data(load_spec(_yaml_spec(tmp_path, csv), [override]))
    assert b.labels[1] == b.positive and b.positive.lower() in {w.lower() for w in pair}


# ---- a True/False tabular column ---------------------------------------------------------------


SMOKER = ["True", "false", "TRUE", "False", "", "true"]  # as pandas reads any case: booleans


@pytest.fixture(scope="module")
def smoker_package(
    tmp_path_factory: pytest.TempPathFactory, image_age_spec: Any
) -> tuple[Path, Path]:
    """(package, its training manifest): smoker cells True/false/TRUE/empty, and age."""
    from medfuse.api import train

    root = tmp_path_factory.mktemp("booleans")
    csv = _cases(root, smoker=[SMOKER[i % len(SMOKER)] for i in range(N)])
    spec = image_age_spec(csv, "booleans", 1, stream=False)
    spec["modalities"]["clinical"]["columns"] = ["smoker", "age"]
    return train(spec, out=root / "pkg", device="cpu", progress=False).package, csv


def test_a_boolean_column_gives_the_same_probabilities_in_evaluate_and_predict(
    smoker_package: tuple[Path, Path],
) -> None:
    from medfuse.data.manifest import reading_split
    from medfuse.inference.predictor import load

    package, csv = smoker_package
    pred = load(package, device="cpu")
    stats = pred.meta["preprocessing"]
    assert stats["clinical"]["categories"] == {"smoker": ["False", "True"]}
    with reading_split("test"):  # what `evaluate` scores
        test = load_spec_data(pred.spec, recorded=pred.meta.get("data"), preprocessing=stats)
    test = test.split("test")
    rows = test.meta["row"].to_numpy() - 2
    p_eval = pred.predict_proba(test)
    p_csv = pred.predict_proba(str(csv))  # csv.DictReader's text: 'TRUE', 'false', ''
    frame = pd.read_csv(csv).drop(columns=["label", "split"])  # bools (and NaN)
    assert frame["smoker"].map(type).isin([bool, float]).all()
    p_frame = pred.predict_proba(frame)
    np.testing.assert_allclose(p_csv[rows], p_eval, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p_frame, p_csv, rtol=1e-5, atol=1e-6)
    # one row given as a Python boolean or as text in any case: the same category
    for yes, no in ((True, False), (np.True_, np.False_), ("TRUE", "false"), ("true", "False")):
        got = pred.predict_proba([{"smoker": v, "age": 50} for v in (yes, no, "True", "False")])
        np.testing.assert_allclose(got[:2], got[2:], rtol=1e-6)
    # a number column still refuses a boolean
    with pytest.raises(InputError, match="True is a boolean; give a number"):
        pred.predict_proba([{"smoker": True, "age": True}])


# ---- multiclass and multilabel labels (found by an audit) ---------------------------------------


def test_table_route_refuses_labels_that_differ_only_in_case(tmp_path: Path) -> None:
    """medfuse train --table declares the labels it finds: 'normal' also written 'Normal' (or a
    multilabel 'STTC' / 'sttc') must be refused there too, not trained as two classes."""
    from medfuse.data.table import infer_table_spec

    mc = ["normal", "Normal", "benign", "malignant", "normal", "benign"] * 5
    with pytest.raises(
        DataError, match=r"'label'.*differ only in letter case: 'Normal' and 'normal'"
    ):
        infer_table_spec(
            pd.read_csv(_cases(tmp_path, label=mc)), label="label", csv_path=tmp_path / "t.csv"
        )
    ml = ["MI;STTC", "NORM", "sttc", "MI", "CD;MI", "NORM"] * 5
    with pytest.raises(DataError, match=r"differ only in letter case: 'STTC' and 'sttc'"):
        infer_table_spec(
            pd.read_csv(_cases(tmp_path, label=ml)), label="label", csv_path=tmp_path / "t.csv"
        )


@pytest.mark.parametrize("task", ["{type: multilabel}", "{type: multiclass}", "{type: binary}"])
def test_a_label_cell_of_spaces_is_an_empty_label(tmp_path: Path, task: str) -> None:
    """A label cell holding only spaces is no label, refused like an empty one: not a multilabel
    row with every label negative, nor a class named ''."""
    labels = {
        "{type: multilabel}": ["MI;STTC", "NORM", "MI", "CD;MI", "NORM", "STTC"],
        "{type: multiclass}": ["normal", "benign", "malignant"] * 2,
        "{type: binary}": ["0", "1"] * 3,
    }[task]
    cells = (labels * N)[:N]
    cells[7] = "   "
    csv = _cases(tmp_path, label=cells)
    with pytest.raises(DataError, match=r"cases\.csv row 9: empty label in column 'label'"):
        load_spec_data(load_spec(_yaml_spec(tmp_path, csv, task)))
