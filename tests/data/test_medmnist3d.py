"""3D MedMNIST: volumes (N, D, H, W) load as (N, 1, D, H, W); known names are MD5-checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfuse.core.errors import DataError
from medfuse.data import load_data
from medfuse.data.medmnist import KNOWN, is_volume_set


def _write_npz(path: Path, n: int = 12, side: int = 8, classes: int = 2) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = rng.integers(0, 255, (n, side, side, side)).astype(np.uint8)
        arrays[f"{s}_labels"] = (np.arange(n) % classes).reshape(-1, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_3d_volumes_load_with_a_channel_axis(tmp_path: Path) -> None:
    _write_npz(tmp_path / "medmnist" / "toymnist3d.npz", side=8)
    b = load_data("medmnist:toymnist3d", {}, data_root=tmp_path)
    x = b.train.arrays["image"]
    assert x.shape == (12, 1, 8, 8, 8) and x.dtype == np.float32
    assert b.modalities["image"].size == [8, 8, 8] and b.modalities["image"].shape == (1, 8, 8, 8)
    assert b.task == "binary" and b.labels == ["class_0", "class_1"]
    with np.load(tmp_path / "medmnist" / "toymnist3d.npz") as d:
        np.testing.assert_array_equal(x[:, 0], d["train_images"])  # (N, D, H, W) kept in order


def test_3d_set_trains_with_a_3d_cnn(tmp_path: Path) -> None:
    from medfuse.api import train

    _write_npz(tmp_path / "medmnist" / "toymnist3d.npz", n=10, side=8)
    spec = {
        "data": {"source": "medmnist:toymnist3d"},
        "branches": {"image": {"type": "cnn", "width": 2, "depth": 2, "out_features": 4}},
        "head": {"hidden": 0},
        "train": {"epochs": 1, "batch_size": 8, "early_stopping": None},
    }
    res = train(spec, out=tmp_path / "pkg", data_dir=tmp_path, device="cpu", progress=False)
    assert res.package.is_dir() and "auroc" in res.metrics["test"]


def test_known_3d_sets_are_md5_checked_and_offline_says_where(tmp_path: Path, monkeypatch) -> None:
    assert is_volume_set("nodulemnist3d") and is_volume_set("organmnist3d_64")
    assert not is_volume_set("breastmnist")
    assert KNOWN["nodulemnist3d"] == (["benign", "malignant"], "8755a7e9e05a4d9ce80a24c3e7a256f3")
    assert KNOWN["nodulemnist3d_64"][1] == "c47c5b7d457bf6332200d2ea6d64ecd8"
    # a file under a known name that is not the official one is refused
    _write_npz(tmp_path / "medmnist" / "nodulemnist3d.npz")
    with pytest.raises(DataError, match="does not match the official MD5 8755a7e9"):
        load_data("medmnist:nodulemnist3d", {}, data_root=tmp_path)
    monkeypatch.setenv("MEDFUSE_OFFLINE", "1")
    with pytest.raises(DataError, match=r"vesselmnist3d\.npz is not at .*MEDFUSE_OFFLINE"):
        load_data("medmnist:vesselmnist3d", {}, data_root=tmp_path)
    with pytest.raises(DataError, match=r"unknownmnist3d\.npz not found .* place the official"):
        load_data("medmnist:unknownmnist3d", {}, data_root=tmp_path)


def test_a_3d_file_with_2d_arrays_is_an_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = rng.integers(0, 255, (4, 8, 8)).astype(np.uint8)
        arrays[f"{s}_labels"] = np.zeros((4, 1), np.uint8)
    (tmp_path / "medmnist").mkdir()
    np.savez(tmp_path / "medmnist" / "flatmnist3d.npz", **arrays)
    with pytest.raises(DataError, match=r"holds volumes \(N, D, H, W\); got \(4, 8, 8\)"):
        load_data("medmnist:flatmnist3d", {}, data_root=tmp_path)
