"""CPU training's glibc malloc settings (medfuse.training.malloc), in fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medfuse.training.malloc import MMAP_THRESHOLD

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="glibc's mallopt (Linux)",
)

# a 16 MiB block freed: glibc's defaults map and unmap it (the anonymous RSS falls back); with the
# thresholds set it comes from the heap and stays for the next step
PROBE = """
import os
import numpy as np
from medfuse.training.malloc import tune_malloc
def anon():
    with open("/proc/self/status") as f:
        return int(next(ln for ln in f if ln.startswith("RssAnon")).split()[1])
tuned = tune_malloc()
before = anon()
x = np.ones(16 << 20, np.uint8)
del x
print(tuned, anon() - before, os.environ.get("MALLOC_MMAP_THRESHOLD_"))
"""


def _probe(**env: str) -> tuple[bool, int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MEDFUSE_MALLOC"))}
    base.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    tuned, kept, var = out.stdout.split()
    return tuned == "True", int(kept), var


def test_tuned_malloc_keeps_freed_blocks_for_the_next_step_and_passes_it_on() -> None:
    tuned, kept, var = _probe()
    assert tuned and kept > 15 * 1024  # KiB: the freed 16 MiB stayed in the heap
    assert var == str(MMAP_THRESHOLD)  # for the ranks torchrun starts from this process


def test_malloc_is_left_alone_when_declined() -> None:
    tuned, kept, var = _probe(MEDFUSE_MALLOC="default")
    assert not tuned and kept < 4 * 1024 and var == "None"  # glibc's default: unmapped at free
    tuned, _, _ = _probe(MALLOC_TRIM_THRESHOLD_="1000000")  # the user's own setting wins
    assert not tuned
