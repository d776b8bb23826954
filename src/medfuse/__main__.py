"""``python -m medfuse`` (and ``torchrun -m medfuse``)."""

import sys

from medfuse.cli import main
from medfuse.distributed.launch import die_with_agent, exit_worker, is_worker

if is_worker():  # a torchrun worker ends with the agent that started it
    die_with_agent()
code = main()
if is_worker():  # a torchrun worker: see exit_worker
    exit_worker(code)
sys.exit(code)
