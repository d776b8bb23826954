"""Fine-tuning that fits big models: frozen parameters (``train.freeze``) and LoRA adapters
(``train.peft``, through the ``peft`` library) on any branch.

Adapters are injected before training (so checkpoints and ``--resume`` carry them) and merged
into the base weights after it: the package holds a plain model with the architecture its spec
builds, so export, compression and serving need nothing of peft.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from medfuse.core.errors import SpecError
from medfuse.core.spec import Spec
from medfuse.models.composite import members

#: wrappers a parameter name may carry (DDP, an ensemble member) before the composite's own name
_WRAPPED = re.compile(r"^(module\.)?(members\.\d+\.)?")


def _own(name: str) -> str:
    return _WRAPPED.sub("", name)


def is_trainable(spec: Spec, name: str) -> bool:
    """Whether training may change parameter ``name`` (a composite's name, possibly wrapped)."""
    own = _own(name)
    if any(own == p or own.startswith(p.rstrip(".") + ".") for p in spec.train.freeze):
        return False
    peft = spec.train.peft
    if peft is not None and any(own.startswith(f"branches.{b}.") for b in peft.branches):
        return "lora_" in own
    return True


def _peft() -> Any:
    try:
        # lazy: peft (optional: its absence is handled here)
        import peft
    except Exception as err:  # missing, or a broken install of one of its imports
        raise SpecError(
            "train.peft", f"needs the peft library (pip install 'medfuse[pretrained]'): {err}"
        ) from None
    return peft


def apply_finetune(model: nn.Module, spec: Spec) -> dict[str, Any] | None:
    """Inject ``train.peft``'s adapters and check ``train.freeze``; the record for the package
    (trainable and total parameters), or None when neither is set."""
    t = spec.train
    if not t.freeze and t.peft is None:
        return None

    record: dict[str, Any] = {}
    if t.peft is not None:
        peft = _peft()
        for member in members(model):
            for b in t.peft.branches:
                branch = member.branches[b]
                targets = _targets(branch, t.peft.target_modules, b)
                config = peft.LoraConfig(
                    r=t.peft.r,
                    lora_alpha=t.peft.alpha,
                    lora_dropout=t.peft.dropout,
                    target_modules=targets,
                )
                peft.inject_adapter_in_model(config, branch)
        record["peft"] = t.peft.model_dump(mode="json")
    names = [n for n, _ in model.named_parameters()]
    for prefix in t.freeze:
        p = prefix.rstrip(".")
        if not any(_own(n) == p or _own(n).startswith(p + ".") for n in names):
            tops = sorted({".".join(_own(n).split(".")[:3]) for n in names})
            raise SpecError(
                "train.freeze", f"{prefix!r} names no parameter; parameters start with: {tops[:12]}"
            )
    if t.freeze:
        record["freeze"] = list(t.freeze)
    counted = [(n, p.numel()) for n, p in model.named_parameters() if "aux_heads." not in n]
    total = sum(k for _, k in counted)
    trainable = sum(k for n, k in counted if is_trainable(spec, n))
    record["parameters"] = {
        "trainable": trainable,
        "total": total,
        "trainable_fraction": round(trainable / max(total, 1), 6),
    }
    return record


def _targets(branch: nn.Module, suffixes: list[str] | None, modality: str) -> str:
    """A full-match pattern over the branch's Linear layers (those ending in ``suffixes``)."""
    linear = [n for n, m in branch.named_modules() if isinstance(m, nn.Linear)]
    if suffixes:
        linear = [n for n in linear if any(n == s or n.endswith("." + s) for s in suffixes)]
    if not linear:
        raise SpecError(
            "train.peft.target_modules",
            f"branch {modality!r} has no Linear layer {'named ' + str(suffixes) if suffixes else ''}"
            "to adapt",
        )
    return "^(" + "|".join(re.escape(n) for n in linear) + ")$"


def merge_finetune(model: nn.Module) -> nn.Module:
    """Merge every LoRA adapter into its base layer and put the base layer back in its place:
    the model's parameter names and shapes are those of the plain architecture again."""
    try:
        # lazy: peft (optional: its absence is handled here)
        from peft.tuners.lora import LoraLayer
    except Exception:
        return model
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model
