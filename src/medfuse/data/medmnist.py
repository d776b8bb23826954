"""MedMNIST ``.npz`` files (2D images and 3D volumes) with their official train/val/test splits.

3D files (``*mnist3d``, 28^3, or ``*mnist3d_64``, 64^3) hold volumes ``(N, D, H, W)``; they load
as one image modality ``(1, D, H, W)``, which the ``cnn`` branch treats as 3D and ``crnn`` as a
sequence of D slices. Known files are downloaded from Zenodo and checked against the MD5 of
MedMNIST's own ``INFO`` table; an unknown name must be placed under the data root by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import DataError, SpecError
from medfuse.core.spec import ModalitySpec
from medfuse.data import DATASETS, DataBundle, Split, find_in_root
from medfuse.data.download import fetch, md5sum

ZENODO = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"

#: name -> (labels, md5 of the official 28-px file)
KNOWN: dict[str, tuple[list[str], str | None]] = {
    "breastmnist": (["malignant", "normal/benign"], "750601b1f35ba3300ea97c75c52ff8f6"),
    "pneumoniamnist": (["normal", "pneumonia"], "28209eda62fecd6e6a2d98b1501bb15f"),
}

#: MedMNIST v3 3D sets: name -> (labels, md5 of the 28^3 file, md5 of the 64^3 file)
KNOWN_3D: dict[str, tuple[list[str], str, str]] = {
    "organmnist3d": (
        [
            "liver",
            "kidney-right",
            "kidney-left",
            "femur-right",
            "femur-left",
            "bladder",
            "heart",
            "lung-right",
            "lung-left",
            "spleen",
            "pancreas",
        ],
        "a0c5a1ff56af4f155c46d46fbb45a2fe",
        "58a2205adf14a9d0a189cb06dc78bf10",
    ),
    "nodulemnist3d": (
        ["benign", "malignant"],
        "8755a7e9e05a4d9ce80a24c3e7a256f3",
        "c47c5b7d457bf6332200d2ea6d64ecd8",
    ),
    "adrenalmnist3d": (
        ["normal", "hyperplasia"],
        "bbd3c5a5576322bc4cdfea780653b1ce",
        "17721accfe9fb005146a47d33bc54b2f",
    ),
    "fracturemnist3d": (
        ["buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"],
        "6aa7b0143a6b42da40027a9dda61302f",
        "f01d7e6316aedf4210da0da5b7437b42",
    ),
    "vesselmnist3d": (
        ["vessel", "aneurysm"],
        "b41fd4f7e7e2feedddb201585ecafa1b",
        "6bb274a8846e1097066dcd64e2c4520f",
    ),
    "synapsemnist3d": (
        ["inhibitory synapse", "excitatory synapse"],
        "1235b78a3cd6280881dd7850a78eadb6",
        "43bd14ebf3af9d3dd072446fedc14d5e",
    ),
}
for _name, (_labels, _md5, _md5_64) in KNOWN_3D.items():
    KNOWN[_name] = (_labels, _md5)
    KNOWN[f"{_name}_64"] = (_labels, _md5_64)


def is_volume_set(name: str) -> bool:
    """MedMNIST 3D sets are named ``<x>mnist3d`` or ``<x>mnist3d_64``."""
    return name.removesuffix("_64").endswith("3d")


def locate(name: str, root: Path) -> Path:
    """Find ``<root>/medmnist/<name>.npz`` (or ``<root>/<name>.npz``), downloading if known."""
    found = find_in_root(root, "medmnist", f"{name}.npz")
    if found:
        labels_md5 = KNOWN.get(name, (None, None))[1]
        if labels_md5 and md5sum(found) != labels_md5:
            raise DataError(
                f"{found} does not match the official MD5 {labels_md5}; remove or replace it"
            )
        return found
    dest = root / "medmnist" / f"{name}.npz"
    md5 = KNOWN.get(name, (None, None))[1]
    if md5 is None:
        raise DataError(
            f"{name}.npz not found under {root}; place the official MedMNIST file at {dest}"
        )
    return fetch(ZENODO.format(name=name), dest, md5)


def _images(x: np.ndarray, volume: bool = False) -> np.ndarray:
    x = x.astype(np.float32)
    if volume:
        if x.ndim == 4:  # (N, D, H, W) -> (N, 1, D, H, W)
            return x[:, None]
        if x.ndim == 5:  # (N, C, D, H, W)
            return x
        raise DataError(f"a 3D MedMNIST file holds volumes (N, D, H, W); got {x.shape}")
    if x.ndim == 3:  # (N, H, W) grey
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3):  # (N, H, W, C) -> (N, C, H, W)
        return x.transpose(0, 3, 1, 2).copy()
    return x[:, None] if x.ndim == 4 else x  # 3D volumes (N, D, H, W) -> (N, 1, D, H, W)


@DATASETS.register("medmnist")
def load_medmnist(
    arg: str,
    options: dict[str, Any],
    *,
    root: Path,
    modalities: dict[str, ModalitySpec],
    task: str | None,
    on_bad_row: str,
    seed: int,
) -> DataBundle:
    """MedMNIST v2 .npz: one image modality named 'image' (or the spec's one image modality)."""
    name = arg or options.get("name")
    if not name:
        raise SpecError("data.source", "use medmnist:<name>, e.g. medmnist:breastmnist")
    path = locate(name, root)
    with np.load(path) as d:
        raw = {k: d[k] for k in d.files}
    labels_known = KNOWN.get(name, (None, None))[0]
    ymax = int(max(raw[f"{s}_labels"].max() for s in ("train", "val", "test")))
    multilabel = raw["train_labels"].shape[1] > 1
    labels = labels_known or [
        f"class_{i}" for i in range((raw["train_labels"].shape[1]) if multilabel else ymax + 1)
    ]
    kind = "multilabel" if multilabel else ("binary" if len(labels) == 2 else "multiclass")
    mod_name = next(iter(modalities), "image") if modalities else "image"
    splits = {}
    for s in ("train", "val", "test"):
        x = _images(raw[f"{s}_images"], volume=is_volume_set(name))
        yl = raw[f"{s}_labels"]
        y = (
            yl.astype(np.float32)
            if multilabel
            else yl[:, 0].astype(np.float32 if kind == "binary" else np.int64)
        )
        meta = pd.DataFrame({"id": [f"{name}-{s}-{i}" for i in range(len(x))]})
        splits[s] = Split({mod_name: x}, {mod_name: np.ones(len(x), np.float32)}, y, meta)
    x0 = splits["train"].arrays[mod_name]
    mod = ModalitySpec(kind="image", channels=int(x0.shape[1]), size=[int(v) for v in x0.shape[2:]])
    return DataBundle(
        splits["train"],
        splits["val"],
        splits["test"],
        {mod_name: mod},
        labels,
        kind,
        info={"name": f"MedMNIST {name}", "file": str(path), "synthetic": False},
        # MedMNIST's label 1, the class its benchmark scores (BreastMNIST: "normal/benign")
        positive=labels[1] if kind == "binary" else None,
    )
