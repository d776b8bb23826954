"""MedMNIST ``.npz`` files (2D) with their official train/val/test splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.config import ModalitySpec
from medfuse.data import DATASETS, DataBundle, Split, find_in_root
from medfuse.data.download import fetch, md5sum
from medfuse.errors import DataError, SpecError

ZENODO = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"

#: name -> (labels, md5 of the official 28-px file)
KNOWN: dict[str, tuple[list[str], str | None]] = {
    "breastmnist": (["malignant", "normal/benign"], "750601b1f35ba3300ea97c75c52ff8f6"),
    "pneumoniamnist": (["normal", "pneumonia"], "28209eda62fecd6e6a2d98b1501bb15f"),
}


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


def _images(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
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
        x = _images(raw[f"{s}_images"])
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
    )
