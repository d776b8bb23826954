"""Training throughput (samples/s) by strategy and number of processes, and the ratios between
them measured in one run.

CPU (default): the synthetic config trained by 1 process (``single``), 1 process under DDP
(world 1) and 2 processes under DDP (gloo), each process with one thread; prints samples/s, the
DDP overhead (single vs ddp in one process) and the 2-process speedup and scaling efficiency.
``train.batch_size`` is the global batch, so 2 processes each take half of it (strong scaling).

GPU (``--device cuda``): single-GPU training throughput of every shipped config whose input
shapes are known without its data (synthetic, the MedMNIST configs, the manifest configs that
declare their modalities; the others need ``--data-dir``), and ``branch`` placement with every
branch on the one GPU (a CUDA stream per branch, so branches can overlap) vs no placement, on the
multi-branch configs, and ``ddp``/``fsdp`` in one process (NCCL) vs none. With 2+ GPUs it also
runs DDP on 1 and 2 GPUs.

Throughput is that of the real ``Trainer`` on random inputs of the config's shapes (values do not
change the arithmetic): one warm-up epoch, then one timed epoch of ``--steps`` steps whose time
includes a validation pass over one batch. Every configuration runs in its own process(es).

    python benchmarks/scaling.py                      # CPU: 1 vs 2 processes
    python benchmarks/scaling.py --device cuda        # one GPU: shipped configs, branch vs none
    python benchmarks/scaling.py --suite configs --steps 3   # the GPU suite's code path, on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "medfuse" / "configs"


# -- worker: one configuration, in this process (or as one torchrun rank) ---------------------


def bench_spec(config: str, data_dir: str | None, strategy: str, steps: int, placement: str):
    """The config, completed with its input shapes, set up for ``steps`` timed steps."""
    from medfuse.core.spec import ModalitySpec, complete_spec, load_spec

    spec = load_spec(
        CONFIGS / f"{config}.yaml" if (CONFIGS / f"{config}.yaml").exists() else config
    )
    source = spec.data.source
    labels = spec.task.labels
    if spec.modalities:
        mods = dict(spec.modalities)
    elif source.startswith("medmnist:"):  # 28-px grey MedMNIST images; no file needed
        from medfuse.data.medmnist import KNOWN

        mods = {"image": ModalitySpec(kind="image", channels=1, size=[28, 28])}
        labels = labels or KNOWN.get(source.split(":", 1)[1], (None,))[0]
    else:  # synthetic (generated), or real data found under --data-dir
        from medfuse.api import prepare_data

        spec, _ = prepare_data(spec, data_dir)
        mods, labels = dict(spec.modalities), spec.task.labels
    if labels is None:
        labels = ["negative", "positive"] if spec.task.type == "binary" else None
    if labels is None:
        raise SystemExit(f"{config}: labels unknown without the data; pass --data-dir")
    spec = complete_spec(spec, mods, list(labels))
    d = spec.to_dict()
    d["train"].update(
        epochs=2,
        stages=[{"name": "end_to_end"}],
        early_stopping=None,
        strategy=strategy,
        checkpoint_every=0,
    )
    if placement:
        d["train"]["placement"] = {m: placement for m in [*spec.modalities, "fusion"]}
    from medfuse.core.spec import parse_spec

    return parse_spec(d)


def random_tensors(spec, n: int, seed: int):
    import torch

    from medfuse.inference.helpers import Tensors

    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, *spec.modalities[m].shape, generator=g) for m in spec.modalities}
    masks = {m: torch.ones(n) for m in spec.modalities}
    k = spec.num_outputs
    if spec.task.type == "binary":
        y = (torch.rand(n, generator=g) > 0.5).float()
    elif spec.task.type == "multiclass":
        y = torch.randint(0, k, (n,), generator=g)
    else:
        y = (torch.rand(n, k, generator=g) > 0.7).float()
    return Tensors(inputs, masks, y)


def worker(a: argparse.Namespace) -> None:
    import torch

    if a.device == "cpu":
        torch.set_num_threads(1)
    from medfuse.api import seed_everything
    from medfuse.distributed.strategies import start_session
    from medfuse.models import build_model

    spec = bench_spec(a.config, a.data_dir, a.strategy, a.steps, a.placement)
    session = start_session(spec, a.device)
    batch = spec.train.batch_size
    train = random_tensors(spec, batch * a.steps, seed=0)
    val = random_tensors(spec, batch, seed=1)
    seed_everything(0)
    records: list[dict[str, Any]] = []
    trainer = session.trainer(
        build_model(spec), spec, train, val, progress=False, on_epoch=records.append
    )
    trainer.fit()
    session.finish(trainer)
    if session.is_main:
        secs = records[-1]["seconds"]  # the second (warm) epoch
        Path(a.result).write_text(
            json.dumps(
                {
                    "config": a.config,
                    "strategy": session.strategy_name,
                    "world": session.world,
                    "device": str(session.device),
                    "batch": batch,
                    "steps": a.steps,
                    "seconds": secs,
                    "samples_per_s": batch * a.steps / secs,
                }
            )
        )


# -- driver ------------------------------------------------------------------------------------


def run_one(
    a: argparse.Namespace, config: str, strategy: str, nproc: int, placement: str = ""
) -> dict[str, Any] | None:
    """One configuration in fresh process(es), best of ``--repeats``; None (printed why) if it
    failed. ``nproc`` 0 is a plain process without a process group."""
    best = None
    for _ in range(a.repeats):
        r = _run_once(a, config, strategy, nproc, placement)
        if r is None:
            return None
        if best is None or r["samples_per_s"] > best["samples_per_s"]:
            best = r
    return best


def _run_once(
    a: argparse.Namespace, config: str, strategy: str, nproc: int, placement: str
) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        worker_args = [
            "--worker",
            f"--config={config}",
            f"--strategy={strategy}",
            f"--device={a.device}",
            f"--steps={a.steps}",
            f"--result={result}",
        ]
        if placement:
            worker_args.append(f"--placement={placement}")
        if a.data_dir:
            worker_args.append(f"--data-dir={a.data_dir}")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if nproc == 0:
            cmd = [sys.executable, __file__, *worker_args]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={nproc}",
                __file__,
                *worker_args,
            ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        if proc.returncode != 0 or not result.exists():
            last = ((proc.stdout + proc.stderr).strip().splitlines() or ["?"])[-1]
            print(f"  {config} {strategy} x{max(nproc, 1)}: not run: {last[:150]}")
            return None
        return json.loads(result.read_text())


def row(label: str, r: dict[str, Any] | None, base: dict[str, Any] | None) -> None:
    if r is None:
        return
    ratio = r["samples_per_s"] / base["samples_per_s"] if base else float("nan")
    print(
        f"  {label:<38} {r['world']:>5} {r['device']:>8} {r['samples_per_s']:>11.1f} {ratio:>9.2f}"
    )


def header() -> None:
    print(f"  {'run':<38} {'procs':>5} {'device':>8} {'samples/s':>11} {'ratio':>9}")


def scaling_main(a: argparse.Namespace) -> None:
    """1 process without a group, 1 process under DDP, 2 processes under DDP."""
    cfg = a.configs[0] if a.configs else "synthetic"
    print(
        f"scaling on {a.device}, config {cfg} (its global batch), {a.steps} timed steps, "
        f"best of {a.repeats}; ratio = samples/s over the first row"
    )
    header()
    single = run_one(a, cfg, "single", 0)
    ddp1 = run_one(a, cfg, "ddp", 1)
    ddp2 = run_one(a, cfg, "ddp", 2)
    backend = "nccl" if a.device == "cuda" else "gloo"
    row("single (no process group)", single, single)
    row(f"ddp, 1 process ({backend})", ddp1, single)
    row(f"ddp, 2 processes ({backend})", ddp2, single)
    if single and ddp1:
        print(
            "DDP overhead (1 process, time per step ddp / single): "
            f"{single['samples_per_s'] / ddp1['samples_per_s']:.2f}x"
        )
    if single and ddp2:
        speedup = ddp2["samples_per_s"] / single["samples_per_s"]
        print(
            f"2 processes: speedup {speedup:.2f}x over 1, scaling efficiency {speedup / 2:.2f} "
            f"(CPU cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})"
        )


def configs_main(a: argparse.Namespace) -> None:
    """Per-config throughput on one device, and branch placement on that device vs none."""
    import torch

    names = a.configs or sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    if a.device == "cuda":
        where = f"GPU {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    else:
        where = f"CPU ({os.cpu_count()} cores, 1 thread)"
    print(f"{where}, {a.steps} timed steps, best of {a.repeats}")
    print(f"training throughput of the shipped configs on one {a.device} device (own batch):")
    header()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        r = run_one(a, name, "single", 0)
        if r:
            results[name] = r
            row(f"{name} (batch {r['batch']})", r, r)
    one = "cuda:0" if a.device == "cuda" else "cpu"
    print(f"branch placement, every branch on {one} (CUDA: a stream each) vs no placement:")
    header()
    from medfuse.core.spec import load_spec

    for name, base in results.items():
        spec = load_spec(CONFIGS / f"{name}.yaml")
        if len(spec.modalities or spec.branches) < 2:
            continue  # one branch: nothing to overlap
        branch = run_one(a, name, "branch", 0, placement=one)
        row(f"{name}: single", base, base)
        row(f"{name}: branch (all on {one})", branch, base)
    if "synthetic" in results:  # the data-parallel code paths on this device, 1 process
        backend = "nccl" if a.device == "cuda" else "gloo"
        print(f"data parallel in 1 process ({backend}), synthetic, vs no process group:")
        header()
        base = results["synthetic"]
        row("synthetic: single", base, base)
        for strategy in ("ddp", "fsdp"):
            row(f"synthetic: {strategy}, 1 process", run_one(a, "synthetic", strategy, 1), base)
    if a.device == "cuda" and torch.cuda.device_count() >= 2:
        scaling_main(a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--suite",
        choices=["scaling", "configs"],
        help="scaling: 1 vs 2 processes (default on cpu); configs: each shipped config, and "
        "branch placement vs none (default on cuda)",
    )
    p.add_argument("--configs", nargs="*", help="config names (default: see above)")
    p.add_argument(
        "--steps", type=int, help="timed training steps (default 20 on cpu, 100 on cuda)"
    )
    p.add_argument("--repeats", type=int, default=1, help="best of N runs per row (default 1)")
    p.add_argument("--data-dir", help="data root, for configs whose shapes come from their data")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="single", help=argparse.SUPPRESS)
    p.add_argument("--placement", default="", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.steps is None:
        a.steps = 100 if a.device == "cuda" else 20
    if a.worker:
        worker(a)
        return
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: PyTorch sees no CUDA device")
    suite = a.suite or ("configs" if a.device == "cuda" else "scaling")
    configs_main(a) if suite == "configs" else scaling_main(a)


if __name__ == "__main__":
    main()
