"""The one ONNX exporter, used by ``medfuse export`` and ``medfuse quantize``.

Inputs are named per modality (``image``, ``signal``, ...) plus one presence mask per modality
(``mask_image``, ...), all with a dynamic batch axis; the output is ``logits`` ``(B, K)``.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medfuse.export import DEFAULT_OPSET  # (re-exported: compress imports it from here)

log = logging.getLogger("medfuse.export")


class FlatInputs(nn.Module):
    """Positional-tensor view of a CompositeModel: (x_1..x_M, mask_1..mask_M) -> logits."""

    def __init__(self, model: nn.Module, modalities: list[str]) -> None:
        super().__init__()
        self.model = model
        self.modalities = list(modalities)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        m = len(self.modalities)
        inputs = dict(zip(self.modalities, tensors[:m]))
        masks = dict(zip(self.modalities, tensors[m:]))
        return self.model(inputs, masks)


def input_names(modalities: list[str]) -> list[str]:
    return [*modalities, *(f"mask_{m}" for m in modalities)]


def example_inputs(spec: Any, batch: int = 2) -> tuple[torch.Tensor, ...]:
    xs = [torch.randn(batch, *spec.modalities[m].shape) for m in spec.modalities]
    masks = [torch.ones(batch) for _ in spec.modalities]
    return (*xs, *masks)


def export_onnx_bytes(
    model: nn.Module,
    spec: Any,
    *,
    opset: int = DEFAULT_OPSET,
    example: tuple[torch.Tensor, ...] | None = None,
) -> bytes:
    """Serialise the composite to ONNX (TorchScript-based exporter: stable for LSTM/GRU)."""
    mods = list(spec.modalities)
    wrapper = FlatInputs(model, mods).eval().cpu()
    args = example if example is not None else example_inputs(spec)
    names = input_names(mods)
    dyn = {n: {0: "batch"} for n in names}
    dyn["logits"] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            buf,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=dyn,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


def export_onnx(
    model: nn.Module, spec: Any, path: str | Path, *, opset: int = DEFAULT_OPSET
) -> Path:
    path = Path(path)
    path.write_bytes(export_onnx_bytes(model, spec, opset=opset))
    return path
