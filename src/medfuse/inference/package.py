"""Packages with their model: save an in-memory model, load one back rebuilt from its spec.

The file format itself (``medfuse.json``, checksums, atomic writes) is ``medfuse.core.package``,
which needs no torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from medfuse.core.card import model_card
from medfuse.core.errors import PackageError
from medfuse.core.package import (
    META,
    WEIGHTS,
    PackageMeta,
    _json_default,
    read_meta,
    typed_meta,
    versions,
    write_package,
)
from medfuse.core.spec import Spec, parse_spec
from medfuse.models import build_model
from medfuse.models.branches.pretrained import from_records
from medfuse.models.composite import CompositeModel, EnsembleModel, count_parameters, members


@dataclass
class Package:
    """A loaded package: its directory, manifest, validated spec and the rebuilt model."""

    path: Path
    #: ``medfuse.json`` as read (validated by ``read_meta``); ``info`` is its typed view
    meta: dict[str, Any]
    spec: Spec
    model: CompositeModel | EnsembleModel

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def info(self) -> PackageMeta:
        """The typed, validated view of ``medfuse.json`` (``info.threshold.value``, ...)."""
        return typed_meta(self.meta)


def save_package(
    path: str | Path,
    *,
    model: nn.Module,
    spec: Spec,
    preprocessing: dict[str, Any],
    threshold: dict[str, Any],
    metrics: dict[str, Any],
    training: dict[str, Any] | None = None,
    data_info: dict[str, Any] | None = None,
    extra_meta: dict[str, Any] | None = None,
    extra_files: dict[str, bytes | str | Path] | None = None,
) -> Path:
    """Write a new package for an in-memory model."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {
        "name": spec.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": spec.task.type,
        "labels": list(spec.task.labels or []),
        "spec": spec.to_dict(),
        "preprocessing": preprocessing,
        "threshold": threshold,
        "calibration": {"method": "none", "temperature": 1.0},
        "parameters": count_parameters(model),
        "versions": versions(),
        "training": training or {},
        "data": data_info or {},
        "compression": [],
    }
    records = pretrained_records(model)
    if records:
        meta["pretrained"] = records
    meta.update(extra_meta or {})
    files: dict[str, bytes | str | Path] = {
        WEIGHTS: save(state),
        "metrics.json": json.dumps(metrics, indent=2, default=_json_default),
    }
    files["README.md"] = model_card(meta, metrics)
    files.update(extra_files or {})
    return write_package(path, meta, files)


def pretrained_records(model: nn.Module) -> dict[str, Any]:
    """What each pretrained branch was fine-tuned from (weights sha256, origin, license) and the
    input adaptation it applies, by modality: ``medfuse.json``'s ``pretrained``."""

    out: dict[str, Any] = {}
    for name, branch in members(model)[0].branches.items():
        record = getattr(branch, "pretrained_record", None)
        if record:
            out[name] = record
    return out


def load_package(path: str | Path, *, device: str | torch.device = "cpu") -> Package:
    """Verify checksums, rebuild the model from the spec and load the weights strictly."""
    root = Path(path)
    meta = read_meta(root)
    if WEIGHTS not in meta.get("files", {}):
        raise PackageError(f"{root}: no {WEIGHTS} listed in {META}")
    spec = parse_spec(meta["spec"])
    with from_records(meta.get("pretrained")):  # architectures only: no weight file is read
        model = build_model(spec)
    try:
        state = load_file(str(root / WEIGHTS), device="cpu")
    except Exception as err:
        raise PackageError(f"{root / WEIGHTS}: cannot read weights ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PackageError(f"{root}: weights do not fit the spec's model: {err}") from None
    model.to(torch.device(device) if isinstance(device, str) else device).eval()
    return Package(root, meta, spec, model)
