"""``medfuse explain``: inputs (npz, manifest, one file), outputs (JSON + PNGs), errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfuse.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_npz_rows_json_and_pictures(small_package, small_test, tmp_path, capsys) -> None:
    n = 12
    npz = tmp_path / "cases.npz"
    np.savez(
        npz,
        **{m: small_test.arrays[m][:n] for m in ("image", "signal", "tabular")},
        mask_signal=(np.arange(n) % 4 != 3).astype(np.float32),  # rows 3, 7, 11 lack the signal
        id=np.array([f"case/{i}" for i in range(n)]),
    )
    out = tmp_path / "x"
    assert (
        main(["explain", str(small_package), "--input", str(npz), "--rows", "0,3", "-o", str(out)])
        == 0
    )
    assert "modality contributions" in capsys.readouterr().out
    doc = json.loads((out / "explanation.json").read_text())
    assert [s["row"] for s in doc["samples"]] == [0, 3]
    assert [s["id"] for s in doc["samples"]] == ["case/0", "case/3"]
    s0, s3 = doc["samples"]
    assert set(s0["maps"]) == {"image", "signal", "tabular"} and set(s3["maps"]) == {
        "image",
        "tabular",
    }
    assert s0["maps"]["image"]["layer"] == "branches.image.features.1"
    assert np.asarray(s0["maps"]["image"]["upsampled"]).shape == (16, 16)
    assert np.asarray(s0["maps"]["signal"]["attribution"]).shape == (2, 64)
    assert [f["name"] for f in s0["maps"]["tabular"]["features"]] == ["age", "bmi", "marker"]
    for s in (s0, s3):
        sh = s["shapley"]["probability"]
        assert abs(sum(sh["values"].values()) - (sh["full"] - sh["base"])) < 1e-9
        for name in s["pictures"].values():
            assert (out / name).read_bytes()[:8] == PNG
    assert s3["shapley"]["probability"]["values"]["signal"] == 0.0
    assert sorted(p.name for p in out.glob("case_0_*.png")) == [
        "case_0_image.png",
        "case_0_modalities.png",
        "case_0_signal.png",
        "case_0_tabular.png",
    ]
    ds = doc["dataset"]
    assert ds["n"] == n and len(ds["per_sample"]["probability"]) == n
    assert ds["shapley"]["probability"]["ranking"][0] in ("image", "signal")
    assert (out / ds["picture"]).read_bytes()[:8] == PNG
    assert doc["scales"]["shapley"].startswith("probability")


def test_manifest_and_single_file_inputs(small_package, small_test, tmp_path) -> None:
    rows = []
    for i in range(3):
        np.save(tmp_path / f"img{i}.npy", small_test.arrays["image"][i])
        np.save(tmp_path / f"sig{i}.npy", small_test.arrays["signal"][i])
        age, bmi, marker = small_test.arrays["tabular"][i]
        rows.append(
            {
                "id": f"p{i}",
                "image": f"img{i}.npy",
                "signal": f"sig{i}.npy" if i != 1 else "",
                "age": age,
                "bmi": bmi if i != 2 else "",
                "marker": marker,
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "m"
    assert (
        main(
            [
                "explain",
                str(small_package),
                "--input",
                str(tmp_path / "m.csv"),
                "-o",
                str(out),
                "--layer",
                "features.0",
                "--steps",
                "8",
            ]
        )
        == 0
    )
    doc = json.loads((out / "explanation.json").read_text())
    assert [s["id"] for s in doc["samples"]] == ["p0", "p1", "p2"]
    assert doc["samples"][1]["present"]["signal"] is False
    assert doc["samples"][0]["maps"]["image"]["layer"] == "branches.image.features.0"
    bmi = doc["samples"][2]["maps"]["tabular"]["features"][1]
    assert bmi["missing"] and bmi["attribution"] == 0.0 and bmi["display"] == "missing"

    # one image file: the other modalities are absent and get no map and no contribution
    x = small_test.arrays["image"][0, 0]
    png = tmp_path / "xray.png"
    Image.fromarray(np.uint8(255 * (x - x.min()) / (x.max() - x.min()))).save(png)
    out = tmp_path / "one"
    assert main(["explain", str(small_package), "--input", str(png), "-o", str(out)]) == 0
    (s,) = json.loads((out / "explanation.json").read_text())["samples"]
    assert list(s["maps"]) == ["image"] and s["prediction"]["missing"] == ["signal", "tabular"]
    assert s["shapley"]["probability"]["values"]["signal"] == 0.0
    assert not (out / "dataset_modalities.png").exists()  # one row: no dataset picture


def test_explain_reads_inputs_as_predict_does(small_package, small_test, tmp_path, capsys) -> None:
    """The one input contract (``--on-bad-row``, ``--base-dir``): an unreadable image stops
    explain naming the row and file, as in ``medfuse predict``; with ``missing`` the image is
    explained as absent and the sample says why; a row with no usable input is not explained."""
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(3):
        np.save(data / f"img{i}.npy", small_test.arrays["image"][i])
        age, bmi, marker = small_test.arrays["tabular"][i]
        rows.append({"id": f"p{i}", "image": f"img{i}.npy", "signal": "", "age": age,
                     "bmi": "" if i == 0 else bmi, "marker": marker})  # fmt: skip
    (data / "broken.npy").write_bytes(b"not an array")
    rows[1]["image"] = "broken.npy"
    rows.append({"id": "p3", "image": "broken.npy", "signal": "", "age": "", "bmi": "",
                 "marker": ""})  # fmt: skip
    csv = tmp_path / "m.csv"  # relative paths resolve against --base-dir, not the CSV's folder
    pd.DataFrame(rows).to_csv(csv, index=False)
    base = ["explain", str(small_package), "--input", str(csv), "--steps", "4"]
    assert main([*base, "-o", str(tmp_path / "f")]) == 3  # not found: data/ is not the base
    assert "img0.npy" in capsys.readouterr().err
    assert main([*base, "--base-dir", str(data), "-o", str(tmp_path / "f")]) == 3
    err = capsys.readouterr().err
    assert "row 3 (image)" in err and "broken.npy" in err and "--on-bad-row missing" in err
    assert not (tmp_path / "f" / "explanation.json").exists()
    out = tmp_path / "o"
    args = [*base, "--base-dir", str(data), "--on-bad-row", "missing", "-o", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    # every row lacks the signal every training sample had: flagged, with p1's unusable image
    assert "4 of 4 rows need attention" in err and "p1: image missing:" in err
    assert "signal: missing, and the model never trained without it" in err
    doc = json.loads((out / "explanation.json").read_text())
    assert [s["id"] for s in doc["samples"]] == ["p0", "p1", "p2"]
    s0, s1, _ = doc["samples"]
    assert s0["missing_values"] == ["bmi"] and s0["reasons"] == {}
    assert s1["present"]["image"] is False and "broken.npy" in s1["reasons"]["image"]
    assert "image" not in s1["maps"] and s1["shapley"]["probability"]["values"]["image"] == 0.0
    assert [(x["row"], x["id"]) for x in doc["not_explained"]] == [(3, "p3")]
    assert "no usable input" in doc["not_explained"][0]["error"]
    assert doc["dataset"]["n"] == 3 and doc["dataset"]["per_sample"]["ids"] == ["p0", "p1", "p2"]
    # the same probabilities as medfuse predict on the same file and options
    pred = tmp_path / "p.csv"
    assert main(["predict", str(small_package), "--input", str(csv), "--base-dir", str(data),
                 "--on-bad-row", "missing", "--out", str(pred)]) == 0  # fmt: skip
    got = pd.read_csv(pred, keep_default_na=False)
    assert got["id"].tolist() == ["p0", "p1", "p2", "p3"] and got["error"][3]
    explained = [s["prediction"]["probabilities"]["positive"] for s in doc["samples"]]
    np.testing.assert_allclose(explained, got["prob_positive"][:3].astype(float), atol=1e-6)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rows", "0,99"], "row 99 out of range"),
        (["--rows", "a-b"], "--rows"),
        (["--layer", "features.9"], "Allowed: stem"),
        (["--layer", "branches.tabular.net"], "image branch"),
        (["--target", "negative"], "positive class"),
    ],
)
def test_errors_say_what_and_where(
    small_package, small_test, tmp_path, capsys, args, needle
) -> None:
    npz = tmp_path / "c.npz"
    np.savez(npz, **{m: small_test.arrays[m][:2] for m in ("image", "signal", "tabular")})
    assert (
        main(["explain", str(small_package), "--input", str(npz), "-o", str(tmp_path / "o"), *args])
        == 2
    )
    assert needle in capsys.readouterr().err


def test_multiclass_target_by_name(tmp_path, untrained) -> None:
    make_package, make_inputs = untrained
    pkg = make_package(tmp_path / "mc")
    arrays, _ = make_inputs(3)
    np.savez(tmp_path / "in.npz", **arrays)
    assert (
        main(
            [
                "explain",
                str(pkg),
                "--input",
                str(tmp_path / "in.npz"),
                "-o",
                str(tmp_path / "o"),
                "--target",
                "b",
                "--steps",
                "4",
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "o" / "explanation.json").read_text())
    assert doc["explained"] == "class 'b'"
    assert {s["explained"]["class"] for s in doc["samples"]} == {"b"}
    s = doc["samples"][0]
    assert (
        set(s["maps"]) == {"xray", "ecg", "labs"}
        and s["maps"]["ecg"]["method"] == "integrated-gradients"
    )
    sex = s["maps"]["labs"]["features"][1]
    assert sex["name"] == "sex" and sex["display"] in ("F", "M")
    assert (
        main(
            [
                "explain",
                str(pkg),
                "--input",
                str(tmp_path / "in.npz"),
                "-o",
                str(tmp_path / "o"),
                "--target",
                "d",
            ]
        )
        == 2
    )


def test_a_binary_target_is_read_as_a_class_name_before_an_index() -> None:
    """Labels ['1', '0'] (positive '0'): '--target 1' names the negative class and is refused,
    not read as index 1 and explained for '0'; the positive's name, and '1' where no class is
    named '1', select the positive class."""
    from medfuse.core.errors import SpecError
    from medfuse.explain.explainer import Explainer

    ex = Explainer.__new__(Explainer)
    ex.task, ex.labels = "binary", ["1", "0"]
    assert ex._target_index("0") is None
    with pytest.raises(SpecError, match="positive class '0'; got '1'"):
        ex._target_index("1")
    ex.labels = ["benign", "malignant"]
    assert ex._target_index("1") is None and ex._target_index("malignant") is None
