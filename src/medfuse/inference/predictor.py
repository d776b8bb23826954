"""The torch Predictor: a loaded package that turns raw samples into probabilities and labels.

Inputs go through the one input contract (``medfuse.core.inputs.coerce``) and decisions through
``medfuse.core.decision``, exactly as the ONNX Runtime predictor (``medfuse.core.onnx``): both
implement ``medfuse.core.predictor.Predictor``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.core.decision import decide, probabilities
from medfuse.core.predictor import PredictorBase, deployed_onnx, scored_model
from medfuse.core.preprocess import normalize
from medfuse.inference.helpers import resolve_device
from medfuse.inference.package import Package, load_package

__all__ = ["Predictor", "decide", "load", "probabilities"]


class Predictor(PredictorBase):
    """``predict_proba`` / ``predict`` / ``predict_rows`` on raw (unnormalised) inputs, as
    training saw them, in any form ``medfuse.core.inputs`` accepts."""

    runtime = "torch"

    def __init__(self, package: Package, device: str | torch.device = "cpu") -> None:
        self.package = package
        self.path = package.path
        self.model: nn.Module = package.model
        self.spec = package.spec
        self.meta = package.meta
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        #: the model whose outputs this predictor gives (:func:`load` with ``deployed``)
        self.scored: dict[str, Any] = scored_model(self.meta, "torch")

    @torch.no_grad()
    def _batch_logits(
        self, arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray]
    ) -> np.ndarray:
        stats = self.meta["preprocessing"]
        inputs = {
            m: torch.from_numpy(normalize(arrays[m], masks[m], stats[m])).to(self.device)
            for m in self.spec.modalities
        }
        mk = {
            m: torch.from_numpy(np.asarray(masks[m], np.float32)).to(self.device)
            for m in self.spec.modalities
        }
        return self.model(inputs, mk).float().cpu().numpy()


#: the samples an INT8 model is run on at once in evaluation (:class:`Int8Scored`): dynamic INT8
#: scales activations by their batch's range, so every evaluation row uses the same batches
INT8_BATCH = 64


class Int8Scored(nn.Module):
    """An INT8 package's model as evaluation scores it: the fused logits from its INT8
    ``model.onnx`` through ONNX Runtime (the model ``medfuse serve`` and ``medfuse predict``
    run), in consecutive batches of :data:`INT8_BATCH` samples whatever the caller's batch (its
    batches start at multiples of it: every row of an evaluation then sees the same batches);
    each branch's auxiliary head from the fp32 weights (the INT8 graph has the fused output
    only). Called as the composite is: ``(inputs, masks[, aux])``, normalised inputs."""

    def __init__(self, weights: nn.Module, onnx: Any) -> None:
        super().__init__()
        self.weights = weights
        self.onnx = onnx  # medfuse.core.onnx.OnnxPredictor

    def forward(
        self, inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], aux: str = "none"
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feeds = {m: v.detach().cpu().numpy() for m, v in inputs.items()}
        feeds.update({f"mask_{m}": v.detach().float().cpu().numpy() for m, v in masks.items()})
        first = next(iter(inputs.values()))
        parts = [
            self.onnx.run({k: v[s : s + INT8_BATCH] for k, v in feeds.items()})
            for s in range(0, len(first), INT8_BATCH)
        ]
        logits = torch.from_numpy(np.concatenate(parts)).to(first.device)
        if aux == "none":
            return logits
        _, branches = self.weights(inputs, masks, aux=aux)
        return logits, branches


def load(path: str | Path, *, device: str = "cpu", deployed: bool = False) -> Predictor:
    """Load a model package (checksums verified, weights loaded strictly) as a Predictor.

    ``deployed``: the model the package deploys, as evaluation must score it. For most packages
    that is the weights; an INT8 package (``medfuse quantize``: ``runtime.precision: int8``)
    deploys its INT8 ``model.onnx``, whose fused logits then come from ONNX Runtime on the CPU
    (:class:`Int8Scored`; ``scored`` says so). Without it, the weights (fp32) always, as
    ``medfuse.load`` documents."""

    dev = resolve_device(device)
    pred = Predictor(load_package(path, device=dev), dev)
    onnx_file = deployed_onnx(pred.meta) if deployed else None
    if onnx_file:
        from medfuse.core.onnx import OnnxPredictor  # lazy: ONNX Runtime, for INT8 packages

        # the package was verified above; it runs on the CPU (OnnxPredictor: onnx_device)
        onnx = OnnxPredictor(pred.path, device=str(dev), onnx_file=onnx_file, verify=False)
        pred.model = Int8Scored(pred.model, onnx).eval()
        pred.scored = {
            **scored_model(pred.meta, "onnx"),
            "branches": "model.safetensors (fp32: the INT8 graph has the fused output only)",
        }
    return pred
