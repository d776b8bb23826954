"""``medfuse compare`` on small synthetic runs: the fused model beats an image-only one
significantly; two seeds of the same config are not significantly different."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from medfuse.cli import main

SPEC: dict[str, Any] = {
    "name": "syn-small",
    "task": {"type": "binary"},
    "data": {
        "source": "synthetic",
        "options": {
            "n_train": 400,
            "n_val": 150,
            "n_test": 300,
            "image_size": 16,
            "signal_length": 64,
            "signal_channels": 1,
        },
    },
    "branches": {
        "image": {"type": "cnn", "width": 8, "depth": 2, "out_features": 16},
        "signal": {"type": "cnn1d", "width": 8, "depth": 2, "kernel": 7, "out_features": 16},
        "tabular": {"type": "mlp", "hidden": 16, "out_features": 8},
    },
    "fusion": {"type": "concat"},
    "head": {"hidden": 16},
    "train": {"epochs": 10, "batch_size": 64, "lr": 0.005, "early_stopping": None},
}


def image_only(spec: dict[str, Any]) -> dict[str, Any]:
    """The same data and image branch, with ``modalities`` restricted to the image."""
    s = copy.deepcopy(spec)
    s["name"] = "syn-image-only"
    s["modalities"] = {"image": {"kind": "image", "channels": 1, "size": [16, 16]}}
    s["branches"] = {"image": spec["branches"]["image"]}
    return s


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    from medfuse.api import train

    root = tmp_path_factory.mktemp("compare")
    runs = {"fused": (SPEC, 0), "fused_seed1": (SPEC, 1), "image": (image_only(SPEC), 0)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and immune to oversubscription
    try:
        return {
            name: train(
                copy.deepcopy(spec), out=root / name, device="cpu", seed=seed, progress=False
            ).package
            for name, (spec, seed) in runs.items()
        }
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_fused_beats_image_only_significantly(packages, capsys) -> None:
    rc = main(["compare", str(packages["image"]), str(packages["fused"]), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [m["modalities"] for m in res["models"]] == [["image"], ["image", "signal", "tabular"]]
    c = res["comparisons"][0]
    assert c["test"] == "DeLong"  # one sample per virtual patient: DeLong applies
    assert c["significant"] and c["p"] < 0.001
    assert c["diff"] > 0.05 and c["bootstrap"]["lo"] > 0
    a, b = (m["metrics"]["auroc"] for m in res["models"])
    assert c["diff"] == pytest.approx(b["value"] - a["value"])


@pytest.mark.slow
def test_two_seeds_of_one_config_are_not_different(packages, capsys) -> None:
    rc = main(["compare", str(packages["fused"]), str(packages["fused_seed1"])])
    text = capsys.readouterr().out
    assert rc == 0
    assert "not significant" in text and "DeLong" in text


@pytest.mark.slow
def test_compare_refuses_different_test_sets(packages, tiny_package, capsys) -> None:
    rc = main(["compare", str(packages["fused"]), str(tiny_package), "--bootstrap", "50"])
    assert rc == 3
    assert "not scored on the same test set" in capsys.readouterr().err


def test_compare_refuses_the_same_samples_read_with_other_inputs() -> None:
    """Two packages of one data source whose options differ (70% of images missing for one)
    share labels and ids: compare called the data's difference a significant one between the
    models. The modalities both read must be the same presence and values."""
    import numpy as np
    import pandas as pd

    from medfuse.data import Split
    from medfuse.report.compare import _other_inputs

    rng = np.random.default_rng(0)
    x, t = rng.random((6, 1, 4, 4)).astype(np.float32), rng.random((6, 2)).astype(np.float32)
    meta = pd.DataFrame({"id": [f"s{i}" for i in range(6)]})
    y = np.array([0, 1, 0, 1, 0, 1])

    def split(image_mask: list[float], image: np.ndarray = x) -> Split:
        ones = np.ones(6, np.float32)
        masks = {"image": np.array(image_mask, np.float32), "tab": ones}
        return Split({"image": image, "tab": t}, masks, y, meta)

    full = split([1] * 6)
    assert _other_inputs(full, split([1] * 6)) is None
    assert "present in other samples" in _other_inputs(full, split([1, 0, 1, 0, 1, 1]))
    # another reading of the same files (size, window, tokenizer): the models' difference
    assert _other_inputs(full, split([1] * 6, x * 2)) is None
    student = Split({"tab": t}, {"tab": np.ones(6, np.float32)}, y, meta)  # fewer modalities
    assert _other_inputs(full, student) is None
    from medfuse.core.spec import parse_spec

    def spec(**options: object) -> object:
        return parse_spec({"data": {"source": "synthetic", "options": options},
                           "modalities": {"t": {"kind": "tabular", "columns": ["a"]}},
                           "branches": {"t": {"type": "mlp"}}})  # fmt: skip

    a, b = spec(n_test=6, missing={"image": 0.7}), spec(n_test=6)
    assert _other_inputs(full, full, a, b) is None  # set in one spec only: not compared
    c = spec(n_test=6, missing={"image": 0.2})
    assert "data option 'missing'" in _other_inputs(full, full, a, c)


def test_a_paired_difference_of_sensitivities_from_three_positives_is_withheld() -> None:
    """compare --metric sensitivity on 3 positives: +1.0 [1.0, 1.0], p 0.001, 'significant',
    beside two sensitivities whose exact intervals overlap."""
    import numpy as np

    from medfuse.report.compare import paired_bootstrap

    y = np.array([1, 1, 1] + [0] * 97)
    rest = np.linspace(0.1, 0.4, 97)
    pa, pb = np.r_[[0.9, 0.8, 0.7], rest], np.r_[[0.3, 0.2, 0.1], rest]
    got = paired_bootstrap("binary", y, pa, pb, metric="sensitivity", n_boot=200)
    assert got["diff"] == 1.0 and np.isnan(got["lo"]) and np.isnan(got["p"])
    assert "3 positive samples" in got["method"]
    y5 = np.array([1] * 8 + [0] * 92)  # enough of each class: tested
    pa5, pb5 = np.r_[[0.9] * 8, rest[:92]], np.r_[[0.3] * 8, rest[:92]]
    assert np.isfinite(paired_bootstrap("binary", y5, pa5, pb5, metric="sensitivity")["p"])
