"""Manifest data larger than memory: file modalities read lazily, decoded once into an on-disk
cache, and streamed to training and evaluation by a ``torch.utils.data.Dataset``.

``data.stream`` (``auto`` | ``true`` | ``false``) chooses the path for a manifest source;
``false`` is the in-memory path (every file decoded into one array per split). A streamed
modality is a :class:`LazyColumn` in ``Split.arrays``: its rows point into a per-modality
:class:`Source` (the files of the manifest's rows) and its values live in the decode-once cache.

One pass (:func:`stream_pass`, run by ``load_data``) goes over every split and streamed modality:
files whose cache entry is missing or stale are decoded by the one per-file reader
(``medfuse.core.readers.read_modality``, the in-memory path's) in DataLoader worker processes and
written to the cache; the values are checked (non-finite, one intensity scale), and the training
split's normalisation statistics (Welford), per-sample means, value ranges and each split's
values hash (the fingerprint) are computed from the same pass, equal to the in-memory ones.

The cache (``MEDFUSE_CACHE_DIR``, default ``~/.cache/medfuse/decoded``): one directory per
(modality spec, list of files), ``values.npy`` (a memory-mapped ``(rows, *shape)`` float32
array) and ``index.json`` (per row: the file's size and mtime, its state). A new cache is built in
a temporary directory and renamed into place when whole (a half-written cache is never used);
a changed file invalidates its own row, which is re-decoded in place (the row is marked stale
in the index before its values are rewritten).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medfuse.core.errors import DataError, SpecError
from medfuse.core.paths import default_data_root
from medfuse.core.preprocess import EPS, normalize, range_subsample, value_ranges
from medfuse.core.readers import read_modality
from medfuse.core.readers.base import native_scale
from medfuse.core.spec import ModalitySpec
from medfuse.data.validate import SPLITS, _where

log = logging.getLogger("medfuse.data")

CACHE_VERSION = 1
VALUES = "values.npy"
INDEX = "index.json"
#: ``data.stream: auto`` streams when the decoded manifest would exceed this share of the memory
#: available now (the in-memory path holds about three copies: read, split, normalised)
AUTO_FRACTION = 0.15


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


@dataclass
class Source:
    """The files of one streamed modality, one cell per manifest row (``""``: empty), and the
    cache directory holding their decoded values (set by :func:`stream_pass`)."""

    name: str
    spec: ModalitySpec
    paths: list[str]
    where: str = ""
    cache_dir: Path | None = None
    _values: Any = field(default=None, repr=False, compare=False)
    _pid: int = field(default=-1, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own mapping
        return {**self.__dict__, "_values": None, "_pid": -1}

    def values(self) -> np.ndarray:
        """The cache's memory-mapped ``(rows, *shape)`` array (read-only, opened per process)."""
        if self.cache_dir is None:
            raise DataError(f"modality {self.name!r}: its files are not decoded yet")
        if self._values is None or self._pid != os.getpid():
            self._values = np.load(self.cache_dir / VALUES, mmap_mode="r")
            self._pid = os.getpid()
        return self._values  # type: ignore[no-any-return]


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
        """Values of the rows ``idx`` (positions in this column), from the cache."""
        rows = self.rows[np.asarray(idx, dtype=np.int64)]
        return np.asarray(self.source.values()[rows], dtype=np.float32)

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise DataError(
            f"modality {self.source.name!r} is streamed (data.stream): its values are not held "
            "in memory; this step needs data.stream: false"
        )


def is_lazy(x: Any) -> bool:
    return isinstance(x, LazyColumn)


# ---- the decode-once cache ----------------------------------------------------------------------


def file_key(path: str) -> str:
    """What identifies a file's content cheaply: its size and modification time."""
    if not path:
        return ""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_key(source: Source) -> str:
    """The cache directory's name: the modality's reading spec, the reader version, its files."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "spec": source.spec.model_dump(mode="json")}).encode())
    h.update("\n".join(source.paths).encode())
    return h.hexdigest()[:32]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Cache:
    """One modality's cache while the pass fills it: a finished directory being updated in place,
    or a new one in a temporary directory renamed into place by :meth:`commit`."""

    def __init__(self, source: Source, root: Path | None = None) -> None:
        self.source = source
        self.root = root or cache_root()
        self.final = self.root / cache_key(source)
        n = len(source.paths)
        self.keys_now = [file_key(p) for p in source.paths]
        index = self._read_index()
        if index is not None:
            self.dir, self.new = self.final, False
            self.index = index
            stale = [
                i
                for i in range(n)
                if index["state"][i] == "" or index["keys"][i] != self.keys_now[i]
            ]
            if stale:  # mark them first: a crash while rewriting leaves them stale, not wrong
                for i in stale:
                    self.index["state"][i] = ""
                _write_json(self.dir / INDEX, self.index)
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
                "spec": source.spec.model_dump(mode="json"),
                "rows": n,
                "keys": [""] * n,
                "state": [""] * n,  # "" to decode; ok, empty, bad
                "scale": [""] * n,
                "error": [""] * n,
            }
        self.writer = np.load(self.dir / VALUES, mmap_mode="r+")
        source.cache_dir = self.dir
        source._values = None

    def _read_index(self) -> dict[str, Any] | None:
        try:
            index = json.loads((self.final / INDEX).read_text())
            ok = (
                index.get("version") == CACHE_VERSION
                and index.get("rows") == len(self.source.paths)
                and (self.final / VALUES).exists()
            )
            return index if ok else None
        except (OSError, ValueError):
            return None

    def needs(self, row: int) -> bool:
        return bool(self.index["state"][row] == "")

    def put(self, row: int, value: np.ndarray, state: str, scale: str, error: str) -> None:
        self.writer[row] = value
        self.index["keys"][row] = self.keys_now[row]
        self.index["state"][row] = state
        self.index["scale"][row] = scale
        self.index["error"][row] = error

    def commit(self) -> None:
        """Flush the values, then the index; a new cache is renamed into place, whole."""
        self.writer.flush()
        del self.writer
        if self.new:
            with open(self.dir / VALUES, "rb+") as f:
                os.fsync(f.fileno())
            _write_json(self.dir / INDEX, self.index)
            try:
                os.rename(self.dir, self.final)
            except OSError:  # another process finished the same cache first: use theirs
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = self.final
        else:
            _write_json(self.dir / INDEX, self.index)
        self.source.cache_dir = self.dir
        self.source._values = None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            del self.writer
        if self.new:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---- the one pass --------------------------------------------------------------------------------


class _PassItems(Dataset[Any]):
    """One row of a streamed modality for the pass: decoded (a stale or new cache entry) or
    read from the cache. Runs in DataLoader workers."""

    def __init__(self, source: Source, need: np.ndarray, values_dir: Path) -> None:
        self.source, self.need, self.values_dir = source, need, values_dir

    def __len__(self) -> int:
        return len(self.source.paths)

    def __getitem__(self, row: int) -> tuple[int, np.ndarray, str, str, str, bool]:
        s = self.source
        cell = s.paths[row]
        zeros = np.zeros(s.spec.shape, np.float32)
        if not cell:
            return row, zeros, "empty", "", "", False
        if not self.need[row]:
            return row, np.asarray(s.values()[row], np.float32), "", "", "", False
        try:
            x = read_modality(cell, s.spec)  # the one reader: by file type, fitted to the shape
            scale = native_scale(cell) if s.spec.kind == "image" and s.spec.window is None else ""
            return row, np.asarray(x, np.float32), "ok", scale, "", True
        except DataError as err:
            return row, zeros, "bad", "", str(err), True


def _collate(batch: list[Any]) -> list[Any]:
    return batch


class _Welford:
    """Per-channel running mean and variance (Chan et al.'s parallel merge), float64."""

    def __init__(self, axis: int) -> None:
        self.axis, self.n, self.mean, self.m2 = axis, 0, None, None

    def add(self, x: np.ndarray) -> None:  # x: (B, *shape), present samples only
        if not len(x):
            return
        c = self.axis + 1
        flat = np.moveaxis(np.asarray(x, np.float64), c, 0).reshape(x.shape[c], -1)
        nb = flat.shape[1]
        mb = flat.mean(axis=1)
        m2b = ((flat - mb[:, None]) ** 2).sum(axis=1)
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


def _ranges(col: LazyColumn, present_pos: np.ndarray, means: np.ndarray) -> dict[str, Any] | None:
    """``fit_ranges`` of an image/signal modality, from the cache: the same deterministic
    subsample of at most 512 present samples, the same value step."""
    n = len(present_pos)
    if n == 0:
        return None
    pick = range_subsample(n)
    return value_ranges(col.read(present_pos[pick]).reshape(len(pick), -1), means)


def stream_pass(
    bundle: Any, *, on_bad_row: str = "fail", workers: int = 2, batch: int = 64
) -> dict[str, Any]:
    """Decode (or read from the cache) every streamed file once, in split order; returns (and
    stores in ``bundle.info['stream']``) what the in-memory path computes from its arrays:
    the training statistics, constant modalities, each split's values hash, decode counts."""

    splits = [(n, getattr(bundle, n)) for n in SPLITS if getattr(bundle, n, None) is not None]
    lazy = sorted({m for _, s in splits for m, x in s.arrays.items() if is_lazy(x)})
    sources = {m: bundle.train.arrays[m].source for m in lazy}
    caches: dict[str, Cache] = {}
    info: dict[str, Any] = {
        "modalities": lazy,
        "stats": {},
        "constant": {},
        "values_sha256": {},
        "decoded": {},
        "cached": {},
        "cache": {},
        "seconds": 0.0,
    }
    t0 = time.perf_counter()
    scales: dict[str, dict[str, list[int]]] = {m: {} for m in lazy}
    try:
        for m in lazy:
            caches[m] = Cache(sources[m])
            info["decoded"][m], info["cached"][m] = 0, 0
        for name, split in splits:
            v = hashlib.sha256()
            for m in sorted(split.arrays):
                x = split.arrays[m]
                if not is_lazy(x):
                    v.update(np.ascontiguousarray(x, np.float32).tobytes())
                    continue
                src, cache = sources[m], caches[m]
                need = np.array([cache.needs(i) for i in range(len(src.paths))], bool)
                items = _PassItems(src, need, cache.dir)
                loader = DataLoader(
                    items,
                    batch_size=batch,
                    sampler=x.rows.tolist(),
                    num_workers=workers,
                    collate_fn=_collate,
                    generator=torch.Generator(),
                )
                mask = split.masks[m]
                axis = 1 if src.spec.sequence else 0
                welford = _Welford(axis) if name == "train" else None
                lo, hi, means = math.inf, -math.inf, []
                pos = 0
                for got in loader:
                    vals = np.stack([g[1] for g in got])
                    present = np.zeros(len(got), bool)
                    for j, (row, val, state, scale, err, decoded) in enumerate(got):
                        if decoded:
                            cache.put(row, val, state, scale, err)
                            info["decoded"][m] += 1
                        elif state != "empty":
                            info["cached"][m] += 1
                            state = cache.index["state"][row]
                            scale, err = cache.index["scale"][row], cache.index["error"][row]
                        if state == "bad":
                            msg = f"{src.where} row {row + 2} ({m}): {err}"
                            if on_bad_row == "fail":
                                raise DataError(
                                    msg + " (use data.on_bad_row=missing to treat such rows as "
                                    "a missing modality)"
                                )
                            bundle.info.setdefault("bad_rows", []).append(msg)
                            mask[pos + j] = 0.0
                        elif state == "ok":
                            present[j] = True
                            if scale:
                                scales[m].setdefault(scale, []).append(row)
                    bad = present & ~np.isfinite(vals.reshape(len(vals), -1)).all(axis=1)
                    if bad.any():
                        raise DataError(
                            f"array {m!r} ({src.spec.kind}): NaN or infinite values at "
                            f"{_where(name, split.meta, np.flatnonzero(bad) + pos)}; fix or drop "
                            "those samples (an unreadable file can be marked missing: leave its "
                            "cell empty)"
                        )
                    v.update(np.ascontiguousarray(vals, np.float32).tobytes())
                    if welford is not None:
                        p = vals[present]
                        welford.add(p)
                        if len(p):
                            lo, hi = min(lo, float(p.min())), max(hi, float(p.max()))
                            means.append(
                                np.nanmean(p.reshape(len(p), -1), axis=1, dtype=np.float64)
                            )
                    pos += len(got)
                if welford is not None:
                    stat = welford.result(src.spec.shape[axis])
                    present_pos = np.flatnonzero(np.asarray(mask) > 0)
                    means_a = np.concatenate(means) if means else np.zeros(0)
                    caches[m].writer.flush()
                    rng = _ranges(x, present_pos, means_a)
                    if rng is not None:
                        stat["range"] = rng
                    info["stats"][m] = stat
                    info["constant"][m] = (
                        None if not len(present_pos) else ([m] if lo == hi else [])
                    )
            info["values_sha256"][name] = v.hexdigest()
        for m in lazy:
            if len(scales[m]) > 1:
                mixed = "; ".join(
                    f"{k} (rows {', '.join(str(r + 2) for r in v[:5])})"
                    for k, v in scales[m].items()
                )
                raise DataError(
                    f"{sources[m].where}: the files of image modality {m!r} come on different "
                    f"intensity scales: {mixed}. They cannot be trained on together as they are: "
                    f"set modalities.{m}.window to 'unit' (every file on [0, 1] by its bit depth "
                    "or stored range), 'file' (DICOM windows) or [centre, width] (docs/data.md)"
                )
            if scales[m]:
                bundle.info.setdefault("scales", {})[m] = next(iter(scales[m]))
    except BaseException:
        for c in caches.values():
            c.abort()
        raise
    for m, c in caches.items():
        c.commit()
        info["cache"][m] = str(c.dir)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    log.info(
        "streamed %s: %s decoded, %s read from the cache (%s) in %.1f s",
        ", ".join(lazy),
        sum(info["decoded"].values()),
        sum(info["cached"].values()),
        cache_root(),
        info["seconds"],
    )
    if bundle.info.get("bad_rows"):
        log.warning(
            "%d unreadable cells treated as missing modalities; first: %s",
            len(bundle.info["bad_rows"]),
            bundle.info["bad_rows"][0],
        )
    bundle.info["stream"] = info
    return info


# ---- batches for training and evaluation ----------------------------------------------------------


class StreamBatches(Dataset[Any]):
    """A split's normalised batches, read from the cache (streamed modalities) or memory
    (tabular ones, masks, targets). ``__getitems__`` serves one batch of positions at a time, in
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

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(
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

    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])


def _first(batch: Any) -> Any:
    return batch


def stream_loader(
    data: StreamBatches, batches: list[Any], *, workers: int, pin: bool
) -> DataLoader[Any]:
    """Batches of positions, in the order given, fetched by ``workers`` processes ahead of use.
    The loader draws its seed from its own generator: the global RNG (dropout) is untouched."""
    return DataLoader(
        data,
        batch_sampler=[[int(i) for i in b] for b in batches],
        num_workers=workers,
        collate_fn=_first,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator(),
    )


def check_stream_source(kind: str, stream: bool | str) -> None:
    if stream is True and kind != "manifest":
        raise SpecError(
            "data.stream", f"streaming reads manifest files; the source {kind!r} is in memory"
        )
