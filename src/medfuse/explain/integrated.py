"""Integrated gradients (Sundararajan et al. 2017, captum) for signal and tabular branches.

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
