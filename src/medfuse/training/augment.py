"""Batch augmentation on the training device (images: flips and random affine; signals: noise)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from medfuse.config import AugmentSpec, ModalitySpec


def _rand(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g).to(device)


def augment_batch(
    inputs: dict[str, torch.Tensor],
    modalities: dict[str, ModalitySpec],
    aug: AugmentSpec,
    g: torch.Generator,
) -> dict[str, torch.Tensor]:
    out = dict(inputs)
    for name, m in modalities.items():
        x = inputs[name]
        if m.kind == "image" and x.dim() == 4:  # (B, C, H, W)
            b = x.shape[0]
            if aug.flip:
                flip = _rand(b, g, x.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            if aug.vflip:
                flip = _rand(b, g, x.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(2), x)
            if aug.rotate or aug.translate or aug.scale:
                ang = (_rand(b, g, x.device) * 2 - 1) * math.radians(aug.rotate)
                sc = 1 + (_rand(b, g, x.device) * 2 - 1) * aug.scale
                tx = (_rand(b, g, x.device) * 2 - 1) * aug.translate * 2
                ty = (_rand(b, g, x.device) * 2 - 1) * aug.translate * 2
                cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
                theta = torch.stack(
                    [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
                )
                grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
                x = F.grid_sample(
                    x, grid, mode="bilinear", padding_mode="border", align_corners=False
                )
            out[name] = x
        elif m.kind == "signal" and aug.noise > 0:
            noise = torch.randn(x.shape, generator=g).to(x.device)
            out[name] = x + aug.noise * noise
    return out
