"""The runtime-agnostic service behind the HTTP app: decode instances, predict, describe.

``Service.decode`` turns validated request instances into raw arrays and presence masks exactly
as the data pipeline would have produced them (files go through ``medfuse.data.readers``, so a PNG
or DICOM is windowed and resized as in training); ``Service.predict`` runs the package's predictor
(ONNX Runtime or PyTorch) and applies calibration and threshold. Bad content raises
``InputError`` with the location of the offending field, which the app turns into a 422.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.decision import decide
from medfuse.core.errors import DataError, MedfuseError, PackageError
from medfuse.core.inputs import Modality, modalities_from_meta
from medfuse.core.package import read_meta, typed_meta, versions
from medfuse.core.readers.image_math import (
    MAX_PIXELS,
    fit_image,
    fit_signal,
    read_image_bytes,
    read_npy_bytes,
)
from medfuse.serve.schemas import FILE_FIELDS, request_models

log = logging.getLogger("medfuse.serve")
RUNTIMES = ("onnx", "torch")
SUFFIX = {"png": ".png", "dicom": ".dcm", "npy": ".npy"}
FLOAT32_MAX = float(np.finfo(np.float32).max)


class InputError(DataError):
    """A request's content is unusable; ``loc`` names the field (FastAPI's error layout)."""

    def __init__(self, loc: tuple[Any, ...], msg: str) -> None:
        self.loc = loc
        self.msg = msg
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")


def load_predictor(
    path: Path, runtime: str, *, device: str = "cpu", threads: int | None = None
) -> Any:
    """The package's predictor for ``runtime`` ("onnx": ``model.onnx`` with ONNX Runtime, no
    PyTorch needed; "torch": the weights rebuilt with PyTorch)."""
    if runtime == "onnx":
        from medfuse.core.onnx import OnnxPredictor

        return OnnxPredictor(path, device=device, threads=threads)
    if runtime == "torch":
        try:
            import torch
        except ImportError:
            raise PackageError("the torch runtime needs PyTorch; use the onnx runtime") from None
        from medfuse.inference.predictor import load

        if threads:
            torch.set_num_threads(int(threads))
        pred = load(path, device=device)
        pred.runtime = "torch"
        return pred
    raise MedfuseError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")


def _spec_modalities(meta: dict[str, Any]) -> dict[str, Any] | None:
    """Full ModalitySpec objects for the data readers, or None without the data stack."""
    try:
        from medfuse.core.spec import ModalitySpec

        return {n: ModalitySpec.model_validate(m) for n, m in meta["spec"]["modalities"].items()}
    except Exception:  # pragma: no cover - only without pydantic / the data stack
        return None


class Service:
    """A loaded package ready to answer requests (thread-safe: predictors are read-only)."""

    def __init__(
        self,
        package: str | Path,
        *,
        runtime: str = "onnx",
        device: str = "cpu",
        threads: int | None = None,
        max_batch: int = 64,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.path = Path(package)
        self.meta = read_meta(self.path)
        self.runtime = runtime
        self.predictor = load_predictor(self.path, runtime, device=device, threads=threads)
        self.modalities: dict[str, Modality] = modalities_from_meta(self.meta)
        self.specs = _spec_modalities(self.meta)
        self.max_batch = int(max_batch)
        self.max_pixels = int(max_pixels)
        self.instance_model, self.request_model = request_models(self.modalities, self.max_batch)
        self.labels: list[str] = list(self.meta["labels"])
        self.task: str = str(self.meta["task"])
        typed = typed_meta(self.meta)  # read_meta checked the ranges: no default decides here
        self.threshold = typed.threshold.value
        self.temperature = typed.calibration.temperature
        self.name = str(self.meta.get("name", self.path.name))
        self.versions = {"package": self.meta.get("versions", {}), "serving": versions()}

    # ---- decoding ----------------------------------------------------------------------------

    def decode(self, instances: list[Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Raw arrays ``{m: (N, *shape)}`` and masks ``{m: (N,)}`` from validated instances
        (pydantic ``Instance`` objects or plain dicts keyed by modality name)."""
        n = len(instances)
        arrays = {
            m: np.full((n, *info.shape), info.missing_value, np.float32)
            for m, info in self.modalities.items()
        }
        masks = {m: np.zeros(n, np.float32) for m in self.modalities}
        for i, inst in enumerate(instances):
            data = inst.model_dump(by_alias=True) if hasattr(inst, "model_dump") else dict(inst)
            for m, info in self.modalities.items():
                value = data.get(m)
                if value is None:
                    continue
                loc = ("body", "instances", i, m)
                if info.kind == "tabular":
                    row = self._tabular(value, info, loc)
                    arrays[m][i] = row
                    masks[m][i] = float(not np.isnan(row).all())
                else:
                    arrays[m][i] = self._tensor(value, info, loc)
                    masks[m][i] = 1.0
        return arrays, masks

    def _tensor(self, value: dict[str, Any], info: Modality, loc: tuple[Any, ...]) -> np.ndarray:
        given = [k for k, v in value.items() if v is not None]
        if len(given) != 1:
            allowed = ", ".join(["array", *FILE_FIELDS.get(info.kind, ())])
            raise InputError(loc, f"give exactly one of {allowed}")
        field = given[0]
        loc = (*loc, field)
        if field == "array":
            try:
                x = np.asarray(value["array"], dtype=np.float32)
            except (ValueError, TypeError):
                raise InputError(
                    loc, "a ragged nested list; rows must have equal lengths"
                ) from None
            if x.shape != info.shape:
                raise InputError(
                    loc,
                    f"shape {x.shape}; expected {info.shape} for {info.kind} {info.name!r} "
                    "(send a png/dicom/npy file to have it resized)",
                )
        else:
            x = self._file(value[field], field, info, loc)
        bad = int((~np.isfinite(x)).sum())
        if bad:
            raise InputError(
                loc, f"{bad} values are NaN or infinite (or beyond float32); all must be finite"
            )
        return x

    def _file(self, b64: str, field: str, info: Modality, loc: tuple[Any, ...]) -> np.ndarray:
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(loc, "not valid base64") from None
        if not raw:
            raise InputError(loc, "empty file")
        try:
            self._guard(raw, field)
            spec = (self.specs or {}).get(info.name)
            if spec is not None:
                return self._read_with_data_stack(raw, field, spec)
            x = read_npy_bytes(raw) if field == "npy" else read_image_bytes(raw)
            if info.kind == "image" and not info.sequence:
                return fit_image(x, int(info.channels or 1), info.size or ())
            if info.kind == "signal" and not info.sequence:
                return fit_signal(x, int(info.channels or 1), int(info.length or 1))
            raise DataError(f"cannot fit a file to shape {info.shape}")
        except DataError as err:
            raise InputError(loc, str(err).replace(tempfile.gettempdir(), "<upload>")) from None
        except MemoryError:
            raise InputError(loc, "the file is too large to decode") from None
        except (
            Exception
        ) as err:  # a decoder's own failure on hostile input: still the input's fault
            raise InputError(
                loc, f"cannot decode the {field} file ({type(err).__name__})"
            ) from None

    def _guard(self, raw: bytes, field: str) -> None:
        """Refuse oversized images before decoding them (decompression bombs)."""
        if field == "npy":
            read_npy_bytes(raw, max_elements=self.max_pixels * 4)
        elif field == "png":
            from PIL import Image

            try:
                with Image.open(io.BytesIO(raw)) as im:
                    w, h = im.size
            except Exception as err:
                raise DataError(f"not a readable image ({type(err).__name__})") from None
            if w * h > self.max_pixels:
                raise DataError(f"image of {w}x{h} pixels exceeds the limit of {self.max_pixels}")
        elif field == "dicom":
            import pydicom

            try:
                ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, force=True)
            except Exception as err:
                raise DataError(f"not a DICOM file ({type(err).__name__})") from None
            pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
            pixels *= int(ds.get("NumberOfFrames", 1) or 1)
            if pixels > self.max_pixels:
                raise DataError(f"DICOM of {pixels} pixels exceeds the limit of {self.max_pixels}")

    @staticmethod
    def _read_with_data_stack(raw: bytes, field: str, spec: Any) -> np.ndarray:
        from medfuse.core.readers import read_modality

        fd, name = tempfile.mkstemp(suffix=SUFFIX[field], prefix="medfuse-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            return np.asarray(read_modality(name, spec), np.float32)
        finally:
            os.unlink(name)

    def _tabular(self, value: dict[str, Any], info: Modality, loc: tuple[Any, ...]) -> np.ndarray:
        row = np.full(len(info.columns), np.nan, np.float32)
        for j, col in enumerate(info.columns):
            v = value.get(col)
            if v is None:
                continue
            cats = info.categories.get(col)
            where = (*loc, col)
            if cats:
                key = str(v).strip()
                if isinstance(v, float) and v.is_integer():
                    key = str(int(v))
                if key not in cats:
                    raise InputError(where, f"{v!r} is not a known value; allowed: {cats}")
                row[j] = cats.index(key)
                continue
            if isinstance(v, str):
                try:
                    v = float(v.strip())
                except ValueError:
                    raise InputError(where, f"{v!r} is not a number") from None
            if not math.isfinite(float(v)) or abs(float(v)) > FLOAT32_MAX:
                raise InputError(
                    where, f"{v!r} is not a finite number; use null for a missing value"
                )
            row[j] = float(v)
        return row

    # ---- prediction --------------------------------------------------------------------------

    def predict(self, instances: list[Any]) -> list[dict[str, Any]]:
        """Decode and predict a batch; one result dict per instance."""
        arrays, masks = self.decode(instances)
        p = self.predictor.predict_proba({**arrays, "mask": masks}, batch_size=self.max_batch)
        if not np.isfinite(p).all():
            raise MedfuseError("the model produced non-finite probabilities")
        chosen = decide(self.task, p, self.labels, self.threshold)
        out = []
        for i, label in enumerate(chosen):
            if self.task == "binary":
                probs = {self.labels[0]: float(1.0 - p[i]), self.labels[1]: float(p[i])}
            else:
                probs = {lab: float(v) for lab, v in zip(self.labels, p[i])}
            out.append(
                {
                    "probabilities": probs,
                    "label": label,
                    "threshold": None if self.task == "multiclass" else self.threshold,
                    "missing": [m for m in self.modalities if masks[m][i] == 0],
                }
            )
        return out

    # ---- description -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` returns."""
        rt = dict(self.meta.get("runtime") or {})
        runtime = {"name": self.runtime}
        if self.runtime == "onnx":
            runtime.update(
                file=getattr(self.predictor, "onnx_file", "model.onnx"),
                precision=getattr(self.predictor, "precision", rt.get("precision", "fp32")),
                opset=rt.get("opset"),
                sha256=self.meta["files"].get(getattr(self.predictor, "onnx_file", "model.onnx")),
            )
        else:
            runtime.update(file="model.safetensors", precision="fp32")
        mods = {}
        for m, info in self.modalities.items():
            accepts = (
                ["<column fields>"]
                if info.kind == "tabular"
                else ["array", *FILE_FIELDS.get(info.kind, ())]
            )
            mods[m] = {
                "kind": info.kind,
                "shape": list(info.shape),
                "accepts": accepts,
                "columns": list(info.columns) or None,
                "categories": info.categories or None,
            }
        return {
            "name": self.name,
            "task": self.task,
            "labels": self.labels,
            "positive": self.labels[1] if self.task == "binary" else None,  # [negative, positive]
            "modalities": mods,
            "threshold": dict(self.meta.get("threshold") or {"value": self.threshold}),
            "temperature": self.temperature,
            "runtime": runtime,
            "versions": self.versions,
            "max_batch": self.max_batch,
            "input_schema": self.instance_model.model_json_schema(),
        }
