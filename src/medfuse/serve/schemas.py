"""Request and response models of the HTTP service (they make the OpenAPI schema meaningful).

The request models are built per package: one optional field per modality (named as in the
spec), an image or signal modality takes ``{"array": ...}`` (raw values, fitted to the modality's
shape) or one file: base64 ``png``, ``dicom`` or ``npy`` for an image; base64 ``npy`` or ``csv``,
or a WFDB record ``{"hea": ..., "dat": ...}`` for a signal. Only the formats this installation
can read are offered (``file_fields``: DICOM needs pydicom, WFDB needs wfdb, resampling a CSV
needs scipy); ``GET /v1/model`` lists them per modality with their file suffixes. A tabular
modality takes an object with one field per column. Unknown fields are schema errors (422) that
name the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, create_model, model_validator

from medfuse.core.inputs import Modality
from medfuse.core.optional import installed


@dataclass(frozen=True)
class FileFormat:
    """A file payload field: the file suffixes it carries, what it is, the modules reading it."""

    suffixes: tuple[str, ...]
    doc: str
    needs: tuple[str, ...] = ()


#: file payload fields per modality kind, besides "array"
FILE_FORMATS: dict[str, dict[str, FileFormat]] = {
    "image": {
        "png": FileFormat(
            (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"),
            "base64 of an image file Pillow reads (PNG, JPEG, BMP, TIFF)",
        ),
        "dicom": FileFormat((".dcm", ".dicom"), "base64 of a DICOM file", ("pydicom",)),
        "npy": FileFormat((".npy",), "base64 of a NumPy .npy file (numeric)"),
    },
    "signal": {
        "npy": FileFormat(
            (".npy",),
            "base64 of a NumPy .npy file, (T,) or (C, T): no lead names and no rate, so its rows "
            "are the model's leads in the model's order, sampled at the model's rate",
        ),
        "csv": FileFormat(
            (".csv",),
            "base64 of a CSV signal: a header line, a time (or t) column in seconds and one "
            "column per lead; leads picked by name and resampled to the model's rate as in "
            "training",
        ),
        "wfdb": FileFormat(
            (".hea", ".dat"),
            "a WFDB record: the header and the one data file it names; leads picked by name, "
            "physical units (mV), resampled to the model's rate as in training",
            ("wfdb",),
        ),
    },
}


def file_fields(m: Modality) -> dict[str, tuple[str, ...]]:
    """The file payload fields this installation can read for ``m``, with their suffixes."""
    out: dict[str, tuple[str, ...]] = {}
    for name, f in FILE_FORMATS.get(m.kind, {}).items():
        needs = list(f.needs)
        if m.kind == "signal" and m.rate and name in ("csv", "wfdb"):
            needs.append("scipy")  # resampling to the model's rate
        if all(installed(n) for n in needs):
            out[name] = f.suffixes
    return out


#: a JSON number: ints and floats, never a boolean (``true`` is not 1.0 in a medical input)
Number = Annotated[float, Strict()]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Prediction(_Closed):
    """One instance's result."""

    probabilities: dict[str, float] = Field(
        description="per label: binary and multiclass sum to 1; multilabel are independent"
    )
    label: str | list[str] = Field(description="the decision (a list of labels for multilabel)")
    threshold: float | None = Field(
        description="decision threshold on P(positive) (binary) or on each label (multilabel); "
        "null for multiclass (argmax)"
    )
    missing: list[str] = Field(description="modalities absent from this instance")
    missing_values: list[str] = Field(
        default_factory=list,
        description="tabular columns without a value (null or absent): each a missing value, "
        "as in training",
    )
    flags: list[str] = Field(
        default_factory=list,
        description="inputs outside the ranges seen in training (values, intensity scale) or "
        "categorical values never seen (with data.unseen_category: flag); check before use",
    )


class PredictResponse(_Closed):
    model: str
    runtime: str = Field(description="onnx or torch")
    predictions: list[Prediction]


class Health(_Closed):
    status: str = Field(description="'ok' when the model is loaded and answering")
    model: str
    runtime: str


class ModalityDescription(_Closed):
    kind: str
    shape: list[int] = Field(description="shape of one sample (no batch axis)")
    accepts: list[str] = Field(description="payload fields accepted for this modality")
    files: dict[str, list[str]] | None = Field(
        default=None,
        description="per file payload field, the file suffixes it carries (wfdb: a .hea and "
        "the .dat it names)",
    )
    leads: list[str] | None = Field(
        default=None, description="signal: the leads the model reads, in order"
    )
    rate: float | None = Field(default=None, description="signal: the model's sampling rate, Hz")
    columns: list[str] | None = None
    categories: dict[str, list[str]] | None = Field(
        default=None, description="tabular text columns and their allowed values"
    )


class ModelInfo(_Closed):
    name: str
    task: str
    labels: list[str]
    positive: str | None = Field(
        default=None, description="binary: the class whose probability is predicted (labels[1])"
    )
    modalities: dict[str, ModalityDescription]
    threshold: dict[str, Any]
    temperature: float
    runtime: dict[str, Any]
    versions: dict[str, Any] = Field(description="'package': training stack; 'serving': this one")
    max_batch: int
    input_schema: dict[str, Any] = Field(description="JSON schema of one instance")


class ErrorDetail(_Closed):
    detail: Any


class WfdbRecord(_Closed):
    """A WFDB record: its header and the one data file the header names."""

    hea: str = Field(
        description="base64 of the header (.hea)", json_schema_extra={"contentEncoding": "base64"}
    )
    dat: str = Field(
        description="base64 of the data file the header names (.dat)",
        json_schema_extra={"contentEncoding": "base64"},
    )


def _pascal(name: str) -> str:
    parts = re.split(r"[^0-9A-Za-z]+", name)
    out = "".join(p[:1].upper() + p[1:] for p in parts if p)
    return out if out and not out[0].isdigit() else f"M{out}"


def _nested(depth: int) -> Any:
    t: Any = Number
    for _ in range(depth):
        t = list[t]
    return t


def modality_model(m: Modality) -> type[BaseModel]:
    """The payload model of one modality."""
    if m.kind == "tabular":
        fields: dict[str, Any] = {}
        for i, col in enumerate(m.columns):
            cats = m.categories.get(col)
            desc = f"one of {cats}" if cats else "a number"
            fields[f"c{i}"] = (
                Number | str | None,
                Field(default=None, alias=col, description=f"{desc}; null or absent = missing"),
            )
        return create_model(
            f"{_pascal(m.name)}Columns",
            __config__=ConfigDict(extra="forbid", populate_by_name=False),
            __doc__=f"Tabular modality {m.name!r}: one field per column.",
            **fields,
        )
    shape = ", ".join(map(str, m.shape))
    fields = {
        "array": (
            _nested(len(m.shape)) | None,
            Field(default=None, description=f"raw values (finite), shape ({shape})"),
        )
    }
    formats = FILE_FORMATS.get(m.kind, {})
    for f in file_fields(m):
        if f == "wfdb":
            fields[f] = (WfdbRecord | None, Field(default=None, description=formats[f].doc))
            continue
        fields[f] = (
            str | None,
            Field(
                default=None,
                description=formats[f].doc + "; resized/fitted to the modality",
                json_schema_extra={"contentEncoding": "base64"},
            ),
        )

    def _one(self: Any) -> Any:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            allowed = ", ".join(type(self).model_fields)
            raise ValueError(f"give exactly one of {allowed}; got {given or 'none'}")
        return self

    return create_model(
        f"{_pascal(m.name)}Input",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"{m.kind.capitalize()} modality {m.name!r}: exactly one payload field.",
        __validators__={"exactly_one": model_validator(mode="after")(_one)},
        **fields,
    )


def request_models(
    modalities: dict[str, Modality], max_batch: int
) -> tuple[type[BaseModel], type[BaseModel]]:
    """``(Instance, PredictRequest)`` for a package's modalities."""
    fields: dict[str, Any] = {}
    for i, (name, m) in enumerate(modalities.items()):
        fields[f"m{i}"] = (
            modality_model(m) | None,
            Field(default=None, alias=name, description=f"{m.kind}; null or absent = missing"),
        )
    instance = create_model(
        "Instance",
        __config__=ConfigDict(extra="forbid", populate_by_name=False),
        __doc__="One case: any subset of the modalities (missing ones are allowed).",
        **fields,
    )
    request = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__="A batch of instances, predicted together.",
        instances=(list[instance], Field(min_length=1, max_length=max_batch)),  # type: ignore[valid-type]
    )
    return instance, request
