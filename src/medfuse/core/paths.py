"""Path containment: a file named by a manifest must lie under the manifest's folder or the data
root (``..``, absolute paths and symbolic links resolved first). Output paths: checked before a
verb does any work (``output_file``, ``output_dir``), written naming the file on failure."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from medfuse.core.errors import DataError, MedfuseError, SpecError


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


def file_state(path: str | Path) -> str:
    """What identifies a file's contents cheaply, without reading it: size, modification and
    change times, inode (``"missing"`` when it cannot be stat'ed). The change time cannot be set
    back by tools that keep the modification time (``cp -p``, ``rsync -t``, ``touch -d``): a
    rewrite of the same size and modification time still changes it. What the caches of decoded
    or extracted values key on."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def default_data_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medfuse"


def resolve_data_root(data_dir: str | Path | None = None) -> Path:
    """``--data-dir``, else ``MEDFUSE_DATA_DIR``, else ``~/.cache/medfuse``."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("MEDFUSE_DATA_DIR")
    return Path(env).expanduser() if env else default_data_root()


# ---- outputs: checked before any work, written with the file named on failure ------------------


def _nearest_existing(p: Path) -> Path:
    cur = p
    while not cur.exists() and cur != cur.parent:
        cur = cur.parent
    return cur


def output_file(path: str | Path, option: str) -> Path:
    """``path`` checked as a file a verb will write (call before any work): not a folder, in an
    existing, writable folder. A SpecError at ``option`` (exit 2) names what is wrong."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise SpecError(option, f"{p} is a folder; give a file name")
    parent = p.parent
    if not parent.exists():
        raise SpecError(option, f"{p}: the folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise SpecError(option, f"{p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpecError(option, f"{p}: the folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise SpecError(option, f"{p} exists and is not writable")
    return p


def output_dir(path: str | Path, option: str) -> Path:
    """``path`` checked as a folder a verb will write into (created with its parents when
    missing; call before any work): not a file, under a writable folder. A SpecError at
    ``option`` (exit 2) names what is wrong."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise SpecError(option, f"{p} exists and is a file, not a folder")
    anc = _nearest_existing(p)
    if not anc.is_dir():
        raise SpecError(option, f"{p}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise SpecError(option, f"{p}: the folder {anc} is not writable")
    return p


def write_output(path: str | Path, data: str | bytes, option: str) -> Path:
    """Write ``data`` to the output file ``path`` (checked as :func:`output_file`), whole or not
    at all (a temporary file beside it, then renamed); a failure of the write itself (disk
    full, permissions changed) is a MedfuseError naming the file."""
    p = output_file(path, option)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        tmp.replace(p)
    except OSError as err:
        raise MedfuseError(f"{option} {p}: cannot write it ({err.strerror or err})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return p
