"""Datasets (name -> loader) and the in-memory split every loader returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import SpecError
from medfuse.core.registry import Registry
from medfuse.core.spec import ModalitySpec

DATASETS: Registry = Registry("data source")


@dataclass
class Split:
    """One split held in memory. ``arrays[m]``: raw values ``(N, *shape_m)`` (zeros where absent,
    NaN for a missing tabular value); ``masks[m]``: ``(N,)`` 1 present / 0 missing; ``y``: targets
    (binary ``(N,)`` float, multiclass ``(N,)`` int, multilabel ``(N, K)`` float); ``meta``: one row
    per sample (ids, ``patient_id``, subgroup columns, ...)."""

    arrays: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    y: np.ndarray
    meta: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Split:
        meta = self.meta.iloc[idx].reset_index(drop=True) if len(self.meta) else self.meta
        return Split(
            {k: v[idx] for k, v in self.arrays.items()},
            {k: v[idx] for k, v in self.masks.items()},
            self.y[idx],
            meta,
        )


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split | None
    modalities: dict[str, ModalitySpec]
    labels: list[str]
    task: str
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        s = getattr(self, name, None)
        if s is None:
            raise SpecError("", f"this data source has no {name!r} split")
        return s


def default_data_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medfuse"


def resolve_data_root(data_dir: str | Path | None = None) -> Path:
    """``--data-dir``, else ``MEDFUSE_DATA_DIR``, else ``~/.cache/medfuse``."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("MEDFUSE_DATA_DIR")
    return Path(env).expanduser() if env else default_data_root()


def find_in_root(root: Path, folder: str, relative: str) -> Path | None:
    """``root/folder/relative`` or, when root is the dataset's own folder, ``root/relative``."""
    for cand in (root / folder / relative, root / relative):
        if cand.exists():
            return cand
    return None


def parse_source(source: str) -> tuple[str, str]:
    kind, _, arg = source.partition(":")
    return kind.strip(), arg.strip()


def load_data(
    source: str,
    options: dict[str, Any] | None = None,
    *,
    data_root: str | Path | None = None,
    modalities: dict[str, ModalitySpec] | None = None,
    task: str | None = None,
    on_bad_row: str = "fail",
    seed: int = 0,
) -> DataBundle:
    """Load a data source by name (``medmnist:breastmnist``, ``manifest:file.csv``, ``synthetic``)."""
    kind, arg = parse_source(source)
    loader = DATASETS.get(kind, path="data.source")
    bundle = loader(
        arg,
        dict(options or {}),
        root=resolve_data_root(data_root),
        modalities=modalities or {},
        task=task,
        on_bad_row=on_bad_row,
        seed=seed,
    )
    return keep_modalities(bundle, list(modalities or {}))


def keep_modalities(bundle: DataBundle, names: list[str]) -> DataBundle:
    """Drop the modalities a spec does not use (e.g. an image-only model on synthetic data).

    Only when the source provides every name; otherwise the bundle is returned unchanged so that
    ``complete_spec`` can say which modality is missing.
    """
    have = set(bundle.modalities)
    if not names or set(names) == have or not set(names) <= have:
        return bundle
    for s in (bundle.train, bundle.val, bundle.test):
        if s is not None:
            s.arrays = {m: s.arrays[m] for m in names}
            s.masks = {m: s.masks[m] for m in names}
    bundle.modalities = {m: bundle.modalities[m] for m in names}
    return bundle


def load_spec_data(spec: Any, data_dir: str | Path | None = None) -> DataBundle:
    """A (package's) spec's own data source, loaded as training loaded it."""
    return load_data(
        spec.data.source,
        spec.data.options,
        data_root=data_dir,
        modalities=spec.modalities,
        task=spec.task.type,
        on_bad_row=spec.data.on_bad_row,
        seed=spec.train.seed,
    )


from medfuse.data import manifest, medmnist, mitbih, ptbxl, synthetic  # noqa: E402,F401
