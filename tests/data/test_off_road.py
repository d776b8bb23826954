"""Silent wrong answers found by trying medfuse on a hospital-style table off the paved road:
each test fails on the release before its fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfuse.core.errors import DataError, SpecError
from medfuse.core.readers import read_image, read_signal
from medfuse.core.readers.base import file_scale
from medfuse.core.spec import ModalitySpec, parse_spec
from medfuse.data import load_spec_data
from medfuse.data.examples import write_csv_signal, write_dicom, write_png
from medfuse.data.manifest import split_column


@pytest.fixture(scope="module")
def image_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image + age package fit on a table of 8x8 PNGs, read with window 'unit'."""
    import medfuse

    root = tmp_path_factory.mktemp("imgpkg")
    df = _table(root, split="split")
    df.to_csv(root / "cases.csv", index=False)
    res = medfuse.fit(
        root / "cases.csv",
        "label",
        "1",
        out=root / "pkg",
        # 'unit': every file on [0, 1] by its bit depth, so a 16-bit PNG is read, not refused
        overrides=[*TINY, "modalities.image.window=unit"],
        verbose=False,
        device="cpu",
        progress=False,
    )
    return Path(res.package)


N = 30
SPLITS = ["train", "train", "train", "val", "test"]
#: a one-epoch run of a tabular-only table; TINY adds the image branch's size
TINY_TAB = ["train.epochs=1", "train.batch_size=8"]
TINY = [*TINY_TAB, "branches.image.width=4", "branches.image.depth=1"]


def _table(root: Path, *, bright: int = 60, split: str | None = None) -> pd.DataFrame:
    """N 8x8 PNGs under ``root/img`` (brighter when positive), an age column, the label and,
    with ``split``, a split column of that name."""
    rng = np.random.default_rng(0)
    for i in range(N):
        img = np.clip(rng.normal(90 + bright * (i % 2), 30, (8, 8)), 0, 255).astype(np.uint8)
        write_png(root / "img" / f"{i}.png", img)
    df = pd.DataFrame(
        {
            "image": [f"img/{i}.png" for i in range(N)],
            "age": [40 + (i * 7) % 30 for i in range(N)],
            "label": [i % 2 for i in range(N)],
        }
    )
    if split:
        df[split] = [SPLITS[i % 5] for i in range(N)]
    return df


def test_data_reads_its_own_folder_not_the_training_tables_base_dir(tmp_path: Path) -> None:
    """A package fit on a DataFrame records where its relative paths resolve (``base_dir``);
    ``evaluate --data other.csv`` kept it, so a copy of the data at another site with the same
    file names was scored on the training site's images, without a word."""
    import medfuse

    site_a, site_b = tmp_path / "a", tmp_path / "b"
    df = _table(site_a)
    pkg = medfuse.fit(
        df,
        "label",
        "1",
        out=tmp_path / "pkg",
        base_dir=site_a,
        overrides=TINY,
        verbose=False,
        device="cpu",
        progress=False,
    ).package
    shutil.copytree(site_a, site_b)
    df.assign(split="test").to_csv(site_b / "ext.csv", index=False)
    shutil.rmtree(site_a / "img")  # the training site's files are gone: site b's must be read
    out = medfuse.evaluate(pkg, data=site_b / "ext.csv", device="cpu")
    assert out["n"] == N


def test_a_split_column_is_found_in_any_case(tmp_path: Path) -> None:
    """A column ``Split`` was typed a categorical input and the split drawn by the seed (the
    reported test metrics were not on the user's test rows)."""
    from medfuse.data.table import infer_table_spec

    df = _table(tmp_path, split="Split")
    df.to_csv(tmp_path / "cases.csv", index=False)
    spec = infer_table_spec(tmp_path / "cases.csv", label="label", positive="1").spec
    assert "Split" not in spec["modalities"].get("clinical", {}).get("columns", [])
    assert spec["data"]["options"]["split_column"] == "Split"
    spec["data"]["options"].pop("split_column")  # the default name, "split", finds it too
    b = load_spec_data(parse_spec(spec))
    assert b.info["splits"]["column"] == "Split"
    assert len(b.test) == N // 5  # the user's test rows, not a drawn 15%
    # a package that recorded "Split" reads an external CSV's "split" (it drew a split instead)
    ext = df.drop(columns="Split").assign(split="test")
    assert split_column(ext, spec["data"]["options"] | {"split_column": "Split"}) == "split"
    df["split"] = df["Split"]
    df.to_csv(tmp_path / "cases.csv", index=False)
    with pytest.raises(DataError, match=r"each named like the split column .split.; keep one"):
        infer_table_spec(tmp_path / "cases.csv", label="label", positive="1")


def test_window_file_refuses_a_column_of_windowed_and_unwindowed_dicoms(tmp_path: Path) -> None:
    """Under ``window: file`` a DICOM without a window falls back to its stored bit range; in a
    column of windowed DICOMs it was read on another scale without a word (the table's check
    looked at the first 8 files only)."""
    m = ModalitySpec(kind="image", channels=1, size=[8, 8], window="file")
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 100
    write_dicom(tmp_path / "w.dcm", stored, window=(2000.0, 4000.0))
    write_dicom(tmp_path / "nw.dcm", stored)
    png = write_png(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    assert file_scale(tmp_path / "w.dcm", m) != file_scale(tmp_path / "nw.dcm", m)
    assert file_scale(png, m) == ""  # a PNG: read alike under 'file' (by its bit depth)
    files = ["w.dcm"] * 9 + ["x.png"] * 3 + ["nw.dcm"]
    rows = [{"image": f, "label": i % 2, "split": SPLITS[i % 5]} for i, f in enumerate(files)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    spec = {
        "name": "win",
        "task": {"type": "binary"},
        "data": {"source": f"manifest:{tmp_path / 'm.csv'}", "stream": False},
        "modalities": {"image": m.model_dump(exclude_none=True)},
        "branches": {"image": {"type": "cnn", "width": 4, "depth": 1, "out_features": 4}},
    }
    with pytest.raises(DataError, match=r"different intensity scales.*no DICOM window"):
        load_spec_data(parse_spec(spec))
    rows[-1]["image"] = "w.dcm"  # every DICOM windowed, PNGs beside them: one scale
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    assert load_spec_data(parse_spec(spec)).info["scales"]["image"].startswith("the DICOM's own")


def test_a_duplicated_header_is_refused_by_every_reader(
    image_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pandas (training, evaluate) read the first of two ``age`` columns, ``medfuse predict``'s
    CSV reader the last: the same file scored on two columns."""
    from medfuse.cli import main
    from medfuse.data.manifest import read_csv_frame

    write_png(tmp_path / "0.png", np.full((8, 8), 100, np.uint8))
    p = tmp_path / "dup.csv"
    p.write_text("image,age,age,label\n0.png,50,600,1\n")
    with pytest.raises(DataError, match="'age' more than once"):
        read_csv_frame(p)
    assert main(["predict", str(image_package), "--input", str(p)]) != 0
    assert "'age' more than once" in capsys.readouterr().err
    # a DataFrame too: to_dict kept the last 'age', training's table route crashed
    import medfuse
    from medfuse.data.table import infer_table_spec

    df = pd.DataFrame([[str(tmp_path / "0.png"), 50, 600, 1]], columns=["image", "age", "age", "y"])
    with pytest.raises(DataError, match="'age' more than once"):
        medfuse.load(image_package).predict_table(df)
    with pytest.raises(DataError, match="'age' more than once"):
        infer_table_spec(df, label="y", positive="1")


def test_a_blank_or_compressed_image_is_flagged(image_package: Path, tmp_path: Path) -> None:
    """A flag said an image brighter than any training image was out of range, never a black
    one or 8-bit values saved in a 16-bit PNG (read / 65535: near 0)."""
    import medfuse

    pred = medfuse.load(image_package)
    rng = np.random.default_rng(1)
    ok = write_png(tmp_path / "ok.png", np.clip(rng.normal(120, 30, (8, 8)), 0, 255).astype("u1"))
    black = write_png(tmp_path / "black.png", np.zeros((8, 8), np.uint8))
    deep = tmp_path / "deep.png"
    Image.fromarray(np.asarray(Image.open(ok), np.uint16)).save(deep)  # 8-bit values, 16 bits
    rows = [{"image": str(p), "age": 50} for p in (ok, black, deep)]
    flags = [r["flags"] for r in pred.predict_table(rows)]
    assert not flags[0] and all("under half the 1st percentile" in str(f) for f in flags[1:]), flags


def test_exif_orientation_and_multipage_files(tmp_path: Path) -> None:
    """A phone photo was read unrotated (as stored, not as shown); a multi-page TIFF (a
    z-stack) as its first page alone."""
    a = np.zeros((4, 8), np.uint8)
    a[0, :] = 255  # the top row white, as stored
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    x = read_image(tmp_path / "r.jpg")
    assert x.shape == (1, 8, 4)  # as shown: 4 wide, 8 high
    assert x[0, :, -1].mean() > 200  # the stored top row is now the right column
    pages = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200, 30)]
    pages[0].save(tmp_path / "z.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(DataError, match="holds 3 pages/frames"):
        read_image(tmp_path / "z.tif")


def test_a_modality_the_model_never_trained_without_is_flagged_when_missing(
    image_package: Path,
) -> None:
    """Every training row had an image and no modality dropout was trained: a case without an
    image was scored with only ``present_image=0`` to say so, on inputs unlike any the model
    learned from."""
    import medfuse

    pred = medfuse.load(image_package)
    stats = pred.meta["preprocessing"]
    assert stats["image"]["trained_without"] is False
    rows = pred.predict_table([{"image": "", "age": 50}], on_bad_row="missing")
    assert "image: missing, and the model never trained without it" in str(rows[0]["flags"])


# ---- signals: invalid samples, records longer than the model reads, a lead off ---------------


def _ecg(root: Path, i: int, seconds: float = 2.0, fs: float = 100.0) -> np.ndarray:
    t = np.arange(int(seconds * fs)) / fs
    return np.stack([np.sin(2 * np.pi * (1 + i % 2) * t), 0.5 * np.cos(2 * np.pi * t)]).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def signal_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-lead (I, II) 100 Hz, 2 s CSV-signal + age package fit on a table."""
    import medfuse

    root = tmp_path_factory.mktemp("sigpkg")
    for i in range(N):
        write_csv_signal(root / "sig" / f"{i}.csv", _ecg(root, i), 100.0, ["I", "II"])
    df = pd.DataFrame(
        {
            "ecg": [f"sig/{i}.csv" for i in range(N)],
            "age": [40 + (i * 7) % 30 for i in range(N)],
            "label": [i % 2 for i in range(N)],
            "split": [SPLITS[i % 5] for i in range(N)],
        }
    )
    df.to_csv(root / "cases.csv", index=False)
    over = [*TINY_TAB, "branches.signal.width=4"]
    res = medfuse.fit(
        root / "cases.csv", "label", "1", out=root / "pkg", overrides=over, verbose=False,
        device="cpu", progress=False,
    )  # fmt: skip
    return Path(res.package)


def test_a_lead_mostly_invalid_is_refused_not_invented(tmp_path: Path) -> None:
    """With a sampling rate (which a table of agreeing files always gets), NaN samples were
    interpolated: a lead with no valid sample became 0, a 75% gap the edge values, and the
    record was predicted on without a word."""
    x = _ecg(tmp_path, 0).astype(np.float64)
    gap = x.copy()
    gap[:, :150] = np.nan  # 75% of both leads
    blank = x.copy()
    blank[1] = np.nan  # lead II: nothing valid
    few = x.copy()
    few[:, 10:30] = np.nan  # 10%: interpolated, as before
    for name, sig in (("gap", gap), ("blank", blank), ("few", few)):
        write_csv_signal(tmp_path / f"{name}.csv", sig, 100.0, ["I", "II"])
    for name, lead, share in (("gap", "I", "75%"), ("blank", "II", "100%")):
        with pytest.raises(DataError, match=f"lead '{lead}' has {share} of its 200 samples"):
            read_signal(tmp_path / f"{name}.csv", rate=100.0)
    got = read_signal(tmp_path / "few.csv", rate=100.0)
    assert np.isfinite(got).all() and got.shape == (2, 200)
    # the same gap as rows missing from the time column (an irregular record) was drawn as
    # straight lines and predicted on: refused alike
    write_csv_signal(tmp_path / "rows.csv", x, 100.0, ["I", "II"])
    rows = pd.read_csv(tmp_path / "rows.csv")
    rows.drop(index=range(20, 170)).to_csv(tmp_path / "rows.csv", index=False)  # 75% gone
    with pytest.raises(DataError, match=r"its time column skips 75% of the record"):
        read_signal(tmp_path / "rows.csv", rate=100.0)
    rows = pd.read_csv(tmp_path / "few.csv").drop(index=range(40, 60))  # 10%: interpolated
    rows.fillna(0.0).to_csv(tmp_path / "some.csv", index=False)
    assert read_signal(tmp_path / "some.csv", rate=100.0).shape == (2, 200)
    # saved with its pandas index: a lead named '' of row numbers, not a lead
    rows.fillna(0.0).to_csv(tmp_path / "indexed.csv")
    with pytest.raises(DataError, match=r"column 1 of its header has no name .*index=False"):
        read_signal(tmp_path / "indexed.csv", rate=100.0)
    # a trailing comma on every line (a spreadsheet's export): an empty column, not a lead
    text = (tmp_path / "some.csv").read_text().splitlines()
    (tmp_path / "comma.csv").write_text("\n".join(f"{line}," for line in text) + "\n")
    assert np.array_equal(
        read_signal(tmp_path / "comma.csv", rate=100.0),
        read_signal(tmp_path / "some.csv", rate=100.0),
    )


def test_a_long_record_and_a_lead_off_are_flagged(signal_package: Path, tmp_path: Path) -> None:
    """A 20 s record given to a 2 s model was scored on its middle 2 s with no flag; a lead of
    zeros beside a live one was flagged only when every lead was zero."""
    import medfuse

    pred = medfuse.load(signal_package)
    write_csv_signal(tmp_path / "ok.csv", _ecg(tmp_path, 1), 100.0, ["I", "II"])
    write_csv_signal(tmp_path / "long.csv", _ecg(tmp_path, 1, seconds=20.0), 100.0, ["I", "II"])
    off = _ecg(tmp_path, 1)
    off[1] = 0.0
    write_csv_signal(tmp_path / "off.csv", off, 100.0, ["I", "II"])
    rows = [{"ecg": str(tmp_path / f"{n}.csv"), "age": 50} for n in ("ok", "long", "off")]
    flags = [r["flags"] for r in pred.predict_table(rows)]
    assert not flags[0], flags
    assert "holds 2000 samples and the model reads its middle 200 (2 s of 20 s)" in flags[1]
    assert "lead II is 0 throughout" in flags[2]


def test_an_older_package_flags_a_photo_it_would_have_read_unturned(
    image_package: Path, tmp_path: Path
) -> None:
    """Photos are now read turned as their EXIF tag says; a package of an earlier release was
    trained on such photos unturned, so a tagged photo given to it is flagged (it was turned
    without a word, unlike its training photos)."""
    import json

    import medfuse

    old = tmp_path / "old"
    shutil.copytree(image_package, old)
    meta = json.loads((old / "medfuse.json").read_text())
    assert meta["preprocessing"]["image"].pop("exif_oriented") is True
    meta.pop("meta_sha256")  # nor had that release a digest of medfuse.json
    (old / "medfuse.json").write_text(json.dumps(meta))
    a = np.clip(np.random.default_rng(2).normal(120, 30, (8, 8)), 0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(a).save(tmp_path / "plain.jpg", quality=95)
    rows = [{"image": str(tmp_path / n), "age": 50} for n in ("turned.jpg", "plain.jpg")]
    for pkg, flagged in ((old, [True, False]), (image_package, [False, False])):
        flags = [r["flags"] for r in medfuse.load(pkg).predict_table(rows)]
        assert [("EXIF orientation (6)" in f) for f in flags] == flagged, (pkg, flags)


def test_records_as_long_as_the_training_ones_are_not_flagged(tmp_path: Path) -> None:
    """A model trained on 4 s records of which it reads 1 s: a 4 s record is what it learned
    from (not flagged); a 20 s one is longer than any training record (flagged)."""
    import medfuse

    for i in range(N):
        write_csv_signal(tmp_path / "sig" / f"{i}.csv", _ecg(tmp_path, i, 4.0), 100.0, ["I", "II"])
    df = pd.DataFrame(
        {
            "ecg": [f"sig/{i}.csv" for i in range(N)],
            "label": [i % 2 for i in range(N)],
            "split": [SPLITS[i % 5] for i in range(N)],
        }
    )
    df.to_csv(tmp_path / "cases.csv", index=False)
    over = [*TINY_TAB, "branches.signal.width=4"]
    res = medfuse.fit(
        tmp_path / "cases.csv", "label", "1", out=tmp_path / "pkg", verbose=False, device="cpu",
        progress=False, overrides=[*over, "modalities.signal.length=100"],
    )  # fmt: skip
    pred = medfuse.load(res.package)
    assert pred.meta["data"]["aspects"]["signal"] == [400.0, 400.0]
    write_csv_signal(tmp_path / "long.csv", _ecg(tmp_path, 1, 20.0), 100.0, ["I", "II"])
    rows = [{"ecg": str(tmp_path / f)} for f in ("sig/1.csv", "long.csv")]
    flags = [str(r["flags"]) for r in pred.predict_table(rows)]
    assert "reads its middle" not in flags[0]
    assert "holds 2000 samples" in flags[1] and "training records held 400..400" in flags[1]


def test_a_relative_path_naming_files_in_two_folders_is_refused(
    image_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DataFrame's relative paths resolve against the training manifest's folder when it
    exists here: a user predicting another site's copy (same file names) from its folder got
    the training images' predictions, without a word. A path naming a file in both is refused;
    base_dir says which."""
    import medfuse

    site = tmp_path / "site"
    _table(site, bright=-60)  # other images under the same names
    monkeypatch.chdir(site)
    pred = medfuse.load(image_package)
    df = pd.DataFrame({"image": ["img/1.png"], "age": [50]})
    with pytest.raises(DataError, match=r"img/1.png names a file in the training .* base_dir"):
        pred.predict_table(df)
    here = pred.predict_table(df, base_dir=site)[0]
    there = pred.predict_table(df, base_dir=image_package.parent)[0]
    assert here["prob_1"] != there["prob_1"]
    # a path only in the training folder still reads from there
    (site / "img" / "2.png").unlink()
    assert pred.predict_table(pd.DataFrame({"image": ["img/2.png"], "age": [50]}))[0]["error"] == ""


def test_a_category_only_in_val_or_test_rows_is_flagged(tmp_path: Path) -> None:
    """A package's categories come from every split: a value only in the test rows (``U``)
    got a code and was predicted like a learnt one, while a numeric value off the training
    range was flagged."""
    import medfuse

    n = 60
    split = np.where(np.arange(n) < 40, "train", np.where(np.arange(n) < 50, "val", "test"))
    df = pd.DataFrame(
        {
            "age": 40.0 + np.arange(n) % 30,
            "sex": np.where(split == "test", "U", np.where(np.arange(n) % 2, "F", "M")),
            "label": np.arange(n) % 2,
            "split": split,
        }
    )
    res = medfuse.fit(df, "label", 1, out=tmp_path / "p", overrides=TINY_TAB, verbose=False)
    pred = medfuse.load(res.package)
    assert pred.meta["preprocessing"]["clinical"]["categories"] == {"sex": ["F", "M", "U"]}
    rows = pred.predict_table(pd.DataFrame({"age": [50.0] * 3, "sex": ["F", "M", "U"]}))
    flags = [r["flags"] for r in rows]
    assert flags[:2] == ["", ""]
    assert "sex=U, a value no training row held" in flags[2] and "training saw F, M" in flags[2]


def test_evaluate_counts_the_rows_a_prediction_would_flag(
    image_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An external cohort exporting age in months (every value off the training range) was
    evaluated without a word, while ``medfuse predict`` flagged every row of it."""
    import medfuse
    from medfuse.cli import main

    site = tmp_path / "ext"
    df = _table(site)
    df["age"] = df["age"] * 12
    df["split"] = "test"
    df.to_csv(site / "ext.csv", index=False)
    out = medfuse.evaluate(image_package, data=site / "ext.csv", device="cpu")
    plaus = out["plausibility"]
    assert plaus["rows"] == plaus["n"] == N and plaus["inputs"]["age"] == N
    assert "outside the training range" in plaus["example"]
    own = medfuse.evaluate(image_package, device="cpu")["plausibility"]
    assert own["rows"] < own["n"]  # its own test rows: within (a few may lie off the range)
    assert main(["evaluate", str(image_package), "--data", str(site / "ext.csv")]) == 0
    err = capsys.readouterr().err
    assert f"{N} of {N} rows hold an input unlike the training data (age {N}" in " ".join(
        err.split()
    )


def test_a_table_run_leaves_the_spec_beside_a_kept_package_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train --table`` wrote ``<out>.spec.yaml`` before checking ``--out``: a run refused for
    the package already there replaced the spec beside it, and a failed ``--overwrite`` run
    (the old package kept) left a spec of the failed data beside it."""
    import medfuse
    from medfuse.cli import main

    root = tmp_path / "site"
    df = _table(root)
    df.to_csv(root / "cases.csv", index=False)
    out = tmp_path / "pkg"
    medfuse.fit(root / "cases.csv", "label", "1", out=out, overrides=TINY, verbose=False)
    spec, weights = out.with_name("pkg.spec.yaml"), (out / "model.safetensors").read_bytes()
    before = spec.read_bytes()
    other = df.assign(age=df["age"] + 1)
    other.to_csv(root / "other.csv", index=False)
    # refused: a package is there (a usage error, as `train spec.yaml --out` gives)
    args = ["train", "--table", str(root / "other.csv"), "--label", "label", "--out", str(out)]
    assert main(args) == 2
    assert spec.read_bytes() == before
    with pytest.raises(SpecError, match="holds a package already"):
        medfuse.fit(root / "other.csv", "label", "1", out=out, overrides=TINY, verbose=False)
    assert spec.read_bytes() == before
    # --overwrite, but the training fails on an unreadable image: the package and its spec kept
    (root / "img" / "3.png").write_bytes(b"not a png")
    assert main([*args, "--overwrite", *(f"--set={o}" for o in TINY)]) == DataError.exit_code
    assert "3.png: not a readable image" in capsys.readouterr().err
    assert spec.read_bytes() == before
    assert (out / "model.safetensors").read_bytes() == weights


def test_a_column_named_like_the_tabular_modality_is_read_as_a_column(tmp_path: Path) -> None:
    """``train --table`` names its tabular modality ``clinical``: a table with a column of that
    name trained, then could not predict its own rows (the cell was taken for the whole
    modality: "a string is not tabular input", or "shape ()")."""
    import medfuse

    n = 40
    df = pd.DataFrame(
        {
            "age": 40.0 + np.arange(n) % 30,
            "clinical": (np.arange(n) * 7 % 11).astype(float),
            "label": np.arange(n) % 2,
        }
    )
    res = medfuse.fit(df, "label", 1, out=tmp_path / "p", overrides=TINY_TAB, verbose=False)
    pred = medfuse.load(res.package)
    assert pred.spec.modalities["clinical"].columns == ["age", "clinical"]
    rows = pred.predict_table(df.head(3))
    assert all(r["error"] == "" for r in rows)
    as_dicts = pred.predict_proba(
        [{"clinical": {"age": a, "clinical": c}} for a, c in zip(df.age[:3], df.clinical[:3])]
    )
    assert np.allclose([r["prob_1"] for r in rows], as_dicts)
    top_level = pred.predict_proba(
        [{"age": a, "clinical": c} for a, c in zip(df.age[:3], df.clinical[:3])]
    )
    assert np.allclose(top_level, as_dicts)


def test_predict_says_how_many_rows_miss_a_tabular_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A column empty in every row was predicted at its training mean with no line on the
    console (only the per-row ``missing_values`` column said so), unlike ``evaluate``."""
    import medfuse
    from medfuse import runtime
    from medfuse.cli import main

    n = 40
    df = pd.DataFrame(
        {"age": 40.0 + np.arange(n) % 30, "lab": np.arange(n) % 7 * 1.5, "label": np.arange(n) % 2}
    )
    pkg = medfuse.fit(df, "label", 1, out=tmp_path / "p", overrides=TINY_TAB, verbose=False).package
    from medfuse.export.exporter import export_package

    export_package(pkg, format="onnx")  # the torch-free runtime reads model.onnx
    df.head(3).assign(lab=None).drop(columns=["label"]).to_csv(tmp_path / "new.csv", index=False)
    capsys.readouterr()
    for run in (
        lambda: main(["predict", str(pkg), "--input", str(tmp_path / "new.csv")]),
        lambda: runtime.main([str(pkg), "--input", str(tmp_path / "new.csv")]),
    ):
        assert run() == 0
        err = " ".join(capsys.readouterr().err.split())
        assert (
            "3 of 3 rows miss a tabular value, each standardised to the training mean (lab 3)"
            in err
        )


def test_a_multilabel_cell_of_separators_only_is_refused(tmp_path: Path) -> None:
    """A cell ``;`` read as "none of the labels" without a word (25 NORM rows of an export
    became negatives), while an empty cell is refused as unlabelled."""
    n = 30
    df = pd.DataFrame(
        {"age": 40.0 + np.arange(n), "dx": ["MI;STTC", "NORM", "MI", ";", "STTC"] * (n // 5)}
    )
    df.to_csv(tmp_path / "m.csv", index=False)
    spec = {
        "name": "ml",
        "task": {"type": "multilabel"},
        "data": {"source": f"manifest:{tmp_path / 'm.csv'}", "options": {"label": "dx"}},
        "modalities": {"clinical": {"kind": "tabular", "columns": ["age"]}},
        "branches": {"clinical": {"type": "mlp", "hidden": 4, "out_features": 4}},
    }
    with pytest.raises(DataError, match=r"row 5: label ';' in column 'dx' names no label \(6 such"):
        load_spec_data(parse_spec(spec))


def test_signals_in_two_units_are_reported_at_training(caplog: pytest.LogCaptureFixture) -> None:
    """CSV signals carry no unit: 65 records in µV trained beside 175 in mV without a word, and
    widened the range that would have flagged a µV record at prediction."""
    import logging

    from medfuse.core.preprocess import fit_ranges, span_groups

    rng = np.random.default_rng(0)
    mv = rng.normal(0, 1, (175, 2, 100)) * rng.uniform(0.5, 3, (175, 1, 1))
    uv = rng.normal(0, 1, (65, 2, 100)) * rng.uniform(500, 3000, (65, 1, 1))
    both = np.concatenate([mv, uv]).astype(np.float32)
    got = fit_ranges(both, np.ones(len(both)), "signal")["span_groups"]
    assert got["low_n"] == 175 and got["high_n"] == 65 and got["high"] / got["low"] > 500
    assert "span_groups" not in fit_ranges(mv.astype(np.float32), np.ones(175), "signal")
    # one flat record (a lead off) among many is no second unit
    flat = np.concatenate([mv, rng.normal(0, 0.001, (1, 2, 100))])
    assert span_groups(flat.max(axis=(1, 2)) - flat.min(axis=(1, 2))) is None

    from medfuse.training.pipeline import fit_preprocessing

    spec = parse_spec(
        {
            "name": "units",
            "data": {"source": "synthetic"},
            "modalities": {"ecg": {"kind": "signal", "channels": 2, "length": 100}},
            "branches": {"ecg": {"type": "cnn1d", "width": 4, "depth": 1}},
        }
    )

    from types import SimpleNamespace

    train = SimpleNamespace(arrays={"ecg": both}, masks={"ecg": np.ones(len(both), np.float32)})
    with caplog.at_level(logging.WARNING, logger="medfuse"):
        fit_preprocessing(spec, train, {})
    assert "'ecg': the training samples' value spans fall in two groups" in caplog.text


def test_a_table_run_that_left_a_checkpoint_keeps_its_spec(tmp_path: Path) -> None:
    """The files beside a package are put back when a run fails, but not when it left a
    checkpoint (killed, interrupted, a rank lost under --nproc): ``--resume`` reads that spec."""
    from medfuse.data.table import spec_path_for, table_run

    df = pd.DataFrame({"age": 40.0 + np.arange(20), "label": np.arange(20) % 2})
    out = tmp_path / "pkg"
    for resumable, kept in ((lambda o: False, False), (lambda o: o == out, True)):
        with (
            pytest.raises(KeyboardInterrupt),
            table_run(df, label="label", out=out, resumable=resumable),
        ):
            assert spec_path_for(out).exists()
            raise KeyboardInterrupt
        assert spec_path_for(out).exists() is kept
