"""PTB-XL benchmark: macro AUROC of ECG-only, tabular-only and fused models on fold 10.

Trains, per seed, the shipped config (``configs/ptbxl.yaml``: 12-lead 1D CNN + age/sex/height/weight
MLP) and the same config restricted to each modality, and prints macro AUROC over the five
diagnostic superclasses (NORM, MI, STTC, CD, HYP) on the test fold, per label for the fused model,
and the mean and spread over seeds. Caveat: on the shared 500-record subset fold 10 holds only 64
labelled ECGs (7 HYP, 8 MI), so one ECG moves a per-label AUROC by several points; read the
spread, not the third decimal.

    OMP_NUM_THREADS=2 python benchmarks/ptbxl.py --seeds 0 1 2

``--split val`` scores fold 9 and never loads fold 10. ``--split cv`` is 3-fold cross-validation
over folds 1-9 (fold 10 never loaded): held-out groups {1,2,3}, {4,5,6}, {7,8,9}, early stopping
on one fold of another group, the rest trains; it prints the mean macro AUROC over the three
held-out groups, for choosing between configs with three times the validation data of fold 9.
``--models`` restricts which of "ecg", "clinical", "fused" are trained.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.api import prepare_data, train
from medfuse.core.spec import apply_overrides, load_spec_dict, parse_spec

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ptbxl.yaml"


def only(spec: dict[str, Any], modality: str, modalities: dict[str, Any]) -> dict[str, Any]:
    """The same spec with one modality and its branch (a fair single-modality baseline)."""
    d = copy.deepcopy(spec)
    d["modalities"] = {modality: modalities[modality]}
    d["branches"] = {modality: d["branches"][modality]}
    d.setdefault("train", {})["modality_dropout"] = {}
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--split", choices=["test", "val", "cv"], default="test")
    ap.add_argument("--models", nargs="+", choices=["ecg", "clinical", "fused"], default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="spec override key=value")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = list(args.set)
    if args.split == "val":  # development: fold 10 is not even loaded
        overrides.append("data.options.folds={train: [1, 2, 3, 4, 5, 6, 7, 8], val: [9]}")
    if args.split == "cv":
        return cross_validate(args, apply_overrides(load_spec_dict(args.config), overrides))
    base = apply_overrides(load_spec_dict(args.config), overrides)
    completed, bundle = prepare_data(parse_spec(base), args.data_dir)
    mods = {m: v.model_dump(mode="json") for m, v in completed.modalities.items()}
    split = bundle.split(args.split)
    pos = dict(zip(bundle.labels, split.y.sum(0).astype(int).tolist()))
    print(f"PTB-XL {args.split}: {len(split)} ECGs; positives per label {pos}")
    names = {"ecg": "ECG only", "clinical": "tabular only"}
    specs = {**{names.get(m, m): only(base, m, mods) for m in mods}, "fused": base}
    out_root = Path(tempfile.mkdtemp(prefix="ptbxl-bench-"))
    res: dict[str, list[float]] = {n: [] for n in specs}
    per_label: list[dict[str, float]] = []
    secs: dict[str, list[float]] = {n: [] for n in specs}
    t0 = time.perf_counter()
    for seed in args.seeds:
        line = []
        for name, spec in specs.items():
            r = train(
                spec,
                out=out_root / f"{name.replace(' ', '-')}-s{seed}",
                data_dir=args.data_dir,
                device="cpu",
                overwrite=True,
                seed=seed,
                progress=False,
            )
            m = r.metrics[args.split]
            res[name].append(float(m["auroc"]))
            secs[name].append(r.seconds)
            if name == "fused":
                per_label.append({k: v["auroc"] for k, v in m["per_label"].items()})
            line.append(f"{name} {m['auroc']:.3f}")
        print(f"seed {seed}: " + ", ".join(line), flush=True)
    print(f"\nmacro AUROC on {args.split} (mean ± sd over seeds {args.seeds}):")
    for name in specs:
        v = np.array(res[name])
        print(f"  {name:<14} {v.mean():.3f} ± {v.std():.3f}   (train {np.mean(secs[name]):.0f} s)")
    labels = list(per_label[0])
    print("  fused per label: " + ", ".join(
        f"{k} {np.nanmean([p[k] for p in per_label]):.3f}" for k in labels))  # fmt: skip
    fused, ecg = float(np.mean(res["fused"])), float(np.mean(res["ECG only"]))
    print(f"fused - ECG only = {fused - ecg:+.3f} ({'not worse' if fused >= ecg else 'WORSE'})")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        record = {"split": args.split, "seeds": args.seeds, "auroc": res}
        record.update(fused_per_label=per_label, seconds=secs)
        Path(args.json).write_text(json.dumps(record, indent=2))


#: --split cv: (held-out group, early-stopping fold) over strat_folds 1-9; fold 10 stays unseen
CV_FOLDS = [([1, 2, 3], 4), ([4, 5, 6], 7), ([7, 8, 9], 1)]


def cross_validate(args: argparse.Namespace, base: dict[str, Any]) -> None:
    def folds(k: int) -> str:
        test, val = CV_FOLDS[k]
        train_f = [f for f in range(1, 10) if f not in test and f != val]
        return f"data.options.folds={{train: {train_f}, val: [{val}], test: {test}}}"

    first = apply_overrides(base, [folds(0)])
    completed, _ = prepare_data(parse_spec(first), args.data_dir)
    mods = {m: v.model_dump(mode="json") for m, v in completed.modalities.items()}
    names = {"ecg": "ECG only", "clinical": "tabular only"}
    specs = {**{m: only(base, m, mods) for m in mods}, "fused": base}
    specs = {k: v for k, v in specs.items() if not args.models or k in args.models}
    out_root = Path(tempfile.mkdtemp(prefix="ptbxl-cv-"))
    res: dict[str, list[float]] = {n: [] for n in specs}
    for seed in args.seeds:
        for k in range(len(CV_FOLDS)):
            line = []
            for name, spec in specs.items():
                r = train(
                    apply_overrides(spec, [folds(k)]),
                    out=out_root / f"{name}-s{seed}-f{k}",
                    data_dir=args.data_dir,
                    device="cpu",
                    overwrite=True,
                    seed=seed,
                    progress=False,
                )
                res[name].append(float(r.metrics["test"]["auroc"]))
                line.append(f"{names.get(name, name)} {res[name][-1]:.3f}")
            print(f"seed {seed} fold {k}: " + ", ".join(line), flush=True)
    print(f"\nmacro AUROC, 3-fold CV over folds 1-9 (mean over folds and seeds {args.seeds}):")
    for name, v in res.items():
        print(
            f"  {names.get(name, name):<14} {np.mean(v):.4f} (folds x seeds: {np.round(v, 3).tolist()})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"split": "cv", "seeds": args.seeds, "auroc": res}))


if __name__ == "__main__":
    main()
