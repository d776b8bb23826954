"""``medfuse demo``: the main job on built-in defaults, no download.

Trains the SYNTHETIC three-modality composite (four with ``text``: generated notes) with staged
training, compares it with each single branch, saves the package, reloads it, predicts, and
prints a short table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.api import train
from medfuse.core.spec import load_spec
from medfuse.data import load_data
from medfuse.inference.predictor import load


def run_demo(
    *,
    out: str | Path = "runs/demo",
    device: str = "auto",
    console: Any = None,
    text: bool = False,
) -> dict[str, Any]:

    t0 = time.perf_counter()
    config = "synthetic-text.yaml" if text else "synthetic.yaml"
    spec = load_spec(Path(__file__).parent / "configs" / config)
    # the demo's own output: a package from an earlier demo is replaced (anything else is refused)
    res = train(
        spec, out=out, device=device, progress=False, overwrite=True, command="medfuse demo"
    )
    test = res.metrics["test"]
    pred = load(res.package, device="cpu")
    # read as the package reads (its tokenizers and category codes, were the demo to have any)
    bundle = load_data(
        spec.data.source, spec.data.options, preprocessing=pred.meta["preprocessing"]
    )
    sample = bundle.test.subset(np.arange(5))
    probs = pred.predict_proba(sample)
    labels = pred.predict(sample)
    seconds = time.perf_counter() - t0
    summary = {
        "fused_auroc": test["auroc"],
        "branch_auroc": {m: v["auroc"] for m, v in test["branches"].items()},
        "package": str(res.package),
        "seconds": seconds,
        "example": [{"prob": float(p), "label": lab} for p, lab in zip(probs, labels)],
    }
    if console is not None:
        # lazy: rich, only to print
        from rich.table import Table

        t = Table(
            title=f"medfuse demo: SYNTHETIC virtual patients ({' + '.join(summary['branch_auroc'])}), "
            "test split"
        )
        t.add_column("model")
        t.add_column("test AUROC", justify="right")
        for m, v in summary["branch_auroc"].items():
            t.add_row(f"{m} branch alone", f"{v:.3f}")
        t.add_row("[bold]fused (staged training)[/bold]", f"[bold]{test['auroc']:.3f}[/bold]")
        console.print(t)
        best = max(summary["branch_auroc"].values())
        console.print(f"fusion gain over the best single branch: {test['auroc'] - best:+.3f} AUROC")
        shown = ", ".join(f"{e['label']} ({e['prob']:.2f})" for e in summary["example"])
        console.print(f"reloaded package predicts: {shown}")
        console.print(f"package: {res.package}   time: {seconds:.1f} s")
    return summary
