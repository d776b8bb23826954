"""Test environments only (this folder is on the path of the test process, see conftest.py,
and of its subprocesses through ``PYTHONPATH``: ``sitecustomize.py``)."""

from __future__ import annotations

from pathlib import Path

import torch


def declare_missing_ops() -> None:
    """Test environments only: a CUDA torchvision wheel beside a CPU-only torch cannot load its
    C++ ops, and torchvision 0.28 then fails on import (it registers a fake kernel for an op that
    was never defined), taking timm down with it. Declaring the two op schemas lets the pure
    Python model builders import; no test calls the ops (nms). Done only when ``_C`` fails to
    load; a matching wheel (``--index-url https://download.pytorch.org/whl/cpu``) needs none."""
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    lib = next(Path(spec.origin).parent.glob("_C*.so"), None)
    if lib is None:
        return
    try:
        ctypes.CDLL(str(lib))
        return
    except OSError:
        pass
    shim = torch.library.Library("torchvision", "DEF")  # kept alive for the session
    shim.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    shim.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(shim)


_KEEP: list[object] = []
