"""Tabular branch: an MLP over standardised columns (missing values arrive as 0 = the mean)."""

from __future__ import annotations

from torch import nn

from medfuse.core.errors import SpecError
from medfuse.models import BRANCHES


class MLPEncoder(nn.Module):
    def __init__(
        self, in_features: int, hidden: int, layers: int, out_features: int, dropout: float
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            mods += [
                nn.Linear(width, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
            ]
            width = hidden
        mods += [nn.Linear(width, out_features), nn.ReLU()]
        self.net = nn.Sequential(*mods)
        self.out_features = out_features

    def forward(self, x):  # (B, F) -> (B, out_features)
        return self.net(x)


@BRANCHES.register("mlp")
def mlp(
    *,
    input_shape: tuple[int, ...],
    hidden: int = 64,
    layers: int = 2,
    out_features: int = 32,
    dropout: float = 0.1,
) -> nn.Module:
    """MLP with batch norm for tabular features (F,)."""
    if len(input_shape) != 1:
        raise SpecError("branches", f"mlp needs tabular features (F,); got {input_shape}")
    return MLPEncoder(input_shape[0], hidden, layers, out_features, dropout)
