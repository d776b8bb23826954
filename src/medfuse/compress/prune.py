"""Pruning a package: structured channel pruning per branch (torch-pruning), or unstructured
global magnitude pruning, then a short fine-tune on the package's own data.

Structured: each branch is pruned on its own example input with its output layer (the
``out_features`` projection) left alone, so its output width, and so the fusion and the head, stay
intact. Convolutions, linear layers and their batch norms are pruned by torch-pruning's
dependency graph (residual connections stay consistent). LSTM/GRU layers are skipped by
torch-pruning (its LSTM pruner supports neither GRU nor stacked layers); for the ``lstm``/``gru``
branches medfuse prunes their hidden units itself (L2 importance of each unit's weights, for
every layer and direction) and writes the smaller ``hidden`` into the spec. The irregular channel
counts left in the other layers are written to the spec as the branch's ``layer_shapes``
(``medfuse.models.shapes``), so the package reloads with ``medfuse.load`` (no pickle) and
exports to ONNX like any other.

Unstructured: the ``amount`` fraction of conv/linear weights with the smallest magnitude
(globally) are set to zero and kept at zero during fine-tuning. The saving is reported honestly
as sparsity: dense kernels (PyTorch, ONNX Runtime) do the same work on zeros, and the
safetensors file stays the same size.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from medfuse.compress._common import (
    WEIGHT_BOUND_FILES,
    WEIGHT_BOUND_KEYS,
    check_fraction,
    check_out,
    delta,
    eval_split,
    now,
    package_data,
    package_threshold,
    source_info,
    summary,
    write_derived,
)
from medfuse.compress.measure import count_macs
from medfuse.core.errors import PackageError, SpecError
from medfuse.core.package import WEIGHTS
from medfuse.core.predictor import deployed_onnx
from medfuse.core.spec import Spec, parse_spec
from medfuse.distributed.strategies import start_session
from medfuse.inference.helpers import resolve_device, to_tensors
from medfuse.inference.package import load_package
from medfuse.models import BRANCHES, build_model
from medfuse.models.composite import count_parameters
from medfuse.models.shapes import LAYER_SHAPES, shape_overrides
from medfuse.training.pipeline import (
    run_fit,
    seed_everything,
    split_metrics,
    threshold_and_metrics,
)

log = logging.getLogger("medfuse.compress")

_RNN = (nn.LSTM, nn.GRU)
FINETUNE_LR_SCALE = 0.3
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class PruneResult:
    package: Path
    record: dict[str, Any]


# ---- structured --------------------------------------------------------------------------------


def output_layer(branch: nn.Module) -> nn.Module:
    """The layer that produces the branch's ``out_features`` (kept whole by pruning)."""
    width = int(branch.out_features)  # type: ignore[arg-type]
    last = None
    for mod in branch.modules():
        out = getattr(mod, "out_features" if isinstance(mod, nn.Linear) else "out_channels", None)
        if isinstance(mod, (nn.Linear, *_CONV)) and out == width:
            last = mod
    if last is None:
        raise PackageError(
            f"cannot find the layer producing the branch's {width} output features; "
            "this branch cannot be pruned structurally"
        )
    return last


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, mod in root.named_modules():
        if mod is old:
            parent_name, _, attr = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)
            return
    raise ValueError("module not found")


@torch.no_grad()
def prune_recurrent_hidden(encoder: nn.Module, amount: float) -> int | None:
    """Remove ``amount`` of the hidden units of ``encoder.rnn`` (LSTM/GRU, any layers/directions)
    and the matching input columns of the layer that reads it. Returns the new hidden size."""
    rnn = encoder.rnn
    if not isinstance(rnn, _RNN) or getattr(rnn, "proj_size", 0):
        return None
    gates = 4 if isinstance(rnn, nn.LSTM) else 3
    h, layers = rnn.hidden_size, rnn.num_layers
    dirs = 2 if rnn.bidirectional else 1
    keep_n = max(1, int(round(h * (1.0 - amount))))
    if keep_n >= h:
        return None
    consumer = next(
        (m for m in encoder.modules() if isinstance(m, nn.Linear) and m.in_features == h * dirs),
        None,
    )
    if consumer is None:
        return None
    sd = {k: v.detach().clone() for k, v in rnn.state_dict().items()}

    def sfx(layer: int, d: int) -> str:
        return f"_l{layer}" + ("_reverse" if d else "")

    keeps: dict[tuple[int, int], torch.Tensor] = {}
    for layer in range(layers):
        for d in range(dirs):
            w_ih, w_hh = sd["weight_ih" + sfx(layer, d)], sd["weight_hh" + sfx(layer, d)]
            score = w_ih.view(gates, h, -1).pow(2).sum((0, 2))  # incoming, per unit
            score += w_hh.view(gates, h, h).pow(2).sum((0, 2)) + w_hh.pow(2).sum(0)  # recurrent
            if layer == layers - 1:
                score += consumer.weight[:, d * h : (d + 1) * h].pow(2).sum(0)  # outgoing
            else:
                for dd in range(dirs):
                    nxt = sd["weight_ih" + sfx(layer + 1, dd)]
                    score += nxt[:, d * h : (d + 1) * h].pow(2).sum(0)
            keeps[(layer, d)] = score.topk(keep_n).indices.sort().values
    new_rnn = type(rnn)(
        rnn.input_size,
        keep_n,
        num_layers=layers,
        bias=rnn.bias,
        batch_first=rnn.batch_first,
        dropout=rnn.dropout,
        bidirectional=rnn.bidirectional,
    )
    new_sd: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        prev = torch.cat([keeps[(layer - 1, dd)] + dd * h for dd in range(dirs)]) if layer else None
        for d in range(dirs):
            k, s = keeps[(layer, d)], sfx(layer, d)
            rows = torch.cat([g * h + k for g in range(gates)])
            w_ih = sd["weight_ih" + s][rows]
            new_sd["weight_ih" + s] = w_ih[:, prev] if prev is not None else w_ih
            new_sd["weight_hh" + s] = sd["weight_hh" + s][rows][:, k]
            if rnn.bias:
                new_sd["bias_ih" + s] = sd["bias_ih" + s][rows]
                new_sd["bias_hh" + s] = sd["bias_hh" + s][rows]
    new_rnn.load_state_dict(new_sd, strict=True)
    cols = torch.cat([keeps[(layers - 1, dd)] + dd * h for dd in range(dirs)])
    new_lin = nn.Linear(keep_n * dirs, consumer.out_features, bias=consumer.bias is not None)
    new_lin.weight.copy_(consumer.weight[:, cols])
    if consumer.bias is not None:
        new_lin.bias.copy_(consumer.bias)
    _replace(encoder, consumer, new_lin)
    encoder.rnn = new_rnn
    return keep_n


def prune_branch(
    branch: nn.Module, input_shape: tuple[int, ...], amount: float, *, recurrent_param: bool
) -> dict[str, Any]:
    """Structured pruning of one branch in place; returns what changed (for the spec/record)."""
    # lazy: torch-pruning (medfuse[compress]), only to prune
    import torch_pruning as tp

    branch.eval()
    info: dict[str, Any] = {"params_before": sum(p.numel() for p in branch.parameters())}
    if recurrent_param and isinstance(getattr(branch, "rnn", None), _RNN):
        hidden = prune_recurrent_hidden(branch, amount)
        if hidden is not None:
            info["hidden"] = hidden
    keep = output_layer(branch)
    ignored = [keep, *(m for m in branch.modules() if isinstance(m, _RNN))]
    roots = [
        m
        for m in branch.modules()
        if isinstance(m, (*_CONV, nn.Linear)) and all(m is not i for i in ignored)
    ]
    if roots:
        example = torch.randn(2, *input_shape)
        pruner = tp.pruner.MetaPruner(
            branch,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=amount,
            ignored_layers=ignored,
        )
        pruner.step()
    info["params_after"] = sum(p.numel() for p in branch.parameters())
    return info


def prune_structured(
    model: nn.Module, spec: Spec, amount: float
) -> tuple[Spec, dict[str, dict[str, Any]]]:
    """Prune every branch of ``model`` in place; returns the spec that rebuilds it exactly."""

    d = spec.to_dict()
    report: dict[str, dict[str, Any]] = {}
    for name in spec.modalities:
        b = spec.branches[name]
        builder = BRANCHES.get(b.type, path=f"branches.{name}.type")
        params = {k: v for k, v in b.params.items() if k != LAYER_SHAPES}
        takes_hidden = "hidden" in BRANCHES.params(b.type) and b.type in ("lstm", "gru")
        shape = tuple(spec.modalities[name].shape)
        info = prune_branch(model.branches[name], shape, amount, recurrent_param=takes_hidden)
        if "hidden" in info:
            params["hidden"] = int(info["hidden"])
        reference = builder(input_shape=shape, **params)
        overrides = shape_overrides(model.branches[name], reference)
        if overrides:
            params[LAYER_SHAPES] = overrides
            info["layers_resized"] = len(overrides)
        d["branches"][name] = {"type": b.type, **params}
        report[name] = info
    new_spec = parse_spec(d)
    _check_rebuild(model, new_spec)
    return new_spec, report


def _check_rebuild(model: nn.Module, spec: Spec) -> None:
    """The pruned weights must load strictly into the model the new spec builds."""

    try:
        build_model(spec).load_state_dict(model.state_dict(), strict=True)
    except (RuntimeError, SpecError) as err:
        raise PackageError(f"the pruned model does not rebuild from its spec: {err}") from None


# ---- unstructured ------------------------------------------------------------------------------


def _prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [
        (m, "weight")
        for n, m in model.named_modules()
        if isinstance(m, (*_CONV, nn.Linear)) and not n.startswith("aux_heads")
    ]


def prune_unstructured(model: nn.Module, amount: float) -> list[tuple[nn.Module, str]]:
    """Global magnitude pruning (masks stay attached, so fine-tuning keeps the zeros)."""

    params = _prunable_weights(model)
    torch_prune.global_unstructured(
        params, pruning_method=torch_prune.L1Unstructured, amount=amount
    )
    return params


def finalize_unstructured(params: list[tuple[nn.Module, str]]) -> None:

    for mod, name in params:
        torch_prune.remove(mod, name)


def sparsity(model: nn.Module) -> dict[str, float]:
    """Zero fraction of the pruned weights, and of all inference parameters."""
    w = [m.weight for m, _ in _prunable_weights(model)]
    zeros = sum(int((t == 0).sum()) for t in w)
    total = sum(t.numel() for t in w)
    allp = [p for n, p in model.named_parameters() if not n.startswith("aux_heads")]
    all_zeros = sum(int((p == 0).sum()) for p in allp)
    return {
        "weights": zeros / max(total, 1),
        "all_parameters": all_zeros / max(sum(p.numel() for p in allp), 1),
    }


# ---- the verb ----------------------------------------------------------------------------------


def prune(
    package: str | Path,
    *,
    out: str | Path,
    amount: float = 0.5,
    structured: bool = True,
    finetune_epochs: int = 5,
    finetune_lr: float | None = None,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    seed: int | None = None,
    command: str | None = None,
    overwrite: bool = False,
) -> PruneResult:
    """Prune ``package`` (structured per branch, or unstructured), fine-tune, write ``out``.

    ``finetune_lr`` defaults to 0.3 x the spec's ``train.lr`` (a short cosine schedule from a
    moderate rate recovers most of what pruning cost). The record holds the amount,
    parameters and MACs before/after, the sparsity (unstructured), the fine-tuning and the test
    metrics before/after, all computed by the same code on the same split.
    """

    amount = check_fraction(amount, "amount")
    if int(finetune_epochs) < 0:
        raise SpecError("finetune_epochs", f"must be >= 0; got {finetune_epochs}")
    if finetune_lr is not None and not finetune_lr > 0:
        raise SpecError("finetune_lr", f"must be > 0; got {finetune_lr}")
    check_out(out, package, overwrite=overwrite)
    dev = resolve_device(device)
    pkg = load_package(package, device="cpu")
    spec, meta = pkg.spec, pkg.meta
    if spec.ensemble > 1:
        raise SpecError(
            "package",
            f"{package} is an ensemble of {spec.ensemble} members; pruning takes one composite. "
            "Distill the ensemble into one model (medfuse distill, the ensemble as teacher) and "
            "prune that, or train with ensemble: 1",
        )
    if deployed_onnx(meta):  # its "before" and its name would be of a model it does not deploy
        raise SpecError(
            "package",
            f"{package} is an INT8 package (medfuse quantize): it deploys model.onnx, and pruning "
            "works on weights, which would give an fp32 model named and compared as the INT8 "
            "one. Prune its fp32 source, then quantize the result (quantization comes last)",
        )
    seed = int(spec.train.seed if seed is None else seed)
    bundle = package_data(pkg, data_dir)
    stats = meta["preprocessing"]
    split_name, split = eval_split(bundle)
    eval_t = to_tensors(split, stats)
    thr0 = pkg.info.threshold.value
    temp0 = pkg.info.calibration.temperature  # thr0 lives on its scale
    before = summary(
        split_metrics(pkg.model, spec, eval_t, thr0, dev, branches=False, temperature=temp0)
    )
    params_before = count_parameters(pkg.model)
    macs_before = count_macs(pkg.model, spec)

    model = copy.deepcopy(pkg.model).cpu()
    seed_everything(seed)
    if structured:
        new_spec, per_branch = prune_structured(model, spec, amount)
        masks = None
    else:
        new_spec, per_branch = spec, {}
        masks = prune_unstructured(model, amount)

    new_spec = package_threshold(new_spec, meta)  # its threshold re-chosen as the package chose
    lr = float(finetune_lr or spec.train.lr * FINETUNE_LR_SCALE)
    ft: dict[str, Any] = {"epochs": int(finetune_epochs), "lr": lr, "stage": "end_to_end"}
    if finetune_epochs > 0:  # the fit pipeline, from the pruned weights and the source's stats
        d = new_spec.to_dict()
        d["train"]["stages"] = [{"name": "end_to_end", "epochs": int(finetune_epochs), "lr": lr}]
        d["train"]["seed"] = seed
        ft_spec = parse_spec(d)
        fitted = run_fit(
            ft_spec,
            bundle,
            start_session(ft_spec, device),
            stats=stats,
            model=model,
            progress=False,
        )
        if fitted.model is None:  # a rank other than 0 of a distributed run
            return PruneResult(Path(out), {})
        model, thr, metrics = fitted.model, fitted.threshold, fitted.metrics
        ft["result"] = fitted.stages[-1] if fitted.stages else {}
    else:
        model = model.to(dev).eval()
        test_t = to_tensors(bundle.test, stats) if bundle.test is not None else None
        thr, metrics = threshold_and_metrics(
            model, new_spec, to_tensors(bundle.val, stats), test_t, dev, bundle.val.y
        )
    if masks is not None:  # the zeros become plain weights (the same values)
        finalize_unstructured(masks)
    sp = sparsity(model)
    model = model.cpu()
    after = summary(metrics[split_name])
    params_after = count_parameters(model)
    macs_after = count_macs(model, new_spec)
    kind = "structured" if structured else "unstructured"
    record: dict[str, Any] = {
        "method": "prune",
        "created": now(),
        "summary": (
            f"{kind} {amount:.0%}: parameters {params_before:,} -> {params_after:,}, "
            f"MACs {macs_before:,} -> {macs_after:,}"
            + ("" if structured else f", weight sparsity {sp['weights']:.1%}")
        ),
        "settings": {
            "kind": kind,
            "amount": amount,
            "criterion": "L2 group magnitude (torch-pruning), per branch; LSTM/GRU hidden units "
            "by medfuse"
            if structured
            else "global L1 magnitude over conv/linear weights",
            "seed": seed,
        },
        "branches": per_branch,
        "parameters": {"before": params_before, "after": params_after},
        "macs": {"before": macs_before, "after": macs_after},
        "sparsity": sp,
        "finetune": ft,
        "metrics": {
            "split": split_name,
            "engine": "torch",
            "before": before,
            "after": after,
            "delta": delta(before, after),
        },
        "source": source_info(pkg),
        "command": command,
    }
    if not structured:
        record["note"] = (
            "unstructured sparsity: dense kernels (PyTorch, ONNX Runtime) compute the zeros too, "
            "so it saves no time and the weights file keeps its size"
        )
    # lazy: safetensors (torch), only to read or write weights
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    new_meta = {k: v for k, v in copy.deepcopy(meta).items() if k not in WEIGHT_BOUND_KEYS}
    new_meta.update(
        name=f"{meta.get('name', spec.name)}-pruned",
        updated=now(),
        spec=new_spec.to_dict(),
        parameters=params_after,
        threshold=thr,
        calibration={"method": "none", "temperature": 1.0},
        compression=[*list(meta.get("compression") or []), record],
    )
    if temp0 != 1.0:
        record["calibration_reset"] = "the source's temperature no longer applies; reset to 1.0"
    record["threshold"] = {
        "before": meta.get("threshold"),
        "after": thr,
        "note": "re-chosen on val for the pruned model by the package's own rule "
        f"({new_spec.threshold.method}"
        + (f", target {new_spec.threshold.target}" if new_spec.threshold.target else "")
        + ")",
    }
    path = write_derived(
        pkg,
        out,
        meta=new_meta,
        files={WEIGHTS: save(state)},
        metrics=metrics,
        drop=WEIGHT_BOUND_FILES,
    )
    return PruneResult(path, record)
