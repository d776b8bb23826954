"""Does Grad-CAM on PneumoniaMNIST look at the lungs or at the border?

Trains the shipped PneumoniaMNIST config (fewer epochs by default, to spare the CPU), computes
Grad-CAM on the last convolutional block for every test image, and reports the share of CAM mass
inside central boxes (the middle 50% and 75% of rows and columns: where the lung fields are on
these 28-px chest X-rays) for the trained model, for the same model with randomised weights
(Adebayo et al. 2018) and for a uniform map. Also the Spearman rank correlation of trained vs
randomised maps. Writes the mean CAMs and a few overlays as PNGs beside the package.

    python benchmarks/gradcam_pneumonia.py [--data-dir /work/shared/data] [--epochs 5]
        [--out runs/bench-gradcam-pneumonia] [--retrain] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def cams(model, inputs, masks, layer, batch=256):
    from medfuse.explain.gradcam import grad_cam

    n = len(masks["image"])
    out = []
    for s in range(0, n, batch):
        sl = slice(s, s + batch)
        x = {k: v[sl] for k, v in inputs.items()}
        mk = {k: v[sl] for k, v in masks.items()}
        r = grad_cam(
            model, x, mk, "image", torch.zeros(len(mk["image"]), dtype=torch.long), layer=layer
        )
        out.append(r["upsampled"])
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("MEDFUSE_DATA_DIR", str(ROOT.parent / "shared" / "data")),
    )
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-gradcam-pneumonia"))
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layer", default=None, help="Grad-CAM layer (default: last conv block)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from medfuse.api import prepare_data, train
    from medfuse.core.spec import load_spec
    from medfuse.explain.gradcam import central_mass
    from medfuse.explain.plots import gradcam_overlay
    from medfuse.explain.sanity import randomized_copy, spearman
    from medfuse.inference.predictor import load
    from medfuse.training.metrics import compute_metrics

    cfg = ROOT / "configs" / "pneumoniamnist.yaml"
    overrides = [f"train.epochs={args.epochs}"]
    out = Path(args.out)
    if args.retrain or not (out / "medfuse.json").exists():
        t0 = time.perf_counter()
        train(
            cfg, out=out, data_dir=args.data_dir, overrides=overrides, device="cpu", overwrite=True
        )
        print(f"trained {out} ({args.epochs} epochs) in {time.perf_counter() - t0:.0f} s")
    pred = load(out)
    _, bundle = prepare_data(load_spec(cfg, overrides), args.data_dir)
    test = bundle.test
    p = pred.predict_proba(test)
    met = compute_metrics("binary", test.y, p, pred.threshold, pred.labels)
    print(f"test AUROC {met['auroc']:.3f}, accuracy {met['accuracy']:.3f} (n={len(test.y)})")

    from medfuse.explain.explainer import Explainer

    ex = Explainer(pred, layer=args.layer)
    inputs, masks = ex.tensors(test.arrays, test.masks)
    layer = ex.image_layers["image"]
    t0 = time.perf_counter()
    trained = cams(pred.model, inputs, masks, layer)
    secs = time.perf_counter() - t0
    rnd_model = randomized_copy(pred.model, seed=0)
    rnd = cams(rnd_model, inputs, masks, layer)
    print(f"Grad-CAM at branches.image.{layer} on {len(trained)} test images: {secs:.1f} s")
    print("share of CAM mass inside the central box (mean over test images; higher = lungs):")
    print(f"  {'box':>18s} {'trained':>8s} {'random':>8s} {'uniform':>8s}")
    for frac in (0.5, 0.75):
        a = np.nanmean(central_mass(trained, frac))
        b = np.nanmean(central_mass(rnd, frac))
        u = float(central_mass(np.ones((1, 28, 28)), frac)[0])
        print(f"  {f'middle {frac:.0%} x {frac:.0%}':>18s} {a:8.3f} {b:8.3f} {u:8.3f}")
    border = 3
    inner = np.zeros((28, 28), bool)
    inner[border:-border, border:-border] = True

    def outer(c):
        c = np.clip(c, 0, None)
        tot = c.reshape(len(c), -1).sum(1)
        return np.nanmean(
            np.where(tot > 0, c[:, ~inner].sum(1) / np.where(tot > 0, tot, 1), np.nan)
        )

    print(
        f"  mass in the {border}-px border frame ({(~inner).mean():.0%} of the area): trained "
        f"{outer(trained):.3f}, random {outer(rnd):.3f}"
    )
    rs = [spearman(a, b) for a, b in zip(trained, rnd)]
    print(f"Spearman(trained CAM, random CAM), mean over images: {np.nanmean(rs):+.3f}")

    # pictures (beside the package, not in it): the mean CAM per model, and a few overlays
    pics = out.with_name(out.name + "-pictures")
    pics.mkdir(parents=True, exist_ok=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), layout="constrained")
    axs = fig.subplots(1, 2)
    for ax, c, t in zip(axs, (trained, rnd), ("trained", "random weights")):
        m = np.nanmean(c / np.maximum(c.reshape(len(c), -1).max(1), 1e-12)[:, None, None], 0)
        ax.imshow(m, cmap="jet")
        ax.set_title(f"mean Grad-CAM, {t}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(pics / "mean_gradcam.png")
    pos = np.flatnonzero(test.y == 1)[:3].tolist() + np.flatnonzero(test.y == 0)[:3].tolist()
    for i in pos:
        (pics / f"gradcam_test{i}.png").write_bytes(
            gradcam_overlay(
                test.arrays["image"][i],
                trained[i],
                title=f"test {i} (y={int(test.y[i])}, p={p[i]:.2f})",
            )
        )
    print(f"pictures: {pics}/mean_gradcam.png, {pics}/gradcam_test*.png")


if __name__ == "__main__":
    main()
