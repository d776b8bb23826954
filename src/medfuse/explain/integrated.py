"""Integrated gradients (Sundararajan et al. 2017, captum) for signal and tabular branches, and
token occlusion for text (token ids are not differentiable: a token's attribution is the change
of the explained logit when it alone is removed, i.e. replaced by padding).

One modality is attributed at a time, the others held at their values. The baseline is the
normalised zero, i.e. the training mean of every channel / column (what a missing value becomes),
so a feature at its mean, or missing, gets no attribution. Completeness: the attributions of a
sample sum to ``f(x) - f(x with this modality at its mean)`` up to the reported ``delta``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medfuse.explain.gradcam import _forward, forward_args


def integrated_gradients(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    modality: str,
    target: torch.Tensor,
    *,
    steps: int = 32,
    internal_batch_size: int | None = 512,
) -> dict[str, Any]:
    """IG of ``modality`` on the target's logit.

    Returns ``{"attribution": (B, *shape) float32, "delta": (B,) convergence error}`` (numpy).
    """
    # lazy: captum (medfuse[explain]), only to explain
    from captum.attr import IntegratedGradients

    names = list(inputs)
    f, others = _forward(model, modality, names)
    x = inputs[modality]
    with torch.enable_grad():
        attr, delta = IntegratedGradients(f).attribute(
            x,
            baselines=torch.zeros_like(x),
            target=target.long().tolist(),
            additional_forward_args=forward_args(inputs, masks, others),
            n_steps=int(steps),
            method="gausslegendre",
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )  # attr: (B, *shape)
    return {
        "attribution": attr.detach().float().cpu().numpy(),
        "delta": delta.detach().float().cpu().numpy(),
    }


def token_occlusion(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    modality: str,
    target: torch.Tensor,
    *,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Leave-one-token-out attribution of a text ``modality`` on the target's logit: for every
    token (a non-zero position), ``f(x) - f(x with that token replaced by padding 0)``.

    Returns ``{"attribution": (B, L) float32}`` (numpy; 0 at padding positions).
    """
    names = list(inputs)
    f, others = _forward(model, modality, names)
    x = inputs[modality]
    k = target.long().view(-1, 1)
    attr = torch.zeros(x.shape, dtype=torch.float32)
    rows, cols = torch.nonzero(x != 0, as_tuple=True)
    with torch.no_grad():
        full = f(x, *forward_args(inputs, masks, others)).gather(1, k)[:, 0].float().cpu()
        for start in range(0, len(rows), batch_size):
            r, c = rows[start : start + batch_size], cols[start : start + batch_size]
            occluded = x[r].clone()
            occluded[torch.arange(len(r)), c] = 0
            sub_in = {n: t[r] for n, t in inputs.items()}
            sub_mk = {n: t[r] for n, t in masks.items()}
            out = f(occluded, *forward_args(sub_in, sub_mk, others)).gather(1, k[r])[:, 0]
            attr[r.cpu(), c.cpu()] = full[r.cpu()] - out.float().cpu()
    return {"attribution": attr.numpy()}
