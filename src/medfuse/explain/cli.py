"""``medfuse explain``: Grad-CAM, integrated gradients and modality Shapley values for a package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medfuse.core.console import Handler, console


def setup_explain(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package", help="model package directory")
    p.add_argument(
        "--input",
        required=True,
        help="manifest .csv/.parquet (the training layout, as medfuse predict reads it), .npz "
        "with one array per modality, or one image/signal file",
    )
    p.add_argument("-o", "--out", required=True, help="output directory (JSON + PNGs)")
    p.add_argument(
        "--rows",
        help="0-based rows to draw maps for, e.g. 0,3,5 or 0-9 (default: the first --max-samples);"
        " modality contributions are averaged over every row",
    )
    p.add_argument(
        "--layer",
        help="Grad-CAM layer of the image branch, e.g. features.1 or branches.image.stem "
        "(default: the last convolutional block)",
    )
    p.add_argument(
        "--target",
        help="class to explain (multiclass/multilabel; default: the predicted class). "
        "Binary models are explained for the positive class.",
    )
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    p.add_argument("--max-samples", type=int, default=20, help="maps for at most this many rows")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--on-bad-row",
        default="fail",
        choices=["fail", "missing"],
        help="an unusable input (unreadable file, NaN values): fail (the default, as in "
        "training and medfuse predict) or missing (explain without it; the sample says why)",
    )
    p.add_argument(
        "--base-dir",
        help="directory that relative file paths in the input resolve against (default: the "
        "manifest's own directory)",
    )

    def run(a: argparse.Namespace) -> int:
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.core.predictor import MAX_LISTED, attention_summary, scored_text
        from medfuse.explain.explainer import (  # lazy: torch and captum, only when the verb runs
            SHAPLEY_SCALE,
            explain_file,
        )

        doc = explain_file(
            a.package,
            a.input,
            out=a.out,
            rows=a.rows,
            layer=a.layer,
            target=a.target,
            steps=a.steps,
            device=a.device,
            max_samples=a.max_samples,
            on_bad_row=a.on_bad_row,
            base_dir=a.base_dir,
        )
        rows = doc["dataset"]["n"] + len(doc["not_explained"])
        listing = Path(a.out) / "explanation.json" if len(doc["affected"]) > MAX_LISTED else None
        for line in attention_summary(doc["affected"], rows, listing):
            print(line, file=sys.stderr)
        c = console()
        d = doc["dataset"]["shapley"][SHAPLEY_SCALE]
        shares = ", ".join(f"{m} {d['mean_abs'][m]:.3f}" for m in d["ranking"])
        c.print(f"explained {doc['explained']}; {len(doc['samples'])} samples with maps")
        c.print(
            scored_text(doc["model"], "model explained")
            + (f" ({doc['model']['note']})" if doc["model"].get("note") else "")
        )
        c.print(f"modality contributions (mean |Shapley|, {SHAPLEY_SCALE}, n={d['n']}): {shares}")
        c.print(f"-> {a.out}/explanation.json ({doc['seconds']:.2f} s)")
        return 0

    return run
