"""The trainer: staged or end-to-end, AdamW or Nesterov SGD + cosine/one-cycle, early stopping
with best restore, bf16 autocast, progress bar, ``metrics.jsonl``, and resumable checkpoints
(atomic, per epoch or every N steps) that survive a ``kill -9``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medfuse.core.errors import SpecError
from medfuse.core.spec import Spec, StageSpec
from medfuse.inference.helpers import Tensors, predict_logits
from medfuse.training.augment import augment_batch, mixup_batch
from medfuse.training.finetune import is_trainable, param_groups
from medfuse.training.losses import TaskLoss
from medfuse.training.metrics import compute_metrics, probabilities

log = logging.getLogger("medfuse.train")
CHECKPOINT = "checkpoint.pt"
HISTORY = "metrics.jsonl"
#: fewer validation samples than this in a class: a warning when the best epoch is picked on it
SMALL_VALIDATION_CLASS = 30


def _sam_second_step(
    model: nn.Module,
    params: list[nn.Parameter],
    rho: float,
    forward_loss: Callable[[], torch.Tensor],
) -> None:
    """Sharpness-aware minimization (Foret et al., 2021): move the weights by ``rho`` along
    their gradient (the worst nearby point, to first order), take the gradient there, and move
    back; the optimizer then steps from the original weights with that gradient. BatchNorm
    running statistics are left as the first (unperturbed) pass set them."""
    with torch.no_grad():
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = rho / (norm + 1e-12)
        shifts = [None if p.grad is None else p.grad * scale for p in params]
        for p, e in zip(params, shifts, strict=True):
            if e is not None:
                p.add_(e)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0  # running = (1 - 0) * running: unchanged by the perturbed pass
    try:
        for p in params:
            p.grad = None
        forward_loss().backward()
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        with torch.no_grad():
            for p, e in zip(params, shifts, strict=True):
                if e is not None:
                    p.sub_(e)


def order_digest(prev: str, idx: Any) -> str:
    """A running SHA-256 over the positions of the batches trained, in order: equal digests at
    the end of an epoch mean the same samples in the same order (resumable: it is a string)."""
    pos = ",".join(str(int(i)) for i in idx)
    return hashlib.sha256(f"{prev}|{pos}".encode()).hexdigest()


def padded(perm: torch.Tensor, world: int) -> torch.Tensor:
    """``perm`` padded (from its start) to a multiple of ``world``, as DistributedSampler pads.

    An epoch's order is one such padded permutation for every world size: with a global batch
    ``b`` (divisible by ``world``) rank ``r`` trains positions ``r::world`` of its slice
    ``[s*b, (s+1)*b)`` at step ``s``, so the global batch of a step is the same set of samples
    for any world; only the padding of a last, partial batch depends on the world."""
    n = len(perm)
    total = math.ceil(n / world) * world
    return perm if total == n else perm[torch.arange(total) % n]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class StageRun:
    """One stage while it trains: its optimizer and schedule, and what early stopping tracks."""

    index: int
    name: str
    epochs: int
    params: list[nn.Parameter]
    model: nn.Module  # the model as the strategy wraps it for this stage
    opt: torch.optim.Optimizer | None  # None: the state after a stage ended
    sched: Any
    aux_mode: str
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = -1
    bad: int = 0
    start_epoch: int = 0
    start_step: int = 0
    #: a step-level checkpoint's partial epoch: this rank's share of the train-loss sum and
    #: sample count so far (the checkpoint holds the sums over all ranks)
    partial: tuple[float, int] = (0.0, 0)
    #: ... the digest of this rank's sample order so far (:func:`order_digest`)
    partial_order: str = ""
    #: ... and of the global batches so far (world-independent; ``None``: a checkpoint written
    #: before medfuse recorded it, so the epoch's global digest is unknown)
    partial_global: str | None = ""
    #: the world size of a mid-epoch checkpoint written by another number of processes
    resumed_from_world: int | None = None
    stopped: bool = False
    ema: Any = None


class Callback:
    """Hooks into the training loop; every hook does nothing unless overridden."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first stage (and before a checkpoint is loaded)."""

    def on_checkpoint_load(self, trainer: Trainer, ckpt: dict[str, Any] | None) -> Any:
        """The checkpoint to resume from (rank 0 read it; other ranks get ``None``)."""
        return ckpt

    def on_stage_start(self, trainer: Trainer, run: StageRun) -> None:
        """A stage with something to train begins."""

    def loss(
        self,
        trainer: Trainer,
        stage: str,
        logits: torch.Tensor,
        aux: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        y: torch.Tensor,
    ) -> torch.Tensor | None:
        """The loss of one forward pass, or ``None`` for the trainer's own."""
        return None

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """An epoch's record (``metrics.jsonl`` line), before it is logged and printed."""

    def on_checkpoint_save(self, trainer: Trainer, state: dict[str, Any]) -> None:
        """The checkpoint state, before rank 0 writes it (collective: every rank calls it)."""

    def on_stage_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        """A stage ended (``result``: its entry in ``trainer.stage_results``)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Training is over; the kept weights are loaded."""


class EpochFunction(Callback):
    """A plain function called with each epoch's record after it is final (e.g. MLflow)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.fn(record)


class Trainer:
    """Fits a CompositeModel with the stages of ``spec.train``.

    Extensions hook in through ``callbacks`` (``medfuse.training.callbacks.Callback``):
    distillation adds a loss term, the distributed strategies broadcast the checkpoint and
    average the logged loss. The model passed in may be wrapped (DDP/FSDP) and ``rank``/``world``
    shard each epoch's batches.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: Spec,
        train: Tensors,
        val: Tensors,
        *,
        device: torch.device,
        workdir: Path | None = None,
        progress: bool | None = None,
        rank: int = 0,
        world: int = 1,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.model = model.to(device)
        self.spec = spec
        self.train_data, self.val_data = train, val
        self.device = device
        self.workdir = workdir
        self.rank, self.world = rank, world
        self.wrap = wrap or (lambda m: m)
        self.callbacks: list[Callback] = list(callbacks or [])
        if on_epoch is not None:  # last: it sees each record as it is logged
            self.callbacks.append(EpochFunction(on_epoch))
        self.progress = (sys.stderr.isatty() if progress is None else progress) and rank == 0
        t = spec.train
        self.loss_fn = TaskLoss(
            spec.task.type,
            train.y.numpy(),
            class_weights=t.class_weights,
            label_smoothing=t.label_smoothing,
            num_outputs=spec.num_outputs,
        ).to(device)
        self.history: list[dict[str, Any]] = []
        #: this rank's last training pass: data-wait seconds, samples, seconds
        self.last_epoch: dict[str, float] = {}
        self.epoch_share: dict[str, Any] = {}
        self.epoch_order: str | None = ""
        #: the validation samples this rank read in its last validation (its shard)
        self.val_read = 0
        self.stage_results: list[dict[str, Any]] = []

    # -- helpers --------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _stage_params(self, stage: str) -> list[nn.Parameter]:
        for name, p in self.model.named_parameters():
            top = name.split(".")[0]
            if stage == "branches":
                on = top in ("branches", "aux_heads")
            elif stage == "fusion":
                on = top in ("fusion", "head")
            else:  # end_to_end, finetune: everything; aux heads probe detached features
                on = True
            p.requires_grad_(on and is_trainable(self.spec, name))  # train.freeze, train.peft
        return [p for p in self.model.parameters() if p.requires_grad]

    def _set_modes(self, stage: str) -> None:
        self.model.train()
        if stage == "fusion":
            self.model.branches.eval()  # frozen branches keep their batch-norm statistics

    def _shard(self, perm: torch.Tensor) -> torch.Tensor:
        """This rank's positions of ``perm``, like DistributedSampler: padded (from its start) to a
        multiple of world, interleaved; every rank gets as many."""
        if self.world == 1:
            return perm
        return padded(perm, self.world)[self.rank :: self.world]

    def _global_order(self, seed: int) -> torch.Tensor:
        """The epoch's permutation of the training set, padded to a multiple of the world: the
        same on every rank (step ``s`` trains its slice ``[s*B, (s+1)*B)``, B the global batch)."""
        g = torch.Generator().manual_seed(seed)
        return padded(torch.randperm(len(self.train_data), generator=g), self.world)

    def _epoch_order(self, seed: int) -> torch.Tensor:
        """This rank's positions of the epoch (its share of every global batch, in order)."""
        return self._shard(self._global_order(seed))

    def _val_logits(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Validation logits (fused, per branch) of the whole split. In a process group each rank
        predicts its shard (as many batches on every rank, so FSDP's collectives pair up) and
        the shards are gathered: every rank reads only its part and gets every logit."""
        sharded = self.world > 1 and torch.distributed.is_initialized()
        n = len(self.val_data)
        mine = self._shard(torch.arange(n)) if sharded else None
        self.val_read = n if mine is None else len(mine)
        out = predict_logits(
            self.model,
            self.val_data,
            self.device,
            bf16=self.spec.train.bf16,
            branches=True,
            positions=mine,
        )
        if not sharded:
            return out
        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, out)
        total = math.ceil(n / self.world) * self.world

        def join(arrays: list[np.ndarray]) -> np.ndarray:
            full = np.empty((total, *arrays[0].shape[1:]), arrays[0].dtype)
            for r, a in enumerate(arrays):
                full[r :: self.world] = a
            return full[:n]  # the padding repeats the first positions: dropped

        fused = join([p[0] for p in parts])
        return fused, {m: join([p[1][m] for p in parts]) for m in parts[0][1]}

    def selection_metric(self, stage: str) -> str:
        """The name of the validation metric that ranks epochs (as printed and logged)."""
        es = self.spec.train.early_stopping
        key = es.metric if es else "auroc"
        if key == "loss":
            return "val_loss"
        return f"val_{key} (mean over branches)" if stage == "branches" else f"val_{key}"

    def _selection(self, stage: str) -> dict[str, Any]:
        es = self.spec.train.early_stopping
        return {"stage": stage, "metric": self.selection_metric(stage),
                "keep": self.spec.train.keep, "maximize": bool(es is None or es.maximize)}  # fmt: skip

    def _check_selection(self, run: StageRun, ckpt: dict[str, Any]) -> None:
        """A resumed stage must rank epochs as the checkpoint did (its best epoch and score were
        kept by that ranking: a loss compared with an AUROC picks an epoch by neither), and have
        at least the epochs the checkpoint already trained (its weights are of a later epoch
        than the spec would say)."""
        was, now = ckpt.get("selection"), self._selection(run.name)
        started = int(ckpt["epoch"]) > 0 or int(ckpt.get("step", 0)) > 0
        # a stage boundary's checkpoint (the last stage done, this one not begun) holds no best
        # of this stage: nothing to compare (it records the finished stage's ranking)
        if was is not None and started and was.get("stage", run.name) == run.name and was != now:
            raise SpecError(
                "train.early_stopping",
                f"the checkpoint of stage {run.name!r} ranked its epochs by {was['metric']} "
                f"(keep: {was['keep']}; best so far epoch {int(ckpt['best_epoch']) + 1}, "
                f"{float(ckpt['best_score']):.4g}); this spec ranks by {now['metric']} (keep: "
                f"{now['keep']}), whose scores cannot be compared with that best: keep the "
                "checkpoint's metric and keep to resume, or start without --resume",
            )
        done = int(ckpt["epoch"])
        if run.epochs < done:
            raise SpecError(
                "train.epochs",
                f"the checkpoint of stage {run.name!r} has trained {done} epochs; this spec asks "
                f"for {run.epochs}, fewer than it already has: give at least {done}, or start "
                "without --resume",
            )

    def score(self, stage: str, metrics: dict[str, Any]) -> tuple[float, str]:
        """The early-stopping metric on validation (for `branches`, the mean over branches), and
        its name (``val_loss`` where the metric is undefined, e.g. AUROC with one class)."""
        es = self.spec.train.early_stopping
        key = es.metric if es else "auroc"
        name = self.selection_metric(stage)
        if key == "loss":
            return float(metrics["val_loss"]), name
        if stage == "branches":
            vals = [metrics["branches"][m].get(key, float("nan")) for m in metrics["branches"]]
            v = float(np.nanmean(vals)) if vals else float("nan")
        else:
            v = float(metrics["fused"].get(key, float("nan")))
        if math.isnan(v):  # e.g. AUROC with one class present: fall back to the loss
            maximize = es is None or es.maximize
            return (-metrics["val_loss"] if maximize else metrics["val_loss"]), (
                "-val_loss" if maximize else "val_loss"
            )
        return v, name

    def evaluate_val(self, stage: str) -> dict[str, Any]:
        task = self.spec.task.type
        logits, per = self._val_logits()
        y = self.val_data.y.numpy()
        with torch.no_grad():
            val_loss = float(
                self.loss_fn(
                    torch.from_numpy(logits).to(self.device), self.val_data.y.to(self.device)
                ).mean()
            )
        labels = self.spec.task.labels
        out: dict[str, Any] = {
            "val_loss": val_loss,
            "fused": compute_metrics(task, y, probabilities(task, logits), labels=labels),
        }
        out["branches"] = {}
        for m, lg in per.items():
            present = self.val_data.masks[m].numpy() > 0
            if present.sum() >= 2:
                out["branches"][m] = compute_metrics(
                    task, y[present], probabilities(task, lg[present]), labels=labels
                )
        return out

    # -- checkpointing --------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Let the callbacks amend ``state`` (every rank), then write it atomically (rank 0)."""
        for cb in self.callbacks:
            cb.on_checkpoint_save(self, state)
        if self.workdir is None or not self.is_main:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save(state, self.workdir / CHECKPOINT)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume from: rank 0 reads it, the callbacks may share it."""
        ckpt = None
        if self.is_main and self.workdir is not None and (self.workdir / CHECKPOINT).exists():
            ckpt = torch.load(self.workdir / CHECKPOINT, map_location="cpu", weights_only=True)
        for cb in self.callbacks:
            ckpt = cb.on_checkpoint_load(self, ckpt)
        return ckpt

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Callbacks amend the record; it joins the history and ``metrics.jsonl`` (rank 0)."""
        for cb in self.callbacks:
            cb.on_epoch_end(self, record)
        self.history.append(record)
        if self.workdir is not None and self.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            with open(self.workdir / HISTORY, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.history = list(ckpt.get("history", []))
        if self.workdir is not None and self.is_main:
            # a kill between an epoch's metrics line and its checkpoint leaves a line for an
            # epoch that will run again: the file restarts from the checkpoint's history
            tmp = self.workdir / (HISTORY + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
            os.replace(tmp, self.workdir / HISTORY)
        self.stage_results = list(ckpt.get("stage_results", []))
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as err:  # the spec check runs first; this is the last line of defence
            raise SpecError(
                "--resume",
                f"the checkpoint in {self.workdir} holds weights of another architecture; start "
                f"without --resume (or delete {self.workdir}). {str(err).splitlines()[0]}",
            ) from None
        log.info(
            "resuming from %s: stage %d, epoch %d, step %d",
            self.workdir,
            ckpt["stage"],
            ckpt["epoch"],
            ckpt.get("step", 0),
        )

    # -- the loop -------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> list[dict[str, Any]]:
        t = self.spec.train
        stages: list[StageSpec] = list(t.stages) or [StageSpec(name="end_to_end")]
        if t.keep == "best" and self.is_main:
            self._warn_if_validation_is_small()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        ckpt = self.load_checkpoint() if resume else None
        if ckpt is None and self.workdir is not None and self.is_main:
            # a fresh run: a stale checkpoint must not be picked up by a later resume or restart
            (self.workdir / HISTORY).unlink(missing_ok=True)
            (self.workdir / CHECKPOINT).unlink(missing_ok=True)
        if ckpt is not None:
            self._restore(ckpt)
        g_aug = torch.Generator().manual_seed(t.seed + 7919)
        for si, stage in enumerate(stages):
            if ckpt is not None and si < ckpt["stage"]:
                continue
            self._run_stage(
                si, stage, ckpt if ckpt is not None and si == ckpt["stage"] else None, g_aug
            )
        for p in self.model.parameters():
            p.requires_grad_(True)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history

    def _warn_if_validation_is_small(self, rarest: int = SMALL_VALIDATION_CLASS) -> None:
        """Choosing the best epoch on a validation split with few cases of a class is noisy."""
        y = self.val_data.y.numpy()
        kind = self.spec.task.type
        if kind == "multiclass":
            counts = np.bincount(y.astype(int).ravel(), minlength=self.spec.num_outputs)
        else:  # binary, multilabel: positives and negatives of each output
            pos = (y.reshape(len(y), -1) > 0.5).sum(axis=0)
            counts = np.concatenate([pos, len(y) - pos])
        least = int(counts.min()) if counts.size else 0
        if least < rarest:
            log.warning(
                "the validation split has %d sample(s) of its rarest class (of %d); the epoch "
                "picked on it (train.keep: best) follows its noise. Consider train.keep: last: on "
                "BreastMNIST (21 malignant of 78) picking the epoch cost 0.03 AUROC in "
                "cross-validation (docs/medmnist.md)",
                least,
                len(y),
            )

    def _run_stage(
        self, si: int, stage: StageSpec, ckpt: dict[str, Any] | None, g_aug: torch.Generator
    ) -> None:
        run = self._begin_stage(si, stage, ckpt, g_aug)
        if run is None:
            return
        bar = self._progress(run.name, run.epochs, run.start_epoch)
        for epoch in range(run.start_epoch, run.epochs):
            t0 = time.perf_counter()
            loss_sum, count = self._train_epoch(run, epoch, g_aug, bar)
            self.last_epoch["train_seconds"] = time.perf_counter() - t0
            self._end_epoch(run, epoch, loss_sum / max(count, 1), time.perf_counter() - t0, bar)
            self.save_checkpoint(
                self._state(run, epoch + 1 if not run.stopped else run.epochs, 0, g_aug)
            )
            if run.stopped:
                break
        if bar is not None:
            bar.stop()
        self._end_stage(run, g_aug)

    def _optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        t = self.spec.train
        groups = param_groups(self.model, self.spec, params, lr)  # train.layer_decay
        if t.optimizer == "sgd":  # Nesterov momentum; weight decay as an L2 penalty
            return torch.optim.SGD(
                groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay
            )
        return torch.optim.AdamW(groups, lr=lr, weight_decay=t.weight_decay)

    def _begin_stage(
        self, si: int, stage: StageSpec, ckpt: dict[str, Any] | None, g_aug: torch.Generator
    ) -> StageRun | None:
        """The stage's trainable parameters, optimizer, schedule and early-stopping state (from
        the checkpoint when resuming); ``None`` for a stage with nothing to train."""
        t = self.spec.train
        name = stage.name
        epochs = t.epochs if stage.epochs is None else stage.epochs
        lr = stage.lr or (t.lr * t.finetune_lr_scale if name == "finetune" else t.lr)
        params = self._stage_params(name)
        model = self.wrap(self.model)
        if not params or epochs == 0:
            self.stage_results.append({"stage": name, "epochs": 0})
            return None
        opt = self._optimizer(params, lr)
        steps_per_epoch = math.ceil(len(self._epoch_order(0)) / t.batch_size)
        total = max(1, epochs * steps_per_epoch)
        aux_mode = "attached" if name == "branches" else "detached"
        run = StageRun(
            si,
            name,
            epochs,
            params,
            model,
            opt,
            self._scheduler(opt, lr, total, steps_per_epoch),
            aux_mode,
        )
        if ckpt is not None:
            self._check_selection(run, ckpt)
            if ckpt["optimizer"]:  # empty at a stage boundary: this stage's optimizer is new
                opt.load_state_dict(ckpt["optimizer"])
            if ckpt["scheduler"]:
                run.sched.load_state_dict(ckpt["scheduler"])
            g_aug.set_state(ckpt["g_aug"])
            if "torch_rng" in ckpt:  # dropout draws continue exactly where they stopped
                torch.set_rng_state(ckpt["torch_rng"])
            run.start_epoch, run.start_step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
            run.best_score, run.best_epoch, run.bad = (
                float(ckpt["best_score"]),
                int(ckpt["best_epoch"]),
                int(ckpt["bad"]),
            )
            run.best_state = ckpt.get("best_state")
            self._resume_world(run, ckpt)
        if ckpt is None and name == "finetune" and t.keep == "best":
            # finetuning must earn its place: the weights it starts from are the bar to beat
            run.best_score = self.score(name, self.evaluate_val(name))[0]
            run.best_state = self._weights()
            run.best_epoch = -1
        if t.ema:  # exponential moving average of the weights; validated, kept and saved
            run.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True
            )
            if ckpt is not None and ckpt.get("ema"):
                run.ema.load_state_dict(ckpt["ema"])
        for cb in self.callbacks:
            cb.on_stage_start(self, run)
        return run

    def _resume_world(self, run: StageRun, ckpt: dict[str, Any]) -> None:
        """A mid-epoch checkpoint's partial epoch, for this rank of this world. The epoch's
        global batches do not depend on the world (:func:`padded`), so a checkpoint written by
        N processes resumes with M: the remaining batches (step ``k`` on) are re-sharded over
        the M ranks. Its train-loss sums (over all ranks) are split evenly over the M ranks (all
        ranks train as many samples, so the epoch's mean over ranks is the whole epoch's mean);
        the per-rank order digests restart, the global one continues."""
        t = self.spec.train
        written = ckpt.get("world")  # None: written before checkpoints recorded it
        orders = list(ckpt.get("partial_order") or [])  # one per rank
        where = f"{run.name} epoch {run.start_epoch + 1}, step {run.start_step}"
        if written is not None and int(written) != self.world:
            log.info(
                "resuming a checkpoint written by %d process%s with %d: %s",
                int(written),
                "es" if int(written) > 1 else "",
                self.world,
                f"the remaining global batches of {run.name} epoch {run.start_epoch + 1} (step "
                f"{run.start_step} on) are re-sharded; each rank's order digest restarts, the "
                "epoch's global one continues"
                if run.start_step
                else "it was written at an epoch's end; the next epoch is sharded over the new "
                "world",
            )
        if not run.start_step or "partial_loss" not in ckpt:
            return
        loss_sum, count = ckpt["partial_loss"]
        if written is None:  # its partial loss is rank 0's, its digests are per rank
            if len(orders) not in (0, self.world):
                raise SpecError(
                    "--resume",
                    f"the checkpoint in {self.workdir} stopped mid-epoch ({where}) in a run of "
                    f"{len(orders)} processes and was written by an older medfuse, which did not "
                    f"record enough to re-shard the epoch over {self.world}; resume it with "
                    f"{len(orders)} processes (--nproc {len(orders)})",
                )
            run.partial = (float(loss_sum), int(count))
            run.partial_order = str(orders[self.rank]) if self.rank < len(orders) else ""
            run.partial_global = None
            return
        batch = t.batch_size * self.world
        saved = int(ckpt.get("batch_size", batch))
        if saved != batch:
            raise SpecError(
                "train.batch_size",
                f"the checkpoint in {self.workdir} stopped mid-epoch ({where}) with a global "
                f"batch of {saved}; with {batch} step {run.start_step} starts at another sample, "
                f"so samples would be skipped or trained twice. Resume with train.batch_size "
                f"{saved} (it may change at an epoch's end: resume from an epoch-end checkpoint)",
            )
        # every rank trained as many samples: count (k global batches) divides evenly
        run.partial = (float(loss_sum) / self.world, int(count) // self.world)
        run.partial_global = str(ckpt.get("partial_order_global", ""))
        if int(written) == self.world:
            run.partial_order = str(orders[self.rank]) if self.rank < len(orders) else ""
        else:
            run.partial_order = ""  # this rank's share of the epoch starts at step k
            run.resumed_from_world = int(written)

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def _train_epoch(
        self, run: StageRun, epoch: int, g_aug: torch.Generator, bar: Any
    ) -> tuple[float, int]:
        """One pass over this rank's shard of the training set; the loss sum and sample count
        (a resumed epoch continues from the checkpoint's partial sum). The seconds spent waiting
        for batches (``data_wait``) and the samples seen go to ``self.last_epoch``."""
        t = self.spec.train
        self._set_modes(run.name)
        glob = self._global_order(t.seed * 1_000_003 + run.index * 10_007 + epoch)
        order = self._shard(glob)  # this rank's share of every global batch
        b, gb = t.batch_size, t.batch_size * self.world
        n_steps = math.ceil(len(order) / b)
        resumed = epoch == run.start_epoch and run.start_step > 0
        loss_sum, count = run.partial if resumed else (0.0, 0)
        order_sha = run.partial_order if resumed else ""
        global_sha = run.partial_global if resumed else ""
        steps, batches = [], []
        for step in range(run.start_step if resumed else 0, n_steps):
            idx = order[step * b : (step + 1) * b]
            if len(idx) == 1 and len(order) > 1:
                continue  # a trailing batch of one: BatchNorm cannot train on it (every rank)
            steps.append(step)
            batches.append(idx)
        wait, seen = 0.0, 0
        # closed on any exit: a streamed split's reader threads stop with the epoch
        with contextlib.closing(self.train_data.batches(batches, self.device)) as loader:
            for step, idx in zip(steps, batches, strict=True):
                t0 = time.perf_counter()
                batch = next(loader)
                wait += time.perf_counter() - t0
                order_sha = order_digest(order_sha, idx)
                if global_sha is not None:  # the step's global batch, as every rank computes it
                    global_sha = order_digest(global_sha, glob[step * gb : (step + 1) * gb])
                n = len(batch[2])
                loss = self._train_step(run, batch, g_aug)
                loss_sum += float(loss.detach()) * n
                count += n
                seen += n
                if bar is not None:
                    bar.update(
                        bar.task_ids[0],
                        description=f"{run.name} epoch {epoch + 1}/{run.epochs} "
                        f"loss {loss_sum / max(count, 1):.4f}",
                    )
                every = t.checkpoint_every
                if every and (step + 1) % every == 0 and step + 1 < n_steps:
                    state = self._state(run, epoch, step + 1, g_aug)
                    # DistributedCallback sums the loss over the ranks and gathers each
                    # rank's digest
                    state["partial_loss"] = (loss_sum, count)
                    state["partial_order"] = [order_sha]
                    state["partial_order_global"] = global_sha
                    self.save_checkpoint(state)
        self.last_epoch = {"data_wait": wait, "samples": seen}
        #: this rank's share of the epoch (before and after a restart): for the record's "ranks"
        self.epoch_share = {"rank": self.rank, "samples": count, "order_sha256": order_sha}
        #: the digest of the epoch's global batches (the same on every rank, for any world)
        self.epoch_order = global_sha
        return loss_sum, count

    def _train_step(
        self,
        run: StageRun,
        batch: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor],
        g_aug: torch.Generator,
    ) -> torch.Tensor:
        """Augment one batch (on the device), forward, backward (twice with SAM), step; returns
        its loss."""
        t = self.spec.train
        inputs, masks, y = batch
        inputs = augment_batch(inputs, self.spec.modalities, self.spec.data.augment, g_aug)
        for m, rate in t.modality_dropout.items():
            if rate <= 0:
                continue
            keep = (torch.rand(len(y), generator=g_aug) >= rate).float().to(self.device)
            masks[m] = masks[m] * keep
            inputs[m] = inputs[m] * keep.view(-1, *([1] * (inputs[m].dim() - 1)))
        mix = None
        if t.mixup > 0:
            inputs, masks, mix = mixup_batch(inputs, masks, t.mixup, g_aug)
        forward_loss = partial(
            self._batch_loss, run.model, run.name, run.aux_mode, inputs, masks, y, mix
        )
        opt = run.opt
        assert opt is not None
        opt.zero_grad(set_to_none=True)
        loss = forward_loss()
        loss.backward()
        if t.sam:
            _sam_second_step(self.model, run.params, t.sam, forward_loss)
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.params, t.grad_clip)
        opt.step()
        if run.ema is not None:
            run.ema.update_parameters(self.model)
        run.sched.step()
        return loss

    def _end_epoch(
        self, run: StageRun, epoch: int, train_loss: float, seconds: float, bar: Any
    ) -> None:
        """Validate (the EMA weights when there are), keep the epoch if it is the best (or with
        ``keep: last``, always), log it and decide whether to stop early."""
        t = self.spec.train
        es = t.early_stopping
        sign = 1.0 if (es is None or es.maximize) else -1.0
        raw = None
        if run.ema is not None:  # validate (and keep as best) the averaged weights
            raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(run.ema.module.state_dict())
        t_val = time.perf_counter()
        metrics = self.evaluate_val(run.name)
        val_s = time.perf_counter() - t_val
        score, metric = self.score(run.name, metrics)
        if t.keep == "best" and (run.best_epoch >= 0 or run.best_state is not None):
            improved = sign * score > sign * run.best_score
        else:
            improved = True  # keep: last makes every epoch the one kept (and never stops early)
        if improved:
            run.best_score, run.best_epoch, run.bad = score, epoch, 0
            run.best_state = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }
        else:
            run.bad += 1
        if raw is not None:
            self.model.load_state_dict(raw)
        record = {
            "stage": run.name,
            "epoch": epoch + 1,
            "lr": run.opt.param_groups[0]["lr"] if run.opt is not None else 0.0,
            "train_loss": train_loss,
            "val_loss": metrics["val_loss"],
            "val": {k: v for k, v in metrics["fused"].items() if isinstance(v, float)},
            "val_branches": {
                m: {k: v for k, v in mm.items() if k in ("auroc", "accuracy")}
                for m, mm in metrics["branches"].items()
            },
            "score": score,
            "metric": metric,
            # a new best validation score, kept for it (keep: last selects no epoch: never)
            "best": improved and self.spec.train.keep == "best",
            "seconds": seconds,
            **self._throughput(),
            "val_s": round(val_s, 4),  # validating the epoch: this rank's reads, model, metrics
            # the epoch's global batches in order: equal for any number of processes
            "order_sha256": self.epoch_order,
            # each rank's samples and the digest of their order (DistributedCallback gathers them)
            "ranks": [{**self.epoch_share, "val_samples": self.val_read}],
        }
        if run.resumed_from_world is not None and epoch == run.start_epoch:
            # resumed mid-epoch from a checkpoint of another world: "ranks" counts each rank's
            # samples over the whole epoch (an even split of those before the restart), its
            # order digests only the batches since
            record["resumed_from_world"] = run.resumed_from_world
        self.log_epoch(record)
        self._print_epoch(run, record, bar)
        run.stopped = self._agree(es is not None and run.bad >= es.patience)

    def _throughput(self) -> dict[str, float]:
        """This rank's training pass of the epoch: samples per second, and its seconds split
        into waiting for data and computing (forward, backward, step)."""
        e = self.last_epoch
        train_s = float(e.get("train_seconds", 0.0))
        wait = float(e.get("data_wait", 0.0))
        return {
            "samples_per_s": round(e.get("samples", 0) / train_s, 1) if train_s > 0 else 0.0,
            "data_wait_s": round(wait, 4),
            "compute_s": round(max(train_s - wait, 0.0), 4),
        }

    def _print_epoch(self, run: StageRun, record: dict[str, Any], bar: Any) -> None:
        """``end_to_end epoch 3/10 2.1 s 850 samples/s data wait 3% train_loss 0.4123
        val_auroc 0.8712 *``: the throughput of this rank's training pass and the share of it
        spent waiting for batches (the log line; the progress bar has its own clock); the star
        only for an epoch kept for being the best so far (never with ``keep: last``)."""
        star = " *" if record["best"] else ""
        busy = record.get("data_wait_s", 0.0) + record.get("compute_s", 0.0)
        wait = 100 * record.get("data_wait_s", 0.0) / busy if busy > 0 else 0.0
        head = f"{run.name} epoch {record['epoch']}/{run.epochs} {record['seconds']:.1f} s"
        tail = (
            f"train_loss {record['train_loss']:.4f} {record['metric']} {record['score']:.4f}{star}"
        )
        if bar is not None:
            bar.update(bar.task_ids[0], advance=1, description=f"{head} {tail}")
        elif self.is_main:
            speed = f"{record.get('samples_per_s', 0.0):.0f} samples/s data wait {wait:.0f}%"
            log.info("%s %s %s", head, speed, tail)

    def _end_stage(self, run: StageRun, g_aug: torch.Generator) -> None:
        """Load the kept weights, record the stage and checkpoint its end."""
        if run.best_state is not None:
            self.model.load_state_dict(run.best_state)
        result = {
            "stage": run.name,
            "epochs_run": len([h for h in self.history if h["stage"] == run.name]),
            "best_epoch": run.best_epoch + 1,
            "best_score": run.best_score,
            "early_stopped": run.stopped,
        }
        self.stage_results.append(result)
        for cb in self.callbacks:
            cb.on_stage_end(self, result)
        if self.workdir is not None:  # the stage is done: the next one starts from its best weights
            done = StageRun(run.index + 1, run.name, 0, [], run.model, None, None, run.aux_mode)
            self.save_checkpoint(self._state(done, 0, 0, g_aug))

    def _agree(self, stop: bool) -> bool:
        """All ranks stop together (rank 0's validation decides; every rank computes the same)."""
        if self.world > 1 and torch.distributed.is_initialized():
            flag = torch.tensor(
                [1.0 if stop else 0.0], device=self.device if self.device.type == "cuda" else "cpu"
            )
            torch.distributed.broadcast(flag, src=0)
            return bool(flag.item())
        return stop

    def _state(
        self, run: StageRun, epoch: int, step: int, g_aug: torch.Generator
    ) -> dict[str, Any]:
        return {
            "stage": run.index,
            "epoch": epoch,
            "step": step,
            # a mid-epoch position is a count of global batches: a resume with another number
            # of processes re-shards the rest (the global batch may not change mid-epoch)
            "world": self.world,
            "batch_size": self.spec.train.batch_size * self.world,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": run.opt.state_dict() if run.opt is not None else {},
            "scheduler": run.sched.state_dict() if run.sched is not None else {},
            "g_aug": g_aug.get_state(),
            "torch_rng": torch.get_rng_state(),
            "ema": run.ema.state_dict() if run.ema is not None else {},
            "best_score": run.best_score,
            "best_epoch": run.best_epoch,
            "bad": run.bad,
            "best_state": run.best_state,
            # what ranked the epochs: a resume that ranks by another metric or keeps another
            # way must not compare its scores with best_score (check_selection)
            "selection": self._selection(run.name),
            "history": self.history,
            "stage_results": self.stage_results,
        }

    def _batch_loss(
        self,
        model: nn.Module,
        stage: str,
        aux_mode: str,
        inputs: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        y: torch.Tensor,
        mix: tuple[float, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Forward one batch and return its loss (mixup: the two targets' losses, weighted)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.spec.train.bf16):
            logits, aux = model(inputs, masks, aux=aux_mode)
        if mix is None:
            return self._loss(stage, logits, aux, masks, y)
        lam, perm = mix
        return lam * self._loss(stage, logits, aux, masks, y) + (1 - lam) * self._loss(
            stage, logits, aux, masks, y[perm]
        )

    def _loss(
        self,
        stage: str,
        logits: torch.Tensor,
        aux: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        y: torch.Tensor,
    ) -> torch.Tensor:
        for cb in self.callbacks:
            out = cb.loss(self, stage, logits, aux, masks, y)
            if out is not None:
                return out
        return self.stage_loss(stage, logits, aux, masks, y)

    def stage_loss(
        self,
        stage: str,
        logits: torch.Tensor,
        aux: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        y: torch.Tensor,
    ) -> torch.Tensor:
        """The task loss of a stage: the auxiliary heads' (``branches``), the fused head's
        (``fusion``), or both (``end_to_end``, ``finetune``)."""
        aux_loss = logits.new_zeros(())
        for m, lg in aux.items():
            w = masks[m]
            aux_loss = aux_loss + (self.loss_fn(lg, y) * w).sum() / w.sum().clamp_min(1.0)
        if stage == "branches":
            return aux_loss
        if stage == "fusion":  # branches and their probes are frozen
            return self.loss_fn(logits, y).mean()
        return self.loss_fn(logits, y).mean() + aux_loss

    def _scheduler(self, opt: torch.optim.Optimizer, lr: float, total: int, steps_per_epoch: int):
        t = self.spec.train
        if t.schedule == "onecycle":
            peaks = [g["lr"] for g in opt.param_groups]  # each group's own (train.layer_decay)
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total)
        warm = t.warmup_epochs * steps_per_epoch

        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            if t.schedule == "constant":
                return 1.0
            prog = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def _progress(self, name: str, epochs: int, start: int):
        if not self.progress:
            return None
        # lazy: rich, only to print
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            transient=False,
        )
        bar.add_task(f"{name}", total=epochs, completed=start)
        bar.start()
        return bar
