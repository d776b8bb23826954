"""``export_package``: write an ONNX or ``torch.export`` program INTO a package, parity-checked.

The export is checked in memory against the PyTorch model on the verification inputs before
anything is written (a failing export never lands in the package), then written with
``update_package`` (atomic, checksums updated) and the whole package verified again with
``verify_package`` on this device.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.core.errors import MedfuseError, SpecError, not_allowed
from medfuse.core.package import WEIGHTS, package_arrays, update_package
from medfuse.export.onnx import DEFAULT_OPSET, export_onnx_bytes, input_names
from medfuse.export.pt2 import export_pt2_bytes
from medfuse.export.verify import (
    DEFAULT_SAMPLES,
    TOLERANCE,
    VERIFICATION,
    ParityError,
    VerifyReport,
    build_verification,
    torch_logits,
    verify_package,
)
from medfuse.inference.package import load_package

log = logging.getLogger("medfuse.export")

FORMATS = ("onnx", "pt2")
ONNX_FILE = "model.onnx"
PT2_FILE = "model.pt2"


@dataclass
class ExportResult:
    package: Path
    written: list[str]
    report: VerifyReport | None
    notes: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None


#: the opsets the TorchScript-based exporter writes (torch.onnx: 7..20)
OPSETS = (7, 20)


def _stored_verification(
    root: Path, meta: dict[str, Any], mods: list[str]
) -> dict[str, Any] | None:
    """The existing verification feeds and logits, when they were made for these weights."""
    rec = meta.get("verification") or {}
    files = meta.get("files", {})
    if VERIFICATION not in files or rec.get("weights_sha256") != files.get(WEIGHTS):
        return None
    need = (*input_names(mods), "logits")
    d = package_arrays(root / VERIFICATION, root / VERIFICATION, need)
    return {k: d[k] for k in need}


def export_package(
    path: str | Path,
    *,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    samples: int = DEFAULT_SAMPLES,
    verify: bool = True,
    refresh: bool = False,
) -> ExportResult:
    """Export ``path``'s model as ``format`` into the package and verify it.

    An INT8 package (``runtime.precision == "int8"``, written by ``medfuse quantize``) keeps its
    ``model.onnx``: exporting it as ONNX only adds ``verification.npz`` (from the fp32 weights) and
    verifies the INT8 model by label agreement. ``refresh`` rebuilds ``verification.npz``.
    """

    if format not in FORMATS:
        raise MedfuseError(not_allowed("export format", format, FORMATS))
    if not OPSETS[0] <= int(opset) <= OPSETS[1]:
        raise SpecError("--opset", f"must be in {OPSETS[0]}..{OPSETS[1]}; got {opset}")
    if int(samples) < 1:
        raise SpecError("--samples", f"must be at least 1; got {samples}")
    root = Path(path)
    pkg = load_package(root, device="cpu")
    meta, spec = pkg.meta, pkg.spec
    mods = list(spec.modalities)
    rt = dict(meta.get("runtime") or {})
    int8 = rt.get("precision") == "int8"
    add: dict[str, bytes] = {}
    notes: list[str] = []
    meta_updates: dict[str, Any] = {}

    feeds = None if refresh else _stored_verification(root, meta, mods)
    if feeds is None:
        ver_bytes, record, feeds = build_verification(pkg, data_dir=data_dir, n=samples)
        add[VERIFICATION] = ver_bytes
        meta_updates["verification"] = record
        notes.append(f"{VERIFICATION}: {record['samples']} samples, {record['source']}")
    ref = feeds["logits"]
    exports = dict(meta.get("exports") or {})
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    diff: float | None = None

    if format == "onnx" and int8:
        notes.append(
            f"INT8 package: {rt.get('onnx_file', ONNX_FILE)} kept as written by quantize "
            "(verified by label agreement)"
        )
    elif format == "onnx":
        # lazy: ONNX Runtime, only when a session is created
        import onnxruntime as ort

        example = tuple(torch.from_numpy(feeds[n]) for n in input_names(mods))
        data = export_onnx_bytes(pkg.model, spec, opset=opset, example=example)
        try:
            sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT's own errors derive from Exception
            if int(opset) == DEFAULT_OPSET:
                raise  # the default opset must load: a defect, not a choice of the user's
            raise SpecError(
                "--opset",
                f"ONNX Runtime cannot run this model exported at opset {opset} "
                f"({type(err).__name__}); use the default {DEFAULT_OPSET}",
            ) from None
        got = sess.run(None, {n: feeds[n] for n in input_names(mods)})[0]
        diff = float(np.abs(got - ref).max())
        if not np.isfinite(diff) or diff > TOLERANCE:
            raise ParityError(
                f"ONNX export differs from PyTorch by {diff:.3g} (max |logit diff|, tolerance "
                f"{TOLERANCE:g}); nothing was written to {root}"
            )
        add[ONNX_FILE] = data
        meta_updates["runtime"] = {
            "default": "onnx",
            "onnx_file": ONNX_FILE,
            "precision": "fp32",
            "opset": int(opset),
        }
        exports["onnx"] = {
            "file": ONNX_FILE,
            "opset": int(opset),
            "exporter": "torch.onnx (TorchScript)",
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "max_abs_diff": diff,
            "created": stamp,
        }
    else:
        inputs = {m: torch.from_numpy(feeds[m]) for m in mods}
        masks = {m: torch.from_numpy(feeds[f"mask_{m}"]) for m in mods}
        data = export_pt2_bytes(pkg.model, spec, (inputs, masks))
        module = torch.export.load(io.BytesIO(data)).module()
        got = torch_logits(module, mods, feeds, "cpu")
        diff = float(np.abs(got - ref).max())
        if not np.isfinite(diff) or diff > TOLERANCE:
            raise ParityError(
                f"torch.export program differs from the model by {diff:.3g}; nothing was written"
            )
        add[PT2_FILE] = data
        exports["pt2"] = {
            "file": PT2_FILE,
            "exporter": "torch.export",
            "torch": torch.__version__,
            "call": "module(inputs: dict[str, Tensor], masks: dict[str, Tensor]) -> logits",
            "max_abs_diff": diff,
            "created": stamp,
        }
    if exports:
        meta_updates["exports"] = exports
    if add or meta_updates:
        update_package(root, add=add, meta_updates=meta_updates)
    # a program written by this call is trusted (it never came from the package's author)
    mine = sha256(add[PT2_FILE]).hexdigest() if PT2_FILE in add else None
    report = (
        verify_package(root, runtimes="all", device=device, trusted_pt2=mine) if verify else None
    )
    return ExportResult(root, sorted(add), report, notes, diff)
