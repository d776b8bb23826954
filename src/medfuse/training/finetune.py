"""Fine-tuning that fits big models: frozen parameters (``train.freeze``), LoRA or IA3 adapters
(``train.peft``, through the ``peft`` library) on any branch, layer-wise learning-rate decay
(``train.layer_decay``) and gradient checkpointing (``train.grad_checkpointing``) for pretrained
branches.

Adapters are injected before training (so checkpoints and ``--resume`` carry them) and merged
into the base weights after it: the package holds a plain model with the architecture its spec
builds, so export, compression and serving need nothing of peft. ``train.peft.store: adapter``
keeps the adapter weights too (:func:`adapter_state`), for users who apply them to the base
weights themselves.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from medfuse.core.errors import SpecError
from medfuse.core.spec import PeftSpec, Spec
from medfuse.models.composite import members

#: the part of a parameter name that marks an adapter weight, by ``train.peft.method``
ADAPTER_MARK = {"lora": "lora_", "ia3": "ia3_l"}
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
        return ADAPTER_MARK[peft.method] in own
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
    """Inject ``train.peft``'s adapters, check ``train.freeze`` and ``train.layer_decay``, turn
    on ``train.grad_checkpointing``; the record for the package (trainable and total
    parameters), or None when none of them is set."""
    t = spec.train
    if not t.freeze and t.peft is None and t.layer_decay is None and not t.grad_checkpointing:
        return None

    record: dict[str, Any] = {}
    if t.peft is not None:
        peft = _peft()
        for member in members(model):
            for b in t.peft.branches:
                branch = member.branches[b]
                peft.inject_adapter_in_model(_peft_config(peft, t.peft, branch, b), branch)
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
    if t.layer_decay is not None:
        _pretrained(model, "train.layer_decay")  # an error when there is nothing to decay
        record["layer_decay"] = t.layer_decay
    if t.grad_checkpointing:
        record["grad_checkpointing"] = set_grad_checkpointing(model, True)
    counted = [(n, p.numel()) for n, p in model.named_parameters() if "aux_heads." not in n]
    total = sum(k for _, k in counted)
    trainable = sum(k for n, k in counted if is_trainable(spec, n))
    record["parameters"] = {
        "trainable": trainable,
        "total": total,
        "trainable_fraction": round(trainable / max(total, 1), 6),
    }
    return record


def _peft_config(peft: Any, p: PeftSpec, branch: nn.Module, modality: str) -> Any:
    """The peft config of ``train.peft`` for one branch (its target Linear layers by name)."""
    targets = _targets(branch, p.target_modules, modality)
    if p.method == "ia3":
        ff = None
        if p.feedforward_modules:
            ff = _targets(branch, p.feedforward_modules, modality, "feedforward_modules")
        return peft.IA3Config(target_modules=targets, feedforward_modules=ff)
    assert p.r is not None and p.alpha is not None and p.dropout is not None  # lora's defaults
    return peft.LoraConfig(
        r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=targets
    )


def _targets(
    branch: nn.Module, suffixes: list[str] | None, modality: str, field: str = "target_modules"
) -> str:
    """A full-match pattern over the branch's Linear layers (those ending in ``suffixes``)."""
    linear = [n for n, m in branch.named_modules() if isinstance(m, nn.Linear)]
    if suffixes:
        linear = [n for n in linear if any(n == s or n.endswith("." + s) for s in suffixes)]
    if not linear:
        named = f"named {suffixes} " if suffixes else ""
        raise SpecError(
            f"train.peft.{field}", f"branch {modality!r} has no Linear layer {named}to adapt"
        )
    return "^(" + "|".join(re.escape(n) for n in linear) + ")$"


def merge_finetune(model: nn.Module) -> nn.Module:
    """Merge every adapter (LoRA, IA3) into its base layer and put the base layer back in its
    place, and turn gradient checkpointing off: the model's parameter names and shapes are
    those of the plain architecture again."""
    set_grad_checkpointing(model, False, strict=False)
    try:
        # lazy: peft (optional: its absence is handled here)
        from peft.tuners.tuners_utils import BaseTunerLayer
    except Exception:
        return model
    for name, module in list(model.named_modules()):
        if not isinstance(module, BaseTunerLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model


def adapter_state(model: nn.Module, spec: Spec) -> dict[str, torch.Tensor]:
    """The adapter weights of a model with ``train.peft``'s adapters in (before the merge), by
    their parameter names (``branches.image.encoder.blocks.0.attn.qkv.lora_A.default.weight``):
    what ``train.peft.store: adapter`` keeps in the package."""
    peft = spec.train.peft
    if peft is None:
        return {}
    mark = ADAPTER_MARK[peft.method]
    return {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if mark in _own(n)
    }


# ---- pretrained branches: layer-wise lr decay, gradient checkpointing ------------------------


def _pretrained(model: nn.Module, field: str) -> dict[str, Any]:
    """The encoders of the pretrained branches (timm, torchvision, hf) by modality; a SpecError
    naming ``field`` when there is none (the option would do nothing)."""
    found: dict[str, Any] = {
        m: b.encoder
        for m, b in members(model)[0].branches.items()
        if getattr(b, "pretrained_record", None) is not None and hasattr(b, "encoder")
    }
    if not found:
        raise SpecError(
            field,
            "applies to pretrained branches (type timm, torchvision or hf) and this model has "
            f"none (branches: {', '.join(members(model)[0].branches)})",
        )
    return found


def set_grad_checkpointing(model: nn.Module, enable: bool, *, strict: bool = True) -> list[str]:
    """Turn activation checkpointing on (or off) in every pretrained branch's encoder: timm's
    ``set_grad_checkpointing``, Hugging Face's ``gradient_checkpointing_enable`` (non-reentrant,
    so frozen inputs still give adapters their gradients). The modalities it was set for; with
    ``strict``, a SpecError for an encoder that supports neither."""
    if not strict and not any(
        getattr(b, "pretrained_record", None) is not None
        for m in members(model)
        for b in m.branches.values()
    ):
        return []
    done = []
    for member in members(model):
        for modality, enc in _pretrained(member, "train.grad_checkpointing").items():
            if hasattr(enc, "set_grad_checkpointing"):  # timm
                try:
                    enc.set_grad_checkpointing(enable)
                except (AssertionError, NotImplementedError) as err:
                    if strict and enable:
                        raise _no_checkpointing(modality, enc, err) from None
                    continue
            elif getattr(enc, "supports_gradient_checkpointing", False):  # Hugging Face
                _hf_checkpointing(enc, enable)
            elif strict and enable:
                raise _no_checkpointing(modality, enc, None)
            else:
                continue
            if modality not in done:
                done.append(modality)
    return done


def _hf_checkpointing(enc: Any, enable: bool) -> None:
    """transformers 5's ``activation_checkpointing_*``, else (before 5) ``gradient_...``."""
    new = hasattr(enc, "activation_checkpointing_enable")
    if enable:
        kwargs = {"use_reentrant": False}
        if new:
            enc.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif new:
        enc.activation_checkpointing_disable()
    else:
        enc.gradient_checkpointing_disable()


def _no_checkpointing(modality: str, enc: nn.Module, err: BaseException | None) -> SpecError:
    why = f" ({err})" if err is not None and str(err) else ""
    return SpecError(
        "train.grad_checkpointing",
        f"branch {modality!r} ({type(enc).__name__}) supports no gradient checkpointing{why}: "
        "timm models with set_grad_checkpointing and Hugging Face models with "
        "supports_gradient_checkpointing do; set it false, or use such a model",
    )


def layer_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """The learning-rate scale of each parameter of the pretrained branches' encoders (by its
    name in ``model``: a composite, or an ensemble of them) under
    layer-wise decay: ``decay ** (last - layer)``, the encoder's last layer at 1. Layers are
    timm's own grouping (``group_matcher``: a ViT's embeddings, ``blocks.N``, final norm), a
    Hugging Face encoder's ``layers.N`` (``encoder.layer.N`` before transformers 5; the
    embeddings below them, the final norm and pooler above), else the
    encoder's top-level children in order (a Sequential or ModuleList counted by its children;
    parameters held by the encoder itself go with the first). Parameters outside these encoders
    (fusion, head, other branches) are not listed: they train at the full lr."""
    scales: dict[str, float] = {}
    for member_name, member in _named_members(model):
        for modality, enc in _pretrained(member, "train.layer_decay").items():
            layers = _layer_ids(enc)
            last = max(layers.values(), default=0)
            prefix = f"{member_name}branches.{modality}.encoder."
            for n, _ in enc.named_parameters():
                scales[prefix + n] = decay ** (last - layers.get(_base_name(n), last))
    return scales


def _named_members(model: nn.Module) -> list[tuple[str, nn.Module]]:
    ms = members(model)
    return [("", ms[0])] if ms[0] is model else [(f"members.{i}.", m) for i, m in enumerate(ms)]


_ADAPTER_PART = re.compile(r"\.(base_layer|lora_[A-Za-z_]+\.\w+|ia3_l)(?=\.|$)")


def _base_name(name: str) -> str:
    """A parameter's name in the plain architecture (an adapter's goes with its base layer)."""
    return _ADAPTER_PART.sub("", name)


def _layer_ids(enc: Any) -> dict[str, int]:
    """Parameter name (of the plain architecture) -> layer index, from input to output."""
    plain = [_base_name(n) for n, _ in enc.named_parameters()]
    if hasattr(enc, "group_matcher"):  # timm
        # lazy: timm (optional, present whenever a timm encoder is)
        from timm.models import group_parameters

        by_timm = group_parameters(enc, enc.group_matcher(coarse=False), reverse=True)
        return {n: int(by_timm.get(n, max(by_timm.values(), default=0))) for n in plain}
    hf = [re.search(r"(?:^|\.)layers?\.(\d+)\.", n) for n in plain]
    if any(hf):
        depth = max(int(m.group(1)) for m in hf if m) + 1
        ids, seen_block = {}, False
        for n, m in zip(plain, hf, strict=True):
            seen_block = seen_block or m is not None
            ids[n] = int(m.group(1)) + 1 if m else (depth + 1 if seen_block else 0)
        return ids
    unit_of: dict[str, int] = {}
    unit = 0
    for child_name, child in enc.named_children():
        parts = (
            [(f"{child_name}.{k}", c) for k, c in child.named_children()]
            if isinstance(child, nn.Sequential | nn.ModuleList)
            else [(child_name, child)]
        )
        for part_name, part in parts:
            names = [f"{part_name}.{_base_name(n)}" for n, _ in part.named_parameters()]
            if names:
                unit_of.update(dict.fromkeys(names, unit))
                unit += 1
    return {n: unit_of.get(n, 0) for n in plain}


def param_groups(
    model: nn.Module, spec: Spec, params: list[nn.Parameter], lr: float
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``params`` (the parameters a stage trains): one group at
    ``lr`` without ``train.layer_decay``; with it, one group per learning rate, the encoder
    layers of pretrained branches scaled by :func:`layer_scales`."""
    if spec.train.layer_decay is None:
        return [{"params": params, "lr": lr}]
    scales = layer_scales(model, spec.train.layer_decay)
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups: dict[float, list[nn.Parameter]] = {}
    for p in params:
        s = scales.get(by_id.get(id(p), ""), 1.0)
        groups.setdefault(s, []).append(p)
    # the full-lr group first: the epoch log's "lr" is the first group's
    ordered = sorted(groups.items(), reverse=True)
    return [{"params": ps, "lr": lr * s, "lr_scale": s} for s, ps in ordered]
