"""The torch Predictor: a loaded package that turns raw samples into probabilities and labels.

Inputs go through the one input contract (``medfuse.core.inputs.coerce``) and decisions through
``medfuse.core.decision``, exactly as the ONNX Runtime predictor (``medfuse.core.onnx``): both
implement ``medfuse.core.predictor.Predictor``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medfuse.core.decision import decide, probabilities
from medfuse.core.predictor import PredictorBase
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
        self.model = package.model
        self.spec = package.spec
        self.meta = package.meta
        self.device = torch.device(device)
        self.model.to(self.device).eval()

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


def load(path: str | Path, *, device: str = "cpu") -> Predictor:
    """Load a model package (checksums verified, weights loaded strictly) as a Predictor."""

    dev = resolve_device(device)
    return Predictor(load_package(path, device=dev), dev)
