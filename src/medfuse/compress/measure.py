"""Measuring the trade-off: parameters, file size, MACs, latency, throughput and clinical
metrics of several packages, in one table and one Pareto plot.

Latencies are measured round-robin (every model once per round, many rounds) so that load from
other processes on a shared machine hits every model alike, and with a fixed thread count for
both PyTorch (``torch.set_num_threads``) and ONNX Runtime (``intra_op_num_threads``); the default
is one thread, which makes the comparison fair and stable. Compare ratios from one run, not
absolute numbers from different runs.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.compress._common import eval_split, ort_feeds, ort_logits, ort_session, package_data
from medfuse.core.errors import SpecError
from medfuse.core.package import WEIGHTS
from medfuse.core.paths import output_dir
from medfuse.export.onnx import export_onnx_bytes
from medfuse.inference.helpers import predict_logits, to_tensors
from medfuse.inference.package import Package, load_package
from medfuse.models.composite import count_parameters
from medfuse.training.metrics import compute_metrics, probabilities

BATCH_SIZES = (1, 64)
METRIC_KEYS = ("auroc", "auprc", "ece")


# ---- MACs --------------------------------------------------------------------------------------


def _rnn_macs(mod: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one LSTM/GRU/RNN call: per step, layer and direction G*H*(in+H)."""
    gates = {nn.LSTM: 4, nn.GRU: 3}.get(type(mod), 1)
    if x.dim() == 2:  # unbatched (T, C)
        steps, batch = x.shape[0], 1
    else:
        steps = x.shape[1] if mod.batch_first else x.shape[0]
        batch = x.shape[0] if mod.batch_first else x.shape[1]
    h, dirs = mod.hidden_size, 2 if mod.bidirectional else 1
    total = 0
    for layer in range(mod.num_layers):
        inp = mod.input_size if layer == 0 else h * dirs
        total += dirs * gates * h * (inp + h)
    return int(total * steps * batch)


def _layer_macs(mod: nn.Module, args: tuple[Any, ...], out: Any) -> int:
    if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        k = int(np.prod(mod.kernel_size))
        return int(out.numel() * (mod.in_channels // mod.groups) * k)
    if isinstance(mod, nn.Linear):
        return int(out.numel() * mod.in_features)
    if isinstance(mod, nn.RNNBase):
        return _rnn_macs(mod, args[0])
    if isinstance(mod, nn.MultiheadAttention):  # projections + scores + weighted sum + output
        q, k = args[0], args[1]
        seq_axis = 1 if mod.batch_first else 0
        lq, lk = q.shape[seq_axis], k.shape[seq_axis]
        b = q.numel() // (lq * mod.embed_dim)
        e = mod.embed_dim
        return int(b * ((lq + 2 * lk) * e * e + 2 * lq * lk * e + lq * e * e))
    return 0


_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.RNNBase, nn.MultiheadAttention)


@torch.no_grad()
def count_macs(model: nn.Module, spec: Any, *, batch: int = 1) -> int:
    """MACs of one forward pass per ``batch`` samples (all modalities present).

    Counted with forward hooks on the layers that do the arithmetic: convolutions (any
    dimension), linear layers, LSTM/GRU (per step, gate, layer and direction) and multi-head
    attention. Element-wise work (activations, normalisation, masking) is not counted. The hooks
    see the shapes of the real forward pass, so pruned and resized layers are counted as built.
    """
    was = model.training
    model.eval()
    inputs = {m: torch.zeros(batch, *spec.modalities[m].shape) for m in spec.modalities}
    masks = {m: torch.ones(batch) for m in spec.modalities}
    total = [0]
    inner: set[int] = set()  # layers inside a counted layer (MHA's out_proj) are not re-counted
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            inner.update(id(c) for c in m.modules() if c is not m)

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if id(mod) not in inner:
            total[0] += _layer_macs(mod, args, out[0] if isinstance(out, tuple) else out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    try:
        model(inputs, masks)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return int(total[0])


# ---- latency -----------------------------------------------------------------------------------


@dataclass
class Timer:
    """One model, one runtime, one batch size; ``times`` in seconds."""

    label: str
    run: Callable[[], Any]
    times: list[float] = field(default_factory=list)

    def stats(self, batch: int) -> dict[str, float]:
        t = np.asarray(self.times) * 1000.0
        p50 = float(np.percentile(t, 50))
        return {
            "p50_ms": p50,
            "p95_ms": float(np.percentile(t, 95)),
            "throughput": batch * 1000.0 / p50 if p50 > 0 else float("nan"),
        }


def round_robin(timers: list[Timer], *, repeats: int, warmup: int = 3) -> None:
    """Time every runner once per round; interleaving spreads background load over all of them."""
    for r in range(warmup + repeats):
        for t in timers:
            t0 = time.perf_counter()
            t.run()
            dt = time.perf_counter() - t0
            if r >= warmup:
                t.times.append(dt)


def _batch(data: Any, mods: list[str], n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first ``n`` samples (tiled when the split is smaller) as tensors."""
    reps = int(np.ceil(n / max(len(data), 1)))
    idx = torch.arange(len(data)).repeat(reps)[:n]
    return (
        {m: data.inputs[m][idx].contiguous() for m in mods},
        {m: data.masks[m][idx].contiguous() for m in mods},
    )


# ---- the table ---------------------------------------------------------------------------------


def artifact(pkg: Package) -> tuple[str, int]:
    """The file a package deploys: its INT8 ONNX model, else its fp32 weights."""
    rt = pkg.meta.get("runtime") or {}
    name = rt.get("onnx_file", "model.onnx") if rt.get("precision") == "int8" else WEIGHTS
    return name, (Path(pkg.path) / name).stat().st_size


def benchmark(
    packages: list[str | Path],
    *,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    threads: int = 1,
    repeats: int = 30,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Measure ``packages`` (the first is the reference for the metric changes).

    Returns ``{"rows": [...], "settings": {...}, "files": {...}}``; with ``out_dir`` also writes
    ``benchmark.json``, ``benchmark.csv``, ``benchmark.md`` and ``pareto.png`` there.
    """

    if not packages:
        raise SpecError("packages", "give at least one package to benchmark")
    if int(threads) < 1 or int(repeats) < 1:
        raise SpecError("threads", f"threads and repeats must be >= 1; got {threads}, {repeats}")
    if out_dir is not None:  # before any work: a file in the way, a folder that is not writable
        output_dir(out_dir, "--out")
    names = list(names) if names else [Path(p).name for p in packages]
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        cache: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        timers: list[tuple[int, str, int, Timer]] = []
        for i, path in enumerate(packages):
            pkg = load_package(path, device="cpu")
            spec, meta = pkg.spec, pkg.meta
            mods = list(spec.modalities)
            key = json.dumps(
                [spec.data.source, spec.data.options, spec.to_dict()["modalities"]],
                sort_keys=True,
                default=str,
            )
            if key not in cache:
                cache[key] = package_data(pkg, data_dir)
            split_name, split = eval_split(cache[key])
            data = to_tensors(split, meta["preprocessing"])
            rt = meta.get("runtime") or {}
            int8 = rt.get("precision") == "int8"
            onnx_file = Path(pkg.path) / rt.get("onnx_file", "model.onnx")
            if rt.get("default") == "onnx" and onnx_file.exists():
                session = ort_session(onnx_file, threads=threads)
            else:
                session = ort_session(export_onnx_bytes(pkg.model, spec), threads=threads)
            # metrics with the package's own default runtime
            task, labels = spec.task.type, spec.task.labels
            if rt.get("default") == "onnx":
                logits, engine = ort_logits(session, mods, data), "onnxruntime"
            else:
                logits, engine = predict_logits(pkg.model, data, torch.device("cpu"))[0], "torch"
            temp = pkg.info.calibration.temperature
            thr = pkg.info.threshold.value
            m = compute_metrics(
                task, data.y.numpy(), probabilities(task, logits, temp), thr, labels
            )
            art, size = artifact(pkg)
            row: dict[str, Any] = {
                "name": names[i],
                "path": str(pkg.path),
                "precision": "int8" if int8 else "fp32",
                "engine": engine,
                "modalities": mods,
                "parameters": count_parameters(pkg.model),
                "artifact": art,
                "size_bytes": size,
                "macs": count_macs(pkg.model, spec),
                "split": split_name,
                "n": int(len(data)),
                **{k: float(m[k]) for k in METRIC_KEYS if k in m},
                "latency": {},
            }
            rows.append(row)
            for b in batch_sizes:
                inputs, masks = _batch(data, mods, b)
                feed = ort_feeds(
                    mods,
                    {k: v.numpy() for k, v in inputs.items()},
                    {k: v.numpy() for k, v in masks.items()},
                    slice(None),
                )
                timers.append(
                    (i, "onnxruntime", b, Timer(f"{names[i]} ort b{b}", _ort_call(session, feed)))
                )
                if not int8:  # torch runs a quantized package's fp32 weights: not its model
                    timers.append(
                        (
                            i,
                            "torch",
                            b,
                            Timer(f"{names[i]} eager b{b}", _eager_call(pkg.model, inputs, masks)),
                        )
                    )
        for b in batch_sizes:
            group = [t for _, _, bb, t in timers if bb == b]
            with torch.inference_mode():
                round_robin(group, repeats=repeats * (3 if b == 1 else 1))
        for i, engine, b, t in timers:
            rows[i]["latency"][f"{engine}_b{b}"] = t.stats(b)
        ref = rows[0]
        for r in rows:
            r["delta"] = {
                k: r[k] - ref[k] for k in METRIC_KEYS if isinstance(r.get(k), float) and k in ref
            }
            if ref["macs"]:
                r["macs_ratio"] = ref["macs"] / max(r["macs"], 1)
            r["size_ratio"] = ref["size_bytes"] / max(r["size_bytes"], 1)
    finally:
        torch.set_num_threads(prev_threads)
    result: dict[str, Any] = {
        "rows": rows,
        "settings": {
            "threads": int(threads),
            "repeats": int(repeats),
            "batch_sizes": list(batch_sizes),
            "note": "latency p50/p95 over interleaved rounds; torch.set_num_threads and ORT "
            "intra_op_num_threads both set to `threads`",
            "torch": torch.__version__,
        },
        "files": {},
    }
    if out_dir is not None:
        result["files"] = write_outputs(result, Path(out_dir))
    return result


def _ort_call(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    return lambda: session.run(["logits"], feed)


def _eager_call(
    model: nn.Module, inputs: dict[str, Any], masks: dict[str, Any]
) -> Callable[[], Any]:
    model.eval()
    return lambda: model(inputs, masks)


# ---- outputs -----------------------------------------------------------------------------------

COLUMNS = (
    ("model", lambda r: r["name"]),
    ("prec", lambda r: r["precision"]),
    ("params", lambda r: f"{r['parameters']:,}"),
    ("size", lambda r: _size(r["size_bytes"])),
    ("MACs", lambda r: f"{r['macs'] / 1e6:.2f}M"),
    ("eager b1 ms p50/p95", lambda r: _lat(r, "torch_b1")),
    ("eager b64 ms", lambda r: _lat(r, "torch_b64")),
    ("ORT b1 ms", lambda r: _lat(r, "onnxruntime_b1")),
    ("ORT b64 ms", lambda r: _lat(r, "onnxruntime_b64")),
    ("eager b64 /s", lambda r: _thr(r, "torch_b64")),
    ("ORT b64 /s", lambda r: _thr(r, "onnxruntime_b64")),
    ("AUROC", lambda r: _metric(r, "auroc")),
    ("AUPRC", lambda r: _metric(r, "auprc")),
    ("ECE", lambda r: _metric(r, "ece")),
)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _lat(r: dict[str, Any], key: str) -> str:
    s = r["latency"].get(key)
    return f"{_ms(s['p50_ms'])}/{_ms(s['p95_ms'])}" if s else "-"


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _thr(r: dict[str, Any], key: str) -> str:
    s = r["latency"].get(key)
    return f"{s['throughput']:.0f}" if s else "-"


def _metric(r: dict[str, Any], k: str) -> str:
    if not isinstance(r.get(k), float):
        return "-"
    d = r.get("delta", {}).get(k)
    return f"{r[k]:.4f}" + (f" ({d:+.4f})" if d is not None else "")


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [c for c, _ in COLUMNS]
    return head, [[f(r) for _, f in COLUMNS] for r in result["rows"]]


def markdown(result: dict[str, Any]) -> str:
    head, body = table_rows(result)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    s = result["settings"]
    lines += [
        "",
        f"Threads: {s['threads']} (PyTorch and ONNX Runtime); {s['repeats']} interleaved rounds "
        "(x3 at batch 1). Metric changes are against the first row. An INT8 package has no "
        "eager column: PyTorch would run its fp32 weights.",
    ]
    return "\n".join(lines) + "\n"


def pareto_plot(result: dict[str, Any], path: Path) -> Path:
    """AUROC vs ONNX Runtime latency at the largest batch; marker area ~ file size."""
    # lazy: matplotlib, only to draw a figure
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib, only to draw a figure
    import matplotlib.pyplot as plt

    b = max(result["settings"]["batch_sizes"])
    rows = [r for r in result["rows"] if isinstance(r.get("auroc"), float)]
    xs = [r["latency"][f"onnxruntime_b{b}"]["p50_ms"] for r in rows]
    ys = [r["auroc"] for r in rows]
    sizes = np.asarray([r["size_bytes"] for r in rows], float)
    area = 60 + 900 * sizes / max(sizes.max(), 1)
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(xs, ys, s=area, alpha=0.55, c=range(len(rows)), cmap="viridis", edgecolors="k")
    for x, y, r in zip(xs, ys, rows):
        ax.annotate(
            f"{r['name']}\n{_size(r['size_bytes'])}",
            (x, y),
            textcoords="offset points",
            xytext=(8, 6),
            fontsize=8,
        )
    order = sorted(range(len(rows)), key=lambda i: (xs[i], -ys[i]))
    front, best = [], -np.inf
    for i in order:
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "k--", lw=1, label="Pareto front")
    ax.margins(x=0.18, y=0.12)  # room for the labels
    ax.set_xlabel(f"ONNX Runtime latency, batch {b}, p50 (ms)")
    ax.set_ylabel(f"AUROC ({rows[0]['split'] if rows else 'test'})")
    ax.set_title("Accuracy vs speed (marker area ~ file size)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "benchmark.json",
        "csv": out / "benchmark.csv",
        "markdown": out / "benchmark.md",
        "plot": out / "pareto.png",
    }
    files["json"].write_text(json.dumps(result, indent=2, default=str))
    head, body = table_rows(result)
    with open(files["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(body)
    files["markdown"].write_text(markdown(result))
    pareto_plot(result, files["plot"])
    return {k: str(v) for k, v in files.items()}
