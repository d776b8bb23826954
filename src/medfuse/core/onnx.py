"""The ONNX Runtime predictor: prediction from an exported package with numpy + onnxruntime only.

>>> from medfuse.core.onnx import load
>>> model = load("runs/breastmnist")                 # checksums verified, ORT session created
>>> model.predict_proba({"image": x})                # raw (N, 1, 28, 28) arrays, as training saw them
>>> model.predict_rows("new_cases.csv", on_bad_row="missing").rows()   # a manifest, flagged rows

The package's ``medfuse.json`` gives everything else: the input shapes, the normalisation
statistics fitted on the training split, the calibration temperature and the decision threshold.
onnxruntime is imported when a package is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.errors import PackageError, SpecError
from medfuse.core.inputs import modalities_from_meta
from medfuse.core.package import read_meta
from medfuse.core.predictor import PredictorBase
from medfuse.core.preprocess import normalize


def check_device(device: str) -> str:
    """``device`` when it names one (auto, cpu, cuda, cuda:N), else a SpecError at --device."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(device)):
        raise SpecError("--device", f"{device!r} is not a device; use auto, cpu, cuda or cuda:N")
    return device


def onnx_device(precision: str, device: str) -> str:
    """Where ONNX Runtime runs a model of ``precision`` when ``device`` is asked for: an INT8
    model on the CPU whatever is asked (its kernels are ONNX Runtime's CPU kernels, and the
    ``onnxruntime`` package has no CUDA provider), any other model where asked."""
    check_device(device)
    return "cpu" if precision == "int8" else device


def _providers(device: str) -> list[str]:
    # lazy: ONNX Runtime, only when a session is created
    import onnxruntime as ort

    check_device(device)
    have = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in have:
            raise PackageError(
                "device cuda was asked for, but this onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu) ; use device cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int | None = None) -> Any:
    """ORT options: full graph optimisation; ``threads`` intra-op threads (None or 0: ORT
    decides; a negative count is a SpecError)."""
    # lazy: ONNX Runtime, only when a session is created
    import onnxruntime as ort

    if threads is not None and int(threads) < 0:
        raise SpecError(
            "--threads", f"must be >= 0 (0 or None: ONNX Runtime decides); got {threads}"
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return so


def open_session(path: str | Path, options: Any, providers: list[str]) -> Any:
    """An ORT InferenceSession on a package's ONNX file; a file ORT cannot load (truncated,
    not ONNX, an unsupported graph) is a PackageError naming it."""
    # lazy: ONNX Runtime, only when a session is created
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # ORT's own errors (InvalidProtobuf, Fail, ...) derive from Exception
        msg = " ".join(str(err).split())
        raise PackageError(
            f"{path}: ONNX Runtime cannot load it ({type(err).__name__}: {msg}); the file is "
            "damaged or not an ONNX model (`medfuse export` writes it again)"
        ) from None


class OnnxPredictor(PredictorBase):
    """``predict_proba`` / ``predict`` / ``predict_rows`` on any input the one input contract
    accepts (``medfuse.core.inputs``), with ONNX Runtime; the same ``Predictor`` protocol as
    ``medfuse.inference.predictor.Predictor``, which needs PyTorch."""

    runtime = "onnx"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        onnx_file: str | None = None,
        verify: bool = True,
    ) -> None:

        self.path = Path(path)
        self.meta = read_meta(self.path, verify=verify)
        rt = self.meta.get("runtime") or {}
        name = onnx_file or rt.get("onnx_file") or "model.onnx"
        if name not in self.meta.get("files", {}):
            raise PackageError(
                f"{self.path} has no exported ONNX model ({name} is not listed in medfuse.json); "
                f"run `medfuse export {self.path}` first (or use the torch runtime)"
            )
        self.onnx_file = name
        self.precision = str(rt.get("precision", "fp32")) if name == rt.get("onnx_file") else "fp32"
        self.modalities = modalities_from_meta(self.meta)
        #: where it runs (:func:`onnx_device`: an INT8 model on the CPU whatever is asked)
        self.device = onnx_device(self.precision, device)
        self.session = open_session(
            self.path / name, session_options(threads), _providers(self.device)
        )
        names = {i.name for i in self.session.get_inputs()}
        need = {*self.modalities, *(f"mask_{m}" for m in self.modalities)}
        if names != need:
            raise PackageError(
                f"{self.path / name}: inputs {sorted(names)} do not match the spec's modalities "
                f"(expected {sorted(need)})"
            )
        self.output_name = self.session.get_outputs()[0].name

    # -- inference --
    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the ONNX graph on already preprocessed inputs (names as the graph's inputs)."""
        return np.asarray(self.session.run([self.output_name], feeds)[0], np.float32)

    def preprocess(
        self, arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Normalise with the training statistics; the graph's feed dict (inputs and masks)."""
        stats = self.meta["preprocessing"]
        feeds = {m: normalize(arrays[m], masks[m], stats[m]) for m in self.modalities}
        feeds.update({f"mask_{m}": np.asarray(masks[m], np.float32) for m in self.modalities})
        return feeds

    def _batch_logits(
        self, arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray]
    ) -> np.ndarray:
        return self.run(self.preprocess(arrays, masks))


def load(
    path: str | Path, *, device: str = "cpu", threads: int | None = None, verify: bool = True
) -> OnnxPredictor:
    """Load an exported package (checksums verified) as an ONNX Runtime predictor."""
    return OnnxPredictor(path, device=device, threads=threads, verify=verify)
