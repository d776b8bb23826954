"""The Predictor: a loaded package that turns raw samples into probabilities and labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.core.decision import decide, probabilities
from medfuse.core.errors import DataError
from medfuse.core.preprocess import normalize
from medfuse.data import Split
from medfuse.inference.package import Package, load_package


def stack_samples(
    samples: list[dict[str, Any]], modalities: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A list of ``{modality: array or None}`` dicts -> batched raw arrays and presence masks.

    Absent keys or ``None`` mean a missing modality. Shapes are checked against the spec.
    """
    arrays, masks = {}, {}
    n = len(samples)
    for name, m in modalities.items():
        shape = tuple(m.shape)
        x = np.zeros((n, *shape), np.float32)
        mask = np.zeros(n, np.float32)
        for i, s in enumerate(samples):
            v = s.get(name) if isinstance(s, dict) else None
            if v is None:
                if m.kind == "tabular":
                    x[i] = np.nan
                continue
            v = np.asarray(v, dtype=np.float32)
            if v.shape != shape:
                raise DataError(f"sample {i}, modality {name!r}: shape {v.shape}, expected {shape}")
            x[i], mask[i] = v, 1.0
        arrays[name], masks[name] = x, mask
    return arrays, masks


class Predictor:
    """``predict_proba`` / ``predict`` on raw (unnormalised) inputs, as training saw them."""

    def __init__(self, package: Package, device: str | torch.device = "cpu") -> None:
        self.package = package
        self.model = package.model
        self.spec = package.spec
        self.meta = package.meta
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @property
    def labels(self) -> list[str]:
        return self.package.labels

    @property
    def task(self) -> str:
        return self.package.task

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"]["value"])  # present: read_meta checked it

    @property
    def temperature(self) -> float:
        return float(self.meta["calibration"]["temperature"])  # read_meta fills it

    def _arrays(self, samples: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if isinstance(samples, Split):
            return samples.arrays, samples.masks
        if isinstance(samples, dict):  # batched {modality: (N, ...)} with optional "mask"
            masks = samples.get("mask") or {}
            arrays = {
                m: np.asarray(samples[m], np.float32) for m in self.spec.modalities if m in samples
            }
            n = len(next(iter(arrays.values()))) if arrays else 0
            for m, spec_m in self.spec.modalities.items():
                if m not in arrays:
                    arrays[m] = np.full(
                        (n, *spec_m.shape), np.nan if spec_m.kind == "tabular" else 0.0, np.float32
                    )
                    masks = {**masks, m: np.zeros(n, np.float32)}
            masks = {
                m: np.asarray(masks.get(m, np.ones(n)), np.float32) for m in self.spec.modalities
            }
            return arrays, masks
        return stack_samples(list(samples), self.spec.modalities)

    @torch.no_grad()
    def logits(self, samples: Any, *, batch_size: int = 256) -> np.ndarray:
        arrays, masks = self._arrays(samples)
        stats = self.meta["preprocessing"]
        n = len(next(iter(masks.values())))
        out = []
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            inputs = {
                m: torch.from_numpy(normalize(arrays[m][sl], masks[m][sl], stats[m])).to(
                    self.device
                )
                for m in self.spec.modalities
            }
            mk = {
                m: torch.from_numpy(np.asarray(masks[m][sl], np.float32)).to(self.device)
                for m in self.spec.modalities
            }
            out.append(self.model(inputs, mk).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.spec.num_outputs), np.float32)

    def predict_proba(self, samples: Any, *, batch_size: int = 256) -> np.ndarray:
        """Binary: (N,) P(positive label); multiclass/multilabel: (N, K). Calibration applied."""
        return probabilities(
            self.task, self.logits(samples, batch_size=batch_size), self.temperature
        )

    def predict(self, samples: Any, *, batch_size: int = 256) -> list[str] | list[list[str]]:
        p = self.predict_proba(samples, batch_size=batch_size)
        return decide(self.task, p, self.labels, self.threshold)


def load(path: str | Path, *, device: str = "cpu") -> Predictor:
    """Load a model package (checksums verified, weights loaded strictly) as a Predictor."""
    from medfuse.inference.helpers import resolve_device

    dev = resolve_device(device)
    return Predictor(load_package(path, device=dev), dev)
