"""``torch.export`` programs (``model.pt2``): the composite's own call convention, dynamic batch.

The program takes the same arguments as ``CompositeModel.forward``: ``(inputs, masks)``, two dicts
keyed by modality, ``inputs[m]`` of shape ``(B, *shape_m)`` (normalised) and ``masks[m]`` ``(B,)``;
it returns ``logits`` ``(B, K)``. Load it with ``torch.export.load(path).module()``: no medfuse
code or spec is needed to run it, only PyTorch.

**A ``.pt2`` archive is code.** ``torch.export.load`` (torch 2.13) unpickles its sample inputs
(``weights_only=True``, then a silent ``weights_only=False`` fallback), any ``use_pickle`` weight
or constant and any custom or opaque object; it resolves graph call targets by attribute lookup
from ``torch`` (``torch.os.system`` resolves) and parses symbolic shapes with ``sympy.sympify``
(``eval``). No inspection of the zip members makes that safe, so medfuse loads ``model.pt2`` only
when the caller trusts it: the program was produced in this process, or the package's signature
verified against a key or identity the user gave (``medfuse verify PKG --key public.pem``).
Even then an archive with pickled weights/constants, custom objects or AOTInductor code is
refused. Without that trust, ``load_pt2`` raises PackageError before torch reads a byte.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medfuse.core.errors import MedfuseError, PackageError


def export_pt2_bytes(
    model: nn.Module, spec: Any, example: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
) -> bytes:
    """Serialise ``model`` (eval mode, CPU) with ``torch.export`` and a dynamic batch axis.

    ``example`` is ``(inputs, masks)`` with a batch of at least 2 (sizes 0 and 1 specialise).
    """
    mods = list(spec.modalities)
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1)
    dynamic = {"inputs": {m: {0: batch} for m in mods}, "masks": {m: {0: batch} for m in mods}}
    inputs, masks = example
    args = ({m: inputs[m].cpu() for m in mods}, {m: masks[m].cpu() for m in mods})
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, args, dynamic_shapes=dynamic)
    except Exception as err:
        raise MedfuseError(
            f"torch.export could not export this model with a dynamic batch axis "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "use --format onnx"
        ) from err
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def pickled_members(data: bytes) -> list[str]:
    """The members of a ``.pt2`` archive that ``torch.export.load`` would unpickle or execute
    beyond what ``torch.export.save`` of a plain model writes (pickled weights or constants,
    custom/opaque objects, AOTInductor libraries, legacy ``.pt`` payloads)."""
    bad: list[str] = []
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return ["(not a zip archive)"]
    with zf:
        for name in zf.namelist():
            low = name.lower()
            if "/data/sample_inputs/" in low:
                # always pickled by torch.export.save; torch loads it with weights_only=True and
                # silently retries with weights_only=False: refuse it unless the safe load works
                try:
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                except Exception:
                    bad.append(f"{name} (needs full unpickling)")
            elif (
                "/aotinductor/" in low
                or low.endswith((".so", ".pt", ".pkl", ".pickle"))
                or "/custom_objects/" in low
                or "/constants/custom_obj" in low
                or "/constants/opaque" in low
            ):
                bad.append(name)
            elif low.endswith("_config.json") and ("/weights/" in low or "/constants/" in low):
                try:
                    config = json.loads(zf.read(name)).get("config", {})
                except (ValueError, AttributeError):
                    bad.append(f"{name} (unreadable)")
                    continue
                bad += [f"{name}: {k}" for k, v in config.items() if v.get("use_pickle")]
    return bad


def load_pt2(
    path: str | Path, device: str | torch.device = "cpu", *, trusted: bool = False
) -> nn.Module:
    """The exported program as a callable module ``(inputs, masks) -> logits`` on ``device``.

    ``trusted`` must be True (the package's signature verified, or the program was produced here):
    see the module's note. An archive with pickled payloads is refused even then."""
    path = Path(path)
    if not trusted:
        raise PackageError(
            f"{path}: refusing to load a torch.export program from a package whose signature "
            "was not verified: torch.export.load unpickles parts of the archive and evaluates "
            "expressions from it, so a crafted model.pt2 runs code. Check the signature "
            "(medfuse verify PKG --key public.pem --runtime pt2) or use the ONNX model "
            "(model.onnx carries no code)"
        )
    data = path.read_bytes()
    bad = pickled_members(data)
    if bad:
        raise PackageError(
            f"{path}: the archive carries pickled or compiled members ({', '.join(bad[:5])}); "
            "medfuse never unpickles a package file, even a signed one"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.load(io.BytesIO(data)).module()
    return module.to(device)
