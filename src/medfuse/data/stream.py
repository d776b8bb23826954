"""Manifest data larger than memory: file modalities read lazily, decoded once into an on-disk
cache (by ``torch.utils.data`` DataLoader worker processes), and read back from it batch by
batch for training and evaluation (:func:`stream_loader`).

``data.stream`` (``auto`` | ``true`` | ``false``) chooses the path for a manifest source;
``false`` is the in-memory path (every file decoded into one array per split). A streamed
modality is a :class:`LazyColumn` in ``Split.arrays``: its rows point into a per-modality
:class:`Source` (the files of the manifest's rows) and its values live in the decode-once cache.

One pass (:func:`stream_pass`, run by ``load_data``) goes over every split and streamed modality:
files whose cache entry is missing or stale are decoded by the one per-file reader
(``medfuse.core.readers.read_fitted``, the in-memory path's) in DataLoader worker processes,
which write them to the cache and summarise each row (:class:`RowSummary`); the values are
checked (non-finite, one intensity scale), and the training split's normalisation statistics
(the rows' summaries merged), per-sample means, value ranges and each split's values hash (the
fingerprint, from the rows' digests) are computed from the same pass, equal to the in-memory
ones; of the values, only the range subsample's strided shares (:class:`RangeSample`, at most
about 4M values in all) travel back to the main process.

The cache (``MEDFUSE_CACHE_DIR``, default ``~/.cache/medfuse/decoded``): one directory per
(modality spec, list of files), ``values.npy`` (a ``(rows, *shape)`` float32 array, its rows
read and written by offset, never mapped, a row of integers stored compactly in its slot:
:class:`RowFile`, :data:`STORED`) and ``index.json`` (per row: the stat key of the files its
reader opens (:func:`file_key`: the cell's file, and a WFDB header's data files), the SHA-256 of
their bytes and of its decoded values, its state, an image's width/height before it was fitted
(``data.aspects``); a completion mark). A pass holds each
cache's build lock (:func:`cache_lock`), so concurrent processes (the ranks of a torchrun job)
decode each file once and never read a half-written cache. A new cache is built in a temporary
directory and renamed into place when whole; a temporary directory found under the lock is a
killed writer's and is removed. A row whose stat key changed is hashed: other bytes invalidate
that row, which is re-decoded in place (marked stale in the index before its values are
rewritten). Every row read from the cache is checked against its values digest, as stored
(:meth:`Source.read`). The pass's result is recorded under ``passes/`` (:func:`pass_key`): a
later pass over the same values reads nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import secrets
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medfuse.core.errors import DataError, SpecError
from medfuse.core.package import sha256_file
from medfuse.core.paths import default_data_root, file_state
from medfuse.core.preprocess import EPS, normalize, range_step, range_subsample, ranges_of
from medfuse.core.readers import aspect_range, files_read, raw_extent, read_fitted
from medfuse.core.readers.base import file_scale, mixed_scales_refusal, reader_versions
from medfuse.core.spec import ModalitySpec
from medfuse.data.validate import (
    SPLITS,
    STORED,
    _where,
    compact,
    hash_rows,
    stored_digest,
    values_digest,
)

log = logging.getLogger("medfuse.data")

#: part of every cache's and recorded pass's key: raise it when what the readers decode or what
#: the pass computes (statistics, ranges, hashes, checks) changes, so nothing older is reused
CACHE_VERSION = 10  # 6: a DICOM's scale names its modality and bit depth; 7: signals'; 8: aspects;
# 9: a DICOM's scale under window 'file' (its own window or none); 10: a signal's length
VALUES = "values.npy"
INDEX = "index.json"
#: the recorded results of passes (statistics, values hashes), by :func:`pass_key`
PASSES = "passes"
#: ``data.stream: auto`` streams when the decoded manifest would exceed this share of the memory
#: available now (the in-memory path holds about three copies: read, split, normalised)
AUTO_FRACTION = 0.15
#: the values of the batches the reader threads may hold ready, in all (:func:`ready_ahead`)
PREFETCH_BYTES = 128 << 20
#: rows of the range subsample read at a time (:func:`_ranges`)
RANGE_ROWS = 32


def cache_root() -> Path:
    env = os.environ.get("MEDFUSE_CACHE_DIR")
    return Path(env).expanduser() if env else default_data_root() / "decoded"


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``; physical memory where unknown)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def decoded_bytes(rows: int, modalities: dict[str, ModalitySpec]) -> int:
    """The size of a manifest's file modalities once decoded (float32)."""
    return sum(
        rows * math.prod(m.shape) * 4 for m in modalities.values() if m.kind in ("image", "signal")
    )


def choose_stream(stream: bool | str, rows: int, modalities: dict[str, ModalitySpec]) -> bool:
    """``data.stream`` resolved: ``auto`` streams when the decoded size exceeds
    ``AUTO_FRACTION`` of the available memory."""
    if stream != "auto":
        return bool(stream)
    size, avail = decoded_bytes(rows, modalities), available_memory()
    on = size > AUTO_FRACTION * avail
    if on:
        log.info(
            "data.stream auto: the decoded files take %.1f GiB (%.0f%% of the %.1f GiB "
            "available): streaming them from a decode-once cache",
            size / 2**30,
            100 * size / avail,
            avail / 2**30,
        )
    return on


# ---- what a streamed modality is ---------------------------------------------------------------


class RowFile:
    """The rows of a cache's ``values.npy`` (a ``(rows, *shape)`` float32 array, each row in its
    slot as :data:`STORED` says), read and written by offset on an unbuffered file, never
    memory-mapped: the pages read or written stay in the kernel's page cache, which a process's
    resident memory does not count, so a pass or an epoch over a cache larger than memory keeps
    its RSS flat. Threads share one open file: ``preadv``/``pwrite`` carry their own offset
    (where the platform lacks them, e.g. Windows, a seek and a read under a lock). Read it only
    through this class: a compact row is not float32 in the file."""

    def __init__(self, path: Path, writable: bool = False) -> None:
        head = np.load(path, mmap_mode="r")  # the header only: no row is touched
        self.shape, self.offset = tuple(head.shape[1:]), int(head.offset)
        if head.dtype != np.float32:
            raise DataError(f"{path}: the cache's values are {head.dtype}, not float32")
        self.rows = int(head.shape[0])
        del head
        self.size = math.prod(self.shape)
        self.row_bytes = 4 * self.size
        self.path = path
        self.f = open(path, "r+b" if writable else "rb", buffering=0)  # noqa: SIM115 (close())
        self.fd = self.f.fileno()
        self._by_offset = hasattr(os, "preadv") and hasattr(os, "pwrite")  # not on Windows
        self._seek = threading.Lock()  # the file position, where there is no preadv/pwrite

    def _pread(self, view: memoryview, at: int) -> int:
        if self._by_offset:
            return os.preadv(self.fd, [view], at)
        with self._seek:
            self.f.seek(at)
            return self.f.readinto(view) or 0

    def _pwrite(self, view: memoryview, at: int) -> int:
        if self._by_offset:
            return os.pwrite(self.fd, view, at)
        with self._seek:
            self.f.seek(at)
            return self.f.write(view) or 0

    def _read_into(self, r: int, view: memoryview) -> None:
        at, got = self.offset + r * self.row_bytes, 0
        while got < len(view):  # a read may return less than asked
            n = self._pread(view[got:], at + got)
            if not n:
                raise DataError(
                    f"{self.path}: the cache ends inside row {r} of {self.rows}; delete "
                    f"{self.path.parent} and run again: its files are decoded anew"
                )
            got += n

    def read(
        self,
        rows: np.ndarray,
        stored: list[str] | None,
        check: Callable[[int, str, memoryview], None] | None = None,
    ) -> np.ndarray:
        """The values of ``rows`` (any order, repeats allowed), a new ``(len(rows), *shape)``
        float32 array; ``stored``: each cache row's storage as :meth:`write` returned it
        (:data:`STORED`; ``None``: every row float32); ``check(row, kind, bytes)`` sees each row
        as stored, before it is widened to float32."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape), np.float32)
        flat = out.reshape(len(rows), -1)
        whole = memoryview(flat).cast("B")
        for i, r in enumerate(rows.tolist()):
            if not 0 <= r < self.rows:
                raise IndexError(f"row {r} of a cache of {self.rows} rows ({self.path})")
            kind = (stored[r] if stored else "") or "f4"
            if kind == "f4":
                view = whole[i * self.row_bytes : (i + 1) * self.row_bytes]
                self._read_into(r, view)
            else:
                small = np.empty(self.size, STORED[kind])
                view = memoryview(small).cast("B")
                self._read_into(r, view)
                flat[i] = small
            if check is not None:
                check(r, kind, view)
        return out

    def write(self, row: int, small: np.ndarray) -> None:
        """Write a row in its storage: :func:`compact`'s values (record its kind for reads)."""
        data = small.tobytes()
        if small.size != self.size:
            raise ValueError(f"a row of {self.path} holds {self.size} values, not {small.size}")
        at, view, done = self.offset + row * self.row_bytes, memoryview(data), 0
        while done < len(data):
            done += self._pwrite(view[done:], at + done)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        self.f.close()


#: held while a :class:`Source` opens its cache file (:meth:`Source.values`)
_OPENING = threading.Lock()


@dataclass
class Source:
    """The files of one streamed modality, one cell per manifest row (``""``: empty), and the
    cache directory holding their decoded values (set by :func:`stream_pass`)."""

    name: str
    spec: ModalitySpec
    paths: list[str]
    where: str = ""
    cache_dir: Path | None = None
    #: per row, the SHA-256 of its values as the pass wrote them (``""``: nothing written); every
    #: read is checked against it (:meth:`verify`)
    digests: list[str] | None = field(default=None, repr=False, compare=False)
    #: per row, how the cache stores it (:data:`STORED`)
    stored: list[str] | None = field(default=None, repr=False, compare=False)
    _values: Any = field(default=None, repr=False, compare=False)
    _pid: int = field(default=-1, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own file
        return {**self.__dict__, "_values": None, "_pid": -1}

    def values(self) -> RowFile:
        """The cache's rows (read-only, opened once per process)."""
        if self.cache_dir is None:
            raise DataError(f"modality {self.name!r}: its files are not decoded yet")
        if self._values is None or self._pid != os.getpid():
            with _OPENING:  # reader threads asking at once: one file
                if self._values is None or self._pid != os.getpid():
                    self._values = RowFile(self.cache_dir / VALUES)
                    self._pid = os.getpid()
        return self._values  # type: ignore[no-any-return]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The cached values of ``rows``, each checked against the digest written with it."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        try:
            return self.values().read(rows, self.stored, self._verify if self.digests else None)
        except OSError as err:
            raise cache_failure(err, self.cache_dir) from None

    def _verify(self, row: int, kind: str, stored: memoryview) -> None:
        """Refuse a row read from the cache that is not the one this run's pass wrote or read
        (another run updated it in place after its file changed, or the cache was damaged on
        disk): never train or predict on it. Checked as stored
        (:func:`stored_digest`), before it is widened."""
        want = self.digests[row] if self.digests else ""
        if want and stored_digest(kind, stored) != want:
            raise DataError(
                f"{self.where} row {row + 2} ({self.name}): the decoded-data cache "
                f"{self.cache_dir} holds other values for {self.paths[row]} than this run "
                "loaded: another run decoded the file anew after it changed (the cache is "
                "updated in place), or the cache was damaged on disk. Run again: its pass "
                "decodes changed files anew; if this recurs with files unchanged, delete that "
                "folder"
            )

    def reopen(self, cache_dir: Path) -> None:
        """Point at ``cache_dir`` (the pass moved or rewrote the cache): reopened on next read."""
        if self._values is not None and self._pid == os.getpid():
            self._values.close()
        self.cache_dir, self._values = cache_dir, None


class LazyColumn:
    """A streamed modality's array in a ``Split``: rows of a :class:`Source`. Indexing with an
    index array gives another LazyColumn (``Split.subset``); :meth:`read` gives values."""

    def __init__(self, source: Source, rows: np.ndarray) -> None:
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.source.spec.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: Any) -> LazyColumn:
        return LazyColumn(self.source, self.rows[idx])

    def read(self, idx: Any) -> np.ndarray:
        """Values of the rows ``idx`` (positions in this column), from the cache (verified)."""
        return self.source.read(self.rows[np.asarray(idx, dtype=np.int64)])

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise DataError(
            f"modality {self.source.name!r} is streamed (data.stream): its values are not held "
            "in memory; this step needs data.stream: false"
        )


def is_lazy(x: Any) -> bool:
    return isinstance(x, LazyColumn)


# ---- the decode-once cache ----------------------------------------------------------------------


def file_key(path: str) -> str:
    """The state (:func:`~medfuse.core.paths.file_state`: size, modification and change times,
    inode) of each file a cell's reader opens (:func:`files_read`: the file, and e.g. a WFDB
    header's data files): when it changed, the cell's bytes are hashed (:func:`file_digest`)."""
    return "|".join(file_state(p) for p in files_read(path)) if path else ""


def file_digest(path: str) -> str:
    """SHA-256 of the bytes a cell's reader reads (``""`` for a directory or no file): of the
    file, or for a file with companions (:func:`files_read`) of each one's name and SHA-256. A
    changed key whose content is the same (``touch``, a hard link, a copy) is not decoded again."""
    if not path or not os.path.isfile(path):
        return ""
    try:
        files = files_read(path)
        if len(files) == 1:
            return sha256_file(files[0])
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}\0{sha256_file(p) if p.is_file() else 'missing'}\n".encode())
        return h.hexdigest()
    except OSError:
        return ""


def cache_key(source: Source) -> str:
    """The cache directory's name: the modality's reading spec, the reader version, the releases
    of the libraries that decode (:func:`reader_versions`), its files."""
    h = hashlib.sha256()
    spec = source.spec.model_dump(mode="json")
    h.update(json.dumps({"v": CACHE_VERSION, "spec": spec, "libs": reader_versions()}).encode())
    h.update("\n".join(source.paths).encode())
    return h.hexdigest()[:32]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


#: what a non-blocking lock attempt raises while another process holds the lock (flock:
#: EWOULDBLOCK; msvcrt.locking: EACCES, EDEADLOCK); any other error means no lock can be taken
HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)}


def _lock(f: Any, where: Path) -> None:
    """Take the exclusive lock of the open file ``f``, waiting (and saying so) while another
    process holds it. The kernel drops the lock when its holder's process ends, killed or not.
    A file system that cannot lock (``ENOLCK``, ``ENOSYS``, ``EOPNOTSUPP``: some network or
    parallel file systems) is an error naming the folder, never a wait for a lock that no
    process holds."""
    t0 = time.perf_counter()
    said = False
    while True:
        try:
            if sys.platform == "win32":
                import msvcrt  # lazy: Windows has no fcntl; msvcrt exists only there

                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl  # lazy: POSIX only (absent on Windows)

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as err:
            if err.errno not in HELD:
                raise DataError(
                    f"the decoded-data cache folder {where.parent} cannot be locked "
                    f"({err.strerror or err}); data.stream needs a file system with file "
                    "locks (a local disk): set MEDFUSE_CACHE_DIR to one (docs/data.md)"
                ) from None
            if not said:
                log.info("cache %s is being written by another process: waiting", where)
                said = True
            time.sleep(0.2)
    if said:
        log.info("cache %s: waited %.1f s", where, time.perf_counter() - t0)


@contextlib.contextmanager
def cache_lock(root: Path, keys: list[str]) -> Iterator[None]:
    """Hold the build lock of each cache ``key`` (``<root>/.<key>.lock``, taken in sorted order)
    while a pass opens, fills and commits those caches. A second process using the same caches
    (another rank of a torchrun job, another run) waits here and then finds them whole: no sample
    is decoded twice and no half-written cache is read."""
    files = []
    try:
        root.mkdir(parents=True, exist_ok=True)
        for key in sorted(set(keys)):
            files.append(open(root / f".{key}.lock", "a+"))  # noqa: SIM115 (closed below)
    except OSError as err:
        for f in files:
            f.close()
        raise DataError(
            f"the decoded-data cache folder {root} cannot be written ({err.strerror}); data.stream "
            "needs a writable folder: set MEDFUSE_CACHE_DIR to one (docs/data.md)"
        ) from None
    try:
        for key, f in zip(sorted(set(keys)), files, strict=True):
            _lock(f, root / key)
        yield
    finally:
        for f in files:
            f.close()  # closing releases the lock


class Cache:
    """One modality's cache while the pass fills it: a finished directory being updated in place,
    or a new one in a temporary directory renamed into place by :meth:`commit`. Open it only
    under :func:`cache_lock`."""

    def __init__(self, source: Source, root: Path | None = None) -> None:
        self.source = source
        self.root = root or cache_root()
        self.final = self.root / cache_key(source)
        # the lock is held: a temporary directory of this cache is a dead writer's (killed)
        for left in self.root.glob(f".tmp-{self.final.name}-*"):
            log.info("cache: removing %s, left by a writer that did not finish", left)
            shutil.rmtree(left, ignore_errors=True)
        n = len(source.paths)
        index = self._read_index()
        if index is not None:
            keys_now = [file_key(p) for p in source.paths]
            self.dir, self.new = self.final, False
            self.index = index
            stale, touched = [], 0
            for i in range(n):
                if not source.paths[i]:  # an empty cell: nothing to decode, ever
                    continue
                if index["state"][i] == "":
                    stale.append(i)
                elif index["keys"][i] != keys_now[i]:
                    same = index["files"][i] and file_digest(source.paths[i]) == index["files"][i]
                    if same:  # touched, linked or copied: the same bytes, the same values
                        index["keys"][i] = keys_now[i]
                        touched += 1
                    else:
                        stale.append(i)
            if stale or touched:  # mark them first: a crash while rewriting leaves them stale
                for i in stale:
                    self.index["state"][i] = ""
                    self.index["values"][i] = ""
                    self.index["stored"][i] = ""
                _write_json(self.dir / INDEX, self.index)
            if stale:
                log.info("cache %s: %d changed file(s) of %s re-decoded", self.dir, len(stale), n)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self.dir = self.root / f".tmp-{self.final.name}-{os.getpid()}-{secrets.token_hex(4)}"
            self.dir.mkdir()
            self.new = True
            np.lib.format.open_memmap(
                self.dir / VALUES, mode="w+", dtype=np.float32, shape=(n, *source.spec.shape)
            ).flush()
            self.index = {
                "version": CACHE_VERSION,
                "complete": False,
                "spec": source.spec.model_dump(mode="json"),
                "rows": n,
                "keys": [""] * n,
                "files": [""] * n,  # SHA-256 of each file's bytes
                "values": [""] * n,  # SHA-256 of each row's decoded float32 values
                "stored": [""] * n,  # how each row is stored (STORED)
                "state": [""] * n,  # "" to decode; ok, empty, bad
                "scale": [""] * n,
                "error": [""] * n,
                "aspect": [0.0] * n,  # an image file's width / height before it was fitted
            }
        source.reopen(self.dir)
        source.digests, source.stored = self.index["values"], self.index["stored"]

    def _read_index(self) -> dict[str, Any] | None:
        """The finished cache's index; ``None`` (build anew) for none, another version, an
        unfinished one (no completion mark) or one whose values file does not fit it."""
        try:
            index = json.loads((self.final / INDEX).read_text())
            n = len(self.source.paths)
            values = np.load(self.final / VALUES, mmap_mode="r")
            ok = (
                index.get("version") == CACHE_VERSION
                and index.get("complete") is True
                and index.get("rows") == n
                and values.shape == (n, *self.source.spec.shape)
                and values.dtype == np.float32
            )
            if not ok:
                log.info("cache %s is unfinished or of another version: built anew", self.final)
            return index if ok else None
        except (OSError, ValueError):
            return None

    def needs(self, row: int) -> bool:
        return bool(self.index["state"][row] == "")

    def put(self, row: int, item: Decoded) -> None:
        """Record a row the pass decoded (its worker wrote the values)."""
        self.index["keys"][row] = item.key
        self.index["files"][row] = item.file
        self.index["values"][row] = item.digest
        self.index["stored"][row] = item.stored
        self.index["state"][row] = item.state
        self.index["scale"][row] = item.scale
        self.index["error"][row] = item.error
        self.index["aspect"][row] = item.aspect

    def commit(self) -> None:
        """Flush the values, then the index (with its completion mark); a new cache is renamed
        into place, whole (the pass's workers wrote the values)."""
        values = RowFile(self.dir / VALUES, writable=True)
        values.sync()
        values.close()
        self.index["complete"] = True
        if self.new:
            _write_json(self.dir / INDEX, self.index)
            if self.final.exists():  # an unfinished or outdated cache in the way (lock held)
                shutil.rmtree(self.final)
            os.rename(self.dir, self.final)
            self.dir = self.final
        else:
            _write_json(self.dir / INDEX, self.index)
        self.source.reopen(self.dir)

    def abort(self) -> None:
        if self.new:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---- the one pass --------------------------------------------------------------------------------


class Decoded(NamedTuple):
    """One row of a streamed modality as the pass gets it from a worker: its record and what the
    pass computes from its values (which stay in the worker and the cache)."""

    row: int
    state: str  # ok, bad, empty; "" for a row read from the cache
    scale: str = ""
    error: str = ""
    decoded: bool = False  # decoded from its file (and written to the cache by the worker)
    file: str = ""  # SHA-256 of the file's bytes (decoded rows)
    digest: str = ""  # SHA-256 of the decoded values (decoded rows)
    summary: RowSummary | None = None  # None for an empty cell
    stored: str = ""  # how the worker stored it in the cache (STORED; decoded rows)
    key: str = ""  # the file's stat key (file_key) before it was read (decoded rows)
    #: a row of the range subsample: its strided values (:class:`RangeSample`)
    sample: np.ndarray | None = None
    #: a file's width / height (image) or length (signal) before it was fitted (decoded rows;
    #: ``raw_extent``)
    aspect: float = 0.0


class RowSummary(NamedTuple):
    """What the statistics need of one row, computed where it was decoded or read (the worker)."""

    finite: bool
    lo: float
    hi: float
    mean: float  # over all its values (the range of sample means), float64
    channel_mean: np.ndarray  # (C,) float64
    channel_m2: np.ndarray  # (C,) float64: sum of squared deviations from channel_mean


def summarise(x: np.ndarray, axis: int) -> RowSummary:
    """One sample's :class:`RowSummary`; ``axis``: its channel axis. A ``uint8`` row (an 8-bit
    image as :func:`compact` stores it) is summarised from exact integer sums: the same
    statistics (to float64 rounding) in a third of the time."""
    if x.dtype == np.uint8:
        return _summarise_bytes(x, axis)
    finite = bool(np.isfinite(x).all())
    flat = np.moveaxis(np.asarray(x, np.float64), axis, 0).reshape(x.shape[axis], -1)
    cm = flat.mean(axis=1)
    m2 = ((flat - cm[:, None]) ** 2).sum(axis=1)
    whole = float(np.nanmean(x.reshape(1, -1), axis=1, dtype=np.float64)[0]) if finite else 0.0
    return RowSummary(finite, float(x.min()), float(x.max()), whole, cm, m2)


def _summarise_bytes(x: np.ndarray, axis: int) -> RowSummary:
    """:func:`summarise` of a ``uint8`` row from exact integer sums (a square fits in uint16)."""
    flat = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    n = flat.shape[1]
    sq = flat.astype(np.uint16)
    sq *= sq
    s1 = [int(v) for v in flat.sum(axis=1, dtype=np.uint64)]
    s2 = [int(v) for v in sq.sum(axis=1, dtype=np.uint64)]
    cm = np.array([a / n for a in s1], np.float64)
    m2 = np.array([(n * b - a * a) / n for a, b in zip(s1, s2, strict=True)], np.float64)
    whole = sum(s1) / (n * len(s1))
    return RowSummary(True, float(x.min()), float(x.max()), whole, cm, m2)


@dataclass(frozen=True)
class RangeSample:
    """The rows whose values give an image/signal modality's value percentiles (``fit_ranges``):
    :func:`~medfuse.core.preprocess.range_subsample` of a split's present positions, and where
    each row's share of the subsample's value stride begins, so that the rows' shares, joined in
    order, are the values the in-memory path strides through the joined subsample."""

    positions: np.ndarray  # the present positions the subsample is drawn from
    rows: list[int]  # its source rows, in order
    offsets: list[int]  # each row's first strided value
    step: int
    by_row: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_row", {r: k for k, r in enumerate(self.rows)})

    @classmethod
    def of(cls, col: LazyColumn, present: np.ndarray) -> RangeSample | None:
        if not len(present):
            return None
        rows = col.rows[present[range_subsample(len(present))]].tolist()
        size = math.prod(col.shape[1:])
        step = range_step(len(rows) * size)
        # the k-th row's values continue the joined subsample's stride
        return cls(present, rows, [(-k * size) % step for k in range(len(rows))], step)

    @classmethod
    def plan(cls, col: LazyColumn, mask: np.ndarray) -> RangeSample | None:
        """The subsample as far as the pass can tell before it runs (the rows present in the
        manifest), for its workers to return each row's share (:meth:`take`); ``None`` when a
        row repeats (a worker sees a row, not its position)."""
        plan = cls.of(col, np.flatnonzero(np.asarray(mask) > 0))
        return plan if plan is not None and len(plan.by_row) == len(plan.rows) else None

    def share(self, k: int, flat: np.ndarray) -> np.ndarray:
        """The k-th row's strided values (``flat``: its values, as stored or float32)."""
        return np.array(flat[self.offsets[k] :: self.step], np.float32)

    def take(self, row: int, flat: np.ndarray) -> np.ndarray | None:
        """In a worker: ``row``'s share, ``None`` for a row outside the subsample."""
        k = self.by_row.get(row)
        return None if k is None else self.share(k, flat)

    def values(self, present: np.ndarray, taken: dict[int, np.ndarray]) -> np.ndarray | None:
        """The subsample's strided values from the workers' shares (``taken``: row -> values),
        in its order; ``None`` when the pass found other rows present than planned (a training
        file found unreadable): the subsample is then another one."""
        if not np.array_equal(present, self.positions) or not taken.keys() >= self.by_row.keys():
            return None
        return np.concatenate([taken[r] for r in self.rows])


class _PassItems(Dataset[Any]):
    """One row of a streamed modality for the pass: decoded (a stale or new cache entry, which
    the worker writes to the cache) or read from the cache, and summarised. Runs in DataLoader
    workers; only the records reach the main process, never the values (but a row of the range
    subsample's strided share, :class:`RangeSample`)."""

    def __init__(
        self, source: Source, need: np.ndarray, values_dir: Path, sample: RangeSample | None
    ) -> None:
        self.source, self.need, self.values_dir, self.sample = source, need, values_dir, sample
        self.axis = 1 if source.spec.sequence else 0
        self._writer: RowFile | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:  # each worker opens its own writer
        return {**self.__dict__, "_writer": None, "_pid": -1}

    def __len__(self) -> int:
        return len(self.source.paths)

    def close(self) -> None:
        """Close this process's writer (the pass without worker processes opened one here)."""
        if self._writer is not None and self._pid == os.getpid():
            self._writer.close()
        self._writer = None

    def _write(self, row: int, small: np.ndarray) -> None:
        if self._writer is None or self._pid != os.getpid():
            self._writer, self._pid = RowFile(self.values_dir / VALUES, writable=True), os.getpid()
        self._writer.write(row, small)

    def __getitem__(self, row: int) -> Decoded | Refused:
        s = self.source
        cell = s.paths[row]
        if not cell:
            return Decoded(row, "empty")
        if not self.need[row]:
            try:
                x = s.read(np.array([row]))[0]  # verified against its digest
            except DataError as refused:  # raised again, as it is, by the pass (main process)
                return Refused(str(refused))
            share = self._share(row, x)
            return Decoded(row, "", summary=summarise(compact(x)[1], self.axis), sample=share)
        # the stat key and the bytes' digest before reading: a file changing meanwhile is caught
        # by the next run
        key, file = file_key(cell), file_digest(cell)
        try:
            x, raw = read_fitted(cell, s.spec)  # the one reader
            x = np.asarray(x, np.float32)
            scale = file_scale(cell, s.spec)  # an image's scale, a signal's rate and leads
            state, error = "ok", ""
            aspect = raw_extent(raw, s.spec.kind)
        except DataError as bad:
            x, scale, state, error = np.zeros(s.spec.shape, np.float32), "", "bad", str(bad)
            aspect = 0.0
        stored, small = compact(x)
        try:
            self._write(row, small)
        except OSError as err:  # a full disk: said as such, not a worker's traceback
            return Refused(str(cache_failure(err, self.values_dir)))
        summary = summarise(small, self.axis)  # from the bytes of an 8-bit row
        digest = stored_digest(stored, small)
        share = self._share(row, small)
        return Decoded(
            row, state, scale, error, True, file, digest, summary, stored, key, share, aspect
        )

    def _share(self, row: int, x: np.ndarray) -> np.ndarray | None:
        """``row``'s share of the planned range subsample (the pass keeps it for a row it finds
        present; an unreadable row's zeros are dropped there)."""
        return self.sample.take(row, x.reshape(-1)) if self.sample is not None else None


#: seconds between flushes of a cache's values while the pass writes them (:class:`_Flusher`)
FLUSH_EVERY = 0.5


class _Flusher:
    """While the pass's workers write rows to ``path``, a thread flushes them to disk every
    :data:`FLUSH_EVERY` seconds, so the disk writes overlap the decoding; once the workers have
    stopped, :meth:`finish` asks for a last flush that runs while the pass computes its statistics,
    and the flush before the cache is marked complete (:meth:`Cache.commit`) finds little left to
    write. :meth:`start` only after the workers are forked (a fork beside a running thread can
    deadlock the child); :meth:`join` always (it closes the file)."""

    def __init__(self, path: Path, active: bool) -> None:
        self.path, self.active = path, active
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.f: Any = None

    def start(self) -> None:
        if not self.active:
            return
        sync = getattr(os, "fdatasync", os.fsync)
        self.f = open(self.path, "rb")  # noqa: SIM115 (closed by join)
        fd = self.f.fileno()

        def flush() -> None:
            while True:
                last = self.stop.wait(FLUSH_EVERY)
                with contextlib.suppress(OSError):  # commit's own sync reports a failure
                    sync(fd)
                if last:
                    return

        thread = threading.Thread(target=flush, name="medfuse-cache-flush", daemon=True)
        thread.start()
        self.thread = thread  # started: join() waits for it

    def finish(self) -> None:
        """The rows are written: one last flush now, in the background."""
        self.stop.set()

    def join(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.f is not None:
            self.f.close()
            self.f = None


@contextlib.contextmanager
def _running(loader: DataLoader[Any]) -> Iterator[Iterator[list[Any]]]:
    """The loader's batches; its workers are forked on entry (before a thread such as
    :class:`_Flusher`'s starts: a fork beside a running thread can deadlock the child) and
    stopped on exit, also on an error, when a traceback would keep them alive until collected
    (the caller then removes a new cache's folder). The dataset's own writer is closed too."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        stop = getattr(batches, "_shutdown_workers", None)  # none without worker processes
        if stop is not None:
            stop()
        loader.dataset.close()  # type: ignore[attr-defined]


def _collate(batch: list[Any]) -> list[Any]:
    return batch


class _Welford:
    """Per-channel running mean and variance (Chan et al.'s parallel merge), float64."""

    def __init__(self, axis: int) -> None:
        self.axis, self.n, self.mean, self.m2 = axis, 0, None, None

    def add(self, rows: list[RowSummary], per_row: int) -> None:
        """Merge present samples, each summarised by its channel means and squared deviations
        over ``per_row`` values per channel."""
        if not rows:
            return
        cm = np.stack([r.channel_mean for r in rows])  # (B, C)
        nb = len(rows) * per_row
        mb = cm.mean(axis=0)
        m2b = np.stack([r.channel_m2 for r in rows]).sum(axis=0)
        m2b = m2b + per_row * ((cm - mb) ** 2).sum(axis=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def result(self, channels: int) -> dict[str, Any]:
        if self.mean is None:
            return {"mean": [0.0] * channels, "std": [1.0] * channels, "channel_axis": self.axis}
        std = np.sqrt(self.m2 / self.n)
        std = np.where(np.isfinite(std) & (std > EPS), std, 1.0)
        return {"mean": self.mean.tolist(), "std": std.tolist(), "channel_axis": self.axis}


def _ranges(
    col: LazyColumn, present_pos: np.ndarray, means: np.ndarray, contrasts: np.ndarray
) -> dict[str, Any] | None:
    """``fit_ranges`` of an image/signal modality, from the cache: the same deterministic
    subsample of at most 512 present samples, the same value stride (:class:`RangeSample`; read
    a few rows at a time: the subsample is never held whole). The pass needs this only when its
    workers could not return the shares (a training row found unreadable, a repeated row)."""
    sub = RangeSample.of(col, present_pos)
    if sub is None:
        return None
    parts = []
    for start in range(0, len(sub.rows), RANGE_ROWS):
        got = col.source.read(np.array(sub.rows[start : start + RANGE_ROWS]))
        parts += [sub.share(start + i, x.reshape(-1)) for i, x in enumerate(got)]
    return ranges_of(np.concatenate(parts), means, contrasts)


def pass_workers(workers: int) -> int:
    """The pass's DataLoader workers: ``data.workers``; in a job of several processes per node
    (torchrun's ``LOCAL_WORLD_SIZE``), those of every process, at most the usable cores less one:
    the process holding the caches' lock decodes for the node while the others wait on it and
    decode nothing, so their share of the cores would sit idle."""
    local = local_processes()
    if workers <= 0 or local <= 1:
        return workers
    return max(workers, min(workers * local, usable_cores() - 1))


def local_processes() -> int:
    """The processes of this job on this node (torchrun's ``LOCAL_WORLD_SIZE``; 1 alone)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def usable_cores() -> int:
    """The cores this process may run on (its affinity, else the machine's)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def reader_threads(workers: int, device: torch.device) -> int:
    """The threads that read a streamed split's batches ahead of use (:func:`stream_loader`):
    ``data.workers`` on a GPU; on a CPU, no more than the cores PyTorch's threads leave free,
    in every process of the job on this node (torchrun's ranks), shared among them, else none
    (each batch is read when asked). Reading is cheap next to a step, and a reader thread on a
    core the model computes on costs the model more than it saves: on 2 cores, with PyTorch's 2
    threads, 1 or 2 reader threads made a cached epoch 7-15% slower than reading in turn
    (``benchmarks/scale.py``'s 5,000 images, measured by hand: docs/data.md)."""
    if workers <= 0 or device.type == "cuda":
        return max(0, workers)
    local = local_processes()
    free = usable_cores() - local * torch.get_num_threads()  # every rank of the node computes
    return max(0, min(workers, free // local))


def stream_pass(
    bundle: Any, *, on_bad_row: str = "fail", workers: int = 2, batch: int = 64
) -> dict[str, Any]:
    """Decode (or read from the cache) every streamed file once, in split order; returns (and
    stores in ``bundle.info['stream']``) what the in-memory path computes from its arrays:
    the training statistics, constant modalities, each split's values hash, decode counts.

    The caches' build locks are held throughout (:func:`cache_lock`): another process on the same
    caches (e.g. the other ranks of a torchrun job) waits, then finds them whole and the pass's
    result recorded (:func:`pass_key`): it reads nothing. Meanwhile the pass runs the workers of
    every process of the node (:func:`pass_workers`)."""

    splits = [(n, getattr(bundle, n)) for n in SPLITS if getattr(bundle, n, None) is not None]
    lazy = sorted({m for _, s in splits for m, x in s.arrays.items() if is_lazy(x)})
    sources = {m: bundle.train.arrays[m].source for m in lazy}
    caches: dict[str, Cache] = {}
    info: dict[str, Any] = {
        "modalities": lazy,
        "stats": {},
        "constant": {},
        "values_sha256": {},
        "aspects": {},
        "decoded": {m: 0 for m in lazy},
        "cached": {m: 0 for m in lazy},
        "cache": {},
        "recorded": False,
        "workers": 0,  # the pass's DataLoader workers (pass_workers; 0: a recorded pass)
        "seconds": 0.0,
    }
    t0 = time.perf_counter()
    root = cache_root()
    with full_disk(root), cache_lock(root, [cache_key(sources[m]) for m in lazy]):
        try:
            for m in lazy:
                caches[m] = Cache(sources[m], root)
            masks = {n: {m: np.array(x.masks[m]) for m in x.masks} for n, x in splits}
            done = _recorded_pass(root, pass_key(splits, masks, caches, on_bad_row))
            missing: list[tuple[str, str, int, str]] = []
            if done is not None:  # the same values, splits and masks: the same result
                for k in ("stats", "constant", "values_sha256", "aspects"):
                    info[k] = done[k]
                missing = [tuple(x) for x in done["missing"]]  # type: ignore[misc]
                for name, m, pos, _ in missing:
                    getattr(bundle, name).masks[m][pos] = 0.0
                scales = done["scales"]
                info["recorded"] = True
            else:
                info["workers"] = pass_workers(workers)
                scales = _full_pass(
                    splits, sources, caches, info, missing, on_bad_row, info["workers"], batch
                )
            if missing:
                bundle.info.setdefault("bad_rows", []).extend(msg for *_, msg in missing)
            for m, scale in scales.items():
                bundle.info.setdefault("scales", {})[m] = scale
            bundle.info.setdefault("aspects", {}).update(info["aspects"])
        except BaseException:
            for c in caches.values():
                c.abort()
            raise
        for m, c in caches.items():
            c.commit()
            info["cache"][m] = str(c.dir)
        if done is None:
            result = {k: info[k] for k in ("stats", "constant", "values_sha256", "aspects")}
            result.update(missing=missing, scales=scales)
            (root / PASSES).mkdir(exist_ok=True)
            key = pass_key(splits, masks, caches, on_bad_row)  # the masks before the pass
            _write_json(root / PASSES / f"{key}.json", result)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    log.info(
        "streamed %s: %s decoded, %s read from the cache (%s) in %.1f s%s",
        ", ".join(lazy),
        sum(info["decoded"].values()),
        sum(info["cached"].values()),
        root,
        info["seconds"],
        " (statistics recorded by an earlier pass over the same values)" if done else "",
    )
    if bundle.info.get("bad_rows"):
        log.warning(
            "%d unreadable cells treated as missing modalities; first: %s",
            len(bundle.info["bad_rows"]),
            bundle.info["bad_rows"][0],
        )
    bundle.info["stream"] = info
    return info


def pass_key(
    splits: list[tuple[str, Any]],
    masks: dict[str, dict[str, np.ndarray]],
    caches: dict[str, Cache],
    on_bad_row: str,
) -> str:
    """What a pass's result depends on: each split's rows and ``masks`` (as loaded, before the
    pass marks unreadable cells missing), its in-memory arrays, and
    for each streamed row the cache's record (state, scale, error, values digest); ``""`` while a
    row is still to decode."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "on_bad_row": on_bad_row}).encode())
    for name, split in splits:
        h.update(name.encode())
        for m in sorted(split.arrays):
            x = split.arrays[m]
            h.update(m.encode())
            h.update(np.ascontiguousarray(masks[name][m], np.float32).tobytes())
            if not is_lazy(x):
                h.update(np.ascontiguousarray(x, np.float32).tobytes())
                continue
            c = caches[m]
            h.update(f"{c.final.name}\0{x.source.where}".encode())
            h.update(x.rows.tobytes())
            for r in x.rows.tolist():
                if c.needs(r) and x.source.paths[r]:
                    return ""
                ix = c.index
                h.update(f"{ix['state'][r]}\0{ix['scale'][r]}\0{ix['error'][r]}".encode())
                h.update(f"\0{ix['values'][r]}\n".encode())
    return h.hexdigest()[:32]


#: what a recorded pass holds (:func:`stream_pass` writes them; one without is not used)
RECORDED = ("stats", "constant", "values_sha256", "aspects", "missing", "scales")


def _recorded_pass(root: Path, key: str) -> dict[str, Any] | None:
    """The result a pass over the same values recorded, or ``None`` (none, or a record damaged
    on disk: the pass runs again rather than crash on a key it lacks)."""
    if not key:
        return None
    try:
        out = json.loads((root / PASSES / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) and all(k in out for k in RECORDED) else None


#: the errors of a disk (or quota) that is full
FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def full_disk(folder: Path) -> Iterator[None]:
    """A full disk (or quota) met while the cache in ``folder`` is written, in this process, as
    :func:`cache_failure` says it (the workers' writes return it as a ``Refused``)."""
    try:
        yield
    except OSError as err:
        if err.errno in FULL:
            raise cache_failure(err, folder) from None
        raise


def cache_failure(err: OSError, folder: Path | None) -> DataError:
    """An operating-system error on the decoded-data cache as the error a user can act on: a
    full disk (it was an internal error with a worker's traceback), a folder deleted while a
    run read it, any other with its reason."""
    where = f"the decoded-data cache folder {folder}"
    if err.errno in FULL:
        return DataError(
            f"{where} is full (no space left on device): free space there, or set "
            "MEDFUSE_CACHE_DIR to a folder with room for the decoded data (docs/data.md)"
        )
    if err.errno == errno.ENOENT:
        return DataError(
            f"{where} lost a file this run was reading ({err.filename}): was it deleted while "
            "a run used it? Run again (its pass rebuilds what is missing)"
        )
    return DataError(f"{where} cannot be used ({err.strerror or err}): set MEDFUSE_CACHE_DIR")


def _segments(
    loader: Iterable[list[Any]], parts: list[tuple[str, Any, int]]
) -> Iterator[tuple[str, Any, int, list[Any]]]:
    """The loader's batches cut at split boundaries: ``(split name, split, position of the first
    item in the split, items)``; ``parts``: each split and its row count, in the loader's order."""
    k, pos = 0, 0
    for got in loader:
        for g in got:
            if isinstance(g, Refused):
                g.throw()
        start = 0
        while start < len(got):
            while pos == parts[k][2]:  # the split is done (or has no rows): the next one
                k, pos = k + 1, 0
            name, split, rows = parts[k]
            take = min(len(got) - start, rows - pos)
            yield name, split, pos, got[start : start + take]
            start, pos = start + take, pos + take


class _ModalityPass:
    """One streamed modality's side of the pass: what its rows' records add up to, a segment of
    one split at a time (:meth:`add`), and its statistics once every row is in (:meth:`fit`)."""

    def __init__(
        self, m: str, src: Source, cache: Cache, info: dict[str, Any], on_bad_row: str
    ) -> None:
        self.m, self.src, self.cache, self.info, self.on_bad_row = m, src, cache, info, on_bad_row
        self.axis = 1 if src.spec.sequence else 0
        self.per_row = math.prod(src.spec.shape) // src.spec.shape[self.axis]
        self.empty = values_digest(np.zeros(src.spec.shape, np.float32))
        self.welford = _Welford(self.axis)
        self.lo, self.hi = math.inf, -math.inf
        self.means: list[np.ndarray] = []  # the training rows' sample means, per segment
        self.contrasts: list[np.ndarray] = []  # and their largest less least value
        self.aspects: list[float] = []  # each image file's width / height (aspect_range)
        self.taken: dict[int, np.ndarray] = {}  # source row -> its strided subsample values
        self.scales: dict[str, list[int]] = {}  # each file scale found -> its rows
        self.digests: dict[str, list[str]] = {}  # split -> each row's values digest, in order
        self.found: list[tuple[str, int, str]] = []  # unreadable rows: (split, position, message)

    def _record(self, item: Decoded) -> tuple[str, str, str]:
        """A row's state, scale and error: as its worker decoded it (recorded in the cache's
        index), or as the index has it."""
        ix = self.cache.index
        if item.decoded:
            self.cache.put(item.row, item)
            self.info["decoded"][self.m] += 1
            return item.state, item.scale, item.error
        if item.state == "empty":
            return "empty", "", ""
        self.info["cached"][self.m] += 1
        return ix["state"][item.row], ix["scale"][item.row], ix["error"][item.row]

    def add(self, name: str, split: Any, pos: int, got: list[Decoded]) -> None:
        """The records of ``split``'s rows ``pos, pos + 1, ...``: an unreadable row refused (or
        marked missing), the present ones checked and merged into the totals."""
        present = np.zeros(len(got), bool)
        for j, item in enumerate(got):
            state, scale, err = self._record(item)
            if state == "bad":
                msg = f"{self.src.where} row {item.row + 2} ({self.m}): {err}"
                if self.on_bad_row == "fail":
                    raise DataError(
                        msg + " (use data.on_bad_row=missing to treat such rows as a missing "
                        "modality)"
                    )
                self.found.append((name, pos + j, msg))
                split.masks[self.m][pos + j] = 0.0
            elif state == "ok":
                present[j] = True
                if scale:
                    self.scales.setdefault(scale, []).append(item.row)
                self.aspects.append(self.cache.index["aspect"][item.row])  # put by _record
                if name == "train" and item.sample is not None:
                    self.taken[item.row] = item.sample
        bad = [j for j, g in enumerate(got) if present[j] and not g.summary.finite]
        if bad:
            raise DataError(
                f"array {self.m!r} ({self.src.spec.kind}): NaN or infinite values at "
                f"{_where(name, split.meta, np.array(bad) + pos)}; fix or drop those samples "
                "(an unreadable file can be marked missing: leave its cell empty)"
            )
        self.digests.setdefault(name, []).extend(self._digest(g) for g in got)
        kept = [g.summary for g, p in zip(got, present, strict=True) if p]
        if name == "train" and kept:
            self.welford.add(kept, self.per_row)
            self.lo = min(self.lo, min(r.lo for r in kept))
            self.hi = max(self.hi, max(r.hi for r in kept))
            self.means.append(np.array([r.mean for r in kept], np.float64))
            self.contrasts.append(np.array([r.hi - r.lo for r in kept], np.float64))

    def _digest(self, g: Decoded) -> str:
        """A row's values digest (:data:`VALUES_SCHEME`)."""
        if g.decoded:
            return g.digest
        if g.state == "empty":
            return self.empty
        return str(self.cache.index["values"][g.row])  # the worker read and verified it

    def fit(self, train: Any, plan: RangeSample | None) -> None:
        """The training split's statistics, constant flag and the files' aspect range, into
        ``info``."""
        m, info = self.m, self.info
        stat = self.welford.result(self.src.spec.shape[self.axis])
        present_pos = np.flatnonzero(np.asarray(train.masks[m]) > 0)
        means = np.concatenate(self.means) if self.means else np.zeros(0)
        contrasts = np.concatenate(self.contrasts) if self.contrasts else np.zeros(0)
        strided = plan.values(present_pos, self.taken) if plan is not None else None
        if strided is not None:
            rng = ranges_of(strided, means, contrasts)
        else:  # no plan, or a training row was unreadable: the subsample read from the cache
            rng = _ranges(train.arrays[m], present_pos, means, contrasts)
        if rng is not None:
            stat["range"] = rng
        info["stats"][m] = stat
        info["constant"][m] = None if not len(present_pos) else ([m] if self.lo == self.hi else [])
        if rec := aspect_range(self.aspects):
            info["aspects"][m] = rec


def _full_pass(
    splits: list[tuple[str, Any]],
    sources: dict[str, Source],
    caches: dict[str, Cache],
    info: dict[str, Any],
    missing: list[tuple[str, str, int, str]],
    on_bad_row: str,
    workers: int,
    batch: int,
) -> dict[str, str]:
    """The pass itself: decode what the caches need, read the rest, check and fit; the scale
    of each image modality's files. One loader per streamed modality goes over every split's
    rows in split order (its workers start once)."""
    done: dict[str, _ModalityPass] = {}
    train = dict(splits)["train"]
    for m in sorted(sources):
        src, cache = sources[m], caches[m]
        need = np.array([cache.needs(i) for i in range(len(src.paths))], bool)
        parts = [(n, s, len(s.arrays[m])) for n, s in splits if is_lazy(s.arrays.get(m))]
        rows = np.concatenate([s.arrays[m].rows for _, s, _ in parts])
        lazy_train = is_lazy(train.arrays.get(m))
        plan = RangeSample.plan(train.arrays[m], train.masks[m]) if lazy_train else None
        loader = DataLoader(
            _PassItems(src, need, cache.dir, plan),
            batch_size=batch,
            sampler=rows.tolist(),
            num_workers=workers,
            collate_fn=_collate,
            generator=torch.Generator(),
        )
        done[m] = mp = _ModalityPass(m, src, cache, info, on_bad_row)
        flusher = _Flusher(cache.dir / VALUES, bool(need[rows].any()))
        try:
            with _running(loader) as batches:
                flusher.start()
                for name, split, pos, got in _segments(batches, parts):
                    mp.add(name, split, pos, got)
            flusher.finish()  # the workers have stopped: every row is written
            mp.fit(train, plan)
        finally:
            flusher.join()
    # in split order, then modality, then row: as a split-by-split pass would find them
    order = {name: k for k, (name, _) in enumerate(splits)}
    found = sorted((order[n], m, pos, msg) for m, mp in done.items() for n, pos, msg in mp.found)
    missing.extend((splits[k][0], m, pos, msg) for k, m, pos, msg in found)
    for name, split in splits:
        v = hashlib.sha256()
        for m in sorted(split.arrays):
            x = split.arrays[m]
            if is_lazy(x):
                v.update("".join(done[m].digests.get(name, [])).encode())
            else:
                hash_rows(v, x)
        info["values_sha256"][name] = v.hexdigest()
    for m, mp in done.items():
        if len(mp.scales) > 1:
            src = sources[m]
            raise DataError(mixed_scales_refusal(src.where, m, src.spec.kind, mp.scales))
    return {m: next(iter(mp.scales)) for m, mp in done.items() if mp.scales}


# ---- batches for training and evaluation ----------------------------------------------------------


class Refused(NamedTuple):
    """A DataError met in a DataLoader worker, carried to the main process as data and raised
    there with its own message (a worker's exception would arrive wrapped in its traceback)."""

    message: str

    def throw(self) -> None:
        raise DataError(self.message)


class StreamBatches:
    """A split's normalised batches, read from the cache (streamed modalities) or memory
    (tabular ones, masks, targets). :meth:`batch` serves one batch of positions at a time, in
    the order asked: the same values, in the same order, as the in-memory path's batches."""

    def __init__(
        self,
        arrays: dict[str, Any],
        masks: dict[str, np.ndarray],
        y: np.ndarray,
        stats: dict[str, Any],
        zero: tuple[str, ...] = (),
    ) -> None:
        self.arrays, self.masks, self.y, self.stats, self.zero = arrays, masks, y, stats, zero

    def batch(
        self, idx: list[int]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        ix = np.asarray(idx, dtype=np.int64)
        inputs, masks = {}, {}
        for m, x in self.arrays.items():
            mask = np.asarray(self.masks[m][ix], np.float32)
            raw = x.read(ix) if is_lazy(x) else np.asarray(x[ix])
            val = normalize(raw, mask, self.stats[m])
            if m in self.zero:
                val, mask = np.zeros_like(val), np.zeros_like(mask)
            inputs[m], masks[m] = torch.from_numpy(val), torch.from_numpy(mask)
        return inputs, masks, torch.from_numpy(np.asarray(self.y[ix]))


def stream_loader(
    data: StreamBatches, batches: list[Any], *, workers: int, pin: torch.device | None
) -> Generator[Any, None, None]:
    """Batches of positions, in the order given, read ahead by ``workers`` threads of this
    process (0: each read when asked). A batch is read from the decode-once cache, checked and
    normalised (:class:`StreamBatches`); for a CUDA device ``pin``, pinned in the thread that
    read it (made the thread's current device first, as DataLoader's pinning thread does).
    Threads, not worker processes: the values are decoded already, and reading them is I/O,
    hashing and NumPy work that runs without the GIL, so a thread costs no pickling, no
    shared-memory batches and no second interpreter (worker processes made a cached epoch 1.3x
    slower on 2 cores). At most :data:`PREFETCH_BYTES` of batches are held ready
    (:func:`ready_ahead`). A DataError met reading a batch (e.g. a damaged cache row) is raised
    here, with its own message."""
    if workers <= 0 or len(batches) <= 1:
        for b in batches:
            yield _fetched(data, b, pin)
        return
    ahead = ready_ahead(data, batches, workers)
    todo = iter(batches)
    index = None if pin is None else torch.cuda.current_device() if pin.index is None else pin.index
    with ThreadPoolExecutor(
        workers, "medfuse-read", initializer=_reader_device, initargs=(index,)
    ) as pool:
        pending: deque[Future[Any]] = deque(
            pool.submit(_fetched, data, b, pin) for b in itertools.islice(todo, ahead)
        )
        try:
            while pending:
                got = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_fetched, data, nxt, pin))
                yield got
        finally:  # a consumer that stops early: nothing more is read
            for f in pending:
                f.cancel()


def _reader_device(index: int | None) -> None:
    """A reader thread's current CUDA device: the training device (``cuda`` without an index:
    the one current where the loader started), so its pinned memory is that device's."""
    if index is not None:
        torch.cuda.set_device(index)


def _fetched(data: StreamBatches, batch: Any, pin: torch.device | None) -> Any:
    got = data.batch([int(i) for i in batch])
    if pin is not None:
        inputs, masks, y = got
        got = (
            {k: v.pin_memory() for k, v in inputs.items()},
            {k: v.pin_memory() for k, v in masks.items()},
            y.pin_memory(),
        )
    return got


def ready_ahead(data: StreamBatches, batches: list[Any], workers: int) -> int:
    """Batches read ahead of use: 2 per thread, fewer when their values would exceed
    ``PREFETCH_BYTES`` in all (e.g. evaluation's 256-sample batches of 224-px images), at least
    1. More would raise the resident memory, not the speed."""
    per_sample = sum(4 * math.prod(x.shape[1:]) for x in data.arrays.values())
    largest = max((len(b) for b in batches), default=1) * per_sample
    return max(1, min(2 * workers, PREFETCH_BYTES // max(1, largest)))


def check_stream_source(kind: str, stream: bool | str) -> None:
    if stream is True and kind != "manifest":
        raise SpecError(
            "data.stream", f"streaming reads manifest files; the source {kind!r} is in memory"
        )
