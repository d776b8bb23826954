"""INT8 quantization of a package through ONNX Runtime, chosen per branch.

The fp32 model is exported with the one exporter (``medfuse.export.onnx.export_onnx_bytes``),
then quantized with ``onnxruntime.quantization``:

- **static** QDQ, per-channel weights, activations calibrated on N training samples that are
  preprocessed exactly like training (``preprocess.normalize`` with the package's statistics).
  ORT's CPU kernels fuse the QDQ pairs into QLinearConv/QGemm, so this is what makes
  convolutions fast. LSTM/GRU have no static INT8 kernel and stay fp32 in this mode.
- **dynamic**: weights INT8, activations quantized on the fly (``quantize_dynamic``); the method
  for LSTM/GRU (``DynamicQuantizeLSTM``) and linear layers. Dynamic convolutions
  (``ConvInteger``) are much slower than fp32 on CPU, so ``dynamic`` is a poor choice for CNNs.
- **auto** (default): per branch. A branch with LSTM/GRU layers or attention (a transformer:
  timm/Hugging Face ViTs, text encoders; its patch-embedding convolution stays fp32) is
  quantized dynamically, a convolutional branch statically; MLP branches, the fusion and the
  head dynamically.

The result is a new package whose ``model.onnx`` is the INT8 model and whose manifest says so
(``runtime: {default: onnx, onnx_file: model.onnx, precision: int8}``); ``model.safetensors``
keeps the fp32 weights, so the package still loads in PyTorch (as the fp32 model) and can be
re-exported or re-quantized.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.compress._common import (
    WEIGHT_BOUND_FILES,
    check_out,
    delta,
    eval_split,
    now,
    ort_feeds,
    ort_logits,
    ort_session,
    package_data,
    source_info,
    summary,
    write_derived,
)
from medfuse.core.errors import MedfuseError, SpecError, not_allowed
from medfuse.export.onnx import DEFAULT_OPSET, export_onnx_bytes
from medfuse.inference.helpers import to_tensors
from medfuse.inference.package import load_package
from medfuse.training.metrics import compute_metrics, probabilities

log = logging.getLogger("medfuse.compress")

METHODS = ("auto", "dynamic", "static")
ONNX_FILE = "model.onnx"
#: op types quantized in the static (QDQ) pass
STATIC_OPS = [
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Relu",
    "Clip",
    "GlobalAveragePool",
    "AveragePool",
    "MaxPool",
    "Flatten",
]
#: op types quantized in the dynamic pass (ORT converts Gemm to MatMul first)
DYNAMIC_OPS = ["MatMul", "LSTM", "GRU"]
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
#: op types that mark a transformer (attention): its MatMuls are quantized dynamically, since
#: static activation ranges calibrated on few samples clip the attention scores and the
#: residual stream (a tiny timm ViT: label agreement 0.66 static, see docs/compression.md)
ATTENTION_OPS = {"Softmax", "Attention", "MultiHeadAttention"}
HEAD = "fusion+head"
#: convolutions with fewer input channels stay fp32 (see ``thin_convs``)
MIN_INT8_CONV_INPUTS = 4


@dataclass
class QuantizeResult:
    package: Path
    record: dict[str, Any]


def node_owner(name: str, modalities: list[str]) -> str:
    """Which part of the composite an exported ONNX node belongs to (by its scope name); an
    ensemble member's node (``/model/members.<k>/...``) belongs to the same part."""
    name = re.sub(r"^/model/members\.\d+/", "/model/", name)
    for m in modalities:
        if name.startswith((f"/model/{m}/", f"/model/branches.{m}/")):
            return m
    if name.startswith(("/model/fusion/", "/model/head/")):
        return HEAD
    return "other"


def plan(graph: Any, modalities: list[str], method: str) -> dict[str, str]:
    """The quantization method of each part: ``static``, ``dynamic`` or ``fp32``."""
    ops: dict[str, set[str]] = {m: set() for m in [*modalities, HEAD]}
    for node in graph.node:
        owner = node_owner(node.name, modalities)
        if owner in ops:
            ops[owner].add(node.op_type)
    out: dict[str, str] = {}
    for part, types in ops.items():
        if method == "dynamic":
            out[part] = "dynamic"
        elif method == "static":
            out[part] = "static" if types - RECURRENT_OPS else "fp32"
        elif types & (RECURRENT_OPS | ATTENTION_OPS):
            out[part] = "dynamic"
        elif "Conv" in types:
            out[part] = "static"
        else:
            out[part] = "dynamic"
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs per-tensor notes on the root logger; keep the CLI readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def thin_convs(graph: Any) -> set[str]:
    """Convolutions with fewer than ``MIN_INT8_CONV_INPUTS`` input channels per group (a stem on
    a 1-channel image): INT8 kernels are slower than fp32 there, and their weights are tiny."""
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    out = set()
    for n in graph.node:
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in shapes:
            dims = shapes[n.input[1]]
            if len(dims) > 1 and dims[1] < MIN_INT8_CONV_INPUTS:
                out.add(n.name)
    return out


class _Calibration:
    """``CalibrationDataReader``: batches of normalised training samples, named like the model."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def calibration_feeds(
    data: Any, modalities: list[str], n: int, *, seed: int = 0, batch_size: int = 32
) -> tuple[list[dict[str, np.ndarray]], int]:
    """Up to ``n`` random training samples as ORT feeds (already normalised ``Tensors``)."""
    total = len(data)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(total)[: min(n, total)])
    inputs = {m: data.inputs[m].numpy()[idx] for m in modalities}
    masks = {m: data.masks[m].numpy()[idx] for m in modalities}
    feeds = [
        ort_feeds(modalities, inputs, masks, slice(s, s + batch_size))
        for s in range(0, len(idx), batch_size)
    ]
    return feeds, len(idx)


def quantize_onnx(
    fp32: bytes,
    modalities: list[str],
    *,
    method: str = "auto",
    calibration: list[dict[str, np.ndarray]] | None = None,
    per_channel: bool = True,
) -> tuple[bytes, dict[str, Any]]:
    """Quantize an exported composite; returns the INT8 model bytes and what was done:
    ``{"parts": {part: static|dynamic|fp32}, "fp32_layers": [...]}``."""
    # lazy: onnx (medfuse[export]), only to export or inspect a graph
    import onnx

    # lazy: ONNX Runtime, only when a session is created
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    # lazy: ONNX Runtime, only when a session is created
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise SpecError("method", not_allowed("quantization method", method, METHODS))
    with tempfile.TemporaryDirectory(prefix="medfuse-quant-") as tmp, _quiet():
        d = Path(tmp)
        (d / "fp32.onnx").write_bytes(fp32)
        src = d / "pre.onnx"
        try:  # shape inference + graph cleanup, as onnxruntime recommends before quantizing
            quant_pre_process(str(d / "fp32.onnx"), str(src))
        except Exception as err:  # a model the pre-processor cannot handle is still quantizable
            log.warning("quantization pre-processing skipped: %s", err)
            src = d / "fp32.onnx"
        graph = onnx.load(str(src)).graph
        parts = plan(graph, modalities, method)
        thin = thin_convs(graph)
        static_nodes = [
            n.name
            for n in graph.node
            if parts.get(node_owner(n.name, modalities)) == "static"
            and n.op_type in STATIC_OPS
            and n.name not in thin
        ]
        if method == "dynamic":
            quantize_dynamic(
                str(src), str(d / "int8.onnx"), per_channel=False, weight_type=QuantType.QInt8
            )
        else:
            cur = src
            if static_nodes:
                if not calibration:
                    raise MedfuseError("static quantization needs calibration samples (got none)")
                quantize_static(
                    str(cur),
                    str(d / "static.onnx"),
                    _Calibration(calibration),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=STATIC_OPS,
                    nodes_to_quantize=static_nodes,
                    per_channel=per_channel,
                    reduce_range=False,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                )
                cur = d / "static.onnx"
            if any(v == "dynamic" for v in parts.values()):
                # every float MatMul/LSTM/GRU left after the static pass belongs to a dynamic part
                quantize_dynamic(
                    str(cur),
                    str(d / "int8.onnx"),
                    op_types_to_quantize=DYNAMIC_OPS,
                    per_channel=False,
                    weight_type=QuantType.QInt8,
                )
                cur = d / "int8.onnx"
            if cur != d / "int8.onnx":
                (d / "int8.onnx").write_bytes(cur.read_bytes())
        model = onnx.load(str(d / "int8.onnx"))
    explicit_transpose_perms(model)
    del model.graph.value_info[:]  # shapes from pre-processing: ORT infers them again; saves space
    onnx.helper.set_model_props(
        model, {"medfuse.precision": "int8", "medfuse.quantization": method}
    )
    kept = sorted(n for n in thin if parts.get(node_owner(n, modalities)) == "static")
    if method == "static":  # no static INT8 kernel for recurrent layers
        kept += [n.name for n in graph.node if n.op_type in RECURRENT_OPS]
    return model.SerializeToString(), {"parts": parts, "fp32_layers": kept}


def explicit_transpose_perms(model: Any) -> int:
    """Write out the ``perm`` of every Transpose that leaves it implicit (the axes reversed);
    returns how many. ONNX Runtime's quantizer writes such a Transpose when it turns a Gemm with
    ``transB`` into a MatMul, and the transpose optimizer of ONNX Runtime 1.20 to 1.30 aborts the
    whole process (a failed C++ assertion, SIGABRT, no Python error) when it creates a session on
    one: an INT8 package would kill ``medfuse serve`` on such a runtime. The same operation with
    its perm spelled out loads on every version."""
    # lazy: onnx (medfuse[export]), only to export or inspect a graph
    import onnx

    implicit = [
        n
        for n in model.graph.node
        if n.op_type == "Transpose" and not any(a.name == "perm" for a in n.attribute)
    ]
    if not implicit:
        return 0
    shaped = onnx.shape_inference.infer_shapes(model)
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in (*shaped.graph.value_info, *shaped.graph.input, *shaped.graph.output)
        if v.type.tensor_type.HasField("shape")
    }
    ranks.update({t.name: len(t.dims) for t in model.graph.initializer})
    for node in implicit:
        rank = ranks.get(node.input[0])
        if rank is None:
            raise MedfuseError(
                f"quantize: the INT8 graph's Transpose {node.name!r} has no perm and an input of "
                "unknown rank; ONNX Runtime 1.20-1.30 would abort on it, so no package is written"
            )
        node.attribute.append(onnx.helper.make_attribute("perm", list(range(rank))[::-1]))
    return len(implicit)


def quantize(
    package: str | Path,
    *,
    out: str | Path,
    method: str = "auto",
    calibration: int = 256,
    per_channel: bool = True,
    data_dir: str | Path | None = None,
    seed: int = 0,
    command: str | None = None,
    overwrite: bool = False,
) -> QuantizeResult:
    """Quantize ``package`` to INT8 (ONNX Runtime), evaluate it like the original, write ``out``.

    ``calibration``: how many training samples calibrate the static (QDQ) activation ranges.
    The record appended to ``compression`` in ``medfuse.json`` holds the method per branch, the
    settings, the calibration data and the metrics before (fp32) and after (INT8) on the test
    split, both computed by ONNX Runtime from the same preprocessed inputs.
    """
    # lazy: ONNX Runtime, only when a session is created
    import onnxruntime

    if method not in METHODS:
        raise SpecError("method", not_allowed("quantization method", method, METHODS))
    if int(calibration) < 1:
        raise SpecError("calibration", f"must be a positive number of samples; got {calibration}")
    check_out(out, package, overwrite=overwrite)
    pkg = load_package(package, device="cpu")
    spec, meta = pkg.spec, pkg.meta
    mods = list(spec.modalities)
    bundle = package_data(pkg, data_dir)
    stats = meta["preprocessing"]
    train_t = to_tensors(bundle.train, stats)
    feeds, n_cal = calibration_feeds(train_t, mods, int(calibration), seed=seed)

    fp32 = export_onnx_bytes(pkg.model, spec, opset=DEFAULT_OPSET)
    int8, done = quantize_onnx(
        fp32, mods, method=method, calibration=feeds, per_channel=per_channel
    )
    parts = done["parts"]

    # the same metrics as the original, by ONNX Runtime on the same preprocessed inputs
    task, labels = spec.task.type, spec.task.labels
    thr = pkg.info.threshold.value
    temp = pkg.info.calibration.temperature
    s_fp32, s_int8 = ort_session(fp32), ort_session(int8)
    metrics: dict[str, Any] = {}
    split_name, _ = eval_split(bundle)
    agreement = max_diff = None
    for name in ("val", "test"):
        split = getattr(bundle, name, None)
        if split is None:
            continue
        t = to_tensors(split, stats)
        y = t.y.numpy()
        lg32, lg8 = ort_logits(s_fp32, mods, t), ort_logits(s_int8, mods, t)
        m32 = compute_metrics(task, y, probabilities(task, lg32, temp), thr, labels)
        m8 = compute_metrics(task, y, probabilities(task, lg8, temp), thr, labels)
        metrics[name] = m8
        metrics.setdefault("fp32", {})[name] = m32
        if name == split_name:
            before, after = summary(m32), summary(m8)
            p32, p8 = probabilities(task, lg32, temp), probabilities(task, lg8, temp)
            if task == "multiclass":
                agreement = float(np.mean(p32.argmax(1) == p8.argmax(1)))
            else:
                agreement = float(np.mean((p32 >= thr) == (p8 >= thr)))
            max_diff = float(np.abs(lg32 - lg8).max()) if len(lg32) else 0.0
    metrics["runtime"] = {"engine": "onnxruntime", "precision": "int8", "file": ONNX_FILE}

    record: dict[str, Any] = {
        "method": "quantize",
        "created": now(),
        "summary": f"INT8 ONNX Runtime ({method}: "
        + ", ".join(f"{k} {v}" for k, v in parts.items())
        + ")",
        "settings": {
            "mode": method,
            "parts": parts,
            "fp32_layers": done["fp32_layers"],
            "static": {
                "format": "QDQ",
                "per_channel": bool(per_channel),
                "weights": "int8 (symmetric)",
                "activations": "uint8 (asymmetric)",
                "calibrate_method": "MinMax",
                "op_types": STATIC_OPS,
            },
            "dynamic": {"weights": "int8 per-tensor", "op_types": DYNAMIC_OPS},
            "opset": DEFAULT_OPSET,
            "onnxruntime": onnxruntime.__version__,
        },
        "calibration": {
            "split": "train",
            "samples": n_cal,
            "seed": int(seed),
            "preprocessing": "package statistics (preprocess.normalize), as in training",
        },
        "metrics": {
            "split": split_name,
            "engine": "onnxruntime",
            "before": before,
            "after": after,
            "delta": delta(before, after),
            "label_agreement": agreement,
            "max_abs_logit_diff": max_diff,
        },
        "size": {
            "fp32_onnx_bytes": len(fp32),
            "int8_onnx_bytes": len(int8),
            "ratio": round(len(fp32) / max(len(int8), 1), 3),
        },
        "source": source_info(pkg),
        "command": command,
    }
    new_meta = copy.deepcopy(meta)
    new_meta["name"] = f"{meta.get('name', spec.name)}-int8"
    new_meta["updated"] = now()
    new_meta["runtime"] = {
        "default": "onnx",
        "onnx_file": ONNX_FILE,
        "precision": "int8",
        "opset": DEFAULT_OPSET,
    }
    exports = dict(new_meta.get("exports") or {})
    exports["onnx"] = {
        "file": ONNX_FILE,
        "opset": DEFAULT_OPSET,
        "precision": "int8",
        "exporter": "torch.onnx (TorchScript) + onnxruntime.quantization",
        "onnxruntime": onnxruntime.__version__,
        "created": record["created"],
    }
    new_meta["exports"] = exports
    new_meta["compression"] = [*list(meta.get("compression") or []), record]

    # model.safetensors (fp32) and verification.npz stay valid: the weights are unchanged
    path = write_derived(
        pkg,
        out,
        meta=new_meta,
        files={ONNX_FILE: int8},
        metrics=metrics,
        drop=tuple(f for f in WEIGHT_BOUND_FILES if f not in ("verification.npz", "model.pt2")),
    )
    return QuantizeResult(path, record)
