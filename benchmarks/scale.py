"""Manifest data at scale (issue 18): peak memory and wall time of one training epoch on N grey
224x224 PNGs + two clinical columns, for

* ``medfuse stream, cold``: ``data.stream: true`` with an empty cache (the pass decodes every
  file into the cache and fits the statistics, then the epoch reads the cache);
* ``medfuse stream, cached``: the same run again (the pass reads the cache; no decoding);
* ``medfuse in memory``: ``data.stream: false`` (today's path: every split decoded into RAM);
* ``plain DataLoader``: a hand-written lazy ``Dataset`` (PIL decode + resize + normalise per
  sample, every epoch) and ``DataLoader(num_workers=W)`` training the same model.

Each variant runs in its own process; peak RSS is that process's (``main``) and the largest of
its DataLoader workers' (``workers``). ``prepare s``: loading (medfuse: read the manifest, decode
or read the cache, statistics, validation, fingerprint); ``epoch s``: the training pass of the
one epoch; ``total s``: the process's wall time (medfuse also validates, picks a threshold,
computes val metrics and writes the package). The images are written to a temporary folder and
removed afterwards (never committed).

    python benchmarks/scale.py --n 1000 [--workers 2] [--threads 2] [--skip-memory]
    python benchmarks/scale.py --n 1000 5000 20000 50000 --threads 1 2 --repeat 2 [--json F]

``--repeat K`` runs each variant K times, interleaved (cold, cached, plain; again), each cold run
on an empty cache; the table keeps each variant's fastest run and lists every run's wall. Every
variant trains with medfuse's CPU allocator settings (``medfuse.training.malloc``), the plain
loader too: the loaders are compared, not glibc's defaults.

``--threads 1 2`` runs every variant at each torch thread setting (2 is torch's default on a
2-core machine; 1 leaves the second core to the plain loader's decoding workers, its best setting
here). With several sizes a summary prints, per setting, each size's epoch wall time (loading +
training pass; the cold run's includes the decode-once pass) over the plain loader's at the same
setting, the cached epoch over the cold one, the same two ratios with each epoch's validation
pass added (``+val``: medfuse's reads the cache, the plain loader's decodes the split's files), and
peak RSS over the smallest size's; then each of medfuse and the plain loader at its own fastest
setting. ``stream: false`` runs only up to
``--memory-max`` (5000) images, the plain loader up to ``--plain-max`` (20000).

``--device cuda`` trains every variant on a GPU (both loaders pin their batches and copy them
without blocking; ``benchmarks/gpu_check.sh`` runs it).

``--torchrun N`` instead compares one process with ``medfuse train --nproc N`` (each run on an
empty cache of its own): per rank, the files its stream pass decoded, the cache rows it read, the
training samples it read per epoch, and its peak RSS (the rank process and its largest
DataLoader worker), from the package's training record and ``metrics.jsonl``.

    python benchmarks/scale.py --n 1000 --torchrun 2 [--kill]

``--kill`` then runs the N processes once more on their warm cache, SIGKILLs rank 1 after its
first mid-epoch checkpoint (every run checkpoints about five times an epoch), lets torchrun
restart the ranks (``--max-restarts 1``) and compares the resumed run with the uninterrupted one:
the global sample order of every epoch, the samples per rank, the validation loss and weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 224


def make_data(root: Path, n: int) -> Path:
    """N grey PNGs (brighter on average for the positive class) and a CSV: label, image, age,
    marker, split (80% train, 20% val)."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        y = int(rng.random() < 0.4)
        base = rng.normal(100 + 30 * y, 35, (SIZE // 8, SIZE // 8))
        px = np.kron(base, np.ones((8, 8))) + rng.normal(0, 10, (SIZE, SIZE))
        Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), mode="L").save(
            root / "img" / f"{i}.png"
        )
        rows.append(
            {
                "id": f"s{i}",
                "label": y,
                "image": f"img/{i}.png",
                "age": round(50 + 10 * rng.normal() + 4 * y, 1),
                "marker": round(rng.normal(y, 1.0), 3),
                "split": "val" if i % 5 == 0 else "train",
            }
        )
    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    return root / "cases.csv"


def spec_for(csv: Path, stream: bool, workers: int, stem: int = 4) -> dict:
    return {
        "name": "scale",
        "task": {"type": "binary"},
        "data": {
            "source": f"manifest:{csv}",
            "options": {"split_column": "split"},
            "stream": stream,
            "workers": workers,
        },
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [SIZE, SIZE]},
            "clinical": {"kind": "tabular", "columns": ["age", "marker"]},
        },
        "branches": {
            "image": {
                "type": "cnn",
                "width": 8,
                "depth": 2,
                "stem_stride": stem,
                "out_features": 8,
            },
            "clinical": {"type": "mlp", "hidden": 8, "out_features": 4},
        },
        "head": {"hidden": 16},
        "train": {
            "epochs": 1,
            "batch_size": 32,
            "lr": 0.003,
            "early_stopping": None,
            "stages": ["end_to_end"],
            "keep": "last",
        },
        "threshold": {"method": "youden"},
    }


def run_medfuse(
    csv: Path, stream: bool, workers: int, out: Path, stem: int, device: str = "cpu"
) -> dict:
    """``medfuse.train``'s steps, timed: load (and for streams, the pass), then the fit pipeline
    (1 epoch, validation, threshold, val metrics); no package is written."""
    from medfuse.core.spec import parse_spec
    from medfuse.distributed.strategies import start_session
    from medfuse.training.pipeline import prepare_data, run_fit

    t0 = time.perf_counter()
    spec, bundle = prepare_data(parse_spec(spec_for(csv, stream, workers, stem)))
    prepare = time.perf_counter() - t0
    info = bundle.info.get("stream") or {}
    epochs: list[dict] = []
    session = start_session(spec, device)
    run_fit(spec, bundle, session, workdir=out, progress=False, on_epoch=epochs.append)
    rec = epochs[0]
    return {
        "prepare_s": prepare,
        "epoch_s": rec["data_wait_s"] + rec["compute_s"],
        "data_wait_s": rec["data_wait_s"],
        "samples_per_s": rec["samples_per_s"],
        "val_s": rec["val_s"],
        "total_s": time.perf_counter() - t0,
        "decoded": sum((info.get("decoded") or {}).values()),
        "cached": sum((info.get("cached") or {}).values()),
    }


def run_plain(csv: Path, workers: int, stem: int, device: str = "cpu") -> dict:
    """A plain lazy Dataset + DataLoader: decode, resize and normalise each PNG every epoch (on
    CUDA: pinned batches, copied without blocking, as medfuse's stream does)."""
    import pandas as pd
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from medfuse.core.spec import parse_spec
    from medfuse.models import build_model
    from medfuse.training.malloc import tune_malloc

    tune_malloc()  # the allocator medfuse's CPU training uses: the loaders compared, not malloc
    t0 = time.perf_counter()
    df = pd.read_csv(csv)
    base = csv.parent
    spec = parse_spec({**spec_for(csv, False, workers, stem), "task": {"type": "binary"}})
    spec = spec.model_copy(update={"task": spec.task.model_copy(update={"labels": ["0", "1"]})})
    tab = df[["age", "marker"]].to_numpy(np.float32)
    tab = (tab - tab.mean(0)) / tab.std(0)

    class Lazy(Dataset):
        def __init__(self, idx: np.ndarray) -> None:
            self.idx = idx

        def __len__(self) -> int:
            return len(self.idx)

        def __getitem__(self, i: int):
            r = int(self.idx[i])
            with Image.open(base / df["image"].iloc[r]) as im:
                im = im.convert("L").resize((SIZE, SIZE), Image.BILINEAR)
                x = np.asarray(im, np.float32)[None]
            x = (x - 110.0) / 40.0
            return x, tab[r], np.float32(df["label"].iloc[r])

    train_idx = np.flatnonzero(df["split"].to_numpy() == "train")
    val_idx = np.flatnonzero(df["split"].to_numpy() == "val")
    prepare = time.perf_counter() - t0
    torch.manual_seed(0)
    from medfuse.core.spec import complete_spec

    spec = complete_spec(spec, spec.modalities, ["0", "1"])
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = build_model(spec).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loader = DataLoader(
        Lazy(train_idx), batch_size=32, shuffle=True, num_workers=workers, pin_memory=cuda
    )
    t1 = time.perf_counter()
    wait, n = 0.0, 0
    model.train()
    it = iter(loader)
    while True:
        tw = time.perf_counter()
        try:
            x, c, y = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - tw
        x, c, y = (t.to(dev, non_blocking=cuda) for t in (x, c, y))
        ones = torch.ones(len(y), device=dev)
        logits = model({"image": x, "clinical": c}, {"image": ones, "clinical": ones})
        loss = loss_fn(logits[:, 0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    if cuda:
        torch.cuda.synchronize(dev)
    epoch = time.perf_counter() - t1
    t2 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        val = DataLoader(Lazy(val_idx), batch_size=256, num_workers=workers, pin_memory=cuda)
        for x, c, _ in val:
            x, c = x.to(dev, non_blocking=cuda), c.to(dev, non_blocking=cuda)
            ones = torch.ones(len(x), device=dev)
            model({"image": x, "clinical": c}, {"image": ones, "clinical": ones})
    val_s = time.perf_counter() - t2
    return {
        "prepare_s": prepare,
        "epoch_s": epoch,
        "data_wait_s": wait,
        "samples_per_s": n / epoch,
        "val_s": val_s,
        "total_s": time.perf_counter() - t0,
    }


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads[0])
    csv = Path(args.csv)
    if args.variant == "plain":
        res = run_plain(csv, args.workers, args.stem_stride, args.device)
    else:
        res = run_medfuse(
            csv,
            args.variant != "memory",
            args.workers,
            Path(args.tmp) / f"pkg-{args.variant}",
            args.stem_stride,
            args.device,
        )
    from medfuse.training.pipeline import peak_rss

    rss = peak_rss()
    res["rss_main_mib"], res["rss_workers_mib"] = rss["peak_rss_mib"], rss["workers_peak_rss_mib"]
    print("RESULT " + json.dumps(res), flush=True)


def checkpoint_every(n: int) -> int:
    """Steps between the torchrun runs' mid-epoch checkpoints (every run's: the killed one
    resumes from one): about five per epoch of 80% of ``n`` in global batches of 32."""
    return max(2, int(0.8 * n) // 32 // 5)


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, p in parents.items() if p == cur]
        out += kids
        todo += kids
    return out


def _kill_rank_after_checkpoint(proc: subprocess.Popen, ckpt: Path, killed: list[int]) -> None:
    """SIGKILL the first attempt's rank 1 as soon as its run's first mid-epoch checkpoint
    exists (torchrun then restarts the ranks, which resume from it)."""
    import signal

    while proc.poll() is None and not killed:
        if ckpt.exists():
            for child in _descendants(proc.pid):
                try:
                    raw = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                env = dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)
                if env.get("LOCAL_RANK") == "1" and env.get("TORCHELASTIC_RESTART_COUNT") == "0":
                    os.kill(child, signal.SIGKILL)
                    killed.append(child)
        time.sleep(0.02)


def run_train(
    csv: Path, tmp: Path, nproc: int, args: argparse.Namespace, *, kill: bool = False
) -> dict:
    """``medfuse train`` (``--nproc N`` when N > 1) on the streamed spec, on an empty cache
    (``kill``: the N-process run's warm one, rank 1 SIGKILLed after the first mid-epoch
    checkpoint, one restart allowed); what its package records per rank."""
    import threading

    import yaml

    name = f"{nproc}-killed" if kill else str(nproc)
    spec = spec_for(csv, True, args.workers, args.stem_stride)
    spec["train"]["checkpoint_every"] = checkpoint_every(args.n)
    cfg = tmp / f"spec-{name}.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    out = tmp / f"pkg-train-{name}"
    cmd = [sys.executable, "-m", "medfuse", "train", str(cfg), "--out", str(out), "--device"]
    cmd += [args.device, *(["--nproc", str(nproc)] if nproc > 1 else [])]
    cmd += ["--max-restarts", "1"] if kill else []
    env = {**os.environ, "MEDFUSE_CACHE_DIR": str(tmp / f"cache-{nproc}")}
    env["OMP_NUM_THREADS"] = str(args.threads[0])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed: list[int] = []
    if kill:
        ckpt = Path(f"{out}.train") / "checkpoint.pt"
        threading.Thread(
            target=_kill_rank_after_checkpoint, args=(proc, ckpt, killed), daemon=True
        ).start()
    text = proc.communicate()[0].decode(errors="replace")
    wall = time.perf_counter() - t0
    if proc.returncode or (kill and not killed):
        print(text[-6000:])
        raise SystemExit(f"medfuse train --nproc {nproc} failed" + (" (kill)" if kill else ""))
    meta = json.loads((out / "medfuse.json").read_text())["training"]
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ranks = meta["ranks"]
    for r in ranks:
        r["samples"] = [e["ranks"][r["rank"]]["samples"] for e in epochs]
    val = epochs[-1]["val"]
    return {
        "wall_s": wall,
        "ranks": ranks,
        "auroc": val.get("auroc"),
        "val_loss": epochs[-1]["val_loss"],
        "order": [e.get("order_sha256") for e in epochs],
        "out": str(out),
        "killed": killed,
        "resumed": [ln.strip() for ln in text.splitlines() if "resuming from" in ln],
    }


def torchrun_table(csv: Path, tmp: Path, args: argparse.Namespace) -> dict:
    rows = [(n, run_train(csv, tmp, n, args)) for n in (1, args.torchrun)]
    head = (
        f"{'run':>10s} {'rank':>4s} {'decoded':>7s} {'pass read':>9s} {'train samples/epoch':>19s} "
        f"{'RSS rank MiB':>12s} {'RSS worker MiB':>14s} {'wall s':>7s} {'val AUROC':>9s}"
    )
    print(
        f"\nN={args.n}, {SIZE}x{SIZE} grey PNG + 2 columns, cnn stem_stride {args.stem_stride}, "
        "1 epoch, global batch 32, stream: "
        f"true on an empty cache, {args.workers} workers per rank"
    )
    print(head)
    print("-" * len(head))
    for n, res in rows:
        for r in res["ranks"]:
            print(
                f"{f'nproc {n}':>10s} {r['rank']:4d} {r.get('decoded', 0):7d} "
                f"{r.get('cached', 0):9d} {'/'.join(map(str, r['samples'])):>19s} "
                f"{r['peak_rss_mib']:12.0f} {r['workers_peak_rss_mib']:14.0f} "
                f"{res['wall_s']:7.1f} {res['auroc']:9.4f}"
            )
    one, many = rows[0][1]["ranks"][0], rows[1][1]["ranks"]
    share = ", ".join(f"{sum(r['samples']) / sum(one['samples']):.3f}" for r in many)
    decoded = sum(r.get("decoded", 0) for r in many)
    rss = max(r["peak_rss_mib"] for r in many) / one["peak_rss_mib"]
    from safetensors.numpy import load_file

    w1 = load_file(str(Path(rows[0][1]["out"]) / "model.safetensors"))
    wn = load_file(str(Path(rows[1][1]["out"]) / "model.safetensors"))
    stats = ("running_mean", "running_var", "num_batches_tracked")  # batch norm's, not trained
    params = [k for k in w1 if not k.endswith(stats)]
    wdiff = max(float(np.abs(w1[k].astype(np.float64) - wn[k]).max()) for k in params)
    scale_ = max(float(np.abs(w1[k]).max()) for k in params)
    d_auc = abs(rows[0][1]["auroc"] - rows[1][1]["auroc"])
    print(
        f"training samples read per rank / one process: {share}; files decoded by all ranks: "
        f"{decoded} (one process: {one.get('decoded', 0)}); peak RSS of the largest rank / one "
        f"process: {rss:.2f}\n"
        f"result, {args.torchrun} processes vs 1: |val AUROC difference| {d_auc:.4f}, |val loss "
        f"difference| {abs(rows[0][1]['val_loss'] - rows[1][1]['val_loss']):.2e}, largest "
        f"parameter difference {wdiff:.2e} (largest parameter {scale_:.2f}; batch norm in training mode normalises each rank's share of a "
        "batch, so the runs are not equal bit for bit); the same global sample order in every "
        f"epoch (order_sha256): {rows[0][1]['order'] == rows[1][1]['order']}"
    )
    res = {"nproc": {str(n): dict(r) for n, r in rows}, "weight_diff": wdiff}
    if args.kill:
        res["killed"] = killed_run(csv, tmp, args, rows[1][1])
    return res


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.numpy import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max(float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wa)


def killed_run(csv: Path, tmp: Path, args: argparse.Namespace, ref: dict) -> dict:
    """The N-process run again, rank 1 SIGKILLed after its first mid-epoch checkpoint: torchrun
    restarts the ranks and they resume; compared with the uninterrupted N-process run."""
    got = run_train(csv, tmp, args.torchrun, args, kill=True)
    same_order = got["order"] == ref["order"]
    same_samples = [r["samples"] for r in got["ranks"]] == [r["samples"] for r in ref["ranks"]]
    wdiff = _max_diff(Path(got["out"]), Path(ref["out"]))
    print(
        f"\nkilled: rank 1 (pid {got['killed'][0]}) SIGKILLed after the first mid-epoch "
        f"checkpoint (every {checkpoint_every(args.n)} steps); torchrun restarted the ranks: "
        f"{got['resumed'][0] if got['resumed'] else 'NO RESUME LINE'}\n"
        f"vs the uninterrupted {args.torchrun}-process run: the same global sample order "
        f"(order_sha256) in every epoch: {same_order}; the same training samples per rank: "
        f"{same_samples}; |val loss difference| {abs(got['val_loss'] - ref['val_loss']):.2e}; "
        f"largest weight difference {wdiff:.2e}; wall {got['wall_s']:.1f} s"
    )
    return {**got, "same_order": same_order, "same_samples": same_samples, "weight_diff": wdiff}


NAMES = {
    "cold": "medfuse stream, cold cache",
    "cached": "medfuse stream, cached",
    "memory": "medfuse in memory (stream: false)",
    "plain": "plain Dataset+DataLoader",
}


def size_table(n: int, tmp: Path, args: argparse.Namespace) -> dict[str, dict]:
    """The variants on N generated images, each in its own process, at each ``--threads``
    setting; prints the table. Keys: ``<variant>@<threads>``."""
    t0 = time.perf_counter()
    csv = make_data(tmp / f"data-{n}", n)
    print(
        f"\n{n} PNGs {SIZE}x{SIZE} written in {time.perf_counter() - t0:.1f} s ({tmp})", flush=True
    )
    variants = ["cold", "cached"]
    variants += [] if args.skip_memory or n > args.memory_max else ["memory"]
    variants += [] if n > args.plain_max else ["plain"]
    keys = [f"{v}@{t}" for t in args.threads for v in variants]
    runs: dict[str, list[dict]] = {k: [] for k in keys}
    for r in range(args.repeat):  # interleaved: cold, cached, (memory once), plain; again
        for t in args.threads:
            cache = tmp / f"cache-{n}-{r}-{t}"  # each cold run starts on an empty cache
            env = {**os.environ, "MEDFUSE_CACHE_DIR": str(cache)}
            for v in variants:
                if v == "memory" and (r or t != args.threads[0]):
                    continue
                cmd = [sys.executable, __file__, "--variant", v, "--csv", str(csv)]
                cmd += ["--tmp", str(tmp), "--workers", str(args.workers), "--threads", str(t)]
                cmd += ["--stem-stride", str(args.stem_stride), "--device", args.device]
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                if p.returncode or not line:
                    print(p.stdout[-2000:], p.stderr[-4000:])
                    raise SystemExit(f"variant {v} ({t} threads) failed at N={n}")
                runs[f"{v}@{t}"].append(json.loads(line[-1][7:]))
            shutil.rmtree(cache, ignore_errors=True)
    # each variant's fastest run (epoch wall), with the largest peak RSS of its runs
    rows: dict[str, dict] = {}
    for k, got in runs.items():
        if not got:
            continue
        best = dict(min(got, key=lambda x: x["prepare_s"] + x["epoch_s"]))
        best["rss_main_mib"] = max(x["rss_main_mib"] for x in got)
        best["rss_workers_mib"] = max(x["rss_workers_mib"] for x in got)
        best["walls_s"] = [round(x["prepare_s"] + x["epoch_s"], 1) for x in got]
        rows[k] = best
    head = (
        f"{'variant':38s} {'threads':>7s} {'prepare s':>9s} {'epoch s':>8s} {'wait s':>7s} "
        f"{'val s':>6s} "
        f"{'img/s':>6s} {'total s':>8s} {'RSS main MiB':>12s} {'RSS worker MiB':>14s} "
        f"{'decoded':>7s}"
    )
    print(
        f"N={n}, {SIZE}x{SIZE} grey PNG + 2 columns, cnn stem_stride {args.stem_stride}, 1 epoch, "
        f"batch 32, {args.workers} workers, device {args.device}; the fastest of {args.repeat} "
        "run(s) of each variant "
        "(all: walls s), the largest peak RSS of its runs"
    )
    print(head)
    print("-" * len(head))
    for k, r in rows.items():
        v, t = k.split("@")
        print(
            f"{NAMES[v]:38s} {t:>7s} {r['prepare_s']:9.1f} {r['epoch_s']:8.1f} "
            f"{r['data_wait_s']:7.1f} {r['val_s']:6.2f} {r['samples_per_s']:6.0f} {r['total_s']:8.1f} "
            f"{r['rss_main_mib']:12.0f} {r['rss_workers_mib']:14.0f} "
            f"{r.get('decoded', '-')!s:>7s}  walls s {', '.join(map(str, r['walls_s']))}",
            flush=True,
        )
    shutil.rmtree(tmp / f"data-{n}", ignore_errors=True)
    return rows


def wall(r: dict) -> float:
    """An epoch's wall: loading (the cold run's includes the decode-once pass) + training pass."""
    return float(r["prepare_s"] + r["epoch_s"])


def wall_val(r: dict) -> float:
    """An epoch's wall with its validation pass: :func:`wall` + reading the validation split
    and the model on it (medfuse: the trainer's ``val_s``, metrics included; the plain loader:
    its validation loop, which decodes the split's files)."""
    return wall(r) + float(r["val_s"])


def summary(results: dict[int, dict[str, dict]], threads: list[int]) -> None:
    """Side by side over N, per torch thread setting: an epoch's wall against the plain loader's
    at the same setting, and peak RSS against the smallest N's; then each loader at its own best
    setting (the fastest of the thread settings, for each of medfuse and the plain loader)."""
    first = min(results)
    head = (
        f"{'images':>7s} {'threads':>7s} {'cold epoch s':>12s} {'cached s':>9s} {'plain s':>8s} "
        f"{'cold/plain':>10s} {'cached/plain':>12s} {'cached/cold':>11s} "
        f"{'+val: cold/plain':>16s} {'cached/plain':>12s} "
        f"{'RSS main MiB':>12s} {'worker MiB':>10s} {'RSS vs ' + str(first):>12s}"
    )
    print(
        "\nmedfuse stream vs plain, one epoch each (epoch s = loading + training pass; +val: "
        "with the epoch's validation pass)"
    )
    print(head)
    print("-" * len(head))

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}"

    def peak(rows: dict[str, dict], t: int, key: str) -> float:
        return max(rows[f"cold@{t}"][key], rows[f"cached@{t}"][key])

    for t in threads:
        base = results[first]
        for n, rows in sorted(results.items()):
            cold, cached, plain = rows[f"cold@{t}"], rows[f"cached@{t}"], rows.get(f"plain@{t}")
            rss, work = peak(rows, t, "rss_main_mib"), peak(rows, t, "rss_workers_mib")
            rss0, work0 = peak(base, t, "rss_main_mib"), peak(base, t, "rss_workers_mib")
            print(
                f"{n:7d} {t:7d} {wall(cold):12.1f} {wall(cached):9.1f} "
                f"{(f'{wall(plain):.1f}' if plain else '-'):>8s} "
                f"{(ratio(wall(cold), wall(plain)) if plain else '-'):>10s} "
                f"{(ratio(wall(cached), wall(plain)) if plain else '-'):>12s} "
                f"{ratio(wall(cached), wall(cold)):>11s} "
                f"{(ratio(wall_val(cold), wall_val(plain)) if plain else '-'):>16s} "
                f"{(ratio(wall_val(cached), wall_val(plain)) if plain else '-'):>12s} "
                f"{rss:12.0f} {work:10.0f} "
                f"{ratio(rss, rss0) + ' / ' + ratio(work, work0):>12s}"
            )
    print("RSS vs: the largest main / worker peak RSS of the two stream runs over the smallest N's")
    if len(threads) < 2:
        return
    print("\neach at its best thread setting (the fastest epoch of each over --threads)")
    head = (
        f"{'images':>7s} {'cold s (threads)':>16s} {'cached s (threads)':>18s} "
        f"{'plain s (threads)':>17s} {'cold/plain':>10s} {'cached/plain':>12s} "
        f"{'+val: cold/plain':>16s} {'cached/plain':>12s}"
    )
    print(head)
    print("-" * len(head))
    for n, rows in sorted(results.items()):
        best, best_val = {}, {}
        for v in ("cold", "cached", "plain"):
            got = [(wall(rows[f"{v}@{t}"]), t) for t in threads if f"{v}@{t}" in rows]
            best[v] = min(got) if got else None
            got = [(wall_val(rows[f"{v}@{t}"]), t) for t in threads if f"{v}@{t}" in rows]
            best_val[v] = min(got) if got else None
        cold, cached, plain = best["cold"], best["cached"], best["plain"]
        cold_v, cached_v, plain_v = best_val["cold"], best_val["cached"], best_val["plain"]
        assert cold is not None and cached is not None
        assert cold_v is not None and cached_v is not None
        print(
            f"{n:7d} {f'{cold[0]:.1f} ({cold[1]})':>16s} {f'{cached[0]:.1f} ({cached[1]})':>18s} "
            f"{(f'{plain[0]:.1f} ({plain[1]})' if plain else '-'):>17s} "
            f"{(ratio(cold[0], plain[0]) if plain else '-'):>10s} "
            f"{(ratio(cached[0], plain[0]) if plain else '-'):>12s} "
            f"{(ratio(cold_v[0], plain_v[0]) if plain_v else '-'):>16s} "
            f"{(ratio(cached_v[0], plain_v[0]) if plain_v else '-'):>12s}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000], help="images (one or more sizes)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[2],
        help="torch threads per process: one or more settings, each run for every variant "
        "(2: torch's default on a 2-core machine; 1 leaves a core to the plain loader's workers)",
    )
    ap.add_argument(
        "--stem-stride",
        type=int,
        default=4,
        help="the image CNN's stem stride: 4 (default) keeps the model cheap, so the epoch "
        "measures the data path as on a GPU; 1 is the full-resolution CNN of the first slice",
    )
    ap.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where every variant trains: cpu (default) or cuda (pinned batches, copied without "
        "blocking; the torchrun runs take cuda:LOCAL_RANK)",
    )
    ap.add_argument("--skip-memory", action="store_true", help="leave out stream: false")
    ap.add_argument(
        "--memory-max", type=int, default=5000, help="no stream: false run above this N"
    )
    ap.add_argument("--plain-max", type=int, default=20000, help="no plain loader above this N")
    ap.add_argument("--json", type=Path, help="also write every measurement to this file")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each variant per size, interleaved; the table keeps each one's fastest",
    )
    ap.add_argument(
        "--torchrun",
        type=int,
        metavar="N",
        help="compare one process with N torchrun processes (per-rank reads and memory)",
    )
    ap.add_argument(
        "--kill",
        action="store_true",
        help="with --torchrun: run the N processes again, SIGKILL rank 1 mid-epoch and compare",
    )
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--csv", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        child(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="medfuse-scale-"))
    try:
        if args.torchrun:
            for n in args.n:
                t0 = time.perf_counter()
                csv = make_data(tmp / f"data-{n}", n)
                print(f"{n} PNGs {SIZE}x{SIZE} written in {time.perf_counter() - t0:.1f} s")
                args_n = argparse.Namespace(**{**vars(args), "n": n})
                out = torchrun_table(csv, tmp, args_n)
                if args.json:
                    args.json.write_text(json.dumps(out, indent=1))
            return
        results = {n: size_table(n, tmp, args) for n in args.n}
        if args.json:
            args.json.write_text(json.dumps({str(n): r for n, r in results.items()}, indent=1))
        if len(results) > 1 or any(k.startswith("plain") for k in results[min(results)]):
            summary(results, args.threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
