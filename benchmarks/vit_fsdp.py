"""FSDP with 2 CPU processes vs 1 process on a ViT-S/16-sized composite with LoRA: loss curves.

The composite: a timm ``vit_small_patch16_224`` image branch (22M parameters, random init from
its config) with LoRA (r=8 on ``qkv`` and ``proj``), a tabular MLP and a ``gru_text`` branch, on
the synthetic demo with notes. The ViT's input is ``--img-size`` (default 32: 4 patches, so the
run takes minutes on a CPU; the parameters, and so what FSDP shards, are those of the 224 model
less its position embeddings). It is trained once in one process and once with
``medfuse train --nproc 2 --strategy fsdp`` (gloo, real torchrun workers), same global batch and
seed; the script prints both per-epoch loss curves, their largest relative gap, the share of
the parameters rank 0 held, and the largest weight difference of the two packages.

    PYTHONPATH=src python benchmarks/vit_fsdp.py [--img-size 32] [--epochs 2]

(On a machine whose torchvision wheel does not match torch, add ``tests/site`` to PYTHONPATH:
its sitecustomize lets timm import there, and in the workers, as the tests do.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml


def breastmnist_spec(img_size: int, epochs: int) -> dict[str, Any]:
    """The ViT-S/16 LoRA composite of benchmarks/vit_lora.py on BreastMNIST (image only)."""
    d = spec(img_size, epochs)
    d["name"] = f"vit-s16-lora-breastmnist-{img_size}"
    d["task"] = {"type": "binary", "positive": "normal/benign"}
    d["data"] = {"source": "medmnist:breastmnist"}
    d["modalities"] = {"image": d["modalities"]["image"]}
    d["branches"] = {"image": d["branches"]["image"]}
    d["fusion"] = {"type": "concat"}
    d["train"]["stages"] = [{"name": "end_to_end", "epochs": epochs}]
    # 546 training images = 21 x 26: with a global batch of 26, 2 ranks leave no remainder to
    # drop (the distributed sampler drops a last batch it cannot split evenly; one process
    # trains on it, and the curves would differ by those samples, not by sharding)
    d["train"]["batch_size"] = 26
    return d


def spec(img_size: int, epochs: int) -> dict[str, Any]:
    return {
        "name": f"vit-s16-lora-{img_size}",
        "task": {"type": "binary"},
        "data": {
            "source": "synthetic",
            "options": {
                "n_train": 64,
                "n_val": 32,
                "n_test": 32,
                "image_size": 28,
                "text": True,
                "text_length": 16,
            },
        },
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [28, 28]},
            "tabular": {"kind": "tabular", "columns": ["age", "bmi", "marker"]},
            "text": {"kind": "text", "length": 16, "vocab": 128},
        },
        "branches": {
            "image": {
                "type": "timm",
                "model": "vit_small_patch16_224",
                "model_args": {"img_size": img_size},
            },
            "tabular": {"type": "mlp", "hidden": 8, "layers": 0, "out_features": 4, "dropout": 0},
            "text": {
                "type": "gru_text",
                "vocab_size": 128,
                "embedding": 16,
                "hidden": 16,
                "out_features": 8,
                "dropout": 0,
            },
        },
        "fusion": {"type": "concat"},
        "head": {"hidden": 8, "dropout": 0.0},
        "train": {
            "batch_size": 16,
            "lr": 0.001,
            "early_stopping": None,
            "peft": {"branches": ["image"], "r": 8, "alpha": 16, "target_modules": ["qkv", "proj"]},
            "stages": [
                {"name": "branches", "epochs": epochs},
                {"name": "fusion", "epochs": 1},
                {"name": "finetune", "epochs": 1},
            ],
        },
    }


def train(cfg: Path, out: Path, nproc: int) -> tuple[str, float]:
    cmd = [sys.executable, "-m", "medfuse", "train", str(cfg), "--out", str(out)]
    cmd += ["--device", "cpu", "--overwrite"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc), "--strategy", "fsdp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stdout[-3000:] + res.stderr[-3000:])
    return res.stdout + res.stderr, time.perf_counter() - t0


def losses(pkg: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (pkg / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("stage", "epoch", "train_loss", "val_loss")} for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the branches stage")
    ap.add_argument("--workdir", default="runs/bench-vit-fsdp")
    ap.add_argument(
        "--optimizer",
        choices=("adamw", "sgd"),
        default="adamw",
        help="adamw (default) or sgd: Adam's per-parameter normalisation turns the rounding "
        "differences of a sharded reduction into full steps where a gradient is near zero",
    )
    ap.add_argument(
        "--data",
        choices=("synthetic", "breastmnist"),
        default="synthetic",
        help="synthetic notes + tabular + image (default), or BreastMNIST (image only; "
        "MEDFUSE_DATA_DIR)",
    )
    args = ap.parse_args()
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    cfg = wd / "spec.yaml"
    make = breastmnist_spec if args.data == "breastmnist" else spec
    d = make(args.img_size, args.epochs)
    d["train"]["optimizer"] = args.optimizer
    cfg.write_text(yaml.safe_dump(d))
    _, t1 = train(cfg, wd / "one", 1)
    log, t2 = train(cfg, wd / "fsdp", 2)
    one, two = losses(wd / "one"), losses(wd / "fsdp")
    gap = max(
        abs(a[k] - b[k]) / abs(a[k])
        for a, b in zip(one, two, strict=True)
        for k in a
        if "loss" in k
    )
    held = re.search(r"fsdp: (\d+) sharding units; this rank holds (\d+) of (\d+)", log)
    from safetensors.torch import load_file

    w1, w2 = (
        load_file(str(wd / "one" / "model.safetensors")),
        load_file(str(wd / "fsdp" / "model.safetensors")),
    )
    print("| stage | epoch | train loss, 1 process | 2 fsdp processes | val loss, 1 | 2 |")
    print("|---|---|---|---|---|---|")
    for a, b in zip(one, two, strict=True):
        print(
            f"| {a['stage']} | {a['epoch']} | {a['train_loss']:.7f} | {b['train_loss']:.7f} | "
            f"{a['val_loss']:.7f} | {b['val_loss']:.7f} |"
        )
    summary = {
        "img_size": args.img_size,
        "largest_relative_loss_gap": gap,
        "fsdp_rank0": held.group(0) if held else None,
        "max_abs_weight_diff": max(
            (w1[k].double() - w2[k].double()).abs().max().item() for k in w1
        ),
        "seconds": {"one_process": round(t1, 1), "fsdp_2_processes": round(t2, 1)},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
