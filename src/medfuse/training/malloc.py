"""glibc ``malloc`` settings for training on a CPU.

With glibc's defaults a CPU training process can spend much of a step in page faults: tensors
of a few MiB (activations, convolution buffers) are mapped and unmapped at every step until
glibc's dynamic mmap threshold has risen, and the heap is trimmed back to the kernel between
steps. :func:`tune_malloc` fixes both thresholds (``mallopt``) for the process and, through the
environment, for the processes it starts (DataLoader workers, torchrun ranks). It changes the
process's allocator, so it can be declined: ``MEDFUSE_MALLOC=default``, or set
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``/``GLIBC_TUNABLES`` yourself (or preload
jemalloc or tcmalloc, which these settings do not touch).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger("medfuse.training")

#: allocations below this come from the heap (glibc's largest dynamic threshold on 64 bits)
MMAP_THRESHOLD = 32 << 20
#: free memory at the top of the heap kept for the next step, not returned to the kernel
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds for CPU training (once per process); ``True`` when
    set, ``False`` where declined (see the module) or not glibc."""
    ok = False
    inherited = os.environ.get(_ENV[0]) == str(MMAP_THRESHOLD) and os.environ.get(_ENV[1]) == str(
        TRIM_THRESHOLD
    )  # set by the medfuse process that started this one
    if inherited:
        return True
    declined = os.environ.get("MEDFUSE_MALLOC", "") == "default" or any(
        k in os.environ for k in _ENV
    )
    if sys.platform.startswith("linux") and not declined:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            ok = ok and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if ok:  # processes started from here (torchrun ranks) read them at start-up
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(TRIM_THRESHOLD)
        log.info(
            "CPU training: glibc malloc thresholds set (mmap %d MiB, trim %d MiB; "
            "MEDFUSE_MALLOC=default keeps glibc's)",
            MMAP_THRESHOLD >> 20,
            TRIM_THRESHOLD >> 20,
        )
    return ok
