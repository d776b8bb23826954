"""Branch placement: model parallelism the way a composite naturally splits.

``train.placement: {image: cuda:0, ecg: cuda:1, fusion: cuda:0}`` puts each branch on its own
device and the fusion (with the head and the auxiliary heads) on another. Forward hooks on each
branch move its input to the branch's device and its features to the fusion device, so the plain
``CompositeModel.forward`` (used for validation and prediction) works unchanged, and autograd
carries gradients back across devices. :class:`BranchParallel` adds concurrency on top: on CUDA
each branch is launched on its own stream, so branches on different GPUs (or on one GPU) overlap.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from medfuse.core.errors import SpecError, did_you_mean

log = logging.getLogger("medfuse.distributed")

#: the placement key for the fusion, the head and the auxiliary heads
FUSION = "fusion"


def parse_device(value: str, path: str) -> torch.device:
    """A device string from a spec (``cpu``, ``cuda``, ``cuda:1``), or a SpecError naming ``path``."""
    try:
        return torch.device(str(value))
    except (RuntimeError, ValueError):
        raise SpecError(path, f"{value!r} is not a device; use cpu, cuda or cuda:N") from None


def resolve_placement(
    placement: dict[str, str],
    modalities: list[str],
    default: torch.device,
    *,
    offset: int = 0,
    device_count: int | None = None,
) -> dict[str, torch.device]:
    """The device of every modality's branch and of ``fusion``, validated.

    Absent modalities go to the fusion device; an absent ``fusion`` goes to ``default`` (the
    process's device). When ``default`` is a CPU, every entry maps to ``cpu`` (so a GPU config
    can be smoke-tested on a laptop). CUDA indices in ``placement`` are shifted by ``offset``
    (``default`` is already this process's own device): with ``hybrid``,
    process ``local_rank`` owns GPUs ``local_rank * k .. local_rank * k + k - 1``, where ``k`` is
    the number of GPUs one placement uses (its largest index + 1).
    """
    allowed = [*modalities, FUSION]
    parsed: dict[str, torch.device] = {}
    for key, value in placement.items():
        if key not in allowed:
            raise SpecError(
                f"train.placement.{key}",
                f"no modality {key!r}{did_you_mean(key, allowed)} Allowed keys: {', '.join(allowed)}",
            )
        parsed[key] = parse_device(value, f"train.placement.{key}")
    if default.type == "cpu":
        if any(d.type != "cpu" for d in parsed.values()):
            log.info("running on cpu: every placement device maps to cpu")
        return {k: torch.device("cpu") for k in allowed}
    count = torch.cuda.device_count() if device_count is None else device_count
    out: dict[str, torch.device] = {}
    for key in allowed:
        named = key if key in parsed else FUSION if FUSION in parsed else None
        dev = parsed[named] if named else default
        if dev.type == "cuda":
            # indices in the spec are per process; the process's own device already is absolute
            index = (dev.index or 0) + (offset if named else 0)
            if index >= count:
                raise SpecError(
                    f"train.placement.{key}",
                    f"{placement.get(key, placement.get(FUSION, str(default)))!r} is cuda:{index} "
                    f"for this process, but only {count} CUDA device(s) are visible",
                )
            dev = torch.device("cuda", index)
        out[key] = dev
    return out


def devices_per_process(placement: dict[str, str]) -> int:
    """How many GPUs one placement uses (largest CUDA index + 1; 1 when none is named)."""
    idx = [torch.device(str(v)).index or 0 for v in placement.values() if str(v).startswith("cuda")]
    return max(idx, default=0) + 1


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, tuple | list):
        return type(obj)(_move(o, device) for o in obj)
    return obj


class Placement:
    """Places a CompositeModel's parts on their devices and keeps the hooks that move tensors."""

    def __init__(self, devices: dict[str, torch.device]) -> None:
        self.devices = dict(devices)
        self.fusion_device = self.devices[FUSION]
        self._handles: list[Any] = []
        self.model: nn.Module | None = None

    @property
    def is_split(self) -> bool:
        """True when some branch is not on the fusion device."""
        return any(d != self.fusion_device for d in self.devices.values())

    def apply(self, model: nn.Module) -> nn.Module:
        """Move branches, fusion, head and auxiliary heads to their devices (idempotent).

        Each part goes straight to its own device: the whole model never sits on one device."""
        if self.model is model:
            return model
        self.remove()
        for child_name, child in model.named_children():
            if child_name != "branches":
                child.to(self.fusion_device)
        for t in [*model._parameters.values(), *model._buffers.values()]:
            if t is not None:
                t.data = t.data.to(self.fusion_device)
        for name, branch in model.branches.items():
            dev = self.devices[name]
            branch.to(dev)
            self._handles.append(
                branch.register_forward_pre_hook(lambda _m, args, d=dev: _move(args, d))
            )
            self._handles.append(
                branch.register_forward_hook(
                    lambda _m, _a, out, d=self.fusion_device: _move(out, d)
                )
            )
        self.model = model
        return model

    def remove(self, device: torch.device | None = None) -> None:
        """Drop the hooks and (with ``device``) gather the whole model on one device."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.model is not None and device is not None:
            self.model.to(device)
        self.model = None

    def describe(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.devices.items()}


class BranchParallel(nn.Module):
    """Runs a placed CompositeModel's branches concurrently (one CUDA stream per branch).

    Same call signature and results as ``CompositeModel.forward``; on CPU it runs the branches one
    after another. The wrapped model is ``.module`` (as with DDP), so checkpoints use its keys.
    """

    def __init__(self, model: nn.Module, placement: Placement) -> None:
        super().__init__()
        self.module = placement.apply(model)
        self.placement = placement
        self._streams: dict[str, torch.cuda.Stream] = {}
        for name in self.module.modalities:
            dev = placement.devices[name]
            if dev.type == "cuda":
                self._streams[name] = torch.cuda.Stream(device=dev)

    def forward(
        self, inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], aux: str = "none"
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self.module
        if not self._streams:
            return model(inputs, masks, aux=aux)
        fdev = self.placement.fusion_device
        features: dict[str, torch.Tensor] = {}
        pending: list[tuple[str, torch.cuda.Stream]] = []
        for name in model.modalities:
            stream = self._streams.get(name)
            if stream is None:
                features[name] = model.branches[name](inputs[name])  # (B, D_m), on fdev
                continue
            x = inputs[name]
            if x.device.type == "cuda":  # the input was produced on x.device's current stream
                stream.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(stream):
                if x.device == stream.device:
                    x.record_stream(stream)
                features[name] = model.branches[name](x)  # hooks: to its device, back to fdev
            pending.append((name, stream))
        if fdev.type == "cuda":
            main = torch.cuda.current_stream(fdev)
            for name, stream in pending:  # the fusion waits for every branch's stream
                main.wait_stream(stream)
                if stream.device == fdev:
                    features[name].record_stream(main)
        logits = model.fuse(features, masks)  # (B, K) on fdev
        if aux == "none":
            return logits
        src = features if aux == "attached" else {n: f.detach() for n, f in features.items()}
        return logits, model.branch_logits(src)
