"""Clinical evaluation figures (docs/evaluation.md), measured in one run.

speed       1000 bootstrap resamples of 1000 samples: every binary metric, vectorised, vs a
            loop of scikit-learn calls (AUROC alone); the RATIO from the same run.
breastmnist train configs/breastmnist.yaml (or reuse --package), then: test AUROC with its
            95% bootstrap CI and DeLong's analytic CI; temperature scaling fit on validation
            (ECE before/after on val and test, 10 equal-width bins).
compare     small synthetic runs: fused vs image-only, and two seeds of one fused config
            (the spec of tests/report/test_report_compare.py); DeLong and bootstrap p-values.

  python benchmarks/clinical_eval.py [--data-dir DIR] [--package /tmp/bm] [--skip compare]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

torch.set_num_threads(1)


def speed() -> None:
    from sklearn.metrics import roc_auc_score

    from medfuse.report.ci import iter_weights, metric_intervals

    rng = np.random.default_rng(0)
    n = 1000
    y = (rng.random(n) < 0.3).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    t0 = time.perf_counter()
    iv = metric_intervals("binary", y, p, 0.5, n_boot=1000, seed=0)
    vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx = np.random.default_rng(0).integers(0, n, (1000, n))
    loop = [roc_auc_score(y[i], p[i]) for i in idx]
    skl = time.perf_counter() - t0
    del loop
    w = next(iter_weights(n, n_boot=1000, seed=0))
    print("## speed: 1000 resamples x 1000 samples")
    print(f"vectorised, all {len(iv)} binary metrics: {vec:.2f} s")
    print(f"scikit-learn loop, AUROC only:           {skl:.2f} s")
    print(f"ratio (sklearn AUROC-only / vectorised all metrics): {skl / vec:.1f}x")
    print(f"weights matrix per chunk: {w.shape}")


def breastmnist(data_dir: str | None, package: str | None) -> None:
    from medfuse.report.calibration import calibrate_package
    from medfuse.report.clinical import clinical_evaluation
    from medfuse.report.compare import delong_interval

    if package is None:
        from medfuse.api import train

        out = Path(tempfile.mkdtemp()) / "bm"
        t0 = time.perf_counter()
        package = str(train("breastmnist", out=out, data_dir=data_dir, device="cpu").package)
        print(f"trained configs/breastmnist.yaml in {time.perf_counter() - t0:.0f} s -> {package}")
    ev = clinical_evaluation(package, data_dir=data_dir, n_boot=1000, seed=0)
    a = ev.summary["metrics"]["auroc"]
    d = delong_interval(ev.predictions.y, ev.predictions.p)
    pos = int(ev.predictions.y.sum())
    print(f"\n## BreastMNIST ({package})")
    print(f"test n={ev.summary['n']} ({pos} positive '{ev.predictor.labels[1]}')")
    print(
        f"test AUROC {a['value']:.4f}, 95% bootstrap CI {a['lo']:.4f}-{a['hi']:.4f} "
        f"(width {a['hi'] - a['lo']:.4f}); DeLong CI {d['lo']:.4f}-{d['hi']:.4f} "
        f"(width {d['hi'] - d['lo']:.4f}); contains point: {a['lo'] <= a['value'] <= a['hi']}"
    )
    # Hanley & McNeil (1982) normal approximation, for both assignments of the two classes
    av, m, n = a["value"], pos, ev.summary["n"] - pos
    q1, q2 = av / (2 - av), 2 * av**2 / (1 + av)
    widths = [
        2
        * 1.96
        * np.sqrt((av * (1 - av) + (i - 1) * (q1 - av**2) + (j - 1) * (q2 - av**2)) / (i * j))
        for i, j in ((m, n), (n, m))
    ]
    print(f"Hanley-McNeil 95% CI width at this AUROC: {min(widths):.3f}-{max(widths):.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        r = calibrate_package(package, out=Path(tmp) / "cal", data_dir=data_dir)["calibration"]
    print(
        f"temperature scaling: T={r['temperature']:.4f}; val ECE {r['ece_before']:.4f} -> "
        f"{r['ece_after']:.4f}; test ECE {r['test_ece_before']:.4f} -> {r['test_ece_after']:.4f}; "
        f"val NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f} ({r['binning']})"
    )


def compare() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "report"))
    from test_report_compare import SPEC, image_only

    from medfuse.api import train
    from medfuse.report.compare import compare_packages

    root = Path(tempfile.mkdtemp())
    runs = {"fused": (SPEC, 0), "fused_seed1": (SPEC, 1), "image": (image_only(SPEC), 0)}
    pk = {
        n: train(copy.deepcopy(s), out=root / n, device="cpu", seed=seed, progress=False).package
        for n, (s, seed) in runs.items()
    }
    print("\n## compare (synthetic, n_test=300)")
    for a, b in (("image", "fused"), ("fused", "fused_seed1")):
        res = compare_packages([pk[a], pk[b]])
        c = res["comparisons"][0]
        ma, mb = (m["metrics"]["auroc"] for m in res["models"])
        print(
            f"{b} vs {a}: AUROC {mb['value']:.4f} vs {ma['value']:.4f}, diff {c['diff']:+.4f} "
            f"(bootstrap CI {c['bootstrap']['lo']:+.4f} to {c['bootstrap']['hi']:+.4f}); "
            f"DeLong p={c['delong']['p']:.3g}, bootstrap p={c['bootstrap']['p']:.3g}; "
            f"significant={c['significant']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--package", help="an existing BreastMNIST package (skips training)")
    ap.add_argument(
        "--skip", action="append", default=[], choices=["speed", "breastmnist", "compare"]
    )
    a = ap.parse_args()
    if "speed" not in a.skip:
        speed()
    if "breastmnist" not in a.skip:
        breastmnist(a.data_dir, a.package)
    if "compare" not in a.skip:
        compare()


if __name__ == "__main__":
    main()
