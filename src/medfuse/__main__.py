"""``python -m medfuse`` (and ``torchrun -m medfuse``)."""

import sys

from medfuse.cli import main
from medfuse.distributed.launch import exit_worker, is_worker

code = main()
if is_worker():  # a torchrun worker: see exit_worker
    exit_worker(code)
sys.exit(code)
