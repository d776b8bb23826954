"""Fetch a dataset file with an MD5 check; offline, fail with a message that says where to put it."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from medfuse.core.errors import DataError


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, md5: str, *, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically and check its MD5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if os.environ.get("MEDFUSE_OFFLINE"):
        raise DataError(
            f"{dest.name} is not at {dest} and MEDFUSE_OFFLINE is set; place the file there"
        )
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        got = md5sum(Path(tmp))
        if got != md5:
            raise DataError(f"download of {url} has MD5 {got}, expected {md5}; not used")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise DataError(
            f"could not download {dest.name} from {url} ({err}). Offline? Put the file at {dest} "
            f"(or point --data-dir / MEDFUSE_DATA_DIR at a folder holding it)"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
