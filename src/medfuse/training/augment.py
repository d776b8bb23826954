"""Batch augmentation on the training device (images: flips, random affine, intensity jitter and
random erasing; signals: noise)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from medfuse.core.spec import AugmentSpec, ModalitySpec


def _rand(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g).to(device)


def _sym(n: int, g: torch.Generator, device: torch.device, k: float) -> torch.Tensor:
    """``n`` draws of U(-k, k) (one ``_rand`` draw each, so the generator's stream is the same)."""
    return (_rand(n, g, device) * 2 - 1) * k


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
                ang = _sym(b, g, x.device, math.radians(aug.rotate))
                sc = 1 + _sym(b, g, x.device, aug.scale)
                tx = _sym(b, g, x.device, aug.translate * 2)
                ty = _sym(b, g, x.device, aug.translate * 2)
                cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
                theta = torch.stack(
                    [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
                )
                grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
                x = F.grid_sample(
                    x, grid, mode="bilinear", padding_mode="border", align_corners=False
                )
            per_image = (b, 1, 1, 1)
            if aug.contrast:  # about each image's own mean, so brightness stays put
                c = (1 + _sym(b, g, x.device, aug.contrast)).to(x.dtype).view(per_image)
                mu = x.mean(dim=(1, 2, 3), keepdim=True)
                x = (x - mu) * c + mu
            if aug.brightness:
                x = x + _sym(b, g, x.device, aug.brightness).to(x.dtype).view(per_image)
            if aug.erase:  # random erasing (Zhong et al. 2020) with the training mean (0)
                x = x.masked_fill(_erase_boxes(x, aug.erase, g), 0.0)
            out[name] = x
        elif m.kind == "signal" and aug.noise > 0:
            noise = torch.randn(x.shape, generator=g).to(x.device)
            out[name] = x + aug.noise * noise
    return out


def _erase_boxes(x: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    """A (B, 1, H, W) mask: for about half the images, one random square of ``fraction`` of the side."""
    b, h, w = x.shape[0], x.shape[2], x.shape[3]
    side_h, side_w = max(1, round(fraction * h)), max(1, round(fraction * w))
    on = _rand(b, g, x.device) < 0.5
    top = (_rand(b, g, x.device) * (h - side_h + 1)).long().clamp(max=h - side_h)
    left = (_rand(b, g, x.device) * (w - side_w + 1)).long().clamp(max=w - side_w)
    rows = torch.arange(h, device=x.device)[None, :]  # (1, H) against (B, 1): (B, H)
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side_h)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side_w)
    return (in_rows[:, :, None] & in_cols[:, None, :] & on[:, None, None])[:, None]


def mixup_batch(
    inputs: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    alpha: float,
    g: torch.Generator,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[float, torch.Tensor]]:
    """Mixup (Zhang et al. 2018) across the whole sample: every modality of sample i is mixed
    with the same modality of sample ``perm[i]`` with one weight ``lam ~ Beta(alpha, alpha)``;
    a modality counts as present when either sample has it. Returns the mixed batch and
    ``(lam, perm)`` for the loss ``lam * L(y) + (1 - lam) * L(y[perm])``. Deterministic in ``g``."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    n = len(next(iter(masks.values())))
    perm = torch.randperm(n, generator=g).to(next(iter(masks.values())).device)
    mixed = {m: lam * x + (1 - lam) * x[perm] for m, x in inputs.items()}
    present = {m: torch.maximum(k, k[perm]) for m, k in masks.items()}
    return mixed, present, (lam, perm)
