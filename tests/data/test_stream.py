"""Manifest data larger than memory (issue 18): the streamed path trains exactly as the in-memory
one, the decode-once cache is reused, invalidated per file and per spec, and crash-safe, and the
streaming pass's statistics and fingerprint equal the in-memory ones."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import medfuse
from medfuse.core.errors import DataError
from medfuse.core.readers import read_modality
from medfuse.core.spec import parse_spec
from medfuse.data import is_lazy, load_spec_data
from medfuse.data import stream as stream_mod
from medfuse.data.examples import write_png
from medfuse.training.pipeline import fit_preprocessing

N = 200
SIZE = 16


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N grey SIZE-px PNGs (brighter for the positive class), two clinical columns, 0/1 labels,
    one empty image cell; splits drawn by the manifest loader."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        y = int(rng.random() < 0.4)
        px = np.clip(rng.normal(90 + 50 * y, 40, (SIZE, SIZE)), 0, 255).astype(np.uint8)
        img = write_png(root / "img" / f"{i}.png", px)
        rows.append(
            {
                "id": f"s{i}",
                "label": y,
                "image": "" if i == 7 else img.relative_to(root).as_posix(),
                "age": 50 + 10 * rng.normal() + 5 * y,
                "marker": rng.normal(y, 1.0) if i % 11 else np.nan,
            }
        )
    csv = root / "cases.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _spec(csv: Path, stream: Any, size: int = SIZE, workers: int = 0) -> dict[str, Any]:
    return {
        "name": "stream",
        "task": {"type": "binary"},
        "data": {"source": f"manifest:{csv}", "stream": stream, "workers": workers},
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [size, size]},
            "clinical": {"kind": "tabular", "columns": ["age", "marker"]},
        },
        "branches": {
            "image": {"type": "cnn", "width": 4, "depth": 1, "out_features": 4},
            "clinical": {"type": "mlp", "hidden": 8, "out_features": 4},
        },
        "head": {"hidden": 8},
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "lr": 0.01,
            "early_stopping": None,
            "stages": ["end_to_end"],
            "modality_dropout": {"clinical": 0.2},
        },
    }


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(d))
    return d


def _load(csv: Path, stream: Any, **kw: Any):
    return load_spec_data(parse_spec(_spec(csv, stream, **kw)))


def _copy(manifest: Path, to: Path, rows: int | None = None) -> Path:
    """The manifest (its first ``rows`` rows) with hard links to its images: files of its own to
    change."""
    (to / "img").mkdir(parents=True)
    df = pd.read_csv(manifest)
    df = df if rows is None else df.head(rows)
    for cell in df["image"].dropna():
        os.link(manifest.parent / cell, to / cell)
    df.to_csv(to / "cases.csv", index=False)
    return to / "cases.csv"


def _valid_caches(root: Path) -> list[Path]:
    return [p for p in root.glob("*") if (p / stream_mod.INDEX).exists()] if root.exists() else []


@pytest.mark.parametrize("strided", [False, True])
def test_streamed_statistics_and_fingerprint_equal_the_in_memory_ones(
    manifest: Path, strided: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``strided``: the value percentiles from every 58th value of the subsample, which the pass
    reads 3 rows at a time (a stride that crosses rows and reads), as large images are read."""
    if strided:
        import medfuse.core.preprocess as pre

        def step(values: int) -> int:
            return max(1, values // 700)

        monkeypatch.setattr(pre, "range_step", step)
        monkeypatch.setattr(stream_mod, "range_step", step)
        monkeypatch.setattr(stream_mod, "RANGE_ROWS", 3)
    mem = _load(manifest, False)

    def read_again(*args: Any) -> None:
        raise AssertionError("the range subsample was read from the cache again")

    with monkeypatch.context() as m:  # every training row readable: the workers' shares serve
        m.setattr(stream_mod, "_ranges", read_again)
        st = _load(manifest, True)
    assert not is_lazy(mem.train.arrays["image"]) and is_lazy(st.train.arrays["image"])
    spec = parse_spec(_spec(manifest, False))
    a, b = fit_preprocessing(spec, mem.train, mem.info), fit_preprocessing(spec, st.train, st.info)
    assert list(a) == list(b)
    for m in a:  # float64 sums in two orders: equal to float64 rounding, and as float32
        np.testing.assert_allclose(a[m]["mean"], b[m]["mean"], rtol=1e-13)
        np.testing.assert_allclose(a[m]["std"], b[m]["std"], rtol=1e-13)
        for k in ("mean", "std"):
            assert np.array_equal(np.float32(a[m][k]), np.float32(b[m][k]))
    assert a["clinical"] == b["clinical"]  # tabular columns are in memory either way
    assert a["image"]["range"] == pytest.approx(b["image"]["range"], rel=1e-12)
    assert mem.info["fingerprint"] == st.info["fingerprint"]  # counts, ids, masks, value bytes
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(mem.split(s).masks["image"], st.split(s).masks["image"])
        col = st.split(s).arrays["image"]
        np.testing.assert_array_equal(mem.split(s).arrays["image"], col.read(np.arange(len(col))))


def test_stream_true_trains_exactly_like_stream_false(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seed, same batch order, same values: the same weights and metrics (on the CPU: on
    CUDA, cuDNN's kernels need not give the same bits twice, streamed or not)."""
    runs = {}
    for stream in (False, True):
        out = tmp_path / f"m{stream}"
        res = medfuse.train(_spec(manifest, stream), out=out, device="cpu", progress=False)
        runs[stream] = res
    assert runs[True].metrics["val"]["auroc"] == runs[False].metrics["val"]["auroc"]
    assert runs[True].metrics["test"] == runs[False].metrics["test"]
    wa = (tmp_path / "mFalse" / "model.safetensors").read_bytes()
    wb = (tmp_path / "mTrue" / "model.safetensors").read_bytes()
    assert wa == wb

    # calibration, the clinical evaluation (CIs, each modality removed) and the evaluation of the
    # calibrated package score the streamed splits a part at a time: the in-memory results
    from medfuse.core import inputs as inputs_mod
    from medfuse.report.calibration import calibrate_package
    from medfuse.report.clinical import clinical_evaluation

    # several parts, a short last one: predictions, and evaluate's plausibility count alike
    monkeypatch.setattr(inputs_mod, "STREAMED_ROWS", 16)
    cal, ev, evc = {}, {}, {}
    for stream in (False, True):
        pkg = tmp_path / f"m{stream}"
        got = calibrate_package(pkg, threshold_method="youden")
        got["calibration"].pop("fitted")
        cal[stream] = (got["calibration"], got["threshold"])
        ev[stream] = clinical_evaluation(pkg, split="test", n_boot=50).summary
        evc[stream] = medfuse.evaluate(pkg, device="cpu")
    assert cal[True] == cal[False]
    for e in ev.values():
        e["calibration"].pop("stored_fitted", None)  # when each package was calibrated
    for k in ("metrics", "per_modality", "calibration", "bootstrap"):
        same = json.dumps(ev[True][k], sort_keys=True) == json.dumps(ev[False][k], sort_keys=True)
        assert same, k  # (JSON: NaN bins compare equal)
    assert {k: v for k, v in evc[True].items() if k != "data_check"} == {
        k: v for k, v in evc[False].items() if k != "data_check"
    }
    assert evc[True]["plausibility"]["n"] == evc[True]["n"]  # every row, over two parts


def test_reader_threads_serve_the_same_batches(manifest: Path) -> None:
    """Batches read ahead by threads sharing one open cache file (reads by offset) are the
    in-memory path's, in its order; and reading in turn gives the same."""
    import torch

    from medfuse.inference.helpers import to_tensors

    st = _load(manifest, True, workers=2)
    assert st.info["stream"]["decoded"]["image"] == N - 1  # one empty cell
    spec = parse_spec(_spec(manifest, True))
    stats = fit_preprocessing(spec, st.train, st.info)
    mem = _load(manifest, False)
    t_mem = to_tensors(mem.train, stats)
    t_st = to_tensors(st.train, stats, workers=2)
    g = torch.Generator().manual_seed(0)
    order = [torch.randperm(len(t_mem), generator=g)[:7] for _ in range(12)]
    want = list(t_mem.batches(order, torch.device("cpu")))
    for threads in (3, 0):
        got = list(stream_mod.stream_loader(t_st.data, order, workers=threads, pin=None))
        assert len(got) == len(want)
        for (i1, m1, y1), (i2, m2, y2) in zip(want, got, strict=True):
            for m in i1:
                assert torch.equal(i1[m], i2[m]) and torch.equal(m1[m], m2[m])
            assert torch.equal(y1, y2)
    # a consumer that stops early stops the readers
    it = stream_mod.stream_loader(t_st.data, order, workers=2, pin=None)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("medfuse-read")]


def test_the_cache_is_reused_and_invalidated_per_file_and_per_spec(
    manifest: Path,
    tmp_path: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = _load(manifest, True).info["stream"]
    assert first["decoded"]["image"] == N - 1 and first["cached"]["image"] == 0
    with caplog.at_level("INFO", logger="medfuse.data"):
        again = _load(manifest, True).info["stream"]
    assert "re-decoded" not in caplog.text  # the empty cell is not a changed file
    # the same values: nothing decoded, nothing read, the first pass's result
    assert again["decoded"]["image"] == 0 and again["cached"]["image"] == 0
    assert again["recorded"] and not first["recorded"]
    for k in ("stats", "constant", "values_sha256"):
        assert again[k] == first[k]
    assert len(_valid_caches(cache_dir)) == 1

    # one changed file: its entry alone is decoded again, and its new values are used
    data = _copy(manifest, tmp_path / "copy").parent
    before = _load(data / "cases.csv", True)  # the copy's own cache (other files: other paths)
    changed = data / "img" / "3.png"
    changed.unlink()
    write_png(changed, np.full((SIZE, SIZE), 200, np.uint8))
    bundle = _load(data / "cases.csv", True)
    info = bundle.info["stream"]
    assert info["decoded"]["image"] == 1 and info["cached"]["image"] == N - 2
    spec = parse_spec(_spec(data / "cases.csv", True))
    want = read_modality(changed, spec.modalities["image"])
    src = bundle.train.arrays["image"].source
    np.testing.assert_array_equal(src.read(np.array([3]))[0], want)  # verified, as stored
    # a run that loaded before the change and reads on: refused, never given values other than
    # those its statistics and fingerprint came from; the message says why
    with pytest.raises(DataError, match=r"row 5 \(image\).*another run decoded the file anew"):
        before.train.arrays["image"].source.read(np.array([3]))
    assert bundle.info["fingerprint"] == _load(data / "cases.csv", False).info["fingerprint"]

    # another preprocessing spec (size): another cache, every file decoded
    other = _load(manifest, True, size=8).info["stream"]
    assert other["decoded"]["image"] == N - 1

    # another release of a decoding library (the same bytes may decode to other values): another
    # cache, every file decoded
    old = stream_mod.reader_versions()
    assert old["pillow"] and old["numpy"]
    monkeypatch.setattr(stream_mod, "reader_versions", lambda: {**old, "pillow": "0.0.1"})
    upgraded = _load(manifest, True).info["stream"]
    assert upgraded["decoded"]["image"] == N - 1 and not upgraded["recorded"]


def _rss_file_kib() -> int:
    """This process's resident file-backed pages (KiB), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_reading_and_writing_the_cache_keeps_resident_memory_flat(tmp_path) -> None:
    """The cache's rows are read and written by offset, not memory-mapped: writing and then
    reading every row of a 64 MiB values file (twice the page budget asserted) leaves this
    process's file-backed resident memory where it was; a memory map would hold the pages read."""
    rows, shape = 256, (1, 256, 256)  # 256 KiB a row, 64 MiB in all
    path = tmp_path / stream_mod.VALUES
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, *shape)).flush()
    before = _rss_file_kib()
    w = stream_mod.RowFile(path, writable=True)
    rng = np.random.default_rng(0)
    first = rng.normal(size=shape).astype(np.float32)
    stored = [_write(w, r, first + r) for r in range(rows)]
    assert set(stored) == {"f4"}  # not integers
    w.sync()
    w.close()
    f = stream_mod.RowFile(path)
    for start in range(0, rows, 32):
        got = f.read(np.arange(start, start + 32)[::-1], stored)  # any order
        np.testing.assert_array_equal(got[-1], first + start)
    np.testing.assert_array_equal(f.read(np.array([5, 5]), stored)[1], first + 5)
    with pytest.raises(IndexError, match="row 256 of a cache of 256 rows"):
        f.read(np.array([rows]), stored)
    assert _rss_file_kib() - before < 32 * 1024, "the cache's pages stayed resident"
    f.close()
    np.testing.assert_array_equal(np.load(path, mmap_mode="r")[7], first + 7)  # still a .npy


def _write(w: stream_mod.RowFile, row: int, x: np.ndarray) -> str:
    """Write ``x`` as the pass does: in its smallest exact storage; which one."""
    kind, small = stream_mod.compact(x)
    w.write(row, small)
    return kind


def test_integer_rows_are_stored_compactly_and_read_back_bit_for_bit(tmp_path) -> None:
    """A row whose values are all 8-bit (or 16-bit) integers is stored in a quarter (half) of its
    slot, the rest a hole in the file; every row reads back as the float32 values written, bit
    for bit (-0.0, fractions and NaN stay float32)."""
    shape = (1, 128, 128)
    rng = np.random.default_rng(0)
    rows = {
        "u1": rng.integers(0, 256, shape).astype(np.float32),
        "i2": rng.integers(-1024, 3072, shape).astype(np.float32),  # CT numbers (HU)
        "negative zero": np.where(rng.random(shape) < 0.5, -0.0, 7.0).astype(np.float32),
        "fraction": (rng.integers(0, 256, shape) / 255.0).astype(np.float32),
        "nan": np.full(shape, np.nan, np.float32),
        "large": np.full(shape, 70000.0, np.float32),
    }
    want = {"u1": "u1", "i2": "i2"}
    n = 64
    path = tmp_path / stream_mod.VALUES
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *shape)).flush()
    w = stream_mod.RowFile(path, writable=True)
    stored = [""] * n
    for r, (name, x) in enumerate(rows.items()):
        stored[r] = _write(w, r, x)
        assert stored[r] == want.get(name, "f4"), name
    for r in range(len(rows), n):  # 8-bit images at their training size
        stored[r] = _write(w, r, rows["u1"])
    w.sync()
    w.close()
    f = stream_mod.RowFile(path)
    got = f.read(np.arange(n), stored)
    for r, x in enumerate([*rows.values(), *[rows["u1"]] * (n - len(rows))]):
        np.testing.assert_array_equal(got[r].view(np.int32), x.view(np.int32))
    f.close()
    full = n * 4 * math.prod(shape)
    assert path.stat().st_blocks * 512 < 0.4 * full  # the holes take no disk


@pytest.mark.parametrize(("shape", "axis"), [((3, 40, 50), 0), ((4, 2, 30, 30), 1)])
def test_an_8_bit_row_is_summarised_from_its_bytes_as_from_its_floats(shape, axis) -> None:
    """The pass summarises an 8-bit row from its uint8 storage (integer sums): the same extremes,
    and means and squared deviations per channel to float64 rounding, as its float32 values."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, shape).astype(np.float32)
    x[0, 0] = 255.0  # the largest square, 65025, still fits the uint16 the sums use
    kind, small = stream_mod.compact(x)
    assert kind == "u1" and small.dtype == np.uint8
    a, b = stream_mod.summarise(x, axis), stream_mod.summarise(small, axis)
    assert (a.finite, a.lo, a.hi) == (b.finite, b.lo, b.hi) == (True, 0.0, 255.0)
    assert b.channel_mean.shape == (shape[axis],)
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-14)
    np.testing.assert_allclose(b.channel_mean, a.channel_mean, rtol=1e-14)
    np.testing.assert_allclose(b.channel_m2, a.channel_m2, rtol=1e-12)


def test_reader_threads_hold_a_bounded_amount_of_ready_batches() -> None:
    """Batches read ahead: 2 per reader thread for a training batch, fewer for evaluation's
    256-sample batches of 224-px images (51 MiB each), so the resident memory does not grow
    with the evaluated split."""
    n = 300
    x = np.zeros((n, 1, 224, 224), np.float32)  # never touched: no memory used
    data = stream_mod.StreamBatches(
        {"image": x}, {"image": np.ones(n, np.float32)}, np.zeros(n), {}
    )
    assert stream_mod.ready_ahead(data, [list(range(32))], 2) == 4
    assert stream_mod.ready_ahead(data, [list(range(256)), [256]], 2) == 2
    held = stream_mod.ready_ahead(data, [list(range(256)), [256]], 2) * 256 * x[0].nbytes
    assert held <= stream_mod.PREFETCH_BYTES
    assert stream_mod.ready_ahead(data, [list(range(300))] * 9, 8) == 2  # not 16


def test_reader_threads_pin_for_the_training_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a CUDA device, each reader thread makes it current before pinning (``cuda`` without
    an index: the device current where the loader started; torch.cuda.set_device refuses a
    device without an index). This machine has no GPU: PyTorch's CUDA calls are recorded."""
    import torch

    n = 12
    data = stream_mod.StreamBatches(
        {"image": np.arange(n * 4, dtype=np.float32).reshape(n, 1, 2, 2)},
        {"image": np.ones(n, np.float32)},
        np.zeros(n),
        {"image": {"channel_axis": 0, "mean": [0.0], "std": [1.0]}},
    )
    calls: list[tuple[str, int]] = []
    pinned: list[str] = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(
        torch.cuda,
        "set_device",
        lambda d: calls.append((threading.current_thread().name, int(d))),
    )
    monkeypatch.setattr(
        torch.Tensor, "pin_memory", lambda t: pinned.append(threading.current_thread().name) or t
    )
    order = [[i, i + 1] for i in range(0, n, 2)]
    for dev, want in ((torch.device("cuda"), 3), (torch.device("cuda:1"), 1)):
        calls.clear()
        pinned.clear()
        got = list(stream_mod.stream_loader(data, order, workers=2, pin=dev))
        assert [b[2].shape[0] for b in got] == [2] * 6
        assert calls and {d for _, d in calls} == {want}
        assert all(name.startswith("medfuse-read") for name, _ in calls)
        assert len(pinned) == 6 * 3 and all(p.startswith("medfuse-read") for p in pinned)
    calls.clear()
    list(stream_mod.stream_loader(data, order, workers=2, pin=None))
    assert not calls


def test_reader_threads_leave_the_cores_to_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU, batches are read ahead only on cores PyTorch's threads leave free; on a GPU,
    by data.workers threads."""
    import torch

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(stream_mod, "usable_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert stream_mod.reader_threads(2, cpu) == 0 and stream_mod.reader_threads(2, gpu) == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert stream_mod.reader_threads(2, cpu) == 1 and stream_mod.reader_threads(0, gpu) == 0
    monkeypatch.setattr(stream_mod, "usable_cores", lambda: 16)
    assert stream_mod.reader_threads(2, cpu) == 2
    # torchrun's ranks on one node (1 torch thread each): the cores they leave, shared
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert stream_mod.reader_threads(2, cpu) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(stream_mod, "usable_cores", lambda: 2)
    assert stream_mod.reader_threads(2, cpu) == 0 and stream_mod.reader_threads(2, gpu) == 2
    monkeypatch.setattr(stream_mod, "usable_cores", lambda: 8)
    assert stream_mod.reader_threads(4, cpu) == 3  # (8 - 2) // 2


def test_threads_share_one_cache_file(
    manifest: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reader threads asking a Source for its file at once get one open file, not one each;
    and where the platform has no preadv/pwrite (Windows), rows are read and written by a seek
    under a lock, with the same values."""
    st = _load(manifest, True)
    col = st.train.arrays["image"]
    src = col.source
    want = col.read(np.arange(len(col)))
    for _ in range(5):
        src.reopen(src.cache_dir)
        start = threading.Barrier(8)
        got: list[Any] = []

        def ask(start: threading.Barrier = start, got: list[Any] = got) -> None:
            start.wait()
            got.append(src.values())

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 8 and len({id(v) for v in got}) == 1
    monkeypatch.delattr(os, "preadv")
    monkeypatch.delattr(os, "pwrite")
    src.reopen(src.cache_dir)
    assert not src.values()._by_offset  # the seek under a lock is what reads below
    n = len(col)
    data = stream_mod.StreamBatches(
        {"image": col},
        {"image": np.ones(n, np.float32)},
        np.zeros(n),
        {"image": {"channel_axis": 0, "mean": [0.0], "std": [1.0]}},
    )
    order = [list(range(i, min(i + 3, n))) for i in range(0, n, 3)]
    out = list(stream_mod.stream_loader(data, order, workers=3, pin=None))
    assert np.array_equal(np.concatenate([b[0]["image"].numpy() for b in out]), want)
    f = stream_mod.RowFile(src.cache_dir / stream_mod.VALUES, writable=True)
    row = np.frombuffer(os.urandom(f.row_bytes), np.uint8).view(np.float32).copy()
    row[~np.isfinite(row)] = 0.0
    f.write(len(col.source.paths) - 1, row)
    back = f.read(np.array([len(col.source.paths) - 1]), None)[0].reshape(-1)
    f.close()
    assert np.array_equal(back.view(np.uint32), row.view(np.uint32))


def test_a_cache_damaged_on_disk_is_refused_on_read(
    manifest: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row read from the cache is checked against the digest written with it: one float
    changed in a finished cache is refused (DataError: the row, its file, the folder to delete)
    by the pass and by training's reader threads (2 of them here, whatever the cores), never
    trained on."""
    import medfuse.inference.helpers as helpers

    monkeypatch.setattr(helpers, "reader_threads", lambda workers, device: 2)
    _load(manifest, True)  # builds the cache and records the pass
    (cache,) = _valid_caches(cache_dir)
    head = np.load(cache / stream_mod.VALUES, mmap_mode="r")
    row_bytes, offset = 4 * SIZE * SIZE, int(head.offset)
    del head
    with open(cache / stream_mod.VALUES, "r+b") as f:  # row 3, one value: +1
        f.seek(offset + 3 * row_bytes + 40)
        v = np.frombuffer(f.read(4), np.float32)[0]
        f.seek(offset + 3 * row_bytes + 40)
        f.write(np.float32(v + 1).tobytes())
    where = rf"row 5 \(image\): the decoded-data cache {cache}.* holds other values for .*3\.png"
    # the recorded pass reads nothing; training's reader threads read row 3 and refuse it
    with pytest.raises(DataError, match=where) as err:
        medfuse.train(_spec(manifest, True, workers=2), out=tmp_path / "m", progress=False)
    assert "Traceback" not in str(err.value)  # the reader's message as it is
    assert not [t for t in threading.enumerate() if t.name.startswith("medfuse-read")]
    assert not (tmp_path / "m").exists()
    # a pass that reads the cache (its record gone) refuses it too
    shutil.rmtree(cache_dir / stream_mod.PASSES)
    with pytest.raises(DataError, match=where):
        _load(manifest, True, workers=2)
    shutil.rmtree(cache)  # what the message says to do: decoded anew, the same values as before
    again = _load(manifest, True)
    assert again.info["stream"]["decoded"]["image"] == N - 1


def test_a_crash_mid_write_leaves_no_valid_looking_cache(
    manifest: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = stream_mod.read_fitted

    def dying(path: Any, m: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt  # killed mid-pass
        return real(path, m)

    monkeypatch.setattr(stream_mod, "read_fitted", dying)
    with pytest.raises(KeyboardInterrupt):
        _load(manifest, True)
    assert _valid_caches(cache_dir) == [] and not list(cache_dir.glob(".tmp-*"))

    # a kill -9 cleans nothing up: the half-written directory is left, and never read
    monkeypatch.setattr(stream_mod.Cache, "abort", lambda self: None)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        _load(manifest, True)
    assert _valid_caches(cache_dir) == [] and len(list(cache_dir.glob(".tmp-*"))) == 1
    monkeypatch.setattr(stream_mod, "read_fitted", real)
    info = _load(manifest, True).info["stream"]
    assert info["decoded"]["image"] == N - 1 and len(_valid_caches(cache_dir)) == 1


def test_a_crash_while_updating_a_changed_file_re_decodes_it(
    manifest: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _copy(manifest, tmp_path / "copy").parent
    _load(data / "cases.csv", True)
    changed = data / "img" / "5.png"
    changed.unlink()
    write_png(changed, np.full((SIZE, SIZE), 10, np.uint8))

    def dying(path: Any, m: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        raise KeyboardInterrupt

    monkeypatch.setattr(stream_mod, "read_fitted", dying)
    with pytest.raises(KeyboardInterrupt):
        _load(data / "cases.csv", True)
    monkeypatch.undo()
    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(cache_dir))
    info = _load(data / "cases.csv", True).info["stream"]
    assert info["decoded"]["image"] == 1  # marked stale before the crash: decoded again


def test_auto_streams_only_data_too_large_for_memory(
    manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not is_lazy(_load(manifest, "auto").train.arrays["image"])
    monkeypatch.setattr(stream_mod, "available_memory", lambda: 1 << 20)  # 1 MiB
    assert is_lazy(_load(manifest, "auto").train.arrays["image"])


def test_unreadable_files_fail_or_become_missing_as_in_memory(
    manifest: Path, tmp_path: Path
) -> None:
    data = _copy(manifest, tmp_path / "bad", rows=60).parent
    (data / "img" / "9.png").unlink()
    (data / "img" / "9.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"row 11 \(image\)"):
        _load(data / "cases.csv", True)
    import multiprocessing

    with pytest.raises(DataError, match=r"row 11 \(image\)") as raised:
        _load(data / "cases.csv", True, workers=2)
    # the pass's workers were stopped before the error left it, though its traceback is held
    assert raised.value.__traceback__ is not None and not multiprocessing.active_children()
    spec = _spec(data / "cases.csv", True)
    spec["data"]["on_bad_row"] = "missing"
    st = load_spec_data(parse_spec(spec))
    mem_spec = copy.deepcopy(spec)
    mem_spec["data"]["stream"] = False
    mem = load_spec_data(parse_spec(mem_spec))
    assert len(st.info["bad_rows"]) == len(mem.info["bad_rows"]) == 1
    assert st.info["fingerprint"] == mem.info["fingerprint"]
    again = load_spec_data(parse_spec(spec))  # the recorded pass marks the same cell missing
    assert again.info["stream"]["recorded"] and again.info["bad_rows"] == st.info["bad_rows"]
    for name in ("train", "val"):
        a, b = getattr(again, name).masks["image"], getattr(st, name).masks["image"]
        np.testing.assert_array_equal(a, b)
    assert again.info["fingerprint"] == st.info["fingerprint"]


def _image_ranges(spec: dict[str, Any], bundle: Any) -> dict[str, float]:
    return fit_preprocessing(parse_spec(spec), bundle.train, bundle.info)["image"]["range"]


def _in_memory(spec: dict[str, Any]) -> Any:
    return load_spec_data(parse_spec({**spec, "data": {**spec["data"], "stream": False}}))


def _counting_ranges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the pass's reads of the range subsample from the cache (``_ranges``)."""
    reads: list[int] = []
    real = stream_mod._ranges
    monkeypatch.setattr(stream_mod, "_ranges", lambda *a: reads.append(1) or real(*a))
    return reads


def test_the_workers_shares_give_the_ranges_for_decoded_and_cached_rows(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real worker processes: a first pass decodes every file, a second after one file changed
    decodes it and reads the rest from the cache; both take the range subsample from the
    workers' shares (no read from the cache), equal to the in-memory path's."""
    csv = _copy(manifest, tmp_path / "data", rows=60)
    spec = _spec(csv, True, workers=2)
    reads = _counting_ranges(monkeypatch)
    first = load_spec_data(parse_spec(spec))
    assert first.info["stream"]["decoded"]["image"] == 59 and reads == []
    assert _image_ranges(spec, first) == pytest.approx(
        _image_ranges(spec, _in_memory(spec)), rel=1e-12
    )
    row = int(first.train.arrays["image"].rows[np.flatnonzero(first.train.masks["image"])[0]])
    cell = tmp_path / "data" / pd.read_csv(csv)["image"][row]
    cell.unlink()
    write_png(cell, np.full((SIZE, SIZE), 255, np.uint8))  # a new extreme for the percentiles
    again = load_spec_data(parse_spec(spec))
    stream = again.info["stream"]
    assert stream["decoded"]["image"] == 1 and stream["cached"]["image"] == 58 and reads == []
    got, want = _image_ranges(spec, again), _image_ranges(spec, _in_memory(spec))
    assert got == pytest.approx(want, rel=1e-12) and got != _image_ranges(spec, first)


@pytest.mark.parametrize("in_subsample", [True, False])
def test_an_unreadable_training_row_changes_the_range_subsample_as_in_memory(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_subsample: bool
) -> None:
    """The pass plans the range subsample from the manifest's present rows. A training file
    found unreadable (``on_bad_row: missing``) leaves the rows present another subsample: the
    planned shares are not used, the subsample is read from the cache, and the ranges equal the
    in-memory path's. ``in_subsample``: the unreadable row was one of the planned rows (its share
    is missing), or not (every planned share came back; the present rows differ), with a
    subsample of every other present row."""
    import medfuse.core.preprocess as pre

    if not in_subsample:

        def every_other(n: int) -> np.ndarray:
            return np.arange(0, n, 2)

        monkeypatch.setattr(pre, "range_subsample", every_other)
        monkeypatch.setattr(stream_mod, "range_subsample", every_other)
    csv = _copy(manifest, tmp_path / "data", rows=60)
    spec = _spec(csv, True, workers=2)
    spec["data"]["on_bad_row"] = "missing"
    good = load_spec_data(parse_spec(spec))
    present = np.flatnonzero(good.train.masks["image"])
    row = int(good.train.arrays["image"].rows[present[3]])  # odd: outside every other row
    cell = tmp_path / "data" / pd.read_csv(csv)["image"][row]
    cell.unlink()
    cell.write_bytes(b"not a png")
    reads = _counting_ranges(monkeypatch)
    st = load_spec_data(parse_spec(spec))
    assert len(st.info["bad_rows"]) == 1 and reads == [1]
    mem = _in_memory(spec)
    assert _image_ranges(spec, st) == pytest.approx(_image_ranges(spec, mem), rel=1e-12)
    plan = stream_mod.RangeSample.plan(good.train.arrays["image"], good.train.masks["image"])
    assert plan is not None
    shares = {r: np.zeros(1, np.float32) for r in plan.rows}
    assert plan.values(present, shares) is not None  # the plan as it was: served
    assert plan.values(np.flatnonzero(st.train.masks["image"]), shares) is None


# -- crashes, changed files and concurrent processes, with real processes ----------------------

RUN = Path(__file__).with_name("stream_run.py")


def _run(csv: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDFUSE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(RUN), str(csv), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _counts(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert p.returncode == 0, p.stderr[-3000:]
    line = [x for x in p.stdout.splitlines() if x.startswith("STREAM ")]
    return json.loads(line[-1][7:])


def test_a_process_killed_while_writing_the_cache_leaves_nothing_half_valid(
    manifest: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL after 60 entries of a new cache: no cache passes for whole; the next run decodes
    every file again, removes the dead writer's directory and gives the uninterrupted values."""
    killed = _run(manifest, cache_dir, "--die-after", "60")
    assert killed.returncode == -signal.SIGKILL
    assert _valid_caches(cache_dir) == []
    assert len(list(cache_dir.glob(".tmp-*"))) == 1  # left behind, never read
    after = _load(manifest, True).info["stream"]  # the next run (this process)
    assert after["decoded"]["image"] == N - 1 and not after["recorded"]
    assert list(cache_dir.glob(".tmp-*")) == [] and len(_valid_caches(cache_dir)) == 1
    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(tmp_path / "clean"))
    ref = _load(manifest, True).info["stream"]
    assert after["values_sha256"] == ref["values_sha256"] and after["stats"] == ref["stats"]


def test_a_process_killed_while_updating_changed_files_re_decodes_exactly_them(
    manifest: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = _copy(manifest, tmp_path / "copy")
    assert _load(csv, True).info["stream"]["decoded"]["image"] == N - 1
    for i, v in ((4, 30), (6, 220)):
        f = csv.parent / "img" / f"{i}.png"
        f.unlink()
        write_png(f, np.full((SIZE, SIZE), v, np.uint8))
    killed = _run(csv, cache_dir, "--die-after", "1")  # one of the two rewritten, then killed
    assert killed.returncode == -signal.SIGKILL
    after = _load(csv, True).info["stream"]
    assert after["decoded"]["image"] == 2 and after["cached"]["image"] == N - 3
    # the same as a cache built from scratch on the changed files
    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(tmp_path / "fresh"))
    ref = _load(csv, True).info["stream"]
    assert after["values_sha256"] == ref["values_sha256"]


def test_content_not_timestamps_decides_what_is_decoded_again(
    manifest: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """``touch`` (same bytes) decodes nothing; new bytes of the same size written with the old
    modification time put back (as ``cp -p`` or a restored backup do) are decoded again."""
    csv = _copy(manifest, tmp_path / "copy")
    first = _load(csv, True).info["stream"]
    f = csv.parent / "img" / "8.png"
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched = _load(csv, True).info["stream"]
    assert touched["decoded"]["image"] == 0 and touched["values_sha256"] == first["values_sha256"]
    st = f.stat()
    old = f.read_bytes()
    f.unlink()
    write_png(f, np.full((SIZE, SIZE), 128, np.uint8))
    new = f.read_bytes()
    assert len(new) < len(old)  # a uniform PNG is smaller than a noisy one: padded to its size
    f.write_bytes(new + b"\0" * (len(old) - len(new)))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    again = _load(csv, True).info["stream"]
    assert again["decoded"]["image"] == 1
    assert again["values_sha256"] != first["values_sha256"]


def test_a_wfdb_record_whose_data_file_changed_is_decoded_again(tmp_path: Path) -> None:
    """A WFDB cell names the header; the samples are in the ``.dat`` it names. New samples
    written over the ``.dat`` (the header untouched) are that row's new values, not the cached
    ones: exactly that row is decoded again, and the fingerprint is the in-memory path's."""
    from medfuse.data.examples import write_wfdb

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        write_wfdb(tmp_path / "sig" / f"r{i}", rng.normal(i % 2, 1, (2, 50)), 50, ["I", "II"])
        rows.append({"id": f"s{i}", "label": i % 2, "ecg": f"sig/r{i}.hea", "age": 40 + i})
    csv = tmp_path / "cases.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    spec = {
        "name": "wfdb",
        "task": {"type": "binary"},
        "data": {"source": f"manifest:{csv}", "stream": True, "workers": 0},
        "modalities": {
            "ecg": {"kind": "signal", "channels": 2, "length": 50},
            "clinical": {"kind": "tabular", "columns": ["age"]},
        },
        "branches": {"ecg": {"type": "cnn1d"}, "clinical": {"type": "mlp"}},
    }

    def load(stream: bool):
        return load_spec_data(parse_spec({**spec, "data": {**spec["data"], "stream": stream}}))

    assert load(True).info["stream"]["decoded"]["ecg"] == 12
    ecg = parse_spec(spec).modalities["ecg"]
    before = read_modality(tmp_path / "sig" / "r3.hea", ecg)
    other = tmp_path / "other"
    write_wfdb(other / "r3", rng.normal(5, 1, (2, 50)), 50, ["I", "II"])
    header = (tmp_path / "sig" / "r3.hea").read_bytes()
    with open(tmp_path / "sig" / "r3.dat", "r+b") as f:  # in place: the folder is unchanged
        f.write((other / "r3.dat").read_bytes())
        f.truncate()
    assert (tmp_path / "sig" / "r3.hea").read_bytes() == header
    bundle = load(True)
    assert bundle.info["stream"]["decoded"]["ecg"] == 1
    assert bundle.info["fingerprint"] == load(False).info["fingerprint"]
    want = read_modality(tmp_path / "sig" / "r3.hea", ecg)
    assert not np.array_equal(want, before)  # the new samples
    np.testing.assert_array_equal(bundle.train.arrays["ecg"].source.read(np.array([3]))[0], want)


def test_cells_are_read_as_written_through_links_and_dot_dot(tmp_path: Path) -> None:
    """The streamed path reads the path a cell names as the in-memory path does: a link to a
    file without an extension (a content-addressed store) is read by the link's name; a WFDB
    header linked from another folder reads the data file beside the link, as wfdb does; ``..``
    after a folder that does not exist is a missing file. Same masks, values and fingerprint."""
    from medfuse.data.examples import write_wfdb

    rng = np.random.default_rng(1)
    rows = []
    for i in range(8):
        blob = write_png(tmp_path / "blobs" / f"b{i}.png", rng.integers(0, 255, (8, 8), np.uint8))
        blob.rename(tmp_path / "blobs" / f"sha{i}")  # no extension
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / f"{i}.png").symlink_to(tmp_path / "blobs" / f"sha{i}")
        site = tmp_path / f"site{i}"
        write_wfdb(site / "ecg", rng.normal(i, 1, (1, 40)), 40, ["I"])
        if i:  # site i's header is site 0's, linked; its own samples beside the link
            (site / "ecg.hea").unlink()
            (site / "ecg.hea").symlink_to(tmp_path / "site0" / "ecg.hea")
        image = f"gone/../img/{i}.png" if i == 5 else f"img/{i}.png"
        rows.append({"id": f"s{i}", "label": i % 2, "image": image, "ecg": f"site{i}/ecg.hea"})
    csv = tmp_path / "cases.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    spec = {
        "name": "links",
        "task": {"type": "binary"},
        "data": {
            "source": f"manifest:{csv}",
            "on_bad_row": "missing",
            "workers": 0,
        },
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [8, 8]},
            "ecg": {"kind": "signal", "channels": 1, "length": 40},
        },
        "branches": {"image": {"type": "cnn"}, "ecg": {"type": "cnn1d"}},
    }
    got = {}
    for stream in (False, True):
        got[stream] = load_spec_data(
            parse_spec({**spec, "data": {**spec["data"], "stream": stream}})
        )
    assert got[True].info["fingerprint"] == got[False].info["fingerprint"]
    present, rows = 0, []
    for name in ("train", "val", "test"):
        mem, st = got[False].split(name), got[True].split(name)
        assert mem.masks["image"].tolist() == st.masks["image"].tolist()
        present += int(st.masks["image"].sum())
        for m in ("image", "ecg"):
            col = st.arrays[m]
            np.testing.assert_array_equal(mem.arrays[m], col.read(np.arange(len(col))))
        rows += [r.tobytes() for r in st.arrays["ecg"].read(np.arange(len(st)))]
    # s5's image is missing; each record reads its own samples (site 0's through every link: 1)
    assert present == 7 and len(set(rows)) == 8


def test_two_processes_on_one_cache_decode_each_file_once(
    manifest: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """Started together (as the ranks of a torchrun job are): one builds the cache while the
    other waits for its lock, then reads nothing (the first one's recorded result)."""
    env = {**os.environ, "MEDFUSE_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(RUN), str(manifest)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    got = [
        _counts(subprocess.CompletedProcess(p.args, p.returncode, o, e))
        for p, (o, e) in zip(procs, outs, strict=True)
    ]
    decoded = sorted(g["decoded"]["image"] for g in got)
    assert decoded == [0, N - 1]
    waited = got[0] if got[0]["decoded"]["image"] == 0 else got[1]
    assert waited["recorded"] and waited["cached"]["image"] == 0
    assert got[0]["values_sha256"] == got[1]["values_sha256"]
    assert len(_valid_caches(cache_dir)) == 1


def test_the_pass_runs_the_workers_of_every_process_of_the_node(
    manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun the process that holds the cache lock decodes for the node while the others
    wait on it: it runs their workers too (data.workers x LOCAL_WORLD_SIZE), at most the cores
    less one, never fewer than its own; 0 (decoding in-process) stays 0."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert stream_mod.pass_workers(2) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    for cores, want in ((32, 16), (12, 11), (2, 2)):
        cpus = set(range(cores))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cpus: c, raising=False)
        assert stream_mod.pass_workers(2) == want
    assert stream_mod.pass_workers(0) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    info = _load(manifest, True, workers=1).info["stream"]
    assert info["workers"] == 2 and info["decoded"]["image"] == N - 1
    again = _load(manifest, True, workers=1).info["stream"]  # the recorded pass: no workers
    assert again["recorded"] and again["workers"] == 0


def test_an_unwritable_cache_folder_is_a_clear_error(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(DataError, match=r"a-file/cache cannot be written.*MEDFUSE_CACHE_DIR"):
        _load(manifest, True)


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX")
def test_a_file_system_without_locks_is_a_clear_error_not_a_wait(
    manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flock failing with ENOLCK (e.g. Lustre without -o flock) is no lock held by another
    process: refused at once, naming the folder and MEDFUSE_CACHE_DIR."""
    import errno
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    t0 = time.perf_counter()
    with pytest.raises(
        DataError, match=r"cannot be locked \(No locks available\).*MEDFUSE_CACHE_DIR"
    ):
        _load(manifest, True)
    assert time.perf_counter() - t0 < 5


def test_the_pass_flushes_the_cache_while_writing_and_stops_flushing(
    manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread flushes the values file to disk while the workers write it (the final flush
    before the completion mark finds little left); it flushes, and it is gone after the pass.
    It starts after the workers are forked: a fork beside a running thread can deadlock the
    child (Python 3.12 warns "use of fork() may lead to deadlocks")."""
    import threading

    flushed, at_fork = [], []
    real = getattr(os, "fdatasync", os.fsync)
    real_fork = os.fork

    def counting(fd: int) -> None:
        flushed.append(fd)
        real(fd)

    def fork() -> int:
        at_fork.append(sorted(t.name for t in threading.enumerate()))
        return real_fork()

    monkeypatch.setattr(stream_mod, "FLUSH_EVERY", 0.001)
    monkeypatch.setattr(os, "fdatasync" if hasattr(os, "fdatasync") else "fsync", counting)
    monkeypatch.setattr(os, "fork", fork)
    bundle = _load(manifest, True, workers=2)
    assert bundle.info["stream"]["decoded"]["image"] == N - 1
    assert flushed
    if torch.multiprocessing.get_start_method() == "fork":  # (forkserver: no fork from here)
        assert len(at_fork) >= 2  # the two workers
        assert not [names for names in at_fork if "medfuse-cache-flush" in names], at_fork
    assert not [t for t in threading.enumerate() if t.name == "medfuse-cache-flush"]


def test_a_full_or_deleted_cache_and_a_damaged_pass_record_are_said(
    manifest: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full cache disk was an internal error with a DataLoader worker's traceback (exit 70),
    so was a cache folder deleted while a run read it; a pass record damaged on disk crashed on
    a missing key instead of being rebuilt."""
    import errno

    import torch

    from medfuse.inference.helpers import to_tensors

    real_write = stream_mod.RowFile.write

    def full(self: Any, row: int, small: np.ndarray) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream_mod.RowFile, "write", full)
    with pytest.raises(DataError, match=r"cache folder .* is full \(no space left on device\)"):
        _load(manifest, True)
    monkeypatch.setattr(stream_mod.RowFile, "write", real_write)
    st = _load(manifest, True)
    assert st.info["stream"]["decoded"]["image"] == N - 1
    # the record of that pass, damaged: rebuilt (read from the cache), not a KeyError
    (record,) = (cache_dir / stream_mod.PASSES).glob("*.json")
    record.write_text('{"stats": {}}')
    again = _load(manifest, True)
    assert again.info["stream"]["cached"]["image"] == N - 1
    assert again.info["stream"]["stats"] == st.info["stream"]["stats"]
    # the cache deleted under a run: said, not a worker's FileNotFoundError
    stats = fit_preprocessing(parse_spec(_spec(manifest, True)), again.train, again.info)
    t = to_tensors(again.train, stats)
    for d in [p for p in cache_dir.iterdir() if p.is_dir()]:
        shutil.rmtree(d)
    with pytest.raises(DataError, match=r"lost a file this run was reading"):
        next(iter(t.batches([torch.arange(4)], torch.device("cpu"))))
