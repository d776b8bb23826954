"""Modality Shapley values against the SYNTHETIC generator's truth, and the time to explain.

Trains the shipped synthetic three-modality composite (configs/synthetic.yaml) with distinct
true modality weights (image 1.5, signal 1.0, tabular 0.5 by default), then on the test split:

- dataset level: the ranking of mean |Shapley| (probability and logit scale) against the ranking
  of the generator's mean |contrib_<m>| (the true per-case contribution w_m * z_m);
- per case: Spearman correlation of each modality's Shapley value (logit scale) with its true
  contribution, and how often the modality with the largest |Shapley| is the truly largest one;
- efficiency: max |sum of Shapley values - (f(all) - f(none))| over the test split;
- the model-randomisation check (Adebayo et al. 2018) on a few test cases;
- time: `medfuse explain` on one sample, end to end in a fresh process (imports, package
  load with checksums, Grad-CAM, integrated gradients, Shapley, all PNGs and the JSON), and the
  warm per-sample time inside one process.

    python benchmarks/explain_synthetic.py [--out runs/bench-explain-synthetic] [--retrain]
        [--weights 1.5,1.0,0.5] [--set train.stages=...] [--threads 1]

The package is reused when it exists (pass --retrain to train again).
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("image", "signal", "tabular")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-explain-synthetic"))
    ap.add_argument("--weights", default="1.5,1.0,0.5", help="true weights image,signal,tabular")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sanity-samples", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from medfuse.api import prepare_data, train
    from medfuse.core.spec import load_spec
    from medfuse.explain.explainer import Explainer
    from medfuse.explain.sanity import randomization_check
    from medfuse.inference.predictor import load
    from medfuse.training.metrics import compute_metrics

    w = dict(zip(MODALITIES, (float(v) for v in args.weights.split(","))))
    overrides = [f"data.options.weights={json.dumps(w)}", *args.overrides]
    out = Path(args.out)
    if args.retrain or not (out / "medfuse.json").exists():
        t0 = time.perf_counter()
        train(
            ROOT / "configs" / "synthetic.yaml",
            out=out,
            overrides=overrides,
            device="cpu",
            overwrite=True,
        )
        print(f"trained {out} in {time.perf_counter() - t0:.0f} s")
    pred = load(out)
    spec, bundle = prepare_data(load_spec(ROOT / "configs" / "synthetic.yaml", overrides))
    if pred.spec.data.options != spec.data.options:
        sys.exit(f"{out} was trained on other data options; pass --retrain")
    test = bundle.test
    p = pred.predict_proba(test)
    m = compute_metrics("binary", test.y, p, pred.threshold, pred.labels)
    print(f"test AUROC {m['auroc']:.3f} (n={len(test.y)}); true weights {w}")

    ex = Explainer(pred)
    t0 = time.perf_counter()
    shap = ex.shapley(test.arrays, test.masks)
    t_shap = time.perf_counter() - t0
    truth = {mm: np.abs(test.meta[f"contrib_{mm}"].to_numpy()).mean() for mm in MODALITIES}
    true_rank = sorted(MODALITIES, key=lambda k: -truth[k])
    print(
        "\ntruth mean |contrib|: "
        + ", ".join(f"{k} {truth[k]:.3f}" for k in true_rank)
        + f"  -> ranking {true_rank}"
    )
    for sc in ("probability", "logit"):
        s = shap[sc].summary()
        ok = s["ranking"] == true_rank
        print(
            f"Shapley mean |phi| ({sc}): "
            + ", ".join(f"{k} {s['mean_abs'][k]:.4f}" for k in s["ranking"])
            + f"  -> ranking {s['ranking']}  {'MATCHES' if ok else 'DIFFERS FROM'} truth"
        )
    from scipy.stats import spearmanr

    lv = shap["logit"].values
    print("per case, Spearman(phi_m logit, true contrib_m):")
    for j, mm in enumerate(MODALITIES):
        r = spearmanr(lv[:, j], test.meta[f"contrib_{mm}"].to_numpy()).statistic
        print(f"  {mm:8s} {r:.3f}")
    true_top = np.argmax(
        np.abs(np.stack([test.meta[f"contrib_{mm}"] for mm in MODALITIES], 1)), axis=1
    )
    top = np.argmax(np.abs(lv), axis=1)
    print(
        f"per case, largest |phi| is the truly largest contribution: {np.mean(top == true_top):.3f}"
    )
    eff = max(float(np.abs(r.values.sum(1) - (r.full - r.base)).max()) for r in shap.values())
    print(f"efficiency: max |sum phi - (f(all) - f(none))| = {eff:.2e} over {len(test.y)} cases")
    print(f"Shapley over {len(test.y)} cases x 8 coalitions: {t_shap:.2f} s")

    k = args.sanity_samples
    sub = (
        {mm: test.arrays[mm][:k] for mm in MODALITIES},
        {mm: test.masks[mm][:k] for mm in MODALITIES},
    )
    chk = randomization_check(ex, *sub)
    print(f"\nmodel randomisation (Spearman trained vs random weights, mean over {k} cases):")
    for mm, r in chk.items():
        print(f"  {mm:8s} {r['method']:22s} |map| {r['abs']:+.3f}   signed {r['signed']:+.3f}")

    # time: one sample, warm (in this process) and cold (`medfuse explain` in a fresh process)
    one = (
        {mm: test.arrays[mm][:1] for mm in MODALITIES},
        {mm: test.masks[mm][:1] for mm in MODALITIES},
    )
    ex.explain(*one)
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        ex.explain(*one)
    warm = (time.perf_counter() - t0) / reps
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "one.npz"
        np.savez(npz, **{mm: one[0][mm] for mm in MODALITIES})
        cmd = [
            sys.executable,
            "-m",
            "medfuse",
            "explain",
            str(out),
            "--input",
            str(npz),
            "-o",
            str(Path(tmp) / "x"),
        ]
        t0 = time.perf_counter()
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True, capture_output=True)
        cold = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    load = os.getloadavg()[0]
    print(
        f"\nexplain one sample (Grad-CAM + IG x2 + exact Shapley + 4 PNGs): warm {warm:.2f} s "
        f"in-process; `medfuse explain` end to end in a fresh process: {cold:.2f} s wall, "
        f"{cpu:.2f} s CPU (target < 5 s; load average {load:.1f} on {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
