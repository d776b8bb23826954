"""The top-level API stays what the README says, whatever was imported before."""

from __future__ import annotations

import subprocess
import sys


def test_top_level_names_are_the_api_functions() -> None:
    code = (
        "import medfuse, medfuse.training.metrics, medfuse.data, medfuse.inference.predictor;"
        "import inspect;"
        "assert inspect.isfunction(medfuse.train), medfuse.train;"
        "assert inspect.isfunction(medfuse.evaluate) and inspect.isfunction(medfuse.load)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_medfuse_is_light() -> None:
    """`import medfuse` must not pull in torch (the CLI and the runtime stay quick)."""
    code = "import sys, medfuse; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
