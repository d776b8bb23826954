"""``medfuse predict --runtime torch|onnx --batch-size B``: chunked streaming over a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfuse.cli import main
from medfuse.core.package import read_meta
from medfuse.serve.batch import count_rows, predict_stream

N = 37


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest of real files: PNG images, .npy signals, tabular columns, gaps and a bad file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        img = (rng.random((20, 20)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"img{i}.png")
        np.save(root / f"sig{i}.npy", rng.normal(size=(2, 40)).astype(np.float32))
        rows.append(
            {
                "id": f"case-{i}",
                "image": f"img{i}.png" if i % 6 else "",
                "signal": f"sig{i}.npy" if i % 5 else "",
                "age": 40 + i if i % 7 else np.nan,
                "bmi": 20 + i / 10,
                "marker": rng.normal(),
            }
        )
    rows[3]["image"] = "does-not-exist.png"  # unreadable cell: that modality is missing
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_count_rows(manifest: Path) -> None:
    assert count_rows(manifest) == N


def test_stream_equals_one_shot_and_runtimes_agree(
    exported_package: Path, manifest: Path, tmp_path: Path
) -> None:
    from medfuse.core.inputs import Schema, iter_batches
    from medfuse.inference.predictor import load

    schema = Schema.from_meta(read_meta(exported_package))
    chunks = list(iter_batches(manifest, schema, chunk=8, on_bad_row="missing"))
    assert [len(c) for c in chunks] == [8, 8, 8, 8, 5]  # read 8 rows at a time
    one_shot = pd.DataFrame(load(exported_package).predict_table(manifest, on_bad_row="missing"))
    outs = {}
    for rt in ("torch", "onnx"):
        out = tmp_path / f"{rt}.csv"
        res = predict_stream(
            exported_package, manifest, out, runtime=rt, batch_size=3, chunk=8, on_bad_row="missing"
        )
        assert res.rows == N
        outs[rt] = pd.read_csv(out, keep_default_na=False)
    for df in outs.values():
        assert list(df["id"]) == [f"case-{i}" for i in range(N)]
        assert list(df.columns) == list(one_shot.columns)
        assert (df["label"] == one_shot["label"]).all()
        assert np.abs(df["prob_positive"] - one_shot["prob_positive"]).max() < 1e-5
        # the unreadable file of row 3 is a missing modality, and the row says why
        assert df["present_image"].tolist()[3] == 0
        assert "does-not-exist.png" in df["reason_image"][3]
        assert df["present_image"].tolist()[1] == 1 and df["reason_image"][1] == ""
        assert df["present_image"].tolist()[0] == 0 and df["reason_image"][0] == ""  # empty cell


def test_unreadable_file_fails_by_default(exported_package: Path, manifest: Path, tmp_path):
    from medfuse.core.errors import DataError

    out = tmp_path / "p.csv"
    with pytest.raises(DataError, match=r"row 5 \(image\).*does-not-exist.png.*on-bad-row missing"):
        predict_stream(exported_package, manifest, out, runtime="onnx")
    assert not out.exists()
    # the bad row in the second chunk, after the first was written: an existing output stays
    out.write_text("earlier predictions\n")
    with pytest.raises(DataError, match=r"does-not-exist\.png"):
        predict_stream(exported_package, manifest, out, runtime="onnx", batch_size=2, chunk=2)
    assert out.read_text() == "earlier predictions\n"
    assert [f.name for f in tmp_path.iterdir()] == ["p.csv"]  # no temporary file left


def test_cli_parquet_and_stdout(exported_package: Path, manifest: Path, tmp_path: Path, capsys):
    out = tmp_path / "preds.parquet"
    args = ["predict", str(exported_package), "--input", str(manifest), "--batch-size", "4"]
    args += ["--on-bad-row", "missing"]
    assert main([*args, "--runtime", "onnx", "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    assert len(df) == N and {"id", "prob_positive", "label", "threshold"} <= set(df.columns)
    capsys.readouterr()
    assert main([*args, "--runtime", "onnx"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("id,prob_positive") and len(printed) == N + 1


def test_onnx_runtime_without_export_says_what_to_do(
    tiny_package: Path, manifest: Path, capsys
) -> None:
    rc = main(["predict", str(tiny_package), "--input", str(manifest), "--runtime", "onnx"])
    assert rc == 4 and "medfuse export" in capsys.readouterr().err
