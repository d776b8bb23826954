"""``torch.export`` programs (``model.pt2``): the composite's own call convention, dynamic batch.

The program takes the same arguments as ``CompositeModel.forward``: ``(inputs, masks)``, two dicts
keyed by modality, ``inputs[m]`` of shape ``(B, *shape_m)`` (normalised) and ``masks[m]`` ``(B,)``;
it returns ``logits`` ``(B, K)``. Load it with ``torch.export.load(path).module()``: no medfuse
code or spec is needed to run it, only PyTorch.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import nn

from medfuse.core.errors import MedfuseError


def export_pt2_bytes(
    model: nn.Module, spec: Any, example: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
) -> bytes:
    """Serialise ``model`` (eval mode, CPU) with ``torch.export`` and a dynamic batch axis.

    ``example`` is ``(inputs, masks)`` with a batch of at least 2 (sizes 0 and 1 specialise).
    """
    mods = list(spec.modalities)
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1)
    dynamic = {"inputs": {m: {0: batch} for m in mods}, "masks": {m: {0: batch} for m in mods}}
    inputs, masks = example
    args = ({m: inputs[m].cpu() for m in mods}, {m: masks[m].cpu() for m in mods})
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, args, dynamic_shapes=dynamic)
    except Exception as err:
        raise MedfuseError(
            f"torch.export could not export this model with a dynamic batch axis "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "use --format onnx"
        ) from err
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def load_pt2(path: Any, device: str | torch.device = "cpu") -> nn.Module:
    """The exported program as a callable module ``(inputs, masks) -> logits`` on ``device``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.load(path).module()
    return module.to(device)
