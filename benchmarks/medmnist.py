"""Train a shipped MedMNIST config over several seeds and print test metrics, size and time.

    python benchmarks/medmnist.py breastmnist --seeds 0 1 2 [--data-dir ../shared/data]
    python benchmarks/medmnist.py pneumoniamnist --seeds 0

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
from medfuse.data import load_data
from medfuse.training.metrics import binary_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", choices=["breastmnist", "pneumoniamnist"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args()
    rows = []
    probs: dict[str, list] = {"val": [], "test": []}
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
            bundle = load_data(pred.spec.data.source, data_root=a.data_dir)
            test = bundle.test
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
