"""Mixed-format manifest with missing images: trains, evaluates, reports paired/partial metrics.

Builds the SYNTHETIC ``dicom-manifest`` example (DICOM + PNG images with 30% missing, WFDB + CSV
ECGs, tabular columns, plus corrupt files treated as missing with ``on_bad_row: missing``),
trains the shipped ``configs/dicom-manifest.yaml`` per seed with each fusion given, and prints
test AUROC on all samples, on the fully paired subset, on the partial subset (some modality
missing) and with each modality removed. The dataset is tiny (``--n`` cases, test = 25%), so read
the spread over seeds, not the third decimal.

    OMP_NUM_THREADS=2 python benchmarks/missing_modalities.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medfuse.api import train
from medfuse.data.examples import make_dicom_example


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=240, help="cases in the generated manifest")
    ap.add_argument("--bad-files", type=int, default=4)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--fusions", nargs="+", default=["sequence", "concat"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_dicom_example(Path(tmp) / "data", n=args.n, bad_files=args.bad_files)
        rows: dict[str, list[dict[str, float]]] = {f: [] for f in args.fusions}
        for fusion in args.fusions:
            for seed in args.seeds:
                t0 = time.perf_counter()
                res = train(
                    "dicom-manifest",
                    out=Path(tmp) / f"pkg-{fusion}-{seed}",
                    device="cpu",
                    seed=seed,
                    progress=False,
                    overrides=[
                        f"data.source=manifest:{manifest}",
                        "data.on_bad_row=missing",
                        # the shipped config as is; another fusion with its default parameters
                        *([] if fusion == "sequence" else [f"fusion={{type: {fusion}}}"]),
                    ],
                )
                m = res.metrics["test"]
                r = {
                    "all": m["auroc"],
                    "paired": m["paired"]["auroc"],
                    "partial": m["partial"]["auroc"],
                    **{f"without {k}": v["auroc"] for k, v in m["without"].items()},
                    "seconds": time.perf_counter() - t0,
                }
                rows[fusion].append(r)
                print(
                    f"{fusion:9s} seed {seed}: n={m['n']} (paired {m['paired']['n']}, partial "
                    f"{m['partial']['n']}) "
                    + " ".join(f"{k}={v:.3f}" for k, v in r.items() if k != "seconds")
                    + f"  ({r['seconds']:.1f} s)"
                )
        print("\nmean test AUROC over seeds (std)")
        keys = [k for k in rows[args.fusions[0]][0] if k != "seconds"]
        print(f"{'fusion':9s} " + " ".join(f"{k:>17s}" for k in keys))
        for fusion, rs in rows.items():
            cells = []
            for k in keys:
                v = np.array([r[k] for r in rs], dtype=float)
                cells.append(f"{np.nanmean(v):.3f} ({np.nanstd(v):.3f})".rjust(17))
            print(f"{fusion:9s} " + " ".join(cells))


if __name__ == "__main__":
    main()
