"""Compression: quantize (INT8 through ONNX Runtime, per branch), prune (structured per branch
or unstructured), distill (into a smaller and possibly single-modality student) and measure the
trade-off. Each verb reads a package and writes a new one whose ``medfuse.json`` records what was
done (``compression``: method, settings, calibration data, metrics before/after).

>>> from medfuse.compress import quantize, prune, distill, benchmark

(onnxruntime and torch-pruning are imported when a verb runs, not here.)
"""

from __future__ import annotations

# the functions are bound over the same-named submodules on purpose: medfuse.compress.quantize
# is the verb; its module stays importable as ``medfuse.compress.quantize`` via sys.modules
from medfuse.compress.distill import distill
from medfuse.compress.measure import benchmark, count_macs
from medfuse.compress.prune import prune
from medfuse.compress.quantize import quantize

__all__ = ["benchmark", "count_macs", "distill", "prune", "quantize"]
