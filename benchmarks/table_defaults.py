"""Cross-validate candidate defaults of ``medfuse train --table`` / ``medfuse.fit`` (no test split).

    OMP_NUM_THREADS=1 python benchmarks/table_defaults.py --folds 3 --max-samples 1200 \\
        --out table_defaults.jsonl

The table path trains with ``medfuse.data.table.train_defaults(n)`` and the default branches
(``cnn`` / ``cnn1d`` / ``mlp``) when the user sets nothing. This script scores a few candidate
variations of it over every labelled set in the data root, each by stratified K-fold
cross-validation over the official **train + validation** samples only (the test splits are never
read into a model): each fold's training part is split again (85/15, stratified) into train and
the validation split the candidate may use (threshold, best epoch, early stopping), and the
held-out fold only scores. Tasks:

- ``breastmnist`` (binary, 624 images, 27% positive), ``pneumoniamnist`` (binary, 74% positive);
- ``mixed4`` (multiclass image task made from both: breast benign/malignant, chest normal/
  pneumonia, imbalanced 4 classes);
- ``mitbih`` (multiclass, AAMI N/S/V/F beats of DS1, heavily imbalanced; beat + rhythm + age/sex);
- ``ptbxl`` (multilabel, 5 superclasses, folds 1-9 of the 500-record subset; ECG + tabular).

Printed per task and candidate: macro AUROC (mean over folds), and for multiclass argmax accuracy
and balanced accuracy. Each result is appended to ``--out`` (JSON lines) as soon as it exists,
so a partial run still reports what ran.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CANDIDATES: dict[str, dict[str, Any]] = {
    # the table defaults as shipped: final weights, no early stopping, no class weights
    "last": {},
    # epoch chosen on the validation split (lowest loss), early stopping
    "best": {"keep": "best", "early_stopping": {"metric": "loss", "patience": 8}},
    # final weights with square-root inverse-frequency class weights
    "last-sqrt": {"class_weights": "sqrt"},
}


def _pool(bundle: Any) -> Any:
    """Train + val of a bundle as one Split (the test split is dropped, never read)."""
    from medfuse.data import Split

    a, b = bundle.train, bundle.val
    arrays = {m: np.concatenate([a.arrays[m], b.arrays[m]]) for m in a.arrays}
    masks = {m: np.concatenate([a.masks[m], b.masks[m]]) for m in a.masks}
    return Split(arrays, masks, np.concatenate([a.y, b.y]))


def load_tasks(names: list[str], root: str | None) -> dict[str, tuple[Any, Any]]:
    """name -> (pooled Split of train + val, the bundle it came from)."""
    from medfuse.data import Split, load_data

    out: dict[str, tuple[Any, Any]] = {}
    med = {}
    for name in ("breastmnist", "pneumoniamnist"):
        if name in names or "mixed4" in names:
            b = load_data(f"medmnist:{name}", data_root=root)
            med[name] = (_pool(b), b)
            if name in names:
                out[name] = med[name]
    if "mixed4" in names:
        (sb, bb), (sp, _) = med["breastmnist"], med["pneumoniamnist"]
        arrays = {"image": np.concatenate([sb.arrays["image"], sp.arrays["image"]])}
        masks = {"image": np.concatenate([sb.masks["image"], sp.masks["image"]])}
        y = np.concatenate([sb.y.astype(int), 2 + sp.y.astype(int)]).astype(np.int64)
        bundle = type(bb)(
            bb.train, bb.val, None, bb.modalities,
            ["breast-benign", "breast-malignant", "chest-normal", "chest-pneumonia"],
            "multiclass",
        )  # fmt: skip
        out["mixed4"] = (Split(arrays, masks, y), bundle)
    if "mitbih" in names:
        b = load_data("mitbih", data_root=root)
        out["mitbih"] = (_pool(b), b)
    if "ptbxl" in names:
        b = load_data("ptbxl", data_root=root)
        out["ptbxl"] = (_pool(b), b)
    return out


_FOLD: dict[str, Any] = {}


def _register_source() -> None:
    from medfuse.data import DATASETS

    if "cvfold" not in DATASETS:

        @DATASETS.register("cvfold")
        def _cvfold(arg: str, options: dict[str, Any], **_: Any) -> Any:
            """One cross-validation fold held in memory (benchmarks/table_defaults.py)."""
            return _FOLD[arg]


def _strat(y: np.ndarray, least: int = 2) -> np.ndarray:
    """Stratification labels: the class, or the multilabel combination; strata smaller than
    ``least`` are pooled into one."""
    s = (y if y.ndim == 1 else (y * (2 ** np.arange(y.shape[1]))).sum(1)).astype(int)
    vals, counts = np.unique(s, return_counts=True)
    small = np.isin(s, vals[counts < least])
    if small.sum() < least:  # too few even pooled: they join the largest stratum
        return np.where(small, vals[counts.argmax()], s)
    return np.where(small, -1, s)


def run(a: argparse.Namespace) -> None:
    import torch
    from sklearn.model_selection import StratifiedKFold, train_test_split

    import medfuse
    from medfuse.data import DataBundle
    from medfuse.data.table import train_defaults

    torch.set_num_threads(a.threads)
    _register_source()
    tasks = load_tasks(a.tasks, a.data_dir)
    out = Path(a.out)
    folds: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name, (split, _) in tasks.items():
        n = len(split)
        keep = np.arange(n)
        if n > a.max_samples:  # stratified subsample
            keep, _ = train_test_split(
                keep, train_size=a.max_samples, stratify=_strat(split.y), random_state=a.seed
            )
            keep = np.sort(keep)
        sub = split.subset(keep)
        tasks[name] = (sub, tasks[name][1])
        strat = _strat(sub.y, a.folds)
        skf = StratifiedKFold(n_splits=a.folds, shuffle=True, random_state=a.seed)
        folds[name] = list(skf.split(np.zeros(len(sub)), strat))
    for k in range(a.folds):  # fold-major: every task and candidate gets fold 0 first
        for name, (split, bundle) in tasks.items():
            tr_all, ho = folds[name][k]
            strat = _strat(split.y[tr_all], 7)  # 15% of a stratum of 7 is one sample
            tr, va = train_test_split(
                tr_all, test_size=0.15, stratify=strat, random_state=a.seed + k
            )
            _FOLD[name] = DataBundle(
                split.subset(tr), split.subset(va), split.subset(ho),
                dict(bundle.modalities), list(bundle.labels), bundle.task,
                info={"name": f"{name} cv fold {k}", "synthetic": False},
            )  # fmt: skip
            for cand in a.candidates:
                train = {**train_defaults(len(tr)), **CANDIDATES[cand], "seed": a.seed}
                spec = {
                    "name": f"{name}-{cand}-{k}",
                    "task": {"type": bundle.task, "labels": list(bundle.labels)},
                    "data": {"source": f"cvfold:{name}"},
                    "train": train,
                }
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    res = medfuse.train(spec, out=Path(tmp) / "pkg", device="cpu", progress=False)
                m = res.metrics["test"]  # the held-out CV fold (no dataset test split here)
                rec = {
                    "task": name,
                    "kind": bundle.task,
                    "candidate": cand,
                    "fold": k,
                    "n_train": int(len(tr)),
                    "n_heldout": int(len(ho)),
                    "epochs": train["epochs"],
                    "auroc": m.get("auroc"),
                    "accuracy": m.get("accuracy"),
                    "balanced_accuracy": m.get("balanced_accuracy"),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                print(json.dumps(rec), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
    summarize(out)


def summarize(path: Path) -> None:
    """Mean over folds per task and candidate (folds present for every candidate only)."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["task"], r["candidate"]), []).append(r)
    tasks = sorted({r["task"] for r in rows})
    cands = sorted({r["candidate"] for r in rows})
    print(f"{'task':<16}{'candidate':<12}{'folds':>6}{'AUROC':>8}{'acc':>8}{'bal.acc':>9}")
    for t in tasks:
        done = [{r["fold"] for r in by.get((t, c), [])} for c in cands]
        common = set.intersection(*done) if done else set()
        for c in cands:
            rs = [r for r in by.get((t, c), []) if r["fold"] in common]
            if not rs:
                continue

            def mean(key: str, rs: list[dict[str, Any]] = rs) -> str:
                v = [r[key] for r in rs if r.get(key) is not None]
                return f"{np.mean(v):.3f}" if v else "-"

            acc = mean("accuracy") if rs[0]["kind"] == "multiclass" else "-"
            bal = mean("balanced_accuracy") if rs[0]["kind"] == "multiclass" else "-"
            print(f"{t:<16}{c:<12}{len(rs):>6}{mean('auroc'):>8}{acc:>8}{bal:>9}")
    # per candidate: mean over the tasks (each task's mean over the folds every candidate has)
    per: dict[str, list[float]] = {c: [] for c in cands}
    for t in tasks:
        common = set.intersection(*[{r["fold"] for r in by.get((t, c), [])} for c in cands])
        if common:
            for c in cands:
                per[c].append(
                    float(np.mean([r["auroc"] for r in by[(t, c)] if r["fold"] in common]))
                )
    for c in cands:
        if per[c]:
            print(
                f"{'mean of ' + str(len(per[c])) + ' tasks':<16}{c:<12}{'':>6}{np.mean(per[c]):>8.3f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--tasks",
        nargs="+",
        default=["breastmnist", "pneumoniamnist", "mixed4", "mitbih", "ptbxl"],
    )
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--max-samples", type=int, default=1200, help="stratified subsample per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="table_defaults.jsonl", help="results, JSON lines (appended)")
    ap.add_argument("--summary", action="store_true", help="only summarise --out")
    a = ap.parse_args()
    if a.summary:
        summarize(Path(a.out))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    run(a)


if __name__ == "__main__":
    main()
