"""The one fit pipeline: data -> spec completion -> preprocessing statistics -> fit (one composite
or an ensemble's members) -> threshold -> metrics. ``medfuse.train``, ensembles, ``distill`` and
``prune`` all run it (:func:`run_fit`); each then writes its package its own way.

The pipeline runs inside a session (``medfuse.distributed.strategies.Session``, a
:class:`FitSession` here): one plain process, or one rank of a distributed job. Extensions of the
training loop are trainer callbacks (``medfuse.training.callbacks``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from medfuse.core.errors import SpecError
from medfuse.core.package import package_out
from medfuse.core.paths import write_output
from medfuse.core.preprocess import channel_axis, fit_stats, seen_categories
from medfuse.core.spec import Spec, complete_spec, parse_spec
from medfuse.core.text import unknown_shares
from medfuse.data import DataBundle, Split, load_spec_data
from medfuse.data.validate import check_trainable, compare_fingerprints
from medfuse.inference.helpers import Tensors, predict_logits, to_tensors
from medfuse.models import build_model, member_spec
from medfuse.models.branches.pretrained import RAW_INPUT
from medfuse.models.composite import members as members_of
from medfuse.training.callbacks import Callback
from medfuse.training.finetune import adapter_state, apply_finetune, merge_finetune
from medfuse.training.init import INIT_RECORD, init_from_package
from medfuse.training.malloc import tune_malloc
from medfuse.training.metrics import (
    SUMMARY_KEYS,
    check_operating_data,
    choose_threshold,
    compute_metrics,
    paired_subsets,
    probabilities,
    threshold_caution,
)
from medfuse.training.trainer import CHECKPOINT, HISTORY, Trainer

log = logging.getLogger("medfuse")

#: the spec a run started with, kept in its work directory so ``--resume`` can compare
RUN_SPEC = "spec.json"
#: the fingerprint of the data a run started with (``medfuse.data.validate.fingerprint``), kept
#: beside :data:`RUN_SPEC` so ``--resume`` can refuse a checkpoint trained on other data
RUN_DATA = "data.json"
#: a finished ensemble member in the work directory: its weights, its record in the metadata
MEMBER_DONE = "member{k}.safetensors"


class FitSession(Protocol):
    """This process's part in a run (``medfuse.distributed.strategies.Session``)."""

    rank: int
    restart: int
    device: torch.device

    def trainer(
        self, model: nn.Module, spec: Spec, train: Tensors, val: Tensors, **kwargs: Any
    ) -> Trainer: ...

    def finish(self, trainer: Trainer, *, end: bool = True) -> nn.Module | None: ...

    def end(self) -> None: ...

    def agree(self, obj: Any) -> Any: ...

    def gather(self, obj: Any) -> list[Any]: ...

    def resume(self, asked: bool) -> bool: ...

    def record(self) -> dict[str, Any]: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- data ------------------------------------------------------------------------------------


def prepare_data(spec: Spec, data_dir: str | Path | None = None) -> tuple[Spec, DataBundle]:
    """Load the spec's data source and complete the spec (modalities, labels, default branches)."""
    bundle = load_spec_data(spec, data_dir)  # label order, validation, fingerprint: medfuse.data
    if bundle.task != spec.task.type:
        raise SpecError(
            "task.type", f"the data is {bundle.task!r} but the spec says {spec.task.type!r}"
        )
    check_trainable(bundle)  # training only: every class has training rows, every column values
    if spec.task.type == "binary" and spec.threshold.method != "fixed" and bundle.val is not None:
        # before training, not after it: the threshold is chosen on validation
        check_operating_data(bundle.val.y, spec.threshold.method, list(bundle.labels))
    return complete_spec(spec, bundle.modalities, bundle.labels), bundle


def fit_preprocessing(spec: Spec, train: Split, info: dict[str, Any]) -> dict[str, Any]:
    axes = {
        m: channel_axis(spec.modalities[m].kind, bool(spec.modalities[m].sequence))
        for m in spec.modalities
    }
    kinds = {m: spec.modalities[m].kind for m in spec.modalities}
    streamed = (info.get("stream") or {}).get("stats") or {}  # the stream pass fitted these
    memory = [m for m in train.arrays if m not in streamed]
    stats = fit_stats(
        {m: train.arrays[m] for m in memory}, {m: train.masks[m] for m in memory}, axes, kinds
    )
    stats.update({m: dict(streamed[m]) for m in train.arrays if m in streamed})
    stats = {m: stats[m] for m in train.arrays}  # the in-memory path's order

    for m, b in spec.branches.items():
        if b.type in RAW_INPUT and m in stats:  # the branch applies its pretrained mean/std
            n = len(stats[m]["mean"])
            stats[m]["mean"], stats[m]["std"] = [0.0] * n, [1.0] * n
    offsets = info.get("token_offsets") or {}
    for m, tok in (info.get("tokenizers") or {}).items():  # text: token ids, as they are
        stats[m] = {"mean": [0.0], "std": [1.0], "channel_axis": 0, "tokenizer": tok}
        if offsets.get(m):  # a pretrained model's own tokenizer (medfuse.core.text)
            stats[m]["token_offset"] = int(offsets[m])
        ids = np.asarray(train.arrays[m])[np.asarray(train.masks[m]) > 0]
        if len(ids):  # what a text at prediction is compared with (unknown words)
            shares = unknown_shares(ids, tok, int(offsets.get(m, 0)))
            stats[m]["unknown_p99"] = round(float(np.percentile(shares, 99)), 4)
    for m, cats in (info.get("categories") or {}).items():
        if cats:
            stats[m]["categories"] = cats
            if stats[m].get("range"):  # which values the training rows hold (plausibility)
                stats[m]["range"]["seen"] = seen_categories(
                    train.arrays[m], train.masks[m], spec.modalities[m].columns or [], cats
                )
    for m in stats:
        if two := (stats[m].get("range") or {}).get("span_groups"):
            log.warning(
                "%r: the training samples' value spans fall in two groups %.0fx apart (%d around "
                "%.4g, %d around %.4g): files in two units (a CSV signal in µV beside records in "
                "mV) or on two scales? Convert them to one: the model learns both as they are, "
                "and its plausibility range then flags neither at prediction",
                m,
                two["high"] / two["low"],
                two["low_n"],
                two["low"],
                two["high_n"],
                two["high"],
            )
        if spec.modalities[m].kind == "image":  # photos read turned as their EXIF tag says
            stats[m]["exif_oriented"] = True
        # whether the model learns from samples without it (a prediction flag)
        some_missing = bool((np.asarray(train.masks[m]) <= 0).any())
        stats[m]["trained_without"] = some_missing or spec.train.modality_dropout.get(m, 0) > 0
    return stats


def package_data_info(bundle: DataBundle) -> dict[str, Any]:
    """What a package records of its data source: name, synthetic or not, file, options."""
    keep = (
        "name",
        "synthetic",
        "file",
        "options",
        "manifest",
        "fingerprint",
        "scales",
        "aspects",
        "layout",
        "overlap",
    )
    return {k: v for k, v in bundle.info.items() if k in keep}


def selection_text(spec: Spec) -> str:
    """How the kept epoch is chosen, in words."""
    t = spec.train
    if t.keep == "last":
        return "the last epoch is kept (train.keep: last; no epoch selection, no early stopping)"
    es = t.early_stopping
    key = es.metric if es is not None else "auroc"
    metric = "val_loss" if key == "loss" else f"val_{key}"
    stop = f", early stopping after {es.patience} epochs without gain" if es else ""
    return f"the epoch with the best {metric} is kept (train.keep: best{stop})"


def data_summary(spec: Spec, bundle: DataBundle) -> str:
    """What training is about to see: rows, patients and class counts per split, the label order
    (and positive class), each modality's presence rate, and how the kept epoch is chosen."""
    labels = list(spec.task.labels or bundle.labels)
    kind = spec.task.type
    lines = [f"data: {bundle.info.get('name', spec.data.source)}, {kind} task"]
    if kind == "binary" and len(labels) == 2:
        positive = getattr(spec.task, "positive", None) or labels[1]
        lines.append(f"  labels (in order): {labels}; positive class: {positive!r}")
    else:
        lines.append(f"  labels (in order): {labels}")
    splits = [(n, getattr(bundle, n)) for n in ("train", "val", "test")]
    for name, split in splits:
        if split is None:
            continue
        parts = [f"{len(split)} rows"]
        if "patient_id" in split.meta:
            parts.append(f"{split.meta['patient_id'].nunique()} patients")
        y = np.asarray(split.y)
        if kind == "multilabel":
            counts = (y.reshape(len(y), -1) > 0.5).sum(axis=0)
            pos = ", ".join(f"{lab}: {int(c)}" for lab, c in zip(labels, counts, strict=False))
            parts.append(f"positives {pos}")
        else:
            counts = np.bincount(y.astype(int).ravel(), minlength=len(labels))
            parts.append(
                ", ".join(f"{lab}: {int(c)}" for lab, c in zip(labels, counts, strict=False))
            )
        lines.append(f"  {name:5s}: " + "; ".join(parts))
    rates = []
    for m in spec.modalities:
        present = [np.asarray(s.masks[m]) for _, s in splits if s is not None and m in s.masks]
        if present:
            rate = float(np.concatenate(present).astype(float).mean())
            rates.append(f"{m} {rate:.0%}")
    lines.append("  modalities present: " + ", ".join(rates))
    lines.append(f"  selection: {selection_text(spec)}")
    return "\n".join(lines)


# ---- output and resume checks ------------------------------------------------------------------


def check_out(out: Path, *, overwrite: bool) -> None:
    """Before any training: ``out`` must be absent, empty, or (with ``overwrite``) a package,
    and lie where it can be written."""
    if out.exists() and not out.is_dir():
        raise SpecError("--out", f"{out} exists and is a file, not a package directory")
    package_out(out, overwrite=overwrite)  # the one check every verb writing a package makes


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


#: spec fields a resume may change when named in the override list: training settings only (a
#: model's shape, data and task are what the checkpoint's weights are)
RESUMABLE = ("train.", "threshold.", "name", "data.stream", "data.workers")


def work_dir(out: Path) -> Path:
    """Where a run writing the package ``out`` keeps its checkpoints: ``<out>.train``."""
    return out.with_name(out.name + ".train")


def left_checkpoint(out: Path) -> bool:
    """Whether a run writing ``out`` left something ``--resume`` continues."""
    return has_checkpoint(work_dir(Path(out)))


def has_checkpoint(workdir: Path) -> bool:
    """Whether ``workdir`` holds something a resume continues (a checkpoint, ensemble members)."""
    return (workdir / CHECKPOINT).exists() or bool(list(workdir.glob("member*")))


def data_problem(workdir: Path, now: dict[str, Any] | None) -> str | None:
    """Why a resume must not continue on the data whose fingerprint is ``now``: the checkpoint's
    weights were trained on the data recorded in ``workdir`` (:data:`RUN_DATA`), normalised with
    statistics fitted on it, and a resume refits them on the data loaded now. ``None`` when every
    recorded split is the same; a work directory without the record (an older medfuse) is not
    refused, it is logged as unchecked."""
    saved = workdir / RUN_DATA
    if not saved.exists() or now is None:
        if has_checkpoint(workdir):
            why = "it records no data fingerprint (an older medfuse wrote it)"
            if now is None:
                why = "the data loaded now carries no fingerprint"
            log.warning(
                "the data could not be checked against the checkpoint in %s: %s; resuming on "
                "the data as loaded now, which must be the data the checkpoint was trained on",
                workdir,
                why,
            )
        return None
    recorded = json.loads(saved.read_text())
    check = compare_fingerprints(recorded, json.loads(json.dumps(now)))  # as recorded: JSON
    # the splits the weights and the epoch's choice depend on (the test split only scores)
    changed = {
        n: c["differences"] for n, c in check.items() if not c["same"] and n in ("train", "val")
    }
    if not changed:
        return None
    shown = "; ".join(f"the {n} split: {', '.join(d)}" for n, d in changed.items())
    return (
        f"the data differs from the data the checkpoint in {workdir} was trained on, in "
        f"{shown}. The checkpoint's weights were trained on the recorded data and normalised "
        "with statistics fitted on it; resuming would train them on other data under another "
        "normalisation. Start without --resume, or point the spec back at the data the "
        "checkpoint was trained on"
    )


def check_resume(
    spec: Spec,
    workdir: Path,
    allowed: list[str] | None,
    session: FitSession,
    data: dict[str, Any] | None = None,
) -> list[str]:
    """On ``--resume``: the spec must be the one the checkpoint was trained with, except the
    fields in ``allowed`` (``train.*`` and ``threshold.*`` only), and the data (its fingerprint
    ``data``) the one it was trained on (:func:`data_problem`). Returns the fields that differ
    and were allowed (recorded in the package); raises SpecError naming the others or the data's
    changed splits. Rank 0 decides (its disk); every rank follows."""
    allowed = list(allowed or [])
    for a in allowed:
        if not a.startswith(RESUMABLE):
            raise SpecError(
                "--resume-override",
                f"{a!r} cannot change on resume: only training settings (train.*, threshold.*) "
                "may; a change of the model, data or task needs a new run",
            )
    saved = workdir / RUN_SPEC
    problem: Any = None
    changed: list[str] = []
    if session.rank == 0:
        if not has_checkpoint(workdir):  # a mistyped --out would retrain the whole run unsaid
            log.warning(
                "--resume: no checkpoint in %s (nothing to resume there): training from the start",
                workdir,
            )
        if not saved.exists():
            if has_checkpoint(workdir):
                problem = (
                    f"the checkpoint in {workdir} records no spec (an older medfuse wrote it), so "
                    "it cannot be checked against this one; start without --resume"
                )
        else:
            old, new = _flat(json.loads(saved.read_text())), _flat(spec.to_dict())
            diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            ok = {k for k in diff if any(k == a or k.startswith(a + ".") for a in allowed)}
            refused = [k for k in diff if k not in ok]
            if refused:
                shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in refused[:8])
                more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
                arch = [k for k in refused if not k.startswith(RESUMABLE)]
                hint = (
                    "; the model, data or task changed, which a checkpoint cannot follow: start "
                    "without --resume"
                    if arch
                    else "; to resume with them anyway name them: --resume-override "
                    + " --resume-override ".join(refused[:3])
                )
                problem = (
                    f"the spec differs from the checkpoint's in {workdir}: {shown}{more}{hint}"
                )
            changed = sorted(ok)
        if problem is None:
            problem = data_problem(workdir, data)
    problem, changed = session.agree((problem, changed))
    if problem:
        raise SpecError("--resume", problem)
    return changed


# ---- fit --------------------------------------------------------------------------------------


@dataclass
class FitContext:
    """What every model fitted in one run shares."""

    session: FitSession
    train: Tensors
    val: Tensors
    resume: bool = False
    progress: bool | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    callbacks: list[Callback] = field(default_factory=list)
    #: this rank's data reads (``rank_usage``), and every rank's once a member is fitted
    usage: dict[str, Any] = field(default_factory=dict)
    ranks: list[dict[str, Any]] = field(default_factory=list)
    #: the preprocessing the splits were normalised with (its text categories: ``train.init``)
    stats: dict[str, Any] = field(default_factory=dict)


def fit_member(
    spec: Spec,
    fit: FitContext,
    workdir: Path | None,
    *,
    model: nn.Module | None = None,
    end: bool = True,
) -> tuple[nn.Module | None, list[dict[str, Any]], dict[str, Any] | None]:
    """Build (unless ``model`` is given) and fit one composite; the trained model on rank 0.
    ``end``: end a distributed session afterwards (false for an ensemble's members)."""

    seed_everything(spec.train.seed)
    resume = fit.session.resume(fit.resume)
    init_record = None
    if model is None:
        model = build_model(spec)
        if spec.train.init is not None:  # before the trainer (and any checkpoint) takes over
            init_record = _init_weights(model, spec, workdir, resume, fit)
    tuned = apply_finetune(model, spec)  # LoRA adapters in, before any checkpoint is restored
    trainer = fit.session.trainer(
        model,
        spec,
        fit.train,
        fit.val,
        workdir=workdir,
        progress=fit.progress,
        on_epoch=fit.on_epoch,
        callbacks=list(fit.callbacks),
    )
    trainer.fit(resume=resume)
    # collective, before finish ends the group: every rank's reads and peak memory
    fit.ranks = fit.session.gather({**fit.usage, **peak_rss()})
    fitted = fit.session.finish(trainer, end=end)
    if fitted is not None and tuned is not None:
        if spec.train.peft is not None and spec.train.peft.store == "adapter":
            fitted.adapter_state = adapter_state(fitted, spec)  # type: ignore[assignment]
        fitted = merge_finetune(fitted)  # the package holds the plain architecture
        fitted.finetune_record = tuned  # type: ignore[assignment]  # read by run_fit
    return fitted, trainer.stage_results, init_record


def _init_weights(
    model: nn.Module, spec: Spec, workdir: Path | None, resume: bool, fit: FitContext
) -> dict[str, Any]:

    assert spec.train.init is not None
    saved = workdir / INIT_RECORD if workdir is not None else None
    if resume and saved is not None and (saved.parent / CHECKPOINT).exists() and saved.exists():
        return json.loads(saved.read_text())  # the checkpoint has the weights
    codes = {m: st["categories"] for m, st in fit.stats.items() if st.get("categories")}
    record = init_from_package(model, spec.train.init, spec, codes)
    if fit.session.rank == 0 and saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(record))
    return record


def fit_ensemble(
    spec: Spec, fit: FitContext, workdir: Path
) -> tuple[nn.Module | None, list[dict[str, Any]], dict[str, Any] | None, list[dict]]:
    """Fit ``spec.ensemble`` members one after another, each as its own run (seed
    ``train.seed + 1000 k``, its own early stopping and checkpoints under ``workdir/member<k>``).
    A finished member is saved in the workdir (one file: its weights, its record in the
    metadata), so ``--resume`` retrains only the unfinished ones. Returns the EnsembleModel
    (rank 0), member 0's stages, its init record, and a record per member."""
    # lazy: safetensors (torch), only to read or write weights
    from safetensors import safe_open

    # lazy: safetensors (torch), only to read or write weights
    from safetensors.torch import load_file, save_file

    session = fit.session
    fit = replace(fit, resume=session.resume(fit.resume))  # a torchrun restart resumes
    if not fit.resume and session.rank == 0:  # a fresh run: nothing of an earlier one is kept
        (workdir / HISTORY).unlink(missing_ok=True)
        for old in workdir.glob("member*.*"):
            old.unlink()
    ens = build_model(spec) if session.rank == 0 else None
    records: list[dict[str, Any]] = []
    for k in range(spec.ensemble):
        mspec = member_spec(spec, k)
        done = workdir / MEMBER_DONE.format(k=k)
        rec = None  # rank 0 reads its disk; every rank follows its decision
        if session.rank == 0 and fit.resume and done.exists():
            with safe_open(str(done), framework="pt") as f:
                rec = json.loads(f.metadata()["record"])
            ens.members[k].load_state_dict(load_file(str(done)), strict=True)  # type: ignore[union-attr]
        rec = session.agree(rec)
        if rec is not None:
            log.info("ensemble member %d/%d: already trained, kept", k + 1, spec.ensemble)
        else:
            log.info("ensemble member %d/%d (seed %d)", k + 1, spec.ensemble, mspec.train.seed)
            t_k = time.perf_counter()
            mdir = workdir / f"member{k}"
            model, stages, init_k = fit_member(mspec, fit, mdir, end=False)
            seconds = round(time.perf_counter() - t_k, 2)
            rec = {"seed": mspec.train.seed, "stages": stages, "init": init_k, "seconds": seconds}
            if model is not None:  # rank 0
                ens.members[k].load_state_dict(model.state_dict(), strict=True)  # type: ignore[union-attr]
                state = {n: v.detach().cpu().contiguous() for n, v in model.state_dict().items()}
                workdir.mkdir(parents=True, exist_ok=True)
                merge_history(workdir / HISTORY, mdir / HISTORY, k)  # before: a retry redoes it
                tmp = done.with_name(done.name + ".tmp")
                save_file(state, str(tmp), metadata={"record": json.dumps(rec)})
                tmp.replace(done)  # atomic: a member file is whole or absent
                shutil.rmtree(mdir, ignore_errors=True)
        records.append(rec)
    session.end()
    init_record = records[0].get("init")
    records = [{key: v for key, v in r.items() if key != "init"} for r in records]
    if ens is None:
        return None, [], init_record, records
    return ens.to(session.device), records[0]["stages"], init_record, records


def merge_history(merged: Path, member_file: Path, k: int) -> None:
    """Member ``k``'s epochs into the ensemble's ``metrics.jsonl`` (tagged ``member``), replacing
    any of its lines an interrupted earlier attempt left there."""
    keep = []
    if merged.exists():
        keep = [x for x in merged.read_text().splitlines() if json.loads(x).get("member") != k]
    if member_file.exists():
        keep += [
            json.dumps({"member": k, **json.loads(x)}) for x in member_file.read_text().splitlines()
        ]
    tmp = merged.with_name(merged.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    tmp.replace(merged)


# ---- threshold and metrics ---------------------------------------------------------------------


def threshold_for(spec: Spec, y_val: np.ndarray, p_val: np.ndarray) -> dict[str, Any]:
    t = spec.threshold
    if spec.task.type == "multiclass":
        return {"method": "argmax", "value": 0.5}
    if spec.task.type == "multilabel":  # one fixed threshold for every label (complete_spec)
        fixed = t.method == "fixed" and t.value is not None
        return {"method": "fixed", "value": float(t.value) if fixed else 0.5}
    value = choose_threshold(y_val, p_val, t.method, t.target, t.value)
    out = {"method": t.method, "target": t.target, "value": value, "chosen_on": "val"}
    if caution := threshold_caution(y_val, p_val, t.method):
        log.warning("threshold (%s, %.4g): %s", t.method, value, caution)
        out["caution"] = caution
    return out


#: what a branch's auxiliary head alone is reported with: threshold-free, uncalibrated
BRANCH_KEYS = ("auroc", "auprc", "brier")


@dataclass
class SplitScores:
    """One split scored once: what every evaluation row is computed from (``medfuse evaluate``'s
    table, its CIs, the report, training's val/test metrics). Logits, not probabilities: each
    consumer applies the package's temperature where it means to."""

    y: np.ndarray
    logits: np.ndarray  # fused, (N, K)
    masks: dict[str, np.ndarray]  # per modality, (N,): 1 where present
    #: each branch's auxiliary head alone (its logits); ``None``: scored without ``branches``
    branches: dict[str, np.ndarray] | None = None
    #: the fused logits with each modality absent (inputs zeroed, mask 0), with ``branches``
    without: dict[str, np.ndarray] = field(default_factory=dict)


def score_split(
    model: nn.Module, spec: Spec, data: Tensors, device: torch.device, *, branches: bool = True
) -> SplitScores:
    """Score a split: the fused logits and, with ``branches``, each branch's auxiliary head (the
    same forward pass) and, for a model of several modalities, the fused logits with each one
    removed (one more pass each)."""
    bf16 = spec.train.bf16
    masks = {m: data.masks[m].numpy() for m in spec.modalities}
    if not len(data):  # e.g. an external test set's empty val split: no batch to run
        none = np.zeros((0, spec.num_outputs), np.float32)
        per = {m: none for m in masks} if branches else None
        return SplitScores(data.y.numpy(), none, masks, per)
    logits, per = predict_logits(model, data, device, bf16=bf16, branches=branches)
    out = SplitScores(data.y.numpy(), logits, masks, per if branches else None)
    if branches and len(spec.modalities) > 1:
        for m in spec.modalities:
            out.without[m], _ = predict_logits(model, data.without(m), device, bf16=bf16)
    return out


def scores_metrics(
    spec: Spec, s: SplitScores, threshold: float, *, temperature: float = 1.0
) -> dict[str, Any]:
    """Fused metrics, the fully paired and partial samples' (when some miss a modality), each
    branch alone on the rows that have it, each modality removed; every fused probability at
    ``temperature`` (a calibrated package's: its threshold lives on that scale, so every fused
    row is scored as the package decides). A branch alone is its auxiliary head, which the
    package never decides with: uncalibrated; for a binary task threshold-free (AUROC, AUPRC,
    Brier, as the clinical evaluation reports it: it was at the fused temperature and threshold
    here), for multiclass (argmax) and multilabel (0.5) with the head's own decisions."""
    task, labels = spec.task.type, spec.task.labels
    y = s.y

    def probs(lg: np.ndarray) -> np.ndarray:
        return probabilities(task, lg, temperature)

    def summary(sel: np.ndarray | None, lg: np.ndarray) -> dict[str, Any]:
        mm = compute_metrics(task, y if sel is None else y[sel], probs(lg), threshold, labels)
        return {k: mm[k] for k in SUMMARY_KEYS if k in mm}

    out = compute_metrics(task, y, probs(s.logits), threshold, labels)
    # some samples miss a modality: the fully paired subset vs the others
    for key, sel in paired_subsets([s.masks[m] for m in spec.modalities]):
        out[key] = {"n": int(sel.sum())}
        if sel.any():
            out[key].update(summary(sel, s.logits[sel]))
    if s.branches is not None:
        out["branches"] = {}
        for m, lg in s.branches.items():
            present = s.masks[m] > 0
            if present.sum() >= 2:
                # on the rows that have the modality: n says how many (the fused row's are all)
                mm = compute_metrics(
                    task, y[present], probabilities(task, lg[present]), 0.5, labels
                )
                out["branches"][m] = {"n": int(present.sum())}
                # binary: no decision metric (the package's threshold is the fused model's);
                # multiclass decides by argmax, multilabel at 0.5: the head's own decisions
                keys = BRANCH_KEYS if task == "binary" else SUMMARY_KEYS
                out["branches"][m].update({k: mm[k] for k in keys if k in mm})
    if s.without:
        out["without"] = {m: summary(None, lg) for m, lg in s.without.items()}
    return out


def split_metrics(
    model: nn.Module,
    spec: Spec,
    data: Tensors,
    threshold: float,
    device: torch.device,
    *,
    branches: bool = True,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """:func:`scores_metrics` of the split scored by :func:`score_split`."""
    scores = score_split(model, spec, data, device, branches=branches)
    return scores_metrics(spec, scores, threshold, temperature=temperature)


def threshold_and_metrics(
    model: nn.Module,
    spec: Spec,
    val: Tensors,
    test: Tensors | None,
    device: torch.device,
    y_val: np.ndarray,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The decision threshold chosen on validation, and the val (and test) metrics at it; each
    split scored once (:func:`score_split`)."""
    scored = score_split(model, spec, val, device)
    thr = threshold_for(spec, y_val, probabilities(spec.task.type, scored.logits))
    metrics = {"val": scores_metrics(spec, scored, thr["value"])}
    if test is not None:
        metrics["test"] = split_metrics(model, spec, test, thr["value"], device)
    return thr, metrics


# ---- the pipeline ------------------------------------------------------------------------------


@dataclass
class FitOutcome:
    """A fitted model (``None`` on ranks other than 0) and what its package records."""

    spec: Spec
    model: nn.Module | None
    stats: dict[str, Any]
    threshold: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    init_record: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    #: the adapter weights before the merge (``train.peft.store: adapter``)
    adapter: dict[str, torch.Tensor] | None = None
    members: list[dict[str, Any]] | None = None
    resume_overrides: list[str] = field(default_factory=list)
    #: per rank: the stream pass's counts and the process's peak memory (:func:`rank_usage`)
    ranks: list[dict[str, Any]] = field(default_factory=list)

    def training_record(
        self, bundle: DataBundle, session: FitSession, seconds: float, command: str | None
    ) -> dict[str, Any]:
        """The package's ``training`` section."""
        out: dict[str, Any] = {
            "stages": self.stages,
            "seconds": round(seconds, 2),
            "device": str(session.device),
            **session.record(),
            "seed": self.spec.train.seed,
            "samples": {
                "train": len(bundle.train),
                "val": len(bundle.val),
                "test": len(bundle.test) if bundle.test is not None else 0,
            },
            "command": command,
        }
        if self.init_record is not None:
            out["init"] = self.init_record
        if self.finetune is not None:
            out["finetune"] = self.finetune
        if self.members is not None:
            out["members"] = self.members
        if self.resume_overrides:
            out["resume_overrides"] = self.resume_overrides
        if self.ranks:
            out["ranks"] = self.ranks
        return out


def rank_usage(bundle: DataBundle, rank: int) -> dict[str, Any]:
    """This process's data reads: the files the stream pass decoded and the cache rows it read
    (``recorded``: the pass's result came from an earlier pass, nothing was read)."""
    out: dict[str, Any] = {"rank": rank}
    st = bundle.info.get("stream")
    if st:
        out["decoded"] = int(sum(st["decoded"].values()))
        out["cached"] = int(sum(st["cached"].values()))
        out["recorded"] = bool(st.get("recorded"))
        out["pass_workers"] = int(st.get("workers", 0))
    return out


def peak_rss() -> dict[str, float]:
    """The peak RSS of this process and of its largest finished child (a DataLoader worker),
    MiB (Linux reports KiB); empty where the platform has no ``resource`` module (Windows)."""
    try:
        import resource  # lazy: POSIX only (absent on Windows)
    except ImportError:
        return {}
    unit = 1024 * 1024 if sys.platform == "darwin" else 1024  # macOS reports bytes
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / unit
    return {"peak_rss_mib": round(me, 1), "workers_peak_rss_mib": round(kids, 1)}


def run_fit(
    spec: Spec,
    bundle: DataBundle,
    session: FitSession,
    *,
    workdir: Path | None = None,
    stats: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    resume: bool = False,
    resume_overrides: list[str] | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    callbacks: list[Callback] | None = None,
    summary: bool = True,
) -> FitOutcome:
    """Preprocessing statistics (fitted on train unless given) -> fit (one composite, ``model``
    when given, or ``spec.ensemble`` members) -> threshold -> metrics, for a completed ``spec``
    and its loaded ``bundle``."""
    if summary and session.rank == 0:
        log.info("%s", data_summary(spec, bundle))
    if torch.device(session.device).type == "cpu":
        tune_malloc()
    changed: list[str] = []
    previous: str | None = None  # the checkpoint's spec record, put back if the resume is refused
    if workdir is not None:
        if session.resume(resume):  # asked, or a torchrun restart: its data checked as well
            changed = check_resume(
                spec, workdir, resume_overrides, session, bundle.info.get("fingerprint")
            )
            with contextlib.suppress(OSError):
                previous = (workdir / RUN_SPEC).read_text()
        elif resume_overrides:
            raise SpecError("--resume-override", "is for --resume only")
        if session.rank == 0:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / RUN_SPEC).write_text(json.dumps(spec.to_dict()))
            data = bundle.info.get("fingerprint")
            if data is not None:  # what the checkpoints of this run are trained on
                write_output(workdir / RUN_DATA, json.dumps(data), "--out")
            else:  # never another run's record
                (workdir / RUN_DATA).unlink(missing_ok=True)
    if stats is None:
        stats = fit_preprocessing(spec, bundle.train, bundle.info)
    w = spec.data.workers
    train_t = to_tensors(bundle.train, stats, workers=w)
    val_t = to_tensors(bundle.val, stats, workers=w)
    fit = FitContext(session, train_t, val_t, resume, progress, on_epoch, list(callbacks or []))
    fit.usage = rank_usage(bundle, session.rank)
    fit.stats = stats
    members = None
    try:
        if spec.ensemble == 1:
            fitted, stages, init_record = fit_member(spec, fit, workdir, model=model)
        else:
            if model is not None or workdir is None:
                raise SpecError(
                    "ensemble", "an ensemble is fitted from its spec, in a work directory"
                )
            fitted, stages, init_record, members = fit_ensemble(spec, fit, workdir)
    except SpecError:
        # a checkpoint the trainer refused to resume (another ranking, fewer epochs, another
        # architecture): its work directory keeps the spec it was trained with
        if previous is not None and workdir is not None and session.rank == 0:
            (workdir / RUN_SPEC).write_text(previous)
        raise
    out = FitOutcome(spec, fitted, stats, stages=stages, init_record=init_record, members=members)
    out.resume_overrides = changed
    out.ranks = fit.ranks
    if fitted is None:
        return out
    fitted = fitted.eval()
    out.model = fitted

    out.finetune = getattr(fitted, "finetune_record", None)
    out.adapter = getattr(fitted, "adapter_state", None)
    if out.finetune is None and members:  # an ensemble: its first member's record
        first = members_of(fitted)[0]
        out.finetune = getattr(first, "finetune_record", None)
    test_t = to_tensors(bundle.test, stats, workers=w) if bundle.test is not None else None
    out.threshold, out.metrics = threshold_and_metrics(
        fitted, spec, val_t, test_t, session.device, bundle.val.y
    )
    return out


def with_seed(spec: Spec, seed: int | None = None, strategy: str | None = None) -> Spec:
    """``spec`` with ``train.seed`` and ``train.strategy`` replaced where given."""
    if seed is None and strategy is None:
        return spec
    d = spec.to_dict()
    if seed is not None:
        d["train"]["seed"] = int(seed)
    if strategy is not None:
        d["train"]["strategy"] = strategy
    return parse_spec(d)
