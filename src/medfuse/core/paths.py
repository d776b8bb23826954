"""Path containment: a file named by a manifest must lie under the manifest's folder or the data
root (``..``, absolute paths and symbolic links resolved first)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from medfuse.core.errors import DataError


def contained(path: str | Path, roots: Iterable[str | Path]) -> bool:
    """True when ``path`` (resolved: ``..`` and links followed) lies inside one of ``roots``."""
    target = Path(path).expanduser().resolve()
    return any(target.is_relative_to(Path(r).expanduser().resolve()) for r in roots)


def require_contained(path: str | Path, roots: Iterable[str | Path], where: str) -> Path:
    """``path`` when contained, else a DataError naming it and the allowed folders."""
    roots = [Path(r) for r in roots]
    if not contained(path, roots):
        allowed = ", ".join(str(r) for r in roots)
        raise DataError(
            f"{where}: {path} lies outside the allowed folders ({allowed}); paths in a manifest "
            "must stay inside its folder or the data root (data.options.contain_paths)"
        )
    return Path(path)


def default_data_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medfuse"


def resolve_data_root(data_dir: str | Path | None = None) -> Path:
    """``--data-dir``, else ``MEDFUSE_DATA_DIR``, else ``~/.cache/medfuse``."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("MEDFUSE_DATA_DIR")
    return Path(env).expanduser() if env else default_data_root()
