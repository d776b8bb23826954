"""Test environments only: a subprocess started with this folder on ``PYTHONPATH`` (a torchrun
worker, a benchmark) imports timm and transformers as the test process does (torchvision_ops.py)."""

from torchvision_ops import declare_missing_ops

declare_missing_ops()
