"""The model package: a directory that every verb after training reads and writes.

``medfuse.json`` (spec, labels, preprocessing, threshold, calibration, versions, records, and the
sha256 of every other file), ``model.safetensors`` (never pickle), ``metrics.json``, ``README.md``.
Writes are atomic: a package is assembled in a hidden sibling directory and renamed into place, and
``medfuse.json`` (which lists the checksums) is the last file written, so an interrupted save never
leaves a directory that looks like a complete package.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from medfuse.core.errors import PackageError

META = "medfuse.json"
WEIGHTS = "model.safetensors"
FORMAT = "medfuse-package"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("medfuse", "torch", "numpy", "onnx", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_package(
    path: str | Path, meta: dict[str, Any], files: dict[str, bytes | str | Path]
) -> Path:
    """Atomically (re)write a package directory from ``files`` (bytes, text or a source path)."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        checksums: dict[str, str] = {}
        for name, content in files.items():
            if name == META or "/" in name or name.startswith("."):
                raise PackageError(f"invalid package file name {name!r}")
            target = tmp / name
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                data = content.encode() if isinstance(content, str) else content
                with open(target, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            checksums[name] = sha256_file(target)
        meta = dict(meta)
        meta["format"], meta["format_version"] = FORMAT, FORMAT_VERSION
        meta["files"] = dict(sorted(checksums.items()))
        with open(tmp / META, "w") as f:
            json.dump(meta, f, indent=2, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = None
        if dst.exists():
            if not (dst / META).exists() and any(dst.iterdir()):
                raise PackageError(
                    f"{dst} exists and is not a medfuse package; refusing to replace it"
                )
            old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            dst.rename(old)
        tmp.rename(dst)
        _fsync_dir(dst.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return dst
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_meta(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read ``medfuse.json``; with ``verify`` every listed file must exist with its sha256."""
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"{root} is not a directory; a model package is a directory with {META}")
    mfile = root / META
    if not mfile.exists():
        raise PackageError(f"{root} has no {META}: not a medfuse package (or an interrupted save)")
    try:
        meta = json.loads(mfile.read_text())
    except json.JSONDecodeError as err:
        raise PackageError(f"{mfile} is not valid JSON ({err}); the package is damaged") from None
    if meta.get("format") != FORMAT:
        raise PackageError(
            f"{mfile} is not a medfuse package manifest (format={meta.get('format')!r})"
        )
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise PackageError(
            f"{root} uses package format {meta['format_version']}; this medfuse reads <= {FORMAT_VERSION}"
        )
    if verify:
        verify_files(root, meta)
    return meta


def verify_files(root: Path, meta: dict[str, Any]) -> None:
    for name, digest in meta.get("files", {}).items():
        f = root / name
        if not f.exists():
            raise PackageError(f"{root}: {name} is listed in {META} but missing")
        got = sha256_file(f)
        if got != digest:
            raise PackageError(
                f"{root}: {name} does not match its recorded sha256 (tampered or truncated; "
                f"expected {digest[:12]}..., got {got[:12]}...); refusing to load it"
            )


def package_files(root: Path, meta: dict[str, Any]) -> dict[str, Path]:
    return {name: root / name for name in meta.get("files", {})}


def update_package(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    add: dict[str, bytes | str | Path] | None = None,
    remove: tuple[str, ...] = (),
    meta_updates: dict[str, Any] | None = None,
) -> Path:
    """Copy a verified package to ``dst`` (or rewrite it in place) with files added or replaced."""
    src = Path(src)
    meta = read_meta(src)
    files: dict[str, bytes | str | Path] = {
        n: p
        for n, p in package_files(src, meta).items()
        if n not in remove and n not in (add or {})
    }
    files.update(add or {})
    meta.update(meta_updates or {})
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    target = Path(dst) if dst is not None else src
    if target.resolve() == src.resolve():
        # sources are inside the directory being replaced: stage them in memory first
        files = {n: (c.read_bytes() if isinstance(c, Path) else c) for n, c in files.items()}
    return write_package(target, meta, files)
