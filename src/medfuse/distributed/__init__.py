"""Training past one device on torch.distributed: launch (torchrun), strategies (``ddp``,
``fsdp``, ``branch`` placement, ``hybrid``), and the per-process session ``api.train`` uses.

>>> from medfuse.distributed import STRATEGIES          # single, ddp, fsdp, branch, hybrid
>>> medfuse.train("configs/synthetic.yaml", strategy="branch")  # one process, placed branches

Several processes: ``medfuse train CONFIG --nproc 2`` or ``torchrun --nproc-per-node 2 -m
medfuse train CONFIG``. See docs/distributed.md.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "STRATEGIES",
    "BranchParallel",
    "Placement",
    "Session",
    "is_main_process",
    "launch",
    "launched_env",
    "resolve_placement",
    "start_session",
    "torchrun_argv",
]

_WHERE = {
    "STRATEGIES": "strategies",
    "Session": "strategies",
    "start_session": "strategies",
    "is_main_process": "strategies",
    "launched_env": "strategies",
    "BranchParallel": "placement",
    "Placement": "placement",
    "resolve_placement": "placement",
    "launch": "launch",
    "torchrun_argv": "launch",
}


def __getattr__(name: str) -> Any:  # lazy: the CLI imports the launcher without torch
    if name in _WHERE:
        # lazy: stdlib, kept off the --help path
        import importlib

        return getattr(importlib.import_module(f"medfuse.distributed.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'medfuse.distributed' has no attribute {name!r}")
