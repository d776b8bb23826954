"""Run ``medfuse`` as on a machine where some packages are not installed.

``python tests/blocked_run.py torch,pandas predict PKG --input x.npz`` puts a finder first on
``sys.meta_path`` that refuses those top-level modules (``ModuleNotFoundError``, as when they are
absent), runs ``medfuse.cli.main`` with the remaining arguments, and exits with its status. The
last stderr line lists the blocked modules that were imported anyway (``blocked-loaded: []``).
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec


class Refuse:
    """A meta path finder for which the named top-level modules do not exist."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec:
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None  # type: ignore[return-value]  (not ours: the next finder decides)


def main() -> int:
    names = {n for n in sys.argv[1].split(",") if n}
    sys.meta_path.insert(0, Refuse(names))
    from medfuse.cli import main as medfuse

    try:
        rc = medfuse(sys.argv[2:])
    except SystemExit as e:  # --help, argparse errors
        rc = int(e.code or 0)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in names)
    print(f"blocked-loaded: {loaded}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
