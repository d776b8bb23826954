"""INT8 of a ViT-S/16-sized image branch with ONNX Runtime: speed and size against fp32, one run.

The composite: a timm ``vit_small_patch16_224`` image branch (22M parameters, random init from
its config: no weights can be downloaded here) + a tabular MLP, trained briefly on the synthetic
demo (its 28x28 images resized inside the branch to the ViT's input, ``--img-size``, default
224). Then ``medfuse quantize`` (auto: the transformer branch dynamic, MatMuls INT8) and
``medfuse benchmark`` on both packages in ONE interleaved run at 1 thread:

- latency: PyTorch fp32 eager, ONNX Runtime fp32 and ONNX Runtime INT8, batch 1 and 8, and the
  speed-up ratios;
- size: model.safetensors (fp32), the fp32 ONNX file and the INT8 ONNX file, and their ratios;
- parity: INT8 vs fp32 (ORT) label agreement and largest logit difference on the test split.

Only ratios measured in the same run mean anything on a shared machine.

    PYTHONPATH=src python benchmarks/vit_int8.py [--img-size 224] [--repeats 10]

(On a machine whose torchvision wheel does not match torch, add ``tests/site`` to PYTHONPATH:
its sitecustomize lets timm import there, as the tests do.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from medfuse.api import train
from medfuse.compress.measure import benchmark
from medfuse.compress.quantize import quantize
from medfuse.inference.package import load_package


def vit_spec(img_size: int, n_train: int, n_eval: int) -> dict[str, Any]:
    args = {} if img_size == 224 else {"img_size": img_size}
    return {
        "name": f"vit-s16-{img_size}",
        "task": {"type": "binary"},
        "data": {
            "source": "synthetic",
            "options": {"n_train": n_train, "n_val": n_eval, "n_test": n_eval, "image_size": 28},
        },
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [28, 28]},
            "tabular": {"kind": "tabular", "columns": ["age", "bmi", "marker"]},
        },
        "branches": {
            "image": {"type": "timm", "model": "vit_small_patch16_224", "model_args": args},
            "tabular": {"type": "mlp", "hidden": 16, "out_features": 8},
        },
        "head": {"hidden": 16},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.0005, "early_stopping": None},
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--img-size", type=int, default=224, help="the ViT's input side (default 224)")
    ap.add_argument("--repeats", type=int, default=10, help="latency rounds (x3 at batch 1)")
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=64, help="validation and test samples each")
    ap.add_argument("--workdir", default="runs/bench-vit-int8")
    args = ap.parse_args()
    torch.set_num_threads(1)
    wd = Path(args.workdir)
    t0 = time.perf_counter()
    log(f"training the fp32 composite (ViT-S/16 at {args.img_size}, 1 epoch, 1 thread)")
    fp32 = train(
        vit_spec(args.img_size, args.n_train, args.n_eval),
        out=wd / "fp32",
        device="cpu",
        progress=False,
        overwrite=True,
    ).package
    log("quantize (auto)")
    q = quantize(fp32, out=wd / "int8", calibration=32)
    log(f"benchmark (one interleaved run, 1 thread, {args.repeats} repeats)")
    res = benchmark(
        [fp32, q.package], names=["fp32", "int8"], repeats=args.repeats, batch_sizes=(1, 8)
    )
    rows = {r["name"]: r for r in res["rows"]}
    o, i8 = rows["fp32"], rows["int8"]

    def p50(r: dict[str, Any], key: str) -> float:
        return float(r["latency"][key]["p50_ms"])

    size = q.record["size"]
    qm = q.record["metrics"]
    figures: dict[str, Any] = {
        "img_size": args.img_size,
        "parameters": o["parameters"],
        "image_branch_parameters": sum(
            p.numel() for p in load_package(fp32, device="cpu").model.branches["image"].parameters()
        ),
        "quantization_parts": q.record["settings"]["parts"],
        "latency_p50_ms": {
            k: p50(r, f"{eng}_b{b}")
            for b in (1, 8)
            for k, r, eng in (
                (f"fp32_eager_b{b}", o, "torch"),
                (f"fp32_ort_b{b}", o, "onnxruntime"),
                (f"int8_ort_b{b}", i8, "onnxruntime"),
            )
        },
        "bytes": {
            "fp32_safetensors": o["size_bytes"],
            "fp32_onnx": size["fp32_onnx_bytes"],
            "int8_onnx": size["int8_onnx_bytes"],
        },
        "label_agreement": qm["label_agreement"],
        "max_abs_logit_diff": qm["max_abs_logit_diff"],
        "auroc": {"fp32": o.get("auroc"), "int8": i8.get("auroc")},
    }
    lat = figures["latency_p50_ms"]
    for b in (1, 8):
        figures[f"int8_vs_eager_fp32_b{b}"] = lat[f"fp32_eager_b{b}"] / lat[f"int8_ort_b{b}"]
        figures[f"int8_vs_ort_fp32_b{b}"] = lat[f"fp32_ort_b{b}"] / lat[f"int8_ort_b{b}"]
    b = figures["bytes"]
    figures["size_ratio_vs_safetensors"] = b["fp32_safetensors"] / b["int8_onnx"]
    figures["size_ratio_vs_fp32_onnx"] = b["fp32_onnx"] / b["int8_onnx"]
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(figures, indent=2, default=str))
    print(f"\n| ViT-S/16 at {args.img_size} | batch 1 ms | batch 8 ms | file |\n|---|---|---|---|")
    for name, key, file in (
        ("PyTorch fp32 eager", "fp32_eager", "fp32_safetensors"),
        ("ONNX Runtime fp32", "fp32_ort", "fp32_onnx"),
        ("ONNX Runtime INT8", "int8_ort", "int8_onnx"),
    ):
        print(
            f"| {name} | {lat[key + '_b1']:.1f} | {lat[key + '_b8']:.1f} | {b[file] / 1e6:.1f} MB |"
        )
    (wd / "summary.json").write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
