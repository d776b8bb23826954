"""Helpers shared by quantize, prune, distill and benchmark: a package's data, ONNX Runtime
sessions, metric summaries and writing a derived package with its compression record."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.card import model_card
from medfuse.core.errors import SpecError
from medfuse.core.onnx import open_session
from medfuse.core.package import (
    META,
    WEIGHTS,
    _json_default,
    package_files,
    package_out,
    write_package,
)
from medfuse.core.spec import Spec
from medfuse.data import DataBundle, Split
from medfuse.inference import helpers
from medfuse.inference.package import Package
from medfuse.training.metrics import SUMMARY_KEYS

#: files and manifest keys that describe one set of weights/one ONNX model; a package whose
#: weights change (prune) drops them, since they would no longer match
WEIGHT_BOUND_FILES = ("model.onnx", "model.pt2", "verification.npz")
WEIGHT_BOUND_KEYS = ("runtime", "exports", "verification")


def package_data(pkg: Package, data_dir: str | Path | None = None) -> DataBundle:
    """The package's own data source, loaded exactly as ``medfuse evaluate`` loads it."""
    return helpers.package_data(pkg.spec, pkg.meta, data_dir)


def package_threshold(spec: Spec, meta: dict[str, Any]) -> Spec:
    """``spec`` with the package's own operating-point rule (``meta['threshold']``: its method,
    target, a fixed value), which ``medfuse calibrate --threshold-method`` may have changed from
    the spec's: a model derived from the package and re-fitted chooses its threshold as the
    package did (a screening point at sensitivity 0.95 was re-chosen by Youden's J)."""
    rec = meta.get("threshold") or {}
    method = rec.get("method")
    if spec.task.type != "binary" or method not in (
        "youden",
        "sensitivity",
        "specificity",
        "fixed",
    ):
        return spec
    upd: dict[str, Any] = {"method": method, "target": rec.get("target")}
    upd["value"] = rec.get("value") if method == "fixed" else None
    return spec.model_copy(update={"threshold": spec.threshold.model_copy(update=upd)})


def eval_split(bundle: DataBundle) -> tuple[str, Split]:
    """The test split when the source has one, else validation."""
    return ("test", bundle.test) if bundle.test is not None else ("val", bundle.val)


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics (``SUMMARY_KEYS`` plus ``n``) of a full metric dict."""
    return {k: metrics[k] for k in (*SUMMARY_KEYS, "n") if k in metrics}


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(after[k]) - float(before[k])
        for k in SUMMARY_KEYS
        if isinstance(before.get(k), float) and isinstance(after.get(k), float)
    }


def check_fraction(value: float, name: str, *, low_open: bool = True) -> float:
    v = float(value)
    if not (0.0 < v < 1.0) if low_open else not (0.0 <= v <= 1.0):
        interval = "(0, 1)" if low_open else "[0, 1]"
        raise SpecError(name, f"must be in {interval}; got {value!r}")
    return v


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- ONNX Runtime -----------------------------------------------------------------------------


def ort_session(model: bytes | str | Path, *, threads: int = 1) -> Any:
    """A CPU InferenceSession with a fixed thread count (1 = fair, stable timings)."""
    # lazy: ONNX Runtime, only when a session is created
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if isinstance(model, bytes):  # a model exported here: a failure is a defect, not an input
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return open_session(model, so, ["CPUExecutionProvider"])  # a package's file: PackageError


def ort_feeds(
    modalities: list[str], inputs: dict[str, np.ndarray], masks: dict[str, np.ndarray], sl: slice
) -> dict[str, np.ndarray]:
    """Named ONNX inputs (``<modality>``, ``mask_<modality>``) for rows ``sl``."""
    feed = {m: np.ascontiguousarray(inputs[m][sl], dtype=np.float32) for m in modalities}
    feed.update(
        {f"mask_{m}": np.ascontiguousarray(masks[m][sl], dtype=np.float32) for m in modalities}
    )
    return feed


def ort_logits(session: Any, modalities: list[str], data: Any, *, batch_size: int = 256) -> Any:
    """Logits ``(N, K)`` of an ONNX model on normalised ``Tensors`` (same inputs as training)."""
    inputs = {m: data.inputs[m].numpy() for m in modalities}
    masks = {m: data.masks[m].numpy() for m in modalities}
    n = len(data)
    out = [
        session.run(["logits"], ort_feeds(modalities, inputs, masks, slice(s, s + batch_size)))[0]
        for s in range(0, n, batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


# ---- writing a derived package ----------------------------------------------------------------


def source_info(pkg: Package) -> dict[str, Any]:
    return {
        "name": pkg.meta.get("name"),
        "path": str(pkg.path),
        "weights_sha256": pkg.meta.get("files", {}).get(WEIGHTS),
    }


def compression_section(records: list[dict[str, Any]]) -> str:
    """A model-card section listing what was done to the model."""
    lines = ["", "## Compression", ""]
    for r in records:
        m = r.get("metrics", {})
        b, a = m.get("before", {}), m.get("after", {})
        au = (
            f"; test AUROC {b['auroc']:.4f} -> {a['auroc']:.4f}"
            if isinstance(b.get("auroc"), float) and isinstance(a.get("auroc"), float)
            else ""
        )
        lines.append(
            f"- **{r.get('method')}** ({r.get('created', '')}): {r.get('summary', '')}{au}"
        )
    return "\n".join(lines) + "\n"


def check_out(out: str | Path, *sources: str | Path, overwrite: bool = True) -> Path:
    """The output directory must not be one of the input packages, nor lie where it cannot be
    written, nor (without ``overwrite``) hold a package (checked before any work)."""
    for src in sources:
        if Path(out).expanduser().resolve() == Path(src).expanduser().resolve():
            raise SpecError(
                "out", f"the output {out} is an input package ({src}); choose another directory"
            )
    return package_out(out, overwrite=overwrite)


def write_derived(
    src: Package,
    out: str | Path,
    *,
    meta: dict[str, Any],
    files: dict[str, bytes | str | Path],
    metrics: dict[str, Any],
    drop: tuple[str, ...] = (),
) -> Path:
    """Write ``out`` from ``src``: its files (minus ``drop``, plus ``files``), a new manifest, a
    regenerated model card and ``metrics.json``. Refuses to overwrite the source package."""

    out = check_out(out, src.path)
    carried: dict[str, bytes | str | Path] = {
        n: p
        for n, p in package_files(Path(src.path), src.meta).items()
        if n not in drop and n not in files and n not in ("README.md", "metrics.json", META)
    }
    meta = {k: v for k, v in meta.items() if k not in ("files", "format", "format_version")}
    card = model_card(meta, metrics) + compression_section(meta.get("compression", []))
    return write_package(
        out,
        meta,
        {
            **carried,
            **files,
            "metrics.json": json.dumps(metrics, indent=2, default=_json_default),
            "README.md": card,
        },
    )
