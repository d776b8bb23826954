"""An image resized to the model's size from other proportions than the training files' is
stretched without a word unless the prediction says so: training records its files' width /
height (both data paths, the same), and a prediction input far outside is flagged, whichever
way it arrives (file, upload bytes, array, batch of arrays)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import medfuse
from medfuse.core.inputs import Modality, fit_note
from medfuse.core.package import read_meta
from medfuse.core.spec import parse_spec
from medfuse.data import load_spec_data
from medfuse.data.examples import write_png


@pytest.fixture(scope="module")
def wide_and_square(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 grey PNGs, 30 of 16x16 and 10 of 20 wide by 16 high (width/height 1.0..1.25), an age
    and a marker column (3 empty age cells), 0/1 labels, a split column."""
    root = tmp_path_factory.mktemp("aspect")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        y = i % 2
        w = 20 if i % 4 == 3 else 16
        px = np.clip(rng.normal(90 + 50 * y, 30, (16, w)), 0, 255).astype(np.uint8)
        write_png(root / "img" / f"{i}.png", px)
        split = "train" if i < 24 else ("val" if i < 32 else "test")
        age = np.nan if i in (9, 33, 35) else 50 + y  # missing: one train row, two test rows
        rows.append(
            {
                "id": f"s{i}",
                "label": y,
                "image": f"img/{i}.png",
                "age [y]": age,  # a unit in brackets: not markup to the console
                "marker": y * 0.5,
                "split": split,
            }
        )
    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    return root / "cases.csv"


def _spec(csv: Path, stream: bool) -> dict[str, Any]:
    return {
        "name": "aspect",
        "task": {"type": "binary"},
        "data": {
            "source": f"manifest:{csv}",
            "stream": stream,
            "workers": 0,
            "options": {"split_column": "split"},
        },
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [16, 16]},
            "clinical": {"kind": "tabular", "columns": ["age [y]", "marker"]},
        },
        "branches": {
            "image": {"type": "cnn", "width": 4, "depth": 1, "out_features": 4},
            "clinical": {"type": "mlp", "hidden": 4, "out_features": 4},
        },
        "head": {"hidden": 8},
        "train": {"epochs": 1, "batch_size": 8, "early_stopping": None, "seed": 0},
    }


def test_training_records_its_files_proportions_the_same_on_both_paths(
    wide_and_square: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(tmp_path / "cache"))
    memory = load_spec_data(parse_spec(_spec(wide_and_square, False)))
    streamed = load_spec_data(parse_spec(_spec(wide_and_square, True)))
    again = load_spec_data(parse_spec(_spec(wide_and_square, True)))  # the recorded pass
    assert memory.info["aspects"] == {"image": [1.0, 1.25]}
    assert streamed.info["aspects"] == again.info["aspects"] == memory.info["aspects"]
    assert again.info["stream"]["recorded"]


@pytest.fixture(scope="module")
def package(wide_and_square: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aspect-pkg") / "pkg"
    return medfuse.train(_spec(wide_and_square, False), out=out, progress=False).package


def test_an_input_resized_from_other_proportions_is_flagged(package: Path, tmp_path: Path) -> None:
    assert read_meta(package)["data"]["aspects"] == {"image": [1.0, 1.25]}
    pred = medfuse.load(package)
    rng = np.random.default_rng(1)
    files = {}
    for name, (h, w) in {
        "strip": (16, 64),
        "big": (32, 32),
        "tall": (40, 16),
        "same": (16, 16),
    }.items():
        files[name] = write_png(tmp_path / f"{name}.png", rng.integers(0, 255, (h, w), np.uint8))
    rows = pred.predict_table(
        [
            {"id": k, "image": str(p), "clinical": {"age [y]": 50, "marker": 0.0}}
            for k, p in files.items()
        ]
    )
    flags = {r["id"]: r["flags"] for r in rows}
    assert "a 64x16 image (width/height 4.00) resized to 16x16" in flags["strip"]
    assert (
        "the model's images (its training data's files) had width/height 1.00..1.25"
        in (flags["strip"])
    )
    assert "a 16x40 image (width/height 0.40)" in flags["tall"]
    assert "width/height" not in flags["big"]  # resized, same proportions
    assert "width/height" not in flags["same"]  # not resized
    # the same input as upload bytes, as one array, and as a batch of arrays
    up = pred.predict_table(
        [{"image": files["strip"].read_bytes(), "clinical": {"age [y]": 50, "marker": 0.0}}]
    )
    assert "width/height 4.00" in up[0]["flags"]
    arr = rng.random((1, 16, 64)).astype(np.float32) * 255
    one = pred.predict_table([{"image": arr, "clinical": {"age [y]": 50, "marker": 0.0}}])
    assert "width/height 4.00" in one[0]["flags"]
    both = pred.predict_rows(
        {
            "image": np.stack([arr, arr]),
            "clinical": np.array([[50.0, 0.0], [51.0, 0.5]], np.float32),
        }
    )
    assert all("width/height 4.00" in " ".join(f) for f in both.batch.flags)


def test_fit_note_needs_a_record_and_a_resize() -> None:
    m = Modality("image", "image", (1, 16, 16), channels=1, size=(16, 16), aspect=(1.0, 1.0))
    assert fit_note((1, 16, 20), m) == ""  # 1.25: within the margin
    assert "width/height 1.50" in fit_note((1, 16, 24), m)
    assert "width/height 0.67" in fit_note((1, 24, 16), m)
    assert fit_note((1, 16, 16), m) == ""  # already the model's size: not resized here
    unrecorded = Modality("image", "image", (1, 16, 16), channels=1, size=(16, 16))
    assert fit_note((1, 16, 64), unrecorded) == ""  # an older package, or not from files


def test_evaluate_counts_the_rows_with_an_imputed_value(package: Path, capsys) -> None:
    """A row whose tabular value was missing is scored on the training mean there: evaluate
    says how many (the JSON, a line on stderr), and the report's data table per split."""
    from medfuse.api import evaluate
    from medfuse.cli import main
    from medfuse.report.html import write_report

    m = evaluate(package, device="cpu")
    assert m["missing_values"] == {"rows": 2, "n": 8, "columns": {"age [y]": 2}}
    assert main(["evaluate", str(package), "--no-ci"]) == 0
    err = capsys.readouterr().err
    assert (
        "2 of 8 rows miss a tabular value, each standardised to the training mean (age [y] 2)"
        in (err)
    )
    html = write_report(package, package.parent / "report.html", n_boot=10)[0].read_text()
    assert "rows imputed" in html and "2 (age [y] 2)" in html and "1 (age [y] 1)" in html


def test_an_edited_record_of_proportions_is_refused_naming_the_field(package: Path) -> None:
    from medfuse.core.errors import PackageError
    from medfuse.core.inputs import modalities_from_meta

    meta = read_meta(package)
    assert modalities_from_meta(meta)["image"].aspect == (1.0, 1.25)
    for bad in ("x", [1.25, 1.0], [0, 1], [1.0]):
        meta["data"]["aspects"] = {"image": bad}
        with pytest.raises(PackageError, match=r"data\.aspects\.image is .* \[least, largest\]"):
            modalities_from_meta(meta)
