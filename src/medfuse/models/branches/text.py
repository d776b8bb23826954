"""Text branch trained from scratch: token embeddings, a GRU, masked mean pooling.

Input: ``(B, length)`` token ids as floats (``medfuse.core.text.encode``; 0 pads). One plain
module: it trains, saves and exports to ONNX like every other branch.
"""

from __future__ import annotations

import torch
from torch import nn

from medfuse.core.errors import SpecError
from medfuse.models import BRANCHES


class TextGRU(nn.Module):
    """``(B, L)`` ids -> embedding ``(B, L, E)`` -> GRU ``(B, L, H*dirs)`` -> mean over the
    non-padding tokens -> ``(B, out_features)``."""

    def __init__(
        self,
        vocab_size: int,
        embedding: int,
        hidden: int,
        bidirectional: bool,
        out_features: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embedding, padding_idx=0)
        self.rnn = nn.GRU(embedding, hidden, batch_first=True, bidirectional=bidirectional)
        width = hidden * (2 if bidirectional else 1)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, out_features), nn.ReLU())
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.round().long().clamp(0, self.vocab_size - 1)  # (B, L); unseen large ids -> last
        keep = (ids > 0).unsqueeze(-1).to(torch.float32)  # (B, L, 1)
        out, _ = self.rnn(self.embed(ids))  # (B, L, H)
        pooled = (out * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # (B, H)
        return torch.as_tensor(self.proj(pooled))


@BRANCHES.register("gru_text", example={"vocab_size": 64, "embedding": 8, "hidden": 8})
def gru_text(
    *,
    input_shape: tuple[int, ...],
    vocab_size: int = 2000,
    embedding: int = 64,
    hidden: int = 64,
    bidirectional: bool = False,
    out_features: int = 64,
    dropout: float = 0.1,
) -> nn.Module:
    """Word embeddings + GRU over a text modality (``kind: text``), trained from scratch.
    ``vocab_size`` must be at least the modality's ``vocab`` (ids beyond it share the last row)."""
    if len(input_shape) != 1:
        raise SpecError(
            "branches",
            f"gru_text needs a text modality (token ids, shape (length,)); got {tuple(input_shape)}",
        )
    return TextGRU(vocab_size, embedding, hidden, bidirectional, out_features, dropout)
