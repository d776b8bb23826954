"""Ratio of medfuse's Trainer time to a plain hand-written PyTorch loop, same model and data.

Both train the synthetic three-modality composite end to end for the same epochs and batches,
with AdamW + cosine schedule and a validation pass (AUROC) after every epoch. medfuse also does
what the plain loop does not: auxiliary branch probes, per-branch validation metrics, the
metrics.jsonl log and an atomic checkpoint every epoch. Runs alternate and repeat; the minimum
of each is compared (this machine is noisy).

    python benchmarks/trainer_overhead.py [--epochs 4] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medfuse.api import fit_preprocessing, prepare_data
from medfuse.core.spec import load_spec
from medfuse.inference.helpers import to_tensors
from medfuse.models import build_model
from medfuse.training.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"


def spec_for(epochs: int, batch: int):
    spec = load_spec(
        CONFIG,
        [
            f"train.epochs={epochs}",
            f"train.batch_size={batch}",
            "train.stages=[end_to_end]",
            "train.early_stopping=null",
        ],
    )
    return spec


def plain_loop(spec, train, val, epochs: int, batch: int) -> float:
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.AdamW(
        model.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay
    )
    steps = math.ceil(len(train) / batch)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))
        for i in range(steps):
            idx = perm[i * batch : (i + 1) * batch]
            inputs = {m: v[idx] for m, v in train.inputs.items()}
            masks = {m: v[idx] for m, v in train.masks.items()}
            loss = loss_fn(model(inputs, masks)[:, 0], train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            logits = torch.cat(
                [
                    model(
                        {m: v[s : s + 256] for m, v in val.inputs.items()},
                        {m: v[s : s + 256] for m, v in val.masks.items()},
                    )
                    for s in range(0, len(val), 256)
                ]
            )
        roc_auc_score(val.y.numpy(), logits[:, 0].numpy())
    return time.perf_counter() - t0


def medfuse_loop(spec, train, val, workdir: Path) -> float:
    torch.manual_seed(0)
    model = build_model(spec)
    t0 = time.perf_counter()
    Trainer(
        model, spec, train, val, device=torch.device("cpu"), workdir=workdir, progress=False
    ).fit()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec, bundle = prepare_data(spec_for(a.epochs, a.batch_size))
    stats = fit_preprocessing(spec, bundle.train, bundle.info)
    train, val = to_tensors(bundle.train, stats), to_tensors(bundle.val, stats)
    plain, ours = [], []
    for r in range(a.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            if r % 2 == 0:
                plain.append(plain_loop(spec, train, val, a.epochs, a.batch_size))
                ours.append(medfuse_loop(spec, train, val, Path(tmp)))
            else:
                ours.append(medfuse_loop(spec, train, val, Path(tmp)))
                plain.append(plain_loop(spec, train, val, a.epochs, a.batch_size))
    p, o = min(plain), min(ours)
    print(
        f"model: synthetic 3-modality composite, {sum(x.numel() for x in build_model(spec).parameters()):,} parameters; {len(train)} train / {len(val)} val samples"
    )
    print(
        f"epochs {a.epochs}, batch {a.batch_size}, torch threads {a.threads}, repeats {a.repeats}"
    )
    print(f"plain PyTorch loop: {p:.2f} s   (all: {', '.join(f'{x:.2f}' for x in plain)})")
    print(f"medfuse Trainer:    {o:.2f} s   (all: {', '.join(f'{x:.2f}' for x in ours)})")
    print(f"overhead ratio medfuse/plain: {o / p:.3f}  (target <= 1.10)")
    _ = np


if __name__ == "__main__":
    main()
