"""Text fused with tabular (and image): the fused model vs the best single-modality model.

SYNTHETIC virtual patients with generated notes (``data.options.text``): each modality sees only
its own latent factor, the notes' words carry the text factor (positive-leaning words with
probability sigmoid(1.5 z_text)). Per seed it trains one model per single modality (same
branch, same budget) and the fused model, and prints test AUROC. The gain is the fused AUROC
minus the best single-modality AUROC of the same seed.

    OMP_NUM_THREADS=2 python benchmarks/text_fusion.py --seeds 0 1 [--image]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.api import train

BRANCHES: dict[str, dict[str, Any]] = {
    "text": {"type": "gru_text", "vocab_size": 256, "embedding": 32, "hidden": 32},
    "tabular": {"type": "mlp", "hidden": 32, "out_features": 16},
    "image": {"type": "cnn", "width": 8, "depth": 2, "out_features": 16},
}
MODALITIES: dict[str, dict[str, Any]] = {
    "text": {"kind": "text", "length": 24, "vocab": 256},
    "tabular": {"kind": "tabular", "columns": ["age", "bmi", "marker"]},
    "image": {"kind": "image", "channels": 1, "size": [16, 16]},
}


def spec(mods: list[str], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "text-fusion-" + "-".join(mods),
        "data": {
            "source": "synthetic",
            "options": {
                "n_train": args.n_train,
                "n_val": args.n_val,
                "n_test": args.n_test,
                "image_size": 16,
                "text": True,
                "text_length": 24,
            },
        },
        "modalities": {m: MODALITIES[m] for m in mods},
        "branches": {m: BRANCHES[m] for m in mods},
        "head": {"hidden": 16},
        "train": {"epochs": args.epochs, "batch_size": 64, "lr": 3e-3},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--image", action="store_true", help="fuse the image too")
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mods = ["text", "tabular"] + (["image"] if args.image else [])
    runs = [[m] for m in mods] + [mods]
    gains = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            auroc: dict[str, float] = {}
            for run in runs:
                t0 = time.perf_counter()
                name = "+".join(run)
                res = train(
                    spec(run, args),
                    out=Path(tmp) / f"{name}-{seed}",
                    device="cpu",
                    seed=seed,
                    progress=False,
                )
                auroc[name] = float(res.metrics["test"]["auroc"])
                print(
                    f"seed {seed} {name:22s} test AUROC {auroc[name]:.3f} "
                    f"({time.perf_counter() - t0:.1f} s)",
                    flush=True,
                )
            fused = auroc["+".join(mods)]
            best = max(auroc[m] for m in mods)
            gains.append(fused - best)
            print(f"seed {seed}: fused {fused:.3f} - best single {best:.3f} = {fused - best:+.3f}")
    g = np.array(gains)
    print(f"\nfusion gain over the best single modality: mean {g.mean():+.3f} (min {g.min():+.3f})")


if __name__ == "__main__":
    main()
