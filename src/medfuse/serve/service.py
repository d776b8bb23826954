"""The runtime-agnostic service behind the HTTP app: decode instances, predict, describe.

``Service.inputs`` turns validated request instances into a ``Batch`` through the one input
contract (``medfuse.core.inputs``: files go through ``medfuse.core.readers``, so a PNG or DICOM is
windowed and resized as in training, and arrays are fitted as in the Python API);
``Service.predict`` runs the package's predictor (ONNX Runtime or PyTorch) and applies
calibration and threshold; values outside the training ranges are flagged. Bad content raises
``InputError`` with the location of the offending field, which the app turns into a 422.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.errors import DataError, MedfuseError, PackageError
from medfuse.core.inputs import Batch, Modality, Schema, Upload, modalities_from_meta
from medfuse.core.inputs import InputError as CoreInputError
from medfuse.core.package import package_id, read_meta, typed_meta, versions
from medfuse.core.readers.image_math import MAX_PIXELS, read_npy_bytes
from medfuse.serve.schemas import file_fields, request_models

log = logging.getLogger("medfuse.serve")
RUNTIMES = ("onnx", "torch")
SUFFIX = {"png": ".png", "dicom": ".dcm", "npy": ".npy", "csv": ".csv", "wfdb": ".hea"}


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
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.core.onnx import OnnxPredictor

        return OnnxPredictor(path, device=device, threads=threads)
    if runtime == "torch":
        try:
            # lazy: torch, optional: serve runs on ONNX Runtime without it
            import torch
        except ImportError:
            raise PackageError("the torch runtime needs PyTorch; use the onnx runtime") from None
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.inference.predictor import load

        if threads:
            torch.set_num_threads(int(threads))
        return load(path, device=device)
    raise MedfuseError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")


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
        self.package_id = package_id(self.meta)
        self.runtime = runtime
        self.predictor = load_predictor(self.path, runtime, device=device, threads=threads)
        self.modalities: dict[str, Modality] = modalities_from_meta(self.meta)
        self.max_batch = int(max_batch)
        self.max_pixels = int(max_pixels)
        unseen = Schema.from_meta(self.meta).unseen_category
        self.instance_model, self.request_model = request_models(
            self.modalities, self.max_batch, unseen
        )
        self.labels: list[str] = list(self.meta["labels"])
        self.task: str = str(self.meta["task"])
        typed = typed_meta(self.meta)  # read_meta checked the ranges: no default decides here
        self.threshold = typed.threshold.value
        self.temperature = typed.calibration.temperature
        self.name = str(self.meta.get("name", self.path.name))
        self.versions = {"package": self.meta.get("versions", {}), "serving": versions()}

    # ---- decoding ----------------------------------------------------------------------------

    def inputs(self, instances: list[Any]) -> Batch:
        """Validated instances (pydantic ``Instance`` objects or plain dicts keyed by modality)
        as a ``Batch``, through the one input contract (``medfuse.core.inputs.coerce``): files
        are read by the same readers as in training, arrays fitted to the modality's shape,
        tabular values by column name; any unusable content is an ``InputError`` (422)."""
        samples = []
        fields: dict[tuple[int, str], str] = {}  # the payload field of each file/array given
        for i, inst in enumerate(instances):
            data = inst.model_dump(by_alias=True) if hasattr(inst, "model_dump") else dict(inst)
            sample: dict[str, Any] = {}
            for m, value in data.items():
                info = self.modalities.get(m)
                if value is None or info is None or info.kind == "tabular":
                    sample[m] = value
                elif info.kind == "text":  # the text itself, never a path on this server
                    sample[m] = Upload(str(value).encode("utf-8"), ".txt")
                else:
                    sample[m] = self._payload(value, info, ("body", "instances", i, m))
                    fields[(i, m)] = next(k for k, v in value.items() if v is not None)
            samples.append(sample)
        try:
            return self.predictor.inputs(samples, on_bad_row="fail")
        except CoreInputError as err:
            loc = [v for v in err.loc if v is not None]
            if len(loc) == 2 and (loc[0], loc[1]) in fields:
                loc.append(fields[(loc[0], loc[1])])
            msg = err.msg.split(" (use on_bad_row=")[0]  # a request has no such option
            raise InputError(("body", "instances", *loc), msg) from None

    def decode(self, instances: list[Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Raw arrays ``{m: (N, *shape)}`` and masks ``{m: (N,)}`` (see ``inputs``)."""
        b = self.inputs(instances)
        return b.arrays, b.masks

    def _payload(self, value: dict[str, Any], info: Modality, loc: tuple[Any, ...]) -> Any:
        """An image/signal payload: the raw array, or the decoded bytes of a file (size checked
        before any decoding) for the contract's readers."""
        given = [k for k, v in value.items() if v is not None]
        if len(given) != 1:
            allowed = ", ".join(["array", *file_fields(info)])
            raise InputError(loc, f"give exactly one of {allowed}")
        field = given[0]
        loc = (*loc, field)
        if field == "array":
            try:
                # float64 first: a value beyond float32 must not round down to its maximum
                return np.asarray(value["array"], dtype=np.float64)
            except (ValueError, TypeError):
                raise InputError(
                    loc, "a ragged nested list; rows must have equal lengths"
                ) from None
        if field == "wfdb":
            return self._wfdb(value["wfdb"], loc)
        raw = self._file(value[field], loc)
        try:
            self._guard(raw, field)
        except DataError as err:
            raise InputError(loc, str(err)) from None
        return Upload(raw, SUFFIX[field])

    @staticmethod
    def _file(b64: str, loc: tuple[Any, ...]) -> bytes:
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(loc, "not valid base64") from None
        if not raw:
            raise InputError(loc, "empty file")
        return raw

    def _wfdb(self, rec: dict[str, str], loc: tuple[Any, ...]) -> Upload:
        """A WFDB record: the header, and the data file written under the name it gives."""
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.core.readers.medical import wfdb_record_files

        hea, dat = self._file(rec["hea"], (*loc, "hea")), self._file(rec["dat"], (*loc, "dat"))
        try:
            record, files = wfdb_record_files(hea)
        except DataError as err:
            raise InputError((*loc, "hea"), str(err)) from None
        if len(files) != 1 or files[0] == f"{record}.hea":
            raise InputError(
                (*loc, "hea"),
                f"the header names {len(files)} data files ({', '.join(files)}); upload a record "
                "whose signals are in one .dat file",
            )
        return Upload(hea, ".hea", name=f"{record}.hea", companions=((files[0], dat),))

    def _guard(self, raw: bytes, field: str) -> None:
        """Refuse oversized images before decoding them (decompression bombs)."""
        if field == "npy":
            read_npy_bytes(raw, max_elements=self.max_pixels * 4)
        elif field == "png":
            # lazy: Pillow, only when an image file is read
            from PIL import Image

            try:
                with Image.open(io.BytesIO(raw)) as im:
                    w, h = im.size
            except Exception as err:
                raise DataError(f"not a readable image ({type(err).__name__})") from None
            if w * h > self.max_pixels:
                raise DataError(f"image of {w}x{h} pixels exceeds the limit of {self.max_pixels}")
        elif field == "dicom":
            # lazy: pydicom (medfuse[medical]), only for DICOM
            import pydicom

            try:
                ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, force=True)
            except Exception as err:
                raise DataError(f"not a DICOM file ({type(err).__name__})") from None
            pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
            pixels *= int(ds.get("NumberOfFrames", 1) or 1)
            if pixels > self.max_pixels:
                raise DataError(f"DICOM of {pixels} pixels exceeds the limit of {self.max_pixels}")

    # ---- prediction --------------------------------------------------------------------------

    def predict(self, instances: list[Any]) -> list[dict[str, Any]]:
        """Decode and predict a batch; one result dict per instance. A non-finite result is an
        ``InputError`` naming the instance (422), never a label."""
        batch = self.inputs(instances)
        # decoding refused every bad row already: "missing" here only marks a non-finite
        # output (res.errors) so that the 422 can name its instance
        res = self.predictor.predict_batch(batch, batch_size=self.max_batch, on_bad_row="missing")
        bad = [i for i, e in enumerate(res.errors) if e]
        if bad:
            raise InputError(("body", "instances", bad[0]), res.errors[bad[0]])
        p = res.proba
        out = []
        for i, label in enumerate(res.labels):
            if self.task == "binary":
                probs = {self.labels[0]: float(1.0 - p[i]), self.labels[1]: float(p[i])}
            else:
                probs = {lab: float(v) for lab, v in zip(self.labels, p[i])}
            out.append(
                {
                    "probabilities": probs,
                    "label": label,
                    "threshold": None if self.task == "multiclass" else self.threshold,
                    "missing": [m for m in self.modalities if batch.masks[m][i] == 0],
                    "missing_values": list(batch.missing_values[i]),
                    "flags": list(batch.flags[i]),
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
            files = file_fields(info)
            mods[m] = {
                "kind": info.kind,
                "shape": list(info.shape),
                "accepts": ["<column fields>"] if info.kind == "tabular" else ["array", *files],
                "files": {k: list(v) for k, v in files.items()} or None,
                "leads": list(info.leads) if info.leads else None,
                "rate": float(info.rate) if info.rate else None,
                # what files must be on where the modality does not fix it (data.scales: an
                # image's scale without a window, a signal's rate and leads without them)
                "scale": info.scale,
                "columns": list(info.columns) or None,
                "categories": info.categories or None,
            }
        return {
            "name": self.name,
            "package": self.package_id,
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
