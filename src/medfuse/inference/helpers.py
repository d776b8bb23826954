"""Inference helpers every torch-side verb shares: a split as normalised tensors, the device to
run on, and batched logits from a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.core.preprocess import normalize
from medfuse.data import Split


@dataclass
class Tensors:
    """A split as normalised tensors (kept on the host; batches move to the device)."""

    inputs: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batch(
        self, idx: torch.Tensor, device: torch.device
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        nb = device.type == "cuda"
        return (
            {k: v[idx].to(device, non_blocking=nb) for k, v in self.inputs.items()},
            {k: v[idx].to(device, non_blocking=nb) for k, v in self.masks.items()},
            self.y[idx].to(device, non_blocking=nb),
        )


def to_tensors(split: Split, stats: dict[str, Any]) -> Tensors:
    inputs = {
        m: torch.from_numpy(normalize(x, split.masks[m], stats[m])) for m, x in split.arrays.items()
    }
    masks = {m: torch.from_numpy(np.asarray(v, np.float32)) for m, v in split.masks.items()}
    return Tensors(inputs, masks, torch.from_numpy(np.asarray(split.y)))


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from medfuse.core.errors import MedfuseError

        raise MedfuseError(
            "--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu or auto"
        )
    return torch.device(device)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: Tensors,
    device: torch.device,
    *,
    batch_size: int = 256,
    bf16: bool = False,
    branches: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fused logits ``(N, K)`` and, with ``branches``, each branch's auxiliary logits."""
    was = model.training
    model.eval()
    fused, per = [], {m: [] for m in data.inputs}
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        inputs, masks, _ = data.batch(idx, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(inputs, masks, aux="detached") if branches else model(inputs, masks)
        logits, aux = out if branches else (out, {})
        fused.append(logits.float().cpu())
        for m, v in aux.items():
            per[m].append(v.float().cpu())
    model.train(was)
    return torch.cat(fused).numpy(), (
        {m: torch.cat(v).numpy() for m, v in per.items()} if branches else {}
    )
