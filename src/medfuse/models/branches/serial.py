"""Serial composition: a CNN applied to each element of a sequence, then an RNN over the features.

``crnn`` reads
  - a volume ``(C, D, H, W)`` as D slices ``(C, H, W)`` (``layout="volume"``, the default),
  - with ``layout="sequence"`` (a modality with ``sequence: S``): an image sequence
    ``(S, C, H, W)`` (frames, views) or a signal sequence ``(S, C, T)`` (consecutive beats or
    windows of an ECG strip).
A 2D image ``(C, H, W)`` and a signal sequence ``(S, C, T)`` have the same rank, so the layout is
never guessed: a 3-axis input needs ``layout: sequence``.
The same CNN (2D for images, 1D for signals) encodes every element; an LSTM or GRU reads the
element features in order and its last state (both ends when bidirectional) is the branch
output. One plain module, so it trains, saves and exports to ONNX like every other branch.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from medfuse.core.errors import SpecError, not_allowed
from medfuse.models import BRANCHES
from medfuse.models.branches.common import ConvEncoder
from medfuse.models.branches.signal import RecurrentEncoder

Layout = Literal["volume", "sequence"]  # branch parameters: the registry checks their values
Cell = Literal["lstm", "gru"]
LAYOUTS: tuple[str, ...] = get_args(Layout)
CELLS: tuple[str, ...] = get_args(Cell)


class SerialCRNN(nn.Module):
    """``(B, *input_shape) -> (B, out_features)``: per-element CNN, then RNN over elements."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        *,
        layout: str,
        cell: str,
        width: int,
        depth: int,
        kernel: int,
        element_features: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        out_features: int,
        dropout: float,
    ) -> None:
        super().__init__()
        shape = tuple(int(v) for v in input_shape)
        if len(shape) == 4:  # images: 2D CNN per slice / frame
            self.slices_first = layout == "sequence"
            if self.slices_first:
                self.steps, c = shape[0], shape[1]
            else:
                c, self.steps = shape[0], shape[1]
            dims, k = 2, 3
        else:  # (S, C, T): 1D CNN per beat / window
            self.slices_first = True
            self.steps, c = shape[0], shape[1]
            dims, k = 1, kernel
        widths = [width * 2 ** min(i, 3) for i in range(depth)]
        self.cnn = ConvEncoder(
            dims, c, widths, [1] * depth, element_features, dropout, stem_kernel=k, kernel=k
        )
        self.rnn = RecurrentEncoder(
            cell, element_features, hidden, layers, bidirectional, dropout, out_features
        )
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.slices_first:
            x = x.transpose(1, 2)  # (B, C, D, H, W) -> (B, D, C, H, W)
        elements = x.reshape(-1, *x.shape[2:])  # (B*S, C, ...)
        feats = self.cnn(elements).reshape(-1, self.steps, self.cnn.out_features)  # (B, S, F)
        return self.rnn(feats.transpose(1, 2))  # RecurrentEncoder takes (B, F, S) -> (B, out)


@BRANCHES.register("crnn")
def crnn(
    *,
    input_shape: tuple[int, ...],
    layout: Layout = "volume",
    cell: Cell = "lstm",
    width: int = 16,
    depth: int = 3,
    kernel: int = 7,
    element_features: int = 64,
    hidden: int = 64,
    layers: int = 1,
    bidirectional: bool = False,
    out_features: int = 64,
    dropout: float = 0.1,
) -> nn.Module:
    """CNN per slice/frame/beat, then an LSTM/GRU over them: volumes, image or signal sequences."""
    if len(input_shape) not in (3, 4):
        raise SpecError(
            "branches",
            "crnn needs a volume (C, D, H, W), an image sequence (S, C, H, W) or a signal "
            f"sequence (S, C, T) (a modality with 'sequence'); got {tuple(input_shape)}",
        )
    if layout not in LAYOUTS:
        raise SpecError("branches.layout", not_allowed("crnn layout", layout, LAYOUTS))
    if len(input_shape) == 3 and layout != "sequence":
        raise SpecError(
            "branches.layout",
            f"crnn got a 3-axis input {tuple(input_shape)}: a signal sequence (S, C, T) needs "
            "layout: sequence (a 2D image has no sequence to run over; use cnn)",
        )
    if cell not in CELLS:
        raise SpecError("branches.cell", not_allowed("crnn cell", cell, CELLS))
    return SerialCRNN(
        input_shape,
        layout=layout,
        cell=cell,
        width=width,
        depth=depth,
        kernel=kernel,
        element_features=element_features,
        hidden=hidden,
        layers=layers,
        bidirectional=bidirectional,
        out_features=out_features,
        dropout=dropout,
    )
