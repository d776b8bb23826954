"""The spec: typed, validated, YAML/JSON round-trip, ``--set a.b=c`` overrides.

A spec says what the model sees (modalities), how each modality is encoded (branches), how the
encodings are fused, what is predicted (task) and how it is trained. Errors name the field path,
the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medfuse.core.errors import SpecError, did_you_mean

MODALITY_KINDS = ("image", "signal", "tabular", "text")
STAGES = ("end_to_end", "branches", "fusion", "finetune")
DEFAULT_BRANCH = {"image": "cnn", "signal": "cnn1d", "tabular": "mlp", "text": "gru_text"}
#: branch keys handled by the composite, not the builder (``layer_shapes``: pruned layer sizes,
#: see ``medfuse.models.shapes``)
BRANCH_RESERVED = ("layer_shapes",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSpec(_Strict):
    type: Literal["binary", "multiclass", "multilabel"] = "binary"
    labels: list[str] | None = Field(
        default=None,
        description="Class names. Binary: [negative, positive]. Filled from the data when omitted.",
    )
    positive: str | None = Field(
        default=None,
        description="binary: the positive class, the one whose probability the model predicts "
        "(sensitivity, PPV and the threshold are about it). Needed when the labels are text; "
        "0/1 labels default to 1; built-in data sources declare theirs",
    )

    @model_validator(mode="after")
    def _positive(self) -> TaskSpec:
        if self.positive is not None:
            if self.type != "binary":
                raise ValueError(
                    f"'positive' applies to binary tasks only; this task is {self.type!r}"
                )
            if (
                self.labels is not None
                and len(self.labels) == 2
                and self.positive != self.labels[1]
            ):
                if self.positive not in self.labels:
                    raise ValueError(
                        f"positive {self.positive!r} is not one of the labels {self.labels}"
                    )
                raise ValueError(
                    f"labels are [negative, positive]: with positive {self.positive!r} write "
                    f"labels: {[self.labels[1], self.labels[0]]}"
                )
        return self

    @property
    def positive_class(self) -> str | None:
        """The positive class of a binary task (declared, else the second label); else None."""
        if self.type != "binary":
            return None
        return self.positive or (self.labels[1] if self.labels and len(self.labels) == 2 else None)


class ModalitySpec(_Strict):
    kind: Literal["image", "signal", "tabular", "text"]
    channels: int | None = Field(default=None, ge=1, description="image/signal channels")
    size: list[int] | None = Field(default=None, description="image size [H, W] or [D, H, W]")
    length: int | None = Field(
        default=None, ge=1, description="signal length in samples; text: tokens kept per text"
    )
    vocab: int | None = Field(
        default=None,
        ge=8,
        description="text: the tokenizer's vocabulary size (trained on the training texts)",
    )
    columns: list[str] | None = Field(default=None, description="tabular column names")
    sequence: int | None = Field(
        default=None, ge=1, description="number of elements when a sample is a sequence"
    )
    leads: list[str] | None = Field(
        default=None, description="signal: leads to read, by name (WFDB / CSV files), in order"
    )
    rate: float | None = Field(
        default=None, gt=0, description="signal: resample to this rate in Hz (WFDB / CSV files)"
    )
    window: list[float] | Literal["file", "unit"] | None = Field(
        default=None,
        description="image intensity scale (docs/data.md): [centre, width] mapped to [0, 1]; "
        "'file': the DICOM's own VOI LUT or window (else as 'unit'), display images by bit "
        "depth; 'unit': every file on [0, 1] as a fraction of its full range (bit depth; DICOM: "
        "the stored range after rescale); none: each file's own values, and a modality whose "
        "files come on different scales is refused",
    )

    @model_validator(mode="after")
    def _complete(self) -> ModalitySpec:
        need = {
            "image": ("channels", "size"),
            "signal": ("channels", "length"),
            "tabular": ("columns",),
            "text": ("length",),
        }
        for name in need[self.kind]:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.kind} modality needs '{name}'")
        if self.size is not None and len(self.size) not in (2, 3):
            raise ValueError(f"'size' must be [H, W] or [D, H, W]; got {self.size}")
        if self.kind == "text" and self.sequence:
            raise ValueError("a text modality is one text per sample ('sequence' does not apply)")
        for name, kind in (
            ("leads", "signal"),
            ("rate", "signal"),
            ("window", "image"),
            ("vocab", "text"),
        ):
            if getattr(self, name) is not None and self.kind != kind:
                raise ValueError(f"'{name}' applies to {kind} modalities only")
        if self.leads is not None and len(self.leads) != self.channels:
            raise ValueError(
                f"'leads' names {len(self.leads)} leads but 'channels' is {self.channels}"
            )
        if isinstance(self.window, list) and (len(self.window) != 2 or self.window[1] <= 0):
            raise ValueError(f"'window' must be [centre, width] with width > 0; got {self.window}")
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample of this modality (no batch axis)."""
        lead = (self.sequence,) if self.sequence else ()
        if self.kind == "image":
            return (*lead, int(self.channels or 0), *(self.size or ()))
        if self.kind == "signal":
            return (*lead, int(self.channels or 0), int(self.length or 0))
        if self.kind == "text":
            return (int(self.length or 0),)  # token ids
        return (*lead, len(self.columns or ()))


class BranchSpec(BaseModel):
    """``type`` names a registered branch; every other key is a keyword of its builder."""

    model_config = ConfigDict(extra="allow")
    type: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class FusionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "concat"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class HeadSpec(_Strict):
    hidden: int = Field(default=64, ge=0, description="0 means a single linear layer")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


class StageSpec(_Strict):
    name: Literal["end_to_end", "branches", "fusion", "finetune"]
    epochs: int | None = Field(default=None, ge=0)
    lr: float | None = Field(default=None, gt=0)


class EarlyStoppingSpec(_Strict):
    metric: Literal[
        "auroc",
        "auprc",
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "f1",
        "kappa",
        "ece",
        "brier",
        "loss",
    ] = "auroc"
    patience: int = Field(default=8, ge=1)
    mode: Literal["max", "min"] | None = Field(
        default=None, description="default: min for loss/ece/brier, else max"
    )

    @property
    def maximize(self) -> bool:
        return self.mode == "max" if self.mode else self.metric not in ("loss", "ece", "brier")


class InitSpec(_Strict):
    """Start from another package's weights, e.g. ``{package: runs/pneumonia, modules: [branches.image]}``."""

    package: str = Field(description="path of a medfuse package (checksums are verified)")
    modules: dict[str, str] = Field(
        default_factory=lambda: {"branches": "branches"},
        description="weight-name prefixes to copy: a list (same name here) or {source: target}",
    )

    @field_validator("modules", mode="before")
    @classmethod
    def _as_map(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return {str(p): str(p) for p in v}
        return v


#: LoRA's rank, scale numerator and dropout when the spec gives none
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16.0, "dropout": 0.0}


class PeftSpec(_Strict):
    """Parameter-efficient fine-tuning with the ``peft`` library (LoRA or IA3); the package
    stores the merged weights, so export and serving see a plain model (``store: adapter``
    keeps the adapter weights beside them too)."""

    method: Literal["lora", "ia3"] = Field(
        default="lora",
        description="lora: low-rank updates B @ A of each target Linear; ia3: a learned vector "
        "scaling each target Linear's output (its input, for feedforward_modules)",
    )
    branches: list[str] = Field(min_length=1, description="modalities whose branch gets adapters")
    r: int | None = Field(default=None, ge=1, description="LoRA rank (default 8)")
    alpha: float | None = Field(
        default=None, gt=0, description="LoRA scale numerator, alpha / r (default 16)"
    )
    dropout: float | None = Field(default=None, ge=0, lt=1, description="LoRA dropout (default 0)")
    target_modules: list[str] | None = Field(
        default=None,
        description="module-name suffixes within the branch to adapt (e.g. [qkv, proj]); "
        "default: every Linear layer of the branch",
    )
    feedforward_modules: list[str] | None = Field(
        default=None,
        description="ia3 only: the target_modules (suffixes) whose input, not output, is scaled "
        "(the MLP's second Linear, e.g. [fc2]); each must be one of target_modules",
    )
    store: Literal["merged", "adapter"] = Field(
        default="merged",
        description="merged: the package holds the merged weights; adapter: also the adapter "
        "weights alone (adapter.safetensors, its config in medfuse.json's adapter)",
    )

    @model_validator(mode="before")
    @classmethod
    def _lora_fields(cls, data: Any) -> Any:
        """LoRA's rank, scale and dropout: their defaults for lora; for ia3, none of them."""
        if not isinstance(data, dict):
            return data
        given = sorted(k for k in LORA_DEFAULTS if data.get(k) is not None)
        if data.get("method", "lora") == "ia3":
            if given:
                raise ValueError(
                    f"{', '.join(given)} apply to method 'lora' only; ia3 has no rank, scale or "
                    "dropout (allowed for ia3: branches, target_modules, feedforward_modules, "
                    "store)"
                )
            return data
        return {**LORA_DEFAULTS, **{k: v for k, v in data.items() if v is not None}}

    @model_validator(mode="after")
    def _method_fields(self) -> PeftSpec:
        if self.feedforward_modules is not None:
            if self.method != "ia3":
                raise ValueError(
                    "feedforward_modules applies to method 'ia3' only; got method 'lora'"
                )
            extra = [m for m in self.feedforward_modules if m not in (self.target_modules or [])]
            if extra:
                raise ValueError(
                    f"feedforward_modules {extra} are not in target_modules "
                    f"{self.target_modules}; each feedforward module must also be a target"
                )
        return self


class TrainSpec(_Strict):
    epochs: int = Field(
        default=20, ge=0, description="at least 1; 0 only with `init` (a package's weights, as is)"
    )
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = Field(
        default="adamw", description="adamw; sgd: Nesterov momentum 0.9, weight decay as L2"
    )
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: int = Field(default=0, ge=0)
    stages: list[StageSpec] = Field(default_factory=lambda: [StageSpec(name="end_to_end")])
    finetune_lr_scale: float = Field(default=0.1, gt=0)
    early_stopping: EarlyStoppingSpec | None = Field(default_factory=EarlyStoppingSpec)
    init: InitSpec | None = Field(default=None, description="start from a package's weights")
    freeze: list[str] = Field(
        default_factory=list,
        description="parameter-name prefixes kept fixed in training, e.g. "
        "[branches.image.encoder.patch_embed]; each must name at least one parameter",
    )
    peft: PeftSpec | None = Field(
        default=None,
        description="LoRA or IA3 adapters on branches; only they (and what the branches "
        "feed: fusion, head) train",
    )
    layer_decay: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="layer-wise learning-rate decay for pretrained branches (timm, torchvision, "
        "hf), e.g. 0.75: the last layer of the encoder trains at lr, each layer below it at "
        "layer_decay times the one above; fusion, head and other branches at lr. None: off",
    )
    grad_checkpointing: bool = Field(
        default=False,
        description="recompute each pretrained branch's encoder activations in the backward "
        "pass instead of storing them (timm set_grad_checkpointing, Hugging Face "
        "gradient_checkpointing_enable): less memory, more compute",
    )
    keep: Literal["best", "last"] = Field(
        default="best",
        description="best: the epoch with the best validation score (early_stopping.metric, "
        "else auroc); last: the final weights (the EMA with `ema`), no epoch selection and no "
        "early stopping",
    )
    class_weights: Literal["none", "balanced", "sqrt"] = Field(
        default="none",
        description="balanced: inverse class frequency; sqrt: its square root; none",
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    mixup: float = Field(
        default=0.0,
        ge=0,
        description="mixup Beta(a, a) concentration a; 0 = off (mixes every modality together)",
    )
    grad_clip: float | None = Field(default=None, gt=0)
    sam: float | None = Field(
        default=None,
        gt=0,
        le=2,
        description="sharpness-aware minimization radius rho (e.g. 0.05): each step uses the "
        "gradient at the worst weights within rho of the current ones; twice the compute",
    )
    ema: float | None = Field(default=None, gt=0, lt=1, description="weight EMA decay, e.g. 0.99")
    bf16: bool = False
    seed: int = 0
    modality_dropout: dict[str, float] = Field(
        default_factory=dict, description="per-modality probability of masking it in training"
    )
    strategy: str = Field(default="single", description="single | ddp | fsdp | branch | hybrid")
    placement: dict[str, str] = Field(default_factory=dict)
    checkpoint_every: int = Field(
        default=0, ge=0, description="steps between checkpoints; 0 = each epoch"
    )

    @field_validator("stages", mode="before")
    @classmethod
    def _stage_shorthand(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": s} if isinstance(s, str) else s for s in v]
        return v

    @field_validator("modality_dropout")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        for k, r in v.items():
            if not 0.0 <= r < 1.0:
                raise ValueError(f"rate for {k!r} must be in [0, 1); got {r}")
        return v


class AugmentSpec(_Strict):
    flip: bool = False
    vflip: bool = False
    rotate: float = Field(default=0.0, ge=0, description="max rotation in degrees")
    translate: float = Field(default=0.0, ge=0, lt=0.5, description="max shift, fraction of size")
    scale: float = Field(default=0.0, ge=0, lt=0.5, description="max zoom, fraction")
    brightness: float = Field(
        default=0.0, ge=0, description="images: add U(-b, b) (in standardised units) per sample"
    )
    contrast: float = Field(
        default=0.0, ge=0, lt=1, description="images: scale about the image mean by 1 + U(-c, c)"
    )
    erase: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="images: with probability 0.5 blank a random square of this fraction of the side",
    )
    noise: float = Field(default=0.0, ge=0, description="Gaussian noise std on signals")


class DataSpec(_Strict):
    source: str = Field(description="medmnist:<name> | manifest:<file.csv> | synthetic | ...")
    options: dict[str, Any] = Field(default_factory=dict)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    on_bad_row: Literal["fail", "missing"] = "fail"
    stream: bool | Literal["auto"] = Field(
        default="auto",
        description="manifest files: true decodes them once into an on-disk cache "
        "(MEDFUSE_CACHE_DIR) and streams batches from it; false holds every split in memory; "
        "auto streams when the decoded files would take more than 15% of the available memory",
    )
    workers: int = Field(
        default=2,
        ge=0,
        le=64,
        description="streamed data: the worker processes that decode its files once, and the "
        "threads that read its batches ahead (on a CPU, only on cores the model leaves free)",
    )
    unseen_category: Literal["error", "flag"] = Field(
        default="error",
        description="at prediction, a categorical value never seen in training: an error, or "
        "flag: predicted as a missing value and flagged in the output",
    )


class ThresholdSpec(_Strict):
    method: Literal["youden", "sensitivity", "specificity", "fixed"] = "youden"
    target: float | None = Field(default=None, gt=0, le=1)
    value: float | None = Field(default=None, ge=0, le=1)


class Spec(_Strict):
    """The whole model specification; what ``medfuse train`` reads."""

    name: str = "model"
    task: TaskSpec = Field(default_factory=TaskSpec)
    data: DataSpec
    modalities: dict[str, ModalitySpec] = Field(default_factory=dict)
    branches: dict[str, BranchSpec] = Field(default_factory=dict)
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    head: HeadSpec = Field(default_factory=HeadSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    threshold: ThresholdSpec = Field(default_factory=ThresholdSpec)
    ensemble: int = Field(
        default=1,
        ge=1,
        le=32,
        description="members trained independently (seeds train.seed, +1000, +2000, ...); the "
        "package averages their probabilities",
    )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def num_outputs(self) -> int:
        labels = self.task.labels or []
        return 1 if self.task.type == "binary" else len(labels)


def _format_validation_error(err: ValidationError, model: type[BaseModel]) -> SpecError:
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    path = ".".join(loc)
    bad = e.get("input")
    if e["type"] == "extra_forbidden":
        # find the parent model to suggest the closest field name
        parent: Any = model
        for part in loc[:-1]:
            field = getattr(parent, "model_fields", {}).get(part)
            if field is None:
                parent = None
                break
            ann = field.annotation
            args = getattr(ann, "__args__", ())
            parent = next(
                (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
            )
            if parent is None:
                break
        allowed = sorted(getattr(parent, "model_fields", {})) if parent else []
        hint = did_you_mean(loc[-1], allowed)
        return SpecError(path, f"unknown field {loc[-1]!r}{hint} Allowed: {', '.join(allowed)}")
    msg = e["msg"]
    if e["type"] == "literal_error":
        msg = msg.replace("Input should be", "must be one of")
        if isinstance(bad, str):
            opts = re.findall(r"'([^']+)'", e["msg"])
            msg += did_you_mean(bad, opts)
    return SpecError(
        path, f"{msg}; got {bad!r}" if bad is not None and not isinstance(bad, dict) else msg
    )


#: checks that layers above the core add (``medfuse.models`` checks branch and fusion parameters
#: against their registered builders); each raises SpecError naming the field path
_SPEC_CHECKS: list[Callable[[Spec], None]] = []


def register_spec_check(check: Callable[[Spec], None]) -> Callable[[Spec], None]:
    """Add a check that every ``parse_spec`` runs once the layer defining it is imported."""
    if check not in _SPEC_CHECKS:
        _SPEC_CHECKS.append(check)
    return check


def parse_spec(data: dict[str, Any] | Spec) -> Spec:
    """Validate a dict into a Spec; raises SpecError naming the field path."""
    if isinstance(data, Spec):
        return data
    if not isinstance(data, dict):
        raise SpecError("", f"a spec must be a mapping; got {type(data).__name__}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise _format_validation_error(err, Spec) from None
    _check_cross_fields(spec)
    return spec


def _check_cross_fields(spec: Spec) -> None:
    if spec.task.labels is not None:
        if spec.task.type == "binary" and len(spec.task.labels) != 2:
            raise SpecError("task.labels", f"a binary task needs 2 labels; got {spec.task.labels}")
        if spec.task.type != "binary" and len(spec.task.labels) < 2:
            raise SpecError("task.labels", f"needs at least 2 labels; got {spec.task.labels}")
    for name in spec.branches:
        if spec.modalities and name not in spec.modalities:
            raise SpecError(
                f"branches.{name}",
                f"no modality named {name!r}{did_you_mean(name, spec.modalities)} "
                f"Modalities: {', '.join(spec.modalities)}",
            )
    for name in spec.train.peft.branches if spec.train.peft else []:
        if spec.modalities and name not in spec.modalities:
            raise SpecError(
                "train.peft.branches",
                f"no modality named {name!r}{did_you_mean(name, spec.modalities)} "
                f"Modalities: {', '.join(spec.modalities)}",
            )
    if spec.train.peft is not None and spec.train.peft.store == "adapter" and spec.ensemble > 1:
        raise SpecError(
            "train.peft.store",
            f"'adapter' keeps one model's adapter weights; this is an ensemble of "
            f"{spec.ensemble} (use store: merged, or ensemble: 1)",
        )
    for name in spec.train.modality_dropout:
        if spec.modalities and name not in spec.modalities:
            raise SpecError(f"train.modality_dropout.{name}", f"no modality named {name!r}")
    trained = [s.epochs if s.epochs is not None else spec.train.epochs for s in spec.train.stages]
    if not any(trained) and spec.train.init is None:
        raise SpecError(
            "train.epochs",
            "must be at least 1 (0 trains nothing: the package would hold random weights); "
            "0 is allowed only with train.init, to package another model's weights as they are",
        )
    if len(spec.train.stages) > 1 and any(s.name == "end_to_end" for s in spec.train.stages):
        raise SpecError("train.stages", "'end_to_end' cannot be combined with other stages")
    for check in _SPEC_CHECKS:  # the model layer's: branch and fusion parameters
        check(spec)
    if spec.threshold.method in ("sensitivity", "specificity") and spec.threshold.target is None:
        raise SpecError(
            "threshold.target", f"method {spec.threshold.method!r} needs a target in (0, 1]"
        )


def complete_spec(spec: Spec, modalities: dict[str, ModalitySpec], labels: list[str]) -> Spec:
    """Fill modalities, labels and default branches from the data; checks they agree."""
    d = spec.to_dict()
    if spec.modalities:
        for name, m in spec.modalities.items():
            if name not in modalities:
                raise SpecError(
                    f"modalities.{name}",
                    f"the data source provides no modality {name!r}{did_you_mean(name, modalities)} "
                    f"It provides: {', '.join(modalities)}",
                )
            if m.kind != modalities[name].kind:
                raise SpecError(
                    f"modalities.{name}.kind",
                    f"data has {modalities[name].kind!r}, spec says {m.kind!r}",
                )
        d["modalities"] = {n: modalities[n].model_dump(mode="json") for n in spec.modalities}
    else:
        d["modalities"] = {n: m.model_dump(mode="json") for n, m in modalities.items()}
    if spec.task.labels is None:
        d["task"]["labels"] = list(labels)
    elif list(spec.task.labels) != list(labels):  # the targets are coded in the data's order
        raise SpecError(
            "task.labels",
            f"{spec.task.labels} differs from the data's label order {list(labels)}; the "
            "data source codes the targets in its order (for a manifest, set "
            "data.options.labels to the same list to choose it)",
        )
    labs = d["task"]["labels"]
    if spec.task.type == "binary" and len(labs) == 2:
        pos = spec.task.positive
        if pos is not None and pos not in labs:
            raise SpecError(
                "task.positive", f"{pos!r} is not one of the labels {labs}{did_you_mean(pos, labs)}"
            )
        if pos is not None and pos == labs[0]:  # the targets code labs[1] as 1: never rename
            raise SpecError(
                "task.positive",
                f"{pos!r} is the first of the data's labels {labs}, whose targets code "
                f"{labs[1]!r} as 1; load the data through medfuse.data (it orders a binary task "
                "[negative, positive] and flips the targets) or code the targets that way",
            )
        d["task"]["positive"] = labs[1]  # labels are [negative, positive]
    _check_threshold(spec)
    for name, m in d["modalities"].items():
        d["branches"].setdefault(name, {"type": DEFAULT_BRANCH[m["kind"]]})
    d["branches"] = {n: b for n, b in d["branches"].items() if n in d["modalities"]}
    return parse_spec(d)


def _check_threshold(spec: Spec) -> None:
    """A multiclass task decides by argmax, a multilabel one each label at one fixed threshold
    (``value``, default 0.5): a target sensitivity or specificity (chosen on validation, for
    binary tasks), or a fixed threshold for a multiclass task, would not be applied and is
    refused. ``youden``, the default, is what every stored spec holds, so it stands for "none"
    (multiclass) or 0.5 (multilabel)."""
    t, task = spec.threshold, spec.task.type
    if task == "multiclass" and (t.method != "youden" or t.value is not None or t.target):
        raise SpecError(
            "threshold", "a multiclass task decides by argmax: no threshold applies; remove it"
        )
    if task == "multilabel" and (t.method in ("sensitivity", "specificity") or t.target):
        raise SpecError(
            "threshold.method",
            f"{t.method!r} chooses an operating point on validation, for binary tasks; a "
            "multilabel task decides every label at one fixed threshold: "
            "threshold: {method: fixed, value: 0.5}",
        )


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating mappings on the way."""
    parts = dotted.split(".")
    cur = data
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part)
        if nxt is None:
            nxt = cur[part] = {}
        if not isinstance(nxt, dict):
            raise SpecError(
                ".".join(parts[: i + 1]), f"is {nxt!r}, not a mapping; cannot set {dotted}"
            )
        cur = nxt
    cur[parts[-1]] = value


def _yaml_where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


def _yaml_why(err: yaml.YAMLError) -> str:
    """What the YAML parser found wrong, on one line (no echo of the text)."""
    return " ".join(str(getattr(err, "problem", None) or err).split())


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` strings; values parse as YAML (numbers, lists, booleans)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise SpecError("", f"--set expects key.path=value; got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise SpecError(
                key.strip(),
                f"--set {item!r}: the value is not valid YAML ({_yaml_why(err)}); quote a "
                "string, e.g. "
                f"--set '{key.strip()}=\"...\"'",
            ) from None
        set_path(data, key.strip(), value)
    return data


def load_spec_dict(path: str | Path) -> dict[str, Any]:
    """Read YAML or JSON; a name without a path may be a shipped config (e.g. 'breastmnist')."""
    p = Path(path)
    if not p.exists():
        shipped = Path(__file__).parent.parent / "configs" / f"{p.stem}.yaml"
        if p.parent == Path(".") and shipped.exists():
            p = shipped
        else:
            raise SpecError("", f"config file not found: {path}")
    if p.is_dir():
        raise SpecError("", f"{p} is a folder; give a spec file (YAML or JSON)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError("", f"{p} is not UTF-8 text ({err}); save the spec as UTF-8") from None
    except OSError as err:
        raise SpecError("", f"{p} cannot be read ({err.strerror or err})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise SpecError(
            "", f"{p} line {err.lineno} column {err.colno}: not valid JSON ({err.msg})"
        ) from None
    except yaml.YAMLError as err:
        raise SpecError("", f"{p}{_yaml_where(err)}: not valid YAML ({_yaml_why(err)})") from None
    if not isinstance(data, dict):
        raise SpecError("", f"{p} must hold a mapping at the top level")
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec file. A relative ``manifest:`` path that does not
    exist from the working directory but does beside the spec file is taken from there."""
    data = apply_overrides(load_spec_dict(path), overrides)
    source = (data.get("data") or {}).get("source") if isinstance(data.get("data"), dict) else None
    if isinstance(source, str) and source.startswith("manifest:") and Path(path).exists():
        rel = Path(source.split(":", 1)[1].strip()).expanduser()
        beside = Path(path).parent / rel
        if not rel.is_absolute() and not rel.exists() and beside.is_file():
            data["data"]["source"] = f"manifest:{beside}"
    return parse_spec(data)
