"""Distributed training with real torch.distributed processes on CPU (gloo): ddp equals one
process, two "nodes" meet through c10d rendezvous, fsdp shards, branch/hybrid placement gives the
single-device loss, and a worker killed with SIGKILL is restarted and resumes from its checkpoint.

Equality with one process needs the same arithmetic: dropout 0, no augmentation, and no batch
statistics that depend on how the global batch is split (the image modality is absent in every
sample, so its BatchNorm sees identical samples; the tabular MLP has no hidden layer)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from medfuse.core.errors import SpecError

pytestmark = pytest.mark.distributed

#: final weights of 2 processes vs 1 (float32 sums in another order); measured ~3e-8
TOL = 1e-5

SPEC: dict[str, Any] = {
    "name": "tiny-dist",
    "task": {"type": "binary"},
    "data": {
        "source": "synthetic",
        "options": {
            "n_train": 192,
            "n_val": 48,
            "n_test": 48,
            "image_size": 16,
            "signal_length": 32,
            "signal_channels": 2,
            "missing": {"image": 1.0},
        },
    },
    "branches": {
        "image": {"type": "cnn", "width": 4, "depth": 2, "out_features": 8, "dropout": 0.0},
        "signal": {"type": "lstm", "hidden": 8, "out_features": 8},
        "tabular": {"type": "mlp", "hidden": 8, "layers": 0, "out_features": 4, "dropout": 0.0},
    },
    "fusion": {"type": "concat"},
    "head": {"hidden": 8, "dropout": 0.0},
    "train": {
        "batch_size": 16,
        "lr": 0.01,
        "early_stopping": None,
        "stages": [
            {"name": "branches", "epochs": 2},
            {"name": "fusion", "epochs": 1},
            {"name": "finetune", "epochs": 1},
        ],
    },
}
PLACEMENT = ["--set", "train.placement.signal=cpu", "--set", "train.placement.fusion=cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(spec: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def _weights(pkg: Path) -> dict[str, torch.Tensor]:
    return load_file(str(pkg / "model.safetensors"))


def _maxdiff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _medfuse(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medfuse", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The worker processes each use one thread; so does this one while it trains (two
    threads per process on a shared 2-core machine mostly wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process, global batch 16: the weights every strategy must reproduce."""
    from medfuse.api import prepare_data, seed_everything, train
    from medfuse.core.spec import parse_spec
    from medfuse.models import build_model

    res = train(
        copy.deepcopy(SPEC),
        out=tmp_path_factory.mktemp("ref") / "single",
        device="cpu",
        progress=False,
    )
    spec, _ = prepare_data(parse_spec(copy.deepcopy(SPEC)))
    seed_everything(spec.train.seed)
    init = {k: v.detach().clone() for k, v in build_model(spec).state_dict().items()}
    return {"package": res.package, "weights": _weights(res.package), "init": init, "res": res}


# -- several processes ------------------------------------------------------------------------


def test_ddp_two_processes_match_one_process(reference, tmp_path) -> None:
    cfg = _write(SPEC, tmp_path / "spec.yaml")
    out = tmp_path / "ddp"
    log = _finish(_medfuse("train", str(cfg), "--out", str(out), "--device", "cpu", "--nproc", "2"))
    assert "rank 0/2 on cpu, strategy ddp" in log
    assert "rank 1/2" not in log  # only rank 0 logs
    trained = _weights(out)
    moved = _maxdiff(trained, reference["init"])
    assert moved > 1e-3  # training changed the weights, so equality below means something
    assert _maxdiff(trained, reference["weights"]) < TOL
    meta = json.loads((out / "medfuse.json").read_text())
    assert meta["training"]["strategy"] == "ddp" and meta["training"]["world_size"] == 2
    assert meta["spec"]["train"]["batch_size"] == 16  # the global batch is what is recorded
    # validation metrics are those one process computes on the same data
    ref = reference["res"].metrics["val"]
    assert meta["threshold"]["value"] == pytest.approx(
        json.loads((reference["package"] / "medfuse.json").read_text())["threshold"]["value"],
        abs=1e-6,
    )
    got = json.loads((out / "metrics.json").read_text())["val"]
    assert got["auroc"] == pytest.approx(ref["auroc"], abs=1e-6)


def test_ddp_ensemble_matches_one_process_ensemble(tmp_path) -> None:
    """Each member of an ensemble is trained by the process group in turn (the group lives on
    until the last one); the members equal those one process trains."""
    from medfuse.api import train

    spec = {**copy.deepcopy(SPEC), "ensemble": 2}
    one = train(copy.deepcopy(spec), out=tmp_path / "one", device="cpu", progress=False)
    cfg = _write(spec, tmp_path / "spec.yaml")
    out = tmp_path / "ddp"
    _finish(_medfuse("train", str(cfg), "--out", str(out), "--device", "cpu", "--nproc", "2"))
    trained, ref = _weights(out), _weights(one.package)
    assert {k.split(".")[1] for k in trained} == {"0", "1"}
    assert _maxdiff(trained, ref) < TOL
    meta = json.loads((out / "medfuse.json").read_text())
    assert [m["seed"] for m in meta["training"]["members"]] == [0, 1000]
    assert meta["training"]["world_size"] == 2


def test_two_nodes_rendezvous_hybrid(reference, tmp_path, capfd, monkeypatch) -> None:
    """Two agents ("nodes") on localhost meet at a c10d endpoint: one is ``torchrun -m medfuse
    train`` by hand, the other ``medfuse train --nnodes 2`` (this process is its agent).
    ``hybrid`` = ddp across the nodes + branch placement inside each process."""
    from medfuse.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = _write(SPEC, tmp_path / "spec.yaml")
    out = tmp_path / "nodes"
    endpoint = f"127.0.0.1:{_free_port()}"
    common = ["--out", str(out), "--device", "cpu", "--strategy", "hybrid", *PLACEMENT]
    other = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            "--node-rank=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            "-m",
            "medfuse",
            "train",
            str(cfg),
            *common,
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        code = main(
            [
                "train",
                str(cfg),
                "--nproc",
                "1",
                "--nnodes",
                "2",
                "--node-rank",
                "0",
                "--rdzv-endpoint",
                endpoint,
                *common,
            ]
        )
    except BaseException:
        other.kill()  # do not wait for its rendezvous to time out
        raise
    other_log = _finish(other)
    assert code == 0
    text = other_log + "".join(capfd.readouterr())
    assert "rank 0/2 on cpu, strategy hybrid" in text
    meta = json.loads((out / "medfuse.json").read_text())
    assert meta["training"]["world_size"] == 2
    assert meta["training"]["placement"] == {
        "image": "cpu",
        "signal": "cpu",
        "tabular": "cpu",
        "fusion": "cpu",
    }
    import medfuse

    medfuse.load(out, device="cpu")  # a valid package
    assert _maxdiff(_weights(out), reference["weights"]) < TOL


def test_fsdp_two_processes(reference, tmp_path, monkeypatch) -> None:
    """FSDP2 fully_shard over 2 processes; checkpoints and package hold full tensors."""
    from medfuse.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = _write(SPEC, tmp_path / "spec.yaml")
    out = tmp_path / "fsdp"
    # this process is torchrun's agent (saves one interpreter start)
    code = main(
        [
            "train",
            str(cfg),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--nproc",
            "2",
            "--strategy",
            "fsdp",
        ]
    )
    assert code == 0
    assert _maxdiff(_weights(out), reference["weights"]) < TOL


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


@contextlib.contextmanager
def _kill_after(ckpt: Path, pid: int | None = None) -> Iterator[list[int]]:
    """While the block runs, SIGKILL ``pid`` (by default the first attempt's rank 1, this process
    being torchrun's agent) as soon as ``ckpt`` exists (its first mid-epoch checkpoint); yields
    the killed pids."""
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.is_set() and not killed:
            if ckpt.exists():
                for child in [pid] if pid is not None else _children(os.getpid()):
                    env = _environ(child)
                    if pid is not None or (
                        env.get("LOCAL_RANK") == "1"
                        and env.get("TORCHELASTIC_RESTART_COUNT") == "0"
                    ):
                        os.kill(child, signal.SIGKILL)
                        killed.append(child)
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        yield killed
    finally:
        done.set()
        t.join()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ranks_end_with_a_launcher_killed_by_sigkill(tmp_path) -> None:
    """``kill -9`` of ``medfuse train --nproc 2`` (torchrun's agent) left both ranks training in
    sessions of their own, writing checkpoints into the work folder a ``--resume`` then shared:
    they now die with it."""
    spec = copy.deepcopy(SPEC)
    spec["train"].update(checkpoint_every=2, stages=[{"name": "end_to_end", "epochs": 500}])
    cfg = _write(spec, tmp_path / "spec.yaml")
    ckpt = tmp_path / "run.train" / "checkpoint.pt"
    args = ["train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu", "--nproc", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "medfuse", *args],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        ranks = [c for c in _children(proc.pid) if _environ(c).get("LOCAL_RANK") is not None]
        assert ckpt.exists() and len(ranks) == 2, "the ranks did not start training"
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's process group, as `kill -9 -- -PID`
        proc.wait(timeout=30)
        deadline = time.time() + 20
        while any(_alive(r) for r in ranks) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(r) for r in ranks), "a rank outlived its launcher"
    finally:
        for pid in [proc.pid, *_children(proc.pid)]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_sigkilled_worker_is_restarted_and_resumes(
    strategy, reference, tmp_path, capfd, monkeypatch
) -> None:
    """SIGKILL rank 1 right after the first mid-epoch checkpoint: torchrun restarts the workers,
    they resume from rank 0's checkpoint, and the run ends with a package that loads and holds
    the weights of an uninterrupted run (resume is exact)."""
    from medfuse.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = copy.deepcopy(SPEC)
    spec["train"]["checkpoint_every"] = 2  # 12 steps per epoch and rank
    cfg = _write(spec, tmp_path / "spec.yaml")
    out = tmp_path / "killed"
    ckpt = tmp_path / "killed.train" / "checkpoint.pt"
    with _kill_after(ckpt) as killed:
        code = main(
            [
                "train",
                str(cfg),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--nproc",
                "2",
                "--max-restarts",
                "1",
                "--strategy",
                strategy,
            ]
        )
    log = capfd.readouterr()
    text = log.out + log.err
    assert killed, "the run ended before the killer saw a checkpoint"
    assert code == 0, text[-4000:]
    assert "(restart 1)" in text  # torchrun started the workers again
    resumed = [ln for ln in text.splitlines() if "resuming from" in ln]
    assert resumed, text[-4000:]
    # it resumed where the last checkpoint was, not from scratch: "stage 0, epoch E, step S"
    words = resumed[0].replace(",", "").split()
    where = [int(words[words.index(k) + 1]) for k in ("stage", "epoch", "step")]
    assert where != [0, 0, 0]
    import medfuse

    pred = medfuse.load(out, device="cpu")
    assert pred.meta["training"]["world_size"] == 2
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = {(r["stage"], r["epoch"]) for r in records}
    assert epochs == {("branches", 1), ("branches", 2), ("fusion", 1), ("finetune", 1)}
    assert not (tmp_path / "killed.train").exists()  # the workdir is removed once packaged
    # resume is exact: the weights of an uninterrupted run
    assert _maxdiff(_weights(out), reference["weights"]) < TOL


# -- streamed manifest data (issue 18) ---------------------------------------------------------

#: images in the streamed manifest (80% train: 192, an even split over 2 ranks)
N_STREAM = 240


@pytest.fixture(scope="module")
def stream_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """N_STREAM 16-px grey PNGs + 2 clinical columns (a manifest with a split column), the spec
    that streams it (``data.stream: true``), and one process's run of it (own cache)."""
    import pandas as pd

    from medfuse.api import train
    from medfuse.data.examples import write_png

    root = tmp_path_factory.mktemp("streamed")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_STREAM):
        y = int(rng.random() < 0.4)
        px = np.clip(rng.normal(90 + 50 * y, 40, (16, 16)), 0, 255).astype(np.uint8)
        write_png(root / "img" / f"{i}.png", px)
        rows.append(
            {
                "label": y,
                "image": f"img/{i}.png",
                "age": 50 + 10 * rng.normal() + 5 * y,
                "marker": rng.normal(y, 1.0),
                "split": "val" if i % 5 == 0 else "train",
            }
        )
    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    spec = {
        "name": "tiny-stream",
        "task": {"type": "binary"},
        "data": {
            "source": f"manifest:{root / 'cases.csv'}",
            "options": {"split_column": "split"},
            "stream": True,
            "workers": 0,
        },
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [16, 16]},
            "clinical": {"kind": "tabular", "columns": ["age", "marker"]},
        },
        "branches": {
            "image": {"type": "cnn", "width": 4, "depth": 1, "out_features": 4},
            "clinical": {"type": "mlp", "hidden": 8, "layers": 0, "out_features": 4},
        },
        "fusion": {"type": "concat"},
        "head": {"hidden": 8, "dropout": 0.0},
        # the fusion stage: the branches run in eval mode, so no batch statistics depend on how
        # the global batch is split over the ranks (with batch norm in training mode each rank
        # normalises its half-batch, as DDP without SyncBatchNorm does: not one process's sums)
        "train": {
            "batch_size": 16,
            "lr": 0.01,
            "early_stopping": None,
            "keep": "last",
            "stages": [{"name": "fusion", "epochs": 2}],
        },
    }
    # the spec as the workers read it (the YAML's key order is the branches' order, which sets
    # the initial weights and the layout of the fused features)
    cfg = _write(spec, root / "spec.yaml")
    old = os.environ.get("MEDFUSE_CACHE_DIR")
    os.environ["MEDFUSE_CACHE_DIR"] = str(root / "cache-one")
    try:
        train(cfg, out=root / "one", device="cpu", progress=False)
    finally:
        if old is None:
            os.environ.pop("MEDFUSE_CACHE_DIR")
        else:
            os.environ["MEDFUSE_CACHE_DIR"] = old
    return {"root": root, "spec": spec, "cfg": cfg, "one": root / "one"}


def _records(pkg: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (pkg / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stream_ddp(stream_data) -> dict[str, Any]:
    """The streamed spec trained by 2 torchrun processes on an empty cache of their own."""
    root, cfg = stream_data["root"], stream_data["cfg"]
    out = root / "ddp"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medfuse",
            "train",
            str(cfg),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--nproc",
            "2",
        ],
        env={**_env(), "MEDFUSE_CACHE_DIR": str(root / "cache-ddp")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return {"log": _finish(proc), "out": out}


@pytest.mark.slow
def test_streamed_ranks_each_read_their_half_and_match_one_process(stream_data, stream_ddp) -> None:
    """Under torchrun each rank trains on its half of every epoch and validates its half of
    the validation split (counted), the files are decoded once between the two ranks (one builds
    the cache, the other waits and reads nothing), and the weights and validation metrics equal
    one process's (within TOL; AUROC within 1e-6)."""
    out, one = stream_ddp["out"], stream_data["one"]
    meta = json.loads((out / "medfuse.json").read_text())["training"]
    assert meta["world_size"] == 2
    ranks = meta["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert sorted(r["decoded"] for r in ranks) == [0, N_STREAM]  # each file decoded once
    waited = next(r for r in ranks if r["decoded"] == 0)
    assert waited["recorded"] and waited["cached"] == 0  # it read nothing in the pass
    assert [r["pass_workers"] for r in ranks] == [0, 0]  # data.workers 0: decoded in-process
    n_train, n_val = N_STREAM - N_STREAM // 5, N_STREAM // 5
    for rec in _records(out):
        shares = rec["ranks"]
        assert [s["samples"] for s in shares] == [n_train // 2, n_train // 2]
        assert [s["val_samples"] for s in shares] == [n_val // 2, n_val // 2]  # sharded too
        assert shares[0]["order_sha256"] != shares[1]["order_sha256"]  # different halves
    single = _records(one)
    assert [s["samples"] for r in single for s in r["ranks"]] == [n_train, n_train]
    assert [s["val_samples"] for r in single for s in r["ranks"]] == [n_val, n_val]
    trained = _weights(out)
    assert _maxdiff(trained, _weights(one)) < TOL
    init = {k: v for k, v in trained.items() if k.startswith(("fusion", "head"))}
    assert init, "the fusion stage trains the fusion and head"
    got = json.loads((out / "metrics.json").read_text())["val"]
    ref = json.loads((one / "metrics.json").read_text())["val"]
    assert got["auroc"] == pytest.approx(ref["auroc"], abs=1e-6)


@pytest.mark.slow
def test_streamed_rank_killed_mid_epoch_restarts_with_the_same_sample_order(
    stream_data, stream_ddp, tmp_path, capfd, monkeypatch
) -> None:
    """SIGKILL rank 1 after its first mid-epoch checkpoint (streamed data, warm cache): torchrun
    restarts both ranks, they resume mid-epoch, and every epoch's per-rank sample order (the
    digest of the positions trained, carried across the restart by the checkpoint) and the final
    weights are those of the uninterrupted run."""
    from medfuse.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(stream_data["root"] / "cache-ddp"))
    spec = copy.deepcopy(stream_data["spec"])
    spec["train"]["checkpoint_every"] = 2  # 12 steps per epoch and rank
    cfg = _write(spec, tmp_path / "spec.yaml")
    out = tmp_path / "killed"
    with _kill_after(tmp_path / "killed.train" / "checkpoint.pt") as killed:
        code = main(
            [
                "train",
                str(cfg),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--nproc",
                "2",
                "--max-restarts",
                "1",
            ]
        )
    text = "".join(capfd.readouterr())
    assert killed and code == 0, text[-4000:]
    assert "(restart 1)" in text
    resumed = [ln for ln in text.splitlines() if "resuming from" in ln]
    assert resumed and "step 0" not in resumed[0], text[-4000:]  # mid-epoch, not from scratch
    ref = _records(stream_ddp["out"])
    got = _records(out)
    assert [r["ranks"] for r in got] == [r["ranks"] for r in ref]
    assert [r["order_sha256"] for r in got] == [r["order_sha256"] for r in ref]
    # the partial epoch's loss is summed over the ranks: the epoch's mean is the whole epoch's
    assert [r["train_loss"] for r in got] == pytest.approx([r["train_loss"] for r in ref], rel=1e-6)
    assert _maxdiff(_weights(out), _weights(stream_ddp["out"])) < TOL


@pytest.mark.slow
def test_streamed_global_order_digest_is_the_same_for_one_and_two_processes(
    stream_data, stream_ddp
) -> None:
    """Each epoch's ``order_sha256`` digests its global batches in order (each rank computes it
    alone): on data that leaves no padding or trailing batch, 2 processes and 1 give the same
    digest in every epoch, while their per-rank digests differ."""
    one, two = _records(stream_data["one"]), _records(stream_ddp["out"])
    assert [(r["stage"], r["epoch"]) for r in one] == [(r["stage"], r["epoch"]) for r in two]
    digests = [r["order_sha256"] for r in one]
    assert [r["order_sha256"] for r in two] == digests
    assert len(set(digests)) == len(digests)  # each epoch is shuffled anew
    assert [r["ranks"][0]["order_sha256"] for r in one] == digests  # one rank: the same batches
    assert all(s["order_sha256"] not in digests for r in two for s in r["ranks"])


@pytest.mark.slow
@pytest.mark.parametrize("before, after, strategy", [(2, 1, "ddp"), (1, 2, "ddp"), (2, 1, "fsdp")])
def test_streamed_run_killed_mid_epoch_resumes_exactly_with_another_number_of_processes(
    before, after, strategy, stream_data, stream_ddp, tmp_path, capfd, caplog, monkeypatch
) -> None:
    """A run of ``before`` processes SIGKILLed after its first mid-epoch checkpoint (2: one rank
    killed, ``--max-restarts 0`` so the job fails) is resumed with ``after`` processes: the
    remaining global batches are re-sharded, so every epoch's global order digest, train loss
    and the final weights are those of the uninterrupted runs (1 and 2 processes agree here).
    With ``fsdp`` the checkpoint holds full tensors (its optimizer state too), which one process
    (training as ``single``) loads as they are; 2 re-shard them (tested 1 -> 2 as well, 14 s)."""
    from medfuse.cli import main

    caplog.set_level(logging.INFO, logger="medfuse")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MEDFUSE_CACHE_DIR", str(stream_data["root"] / "cache-ddp"))
    spec = copy.deepcopy(stream_data["spec"])
    spec["train"]["checkpoint_every"] = 2  # 12 global batches per epoch
    cfg = _write(spec, tmp_path / "spec.yaml")
    out = tmp_path / "killed"
    args = ["train", str(cfg), "--out", str(out), "--device", "cpu", "--strategy", strategy]
    ckpt = tmp_path / "killed.train" / "checkpoint.pt"
    if before == 1:
        proc = _medfuse(*args)
        with _kill_after(ckpt, proc.pid) as killed:
            proc.communicate(timeout=240)
    else:
        with _kill_after(ckpt) as killed:
            assert main([*args, "--nproc", "2", "--max-restarts", "0"]) != 0
    assert killed, "the run ended before the killer saw a checkpoint"
    assert torch.load(ckpt, weights_only=True)["world"] == before
    capfd.readouterr()
    code = main([*args, "--resume", *(["--nproc", str(after)] if after > 1 else [])])
    text = "".join(capfd.readouterr()) + caplog.text
    assert code == 0, text[-4000:]
    many = "es" if before > 1 else ""
    assert (
        f"resuming a checkpoint written by {before} process{many} with {after}: the remaining "
        "global batches of fusion epoch 1 (step "
    ) in text, text[-4000:]
    got, one, two = _records(out), _records(stream_data["one"]), _records(stream_ddp["out"])
    assert [r["order_sha256"] for r in got] == [r["order_sha256"] for r in one]
    assert [r["order_sha256"] for r in got] == [r["order_sha256"] for r in two]
    assert [r.get("resumed_from_world") for r in got] == [before, None]
    n_train = N_STREAM - N_STREAM // 5
    assert [[s["samples"] for s in r["ranks"]] for r in got] == [[n_train // after] * after] * 2
    assert [r["train_loss"] for r in got] == pytest.approx([r["train_loss"] for r in one], rel=1e-6)
    assert _maxdiff(_weights(out), _weights(stream_data["one"])) < TOL
    assert _maxdiff(_weights(out), _weights(stream_ddp["out"])) < TOL


# -- one process ------------------------------------------------------------------------------


def _batch(spec, n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, *spec.modalities[m].shape, generator=g) for m in spec.modalities}
    masks = {m: torch.ones(n) for m in spec.modalities}
    y = (torch.rand(n, generator=g) > 0.5).float()
    return inputs, masks, y


def _loss_and_grads(module, model, inputs, masks, y):
    from torch.nn.functional import binary_cross_entropy_with_logits

    model.zero_grad(set_to_none=True)
    logits, aux = module(inputs, masks, aux="detached")
    loss = binary_cross_entropy_with_logits(logits.squeeze(1), y)
    loss = loss + sum(binary_cross_entropy_with_logits(a.squeeze(1), y) for a in aux.values())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.fixture
def tiny_model():
    from medfuse.api import prepare_data
    from medfuse.core.spec import parse_spec
    from medfuse.models import build_model

    d = copy.deepcopy(SPEC)
    d["data"]["options"].pop("missing")
    spec, _ = prepare_data(parse_spec(d))
    torch.manual_seed(0)
    return spec, build_model(spec)


def test_branch_placement_gives_the_single_device_loss(tiny_model) -> None:
    from medfuse.distributed import BranchParallel, Placement, resolve_placement

    spec, model = tiny_model
    placed = copy.deepcopy(model)
    devices = resolve_placement(
        {"image": "cuda:0", "signal": "cuda:1", "fusion": "cuda:0"},  # on CPU: all map to cpu
        list(spec.modalities),
        torch.device("cpu"),
    )
    assert set(devices) == {"image", "signal", "tabular", "fusion"}
    wrapped = BranchParallel(placed, Placement(devices))
    batch = _batch(spec)
    loss0, g0 = _loss_and_grads(model, model, *batch)
    loss1, g1 = _loss_and_grads(wrapped, placed, *batch)
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    assert g0.keys() == g1.keys() and all(torch.allclose(g0[k], g1[k], atol=1e-6) for k in g0)
    # the plain forward of the placed model (validation, prediction) gives the same logits
    with torch.no_grad():
        assert torch.allclose(placed.eval()(batch[0], batch[1]), model.eval()(batch[0], batch[1]))


def test_hybrid_wrap_gives_the_single_device_loss(tiny_model) -> None:
    """DDP over a placed composite in a real (one-process) gloo group."""
    import torch.distributed as dist

    from medfuse.distributed.strategies import start_session

    spec, model = tiny_model
    d = spec.to_dict()
    d["train"].update(strategy="hybrid", placement={"signal": "cpu", "fusion": "cpu"})
    from medfuse.core.spec import parse_spec

    hspec = parse_spec(d)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        session = start_session(hspec, "cpu")
        assert session.strategy_name == "hybrid" and session.launched
        placed = copy.deepcopy(model)
        session.strategy.placement.apply(placed)
        wrapped = session.strategy.wrap(placed)
        assert type(wrapped).__name__ == "DistributedDataParallel"
        batch = _batch(spec, seed=1)
        loss0, g0 = _loss_and_grads(model, model, *batch)
        loss1, g1 = _loss_and_grads(wrapped, placed, *batch)
        assert loss1 == pytest.approx(loss0, abs=1e-6)
        assert all(torch.allclose(g0[k], g1[k], atol=1e-6) for k in g0)
        del wrapped
    finally:
        dist.destroy_process_group()


def test_branch_strategy_trains_in_one_process(reference, tmp_path) -> None:
    from medfuse.api import train

    d = copy.deepcopy(SPEC)
    d["train"]["placement"] = {"image": "cuda:1", "fusion": "cuda:0"}  # maps to cpu here
    res = train(d, out=tmp_path / "branch", device="cpu", progress=False, strategy="branch")
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["training"]["strategy"] == "branch"
    assert _maxdiff(_weights(res.package), reference["weights"]) < TOL


# -- errors and command lines -----------------------------------------------------------------


def test_bad_strategy_and_placement_are_spec_errors(tiny_model) -> None:
    from medfuse.core.spec import parse_spec
    from medfuse.distributed import resolve_placement
    from medfuse.distributed.strategies import Session, start_session

    spec, _ = tiny_model
    with pytest.raises(SpecError, match="did you mean 'image'"):
        resolve_placement({"imgae": "cpu"}, list(spec.modalities), torch.device("cpu"))
    with pytest.raises(SpecError, match=r"train\.placement\.signal.*not a device"):
        resolve_placement({"signal": "gpu:0"}, list(spec.modalities), torch.device("cpu"))
    d = spec.to_dict()
    d["train"].update(strategy="dpp")
    with pytest.raises(SpecError, match=r"train\.strategy.*did you mean 'ddp'"):
        start_session(parse_spec(d), "cpu")
    d["train"].update(strategy="ddp", placement={"image": "cpu"})
    with pytest.raises(SpecError, match=r"train\.placement.*'branch' and 'hybrid'"):
        start_session(parse_spec(d), "cpu")
    with pytest.raises(SpecError, match=r"train\.batch_size.*global batch.*divisible by 3"):
        Session(spec, "ddp", world=3).rank_spec(spec)


def test_hybrid_placement_indices_are_per_process() -> None:
    """Process LOCAL_RANK 2 of a placement using 2 GPUs owns cuda:4 and cuda:5 (index math only:
    ``default`` says the process device is CUDA, ``device_count`` what a node would have)."""
    from medfuse.distributed import resolve_placement

    mods = ["image", "ecg", "clinical"]
    got = resolve_placement(
        {"image": "cuda:0", "ecg": "cuda:1"},
        mods,
        torch.device("cuda", 4),
        offset=4,
        device_count=8,
    )
    assert {k: str(v) for k, v in got.items()} == {
        "image": "cuda:4",
        "ecg": "cuda:5",
        "clinical": "cuda:4",
        "fusion": "cuda:4",
    }
    got = resolve_placement(
        {"fusion": "cuda:1"}, mods, torch.device("cuda", 2), offset=2, device_count=4
    )
    assert {str(v) for v in got.values()} == {"cuda:3"}
    with pytest.raises(SpecError, match=r"train\.placement\.ecg.*cuda:8.*only 8"):
        resolve_placement(
            {"ecg": "cuda:2"}, mods, torch.device("cuda", 6), offset=6, device_count=8
        )


def test_more_processes_than_gpus_is_refused_with_what_to_do(monkeypatch) -> None:
    """``--nproc 2`` on a node whose PyTorch sees one GPU: rank 1 would take cuda:1, which does
    not exist (a CUDA error deep in set_device); refused first, saying what to run instead. With
    enough GPUs each process takes cuda:LOCAL_RANK (times the placement's GPUs)."""
    from medfuse.core.errors import MedfuseError
    from medfuse.distributed.strategies import DistEnv, _process_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    env = DistEnv(rank=1, world=2, local_rank=1, local_world=2, restart=0)
    for device in ("auto", "cuda"):
        with pytest.raises(
            MedfuseError,
            match=r"2 processes per node take 2 GPUs.*sees 1; run --nproc 1 or fewer per "
            r"node, or pass --device cpu",
        ):
            _process_device(device, env, 1)
    assert _process_device("cpu", env, 1) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert _process_device("auto", env, 1) == torch.device("cuda", 1)
    assert _process_device("auto", env, 2) == torch.device("cuda", 2)
    with pytest.raises(MedfuseError, match=r"take 6 GPUs \(3 each, for the placement\)"):
        _process_device("auto", env, 3)
    # a placement wider than the node even for one process is the placement's own error
    from medfuse.distributed import resolve_placement

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    dev = _process_device("auto", env, 2)
    with pytest.raises(SpecError, match=r"train\.placement\.x.*cuda:3.*only 1 CUDA"):
        resolve_placement({"x": "cuda:1"}, ["x"], dev, offset=2, device_count=1)


def test_worker_command_line_drops_launch_flags_only() -> None:
    from medfuse.cli import build_parser
    from medfuse.distributed.launch import torchrun_argv, worker_argv

    parser = build_parser()
    argv = [
        "train",
        "synthetic",
        "--set",
        "train.epochs=1",
        "--set",
        "train.lr=0.1",
        "--nproc",
        "2",
        "--max-restarts=3",
        "--strategy",
        "fsdp",
        "--resume",
        "--device",
        "cpu",
    ]
    args = parser.parse_args(argv)
    train_parser = next(
        a for a in parser._subparsers._group_actions if hasattr(a, "choices")
    ).choices["train"]
    got = worker_argv(train_parser, args, "train")
    assert got[:2] == ["train", "synthetic"]
    assert "--set=train.epochs=1" in got and "--set=train.lr=0.1" in got
    assert "--strategy=fsdp" in got and "--resume" in got and "--device=cpu" in got
    assert not any(x.startswith(("--nproc", "--max-restarts", "--nnodes")) for x in got)
    assert parser.parse_args(got).overrides == ["train.epochs=1", "train.lr=0.1"]
    t = torchrun_argv(got, nproc=2, max_restarts=3)
    assert "--standalone" in t and t[t.index("-m") + 1] == "medfuse"
    t = torchrun_argv(got, nproc=1, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400")
    assert "--rdzv-backend=c10d" in t and "--rdzv-endpoint=10.0.0.1:29400" in t
    from medfuse.core.errors import MedfuseError

    with pytest.raises(MedfuseError, match="--rdzv-endpoint"):
        torchrun_argv(got, nproc=1, nnodes=2)


def test_cli_rejects_a_bad_strategy_before_starting_workers(tmp_path, capsys) -> None:
    from medfuse.cli import main

    cfg = _write(SPEC, tmp_path / "spec.yaml")
    t0 = time.perf_counter()
    code = main(["train", str(cfg), "--nproc", "2", "--strategy", "dpp", "--device", "cpu"])
    assert code == 2
    assert "did you mean 'ddp'" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 10  # no worker was started


# -- pretrained branches: a timm ViT, a Hugging Face encoder, a text branch ------------------

VIT = {
    "type": "timm",
    "model": "vit_tiny_patch16_224",
    "model_args": {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
}
VIT_SPEC: dict[str, Any] = {
    "name": "tiny-vit-dist",
    "task": {"type": "binary"},
    "data": {
        "source": "synthetic",
        "options": {
            "n_train": 64,
            "n_val": 32,
            "n_test": 32,
            "image_size": 16,
            "text": True,
            "text_length": 12,
        },
    },
    "modalities": {
        "image": {"kind": "image", "channels": 1, "size": [16, 16]},
        "tabular": {"kind": "tabular", "columns": ["age", "bmi", "marker"]},
        "text": {"kind": "text", "length": 12, "vocab": 64},
    },
    "branches": {
        "image": VIT,  # LayerNorm, no dropout: no statistic depends on how the batch is split
        "tabular": {"type": "mlp", "hidden": 8, "layers": 0, "out_features": 4, "dropout": 0.0},
        "text": {
            "type": "gru_text",
            "vocab_size": 64,
            "embedding": 8,
            "hidden": 8,
            "out_features": 8,
            "dropout": 0.0,
        },
    },
    "fusion": {"type": "concat"},
    "head": {"hidden": 8, "dropout": 0.0},
    "train": {
        "batch_size": 16,
        "lr": 0.01,
        "early_stopping": None,
        "peft": {"branches": ["image"], "r": 2, "alpha": 4, "target_modules": ["qkv", "proj"]},
        "stages": [
            {"name": "branches", "epochs": 2},
            {"name": "fusion", "epochs": 1},
            {"name": "finetune", "epochs": 1},
        ],
    },
}
#: per-epoch train and validation loss of 2 fsdp processes vs 1, relative; measured below 1e-7
LOSS_TOL = 1e-5
#: this process's sitecustomize (tests/site) for the workers: they import timm as it does
SITE = Path(__file__).resolve().parents[1] / "site"


def _vit_spec(*, lora: bool = True) -> dict[str, Any]:
    from medfuse.core.optional import unusable

    if reason := unusable(("timm", "peft") if lora else ("timm",)):
        pytest.skip(reason)
    spec = copy.deepcopy(VIT_SPEC)
    if not lora:
        del spec["train"]["peft"]
    return spec


def _losses(pkg: Path) -> list[tuple[str, int, float, float]]:
    rows = [json.loads(x) for x in (pkg / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["epoch"], r["train_loss"], r["val_loss"]) for r in rows]


@pytest.fixture(scope="module")
def vit_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, LoRA on the ViT: the loss curve and weights fsdp and placement reproduce."""
    from medfuse.api import train

    out = tmp_path_factory.mktemp("vit") / "single"
    return train(_vit_spec(), out=out, device="cpu", progress=False).package


@pytest.mark.parametrize("lora", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_fsdp_two_processes_on_a_vit_composite_give_the_one_process_loss_curve(
    lora, vit_reference, tmp_path, monkeypatch, capfd
) -> None:
    """timm ViT (LoRA on qkv/proj, or fully fine-tuned) + tabular + text over 2 fsdp processes:
    each ViT block is a sharding unit; the per-epoch losses are one process's, the package
    holds merged plain weights, loads and predicts what the one-process package predicts."""
    import medfuse
    from medfuse.api import train
    from medfuse.cli import main
    from medfuse.compress._common import package_data

    spec = _vit_spec(lora=lora)
    one = (
        vit_reference
        if lora
        else train(
            copy.deepcopy(spec), out=tmp_path / "single", device="cpu", progress=False
        ).package
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")]))
    cfg = _write(spec, tmp_path / "spec.yaml")
    out = tmp_path / "fsdp"
    argv = ["train", str(cfg), "--out", str(out), "--device", "cpu", "--nproc", "2"]
    assert main([*argv, "--strategy", "fsdp"]) == 0
    text = "".join(capfd.readouterr())
    # rank 0 holds about half of the parameters: 2 ViT blocks + 3 branches + the composite
    found = re.search(r"fsdp: (\d+) sharding units; this rank holds (\d+) of (\d+)", text)
    assert found, text[-4000:]
    units, held, total = (int(g) for g in found.groups())
    assert units == 6 and 0.45 * total <= held <= 0.55 * total, found.group(0)
    want, got = _losses(one), _losses(out)
    assert [r[:2] for r in got] == [r[:2] for r in want] and len(got) == 4
    for a, b in zip(want, got, strict=True):
        for x, y in zip(a[2:], b[2:], strict=True):
            assert abs(x - y) <= LOSS_TOL * abs(x), (a, b)
    assert len({round(r[2], 4) for r in got}) > 1  # a curve that moves, not a constant
    weights = _weights(out)
    assert not any("lora_" in k or "base_layer" in k for k in weights)  # merged, plain names
    assert _maxdiff(_without_key_bias(weights), _without_key_bias(_weights(one))) < TOL
    meta = json.loads((out / "medfuse.json").read_text())
    assert meta["training"]["strategy"] == "fsdp" and meta["training"]["world_size"] == 2
    assert ("peft" in meta["training"].get("finetune", {})) == lora
    pred, ref = medfuse.load(out, device="cpu"), medfuse.load(one, device="cpu")
    rows = package_data(pred.package).test.arrays  # raw images, table and note texts
    p = pred.predict_proba(rows)
    assert p.shape == (32,) and np.isfinite(p).all()
    np.testing.assert_allclose(p, ref.predict_proba(rows), atol=1e-5)


def test_fsdp_shards_each_block_of_pretrained_encoders(tmp_path) -> None:
    """The sharding units of a timm ViT and a Hugging Face encoder are their blocks; fully
    sharded (a real one-process gloo group), the composite computes the plain model's loss and
    gradients."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    from medfuse.api import prepare_data
    from medfuse.core.spec import parse_spec
    from medfuse.distributed.strategies import _fsdp_units, _repeated_blocks, start_session
    from medfuse.models import build_model

    d = _vit_spec(lora=False)
    d["train"]["strategy"] = "fsdp"
    spec, _ = prepare_data(parse_spec(d))
    torch.manual_seed(0)
    model = build_model(spec)
    units = _fsdp_units(model)
    blocks = list(model.branches["image"].encoder.blocks)
    assert len(blocks) == 2 and all(any(b is u for u in units) for b in blocks)
    assert units[-1] is model.branches["text"]  # no stack of blocks: the branch is the unit
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=8,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=8,
    )
    hf = transformers.ViTModel(cfg, add_pooling_layer=False)
    layers = [m for m in hf.modules() if type(m).__name__ == "ViTLayer"]
    assert len(layers) == 3 and _repeated_blocks(hf) == layers

    plain = copy.deepcopy(model)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        session = start_session(spec, "cpu")
        assert session.strategy_name == "fsdp"
        session.strategy.prepare(model)
        assert all(isinstance(b, FSDPModule) for b in blocks)
        batch = _vit_batch(spec)
        loss0, g0 = _loss_and_grads(plain, plain, *batch)
        loss1, g1 = _loss_and_grads(model, model, *batch)
        assert loss1 == pytest.approx(loss0, abs=1e-6)
        from medfuse.distributed.strategies import _full

        assert g0.keys() == g1.keys()
        assert all(torch.allclose(g0[k], _full(g1[k]), atol=1e-6) for k in g0)
        session.strategy.close()
    finally:
        dist.destroy_process_group()


def _without_key_bias(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights less the attention key bias (the middle third of ``qkv.bias``): softmax is
    invariant to it, so its true gradient is 0 and Adam turns the float noise of its gradient
    into full-size steps whose sign depends on the summation order (measured: 1e-4 apart after
    4 epochs of full fine-tuning, while every other weight is within 3e-6)."""
    out = dict(w)
    for k, v in w.items():
        if k.endswith("attn.qkv.bias"):
            d = v.numel() // 3
            out[k] = torch.cat([v[:d], v[2 * d :]])
    return out


def _vit_batch(spec, n: int = 8):
    """Inputs in each modality's range: images on [0, 1], token ids, a table."""
    inputs, masks, y = _batch(spec, n)
    g = torch.Generator().manual_seed(2)
    inputs["image"] = torch.rand(n, 1, 16, 16, generator=g)
    inputs["text"] = torch.randint(0, 64, (n, 12), generator=g).float()
    return inputs, masks, y


def test_branch_placement_of_a_vit_and_a_text_encoder(vit_reference, tmp_path) -> None:
    """The ViT and the text branch on different devices (cuda:0 / cuda:1; every entry maps to
    cpu on a machine without CUDA): the placed composite's loss and gradients are the single
    device's, and ``strategy: branch`` training (LoRA on the ViT) gives the one-process
    weights."""
    from medfuse.api import prepare_data, train
    from medfuse.core.spec import parse_spec
    from medfuse.distributed import BranchParallel, Placement, resolve_placement
    from medfuse.models import build_model

    raw = _vit_spec(lora=False)
    spec, _ = prepare_data(parse_spec(raw))
    torch.manual_seed(0)
    model = build_model(spec)
    placed = copy.deepcopy(model)
    placement = {"image": "cuda:0", "text": "cuda:1", "fusion": "cuda:0"}
    devices = resolve_placement(placement, list(spec.modalities), torch.device("cpu"))
    wrapped = BranchParallel(placed, Placement(devices))
    batch = _vit_batch(spec)
    loss0, g0 = _loss_and_grads(model, model, *batch)
    loss1, g1 = _loss_and_grads(wrapped, placed, *batch)
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    assert g0.keys() == g1.keys() and all(torch.allclose(g0[k], g1[k], atol=1e-6) for k in g0)

    d = _vit_spec()
    d["train"]["placement"] = placement
    res = train(d, out=tmp_path / "branch", device="cpu", progress=False, strategy="branch")
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["training"]["strategy"] == "branch"
    assert meta["training"]["placement"] == {k: "cpu" for k in [*spec.modalities, "fusion"]}
    assert _maxdiff(_weights(res.package), _weights(vit_reference)) < TOL


def test_train_table_with_nproc(tmp_path, capfd) -> None:
    """``train --table t.csv --label y --nproc N`` failed on every rank ("give a spec or
    --table, not both"): the workers were given the saved spec and the table flags too."""
    from medfuse.cli import main

    n = 48
    pd.DataFrame(
        {"age": 40.0 + np.arange(n) % 30, "lab": np.arange(n) % 7 * 1.5, "y": np.arange(n) % 2}
    ).to_csv(tmp_path / "t.csv", index=False)
    args = ["train", "--table", str(tmp_path / "t.csv"), "--label", "y", "--out"]
    args += [str(tmp_path / "pkg"), "--device", "cpu", "--nproc", "1", "--set", "train.epochs=1"]
    code = main(args)
    assert code == 0, capfd.readouterr().err[-3000:]
    assert (tmp_path / "pkg" / "medfuse.json").exists()
