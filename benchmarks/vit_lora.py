"""LoRA against full fine-tuning of a ViT-S/16-sized image branch on BreastMNIST, in one run.

The image branch is timm's ``vit_small_patch16_224`` architecture (about 22M parameters) built
from its config with random weights (nothing is downloaded; ``--weights`` takes a local
pretrained file). Variants: full fine-tuning, LoRA (r 8 on qkv and proj), and each with gradient checkpointing
(``-ckpt``). Each trains in its own subprocess, so each peak resident memory is its own; per
variant it prints trainable parameters and their fraction, peak RSS (and its rise over the
process before training), seconds per epoch (the training pass), and validation / test AUROC,
then each variant's ratios to full fine-tuning. BreastMNIST's 28 px images are resized by the branch to ``--input-size``.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/vit_lora.py --epochs 1 --max-train 96

Without pretrained weights the AUROCs say little about LoRA's accuracy (a frozen random
backbone); the figures this measures are cost: parameters trained, memory and time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: full fine-tuning, LoRA, and each with gradient checkpointing (train.grad_checkpointing)
VARIANTS = ("full", "lora", "full-ckpt", "lora-ckpt")


def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _data_root(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """The data root and medmnist name: the shared BreastMNIST, or a seeded subset of its
    training split (``--max-train``; validation and test are whole)."""
    root = Path(args.data_dir or os.environ.get("MEDFUSE_DATA_DIR") or REPO / "data")
    if not args.max_train:
        return root, "breastmnist"
    src = next(p for p in (root / "medmnist" / "breastmnist.npz", root / "breastmnist.npz"))
    with np.load(src) as d:
        raw = {k: d[k] for k in d.files}
    keep = np.sort(np.random.default_rng(0).permutation(len(raw["train_labels"]))[: args.max_train])
    raw["train_images"], raw["train_labels"] = raw["train_images"][keep], raw["train_labels"][keep]
    (tmp / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez(tmp / "medmnist" / "breastmnist_subset.npz", **raw)
    return tmp, "breastmnist_subset"


def spec(variant: str, args: argparse.Namespace, name: str) -> dict[str, Any]:
    branch: dict[str, Any] = {
        "type": "timm",
        "model": "vit_small_patch16_224",
        "model_args": {"img_size": args.input_size},
    }
    if args.weights:
        branch["weights"] = args.weights
    train: dict[str, Any] = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr_lora if variant.startswith("lora") else args.lr_full,
        "schedule": "cosine",
        "keep": "last",
        "early_stopping": None,
        "class_weights": "balanced",
        "seed": args.seed,
        "grad_checkpointing": variant.endswith("-ckpt"),
    }
    if variant.startswith("lora"):
        train["peft"] = {
            "branches": ["image"],
            "r": args.rank,
            "alpha": 2.0 * args.rank,
            "target_modules": ["qkv", "proj"],
        }
    return {
        "name": f"vit-{variant}",
        "task": {"type": "binary"},
        "data": {"source": f"medmnist:{name}", "augment": {"flip": True}},
        "branches": {"image": branch},
        "head": {"hidden": 0},
        "train": train,
    }


def _torchvision_ops() -> None:
    """A torchvision wheel whose C++ ops do not load beside this torch (CUDA torchvision, CPU
    torch) fails on import and takes timm and peft with it: the tests' ``tests/site`` declares
    the missing op schemas when, and only when, that is the case. Reused, not copied."""
    sys.path.insert(0, str(REPO / "tests" / "site"))
    # lazy: the test environment's fix, applied only in the training subprocess
    from torchvision_ops import declare_missing_ops

    declare_missing_ops()


def child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant in this process; its figures as a dict."""
    _torchvision_ops()
    # lazy: torch and medfuse load in the subprocess that trains, after the torchvision check
    import torch

    # lazy: as torch, in the training subprocess only
    from medfuse.api import train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    with tempfile.TemporaryDirectory() as tmp:
        root, name = _data_root(args, Path(tmp))
        epochs: list[dict[str, Any]] = []
        before = _rss_mb()
        t0 = time.perf_counter()
        res = train(
            spec(variant, args, name),
            out=Path(tmp) / "pkg",
            data_dir=root,
            device="cpu",
            progress=False,
            on_epoch=epochs.append,
        )
        total = time.perf_counter() - t0
        meta = json.loads((res.package / "medfuse.json").read_text())
    params = meta["training"].get("finetune", {}).get("parameters")
    if params is None:  # full fine-tuning: every parameter used at inference trains
        n = int(meta["parameters"])
        params = {"trainable": n, "total": n, "trainable_fraction": 1.0}
    return {
        "variant": variant,
        "trainable": params["trainable"],
        "total": params["total"],
        "fraction": params["trainable_fraction"],
        "rss_before_mb": before,
        "peak_rss_mb": _peak_mb(),
        "s_per_epoch": float(np.mean([e["seconds"] for e in epochs])),
        "train_s_per_epoch": float(np.mean([e["compute_s"] + e["data_wait_s"] for e in epochs])),
        "samples_per_s": float(np.mean([e["samples_per_s"] for e in epochs])),
        "val_auroc": res.metrics["val"]["auroc"],
        "test_auroc": res.metrics["test"]["auroc"],
        "seconds": total,
        "train_samples": meta["training"]["samples"]["train"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=224, help="side the branch resizes to")
    ap.add_argument("--max-train", type=int, default=0, help="training subset (0: all 546)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (on qkv and proj)")
    ap.add_argument("--lr-full", type=float, default=1e-4)
    ap.add_argument("--lr-lora", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", help="a local vit_small_patch16_224 weights file (optional)")
    ap.add_argument("--data-dir", help="data root (default $MEDFUSE_DATA_DIR)")
    ap.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="default: all"
    )
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the subprocess
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(child(args.variant, args)))
        return

    if "full" not in args.variants:
        ap.error("--variants must include full (the reference of the ratios)")
    rows = []
    for v in args.variants:  # one subprocess each: each peak RSS is that variant's alone
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", v]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"variant {v} failed:\n{out.stderr[-4000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"vit_small_patch16_224 (random init) on BreastMNIST, {rows[0]['train_samples']} train "
        f"images at {args.input_size} px, {args.epochs} epochs, batch {args.batch_size}, "
        f"{os.environ.get('OMP_NUM_THREADS', '?')} threads"
    )
    print(
        f"{'variant':10} {'trainable':>11} {'total':>11} {'fraction':>9} {'peak RSS MB':>12} "
        f"{'rise MB':>8} {'s/epoch':>8} {'train s':>8} {'val AUROC':>10} {'test AUROC':>11}"
    )
    for r in rows:
        print(
            f"{r['variant']:10} {r['trainable']:>11,} {r['total']:>11,} {r['fraction']:>9.4%} "
            f"{r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] - r['rss_before_mb']:>8.0f} "
            f"{r['s_per_epoch']:>8.1f} {r['train_s_per_epoch']:>8.1f} {r['val_auroc']:>10.3f} "
            f"{r['test_auroc']:>11.3f}"
        )
    full = next(r for r in rows if r["variant"] == "full")
    bad = []
    for r in rows:
        if r is full:
            continue
        rise = (r["peak_rss_mb"] - r["rss_before_mb"]) / (
            full["peak_rss_mb"] - full["rss_before_mb"]
        )
        print(
            f"{r['variant']} / full: trainable {r['trainable'] / full['trainable']:.4f}, peak "
            f"RSS {r['peak_rss_mb'] / full['peak_rss_mb']:.2f} (rise {rise:.2f}), s/epoch "
            f"{r['s_per_epoch'] / full['s_per_epoch']:.2f}"
        )
        if r["variant"].startswith("lora"):
            ok = r["fraction"] < 0.02
            print(
                f"{r['variant']} trains {r['fraction']:.4%} of the parameters: "
                f"{'under' if ok else 'NOT under'} 2%"
            )
            bad += [] if ok else [r["variant"]]
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
