"""Train a shipped MedMNIST config over several seeds and print test metrics, size and time.

    python benchmarks/medmnist.py breastmnist --seeds 0 1 2 [--data-dir ../shared/data]
    python benchmarks/medmnist.py pneumoniamnist --seeds 0

``--split cv`` is for choosing a config without the test split: K-fold cross-validation
(stratified, seeded) over the official train + validation images, each fold trained with
``train.keep=last`` (no epoch is picked on the held-out fold), scored by AUROC on the held-out
fold. It prints each fold's AUROC, their mean and the AUROC of the pooled out-of-fold
probabilities; the test images are never read into a model. With ``--fold-seed N`` every
training seed uses the same folds, and the pooled AUROC of ensembles of the seeds (their mean
out-of-fold probability) is printed too; ``--save-oof FILE.npz`` keeps the
out-of-fold probabilities (plain and averaged with the horizontal mirror) for later pooling;
``--pool FILE ...`` pools saved runs (same folds): the pooled AUROC of ensembles of every size K,
averaged over all K-subsets of the saved seeds. ``--inner-val N`` cuts a validation split of N
images (stratified) from each fold's training images and lets the config select its epoch on it
(``train.keep`` as configured, early stopping included), as ``medfuse train`` does with the
official validation split; the held-out fold still only scores.

    python benchmarks/medmnist.py breastmnist --pool oof_0.npz oof_1.npz oof_2.npz oof_3.npz

    python benchmarks/medmnist.py breastmnist --split cv --folds 5 --seeds 0 --set train.lr=0.001

Reference (MedMNIST v2 paper, ResNet-18 at 28 px, 11M parameters): BreastMNIST AUROC 0.901 /
accuracy 0.863; PneumoniaMNIST 0.944 / 0.854. Accuracy here is at the package's decision
threshold (Youden's J on validation), not at 0.5; both are printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

import medfuse
from medfuse.core.spec import load_spec
from medfuse.data import load_data
from medfuse.training.metrics import binary_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def cross_validate(a: argparse.Namespace) -> None:
    """K-fold CV over train + val (the test split is never used); see the module docstring."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from medfuse.data import resolve_data_root
    from medfuse.data.medmnist import locate

    root = resolve_data_root(a.data_dir)
    with np.load(locate(a.config, root)) as d:
        x = np.concatenate([d["train_images"], d["val_images"]])
        y = np.concatenate([d["train_labels"], d["val_labels"]])
    fold_aurocs, pooled, flip_pooled = [], [], []
    oofs, oofs_flip = [], []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "medmnist").mkdir()
        for seed in a.seeds:
            fold_seed = seed if a.fold_seed is None else a.fold_seed
            skf = StratifiedKFold(n_splits=a.folds, shuffle=True, random_state=fold_seed)
            oof, oof_flip = np.zeros(len(y)), np.zeros(len(y))
            for k, (tr, ho) in enumerate(skf.split(x, y[:, 0])):
                name = f"{a.config}_cv{seed}_{k}"
                va, keep = ho, ["train.keep=last"]  # the held-out fold only scores
                if a.inner_val:  # a validation split of its own, cut from the training folds
                    tr, va = train_test_split(
                        tr, test_size=a.inner_val, stratify=y[tr, 0], random_state=fold_seed + k
                    )
                    keep = []  # the config's own epoch selection, on that split
                np.savez(
                    Path(tmp) / "medmnist" / f"{name}.npz",
                    train_images=x[tr], train_labels=y[tr],
                    val_images=x[va], val_labels=y[va],
                    test_images=x[ho], test_labels=y[ho],
                )  # fmt: skip
                res = medfuse.train(
                    CONFIGS / f"{a.config}.yaml",
                    out=Path(tmp) / f"{name}-pkg",
                    data_dir=tmp,
                    device=a.device,
                    seed=seed,
                    progress=False,
                    overrides=[*a.overrides, f"data.source=medmnist:{name}", *keep],
                )
                pred = medfuse.load(res.package)
                img = x[ho][:, None].astype(np.float32)
                oof[ho] = pred.predict_proba({"image": img})
                mirrored = pred.predict_proba({"image": np.ascontiguousarray(img[..., ::-1])})
                oof_flip[ho] = (oof[ho] + mirrored) / 2
                fold_aurocs.append(roc_auc_score(y[ho, 0], oof[ho]))
                print(f"seed {seed} fold {k}: held-out AUROC {fold_aurocs[-1]:.4f}  train {res.seconds:.0f} s", flush=True)  # fmt: skip
            pooled.append(roc_auc_score(y[:, 0], oof))
            flip_pooled.append(roc_auc_score(y[:, 0], oof_flip))
            oofs.append(oof)
            oofs_flip.append(oof_flip)
            print(f"seed {seed}: pooled out-of-fold AUROC {pooled[-1]:.4f} (with mirror averaging {flip_pooled[-1]:.4f})", flush=True)  # fmt: skip
    print(
        f"{a.config} {a.folds}-fold CV over train+val ({len(y)} images), seeds {a.seeds}, "
        f"overrides {a.overrides or 'none'}:\n  mean fold AUROC {np.mean(fold_aurocs):.4f} "
        f"(sd {np.std(fold_aurocs):.4f} over {len(fold_aurocs)} folds)  pooled out-of-fold AUROC "
        f"{np.mean(pooled):.4f}  with mirror averaging {np.mean(flip_pooled):.4f}"
    )
    if a.fold_seed is not None and len(a.seeds) > 1:
        ensemble_curve(y[:, 0], np.array(oofs), np.array(oofs_flip))
    if a.save_oof:
        np.savez(a.save_oof, y=y[:, 0], seeds=np.array(a.seeds), oof=np.array(oofs),
                 oof_flip=np.array(oofs_flip), fold_seed=-1 if a.fold_seed is None else a.fold_seed)  # fmt: skip


def ensemble_curve(y: np.ndarray, oof: np.ndarray, oof_flip: np.ndarray) -> None:
    """Pooled out-of-fold AUROC of ensembles of every size K (seeds' probabilities averaged),
    the mean over all K-subsets of the runs; ``oof``: (runs, N), the same folds for every run."""
    import itertools

    from sklearn.metrics import roc_auc_score

    for p, what in ((oof, "plain"), (oof_flip, "with mirror averaging")):
        for k in range(1, len(p) + 1):
            subsets = itertools.combinations(range(len(p)), k)
            auc = [roc_auc_score(y, p[list(c)].mean(0)) for c in subsets]
            print(f"{what}: ensembles of {k}: pooled out-of-fold AUROC {np.mean(auc):.4f} "
                  f"(mean over {len(auc)} subsets)")  # fmt: skip


def pool(files: list[str]) -> None:
    """``ensemble_curve`` of runs saved with ``--save-oof`` (same ``--fold-seed``)."""
    runs = [np.load(f) for f in files]
    seeds = {int(r["fold_seed"]) for r in runs}
    if len(seeds) != 1 or -1 in seeds:
        raise SystemExit(
            f"--pool needs runs saved with one and the same --fold-seed; got fold seeds "
            f"{sorted(seeds)} (-1: saved without --fold-seed)"
        )
    ensemble_curve(
        runs[0]["y"],
        np.concatenate([r["oof"] for r in runs]),
        np.concatenate([r["oof_flip"] for r in runs]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", choices=["breastmnist", "pneumoniamnist"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--split", choices=["test", "cv"], default="test")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument(
        "--inner-val",
        type=int,
        default=0,
        help="cv: hold out this many training images per fold as the validation split, and "
        "select epochs as the config says (default: none, and train.keep=last)",
    )
    ap.add_argument("--fold-seed", type=int, default=None, help="cv: the same folds for every seed")
    ap.add_argument(
        "--save-oof", default=None, help="cv: keep the out-of-fold probabilities (.npz)"
    )
    ap.add_argument(
        "--pool", nargs="+", default=None, help="pool saved --save-oof runs (ensembles)"
    )
    a = ap.parse_args()
    if a.pool:
        return pool(a.pool)
    if a.split == "cv":
        return cross_validate(a)
    rows = []
    probs: dict[str, list] = {"val": [], "test": []}
    source = load_spec(CONFIGS / f"{a.config}.yaml", a.overrides).data.source
    bundle = load_data(source, data_root=a.data_dir)  # the same images for every seed
    test = bundle.test
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            res = medfuse.train(
                CONFIGS / f"{a.config}.yaml",
                out=Path(tmp) / f"s{seed}",
                data_dir=a.data_dir,
                device=a.device,
                seed=seed,
                progress=False,
                overrides=a.overrides,
            )
            pred = medfuse.load(res.package)
            probs["val"].append(pred.predict_proba(bundle.val))
            probs["test"].append(pred.predict_proba(test))
            at_half = binary_metrics(test.y, probs["test"][-1], 0.5)["accuracy"]
            m = res.metrics["test"]
            rows.append(
                {
                    "seed": seed,
                    "auroc": m["auroc"],
                    "accuracy": m["accuracy"],
                    "acc@0.5": at_half,
                    "threshold": m["threshold"],
                    "seconds": res.seconds,
                    "params": pred.meta["parameters"],
                }
            )
            print(
                f"seed {seed}: validation AUROC {res.metrics['val']['auroc']:.4f} (what configs are chosen on)  "
                f"test AUROC {m['auroc']:.4f}  accuracy {m['accuracy']:.4f} (threshold {m['threshold']:.3f})  accuracy@0.5 {at_half:.4f}  train {res.seconds:.0f} s",
                flush=True,
            )
    mean = {
        k: statistics.mean(r[k] for r in rows) for k in ("auroc", "accuracy", "acc@0.5", "seconds")
    }
    print(
        f"{a.config}: {rows[0]['params']:,} parameters (ResNet-18: 11.2M); mean of {len(rows)} seeds:"
    )
    print(
        f"  test AUROC {mean['auroc']:.4f}  accuracy {mean['accuracy']:.4f}  accuracy@0.5 {mean['acc@0.5']:.4f}  train time {mean['seconds']:.0f} s per seed"
    )
    if len(rows) > 1:  # what an ensemble of the seeds would give (probabilities averaged)
        from sklearn.metrics import roc_auc_score

        y = {"val": bundle.val.y, "test": test.y}
        ens = {k: roc_auc_score(y[k], np.mean(v, axis=0)) for k, v in probs.items()}
        print(
            f"  ensemble of the {len(rows)} seeds (mean probability): validation AUROC "
            f"{ens['val']:.4f}, test AUROC {ens['test']:.4f}"
        )


if __name__ == "__main__":
    main()
