"""Prediction from an exported package with numpy + onnxruntime only: no PyTorch.

This is the migration target for a machine without the training stack (a hospital server, an
edge box): ``pip install numpy onnxruntime pillow`` plus medfuse itself without its dependencies
(``pip install --no-deps medfuse``). The module imports only the standard library, numpy,
``medfuse.errors``, ``medfuse.package`` (checksums with hashlib) and ``medfuse.preprocess``
(numpy); onnxruntime is imported when a package is loaded, Pillow only to read an image file.

>>> from medfuse.runtime import load
>>> model = load("runs/breastmnist")                 # checksums verified, ORT session created
>>> model.predict_proba({"image": x})                # raw (N, 1, 28, 28) arrays, as training saw them
>>> model.predict({"image": x, "mask": {"image": m}})

The package's ``medfuse.json`` gives everything else: the input shapes, the normalisation
statistics fitted on the training split, the calibration temperature and the decision threshold.
``python -m medfuse.runtime PACKAGE --input batch.npz --out preds.csv`` does the same from a shell.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.errors import DataError, PackageError
from medfuse.package import read_meta
from medfuse.preprocess import normalize

__all__ = [
    "Modality",
    "OnnxPredictor",
    "decide",
    "fit_image",
    "fit_signal",
    "load",
    "modalities_from_meta",
    "probabilities",
    "read_image_bytes",
    "read_npy_bytes",
]

#: images larger than this many pixels per channel are refused before decoding (no memory bombs)
MAX_PIXELS = 4096 * 4096


# ---- the package's description of its inputs ---------------------------------------------


@dataclass(frozen=True)
class Modality:
    """One input of the model as ``medfuse.json`` describes it (no pydantic needed)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    channels: int | None = None
    size: tuple[int, ...] | None = None
    length: int | None = None
    columns: tuple[str, ...] = ()
    sequence: int | None = None
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def missing_value(self) -> float:
        """What fills an absent sample: NaN for tabular (a missing value), else 0."""
        return float("nan") if self.kind == "tabular" else 0.0


def modalities_from_meta(meta: dict[str, Any]) -> dict[str, Modality]:
    """The spec's modalities, in model input order, with their per-sample shapes."""
    out: dict[str, Modality] = {}
    stats = meta.get("preprocessing", {})
    for name, m in meta["spec"]["modalities"].items():
        kind = m["kind"]
        lead = (int(m["sequence"]),) if m.get("sequence") else ()
        if kind == "image":
            shape = (*lead, int(m["channels"]), *(int(v) for v in m["size"]))
        elif kind == "signal":
            shape = (*lead, int(m["channels"]), int(m["length"]))
        else:
            shape = (*lead, len(m["columns"]))
        out[name] = Modality(
            name=name,
            kind=kind,
            shape=shape,
            channels=m.get("channels"),
            size=tuple(m["size"]) if m.get("size") else None,
            length=m.get("length"),
            columns=tuple(m.get("columns") or ()),
            sequence=m.get("sequence"),
            categories=dict(stats.get(name, {}).get("categories", {}) or {}),
        )
    return out


# ---- probabilities and decisions (training, evaluation and prediction use these too) ----


def probabilities(task: str, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Binary: (N,) P(positive); multiclass: (N, K) softmax; multilabel: (N, K) sigmoids."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if task == "multiclass":
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    p = 1.0 / (1.0 + np.exp(-z))
    return p[:, 0] if task == "binary" and p.ndim == 2 else p


def decide(task: str, p: np.ndarray, labels: list[str], threshold: float) -> list[Any]:
    """Labels from probabilities: threshold (binary, multilabel) or argmax (multiclass)."""
    if task == "binary":
        return [labels[int(v >= threshold)] for v in p]
    if task == "multiclass":
        return [labels[int(i)] for i in p.argmax(axis=1)]
    return [[labels[j] for j in np.flatnonzero(row >= threshold)] for row in p]


# ---- reading raw inputs without the data stack ---------------------------------------------


def _resize_axis(x: np.ndarray, axis: int, out: int) -> np.ndarray:
    """Linear interpolation on pixel centres, edges repeated (scipy zoom, grid_mode, 'nearest')."""
    n = x.shape[axis]
    if n == out:
        return x
    pos = np.clip((np.arange(out, dtype=np.float64) + 0.5) * (n / out) - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).reshape([-1 if i == axis else 1 for i in range(x.ndim)])
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def fit_image(arr: np.ndarray, channels: int, size: Sequence[int]) -> np.ndarray:
    """Match channels (grey <-> RGB) and resize to ``size``, as ``medfuse.data.readers`` does."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == len(size):
        arr = arr[None]
    if arr.ndim != len(size) + 1:
        raise DataError(f"an image of shape {arr.shape} cannot be fitted to size {list(size)}")
    if arr.shape[0] != channels:
        if channels == 1:
            arr = arr.mean(axis=0, keepdims=True)
        elif arr.shape[0] == 1:
            arr = np.repeat(arr, channels, axis=0)
        else:
            raise DataError(f"image has {arr.shape[0]} channels; the model expects {channels}")
    if min(arr.shape[1:]) < 1:
        raise DataError(f"an empty image (shape {arr.shape}) cannot be resized")
    for axis, target in enumerate(size, start=1):
        arr = _resize_axis(arr, axis, int(target))
    return np.ascontiguousarray(arr, dtype=np.float32)


def fit_signal(arr: np.ndarray, channels: int, length: int) -> np.ndarray:
    """Check channels; centre-crop or zero-pad the time axis to ``length``."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise DataError(f"signal has shape {arr.shape}; the model expects ({channels}, T)")
    if arr.shape[0] != channels:
        raise DataError(f"signal has {arr.shape[0]} channels; the model expects {channels}")
    t = arr.shape[1]
    if t > length:
        start = (t - length) // 2
        arr = arr[:, start : start + length]
    elif t < length:
        arr = np.pad(arr, ((0, 0), (0, length - t)))
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_npy_bytes(data: bytes, *, max_elements: int = MAX_PIXELS * 4) -> np.ndarray:
    """An ``.npy`` payload as a float32 array; the header is checked before any allocation."""
    from numpy.lib import format as npformat

    buf = io.BytesIO(data)
    try:
        version = npformat.read_magic(buf)
        if version == (1, 0):
            shape, _fortran, dtype = npformat.read_array_header_1_0(buf)
        else:
            shape, _fortran, dtype = npformat.read_array_header_2_0(buf)
    except Exception as err:
        raise DataError(f"not an .npy array ({err})") from None
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise DataError(f"an .npy input must be numeric; got dtype {dtype}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > max_elements:
        raise DataError(
            f"an .npy input of shape {shape} is too large (limit {max_elements} values)"
        )
    if len(data) - buf.tell() < count * dtype.itemsize:
        raise DataError(f".npy data is truncated: the header says {shape} {dtype}")
    buf.seek(0)
    try:
        arr = np.load(buf, allow_pickle=False)
    except Exception as err:
        raise DataError(f"not a readable .npy array ({err})") from None
    return np.asarray(arr, dtype=np.float32)


def read_image_bytes(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A PNG/JPEG/BMP/TIFF payload as ``(C, H, W)`` float32 (Pillow: grey -> 1, colour -> RGB)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - only without Pillow
        raise DataError("reading images needs Pillow: pip install pillow") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DataError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)[None]
            elif im.mode in ("L", "1", "LA"):
                arr = np.asarray(im.convert("L"), dtype=np.float32)[None]
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"not a readable image ({type(err).__name__}: {err})") from None
    return np.ascontiguousarray(arr)


def read_file(path: str | Path, modality: Modality) -> np.ndarray:
    """One image (PNG/JPEG/... or .npy) or signal (.npy) file fitted to ``modality``'s shape.

    The full install reads many more formats (DICOM, NIfTI, WFDB) through ``medfuse.data``;
    this fallback covers what a torch-free deployment typically receives.
    """
    p = Path(path)
    data = p.read_bytes()
    if modality.kind == "image" and not modality.sequence:
        raw = read_npy_bytes(data) if p.suffix.lower() == ".npy" else read_image_bytes(data)
        return fit_image(raw, int(modality.channels or 1), modality.size or ())
    if modality.kind == "signal" and not modality.sequence and p.suffix.lower() == ".npy":
        return fit_signal(read_npy_bytes(data), int(modality.channels or 1), int(modality.length))
    raise DataError(f"{p}: the torch-free runtime reads images and .npy signals only")


# ---- the predictor -------------------------------------------------------------------------


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
    ``medfuse.predict.Predictor``, which needs PyTorch)."""

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
        return float(self.meta.get("threshold", {}).get("value", 0.5))

    @property
    def temperature(self) -> float:
        return float(self.meta.get("calibration", {}).get("temperature", 1.0))

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


# ---- a minimal command line for torch-free machines ----------------------------------------


def npz_modalities(path: Path | str, keys: set[str], modalities: Iterable[str]) -> list[str]:
    """The model's modalities an ``.npz`` input holds (arrays ``<m>``, ``mask_<m>``, ``id``);
    an array that is none of these, or no modality at all, is an error naming what is allowed."""
    mods = list(modalities)
    unknown = keys - set(mods) - {f"mask_{m}" for m in mods} - {"id"}
    if unknown:
        raise DataError(
            f"{path}: arrays {sorted(unknown)} are not modalities of this model ({', '.join(mods)})"
        )
    present = [m for m in mods if m in keys]
    if not present:
        raise DataError(f"{path}: holds none of the model's modalities ({', '.join(mods)})")
    return present


def _read_npz(path: Path, model: OnnxPredictor) -> tuple[dict[str, Any], list[str]]:
    with np.load(path, allow_pickle=False) as d:
        keys = set(d.files)
        mods = model.modalities
        present = npz_modalities(path, keys, mods)
        n = len(d[present[0]])
        batch: dict[str, Any] = {"mask": {}}
        for m in present:
            x = d[m].astype(np.float32)
            if x.shape[1:] != mods[m].shape and x.ndim == len(mods[m].shape):  # (N, H, W) grey
                x = x[:, None]
            batch[m] = x
            batch["mask"][m] = d[f"mask_{m}"] if f"mask_{m}" in keys else np.ones(n, np.float32)
        ids = [str(v) for v in d["id"]] if "id" in keys else [f"{path.stem}-{i}" for i in range(n)]
    return batch, ids


def write_predictions(
    rows: Iterable[tuple[str, np.ndarray, Any]], model: OnnxPredictor, out: Any
) -> int:
    """CSV rows ``id, prob_<label>..., label[, threshold]`` (the ``medfuse predict`` layout)."""
    labels = model.labels
    probs = [f"prob_{labels[1]}"] if model.task == "binary" else [f"prob_{x}" for x in labels]
    header = ["id", *probs, "label", *(["threshold"] if model.task == "binary" else [])]
    w = csv.writer(out)
    w.writerow(header)
    n = 0
    for rid, p, lab in rows:
        vals = [float(p)] if np.ndim(p) == 0 else [float(v) for v in p]
        lab = ";".join(lab) if isinstance(lab, list) else lab
        w.writerow([rid, *vals, lab, *([model.threshold] if model.task == "binary" else [])])
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    """``python -m medfuse.runtime PACKAGE --input batch.npz [--out preds.csv]``."""
    ap = argparse.ArgumentParser(
        prog="python -m medfuse.runtime",
        description="Predict with an exported medfuse package using onnxruntime (no PyTorch).",
    )
    ap.add_argument("package")
    ap.add_argument("--input", required=True, help=".npz with one array per modality (+ mask_<m>)")
    ap.add_argument("--out", help="output .csv (default: stdout)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        model = load(a.package, threads=a.threads)
        inp = Path(a.input)
        if not inp.exists():
            raise DataError(f"input {inp} not found")
        batch, ids = _read_npz(inp, model)
        p = model.predict_proba(batch, batch_size=a.batch_size)
        labels = decide(model.task, p, model.labels, model.threshold)
        rows = zip(ids, p, labels)
        if a.out:
            with open(a.out, "w", newline="") as f:
                n = write_predictions(rows, model, f)
            print(f"{n} predictions -> {a.out}", file=sys.stderr)
        else:
            write_predictions(rows, model, sys.stdout)
    except (DataError, PackageError) as err:
        print(f"medfuse.runtime: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
