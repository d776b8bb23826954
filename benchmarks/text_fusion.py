"""Text fused with tabular (and image): the fused model vs the best single-modality model.

SYNTHETIC virtual patients with generated notes (``data.options.text``): each modality sees only
its own latent factor, the notes' words carry the text factor (positive-leaning words with
probability sigmoid(1.5 z_text)). Per seed it trains one model per single modality (same
branch, same budget) and the fused model, and prints test AUROC. The gain is the fused AUROC
minus the best single-modality AUROC of the same seed.

``--text-branch hf``: the text branch is a Hugging Face BERT (``hf``) with its own WordPiece
tokenizer instead of ``gru_text`` over a trained word-level one: a small random BERT built from
a config over the notes' words (no pretrained weights can be downloaded here), saved to a
directory and loaded through the path a downloaded model takes. The fused package is then also
read back by the torch-free runtime from raw text, and the largest probability difference from
PyTorch printed.

    OMP_NUM_THREADS=2 python benchmarks/text_fusion.py --seeds 0 1 [--image] [--text-branch hf]
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


def hf_text(folder: Path) -> dict[str, Any]:
    """The ``hf`` text branch: a random BERT (hidden 32, 2 layers) over the notes' words."""
    from medfuse.data.synthetic import FILLER_WORDS, NEGATIVE_WORDS, POSITIVE_WORDS
    from medfuse.models.branches.pretrained import tiny_hf_text_model

    words = (*POSITIVE_WORDS, *NEGATIVE_WORDS, *FILLER_WORDS)
    model = tiny_hf_text_model(folder, words=words, hidden=32, layers=2)
    return {"type": "hf", "model": str(model), "pool": "mean"}


def torch_free_difference(package: Path, n: int = 64) -> float:
    """max |p| difference between PyTorch and the torch-free runtime (ONNX Runtime, the stored
    tokenizer) on ``n`` raw-text test cases of the package's own data."""
    from medfuse.core.onnx import load as load_onnx
    from medfuse.data.synthetic import generate
    from medfuse.export.exporter import export_package
    from medfuse.inference.predictor import load as load_torch

    export_package(package, format="onnx", samples=8)
    s = generate(n, seed=12345, text=True)
    rows = [
        {"text": s.arrays["text"][i], "age": t[0], "bmi": t[1], "marker": t[2]}
        for i, t in enumerate(s.arrays["tabular"].tolist())
    ]
    p_torch = load_torch(package).predict_proba(rows)
    return float(np.abs(load_onnx(package).predict_proba(rows) - p_torch).max())


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
        "branches": {m: args.branches[m] for m in mods},
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
    ap.add_argument("--text-branch", choices=("gru_text", "hf"), default="gru_text")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mods = ["text", "tabular"] + (["image"] if args.image else [])
    runs = [[m] for m in mods] + [mods]
    gains = []
    with tempfile.TemporaryDirectory() as tmp:
        args.branches = dict(BRANCHES)
        if args.text_branch == "hf":
            args.branches["text"] = hf_text(Path(tmp) / "bert")
        for seed in args.seeds:
            auroc: dict[str, float] = {}
            packages: dict[str, Path] = {}
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
                packages[name] = Path(res.package)
                print(
                    f"seed {seed} {name:22s} test AUROC {auroc[name]:.3f} "
                    f"({time.perf_counter() - t0:.1f} s)",
                    flush=True,
                )
            if args.text_branch == "hf":
                diff = torch_free_difference(packages["+".join(mods)])
                print(f"seed {seed}: fused package, raw text, torch vs ONNX Runtime: {diff:.2e}")
            fused = auroc["+".join(mods)]
            best = max(auroc[m] for m in mods)
            gains.append(fused - best)
            print(f"seed {seed}: fused {fused:.3f} - best single {best:.3f} = {fused - best:+.3f}")
    g = np.array(gains)
    print(f"\nfusion gain over the best single modality: mean {g.mean():+.3f} (min {g.min():+.3f})")


if __name__ == "__main__":
    main()
