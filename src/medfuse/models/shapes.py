"""Per-layer shape overrides: how a pruned branch is described in the spec (no pickle).

Structured pruning leaves irregular channel counts (16 in one conv, 23 in the next) that no
builder keyword such as ``width`` can express. A branch in the spec may therefore carry a
reserved key ``layer_shapes: {layer_name: shape}``: the branch is built by its builder as usual,
then each named layer is re-created with the stored shape, so ``load_state_dict(strict=True)``
of the pruned weights succeeds. Shapes per layer type:

- ``Conv1d/2d/3d``: ``[in_channels, out_channels]``
- ``Linear``: ``[in_features, out_features]``
- ``BatchNorm1d/2d/3d``: ``[num_features]``
- ``LSTM/GRU``: ``[input_size, hidden_size]``

Every other hyperparameter (kernel, stride, padding, bias, eps, layers, direction) is kept from
the layer the builder made. The mechanism is generic: any registered branch works unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medfuse.core.errors import SpecError, did_you_mean

#: the reserved branch key (see ``medfuse.core.spec.BRANCH_RESERVED``)
LAYER_SHAPES = "layer_shapes"

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_RNN = (nn.LSTM, nn.GRU)
RESIZABLE = (*_CONV, nn.Linear, *_NORM, *_RNN)


def layer_shape(module: nn.Module) -> list[int] | None:
    """The shape a layer is described by in ``layer_shapes`` (None: not a resizable layer)."""
    if isinstance(module, _CONV):
        return [int(module.in_channels), int(module.out_channels)]
    if isinstance(module, nn.Linear):
        return [int(module.in_features), int(module.out_features)]
    if isinstance(module, _NORM):
        return [int(module.num_features)]
    if isinstance(module, _RNN):
        return [int(module.input_size), int(module.hidden_size)]
    return None


def resized(module: nn.Module, shape: list[int]) -> nn.Module:
    """A fresh layer of the same type and hyperparameters as ``module`` with a new shape."""
    if isinstance(module, _CONV):
        if module.groups != 1:
            raise ValueError("grouped convolutions cannot be resized")
        return type(module)(
            shape[0],
            shape[1],
            module.kernel_size,  # type: ignore[arg-type]
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    if isinstance(module, nn.Linear):
        return nn.Linear(shape[0], shape[1], bias=module.bias is not None)
    if isinstance(module, _NORM):
        return type(module)(
            shape[0],
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
    if isinstance(module, _RNN):
        if getattr(module, "proj_size", 0):
            raise ValueError("LSTMs with proj_size cannot be resized")
        return type(module)(
            shape[0],
            shape[1],
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )
    raise ValueError(f"{type(module).__name__} is not a resizable layer")


def resizable_layers(module: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in module.named_modules() if n and isinstance(m, RESIZABLE)}


def apply_layer_shapes(branch: nn.Module, shapes: Any, *, path: str = LAYER_SHAPES) -> nn.Module:
    """Re-create the named layers of ``branch`` (in place) with their stored shapes."""
    if not isinstance(shapes, dict):
        raise SpecError(path, f"must map layer names to shapes; got {shapes!r}")
    layers = resizable_layers(branch)
    for name, shape in shapes.items():
        where = f"{path}.{name}"
        if name not in layers:
            raise SpecError(
                where,
                f"this branch has no resizable layer {name!r}{did_you_mean(name, layers)} "
                f"Layers: {', '.join(layers) or '(none)'}",
            )
        current = layer_shape(layers[name])
        if (
            not isinstance(shape, list | tuple)
            or len(shape) != len(current or [])
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
        ):
            raise SpecError(
                where,
                f"must be a list of {len(current or [])} positive integers "
                f"(like {current} for a {type(layers[name]).__name__}); got {shape!r}",
            )
        try:
            new = resized(layers[name], list(shape))
        except ValueError as err:
            raise SpecError(where, str(err)) from None
        parent_name, _, attr = name.rpartition(".")
        parent = branch.get_submodule(parent_name) if parent_name else branch
        setattr(parent, attr, new)
    return branch


def shape_overrides(pruned: nn.Module, reference: nn.Module) -> dict[str, list[int]]:
    """The ``layer_shapes`` that turn a freshly built ``reference`` branch into ``pruned``."""
    ref = resizable_layers(reference)
    out: dict[str, list[int]] = {}
    for name, mod in resizable_layers(pruned).items():
        if name not in ref or type(ref[name]) is not type(mod):
            raise ValueError(f"layer {name!r} of the pruned branch has no counterpart in its spec")
        shape = layer_shape(mod)
        if shape != layer_shape(ref[name]):
            out[name] = shape  # type: ignore[assignment]
    return out
