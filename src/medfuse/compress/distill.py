"""Knowledge distillation: a smaller student learns from a composite (or an ensemble of packages).

The student may see fewer modalities than its teachers: a model for sites that lack a modality,
taught by one that had it. The teachers' soft targets are computed once, on the same training
samples the student trains on (normalised with each teacher's own statistics, un-augmented); the
student sees only its modalities. What a teacher sees is ``teacher_view``:

- ``full`` (default): all of the teacher's modalities;
- ``masked``: only the student's modalities, the others marked absent (presence mask 0), so the
  target is the teacher's own answer for a patient who has what the student has;
- ``probe``: the teacher's auxiliary head of the student's one modality (every composite has a
  per-branch head, trained as a probe on that branch's features), its single-modality answer.

An ensemble averages its members' temperature-softened probabilities.

The loss is ``alpha * T^2 * KD(student / T, teacher / T) + (1 - alpha) * task_loss`` (plus the
branches' auxiliary losses, as in training), where KD is the binary cross-entropy to the soft
probabilities (binary, multilabel) or the KL divergence (multiclass). Training reuses the
``Trainer`` (schedule, early stopping on validation, staged training) of the student spec.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from medfuse.compress._common import check_fraction, check_out, delta, now, source_info, summary
from medfuse.core.errors import SpecError, not_allowed
from medfuse.core.predictor import deployed_onnx
from medfuse.core.spec import Spec, apply_overrides, complete_spec, load_spec_dict, parse_spec
from medfuse.data import DataBundle, Split, load_data, own_tokenizers
from medfuse.distributed.strategies import start_session
from medfuse.inference.helpers import Tensors, predict_logits, to_tensors
from medfuse.inference.package import Package, load_package, save_package
from medfuse.models.composite import count_parameters
from medfuse.training.callbacks import Callback
from medfuse.training.metrics import compute_metrics, probabilities
from medfuse.training.pipeline import package_data_info, run_fit, seed_everything
from medfuse.training.trainer import Trainer

#: what a teacher sees when it makes the soft targets (see the module docstring)
TEACHER_VIEWS = ("full", "masked", "probe")


@dataclass
class DistillResult:
    package: Path
    record: dict[str, Any]
    metrics: dict[str, Any]


def soft_targets(task: str, logits: list[np.ndarray], temperature: float) -> np.ndarray:
    """The ensemble's temperature-softened probabilities ``(N, K)`` (mean over teachers)."""
    z = [np.asarray(lg, np.float64) / temperature for lg in logits]
    if task == "multiclass":
        probs = []
        for v in z:
            e = np.exp(v - v.max(axis=1, keepdims=True))
            probs.append(e / e.sum(axis=1, keepdims=True))
    else:
        probs = [1.0 / (1.0 + np.exp(-v)) for v in z]
    return np.mean(probs, axis=0).astype(np.float32)


def kd_loss(
    task: str, logits: torch.Tensor, soft: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-sample distillation loss, scaled by T^2 so its gradients match the task loss's."""
    z = logits.float() / temperature
    if task == "multiclass":
        loss = F.kl_div(F.log_softmax(z, dim=1), soft, reduction="none").sum(dim=1)
    else:
        loss = F.binary_cross_entropy_with_logits(z, soft, reduction="none").mean(dim=1)
    return loss * temperature**2


class DistillLoss(Callback):
    """The trainer's loss plus a distillation term (a trainer callback). Each sample's soft
    targets travel as extra columns of its label tensor, so every (shuffled, sharded, resumed,
    mixed-up) batch carries its own targets."""

    def __init__(self, soft: torch.Tensor, temperature: float, alpha: float) -> None:
        self.soft = soft
        self.temperature, self.alpha = float(temperature), float(alpha)
        self._y_dim, self._y_dtype, self._y_cols = 1, torch.float32, 1

    def on_fit_start(self, trainer: Trainer) -> None:
        y = trainer.train_data.y
        self._y_dim, self._y_dtype = y.dim(), y.dtype
        self._y_cols = 1 if y.dim() == 1 else int(y.shape[1])
        packed = torch.cat([y.float().reshape(len(y), -1), self.soft.float()], dim=1)
        trainer.train_data = Tensors(trainer.train_data.inputs, trainer.train_data.masks, packed)

    def loss(
        self,
        trainer: Trainer,
        stage: str,
        logits: torch.Tensor,
        aux: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        y: torch.Tensor,
    ) -> torch.Tensor:
        hard, soft = y[:, : self._y_cols], y[:, self._y_cols :]
        hard = (hard[:, 0] if self._y_dim == 1 else hard).to(self._y_dtype)
        base = trainer.stage_loss(stage, logits, aux, masks, hard)
        if stage == "branches":  # only the auxiliary heads train here; no fused logits to teach
            return base
        task_loss = trainer.loss_fn(logits, hard).mean()
        kd = kd_loss(trainer.spec.task.type, logits, soft, self.temperature).mean()
        return base - self.alpha * task_loss + self.alpha * kd


def student_spec(
    student: Spec | dict[str, Any] | str | Path,
    teacher: Spec,
    overrides: list[str] | None = None,
) -> Spec:
    """The student's spec; what it leaves out comes from the (first) teacher's spec.

    ``data`` and ``task`` default to the teacher's; when ``modalities`` is omitted the student
    sees exactly the modalities its ``branches`` name (their shapes come from the teacher), so
    ``branches: {signal: {type: cnn1d, width: 8}}`` is a signal-only student.
    """
    if isinstance(student, Spec):
        d = student.to_dict()
    elif isinstance(student, dict):
        d = copy.deepcopy(student)
    else:
        d = load_spec_dict(student)
    d = apply_overrides(d, overrides)
    t = teacher.to_dict()
    d.setdefault("data", t["data"])
    d.setdefault("task", t["task"])
    if not d.get("modalities"):
        names = list(d.get("branches") or {}) or list(t["modalities"])
        unknown = [n for n in names if n not in t["modalities"]]
        if unknown:
            raise SpecError(
                f"branches.{unknown[0]}",
                f"the teacher has no modality {unknown[0]!r}; give the student's 'modalities' "
                f"explicitly or use the teacher's: {', '.join(t['modalities'])}",
            )
        d["modalities"] = {n: t["modalities"][n] for n in names}
    out = parse_spec(d)
    if out.ensemble > 1:
        raise SpecError(
            "ensemble",
            f"a student is one composite; got ensemble: {out.ensemble}. Distill into one model "
            "(ensemble: 1); an ensemble can be the teacher",
        )
    return out


def _subset(split: Split, mods: list[str]) -> Split:
    return Split(
        {m: split.arrays[m] for m in mods}, {m: split.masks[m] for m in mods}, split.y, split.meta
    )


def _check_view(p: Package, view: str, s_mods: list[str]) -> None:
    shared = [m for m in s_mods if m in p.spec.modalities]
    if view != "full" and not shared:
        raise SpecError(
            "teacher_view",
            f"{view!r} needs the student to share a modality with the teacher {p.path}; the "
            f"student has {', '.join(s_mods)}, the teacher {', '.join(p.spec.modalities)}",
        )
    if view == "probe" and len(shared) != 1:
        raise SpecError(
            "teacher_view",
            f"'probe' uses the teacher's head of ONE modality; the student shares "
            f"{', '.join(shared)} with {p.path} (use 'masked' for several)",
        )


def teacher_reading(pkgs: list[Package]) -> dict[str, dict[str, Any]]:
    """What reading the data depends on in the teachers' packages (text tokenizers, category
    codes), per modality: one load of the data serves every teacher only when they agree."""
    out: dict[str, dict[str, Any]] = {}
    owner: dict[str, Path] = {}
    for p in pkgs:
        for m, st in p.meta["preprocessing"].items():
            keep = {k: st[k] for k in ("tokenizer", "categories") if st.get(k)}
            if not keep:
                continue
            if m in out and out[m] != keep:
                raise SpecError(
                    "teachers",
                    f"{p.path} reads modality {m!r} with another {' and '.join(keep)} than "
                    f"{owner[m]}: the teachers would see different inputs from the same data; "
                    "distill from teachers trained on the same data reading",
                )
            out[m], owner[m] = keep, Path(p.path)
    return out


def student_reading(reading: dict[str, dict[str, Any]], spec: Spec) -> dict[str, dict[str, Any]]:
    """The teachers' reading (the ids and codes they were trained on), plus the tokenizer a
    student's ``hf`` text branch brings; a student tokenizing a text otherwise than the
    teachers is refused (one load of the data gives every model the same ids)."""
    out = dict(reading)
    for m, st in own_tokenizers(spec).items():
        if m in out and out[m].get("tokenizer") != st["tokenizer"]:
            raise SpecError(
                f"branches.{m}",
                f"the student's hf branch reads {m!r} with its model's tokenizer, the teachers "
                "with another: distil into a student that tokenizes like the teachers (their "
                "branch type and model)",
            )
        out[m] = st
    return out


#: what a teacher sees under each ``teacher_view``, as the record says it
VIEW_TEXT = {
    "full": "all its modalities",
    "masked": "only the student's modalities (the others absent, mask 0)",
    "probe": "the auxiliary head of the student's one modality",
}


def view_logits(p: Package, split: Split, view: str, s_mods: list[str]) -> np.ndarray:
    """Teacher ``p``'s logits on ``split`` as ``view`` says (``full``, ``masked``, ``probe``)."""

    t = to_tensors(_subset(split, list(p.spec.modalities)), p.meta["preprocessing"])
    cpu = torch.device("cpu")
    if view == "full":
        return predict_logits(p.model, t, cpu)[0]
    shared = [m for m in s_mods if m in p.spec.modalities]
    if view == "probe":
        return predict_logits(p.model, t, cpu, branches=True)[1][shared[0]]
    for m in t.masks:  # masked: the student's modalities only, the rest absent
        if m not in shared:
            t.masks[m] = torch.zeros_like(t.masks[m])
            t.inputs[m] = torch.zeros_like(t.inputs[m])
    return predict_logits(p.model, t, cpu)[0]


def distill(
    teachers: list[str | Path] | str | Path,
    *,
    student: Spec | dict[str, Any] | str | Path,
    out: str | Path,
    temperature: float = 4.0,
    alpha: float = 0.7,
    teacher_view: str = "full",
    data_dir: str | Path | None = None,
    device: str = "auto",
    seed: int | None = None,
    overrides: list[str] | None = None,
    progress: bool | None = None,
    command: str | None = None,
    overwrite: bool = False,
) -> DistillResult:
    """Distill ``teachers`` (one package or several: an ensemble) into a new ``student`` package."""

    t0 = time.perf_counter()
    if not temperature > 0:
        raise SpecError("temperature", f"must be > 0; got {temperature}")
    alpha = check_fraction(alpha, "alpha", low_open=False)
    if teacher_view not in TEACHER_VIEWS:
        raise SpecError("teacher_view", not_allowed("teacher view", teacher_view, TEACHER_VIEWS))
    paths = [teachers] if isinstance(teachers, str | Path) else list(teachers)
    if not paths:
        raise SpecError("teachers", "give at least one teacher package")
    check_out(out, *paths, overwrite=overwrite)
    pkgs: list[Package] = [load_package(p, device="cpu") for p in paths]
    for path, p in zip(paths, pkgs, strict=True):
        if deployed_onnx(p.meta):  # its soft targets and "before" would be of other weights
            raise SpecError(
                "teacher",
                f"{path} is an INT8 package (medfuse quantize): it deploys model.onnx, and a "
                "teacher is read as weights, so its targets and its row in the record would "
                "come from a model it does not deploy. Distill from its fp32 source (quantize "
                "the student afterwards: quantization comes last)",
            )
    first = pkgs[0].spec
    for p in pkgs[1:]:
        s = p.spec
        if (s.task.type, s.task.labels) != (first.task.type, first.task.labels):
            raise SpecError(
                "teachers",
                f"{p.path} predicts {s.task.type} {s.task.labels}, but {pkgs[0].path} predicts "
                f"{first.task.type} {first.task.labels}; an ensemble must share its task",
            )
        if (s.data.source, s.data.options) != (first.data.source, first.data.options):
            raise SpecError(
                "teachers",
                f"{p.path} was trained on {s.data.source!r}, {pkgs[0].path} on "
                f"{first.data.source!r}: teachers must share the data the student learns from",
            )
    spec = student_spec(student, first, overrides)
    if seed is not None:
        d = spec.to_dict()
        d["train"]["seed"] = int(seed)
        spec = parse_spec(d)
    if (spec.data.source, spec.data.options) != (first.data.source, first.data.options):
        raise SpecError(
            "data",
            f"the student's data ({spec.data.source!r}) must be the teachers' "
            f"({first.data.source!r}): soft targets exist only for the teachers' samples",
        )
    seed_everything(spec.train.seed)

    # one load of the data with every modality anyone needs, so all see the same samples
    wanted: dict[str, Any] = {}
    for p in pkgs:
        wanted.update(p.spec.modalities)
    wanted.update(spec.modalities)
    bundle = load_data(
        spec.data.source,
        spec.data.options,
        data_root=data_dir,
        modalities=wanted,
        task=spec.task.type,
        on_bad_row=spec.data.on_bad_row,
        seed=first.train.seed,
        labels=spec.task.labels,  # the teachers' classes, [negative, positive] for binary
        positive=spec.task.positive_class,
        preprocessing=student_reading(teacher_reading(pkgs), spec),
    )
    s_mods = list(spec.modalities)
    spec = complete_spec(spec, {m: bundle.modalities[m] for m in s_mods}, bundle.labels)
    task, labels = spec.task.type, spec.task.labels

    # teacher logits on each split (each teacher with its own statistics, as teacher_view says)
    for p in pkgs:
        _check_view(p, teacher_view, s_mods)
    teacher_logits: dict[str, list[np.ndarray]] = {}
    for name in ("train", "val", "test"):
        split = getattr(bundle, name, None)
        if split is None:
            continue
        teacher_logits[name] = [view_logits(p, split, teacher_view, s_mods) for p in pkgs]
    soft = torch.from_numpy(soft_targets(task, teacher_logits["train"], temperature))

    student_data = DataBundle(
        _subset(bundle.train, s_mods),
        _subset(bundle.val, s_mods),
        _subset(bundle.test, s_mods) if bundle.test is not None else None,
        {m: bundle.modalities[m] for m in s_mods},
        bundle.labels,
        bundle.task,
        bundle.info,
    )
    session = start_session(spec, device)
    fitted = run_fit(
        spec,
        student_data,
        session,
        progress=progress,
        callbacks=[DistillLoss(soft, temperature, alpha)],
    )
    model = fitted.model
    if model is None:  # a rank other than 0 of a distributed run: rank 0 writes the package
        return DistillResult(Path(out), {}, {})
    metrics, stats, thr = fitted.metrics, fitted.stats, fitted.threshold
    split_name = "test" if bundle.test is not None else "val"
    ev_split = getattr(bundle, split_name)

    # the teacher (ensemble) scored as it decides: each at its own temperature (a calibrated
    # teacher's threshold lives on that scale), mean probability, its own threshold(s)
    temps = [p.info.calibration.temperature for p in pkgs]

    def ensemble_metrics(logits: list[np.ndarray]) -> dict[str, Any]:
        probs = np.mean(
            [probabilities(task, lg, t) for lg, t in zip(logits, temps, strict=True)], axis=0
        )
        thr_t = float(np.mean([p.info.threshold.value for p in pkgs]))
        return compute_metrics(task, ev_split.y, probs, thr_t, labels)

    # "before" is the teacher as it decides: every one of its modalities (its soft targets may
    # have come from another view of it, reported beside it, named)
    full = (
        teacher_logits[split_name]
        if teacher_view == "full"
        else [view_logits(p, ev_split, "full", s_mods) for p in pkgs]
    )
    teacher_eval = summary(ensemble_metrics(full))
    view_eval = (
        None if teacher_view == "full" else summary(ensemble_metrics(teacher_logits[split_name]))
    )
    student_eval = summary(metrics[split_name])
    t_params = sum(count_parameters(p.model) for p in pkgs)
    s_params = count_parameters(model)
    retained = (
        student_eval["auroc"] / teacher_eval["auroc"]
        if isinstance(teacher_eval.get("auroc"), float) and teacher_eval["auroc"] > 0
        else None
    )
    record: dict[str, Any] = {
        "method": "distill",
        "created": now(),
        "summary": (
            f"student ({', '.join(s_mods)}; {s_params:,} parameters) distilled from "
            f"{len(pkgs)} teacher(s) ({t_params:,} parameters), T={temperature:g}, alpha={alpha:g}"
        ),
        "teachers": [
            {
                **source_info(p),
                "modalities": list(p.spec.modalities),
                "parameters": count_parameters(p.model),
            }
            for p in pkgs
        ],
        "settings": {
            "temperature": float(temperature),
            "alpha": float(alpha),
            "teacher_view": teacher_view,
            "loss": "alpha*T^2*KD(student/T, teacher/T) + (1-alpha)*task loss (+ auxiliary heads)",
            "ensemble": "mean of the teachers' temperature-softened probabilities",
            "soft_targets": "computed once on the student's training samples; each teacher sees "
            + VIEW_TEXT[teacher_view]
            + ", normalised with its own statistics, without augmentation",
            "seed": spec.train.seed,
        },
        "student": {"modalities": s_mods, "parameters": s_params},
        "parameter_ratio": s_params / max(t_params, 1),
        "metrics": {
            "split": split_name,
            "n": len(ev_split),
            "before": teacher_eval,
            "after": student_eval,
            "delta": delta(teacher_eval, student_eval),
            "auroc_retained": retained,
            "note": "before = the teacher (ensemble) as it decides, every modality it has; "
            "after = the student"
            + (
                f"; teacher_view_metrics = the teacher as its soft targets saw it "
                f"({teacher_view}: {VIEW_TEXT[teacher_view]})"
                if view_eval is not None
                else ""
            ),
            **({"teacher_view_metrics": view_eval} if view_eval is not None else {}),
        },
        "command": command,
    }
    seconds = time.perf_counter() - t0
    training = {**fitted.training_record(bundle, session, seconds, command), "distilled": True}
    data_info = package_data_info(bundle)
    path = save_package(
        out,
        model=model,
        spec=spec,
        preprocessing=stats,
        threshold=thr,
        metrics=metrics,
        training=training,
        data_info=data_info,
        extra_meta={"compression": [record]},
    )
    return DistillResult(path, record, metrics)
