"""Image branches: a small residual CNN and our own ResNet-18 (2D or 3D)."""

from __future__ import annotations

from torch import nn

from medfuse.core.errors import SpecError
from medfuse.models import BRANCHES
from medfuse.models.branches.common import ConvEncoder, Pool


def _image_dims(input_shape: tuple[int, ...], name: str) -> tuple[int, int]:
    if len(input_shape) not in (3, 4):
        raise SpecError(
            "branches", f"{name} needs an image (C, H, W) or volume (C, D, H, W); got {input_shape}"
        )
    return input_shape[0], len(input_shape) - 1


@BRANCHES.register("cnn")
def cnn(
    *,
    input_shape: tuple[int, ...],
    width: int = 32,
    depth: int = 3,
    blocks: int = 1,
    out_features: int = 128,
    dropout: float = 0.1,
    pool: Pool = "avg",
    stem_stride: int = 1,
) -> nn.Module:
    """Small residual CNN (2D or 3D by input): `depth` stages, width doubling, stride 2 after the first.

    ``pool``: ``avg`` (global average) or ``avgmax`` (average and max, concatenated).
    ``stem_stride``: the first convolution's stride (1: full resolution, for 28-px images; 2-8
    for large ones: a stride x stride kernel, zero-padded by stride // 2; 4 on 224 px gives a
    57x57 first stage, about 16x fewer operations)."""
    in_channels, dims = _image_dims(input_shape, "cnn")
    if not 1 <= stem_stride <= 8:
        raise SpecError("branches", f"cnn stem_stride must be 1 to 8; got {stem_stride}")
    if any(s < stem_stride for s in input_shape[1:]):
        raise SpecError(
            "branches",
            f"cnn stem_stride {stem_stride} is larger than the input {tuple(input_shape[1:])}; "
            f"use at most {min(input_shape[1:])}",
        )
    widths = [width * 2**i for i in range(depth)]
    return ConvEncoder(
        dims,
        in_channels,
        widths,
        [blocks] * depth,
        out_features,
        dropout,
        stem_kernel=3 if stem_stride == 1 else stem_stride,
        pool=pool,
        stem_stride=stem_stride,
    )


@BRANCHES.register("resnet18")
def resnet18(
    *,
    input_shape: tuple[int, ...],
    width: int = 64,
    out_features: int = 512,
    dropout: float = 0.0,
    pool: Pool = "avg",
) -> nn.Module:
    """ResNet-18 (2-2-2-2 basic blocks) with a 3x3 stride-1 stem and no max-pool, for 28-px inputs."""
    in_channels, dims = _image_dims(input_shape, "resnet18")
    widths = [width, width * 2, width * 4, width * 8]
    return ConvEncoder(dims, in_channels, widths, [2, 2, 2, 2], out_features, dropout, pool=pool)
