"""Start a model from another package's weights (``train.init``): e.g. an image branch trained on a
large dataset reused for a small one, or an ECG encoder trained on PTB-XL reused for MIT-BIH."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medfuse.core.errors import PackageError, SpecError
from medfuse.core.package import WEIGHTS
from medfuse.inference.package import load_package

if TYPE_CHECKING:
    from medfuse.core.spec import InitSpec, Spec

#: what a modality's inputs mean, element by element: a branch copied across a difference in
#: these multiplies one input by the weights learned for another
INPUT_MEANING = ("kind", "columns", "leads", "channels", "sequence")

#: the init record, kept in the training work directory so that ``--resume`` needs only the
#: checkpoint, not the source package
INIT_RECORD = "init.json"


def _check_inputs(
    s_prefix: str,
    d_prefix: str,
    src: Spec,
    dst: Spec | None,
    where: str,
    codes: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
) -> None:
    """A branch's weights copied from ``src`` (``branches.<m>``) must read inputs that mean the
    same here: the same kind, tabular columns in the same order, the same leads in the same
    order, channels and sequence (another image size or window is a legitimate transfer), and
    ``codes`` given (the source's and this run's text categories per modality and column), the
    same code for the same text value."""
    parts_s, parts_d = s_prefix.split("."), d_prefix.split(".")
    if dst is None:
        return
    if parts_s[0] != "branches" or parts_d[0] != "branches":
        # the head, fusion and auxiliary heads read the branches' features in the modalities'
        # order and answer in the labels' order: both must be the same here
        order_s, order_d = list(src.modalities), list(dst.modalities)
        labels_s, labels_d = list(src.task.labels or []), list(dst.task.labels or [])
        if order_s != order_d or (labels_s and labels_d and labels_s != labels_d):
            raise SpecError(
                f"train.init.modules.{s_prefix}",
                f"{where} reads its modalities in the order {order_s} and answers labels "
                f"{labels_s}; here {order_d} and {labels_d}: the copied weights would read one "
                "modality's features, or answer one label, as another's. List the modalities "
                "(and labels) in the source's order, or copy the branches only",
            )
        return
    if len(parts_s) >= 2 and len(parts_d) >= 2:  # one branch, maybe into another's place
        pairs = [(parts_s[1], parts_d[1])]
    else:  # every branch: each into its namesake
        pairs = [(m, m) for m in src.modalities if m in dst.modalities]
    differ = [
        f"{m}.{f}: {getattr(ms, f)!r} there, {getattr(md, f)!r} here"
        for m, n in pairs
        if (ms := src.modalities.get(m)) is not None and (md := dst.modalities.get(n)) is not None
        for f in INPUT_MEANING
        if getattr(ms, f, None) != getattr(md, f, None)
    ]
    if codes is not None:
        differ += [
            f"{m}.{col}: coded {there!r} there, {here!r} here"
            for m, n in pairs
            for col in sorted(set(codes[0].get(m) or {}) | set(codes[1].get(n) or {}))
            if _coded_otherwise(
                there := (codes[0].get(m) or {}).get(col, "as a number"),
                here := (codes[1].get(n) or {}).get(col, "as a number"),
            )
        ]
    if differ:
        raise SpecError(
            f"train.init.modules.{s_prefix}",
            f"its inputs in {where} mean something else than here ({'; '.join(differ)}): the "
            "copied weights would read one input as another. Give the modality the source's "
            "columns / leads in its order (text values written as there), or start that branch "
            "from scratch",
        )


def _coded_otherwise(there: Any, here: Any) -> bool:
    """Whether a text column's codes mean something else here: read as a number on one side
    and as text on the other, or a value both know under another code (``M`` 1 there, 0
    here). A value one side lacks (a site without the rare ``U``) changes no shared code."""
    if isinstance(there, str) or isinstance(here, str):
        return there != here
    pos = {v: i for i, v in enumerate(there)}
    return any(pos[v] != i for i, v in enumerate(here) if v in pos) or not set(there) & set(here)


def init_from_package(
    model: torch.nn.Module,
    init: InitSpec,
    spec: Spec | None = None,
    categories: Mapping[str, Mapping[str, list[str]]] | None = None,
) -> dict[str, Any]:
    """Copy the tensors under ``init.modules`` (source prefix -> target prefix) from the package.

    The source package is verified as for prediction (checksums, strict load). Every copied tensor
    must exist in the target with the same shape; a prefix that matches nothing is an error. The
    returned record (package, its weights' sha256, prefixes, tensor count) goes into the package.
    ``categories``: this run's text categories (modality -> column -> values in code order); a
    branch is not copied across columns coded otherwise (``M`` as 0 there and 1 here).
    """

    try:
        src_pkg = load_package(init.package)
    except (PackageError, FileNotFoundError, OSError) as err:
        raise SpecError("train.init.package", f"cannot load {init.package}: {err}") from None
    src = src_pkg.model.state_dict()
    dst = model.state_dict()
    codes = None
    if categories is not None:
        pre = src_pkg.meta.get("preprocessing") or {}
        codes = ({m: (st or {}).get("categories") or {} for m, st in pre.items()}, categories)
    copied = 0
    for s_prefix, d_prefix in init.modules.items():
        _check_inputs(s_prefix, d_prefix, src_pkg.spec, spec, str(init.package), codes)
        keys = [k for k in src if k == s_prefix or k.startswith(s_prefix + ".")]
        if not keys:
            tops = sorted({".".join(k.split(".")[:2]) for k in src})
            raise SpecError(
                f"train.init.modules.{s_prefix}",
                f"no weights under '{s_prefix}' in {init.package}; it has: {', '.join(tops)}",
            )
        for k in keys:
            t = d_prefix + k[len(s_prefix) :]
            if t not in dst:
                raise SpecError(
                    f"train.init.modules.{s_prefix}",
                    f"'{k}' from {init.package} has no counterpart '{t}' in this model "
                    "(the branch types or their settings differ)",
                )
            if dst[t].shape != src[k].shape:
                raise SpecError(
                    f"train.init.modules.{s_prefix}",
                    f"'{t}' has shape {tuple(dst[t].shape)} here but {tuple(src[k].shape)} in "
                    f"{init.package} (the branch settings differ)",
                )
            with torch.no_grad():
                dst[t].copy_(src[k].to(dst[t].device))
            copied += 1
    return {
        "package": str(Path(init.package)),
        "weights_sha256": src_pkg.meta["files"][WEIGHTS],  # load_package requires it
        "modules": dict(init.modules),
        "tensors": copied,
    }
