"""The ONNX Runtime predictor: prediction from an exported package with numpy + onnxruntime only.

>>> from medfuse.core.onnx import load
>>> model = load("runs/breastmnist")                 # checksums verified, ORT session created
>>> model.predict_proba({"image": x})                # raw (N, 1, 28, 28) arrays, as training saw them

The package's ``medfuse.json`` gives everything else: the input shapes, the normalisation
statistics fitted on the training split, the calibration temperature and the decision threshold.
onnxruntime is imported when a package is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.decision import decide, probabilities
from medfuse.core.errors import DataError, PackageError
from medfuse.core.inputs import modalities_from_meta
from medfuse.core.package import read_meta
from medfuse.core.preprocess import normalize


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

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
    """ORT options: full graph optimisation; ``threads`` intra-op threads (None: ORT decides)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return so


class OnnxPredictor:
    """``predict_proba`` / ``predict`` on raw inputs with ONNX Runtime (same API as
    ``medfuse.inference.predictor.Predictor``, which needs PyTorch)."""

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
        import onnxruntime as ort

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
        self.device = device
        self.session = ort.InferenceSession(
            str(self.path / name),
            sess_options=session_options(threads),
            providers=_providers(device),
        )
        names = {i.name for i in self.session.get_inputs()}
        need = {*self.modalities, *(f"mask_{m}" for m in self.modalities)}
        if names != need:
            raise PackageError(
                f"{self.path / name}: inputs {sorted(names)} do not match the spec's modalities "
                f"(expected {sorted(need)})"
            )
        self.output_name = self.session.get_outputs()[0].name

    # -- package facts --
    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"]["value"])  # present: read_meta checked it

    @property
    def temperature(self) -> float:
        return float(self.meta["calibration"]["temperature"])  # read_meta fills it

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "binary" else len(self.labels)

    # -- inputs --
    def arrays(self, samples: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Raw arrays and presence masks from a batched dict (``{m: (N, ...), "mask": {...}}``),
        an object with ``.arrays`` / ``.masks`` (a ``Split``) or a list of per-sample dicts."""
        if hasattr(samples, "arrays") and hasattr(samples, "masks"):
            return dict(samples.arrays), dict(samples.masks)
        if isinstance(samples, dict):
            masks_in = samples.get("mask") or {}
            arrays = {
                m: np.asarray(samples[m], np.float32) for m in self.modalities if m in samples
            }
            if not arrays:
                raise DataError(
                    f"no input for any modality; expected some of {', '.join(self.modalities)}"
                )
            n = len(next(iter(arrays.values())))
            masks: dict[str, np.ndarray] = {}
            for m, info in self.modalities.items():
                if m not in arrays:
                    arrays[m] = np.full((n, *info.shape), info.missing_value, np.float32)
                    masks[m] = np.zeros(n, np.float32)
                else:
                    if arrays[m].shape[1:] != info.shape or len(arrays[m]) != n:
                        raise DataError(
                            f"modality {m!r}: arrays of shape {arrays[m].shape}; expected "
                            f"({n}, {', '.join(map(str, info.shape))})"
                        )
                    masks[m] = np.asarray(masks_in.get(m, np.ones(n)), np.float32).reshape(n)
            return arrays, masks
        return self._stack(list(samples))

    def _stack(
        self, samples: list[dict[str, Any]]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        n = len(samples)
        arrays, masks = {}, {}
        for name, info in self.modalities.items():
            x = np.full((n, *info.shape), info.missing_value, np.float32)
            mask = np.zeros(n, np.float32)
            for i, s in enumerate(samples):
                v = s.get(name) if isinstance(s, dict) else None
                if v is None:
                    continue
                v = np.asarray(v, dtype=np.float32)
                if v.shape != info.shape:
                    raise DataError(
                        f"sample {i}, modality {name!r}: shape {v.shape}, expected {info.shape}"
                    )
                x[i], mask[i] = v, 1.0
            arrays[name], masks[name] = x, mask
        return arrays, masks

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

    def logits(self, samples: Any, *, batch_size: int = 256) -> np.ndarray:
        arrays, masks = self.arrays(samples)
        n = len(next(iter(masks.values())))
        out = []
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            out.append(
                self.run(
                    self.preprocess(
                        {m: a[sl] for m, a in arrays.items()}, {m: k[sl] for m, k in masks.items()}
                    )
                )
            )
        return np.concatenate(out) if out else np.zeros((0, self.num_outputs), np.float32)

    def predict_proba(self, samples: Any, *, batch_size: int = 256) -> np.ndarray:
        """Binary: (N,) P(positive label); multiclass/multilabel: (N, K). Calibration applied."""
        return probabilities(
            self.task, self.logits(samples, batch_size=batch_size), self.temperature
        )

    def predict(self, samples: Any, *, batch_size: int = 256) -> list[Any]:
        p = self.predict_proba(samples, batch_size=batch_size)
        return decide(self.task, p, self.labels, self.threshold)


def load(
    path: str | Path, *, device: str = "cpu", threads: int | None = None, verify: bool = True
) -> OnnxPredictor:
    """Load an exported package (checksums verified) as an ONNX Runtime predictor."""
    return OnnxPredictor(path, device=device, threads=threads, verify=verify)
