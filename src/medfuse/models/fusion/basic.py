"""Feature-level (concat), decision-level (late) and gated fusion."""

from __future__ import annotations

import torch
from torch import nn

from medfuse.models import FUSIONS


def _stack_masks(masks: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.stack([masks[n].float() for n in names], dim=1)  # (B, M)


class ConcatFusion(nn.Module):
    """Concatenate masked features and the mask vector itself (so the head knows what is absent)."""

    def __init__(self, feature_dims: dict[str, int]) -> None:
        super().__init__()
        self.names = list(feature_dims)
        self.out_features = sum(feature_dims.values()) + len(self.names)

    def forward(
        self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        parts = [features[n] * masks[n].float().unsqueeze(1) for n in self.names]  # (B, D_m) each
        return torch.cat([*parts, _stack_masks(masks, self.names)], dim=1)  # (B, sum D + M)


class LateFusion(nn.Module):
    """Decision level: a classifier per branch; the head learns on their concatenated outputs."""

    def __init__(self, feature_dims: dict[str, int], num_outputs: int) -> None:
        super().__init__()
        self.names = list(feature_dims)
        self.classifiers = nn.ModuleDict(
            {n: nn.Linear(d, num_outputs) for n, d in feature_dims.items()}
        )
        self.out_features = num_outputs * len(self.names) + len(self.names)

    def branch_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: self.classifiers[n](features[n]) for n in self.names}

    def forward(
        self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        logits = self.branch_logits(features)
        parts = [logits[n] * masks[n].float().unsqueeze(1) for n in self.names]  # (B, K) each
        return torch.cat([*parts, _stack_masks(masks, self.names)], dim=1)  # (B, K*M + M)


class GatedFusion(nn.Module):
    """Learned per-modality weights, a softmax over the modalities present in each sample."""

    def __init__(self, feature_dims: dict[str, int], hidden: int, dropout: float) -> None:
        super().__init__()
        self.names = list(feature_dims)
        self.proj = nn.ModuleDict(
            {
                n: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout))
                for n, d in feature_dims.items()
            }
        )
        self.gate = nn.ModuleDict({n: nn.Linear(d, 1) for n, d in feature_dims.items()})
        self.out_features = hidden + len(self.names)
        self.last_weights: torch.Tensor | None = None

    def forward(
        self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        m = _stack_masks(masks, self.names)  # (B, M)
        scores = torch.cat([self.gate[n](features[n]) for n in self.names], dim=1)  # (B, M)
        scores = scores.masked_fill(m == 0, -1e4)
        w = torch.softmax(scores, dim=1) * m  # absent -> exactly 0
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-6)  # renormalise; all absent -> 0
        self.last_weights = w.detach()
        projected = torch.stack([self.proj[n](features[n]) for n in self.names], dim=1)  # (B, M, H)
        fused = (w.unsqueeze(2) * projected).sum(dim=1)  # (B, H)
        return torch.cat([fused, m], dim=1)  # (B, H + M)


@FUSIONS.register("concat")
def concat(*, feature_dims: dict[str, int], num_outputs: int) -> nn.Module:
    """Feature level: masked features and presence masks concatenated."""
    return ConcatFusion(feature_dims)


@FUSIONS.register("late")
def late(*, feature_dims: dict[str, int], num_outputs: int) -> nn.Module:
    """Decision level: per-branch classifiers, stacked by the head."""
    return LateFusion(feature_dims, num_outputs)


@FUSIONS.register("gated")
def gated(
    *, feature_dims: dict[str, int], num_outputs: int, hidden: int = 64, dropout: float = 0.1
) -> nn.Module:
    """Learned per-modality weights, renormalised over the modalities present."""
    return GatedFusion(feature_dims, hidden, dropout)
