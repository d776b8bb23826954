"""The composite model: one branch per modality, a fusion, a head. Masks in, logits out."""

from __future__ import annotations

import torch
from torch import nn

from medfuse.core.spec import Spec, parse_spec
from medfuse.models import BRANCHES, FUSIONS
from medfuse.models.shapes import apply_layer_shapes


class CompositeModel(nn.Module):
    """``forward(inputs, masks)``: ``inputs[m]`` is ``(B, *shape_m)``, ``masks[m]`` is ``(B,)``.

    Each branch also has an auxiliary linear head (``aux_heads``) used by staged training to
    train the branch alone, and by evaluation to score each branch as a single-modality model.
    """

    def __init__(self, spec: Spec) -> None:
        super().__init__()

        self.modalities = list(spec.modalities)
        self.num_outputs = spec.num_outputs
        self.branches = nn.ModuleDict()
        for name in self.modalities:
            b = spec.branches[name]
            builder = BRANCHES.get(b.type, path=f"branches.{name}.type")
            params = b.params
            shapes = params.pop("layer_shapes", None)  # pruned layer sizes (medfuse prune)
            self.branches[name] = builder(input_shape=spec.modalities[name].shape, **params)
            if shapes:
                apply_layer_shapes(
                    self.branches[name], shapes, path=f"branches.{name}.layer_shapes"
                )
        dims = {n: int(self.branches[n].out_features) for n in self.modalities}
        self.aux_heads = nn.ModuleDict({n: nn.Linear(d, self.num_outputs) for n, d in dims.items()})
        fbuild = FUSIONS.get(spec.fusion.type, path="fusion.type")
        self.fusion = fbuild(feature_dims=dims, num_outputs=self.num_outputs, **spec.fusion.params)
        width = int(self.fusion.out_features)
        if spec.head.hidden > 0:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(width, spec.head.hidden),
                nn.ReLU(),
                nn.Dropout(spec.head.dropout),
                nn.Linear(spec.head.hidden, self.num_outputs),
            )
        else:
            self.head = nn.Sequential(
                nn.Dropout(spec.head.dropout), nn.Linear(width, self.num_outputs)
            )

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Branch features ``{m: (B, D_m)}``."""
        return {n: self.branches[n](inputs[n]) for n in self.modalities}

    def fuse(
        self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return self.head(self.fusion(features, masks))  # (B, num_outputs)

    def forward(
        self, inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], aux: str = "none"
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits ``(B, num_outputs)``; with ``aux`` also each branch's auxiliary logits, computed
        on features that are ``"detached"`` (probe only) or ``"attached"`` (train the branch)."""
        features = self.encode(inputs)
        logits = self.fuse(features, masks)
        if aux == "none":
            return logits
        src = features if aux == "attached" else {n: f.detach() for n, f in features.items()}
        return logits, self.branch_logits(src)

    def branch_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each branch alone, through its auxiliary head: ``{m: (B, num_outputs)}``."""
        return {n: self.aux_heads[n](features[n]) for n in self.modalities}


def _mean_probability_logits(task: str, logits: list[torch.Tensor]) -> torch.Tensor:
    """Logits whose probabilities are the mean of the members' probabilities."""
    if task == "multiclass":
        p = torch.stack([lg.float().softmax(-1) for lg in logits]).mean(0)
        return p.clamp_min(1e-12).log()
    p = torch.stack([lg.float().sigmoid() for lg in logits]).mean(0)
    p = p.clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)


class EnsembleModel(nn.Module):
    """``ensemble: K`` members with the same spec, trained independently (seeds: ``member_spec``).

    ``forward`` has CompositeModel's signature; its logits are those of the members' mean
    probability (softmax for multiclass, sigmoid otherwise), and so are the auxiliary (single
    branch) logits. The weights are ``members.<k>.<CompositeModel key>``.
    """

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.task = spec.task.type
        self.modalities = list(spec.modalities)
        self.num_outputs = spec.num_outputs
        self.members = nn.ModuleList(CompositeModel(spec) for _ in range(spec.ensemble))

    def forward(
        self, inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], aux: str = "none"
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outs = [m(inputs, masks, aux=aux) for m in self.members]
        if aux == "none":
            return _mean_probability_logits(self.task, outs)
        logits = _mean_probability_logits(self.task, [o[0] for o in outs])
        per = {
            n: _mean_probability_logits(self.task, [o[1][n] for o in outs]) for n in self.modalities
        }
        return logits, per


def members(model: nn.Module) -> list[CompositeModel]:
    """The composites a model is made of: an ensemble's members, else the model itself."""
    return list(model.members) if isinstance(model, EnsembleModel) else [model]  # type: ignore[list-item]


MEMBER_SEED_STRIDE = 1000


def member_spec(spec: Spec, k: int) -> Spec:
    """The spec member ``k`` trains with: no ensemble, seed ``train.seed + 1000 k`` (member 0 is the
    single model of that seed; ensembles of different seeds share no member)."""

    d = spec.to_dict()
    d["ensemble"] = 1
    d["train"]["seed"] = int(spec.train.seed) + MEMBER_SEED_STRIDE * k
    return parse_spec(d)


def build_model(spec: Spec) -> CompositeModel | EnsembleModel:
    return EnsembleModel(spec) if spec.ensemble > 1 else CompositeModel(spec)


def count_parameters(model: nn.Module, *, inference: bool = True) -> int:
    """Parameters used at inference (auxiliary heads excluded when ``inference``)."""

    def used(name: str) -> bool:
        return not inference or not (name.startswith("aux_heads.") or ".aux_heads." in name)

    return sum(p.numel() for n, p in model.named_parameters() if used(n))
