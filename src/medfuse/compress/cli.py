"""``medfuse quantize``, ``medfuse prune``, ``medfuse distill`` and ``medfuse benchmark``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from medfuse.core.console import (
    Handler,
    command_line,
    console,
    data_dir_arg,
    fraction,
    overwrite_arg,
    positive_int,
)


def _record_table(title: str, record: dict[str, Any]) -> Any:
    from rich.table import Table  # lazy: rich, only to print

    m = record.get("metrics", {})
    before, after = m.get("before", {}), m.get("after", {})
    t = Table(title=f"{title} ({m.get('split', 'test')})")
    for col in ("", "AUROC", "AUPRC", "ECE", "sensitivity", "specificity"):
        t.add_column(col, justify="right")
    keys = ("auroc", "auprc", "ece", "sensitivity", "specificity")
    for name, row in (("before", before), ("after", after)):
        t.add_row(name, *[f"{row[k]:.4f}" if isinstance(row.get(k), float) else "-" for k in keys])
    return t


def _done(a: argparse.Namespace, res: Any, title: str) -> int:
    if a.json:
        print(
            json.dumps({"package": str(res.package), "record": res.record}, indent=2, default=str)
        )
        return 0
    c = console()
    c.print(res.record["summary"])
    c.print(_record_table(title, res.record))
    c.print(f"package: {res.package}")
    return 0


def setup_quantize(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "dynamic", "static"],
        help="auto (default): per branch; static QDQ for conv branches, dynamic for the rest",
    )
    p.add_argument(
        "--calibration",
        type=positive_int,
        default=256,
        metavar="N",
        help="training samples that calibrate static activation ranges (default 256)",
    )
    p.add_argument(
        "--per-tensor", action="store_true", help="per-tensor weight scales (default per-channel)"
    )
    p.add_argument("-o", "--out", required=True, help="output package directory")
    overwrite_arg(p)
    data_dir_arg(p)
    p.add_argument("--seed", type=int, default=0, help="which calibration samples (default 0)")
    p.add_argument("--json", action="store_true", help="print the compression record as JSON")

    def run(a: argparse.Namespace) -> int:
        # lazy: torch, onnx, torch-pruning, only when the verb runs
        from medfuse.compress.quantize import quantize

        res = quantize(
            a.package,
            out=a.out,
            overwrite=a.overwrite,
            method=a.method,
            calibration=a.calibration,
            per_channel=not a.per_tensor,
            data_dir=a.data_dir,
            seed=a.seed,
            command=command_line(),
        )
        if not a.json:
            s = res.record["size"]
            console().print(
                f"ONNX size {s['fp32_onnx_bytes']:,} -> {s['int8_onnx_bytes']:,} bytes "
                f"({s['ratio']:.2f}x smaller)"
            )
        return _done(a, res, "fp32 vs INT8 (ONNX Runtime)")

    return run


def setup_prune(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument(
        "--amount", type=fraction, default=0.5, help="fraction to remove, in (0, 1) (default 0.5)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--structured",
        dest="structured",
        action="store_true",
        default=True,
        help="remove channels/units per branch (default): fewer MACs, a smaller file",
    )
    g.add_argument(
        "--unstructured",
        dest="structured",
        action="store_false",
        help="zero the smallest weights globally (sparsity; no speed-up in dense kernels)",
    )
    p.add_argument(
        "--finetune-epochs", type=int, default=5, help="fine-tuning epochs (default 5; 0 = none)"
    )
    p.add_argument("--finetune-lr", type=float, help="default: 0.3 x the spec's train.lr")
    p.add_argument("-o", "--out", required=True, help="output package directory")
    overwrite_arg(p)
    data_dir_arg(p)
    p.add_argument("--device", default="cpu", help="fine-tuning device (default cpu)")
    p.add_argument("--seed", type=int, help="default: the spec's train.seed")
    p.add_argument("--json", action="store_true", help="print the compression record as JSON")

    def run(a: argparse.Namespace) -> int:
        # lazy: torch, onnx, torch-pruning, only when the verb runs
        from medfuse.compress.prune import prune

        res = prune(
            a.package,
            out=a.out,
            overwrite=a.overwrite,
            amount=a.amount,
            structured=a.structured,
            finetune_epochs=a.finetune_epochs,
            finetune_lr=a.finetune_lr,
            data_dir=a.data_dir,
            device=a.device,
            seed=a.seed,
            command=command_line(),
        )
        return _done(a, res, "original vs pruned (PyTorch)")

    return run


def setup_distill(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("teachers", nargs="+", metavar="TEACHER", help="teacher package(s)")
    p.add_argument(
        "--student",
        required=True,
        help="student spec YAML/JSON; data/task default to the teacher's, modalities to the "
        "ones its branches name",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a student spec field (repeatable)",
    )
    p.add_argument("--temperature", type=float, default=4.0, help="softening T (default 4)")
    p.add_argument(
        "--alpha", type=float, default=0.7, help="weight of the distillation loss (default 0.7)"
    )
    p.add_argument(
        "--teacher-view",
        choices=["full", "masked", "probe"],
        default="full",
        help="what the teacher sees: all its modalities (full), only the student's (masked), "
        "or its auxiliary head of the student's one modality (probe)",
    )
    p.add_argument("-o", "--out", required=True, help="output package directory")
    overwrite_arg(p)
    data_dir_arg(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, help="overrides the student's train.seed")
    p.add_argument("--json", action="store_true", help="print the compression record as JSON")

    def run(a: argparse.Namespace) -> int:
        # lazy: torch, onnx, torch-pruning, only when the verb runs
        from medfuse.compress.distill import distill

        res = distill(
            a.teachers,
            student=a.student,
            out=a.out,
            overwrite=a.overwrite,
            temperature=a.temperature,
            alpha=a.alpha,
            teacher_view=a.teacher_view,
            data_dir=a.data_dir,
            device=a.device,
            seed=a.seed,
            overrides=a.overrides,
            command=command_line(),
        )
        if not a.json:
            r = res.record
            ret = r["metrics"].get("auroc_retained")
            console().print(
                f"parameters: student/teacher = {r['parameter_ratio']:.1%}"
                + (f"; AUROC retained {ret:.1%}" if ret is not None else "")
            )
        return _done(a, res, "teacher vs student")

    return run


def setup_benchmark(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("packages", nargs="+", metavar="PKG", help="the first is the reference")
    p.add_argument("-o", "--out", help="directory for benchmark.{json,csv,md} and pareto.png")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="PyTorch and ONNX Runtime threads (default 1: fair and stable)",
    )
    p.add_argument(
        "--repeats", type=positive_int, default=30, help="timed rounds per model (default 30)"
    )
    data_dir_arg(p)
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from medfuse.compress.measure import (  # lazy: torch, onnx, torch-pruning, only when the verb runs
            benchmark,
            table_rows,
        )

        res = benchmark(
            a.packages, out_dir=a.out, data_dir=a.data_dir, threads=a.threads, repeats=a.repeats
        )
        if a.json:
            print(json.dumps(res, indent=2, default=str))
            return 0
        from rich.table import Table  # lazy: rich, only to print

        head, body = table_rows(res)
        t = Table(title=f"benchmark ({a.threads} thread(s); changes vs {res['rows'][0]['name']})")
        for h in head:
            t.add_column(h, justify="left" if h in ("model", "prec") else "right")
        for row in body:
            t.add_row(*row)
        c = console()
        c.print(t)
        for kind, f in res["files"].items():
            c.print(f"{kind}: {f}")
        return 0

    return run
