"""Exact Shapley values over modality presence: how much each modality moved a prediction.

The players are the modalities; the value of a coalition ``S`` is the model's output when only
the modalities in ``S`` are present (the others are "absent" exactly as at inference when a
modality is missing: zero input and mask 0, which every fusion supports). With ``M`` modalities
all ``2**M`` coalitions are evaluated (one batched forward pass), so the values are exact, not
sampled, and satisfy efficiency: ``sum_m phi_m = f(all present) - f(none present)``.

A modality that is already absent in a sample is absent in every coalition: its value is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SCALES = ("probability", "logit")


def coalitions(m: int) -> np.ndarray:
    """All subsets of ``m`` players as a ``(2**m, m)`` 0/1 array; row ``k`` has bit ``j`` of ``k``."""
    k = np.arange(2**m)[:, None]
    return ((k >> np.arange(m)[None]) & 1).astype(np.float32)


def exact_shapley(values: np.ndarray) -> np.ndarray:
    """Shapley values from the value of every coalition.

    ``values``: ``(B, 2**M)`` with column ``k`` the value of the coalition whose members are the
    set bits of ``k`` (``coalitions`` order). Returns ``(B, M)`` float64:
    ``phi_j = sum_{S not containing j} |S|! (M-|S|-1)! / M! * (v(S + j) - v(S))``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None]
    n_coal = v.shape[1]
    m = int(round(math.log2(n_coal))) if n_coal > 0 else -1
    if m < 1 or 2**m != n_coal:
        raise ValueError(f"values must have 2**M columns (M >= 1); got {n_coal}")
    phi = np.zeros((v.shape[0], m), np.float64)
    for k in range(n_coal):
        size = bin(k).count("1")
        for j in range(m):
            if k >> j & 1:
                continue
            w = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            phi[:, j] += w * (v[:, k | (1 << j)] - v[:, k])
    return phi


@dataclass
class ShapleyResult:
    """Per-sample modality contributions on one scale.

    ``values``: ``(B, M)``; ``base``: ``f(none present)`` ``(B,)``; ``full``: ``f(as given)``
    ``(B,)``; ``values.sum(1) == full - base`` (efficiency).
    """

    modalities: list[str]
    scale: str
    values: np.ndarray
    base: np.ndarray
    full: np.ndarray

    def sample(self, i: int) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "base": float(self.base[i]),
            "full": float(self.full[i]),
            "values": {m: float(self.values[i, j]) for j, m in enumerate(self.modalities)},
        }

    def summary(self) -> dict[str, Any]:
        """Dataset level: mean |phi| (importance, used for the ranking) and mean signed phi."""
        mean_abs = (
            np.abs(self.values).mean(0) if len(self.values) else np.zeros(len(self.modalities))
        )
        mean = self.values.mean(0) if len(self.values) else np.zeros(len(self.modalities))
        order = np.argsort(-mean_abs, kind="stable")
        return {
            "scale": self.scale,
            "n": len(self.values),
            "mean_abs": {m: float(mean_abs[j]) for j, m in enumerate(self.modalities)},
            "mean": {m: float(mean[j]) for j, m in enumerate(self.modalities)},
            "ranking": [self.modalities[j] for j in order],
            "base_mean": float(self.base.mean()) if len(self.base) else 0.0,
            "full_mean": float(self.full.mean()) if len(self.full) else 0.0,
        }


def score(
    task: str, logits: torch.Tensor, target: torch.Tensor, scale: str, temperature: float = 1.0
) -> torch.Tensor:
    """The scalar explained for each row: the target's logit, or its (calibrated) probability.

    ``logits``: ``(N, K)``, ``target``: ``(N,)`` class indices. Binary models have ``K = 1``
    and target 0 (the positive class). Multiclass probabilities are the softmax.
    """
    z = logits.double()
    idx = target.long().view(-1, 1)
    if scale == "logit":
        return z.gather(1, idx)[:, 0]
    if scale != "probability":
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    z = z / float(temperature)
    if task == "multiclass":
        return torch.softmax(z, dim=1).gather(1, idx)[:, 0]
    return torch.sigmoid(z.gather(1, idx)[:, 0])


@torch.no_grad()
def coalition_logits(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    *,
    batch_size: int = 512,
) -> torch.Tensor:
    """Logits of every sample under every coalition: ``(B, 2**M, K)``.

    ``inputs`` are normalised (as the model sees them) and ``masks`` are the sample's own
    presence; a modality outside the coalition gets zero input and mask 0.
    """
    names = list(inputs)
    coal = torch.from_numpy(coalitions(len(names)))  # (C, M)
    n, c = len(next(iter(masks.values()))), coal.shape[0]
    out = []
    rows_per_chunk = max(1, batch_size // c)
    for s in range(0, n, rows_per_chunk):
        sl = slice(s, s + rows_per_chunk)
        b = len(masks[names[0]][sl])
        xs, ms = {}, {}
        for j, m in enumerate(names):
            on = coal[:, j].to(inputs[m].device)  # (C,)
            x = inputs[m][sl]  # (b, *shape)
            keep = on.view(1, c, *([1] * (x.dim() - 1)))
            xs[m] = (x.unsqueeze(1) * keep).reshape(b * c, *x.shape[1:])  # (b*C, *shape)
            ms[m] = (masks[m][sl].float().view(b, 1) * on.view(1, c)).reshape(b * c)  # (b*C,)
        lg = model(xs, ms)  # (b*C, K)
        out.append(lg.float().reshape(b, c, -1))
    return torch.cat(out) if out else torch.zeros(0, c, 1)


def modality_shapley(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    *,
    task: str,
    target: torch.Tensor,
    temperature: float = 1.0,
    scales: tuple[str, ...] = SCALES,
    batch_size: int = 512,
) -> dict[str, ShapleyResult]:
    """Exact modality Shapley values for every sample, on each requested scale.

    ``target``: ``(B,)`` class index explained per sample (0 for binary models).
    """
    names = list(inputs)
    lg = coalition_logits(model, inputs, masks, batch_size=batch_size)  # (B, C, K)
    b, c = lg.shape[0], lg.shape[1]
    flat = lg.reshape(b * c, -1)
    tgt = target.long().cpu().repeat_interleave(c)
    out = {}
    for sc in scales:
        v = score(task, flat.cpu(), tgt, sc, temperature).reshape(b, c).numpy()  # (B, C)
        out[sc] = ShapleyResult(names, sc, exact_shapley(v), v[:, 0].copy(), v[:, -1].copy())
    return out
