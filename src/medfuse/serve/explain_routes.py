"""``POST /v1/explain`` and the web page at ``/``: explanations over HTTP, for people and programs.

Installed into every ``create_app`` through the serve extension point (``EXTENSION_MODULES``).
The request is the same instance format as ``/v1/predict`` (decoded by the same ``Service``, so
a PNG or an .npy is fitted exactly as for prediction); the response has the prediction, the
explained class, the exact modality Shapley values, the per-modality maps as numbers, and the
pictures as base64 PNG data URIs.

Explanations need gradients, so they run on the package's PyTorch weights (a model loaded for
this route alone, whatever runtime serves ``/v1/predict``), one request at a time: captum's
hooks on a shared model must not see another request's forward pass.

The page (``static/index.html``, ``app.js``, ``style.css``: no external resource) builds its form
from ``GET /v1/model`` and calls ``/v1/explain``. ``/`` and ``/static`` need no token (they hold
no data); the API routes do, when the service has one.

No ``from __future__ import annotations`` here: FastAPI must see the request model built per
package at route definition time.
"""

import base64
import logging
import math
import re
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, create_model

from medfuse.core.decision import NONFINITE
from medfuse.core.errors import DataError, SpecError
from medfuse.explain.explainer import Explainer, explained_model, finite_or_none
from medfuse.serve.app import add_routes, extension
from medfuse.serve.schemas import ErrorDetail, Prediction
from medfuse.serve.service import InputError

log = logging.getLogger("medfuse.serve")

STATIC = Path(__file__).parent / "static"
#: explanations are heavy (gradients, 2**M coalitions): at most this many instances a request
MAX_EXPLAIN_BATCH = 4
MAX_STEPS = 128


def _json_int(v: Any) -> Any:
    """A JSON integer as JSON Schema has it: ``120`` and ``120.0``, never ``true`` or ``"120"``."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("Input should be a valid integer")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("Input should be a valid integer, without a fractional part")
        return int(v)
    return v


#: an integer as JSON Schema's ``"type": "integer"`` accepts it
JsonInt = Annotated[int, BeforeValidator(_json_int)]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExplainedClass(_Closed):
    label: str = Field(description="the class explained: binary = the positive label")
    index: int = Field(description="its output index (0 for a binary model's single logit)")
    probability: float
    logit: float


class Contributions(_Closed):
    """Exact Shapley values over modality presence; they sum to ``full - base``."""

    scale: str = Field(description="'probability' or 'logit' of the explained class")
    base: float = Field(description="the output with no modality present")
    full: float = Field(description="the output with the instance's modalities")
    values: dict[str, float] = Field(description="per modality; 0 for an absent one")


class Feature(_Closed):
    name: str
    value: float | None = Field(description="raw value (category code for text columns)")
    display: str
    missing: bool
    attribution: float


class MapExplanation(BaseModel):
    """Per-modality attribution. Grad-CAM: ``layer``, ``cam`` (layer resolution), ``upsampled``
    (input resolution). Integrated gradients: ``attribution`` (the input's shape) or
    ``features`` (tabular), ``delta`` (convergence error), ``total``."""

    model_config = ConfigDict(extra="allow")
    method: str = Field(description="'grad-cam' or 'integrated-gradients'")
    target_scale: str = Field(description="maps explain the logit of the explained class")
    features: list[Feature] | None = None


class Explanation(_Closed):
    prediction: Prediction
    explained: ExplainedClass
    contributions: Contributions
    contributions_logit: Contributions
    maps: dict[str, MapExplanation] = Field(description="per present modality")
    pictures: dict[str, str] = Field(
        description="PNG data URIs: one per present modality, and 'modalities' (the Shapley "
        "waterfall); empty when pictures=false"
    )


class ExplainResponse(_Closed):
    model: str
    runtime: str = Field(description="always 'torch': explanations need gradients")
    explained_model: dict[str, str] = Field(
        description="the model the attributions and the prediction here are of: its file and "
        "precision; for an INT8 package (whose /v1/predict runs model.onnx) a note that these "
        "are of its fp32 weights"
    )
    explanations: list[Explanation]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class _ExplainState:
    """The route's own PyTorch predictor, loaded on first use, and the lock serialising use."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        #: the package as the service read it at startup (its signature checked then, when
        #: the service requires one): the weights loaded later must be that package's
        self.meta = meta
        self.predictor: Any = None
        self.lock = threading.Lock()

    def get(self) -> Any:
        if self.predictor is None:
            try:
                # lazy: medfuse (optional: its absence is handled here)
                from medfuse.inference.predictor import load
            except ImportError as err:  # a torch-free (runtime-only) installation
                raise HTTPException(
                    status_code=501,
                    detail=f"explanations need PyTorch and captum ({err}); "
                    "install medfuse with its full dependencies",
                ) from None
            loaded = load(self.path, device="cpu")
            if loaded.meta != self.meta:
                # recalibrated, retrained or replaced since startup: explanations of another
                # model than /v1/predict answers with (and one no signature check has seen)
                changed = sorted(
                    k
                    for k in set(loaded.meta) | set(self.meta)
                    if loaded.meta.get(k) != self.meta.get(k)
                )
                raise HTTPException(
                    status_code=503,
                    detail=f"the package at {self.path} changed on disk since the service "
                    f"started ({', '.join(changed)} differ); explanations come only from the "
                    "model the service answers with: restart the service to serve the new one",
                )
            self.predictor = loaded
        return self.predictor


@extension("explain")
def install(app: FastAPI) -> None:
    """Add ``POST /v1/explain`` (token enforced), the page at ``/`` and ``/static``."""
    service = app.state.service
    state = _ExplainState(Path(service.path), service.meta)
    app.state.explain = state
    Instance = service.instance_model
    labels = list(service.labels)
    # what Explainer accepts: binary models are explained for their positive class (its name
    # or "1"); other tasks for any class, by name or index
    targets = (
        (labels[1], "1")
        if service.task == "binary"
        else (*labels, *(str(i) for i in range(len(labels))))
    )
    Target = Literal[targets]  # type: ignore[valid-type]
    ExplainRequest = create_model(
        "ExplainRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Instances to explain (the /v1/predict instance format).",
        instances=(
            list[Instance],  # type: ignore[valid-type]
            Field(min_length=1, max_length=MAX_EXPLAIN_BATCH),
        ),
        target=(
            Target | None,
            Field(
                default=None,
                description="class to explain (multiclass/multilabel; default: the predicted "
                "class); binary models are explained for their positive class",
            ),
        ),
        steps=(
            JsonInt,
            Field(default=32, ge=1, le=MAX_STEPS, description="integrated-gradients steps"),
        ),
        pictures=(StrictBool, Field(default=True, description="include the PNGs (base64)")),
    )
    router = APIRouter(tags=["explain"])

    @router.post(
        "/v1/explain",
        response_model=ExplainResponse,
        responses={
            **getattr(app.state, "error_responses", {}),
            501: {"model": ErrorDetail, "description": "PyTorch or captum is not installed"},
        },
    )
    def explain(body: ExplainRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        """Prediction, exact modality Shapley values, Grad-CAM / integrated-gradients maps and
        their pictures for each instance (at most 4). Runs on the PyTorch weights."""
        batch = service.inputs(body.instances)  # type: ignore[attr-defined]
        arrays, masks = batch.arrays, batch.masks

        with state.lock:
            pred = state.get()
            try:
                ex = Explainer(pred, steps=body.steps, target=body.target)  # type: ignore[attr-defined]
            except SpecError as err:
                msg = str(err).split("': ", 1)[-1]  # drop "spec error at '--target'"
                raise InputError(("body", "target"), msg) from None
            ids = [f"case {i + 1}" for i in range(len(body.instances))]  # type: ignore[attr-defined]
            try:
                res = ex.explain(arrays, masks, ids, pictures=body.pictures)  # type: ignore[attr-defined]
            except DataError as err:  # decide(): "rows 0, 2: the model produced a non-finite..."
                if NONFINITE not in str(err):
                    raise
                row = re.match(r"rows (\d+)", str(err))
                loc = ("body", "instances", int(row.group(1))) if row else ("body", "instances")
                raise InputError(loc, NONFINITE) from None

        out = []
        for i, (s, pics) in enumerate(zip(res.samples, res.pictures)):
            c = s["shapley"]
            checked = [s["explained"]["probability"], s["explained"]["logit"]]
            checked += [c[sc][k] for sc in c for k in ("base", "full")]
            checked += [v for sc in c for v in c[sc]["values"].values()]
            if not all(math.isfinite(v) for v in checked):
                raise InputError(("body", "instances", i), NONFINITE)
            e = s["explained"]
            out.append(
                {
                    "prediction": {
                        **s["prediction"],
                        "missing_values": list(batch.missing_values[i]),
                        "flags": list(batch.flags[i]),
                    },
                    "explained": {
                        "label": e["class"],
                        "index": e["index"],
                        "probability": e["probability"],
                        "logit": e["logit"],
                    },
                    "contributions": s["shapley"]["probability"],
                    "contributions_logit": s["shapley"]["logit"],
                    "maps": finite_or_none(s["maps"]),
                    "pictures": {k: _data_uri(v) for k, v in pics.items()},
                }
            )
        return {
            "model": service.name,
            "runtime": "torch",
            "explained_model": {k: str(v) for k, v in explained_model(pred).items()},
            "explanations": out,
        }

    add_routes(app, router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The web page: upload inputs, see the prediction and its explanations."""
        return FileResponse(STATIC / "index.html", media_type="text/html")
