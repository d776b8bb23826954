"""Core data sources: data root resolution, MedMNIST (offline message, real files), manifest, synthetic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfuse.core.errors import DataError
from medfuse.core.spec import ModalitySpec
from medfuse.data import load_data, resolve_data_root


def test_data_root_order(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MEDFUSE_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("MEDFUSE_DATA_DIR")
    assert resolve_data_root(None).name == "medfuse"


def test_medmnist_offline_says_where_to_put_the_file(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MEDFUSE_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_data("medmnist:breastmnist", data_root=tmp_path)
    assert str(tmp_path / "medmnist" / "breastmnist.npz") in str(e.value)


def test_medmnist_download_failure_is_clear(monkeypatch, tmp_path) -> None:
    import medfuse.data.medmnist as mm

    monkeypatch.setattr(mm, "ZENODO", "http://127.0.0.1:9/{name}.npz")  # nothing listens there
    with pytest.raises(DataError, match=r"could not download breastmnist\.npz.*Put the file at"):
        load_data("medmnist:breastmnist", data_root=tmp_path)
    assert not list((tmp_path / "medmnist").glob("*"))  # no partial file left


@pytest.mark.data("medmnist/breastmnist.npz", "medmnist/pneumoniamnist.npz")
def test_medmnist_real_files(data_dir) -> None:
    b = load_data("medmnist:breastmnist", data_root=data_dir)
    assert (len(b.train), len(b.val), len(b.test)) == (546, 78, 156)
    assert b.modalities["image"].shape == (1, 28, 28) and b.labels == ["malignant", "normal/benign"]
    # pointing at the dataset's own folder works too
    b2 = load_data("medmnist:pneumoniamnist", data_root=data_dir / "medmnist")
    assert len(b2.test) == 624


def _manifest(tmp_path, n: int = 40) -> tuple:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        y = i % 2
        img = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random((20, 20)) * 100 + 100 * y).astype(np.uint8)).save(img)
        sig = tmp_path / f"sig{i}.npy"
        np.save(sig, rng.standard_normal((2, 30)).astype(np.float32) + y)
        rows.append(
            {
                "id": f"s{i}",
                "patient_id": f"p{i // 2}",
                "label": ["benign", "malignant"][y],
                "image": img.name if i % 5 else "",
                "signal": sig.name,
                "age": 50 + i if i % 7 else None,
                "sex": ["F", "M"][i % 2],
            }
        )
    csv = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    mods = {
        "image": ModalitySpec(kind="image", channels=1, size=[16, 16]),
        "signal": ModalitySpec(kind="signal", channels=2, length=32),
        "clinical": ModalitySpec(kind="tabular", columns=["age", "sex"]),
    }
    return csv, mods


def test_manifest_split_by_patient_with_missing_cells(tmp_path) -> None:
    csv, mods = _manifest(tmp_path)
    b = load_data(f"manifest:{csv}", data_root=tmp_path, modalities=mods, positive="malignant")
    assert b.labels == ["benign", "malignant"] and b.task == "binary"
    parts = {s: set(getattr(b, s).meta["patient_id"]) for s in ("train", "val", "test")}
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])
    allm = np.concatenate([getattr(b, s).masks["image"] for s in ("train", "val", "test")])
    assert allm.sum() == 40 - 8  # every 5th image cell is empty -> missing, not a crash
    assert b.train.arrays["image"].shape[1:] == (1, 16, 16)  # resized
    assert b.info["categories"]["clinical"]["sex"] == ["F", "M"]
    assert (
        np.isnan(
            np.concatenate(
                [getattr(b, s).arrays["clinical"][:, 0] for s in ("train", "val", "test")]
            )
        ).sum()
        == 6
    )


def test_manifest_bad_row_fails_or_counts(tmp_path) -> None:
    csv, mods = _manifest(tmp_path)
    (tmp_path / "img3.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"m\.csv row 5 \(image\).*img3\.png"):
        load_data(f"manifest:{csv}", data_root=tmp_path, modalities=mods, positive="malignant")
    b = load_data(
        f"manifest:{csv}",
        data_root=tmp_path,
        modalities=mods,
        on_bad_row="missing",
        positive="malignant",
    )
    assert len(b.info["bad_rows"]) == 1 and "row 5" in b.info["bad_rows"][0]


def test_synthetic_is_seeded_and_labelled_synthetic() -> None:
    a = load_data("synthetic", {"n_train": 20, "n_val": 10, "n_test": 10})
    b = load_data("synthetic", {"n_train": 20, "n_val": 10, "n_test": 10})
    assert np.array_equal(a.train.arrays["image"], b.train.arrays["image"])
    assert a.info["synthetic"] and "SYNTHETIC" in a.info["name"]
    assert {"contrib_image", "contrib_signal", "contrib_tabular"} <= set(a.train.meta.columns)
