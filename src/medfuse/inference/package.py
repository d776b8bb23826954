"""Packages with their model: save an in-memory model, load one back rebuilt from its spec.

The file format itself (``medfuse.json``, checksums, atomic writes) is ``medfuse.core.package``,
which needs no torch.
"""

from __future__ import annotations

import hashlib
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
    ADAPTER,
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
    adapter: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a new package for an in-memory model; ``adapter``: the adapter weights of
    ``train.peft`` before they were merged into ``model`` (``store: adapter``), kept beside the
    merged weights as ``adapter.safetensors``, described by ``medfuse.json``'s ``adapter``."""
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
    weights = save(state)
    files: dict[str, bytes | str | Path] = {
        WEIGHTS: weights,
        "metrics.json": json.dumps(metrics, indent=2, default=_json_default),
    }
    if adapter:
        files[ADAPTER] = save(adapter)
        meta["adapter"] = _adapter_record(spec, adapter, records, weights)
    meta.update(extra_meta or {})
    files["README.md"] = model_card(meta, metrics)
    files.update(extra_files or {})
    return write_package(path, meta, files)


def _adapter_record(
    spec: Spec, adapter: dict[str, torch.Tensor], records: dict[str, Any], merged: bytes
) -> dict[str, Any]:
    """``medfuse.json``'s ``adapter``: what ``adapter.safetensors`` holds, the peft config that
    made it, the base weights it applies to, and the weights it was merged into."""
    peft = spec.train.peft
    if peft is None:
        raise PackageError("adapter weights given for a spec without train.peft")
    config = peft.model_dump(mode="json", exclude={"store"})
    return {
        "file": ADAPTER,
        "method": peft.method,
        "branches": list(peft.branches),
        "config": config,
        "parameters": int(sum(v.numel() for v in adapter.values())),
        "base": {
            m: (records.get(m) or {}).get("weights") for m in peft.branches
        },  # the pretrained weights (by sha256), None for a branch trained from scratch
        "merged_sha256": hashlib.sha256(merged).hexdigest(),
    }


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
