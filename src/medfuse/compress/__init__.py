"""Compression: quantize (INT8 through ONNX Runtime, per branch), prune (structured per branch
or unstructured), distill (into a smaller and possibly single-modality student) and measure the
trade-off. Each verb reads a package and writes a new one whose ``medfuse.json`` records what was
done (``compression``: method, settings, calibration data, metrics before/after).

>>> from medfuse.compress import quantize, prune, distill, benchmark

(each function's module, with torch, onnxruntime and torch-pruning, is imported on first use,
so ``medfuse.compress.cli`` builds its parsers quickly.)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medfuse.compress.distill import distill
    from medfuse.compress.measure import benchmark, count_macs
    from medfuse.compress.prune import prune
    from medfuse.compress.quantize import quantize

__all__ = ["benchmark", "count_macs", "distill", "prune", "quantize"]
#: public function -> its submodule (imported on first use: torch, torch-pruning, onnx)
_HOME = {
    "benchmark": "measure",
    "count_macs": "measure",
    "distill": "distill",
    "prune": "prune",
    "quantize": "quantize",
}


class _Compress(types.ModuleType):
    """``medfuse.compress.quantize`` (and prune, distill) is the function, as it always was,
    even after the same-named submodule is imported (which binds the module over the name)."""

    def __getattribute__(self, name: str) -> Any:
        if name in _HOME:
            mod = importlib.import_module(f"medfuse.compress.{_HOME[name]}")
            return mod.__dict__[name]
        return super().__getattribute__(name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *__all__})


sys.modules[__name__].__class__ = _Compress
