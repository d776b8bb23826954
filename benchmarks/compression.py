"""Compression acceptance figures: quantize, prune and distill, measured in one run.

Cases:
  pneumoniamnist      the shipped PneumoniaMNIST model (configs/pneumoniamnist.yaml; real data)
  synthetic-cnn-lstm  configs/synthetic.yaml with the BreastMNIST image branch (ResNet-18 at
                      quarter width) and an LSTM signal branch (+ tabular MLP, concat fusion);
                      no download
  synthetic-cnn-lstm-small  opt-in: the same with the synthetic config's 16-wide image CNN (103k
                      parameters in all), where the INT8 file's fixed bytes weigh more
  breastmnist         opt-in (--case breastmnist): the shipped BreastMNIST model; its test set
                      has 156 cases, so the student's AUROC retention is noisy there

For each case: train the original (or reuse it with --reuse), then quantize (auto), prune 50%
structured + fine-tune (and quantize the pruned model), distill into a student with <= 10% of
the parameters, and benchmark them all in ONE round-robin run (``medfuse benchmark``). Then,
without --skip-cross-modal: a signal-only student distilled from the three-modality synthetic
teacher against the same student trained without the teacher (same data, same seeds, mean of
3).

Timing: 1 thread for PyTorch (torch.set_num_threads) and ONNX Runtime (intra_op_num_threads), so
the comparison is fair and stable on a shared CPU; latencies are interleaved across models and
only RATIOS from the same run are reported.

    python benchmarks/compression.py --data-dir /path/to/data [--reuse] [--case synthetic-cnn-lstm]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from medfuse.api import train
from medfuse.compress.distill import distill, student_spec
from medfuse.compress.measure import benchmark, markdown
from medfuse.compress.prune import prune
from medfuse.compress.quantize import quantize
from medfuse.core.package import read_meta
from medfuse.core.spec import load_spec

CASES: dict[str, dict[str, Any]] = {
    # opt-in (--case breastmnist): its test set has 156 cases, so a student's AUROC is noisy there
    "breastmnist": {
        "config": "breastmnist",
        # the single-model recipe shipped before the ensemble (pruning takes one composite)
        "overrides": [
            "ensemble=1",
            "train.optimizer=adamw",
            "train.lr=0.002",
            "train.keep=best",
            "train.early_stopping={metric: auroc, patience: 15}",
        ],
        "needs_data": True,
        "optional": True,
        # ~7% of the teacher's parameters
        "student": {
            "branches": {
                "image": {"type": "cnn", "width": 8, "depth": 3, "out_features": 64, "dropout": 0.2}
            },
            "head": {"hidden": 32, "dropout": 0.2},
            "train": {
                "epochs": 40,
                "batch_size": 32,
                "lr": 0.003,
                "weight_decay": 0.0005,
                "early_stopping": {"metric": "auroc", "patience": 15},
            },
        },
        "finetune_epochs": 10,
    },
    # the image case: the shipped PneumoniaMNIST model (test n = 624)
    "pneumoniamnist": {
        "config": "pneumoniamnist",
        "overrides": [],
        "needs_data": True,
        "student": {
            "branches": {
                "image": {"type": "cnn", "width": 8, "depth": 3, "out_features": 64, "dropout": 0.2}
            },
            "head": {"hidden": 32, "dropout": 0.2},
            "train": {
                "epochs": 20,
                "batch_size": 64,
                "lr": 0.003,
                "weight_decay": 0.0005,
                "early_stopping": {"metric": "auroc", "patience": 6},
            },
        },
        "finetune_epochs": 5,
    },
    "synthetic-cnn-lstm": {
        "config": "synthetic",
        # the shipped BreastMNIST image branch (ResNet-18 at quarter width) + an LSTM over the
        # signal + the tabular MLP: a composite of realistic size. (With the synthetic config's
        # 16-wide CNN, 103k parameters in all, the INT8 file is only 2.8x smaller: the graph's
        # fixed bytes are a third of it; docs/compression.md)
        "overrides": [
            "branches.image={type: resnet18, width: 16, out_features: 64, dropout: 0.1}",
            "branches.signal={type: lstm, hidden: 64, out_features: 32}",
        ],
        "needs_data": False,
        "student": {
            "branches": {
                "image": {"type": "cnn", "width": 4, "depth": 3, "out_features": 16},
                "signal": {"type": "lstm", "hidden": 16, "out_features": 16},
                "tabular": {"type": "mlp", "hidden": 16, "out_features": 8},
            },
            "head": {"hidden": 16},
            "train": {"epochs": 30, "batch_size": 64, "lr": 0.003},
        },
        "finetune_epochs": 6,
    },
}
# opt-in (--case synthetic-cnn-lstm-small): the same composite with the synthetic config's own
# 16-wide image CNN (103k parameters): the size ratio shows the INT8 graph's fixed bytes
CASES["synthetic-cnn-lstm-small"] = {
    **CASES["synthetic-cnn-lstm"],
    "overrides": ["branches.signal={type: lstm, hidden: 64, out_features: 32}"],
    "optional": True,
}
#: the cross-modal experiment: a signal-only student of the three-modality synthetic teacher
SIGNAL_STUDENT = {
    "branches": {"signal": {"type": "cnn1d", "width": 8, "depth": 3, "out_features": 16}},
    "head": {"hidden": 16},
    "train": {"epochs": 20, "batch_size": 64, "lr": 0.003},
}
#: what the teacher sees for the cross-modal student: only the student's modality, the others
#: marked absent (chosen on validation: docs/compression.md)
CROSS_MODAL_VIEW = "masked"
SEEDS = (0, 1, 2)
STEPS = ("quantize", "prune", "distill")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    case = CASES[name]
    wd = Path(args.workdir) / name
    base = wd / "original"
    t0 = time.perf_counter()
    if args.reuse and (base / "medfuse.json").exists():
        log(f"{name}: reusing {base}")
    else:
        log(f"{name}: training the original ({case['config']})")
        spec = load_spec(case["config"], case["overrides"])
        train(spec, out=base, data_dir=args.data_dir, device="cpu", progress=False, overwrite=True)
    paths = {"original": base}
    steps = case.get("steps", STEPS)
    if "quantize" in steps:
        log(f"{name}: quantize (auto)")
        paths["int8"] = quantize(base, out=wd / "int8", data_dir=args.data_dir).package
    if "prune" in steps:
        log(f"{name}: prune 50% structured + fine-tune {case['finetune_epochs']} epochs")
        paths["pruned"] = prune(
            base,
            out=wd / "pruned-50",
            amount=0.5,
            finetune_epochs=case["finetune_epochs"],
            data_dir=args.data_dir,
        ).package
        log(f"{name}: quantize the pruned model too (the verbs chain)")
        paths["pruned+int8"] = quantize(
            paths["pruned"], out=wd / "pruned-50-int8", data_dir=args.data_dir
        ).package
    if "distill" in steps:
        log(f"{name}: distill into a small student")
        paths["student"] = distill(
            base,
            student=case["student"],  # data (with augmentation) and task: the teacher's
            out=wd / "student",
            data_dir=args.data_dir,
            device="cpu",
            progress=False,
        ).package
        log(f"{name}: the same student trained without the teacher (reference)")
        alone_spec = student_spec(case["student"], load_spec_from(base))
        paths["student-alone"] = train(
            alone_spec,
            out=wd / "student-alone",
            data_dir=args.data_dir,
            device="cpu",
            overwrite=True,
            progress=False,
        ).package
    log(f"{name}: benchmark (one interleaved run, {args.threads} thread(s))")
    res = benchmark(
        list(paths.values()),
        names=list(paths),
        out_dir=wd / "benchmark",
        data_dir=args.data_dir,
        threads=args.threads,
        repeats=args.repeats,
    )
    print(markdown(res))
    rows = {r["name"]: r for r in res["rows"]}
    o = rows["original"]

    def lat(r: dict[str, Any], key: str) -> float:
        return r["latency"][key]["p50_ms"]

    figures: dict[str, Any] = {"auroc": {k: r["auroc"] for k, r in rows.items()}}
    checks: list[tuple[str, float, str, float]] = []
    if "int8" in rows:
        q = rows["int8"]
        qrec = read_meta(paths["int8"])["compression"][-1]
        figures.update(
            int8_vs_eager_fp32_b64=lat(o, "torch_b64") / lat(q, "onnxruntime_b64"),
            int8_vs_ort_fp32_b64=lat(o, "onnxruntime_b64") / lat(q, "onnxruntime_b64"),
            int8_vs_ort_fp32_b1=lat(o, "onnxruntime_b1") / lat(q, "onnxruntime_b1"),
            int8_size_ratio_vs_fp32_onnx=qrec["size"]["ratio"],
            int8_size_ratio_vs_safetensors=o["size_bytes"] / q["size_bytes"],
            int8_auroc_drop=o["auroc"] - q["auroc"],
            **onnx_breakdown(paths["int8"] / "model.onnx"),
        )
        checks += [
            ("INT8 ORT vs PyTorch fp32 eager, b64", figures["int8_vs_eager_fp32_b64"], ">=", 2.5),
            ("INT8 ORT vs ORT fp32, b64", figures["int8_vs_ort_fp32_b64"], ">=", 1.3),
            (
                "INT8 smaller on disk (vs fp32 ONNX)",
                figures["int8_size_ratio_vs_fp32_onnx"],
                ">=",
                3.5,
            ),
            ("INT8 test AUROC drop", figures["int8_auroc_drop"], "<=", 0.005),
        ]
    if "pruned" in rows:
        p = rows["pruned"]
        figures.update(
            pruned_macs_ratio=o["macs"] / p["macs"],
            pruned_eager_b64_speedup=lat(o, "torch_b64") / lat(p, "torch_b64"),
            pruned_ort_b64_speedup=lat(o, "onnxruntime_b64") / lat(p, "onnxruntime_b64"),
            pruned_auroc_drop=o["auroc"] - p["auroc"],
        )
        checks += [
            ("pruned 50%: fewer MACs", figures["pruned_macs_ratio"], ">=", 1.8),
            ("pruned 50%: eager b64 speed-up", figures["pruned_eager_b64_speedup"], ">", 1.0),
            ("pruned 50%: ORT b64 speed-up", figures["pruned_ort_b64_speedup"], ">", 1.0),
            ("pruned 50%: test AUROC drop", figures["pruned_auroc_drop"], "<=", 0.01),
        ]
    if "student" in rows:
        st = rows["student"]
        figures.update(
            student_parameter_ratio=st["parameters"] / o["parameters"],
            student_auroc_retained=st["auroc"] / o["auroc"],
            student_alone_auroc=rows["student-alone"]["auroc"],
            student_distilled_minus_alone=st["auroc"] - rows["student-alone"]["auroc"],
        )
        checks += [
            ("student parameters / teacher", figures["student_parameter_ratio"], "<=", 0.10),
            ("student AUROC retained", figures["student_auroc_retained"], ">=", 0.99),
        ]
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    return {"figures": figures, "checks": checks, "benchmark": res["files"]}


def cross_modal(args: argparse.Namespace) -> dict[str, Any]:
    """Signal-only student: distilled from the 3-modality teacher vs trained alone (3 seeds).

    The teacher is the shipped synthetic composite (CNN image, 1D-CNN signal, MLP tabular): its
    signal branch learns the signal's share of the label. (The LSTM composite above does not use
    its signal: its logits barely correlate with the signal's true contribution, so it has
    nothing about the signal to teach.)
    """
    teacher = Path(args.workdir) / "synthetic-teacher"
    if args.reuse and (teacher / "medfuse.json").exists():
        log(f"cross-modal: reusing {teacher}")
    else:
        log("cross-modal: training the teacher (configs/synthetic.yaml)")
        train(load_spec("synthetic"), out=teacher, device="cpu", progress=False, overwrite=True)
    spec = student_spec(SIGNAL_STUDENT, load_spec_from(teacher))
    kd, alone, kd_full = [], [], []
    val: dict[str, list[float]] = {"alone": [], "distilled": [], "distilled_full_view": []}
    for seed in SEEDS:
        log(f"cross-modal: seed {seed}: student alone")
        r = train(
            spec,
            out=Path(args.workdir) / "cross-modal" / f"alone-{seed}",
            device="cpu",
            overwrite=True,
            seed=seed,
            progress=False,
        )
        alone.append(r.metrics["test"]["auroc"])
        val["alone"].append(r.metrics["val"]["auroc"])
        for view, res_list, key in (
            (CROSS_MODAL_VIEW, kd, "distilled"),
            ("full", kd_full, "distilled_full_view"),
        ):
            log(f"cross-modal: seed {seed}: student distilled from the teacher ({view} view)")
            d = distill(
                teacher,
                student=spec,
                out=Path(args.workdir) / "cross-modal" / f"distilled-{view}-{seed}",
                device="cpu",
                seed=seed,
                progress=False,
                teacher_view=view,
            )
            res_list.append(d.metrics["test"]["auroc"])
            val[key].append(d.metrics["val"]["auroc"])
    tm = json.loads((teacher / "metrics.json").read_text())["test"]
    lstm = Path(args.workdir) / "synthetic-cnn-lstm" / "original"
    out = {
        "student_parameters": read_meta(Path(args.workdir) / "cross-modal" / "alone-0")[
            "parameters"
        ],
        "teacher_signal_use": signal_use(teacher),
        "cnn_lstm_signal_use": signal_use(lstm) if (lstm / "medfuse.json").exists() else None,
        "alone": alone,
        "distilled": kd,
        "distilled_full_view": kd_full,
        "val": val,
        "teacher_view": CROSS_MODAL_VIEW,
        "mean_alone": float(np.mean(alone)),
        "mean_distilled": float(np.mean(kd)),
        "mean_distilled_full_view": float(np.mean(kd_full)),
        "teacher_test_auroc": tm["auroc"],
        "teacher_signal_branch_test_auroc": tm.get("branches", {}).get("signal", {}).get("auroc"),
    }
    out["checks"] = [
        (
            "signal-only student: distilled minus alone (mean AUROC, 3 seeds)",
            out["mean_distilled"] - out["mean_alone"],
            ">",
            0.0,
        )
    ]
    return out


def onnx_breakdown(path: Path) -> dict[str, int]:
    """Bytes of an INT8 ONNX file: its 8-bit weights vs everything else (names, scales, zero
    points, int32 biases, fp32 leftovers, graph structure)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = sum(
        numpy_helper.to_array(t).nbytes
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    )
    return {
        "int8_onnx_weight_bytes": int(weights),
        "int8_onnx_other_bytes": int(path.stat().st_size - weights),
    }


def signal_use(package: Path) -> float:
    """Correlation of a synthetic model's training logits with the signal's true contribution
    (``contrib_signal``): near 0 means the model ignores the signal."""
    import medfuse
    from medfuse.compress._common import package_data
    from medfuse.inference.helpers import predict_logits, to_tensors

    pkg = medfuse.load(package).package
    bundle = package_data(pkg)
    t = to_tensors(bundle.train, pkg.meta["preprocessing"])
    logits = predict_logits(pkg.model, t, torch.device("cpu"))[0][:, 0]
    return float(np.corrcoef(logits, bundle.train.meta["contrib_signal"].to_numpy())[0, 1])


def load_spec_from(package: Path) -> Any:
    from medfuse.core.spec import parse_spec

    return parse_spec(read_meta(package)["spec"])


def verdict(value: float, op: str, target: float) -> str:
    ok = {">=": value >= target, "<=": value <= target, ">": value > target}[op]
    return "PASS" if ok else "FAIL"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("MEDFUSE_DATA_DIR"))
    ap.add_argument("--workdir", default="runs/bench-compression")
    ap.add_argument("--case", action="append", choices=list(CASES), help="default: all")
    ap.add_argument("--reuse", action="store_true", help="reuse trained originals in --workdir")
    ap.add_argument("--skip-cross-modal", action="store_true")
    ap.add_argument(
        "--cross-modal-only", action="store_true", help="only the cross-modal experiment"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    cases = args.case or [n for n, c in CASES.items() if not c.get("optional")]
    for name in [] if args.cross_modal_only else cases:
        data = Path(args.data_dir) if args.data_dir else None
        if CASES[name]["needs_data"] and not (data and (data / "medmnist").exists()):
            log(f"{name}: skipped (no real data: pass --data-dir or set MEDFUSE_DATA_DIR)")
            continue
        results[name] = run_case(name, args)
    if args.cross_modal_only or (
        not args.skip_cross_modal and (not args.case or "synthetic-cnn-lstm" in args.case)
    ):
        results["cross-modal"] = cross_modal(args)
    print("\n## Acceptance (ratios from one run; 1 thread for PyTorch and ONNX Runtime)\n")
    print("| case | figure | value | target | |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        for label, value, op, target in r["checks"]:
            print(
                f"| {name} | {label} | {value:.4g} | {op} {target:g} | {verdict(value, op, target)} |"
            )
    if "cross-modal" in results:
        c = results["cross-modal"]
        print(
            f"\ncross-modal: alone {np.round(c['alone'], 4).tolist()} (mean {c['mean_alone']:.4f}), "
            f"distilled ({c['teacher_view']} view) {np.round(c['distilled'], 4).tolist()} "
            f"(mean {c['mean_distilled']:.4f}), full view {np.round(c['distilled_full_view'], 4).tolist()} "
            f"(mean {c['mean_distilled_full_view']:.4f}); validation means: "
            + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in c["val"].items())
            + "; "
            f"teacher {c['teacher_test_auroc']:.4f}; student {c['student_parameters']:,} "
            f"parameters; corr(logits, true signal contribution): teacher "
            f"{c['teacher_signal_use']:.3f}, CNN+LSTM composite {c['cnn_lstm_signal_use'] or float('nan'):.3f}"
        )
    for name, r in results.items():
        f = r.get("figures", {})
        if "int8_onnx_weight_bytes" in f:
            print(
                f"{name}: INT8 model.onnx = {f['int8_onnx_weight_bytes']:,} bytes of 8-bit weights "
                f"+ {f['int8_onnx_other_bytes']:,} other bytes"
            )
        if "student_alone_auroc" in f:
            print(
                f"{name}: student AUROC distilled {f['auroc']['student']:.4f}, "
                f"trained alone {f['student_alone_auroc']:.4f}"
            )
    out = Path(args.workdir) / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged.update(results)  # cases run separately accumulate in one summary
    out.write_text(json.dumps(merged, indent=2, default=str))
    print(f"\nsummary: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
