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
