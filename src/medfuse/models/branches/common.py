"""Building blocks shared by the branches; one ``spatial_dims`` makes them 1D, 2D or 3D."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from medfuse.core.errors import not_allowed

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_MAXPOOL = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}
Pool = Literal["avg", "avgmax"]  # a branch parameter: the registry checks the value
POOLS: tuple[str, ...] = get_args(Pool)


class AvgMaxPool(nn.Module):
    """Global average and global max pooling, concatenated along channels (2C features)."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.avg = _POOL[spatial_dims](1)
        self.max = _MAXPOOL[spatial_dims](1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.avg(x), self.max(x)], dim=1)


def conv(spatial_dims: int, cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Module:
    return _CONV[spatial_dims](cin, cout, k, stride=stride, padding=k // 2, bias=False)


def norm(spatial_dims: int, c: int) -> nn.Module:
    return _BN[spatial_dims](c)


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn + shortcut (projected when shape changes)."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, stride: int = 1, k: int = 3) -> None:
        super().__init__()
        self.conv1 = conv(spatial_dims, cin, cout, k, stride)
        self.bn1 = norm(spatial_dims, cout)
        self.conv2 = conv(spatial_dims, cout, cout, k)
        self.bn2 = norm(spatial_dims, cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                conv(spatial_dims, cin, cout, 1, stride), norm(spatial_dims, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ConvEncoder(nn.Module):
    """Stem + residual stages + global average pool + projection to ``out_features``.

    ``features`` is the last convolutional block (the Grad-CAM target).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        widths: list[int],
        blocks_per_stage: list[int],
        out_features: int,
        dropout: float,
        stem_kernel: int = 3,
        kernel: int = 3,
        pool: Pool = "avg",
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.stem = nn.Sequential(
            conv(spatial_dims, in_channels, widths[0], stem_kernel, stem_stride),
            norm(spatial_dims, widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks_per_stage)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(ResidualBlock(spatial_dims, cin, w, stride, kernel))
                cin = w
        self.features = nn.Sequential(*layers)
        if pool not in POOLS:
            raise ValueError(not_allowed("pool", pool, POOLS))
        self.pool = _POOL[spatial_dims](1) if pool == "avg" else AvgMaxPool(spatial_dims)
        pooled = cin if pool == "avg" else 2 * cin
        self.proj = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(pooled, out_features), nn.ReLU()
        )
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, *spatial) -> (B, out_features)
        return self.proj(self.pool(self.features(self.stem(x))))
