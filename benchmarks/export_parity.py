"""Export parity on real data: ONNX (fp32), torch.export and the INT8 package vs PyTorch.

Trains a single-composite BreastMNIST package (``ensemble=1``, ``train.keep=best``; or takes ``--package``), exports it to ONNX and ``model.pt2``,
quantizes it with ``medfuse quantize`` (the compression area's INT8 package), and verifies every
runtime on the stored verification inputs and on the whole test split. Prints max |logit diff|
and label agreement per runtime, and whether each met its criterion (fp32: <= 1e-4; INT8: label
agreement >= 99%).

    python benchmarks/export_parity.py --data-dir /work/shared/data [--package DIR] [--epochs 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("MEDFUSE_DATA_DIR", "/work/shared/data"))
    ap.add_argument("--package", help="an existing package (copied, never modified)")
    ap.add_argument("--epochs", type=int, default=8)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from medfuse.export.exporter import export_package
    from medfuse.export.verify import verify_package

    work = Path(tempfile.mkdtemp(prefix="medfuse-parity-"))
    try:
        pkg = work / "fp32"
        if a.package:
            shutil.copytree(a.package, pkg)
        else:
            subprocess.run(
                [sys.executable, "-m", "medfuse", "train", "breastmnist", "--out", str(pkg),
                 "--data-dir", a.data_dir, "--set", f"train.epochs={a.epochs}", "--set", "ensemble=1", "--set", "train.keep=best",
                 "--device", "cpu"],
                check=True, capture_output=True,
            )  # fmt: skip
        export_package(pkg, format="onnx", data_dir=a.data_dir, verify=False)
        export_package(pkg, format="pt2", data_dir=a.data_dir, verify=False)
        packages = {"fp32": pkg}
        try:
            from medfuse.compress.quantize import quantize

            packages["int8"] = quantize(pkg, out=work / "int8", data_dir=a.data_dir).package
        except ImportError as err:
            print(f"(no INT8 package: {err})")
        rows = []
        for name, path in packages.items():
            for split in (None, "test"):
                rep = verify_package(path, split=split, data_dir=a.data_dir)
                for c in rep.checks:
                    if c.status == "skipped":
                        continue
                    rows.append((name, split or "verification.npz", c))
        print(f"\n{'package':8} {'inputs':17} {'runtime':8} {'prec':5} {'n':>4} "
              f"{'max|diff|':>10} {'labels':>8}  criterion              result")  # fmt: skip
        for name, inputs, c in rows:
            print(f"{name:8} {inputs:17} {c.runtime:8} {c.precision:5} {c.n:4d} "
                  f"{c.max_abs_diff:10.2e} {c.label_agreement:8.2%}  {c.criterion:22} {c.status}")  # fmt: skip
        failed = [r for r in rows if r[2].status != "ok"]
        print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed")
        if failed:
            raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
