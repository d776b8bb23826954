"""Signal branches for (B, C, T) inputs: residual 1D CNN, LSTM and GRU."""

from __future__ import annotations

import torch
from torch import nn

from medfuse.core.errors import SpecError
from medfuse.models import BRANCHES
from medfuse.models.branches.common import ConvEncoder


def _signal_dims(input_shape: tuple[int, ...], name: str) -> int:
    if len(input_shape) != 2:
        raise SpecError("branches", f"{name} needs a signal (C, T); got {input_shape}")
    return input_shape[0]


@BRANCHES.register("cnn1d")
def cnn1d(
    *,
    input_shape: tuple[int, ...],
    width: int = 32,
    depth: int = 4,
    kernel: int = 7,
    out_features: int = 128,
    dropout: float = 0.1,
) -> nn.Module:
    """Residual 1D CNN over multichannel signals; stride 2 per stage after the first."""
    c = _signal_dims(input_shape, "cnn1d")
    widths = [width * 2 ** min(i, 3) for i in range(depth)]
    return ConvEncoder(
        1, c, widths, [1] * depth, out_features, dropout, stem_kernel=kernel, kernel=kernel
    )


class RecurrentEncoder(nn.Module):
    """LSTM/GRU over time; the output is the last hidden state (both directions if bidirectional)."""

    def __init__(
        self,
        cell: str,
        in_channels: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        out_features: int,
    ) -> None:
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(
            in_channels,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        width = hidden * (2 if bidirectional else 1)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, out_features), nn.ReLU())
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T) -> (B, T, C) -> rnn -> (B, T, H*dirs); last step, plus first step of the reverse direction
        seq, _ = self.rnn(x.transpose(1, 2))
        if self.rnn.bidirectional:
            h = self.rnn.hidden_size
            last = torch.cat([seq[:, -1, :h], seq[:, 0, h:]], dim=1)
        else:
            last = seq[:, -1]
        return self.proj(last)


def _recurrent(
    cell: str,
    input_shape: tuple[int, ...],
    hidden: int,
    layers: int,
    bidirectional: bool,
    dropout: float,
    out_features: int,
) -> nn.Module:
    return RecurrentEncoder(
        cell, _signal_dims(input_shape, cell), hidden, layers, bidirectional, dropout, out_features
    )


@BRANCHES.register("lstm")
def lstm(
    *,
    input_shape: tuple[int, ...],
    hidden: int = 64,
    layers: int = 1,
    bidirectional: bool = False,
    out_features: int = 64,
    dropout: float = 0.0,
) -> nn.Module:
    """LSTM over time steps of a (C, T) signal; channels are the per-step features."""
    return _recurrent("lstm", input_shape, hidden, layers, bidirectional, dropout, out_features)


@BRANCHES.register("gru")
def gru(
    *,
    input_shape: tuple[int, ...],
    hidden: int = 64,
    layers: int = 1,
    bidirectional: bool = False,
    out_features: int = 64,
    dropout: float = 0.0,
) -> nn.Module:
    """GRU over time steps of a (C, T) signal; channels are the per-step features."""
    return _recurrent("gru", input_shape, hidden, layers, bidirectional, dropout, out_features)
