"""The one input contract (``medfuse.core.inputs``): the same cases through every entry point
give the same probabilities; every refusal is an error naming the field, never a silent answer.

Entry points: the torch Predictor, the ONNX Runtime predictor, ``medfuse predict`` with both
runtimes, the HTTP service (in process, FastAPI TestClient), ``python -m medfuse.runtime``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medfuse.core.errors import DataError
from medfuse.core.inputs import InputError, Modality, Schema, coerce

N = 3


@dataclass
class Case:
    obj: Any  # what the Python API gets
    file: Path  # what `medfuse predict` and the runtime CLI get
    instances: list[dict[str, Any]]  # what the HTTP service gets
    group: str  # cases of one group describe the same samples


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    from PIL import Image

    root = tmp_path_factory.mktemp("contract")
    rng = np.random.default_rng(3)
    imgs = [(rng.random((20, 20)) * 2).astype(np.float32) for _ in range(N)]  # 20 px: resized
    sigs = [rng.normal(size=(2, 40)).astype(np.float32) for _ in range(N)]  # 40: centre-cropped
    tab = [{"age": 40.0 + 9 * i, "bmi": 22.5 + i, "marker": 0.25 * i} for i in range(N)]
    files = []
    for i in range(N):
        png = root / f"img{i}.png"
        Image.fromarray((imgs[i] * 100).astype(np.uint8)).save(png)
        imgs[i] = (imgs[i] * 100).astype(np.uint8).astype(np.float32)  # what the PNG holds
        np.save(root / f"sig{i}.npy", sigs[i])
        files.append(png)
    rows = [
        {"id": f"c{i}", "image": str(files[i]), "signal": str(root / f"sig{i}.npy"), **tab[i]}
        for i in range(N)
    ]
    csv = root / "cases.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    batched = {
        "image": np.stack(imgs)[:, None],
        "signal": np.stack(sigs),
        "tabular": np.array([[t["age"], t["bmi"], t["marker"]] for t in tab], np.float32),
        "id": [f"c{i}" for i in range(N)],
    }
    npz = root / "cases.npz"
    np.savez(npz, **{k: np.asarray(v) for k, v in batched.items()})
    listed = [
        {"image": imgs[i], "signal": sigs[i], "tabular": dict(tab[i]), "id": f"c{i}"}
        for i in range(N)
    ]
    http_full = [
        {
            "image": {"png": base64.b64encode(files[i].read_bytes()).decode()},
            "signal": {"array": sigs[i].tolist()},
            "tabular": tab[i],
        }
        for i in range(N)
    ]
    tab_csv = root / "tabular.csv"
    pd.DataFrame([{"image": "", "signal": "", **t} for t in tab]).to_csv(tab_csv, index=False)
    parquet = root / "cases.parquet"
    pd.read_csv(csv).to_parquet(parquet)
    return {
        "csv": Case(csv, csv, http_full, "full"),
        "parquet": Case(parquet, parquet, http_full, "full"),
        "dataframe": Case(pd.read_csv(csv), csv, http_full, "full"),
        "list_of_dicts": Case(listed, csv, http_full, "full"),
        "batched_dict": Case(batched, npz, http_full, "full"),
        "npz": Case(npz, npz, http_full, "full"),
        "single_png": Case(
            files[0],
            files[0],
            [{"image": {"png": base64.b64encode(files[0].read_bytes()).decode()}}],
            "png",
        ),
        "named_tabular": Case(
            [{"tabular": dict(t)} for t in tab], tab_csv, [{"tabular": t} for t in tab], "tabular"
        ),
    }


@pytest.fixture(scope="module")
def predictors(exported_package: Path) -> dict[str, Any]:
    from medfuse.core.onnx import load as load_onnx
    from medfuse.inference.predictor import load as load_torch

    return {"torch": load_torch(exported_package), "onnx": load_onnx(exported_package)}


@pytest.fixture(scope="module")
def client(exported_package: Path) -> Any:
    from fastapi.testclient import TestClient

    from medfuse.serve.app import create_app

    return TestClient(create_app(exported_package))


@pytest.fixture(scope="module")
def reference(predictors: dict[str, Any], cases: dict[str, Case]) -> dict[str, np.ndarray]:
    first = {"full": "csv", "png": "single_png", "tabular": "named_tabular"}
    return {g: predictors["torch"].predict_proba(cases[c].obj) for g, c in first.items()}


def _cli(runtime: str, pkg: Path, case: Case, tmp_path: Path) -> np.ndarray:
    from medfuse.cli import main

    out = tmp_path / f"{runtime}.csv"
    args = ["predict", str(pkg), "--input", str(case.file), "--out", str(out)]
    assert main([*args, "--runtime", runtime]) == 0
    return pd.read_csv(out)["prob_positive"].to_numpy()


def _runtime_cli(pkg: Path, case: Case, tmp_path: Path) -> np.ndarray:
    from medfuse.runtime import main

    out = tmp_path / "rt.csv"
    assert main([str(pkg), "--input", str(case.file), "--out", str(out)]) == 0
    return pd.read_csv(out)["prob_positive"].to_numpy()


ENTRY_POINTS = ["torch", "onnx", "cli-torch", "cli-onnx", "http", "runtime"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    "name",
    [
        "csv",
        "parquet",
        "dataframe",
        "list_of_dicts",
        "batched_dict",
        "npz",
        "single_png",
        "named_tabular",
    ],
)
def test_same_case_same_probabilities_everywhere(
    entry: str,
    name: str,
    cases: dict[str, Case],
    predictors: dict[str, Any],
    reference: dict[str, np.ndarray],
    client: Any,
    exported_package: Path,
    tmp_path: Path,
) -> None:
    case = cases[name]
    if entry in predictors:
        got = predictors[entry].predict_proba(case.obj)
    elif entry.startswith("cli-"):
        got = _cli(entry[4:], exported_package, case, tmp_path)
    elif entry == "runtime":
        got = _runtime_cli(exported_package, case, tmp_path)
    else:
        r = client.post("/v1/predict", json={"instances": case.instances})
        assert r.status_code == 200, r.text
        got = np.array([p["probabilities"]["positive"] for p in r.json()["predictions"]])
    ref = reference[case.group]
    assert got.shape == ref.shape  # a DataFrame of 3 rows gives 3 probabilities
    assert np.abs(np.asarray(got, np.float64) - ref).max() < 1e-5, (entry, name, got, ref)


# ---- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_refusals_name_the_field(predictors: dict[str, Any], runtime: str) -> None:
    pred = predictors[runtime]
    img = np.zeros((1, 16, 16), np.float32)
    with pytest.raises(InputError, match=r"unknown key 'imgae'; did you mean 'image'\?"):
        pred.predict_proba([{"imgae": img}])
    with pytest.raises(InputError, match=r"list of strings .*column names"):
        pred.predict_proba(["age", "bmi", "marker"])
    with pytest.raises(InputError, match="no usable input"):
        pred.predict([{}])
    with pytest.raises(InputError, match=r"unknown column 'agee'; did you mean 'age'\?"):
        pred.predict_proba([{"tabular": {"agee": 50}}])
    with pytest.raises(InputError, match=r"'abc' is not a number"):
        pred.predict_proba([{"tabular": {"age": "abc"}}])
    with pytest.raises(InputError, match="cannot be fitted"):
        pred.predict_proba([{"image": np.zeros((2, 5, 16, 16))}])
    with pytest.raises(InputError, match="NaN or infinite"):
        pred.predict_proba([{"image": np.full((16, 16), np.nan)}])
    with pytest.raises(InputError, match=r"mask of 'image' must hold 0 or 1; got nan"):
        pred.predict({"image": img[None], "mask": {"image": np.array([np.nan])}})


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_api_resizes_and_takes_named_tabular_values(
    predictors: dict[str, Any], runtime: str
) -> None:
    pred = predictors[runtime]
    rng = np.random.default_rng(0)
    big = rng.random((56, 56)).astype(np.float32)
    p56 = pred.predict_proba([{"image": big, "tabular": {"age": 61, "bmi": 24.0}}])
    from medfuse.core.readers.image_math import fit_image

    p16 = pred.predict_proba(
        [{"image": fit_image(big, 1, (16, 16)), "tabular": [61, 24.0, np.nan]}]
    )
    assert p56.shape == (1,) and abs(p56[0] - p16[0]) < 1e-6
    s = pd.Series({"age": 61, "bmi": 24.0, "marker": 0.1, "image": None, "signal": None})
    assert pred.predict_proba(s).shape == (1,)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_a_non_finite_result_is_never_a_label(predictors: dict[str, Any], runtime: str) -> None:
    pred = predictors[runtime]
    huge = {"image": np.full((1, 1, 16, 16), 3e37, np.float32)}
    with pytest.raises(DataError, match="non-finite probability"):
        pred.predict(huge)
    res = pred.predict_rows(huge, on_bad_row="missing")
    assert res.labels == [None] and np.isnan(res.proba[0])
    row = res.rows()[0]
    assert row["label"] == "" and "non-finite" in row["error"]
    assert "outside the training range" in row["flags"]  # and the input is flagged as such


def test_unreadable_file_fails_or_is_flagged(predictors: dict[str, Any], tmp_path: Path) -> None:
    pred = predictors["onnx"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    sample = [{"image": str(bad), "tabular": {"age": 50}}]
    with pytest.raises(InputError, match=r"broken.png.*on_bad_row='missing'"):
        pred.predict_proba(sample)
    row = pred.predict_table(sample, on_bad_row="missing")[0]
    assert row["present_image"] == 0 and "broken.png" in row["reason_image"]
    assert row["present_tabular"] == 1 and row["label"] in pred.labels and not row["error"]


def test_plausibility_flags(predictors: dict[str, Any]) -> None:
    pred = predictors["torch"]
    rng = np.random.default_rng(1)
    scaled = (rng.random((1, 16, 16)) * 255).astype(np.float32)  # 0-255 for a model of ~[-1, 3]
    rows = pred.predict_table(
        [{"image": scaled}, {"tabular": {"age": 300}}, {"tabular": {"age": 50}}]
    )
    assert "image: intensities" in rows[0]["flags"]
    assert "age=300 outside the training range" in rows[1]["flags"]
    assert "outside" not in rows[2]["flags"]
    # every training sample had an image: a row without one says the model never saw that
    assert "image: missing, and the model never trained without it" in rows[2]["flags"]


def test_an_empty_tabular_cell_is_a_missing_value_named_per_row(
    predictors: dict[str, Any], client: Any, exported_package: Path, tmp_path: Path
) -> None:
    """A NaN / None / empty cell is a missing value of that column (as in training: the
    training mean), never a refusal; every output names the column (``missing_values``)."""
    from medfuse.cli import main
    from medfuse.runtime import main as runtime_main

    tab = [{"age": 50.0, "bmi": np.nan, "marker": 0.5}, {"age": None, "bmi": 22.0, "marker": None}]
    tab.append({"age": 61.0, "bmi": 24.0, "marker": 0.1})
    csv = tmp_path / "holes.csv"
    pd.DataFrame([{"image": "", "signal": "", **t} for t in tab]).to_csv(csv, index=False)
    assert ",,0.5" in csv.read_text()  # an empty cell in the file
    want = [["bmi"], ["age", "marker"], []]
    for runtime in ("torch", "onnx"):
        b = predictors[runtime].inputs(csv)
        assert b.missing_values == want and (b.masks["tabular"] == 1).all()
        assert predictors[runtime].inputs([{"tabular": t} for t in tab]).missing_values == want
        rows = predictors[runtime].predict_table(pd.read_csv(csv))
        assert [r["missing_values"] for r in rows] == ["bmi", "age; marker", ""]
        assert all(r["label"] in predictors[runtime].labels for r in rows)
        assert all("outside" not in r["flags"] for r in rows)  # (no image: flagged as missing)
    # the imputation is training's: a missing value is the training mean (standardised 0)
    mean = predictors["torch"].meta["preprocessing"]["tabular"]["mean"]
    p_nan = predictors["torch"].predict_proba([{"tabular": {"age": 50.0, "marker": 0.5}}])
    p_mean = predictors["torch"].predict_proba([{"tabular": [50.0, mean[1], 0.5]}])
    assert abs(p_nan[0] - p_mean[0]) < 1e-6
    # whole tabular modality absent: present_tabular says so, no column is listed
    assert predictors["torch"].inputs([{"image": np.zeros((16, 16))}]).missing_values == [[]]
    null = [{k: (None if v is None or np.isnan(v) else v) for k, v in t.items()} for t in tab]
    r = client.post("/v1/predict", json={"instances": [{"tabular": t} for t in null]})
    assert r.status_code == 200, r.text
    assert [p["missing_values"] for p in r.json()["predictions"]] == want
    for entry, run in (("cli", main), ("runtime", runtime_main)):
        out = tmp_path / f"{entry}.csv"
        args = [str(exported_package), "--input", str(csv), "--out", str(out)]
        assert run(["predict", *args] if entry == "cli" else args) == 0
        df = pd.read_csv(out, keep_default_na=False)
        assert df["missing_values"].tolist() == ["bmi", "age; marker", ""], entry


def test_unseen_category_is_an_error_or_a_flag() -> None:
    mod = Modality(
        "clinical", "tabular", (2,), columns=("sex", "age"), categories={"sex": ["F", "M"]}
    )
    schema = Schema({"clinical": mod})
    b = coerce([{"sex": "M", "age": 3}], schema)
    assert b.arrays["clinical"].tolist() == [[1.0, 3.0]]
    with pytest.raises(InputError, match=r"'X' was never seen in training.*Allowed: \['F', 'M'\]"):
        coerce([{"sex": "X", "age": 3}], schema)
    b = coerce([{"sex": "X", "age": 3}], schema, unseen_category="flag")
    assert np.isnan(b.arrays["clinical"][0, 0]) and "never seen" in b.flags[0][0]
    with pytest.raises(InputError, match="not a finite number"):
        coerce([{"sex": "F", "age": float("inf")}], schema)


def test_http_non_finite_result_is_a_422(client: Any) -> None:
    huge = [[[3e37] * 16] * 16]
    r = client.post("/v1/predict", json={"instances": [{"image": {"array": huge}}]})
    assert r.status_code == 422 and "non-finite" in json.dumps(r.json())
    assert r.json()["detail"][0]["loc"] == ["body", "instances", 0]
    ok = {"tabular": {"age": 50}}
    r = client.post("/v1/predict", json={"instances": [ok, {"image": {"array": huge}}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "instances", 1]
    r = client.post("/v1/predict", json={"instances": [{"tabular": {"age": 300}}]})
    assert r.status_code == 200 and "age=300" in " ".join(r.json()["predictions"][0]["flags"])


def test_runtime_cli_errors_are_one_line(
    exported_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medfuse.runtime import main

    huge = tmp_path / "huge.npz"
    np.savez(huge, image=np.full((2, 1, 16, 16), 3e37, np.float32))
    out = tmp_path / "o.csv"
    assert main([str(exported_package), "--input", str(huge), "--out", str(out)]) == 3
    err = capsys.readouterr().err.strip()
    assert "non-finite probability" in err and len(err.splitlines()) == 1 and not out.exists()
    assert main([str(exported_package), "--input", str(huge), "--on-bad-row", "missing"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert len(lines) == 3 and all(",," in x and "non-finite" in x for x in lines[1:])
    assert "2 rows need attention" in printed.err
    nanmask = tmp_path / "nanmask.npz"
    np.savez(nanmask, image=np.zeros((1, 1, 16, 16), np.float32), mask_image=np.array([np.nan]))
    assert main([str(exported_package), "--input", str(nanmask)]) == 3
    assert "must hold 0 or 1" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main([str(exported_package), "--input", str(empty)]) == 3
    assert "empty manifest" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert main([str(exported_package), "--input", str(text)]) == 3
    assert "Traceback" not in capsys.readouterr().err


def test_predict_cli_summary_lists_affected_rows(
    exported_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medfuse.cli import main

    rows = [{"image": "", "signal": "", "age": 300 + i, "bmi": 25, "marker": 0} for i in range(25)]
    csv = tmp_path / "many.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    out = tmp_path / "p.csv"
    assert main(["predict", str(exported_package), "--input", str(csv), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    issues = out.with_name(out.name + ".issues.csv")
    assert "25 of 25 rows need attention" in err and str(issues) in err
    listed = pd.read_csv(issues)
    assert len(listed) == 25 and listed["issue"].str.contains("outside the training range").all()
    df = pd.read_csv(out, keep_default_na=False)
    assert df["flags"].str.contains("age=").all() and (df["present_image"] == 0).all()


def test_the_torch_free_runtime_lists_affected_rows_in_the_same_file(
    exported_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m medfuse.runtime`` (what the base install's ``medfuse predict`` runs) writes
    the issues file as the full install does: at ``--issues`` or beside ``--out``."""
    from medfuse.cli import main
    from medfuse.runtime import main as runtime_main

    rows = [{"image": "", "signal": "", "age": 300 + i, "bmi": 25, "marker": 0} for i in range(25)]
    csv = tmp_path / "many.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    full = tmp_path / "full.csv"
    assert main(["predict", str(exported_package), "--input", str(csv), "--out", str(full)]) == 0
    expected = pd.read_csv(full.with_name("full.csv.issues.csv"))
    capsys.readouterr()
    out, chosen = tmp_path / "base.csv", tmp_path / "chosen.csv"
    for extra, listed in (
        ([], tmp_path / "base.csv.issues.csv"),
        (["--issues", str(chosen)], chosen),
    ):
        listed.unlink(missing_ok=True)
        argv = [str(exported_package), "--input", str(csv), "--out", str(out), *extra]
        assert runtime_main(argv) == 0
        assert f"25 of 25 rows need attention: listed in {listed}" in capsys.readouterr().err
        pd.testing.assert_frame_equal(pd.read_csv(listed), expected)
    assert (
        runtime_main([str(exported_package), "--input", str(csv), "--issues", "/nowhere/x.csv"])
        == 2
    )
    assert "--issues" in capsys.readouterr().err


def test_manifest_layout_of_training_is_read_again(tmp_path: Path) -> None:
    """The spec's column mapping, the patient column as id, paths relative to the manifest."""
    from PIL import Image

    from medfuse.core.inputs import iter_batches, layout_from_meta

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "m.csv").write_text(
        "patient,scan,image,age,label\n"  # 'image' is not the image column here: 'scan' is
        "P1,imgs/a.png,notes,50,x\nP2,,,61,y\nP3,imgs/missing.png,,70,x\n"
    )
    meta = {
        "spec": {
            "data": {"options": {"columns": {"image": "scan"}, "patient_column": "patient"}},
            "modalities": {
                "image": {"kind": "image", "channels": 1, "size": [4, 4]},
                "clinical": {"kind": "tabular", "columns": ["age"]},
            },
        },
        "preprocessing": {},
    }
    assert layout_from_meta(meta).column("image") == "scan"
    schema = Schema.from_meta(meta)
    with pytest.raises(InputError, match=r"m.csv row 4 \(image\).*missing.png"):
        list(iter_batches(tmp_path / "m.csv", schema))
    (b,) = iter_batches(tmp_path / "m.csv", schema, on_bad_row="missing")
    assert b.ids == ["P1", "P2", "P3"]  # the patient column names the rows
    assert b.masks["image"].tolist() == [1.0, 0.0, 0.0]
    assert b.reasons["image"][1] == "" and "missing.png" in b.reasons["image"][2]
    assert np.allclose(b.arrays["image"][0], 200.0)
    assert b.arrays["clinical"][:, 0].tolist() == [50.0, 61.0, 70.0]
    with pytest.raises(InputError, match=r"no column 'scan' for modality 'image'; did you mean"):
        coerce(pd.DataFrame({"scna": ["imgs/a.png"], "age": [1]}), schema)


def test_an_array_for_a_windowed_modality_must_hold_windowed_values() -> None:
    """A modality read with a window takes [0, 1] values (every windowed reader returns them);
    an array outside [0, 1] is the file's own values (e.g. HU), which would be scored as if
    windowed: refused (a dict per sample and a batched dict alike), or a missing modality with
    its reason; an array inside [0, 1] is taken as already windowed."""
    mod = Modality("ct", "image", (1, 4, 4), channels=1, size=(4, 4), window=[40.0, 400.0])
    schema = Schema({"ct": mod})
    hu = np.full((1, 4, 4), 120.0, np.float32)
    with pytest.raises(
        InputError, match=r"values 120..120 lie outside \[0, 1\].*window \[40.0, 400.0\]"
    ):
        coerce([{"ct": hu}], schema)
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        coerce({"ct": hu[None]}, schema)
    b = coerce({"ct": np.stack([hu, hu / 400])}, schema, on_bad_row="missing")
    assert b.masks["ct"].tolist() == [0.0, 1.0] and "outside [0, 1]" in b.reasons["ct"][0]
    plain = Schema({"ct": Modality("ct", "image", (1, 4, 4), channels=1, size=(4, 4))})
    assert coerce([{"ct": hu}], plain).masks["ct"].tolist() == [1.0]  # no window: as given


def test_a_recording_for_a_signal_sequence_is_cut_into_windows_as_in_training(
    tmp_path: Path,
) -> None:
    """A signal modality with ``sequence: S`` takes a whole recording (a file, an ``.npy`` or an
    array (C, T)) and cuts it into S windows exactly as training's reader does (it used to refuse
    the training manifest's own ``.npy`` files)."""
    from medfuse.core.readers import read_modality
    from medfuse.core.spec import ModalitySpec

    rec = np.random.default_rng(0).normal(0, 1, (2, 230)).astype(np.float32)
    np.save(tmp_path / "r.npy", rec)
    want = read_modality(
        tmp_path / "r.npy", ModalitySpec(kind="signal", channels=2, length=50, sequence=4)
    )
    mod = Modality("ecg", "signal", (4, 2, 50), channels=2, length=50, sequence=4)
    schema = Schema({"ecg": mod})
    for given in (rec, str(tmp_path / "r.npy")):
        b = coerce([{"ecg": given}], schema, base_dir=tmp_path)
        np.testing.assert_array_equal(b.arrays["ecg"][0], want)
    np.testing.assert_array_equal(coerce([{"ecg": want}], schema).arrays["ecg"][0], want)


def test_a_signal_mostly_zero_padding_is_flagged(tmp_path: Path) -> None:
    """A record shorter than the model reads is zero-padded at its end: a prediction says so when
    the padding is over half (with the seconds at the model's rate), and names a record that is
    0 throughout; a record that fills the length, or a sequence modality's, is judged alike."""
    from medfuse.data.examples import write_csv_signal

    mod = Modality("ecg", "signal", (2, 500), channels=2, length=500, rate=100.0)
    schema = Schema({"ecg": mod})
    rng = np.random.default_rng(0)
    short = write_csv_signal(tmp_path / "s.csv", rng.normal(0, 1, (2, 120)), 100.0, ["I", "II"])
    half = write_csv_signal(tmp_path / "h.csv", rng.normal(0, 1, (2, 300)), 100.0, ["I", "II"])
    b = coerce(
        [{"ecg": str(short)}, {"ecg": str(half)}, {"ecg": np.zeros((2, 500), np.float32)}],
        schema,
        base_dir=tmp_path,
    )
    assert b.flags[0] == [
        "ecg: the record fills 120 of the 500 samples the model reads (1.2 s of 5 s); the rest "
        "is zero padding"
    ]
    assert b.flags[1] == []  # 300 of 500: padding under half
    assert b.flags[2] == ["ecg: every sample is 0 in every lead (no signal)"]
    seq = Modality("ecg", "signal", (4, 2, 50), channels=2, length=50, sequence=4)
    x = np.zeros((4, 2, 50), np.float32)
    x[0, :, :30] = 1.0  # 30 of 200 samples, in the first window (both leads)
    got = coerce([{"ecg": x}], Schema({"ecg": seq})).flags[0]
    assert got == [
        "ecg: the record fills 30 of the 200 samples the model reads; the rest is zero padding"
    ]


def test_all_nan_image_is_not_present() -> None:
    mod = Modality("image", "image", (1, 4, 4), channels=1, size=(4, 4))
    tab = Modality("t", "tabular", (1,), columns=("age",))
    schema = Schema({"image": mod, "t": tab})
    nan = np.full((1, 4, 4), np.nan, np.float32)
    b = coerce([{"image": nan, "age": 3}], schema, on_bad_row="missing")
    assert b.masks["image"].tolist() == [0.0] and "all 16 values" in b.reasons["image"][0]
    b = coerce([{"image": nan}], schema, on_bad_row="missing")
    assert b.errors[0].startswith("no usable input")  # nothing left to predict from
    b = coerce(
        {"image": nan[None], "mask": {"image": np.array([1.0])}, "t": [[3]]},
        schema,
        on_bad_row="missing",
    )
    assert b.masks["image"].tolist() == [0.0]


@pytest.mark.parametrize("suffix", [".npy", ".jpg"])
def test_runtime_cli_reads_single_files(
    exported_package: Path, predictors: dict[str, Any], tmp_path: Path, suffix: str
) -> None:
    from PIL import Image

    from medfuse.runtime import main

    img = (np.random.default_rng(5).random((24, 24)) * 2).astype(np.float32)
    f = tmp_path / f"case{suffix}"
    if suffix == ".npy":
        np.save(f, img)
    else:
        Image.fromarray((img * 100).astype(np.uint8)).save(f, quality=95)
    out = tmp_path / "o.csv"
    assert main([str(exported_package), "--input", str(f), "--out", str(out)]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert df["id"].tolist() == [f.name] and df["present_image"].tolist() == [1]
    ref = predictors["torch"].predict_proba(f)  # the same file through the torch API
    assert abs(df["prob_positive"][0] - ref[0]) < 1e-5


def test_npy_upload_of_a_signal_with_named_leads() -> None:
    """An .npy upload is an array in a file: for a signal modality with ``leads``/``rate`` it is
    fitted like an array (the leads in the model's order), not refused for lacking lead names."""
    import io

    from medfuse.core.inputs import Upload

    mod = Modality("ecg", "signal", (2, 8), channels=2, length=8, leads=["I", "II"], rate=100.0)
    schema = Schema({"ecg": mod})
    sig = np.arange(20, dtype=np.float32).reshape(2, 10)
    buf = io.BytesIO()
    np.save(buf, sig)
    b = coerce([{"ecg": Upload(buf.getvalue(), ".npy")}], schema)
    assert b.masks["ecg"].tolist() == [1.0] and b.arrays["ecg"][0].tolist() == sig[:, 1:9].tolist()
    with pytest.raises(InputError, match="3 channels"):
        coerce([{"ecg": np.zeros((3, 8), np.float32)}], schema)


def test_npy_and_csv_signal_files_follow_the_upload_rules(tmp_path: Path) -> None:
    """A path to an .npy signal is the same array-in-a-file as its upload (the model's leads in
    order at its rate), so ``medfuse predict x.npy`` agrees with the service; a CSV whose header
    names no manifest column and holds numbers is one signal recording, not a manifest."""
    import io

    from medfuse.core.inputs import Upload, iter_batches
    from medfuse.data.examples import write_csv_signal

    mod = Modality("ecg", "signal", (2, 8), channels=2, length=8, leads=["I", "II"], rate=100.0)
    tab = Modality("labs", "tabular", (1,), columns=("age",))
    schema = Schema({"ecg": mod, "labs": tab})
    sig = np.arange(20, dtype=np.float32).reshape(2, 10)
    np.save(tmp_path / "s.npy", sig)
    buf = io.BytesIO()
    np.save(buf, sig)
    by_path = coerce([{"ecg": str(tmp_path / "s.npy")}], schema)
    by_upload = coerce([{"ecg": Upload(buf.getvalue(), ".npy")}], schema)
    (one,) = iter_batches(tmp_path / "s.npy", schema)
    for b in (by_path, one):
        assert b.masks["ecg"].tolist() == [1.0]
        np.testing.assert_array_equal(b.arrays["ecg"], by_upload.arrays["ecg"])
    np.save(tmp_path / "three.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(InputError, match=r"three\.npy.*3 channels"):
        coerce([{"ecg": str(tmp_path / "three.npy")}], schema)

    t = np.arange(20) / 100.0
    write_csv_signal(
        tmp_path / "rec.csv", np.stack([np.sin(t), np.cos(t), t]), 100.0, ["I", "II", "V1"]
    )
    (rec,) = iter_batches(tmp_path / "rec.csv", schema)
    assert rec.ids == ["rec.csv"] and rec.masks["ecg"].tolist() == [1.0]
    want = coerce([{"ecg": str(tmp_path / "rec.csv")}], schema)
    np.testing.assert_array_equal(rec.arrays["ecg"], want.arrays["ecg"])
    # a manifest (it names the modality's column) stays a manifest
    pd.DataFrame({"ecg": ["rec.csv"], "age": [50]}).to_csv(tmp_path / "m.csv", index=False)
    (man,) = iter_batches(tmp_path / "m.csv", schema)
    assert man.ids == ["row-2"] and man.masks["labs"].tolist() == [1.0]
    np.testing.assert_array_equal(man.arrays["ecg"], want.arrays["ecg"])
    # text under a header of unknown columns: a wrong manifest, said as such
    pd.DataFrame({"file": ["rec.csv"]}).to_csv(tmp_path / "wrong.csv", index=False)
    with pytest.raises(DataError, match="no column 'ecg'"):
        list(iter_batches(tmp_path / "wrong.csv", schema))


def test_a_0_255_image_for_a_0_1_model_is_flagged() -> None:
    from medfuse.core.preprocess import fit_stats

    rng = np.random.default_rng(2)
    train = rng.random((50, 1, 8, 8)).astype(np.float32)  # trained on [0, 1]
    stats = fit_stats({"image": train}, {"image": np.ones(50)}, {"image": 0}, {"image": "image"})
    mod = Modality("image", "image", (1, 8, 8), channels=1, size=(8, 8))
    schema = Schema({"image": mod}, stats=stats)
    same = coerce([{"image": rng.random((8, 8))}], schema)
    scaled = coerce([{"image": rng.random((8, 8)) * 255}], schema)
    assert same.flags == [[]]
    assert len(scaled.flags[0]) == 1 and "different scale" in scaled.flags[0][0]


def test_predict_to_stdout_lists_the_first_affected_rows_and_writes_no_file(
    exported_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from medfuse.cli import main

    monkeypatch.chdir(tmp_path)
    rows = [{"image": "", "signal": "", "age": 300 + i, "bmi": 25, "marker": 0} for i in range(25)]
    pd.DataFrame(rows).to_csv(tmp_path / "many.csv", index=False)
    assert main(["predict", str(exported_package), "--input", "many.csv"]) == 0
    err = capsys.readouterr().err
    assert "25 of 25 rows need attention" in err and "... and 5 more (--issues FILE" in err
    assert [f.name for f in tmp_path.iterdir()] == ["many.csv"]
