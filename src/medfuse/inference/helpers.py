"""Inference helpers every torch-side verb shares: a package's data, a split as normalised tensors
(in memory, or streamed from the decode-once cache), the device to run on, and batched logits from
a model."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.core.errors import DataError, MedfuseError, SpecError
from medfuse.core.preprocess import normalize
from medfuse.core.spec import Spec
from medfuse.data import DataBundle, Split, is_lazy, load_spec_data
from medfuse.data.manifest import reading_split
from medfuse.data.stream import StreamBatches, reader_threads, stream_loader

Batch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]


@dataclass
class Tensors:
    """A split as normalised tensors (kept on the host; batches move to the device)."""

    inputs: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batch(
        self, idx: torch.Tensor, device: torch.device
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        nb = device.type == "cuda"
        return (
            {k: v[idx].to(device, non_blocking=nb) for k, v in self.inputs.items()},
            {k: v[idx].to(device, non_blocking=nb) for k, v in self.masks.items()},
            self.y[idx].to(device, non_blocking=nb),
        )

    def batches(
        self, order: Sequence[torch.Tensor], device: torch.device
    ) -> Generator[Batch, None, None]:
        """The batches of positions ``order`` (one index tensor per batch), on ``device``."""
        for idx in order:
            yield self.batch(idx, device)

    def without(self, m: str) -> Tensors:
        """The same samples with modality ``m`` absent (zero values, mask 0)."""
        masks = {k: (torch.zeros_like(v) if k == m else v) for k, v in self.masks.items()}
        inputs = {k: (torch.zeros_like(v) if k == m else v) for k, v in self.inputs.items()}
        return Tensors(inputs, masks, self.y)


class StreamTensors:
    """A split with streamed modalities (``medfuse.data.stream``): targets and masks in memory,
    inputs read from the decode-once cache and normalised batch by batch (ahead of use by
    :func:`~medfuse.data.stream.reader_threads` threads), in the order asked (the in-memory
    path's values and order: the same training)."""

    def __init__(
        self,
        split: Split,
        stats: dict[str, Any],
        *,
        workers: int = 2,
        zero: tuple[str, ...] = (),
    ) -> None:

        self.split, self.stats, self.workers, self.zero = split, stats, workers, zero
        self.masks = {
            m: torch.from_numpy(np.asarray(v, np.float32)) * (0.0 if m in zero else 1.0)
            for m, v in split.masks.items()
        }
        self.y = torch.from_numpy(np.asarray(split.y))
        self.data = StreamBatches(split.arrays, split.masks, np.asarray(split.y), stats, zero)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def inputs(self) -> dict[str, torch.Tensor]:

        raise DataError(
            "this split is streamed (data.stream): its inputs are not held in memory; this step "
            "needs data.stream: false"
        )

    def batch(self, idx: torch.Tensor, device: torch.device) -> Batch:
        return next(self.batches([idx], device, workers=0))

    def batches(
        self, order: Sequence[torch.Tensor], device: torch.device, *, workers: int | None = None
    ) -> Generator[Batch, None, None]:

        nb = device.type == "cuda"
        n = reader_threads(self.workers if workers is None else workers, device)
        loader = stream_loader(self.data, list(order), workers=n, pin=device if nb else None)
        with contextlib.closing(loader):  # its reader threads stop when this stops
            for inputs, masks, y in loader:
                yield (
                    {k: v.to(device, non_blocking=nb) for k, v in inputs.items()},
                    {k: v.to(device, non_blocking=nb) for k, v in masks.items()},
                    y.to(device, non_blocking=nb),
                )

    def without(self, m: str) -> StreamTensors:
        return StreamTensors(self.split, self.stats, workers=self.workers, zero=(*self.zero, m))


def package_data(
    spec: Spec,
    meta: dict[str, Any],
    data_dir: str | Path | None = None,
    *,
    data: str | Path | None = None,
    split: str | None = None,
) -> DataBundle:
    """A package's own data source (or ``data``, a manifest CSV laid out like it), restricted to
    the modalities it uses, read with its preprocessing, tokenizers and category codes, and
    compared with the fingerprint it recorded (``info["fingerprint_check"]``). ``split``: read
    for that one split, which must have rows (the others may be empty: an external test set whose
    every row is ``test``); ``None``: training's rule (train and val need rows)."""
    with reading_split(split):
        return load_spec_data(
            spec,
            data_dir,
            data=data,
            recorded=meta.get("data"),
            preprocessing=meta.get("preprocessing"),
        )


def to_tensors(split: Split, stats: dict[str, Any], *, workers: int = 2) -> Tensors:
    """A split as normalised tensors; a split with streamed modalities as
    :class:`StreamTensors` (same interface, batches read from the cache)."""
    if any(is_lazy(x) for x in split.arrays.values()):
        return StreamTensors(split, stats, workers=workers)  # type: ignore[return-value]
    inputs = {
        m: torch.from_numpy(normalize(x, split.masks[m], stats[m])) for m, x in split.arrays.items()
    }
    masks = {m: torch.from_numpy(np.asarray(v, np.float32)) for m, v in split.masks.items()}
    return Tensors(inputs, masks, torch.from_numpy(np.asarray(split.y)))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (CUDA when PyTorch sees it, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a string
    PyTorch does not read as a device is a SpecError at ``--device`` (exit 2)."""

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SpecError(
            "--device", f"{device!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedfuseError(
            "--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu or auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MedfuseError(
            f"--device {device}: PyTorch sees {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return dev


#: evaluation's batch by device type (``predict_logits``)
EVAL_BATCH = {"cuda": 256, "cpu": 64}


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: Tensors,
    device: torch.device,
    *,
    batch_size: int | None = None,
    bf16: bool = False,
    branches: bool = False,
    positions: torch.Tensor | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fused logits ``(N, K)`` and, with ``branches``, each branch's auxiliary logits; of the
    samples at ``positions`` only (in that order) when given. ``batch_size``: by default
    ``EVAL_BATCH`` for the device (on a CPU, large batches of large images hold large
    convolution buffers and run no faster)."""
    if batch_size is None:
        batch_size = EVAL_BATCH.get(device.type, EVAL_BATCH["cpu"])
    was = model.training
    model.eval()
    fused: list[torch.Tensor] = []
    per: dict[str, list[torch.Tensor]] = {m: [] for m in data.masks}
    pos = torch.arange(len(data)) if positions is None else torch.as_tensor(positions)
    order = [pos[start : start + batch_size] for start in range(0, len(pos), batch_size)]
    for inputs, masks, _ in data.batches(order, device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(inputs, masks, aux="detached") if branches else model(inputs, masks)
        logits, aux = out if branches else (out, {})
        fused.append(logits.float().cpu())
        for m, v in aux.items():
            per[m].append(v.float().cpu())
    model.train(was)
    return torch.cat(fused).numpy(), (
        {m: torch.cat(v).numpy() for m, v in per.items()} if branches else {}
    )
