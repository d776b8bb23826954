"""Grad-CAM (Selvaraju et al. 2017) for image branches, with captum's ``LayerGradCam``.

The map is computed on the *whole* composite model's output (the other modalities held at their
values), at a convolutional layer of the image branch: by default the last convolutional block
(``branches[m].features[-1]`` of a ``ConvEncoder``), or any layer chosen by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfuse.core.errors import SpecError, did_you_mean
from medfuse.models import members

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def conv_layer_names(branch: nn.Module) -> list[str]:
    """Names (relative to the branch) of modules that hold a convolution: the allowed layers."""
    names = []
    for name, mod in branch.named_modules():
        if name and any(isinstance(s, _CONV_TYPES) for s in mod.modules()):
            names.append(name)
    return names


def default_layer(branch: nn.Module) -> str:
    """The last convolutional block: ``features.<last>`` for a ConvEncoder, else the last conv."""
    feats = getattr(branch, "features", None)
    if isinstance(feats, nn.Sequential) and len(feats) > 0:
        return f"features.{len(feats) - 1}"
    convs = [n for n, m in branch.named_modules() if isinstance(m, _CONV_TYPES)]
    if not convs:
        raise SpecError(
            "explain.layer", f"branch {type(branch).__name__} has no convolution for Grad-CAM"
        )
    return convs[-1]


def resolve_layer(model: nn.Module, modality: str, name: str | None) -> tuple[str, nn.Module]:
    """``(name relative to the branch, module)``. ``name`` may be relative to the branch
    (``features.2``) or the model (``branches.image.features.2``); ``None`` = the default.
    For an ensemble the name is that of every member's layer (they share the architecture)."""

    branch = members(model)[0].branches[modality]
    if name is None:
        name = default_layer(branch)
    prefix = f"branches.{modality}."
    rel = name[len(prefix) :] if name.startswith(prefix) else name
    mods = dict(branch.named_modules())
    allowed = conv_layer_names(branch)
    if rel not in mods or rel not in allowed:
        raise SpecError(
            "--layer",
            f"no convolutional layer {name!r} in the {modality!r} branch"
            f"{did_you_mean(rel, allowed)} Allowed: {', '.join(allowed) or '(none)'}",
        )
    return rel, mods[rel]


def _forward(model: nn.Module, modality: str, names: list[str]):
    """captum forward: the attributed modality first, then the others and every mask as
    additional (batch-expanded) arguments, in ``names`` order."""
    others = [n for n in names if n != modality]

    def f(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(others, rest[: len(others)]))
        inputs[modality] = x
        masks = dict(zip(names, rest[len(others) :]))
        return model(inputs, masks)  # (B, K)

    return f, others


def forward_args(
    inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], others: list[str]
) -> tuple[torch.Tensor, ...]:
    return (*[inputs[n] for n in others], *[masks[n] for n in inputs])


def grad_cam(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    modality: str,
    target: torch.Tensor,
    *,
    layer: str | None = None,
) -> dict[str, Any]:
    """Grad-CAM of ``modality`` for each sample, on the target's logit.

    Returns ``{"layer": name, "cam": (B, *layer_spatial), "upsampled": (B, *input_spatial)}``
    (ReLU'd, not normalised; numpy float32). Upsampling is bilinear (trilinear for volumes).
    For an ensemble, the map is the sum over members of each member's map of its own layer,
    all on the ensemble's output (identical members give the single model's map).
    """
    # lazy: captum (medfuse[explain]), only to explain
    from captum.attr import LayerGradCam

    rel, _ = resolve_layer(model, modality, layer)
    names = list(inputs)
    f, others = _forward(model, modality, names)
    x = inputs[modality]
    cams = []
    for member in members(model):
        module = dict(member.branches[modality].named_modules())[rel]
        with torch.enable_grad():
            cams.append(
                LayerGradCam(f, module).attribute(
                    x,
                    target=target.long().tolist(),
                    additional_forward_args=forward_args(inputs, masks, others),
                    relu_attributions=True,
                )  # (B, 1, *layer_spatial)
            )
    cam = torch.stack([c.detach().float() for c in cams]).sum(0)
    spatial = tuple(x.shape[2:])
    if cam.dim() - 2 != len(spatial):
        raise SpecError(
            "--layer", f"layer {rel!r} output has shape {tuple(cam.shape[1:])}; not a conv map"
        )
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    up = F.interpolate(cam, size=spatial, mode=mode, align_corners=False)
    return {
        "layer": f"branches.{modality}.{rel}",
        "cam": cam[:, 0].cpu().numpy(),
        "upsampled": up[:, 0].clamp_min(0).cpu().numpy(),
    }


def central_mass(cam: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Share of each map's (non-negative) mass inside the central box covering ``fraction`` of
    each side (``fraction=0.5``: the middle half of rows and columns, a quarter of the area).
    Uniform maps give ``fraction ** ndim``. ``cam``: ``(B, *spatial)``; returns ``(B,)``."""
    cam = np.clip(np.asarray(cam, np.float64), 0, None)
    sl: list[slice] = [slice(None)]
    for n in cam.shape[1:]:
        w = int(round(n * fraction))
        lo = (n - w) // 2
        sl.append(slice(lo, lo + w))
    total = cam.reshape(len(cam), -1).sum(1)
    inside = cam[tuple(sl)].reshape(len(cam), -1).sum(1)
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
