"""The package's description of its inputs, and reading prediction inputs without torch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.errors import DataError
from medfuse.core.readers.image_math import fit_image, fit_signal, read_image_bytes, read_npy_bytes


@dataclass(frozen=True)
class Modality:
    """One input of the model as ``medfuse.json`` describes it (no pydantic needed)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    channels: int | None = None
    size: tuple[int, ...] | None = None
    length: int | None = None
    columns: tuple[str, ...] = ()
    sequence: int | None = None
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def missing_value(self) -> float:
        """What fills an absent sample: NaN for tabular (a missing value), else 0."""
        return float("nan") if self.kind == "tabular" else 0.0


def modalities_from_meta(meta: dict[str, Any]) -> dict[str, Modality]:
    """The spec's modalities, in model input order, with their per-sample shapes."""
    out: dict[str, Modality] = {}
    stats = meta.get("preprocessing", {})
    for name, m in meta["spec"]["modalities"].items():
        kind = m["kind"]
        lead = (int(m["sequence"]),) if m.get("sequence") else ()
        if kind == "image":
            shape = (*lead, int(m["channels"]), *(int(v) for v in m["size"]))
        elif kind == "signal":
            shape = (*lead, int(m["channels"]), int(m["length"]))
        else:
            shape = (*lead, len(m["columns"]))
        out[name] = Modality(
            name=name,
            kind=kind,
            shape=shape,
            channels=m.get("channels"),
            size=tuple(m["size"]) if m.get("size") else None,
            length=m.get("length"),
            columns=tuple(m.get("columns") or ()),
            sequence=m.get("sequence"),
            categories=dict(stats.get(name, {}).get("categories", {}) or {}),
        )
    return out


def read_file(path: str | Path, modality: Modality) -> np.ndarray:
    """One image (PNG/JPEG/... or .npy) or signal (.npy) file fitted to ``modality``'s shape.

    The full install reads many more formats (DICOM, NIfTI, WFDB) through ``medfuse.data``;
    this fallback covers what a torch-free deployment typically receives.
    """
    p = Path(path)
    data = p.read_bytes()
    if modality.kind == "image" and not modality.sequence:
        raw = read_npy_bytes(data) if p.suffix.lower() == ".npy" else read_image_bytes(data)
        return fit_image(raw, int(modality.channels or 1), modality.size or ())
    if modality.kind == "signal" and not modality.sequence and p.suffix.lower() == ".npy":
        return fit_signal(
            read_npy_bytes(data), int(modality.channels or 1), int(modality.length or 0)
        )
    raise DataError(f"{p}: the torch-free runtime reads images and .npy signals only")


def npz_modalities(path: Path | str, keys: set[str], modalities: Iterable[str]) -> list[str]:
    """The model's modalities an ``.npz`` input holds (arrays ``<m>``, ``mask_<m>``, ``id``);
    an array that is none of these, or no modality at all, is an error naming what is allowed."""
    mods = list(modalities)
    unknown = keys - set(mods) - {f"mask_{m}" for m in mods} - {"id"}
    if unknown:
        raise DataError(
            f"{path}: arrays {sorted(unknown)} are not modalities of this model ({', '.join(mods)})"
        )
    present = [m for m in mods if m in keys]
    if not present:
        raise DataError(f"{path}: holds none of the model's modalities ({', '.join(mods)})")
    return present
