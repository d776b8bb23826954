"""Schemathesis hooks for the medfuse service (``SCHEMATHESIS_HOOKS=schemathesis_hooks``).

JSON Schema cannot say two things the input contract requires of a valid request, so a
generated POSITIVE request is completed before it is sent (negative ones are left alone):

- the lists of one level of an ``array`` payload have equal lengths (a ragged array is a 422):
  each level is cut to its shortest list;
- a base64 file field holds a file of its type (random base64 is no PNG): it is replaced by a
  real file of that type for that modality, from ``$MEDFUSE_ST_FILES`` (a JSON file
  ``{modality: {field: base64 | {"hea": ..., "dat": ...}}}``).

Every other constraint (which modalities, payload fields and categories, channel counts, value
bounds, batch sizes, explain targets) is in the schema itself, and the checks hold it to it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from schemathesis import GenerationMode

_FILES: dict[str, dict[str, Any]] = json.loads(
    open(os.environ["MEDFUSE_ST_FILES"]).read()  # noqa: SIM115 (read once, at import)
)


def _rectangular(x: Any) -> Any:
    """Nested lists cut, level by level, to the shortest list of that level."""
    shape: list[int] = []

    def walk(v: Any, depth: int) -> None:
        if isinstance(v, list):
            if len(shape) <= depth:
                shape.append(len(v))
            else:
                shape[depth] = min(shape[depth], len(v))
            for e in v:
                walk(e, depth + 1)

    def cut(v: Any, depth: int) -> Any:
        return [cut(e, depth + 1) for e in v[: shape[depth]]] if isinstance(v, list) else v

    walk(x, 0)
    return cut(x, 0)


def _complete(instance: Any) -> None:
    if not isinstance(instance, dict):
        return
    for m, payload in instance.items():
        if m not in _FILES or not isinstance(payload, dict):
            continue
        for field, value in payload.items():
            if value is None:
                continue
            if field == "array":
                payload[field] = _rectangular(value)
            elif field in _FILES[m]:
                payload[field] = _FILES[m][field]


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("instances"), list):
        for inst in body["instances"]:
            _complete(inst)
    return case


def _non_finite_refusal(response: Any) -> bool:
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(detail) and all("non-finite" in str(d.get("msg", "")) for d in detail)


@schemathesis.check
def positive_data_acceptance_except_non_finite_output(ctx: Any, response: Any, case: Any) -> Any:
    """``positive_data_acceptance``, except the one refusal of schema-valid data that the input
    contract makes and no schema can describe: finite values so far outside the training range
    that the model's output is not finite (a 422 that says so, naming the instance; a smaller
    out-of-range value is predicted and flagged). Run it instead of the built-in check."""
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    if response.status_code == 422 and _non_finite_refusal(response):
        return None
    return positive_data_acceptance(ctx, response, case)
