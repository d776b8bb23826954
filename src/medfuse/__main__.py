"""``python -m medfuse`` (and ``torchrun -m medfuse``)."""

import sys

from medfuse.cli import main

sys.exit(main())
