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

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
    create_model,
    model_validator,
)

from medfuse.core.inputs import FLOAT32_MAX, Modality
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
            "base64 of a CSV signal: a header line, a time column (time or t in seconds, "
            "time_ms in milliseconds) and one column per lead; leads picked by name and resampled to the model's rate as in "
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
#: JSON Schema of a number the contract uses: within float32 (a larger one is infinite)
FLOAT32_SCHEMA = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{v!r} is not a number")
    return v


def _float32(v: float) -> float:
    # NaN and infinity (not JSON, but Python's parser reads them) are left to the contract,
    # which names them; a finite number beyond float32 would become infinite when read
    if math.isfinite(v) and abs(v) > FLOAT32_MAX:
        raise ValueError(f"{v:g} is beyond float32 (|x| <= {FLOAT32_MAX:.6g})")
    return v


#: a number (never a boolean or a string) within float32
Finite = Annotated[
    float,
    BeforeValidator(_number),
    AfterValidator(_float32),
    WithJsonSchema(FLOAT32_SCHEMA),
]
#: canonical base64 (what ``base64.b64decode(..., validate=True)`` decodes), not empty
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
_BASE64 = re.compile(BASE64_PATTERN)


def _base64(v: str) -> str:
    if not v:
        raise ValueError("empty file")
    if not _BASE64.fullmatch(v):
        raise ValueError("not valid base64 (the alphabet A-Z a-z 0-9 + /, padded with =)")
    return v


#: the base64 text of a file (its content is checked when it is read: a 422 naming the field)
Base64 = Annotated[
    str,
    AfterValidator(_base64),
    Field(json_schema_extra={"contentEncoding": "base64", "pattern": BASE64_PATTERN}),
]


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
    package: str = Field(
        description="the package's id (medfuse.core.package.package_id): its exact weights, "
        "threshold and temperature; another after medfuse calibrate"
    )
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
    scale: str | None = Field(
        default=None,
        description="what the training files were on where the modality does not fix it (an "
        "image's scale without a window, a signal's rate and leads without rate / leads); a file "
        "on another is refused",
    )
    columns: list[str] | None = None
    categories: dict[str, list[str]] | None = Field(
        default=None, description="tabular text columns and their allowed values"
    )


class ModelInfo(_Closed):
    name: str
    package: str = Field(description="the package's id, as each /v1/predict answer names it")
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

    hea: Base64 = Field(description="base64 of the header (.hea)")
    dat: Base64 = Field(description="base64 of the data file the header names (.dat)")


def _pascal(name: str) -> str:
    parts = re.split(r"[^0-9A-Za-z]+", name)
    out = "".join(p[:1].upper() + p[1:] for p in parts if p)
    return out if out and not out[0].isdigit() else f"M{out}"


#: an array element: validated in Rust (a request holds thousands); the contract refuses a
#: value beyond float32 (infinite once read), naming the array
ArrayNumber = Annotated[float, Strict(), WithJsonSchema(FLOAT32_SCHEMA)]


def _nested(depth: int) -> Any:
    t: Any = ArrayNumber
    for _ in range(depth):
        t = list[t]
    return t


def array_schema(m: Modality) -> dict[str, Any]:
    """JSON Schema of an ``array`` payload of ``m``, as the contract fits arrays: float32
    numbers; a sequence modality at its exact shape; a signal with the model's channels and
    any length >= 1 (centre-cropped / zero-padded); an image with any size >= 1 (resized) and
    the model's channels, or 1 (repeated), or 3 for a grey model (averaged). What JSON Schema
    cannot say: the lists of one level have equal lengths (a ragged array is a 422). The
    request model checks the nesting depth and the numbers; the contract checks the rest and
    names what is wrong."""

    def arr(items: dict[str, Any], lo: int, hi: int | None = None) -> dict[str, Any]:
        out = {"type": "array", "items": items, "minItems": lo}
        return out if hi is None else {**out, "maxItems": hi}

    item: dict[str, Any] = dict(FLOAT32_SCHEMA)
    if m.sequence:  # no fitting: the exact shape
        for n in reversed(m.shape):
            item = arr(item, n, n)
        return item
    for _ in range(len(m.shape) - 1):  # time / spatial axes: any length >= 1
        item = arr(item, 1)
    c = int(m.channels or 1)
    allowed = [c] if m.kind == "signal" else sorted({c, 1} | ({3} if c == 1 else set()))
    alts = [arr(item, n, n) for n in allowed]
    return alts[0] if len(alts) == 1 else {"anyOf": alts}


def _category_values(cats: list[str]) -> tuple[Any, ...]:
    """A categorical column's accepted values: its categories, and the integer each one that
    is an integer's text stands for (``1`` for ``"1"``, as a manifest cell is read)."""
    ints = [int(c) for c in cats if re.fullmatch(r"-?[0-9]+", c) and str(int(c)) == c]
    return (*cats, *ints)


def _present(m: Modality) -> dict[str, Any]:
    """JSON Schema: modality ``m`` is given with something usable (the contract refuses an
    instance with none: 422)."""
    if m.kind != "tabular":
        return {"required": [m.name], "properties": {m.name: {"type": "object"}}}
    cols = []
    for col in m.columns:
        cats = m.categories.get(col)
        value = {"enum": list(_category_values(cats))} if cats else {"type": "number"}
        cols.append({"required": [col], "properties": {col: value}})
    return {"required": [m.name], "properties": {m.name: {"type": "object", "anyOf": cols}}}


def modality_model(m: Modality, unseen_category: str = "error") -> type[BaseModel]:
    """The payload model of one modality (``unseen_category``: the package's policy for a
    category never seen in training: "error" refuses it, "flag" predicts it as missing)."""
    if m.kind == "tabular":
        fields: dict[str, Any] = {}
        for i, col in enumerate(m.columns):
            cats = m.categories.get(col)
            typ: Any = Finite
            desc = "a number"
            if cats and unseen_category != "flag":  # the contract refuses any other value
                values = list(_category_values(cats))
                typ = Annotated[Finite | str, WithJsonSchema({"enum": values})]
                desc = f"one of {cats}"
            elif cats:
                anything = {"anyOf": [FLOAT32_SCHEMA, {"type": "string"}]}
                typ = Annotated[Finite | str, WithJsonSchema(anything)]
                desc = f"one of {cats} (another value is flagged and used as missing)"
            fields[f"c{i}"] = (
                typ | None,
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
            Annotated[_nested(len(m.shape)), WithJsonSchema(array_schema(m))] | None,
            Field(
                default=None,
                description=f"raw values (finite float32), fitted to shape ({shape}); rows of "
                "one level must have equal lengths",
            ),
        )
    }
    formats = FILE_FORMATS.get(m.kind, {})
    for f in file_fields(m):
        if f == "wfdb":
            fields[f] = (WfdbRecord | None, Field(default=None, description=formats[f].doc))
            continue
        fields[f] = (
            Base64 | None,
            Field(default=None, description=formats[f].doc + "; resized/fitted to the modality"),
        )

    def _one(self: Any) -> Any:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            allowed = ", ".join(type(self).model_fields)
            raise ValueError(f"give exactly one of {allowed}; got {given or 'none'}")
        return self

    # the validator's rule for JSON Schema: exactly one field is given and not null
    one_of: Any = [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in fields]
    return create_model(
        f"{_pascal(m.name)}Input",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"oneOf": one_of}),
        __doc__=f"{m.kind.capitalize()} modality {m.name!r}: exactly one payload field.",
        __validators__={"exactly_one": model_validator(mode="after")(_one)},
        **fields,
    )


def request_models(
    modalities: dict[str, Modality], max_batch: int, unseen_category: str = "error"
) -> tuple[type[BaseModel], type[BaseModel]]:
    """``(Instance, PredictRequest)`` for a package's modalities. The instance's JSON Schema
    also says that at least one modality must be given (``anyOf``): the contract refuses an
    instance with none (422)."""
    fields: dict[str, Any] = {}
    for i, (name, m) in enumerate(modalities.items()):
        if m.kind == "text":
            fields[f"m{i}"] = (
                str | None,
                Field(
                    default=None,
                    alias=name,
                    max_length=1_000_000,
                    description=f"text (tokenized as in training, first {m.length} tokens); "
                    "null, absent or empty = missing",
                ),
            )
            continue
        fields[f"m{i}"] = (
            modality_model(m, unseen_category) | None,
            Field(default=None, alias=name, description=f"{m.kind}; null or absent = missing"),
        )
    present: Any = [_present(m) for m in modalities.values()]
    instance = create_model(
        "Instance",
        __config__=ConfigDict(
            extra="forbid", populate_by_name=False, json_schema_extra={"anyOf": present}
        ),
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
