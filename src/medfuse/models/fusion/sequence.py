"""Sequence fusion: an LSTM over modality tokens, so a missing modality is simply not in the
sequence.

Each modality's features are projected to one token (``hidden`` wide) plus a learned embedding
saying which modality it is. Per sample, the present tokens are moved to the front (in the
fixed modality order) and the LSTM's output at the last present position is the fused vector.
The LSTM is unidirectional, so absent tokens (moved behind) can never reach that output. This is
what ``pack_padded_sequence`` would do, written with ``argsort`` and ``gather`` so it exports to
ONNX with a dynamic batch.
"""

from __future__ import annotations

import torch
from torch import nn

from medfuse.models import FUSIONS


class SequenceFusion(nn.Module):
    """``(features {m: (B, D_m)}, masks {m: (B,)}) -> (B, hidden + M)``."""

    def __init__(
        self, feature_dims: dict[str, int], hidden: int, layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.names = list(feature_dims)
        self.proj = nn.ModuleDict(
            {n: nn.Sequential(nn.Linear(d, hidden), nn.ReLU()) for n, d in feature_dims.items()}
        )
        self.embed = nn.Parameter(torch.zeros(len(self.names), hidden))  # which modality
        nn.init.normal_(self.embed, std=0.02)
        self.lstm = nn.LSTM(
            hidden,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.out_features = hidden + len(self.names)

    def forward(
        self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        m = torch.stack([masks[n].float() for n in self.names], dim=1)  # (B, M)
        present = (m > 0).float()
        tokens = torch.stack([self.proj[n](features[n]) for n in self.names], dim=1)  # (B, M, H)
        tokens = (tokens + self.embed.unsqueeze(0)) * present.unsqueeze(2)
        n_mod = len(self.names)
        # present tokens first, each group in modality order: keys are unique, so any sort works
        pos = torch.arange(n_mod, device=m.device, dtype=torch.float32).unsqueeze(0)  # (1, M)
        order = torch.argsort((1.0 - present) * n_mod + pos, dim=1)  # (B, M)
        tokens = torch.gather(tokens, 1, order.unsqueeze(2).expand_as(tokens))  # (B, M, H)
        out, _ = self.lstm(tokens)  # (B, M, H)
        count = present.sum(dim=1)  # (B,)
        last = (count - 1.0).clamp(min=0.0).long()  # (B,) index of the last present token
        idx = last.view(-1, 1, 1).expand(-1, 1, out.shape[2])
        fused = torch.gather(out, 1, idx).squeeze(1) * (count > 0).float().unsqueeze(1)  # (B, H)
        return torch.cat([self.drop(fused), m], dim=1)  # (B, H + M)


@FUSIONS.register("sequence")
def sequence(
    *,
    feature_dims: dict[str, int],
    num_outputs: int,
    hidden: int = 64,
    layers: int = 1,
    dropout: float = 0.1,
) -> nn.Module:
    """LSTM over one token per present modality (a missing one is absent from the sequence)."""
    return SequenceFusion(feature_dims, hidden, layers, dropout)
