"""The trainer: staged or end-to-end, AdamW or Nesterov SGD + cosine/one-cycle, early stopping
with best restore, bf16 autocast, progress bar, ``metrics.jsonl``, and resumable checkpoints
(atomic, per epoch or every N steps) that survive a ``kill -9``."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.core.spec import Spec, StageSpec
from medfuse.inference.helpers import Tensors, predict_logits
from medfuse.training.augment import augment_batch, mixup_batch
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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Trainer:
    """Fits a CompositeModel with the stages of ``spec.train``.

    Distributed training (``medfuse.distributed``) reuses this class: the model passed in may be
    wrapped (DDP/FSDP) and ``rank``/``world`` shard each epoch's batches.
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
    ) -> None:
        self.model = model.to(device)
        self.spec = spec
        self.train_data, self.val_data = train, val
        self.device = device
        self.workdir = workdir
        self.rank, self.world = rank, world
        self.wrap = wrap or (lambda m: m)
        self.on_epoch = on_epoch
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
        self.stage_results: list[dict[str, Any]] = []
        self.step_in_epoch = 0

    # -- helpers --------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _stage_params(self, stage: str) -> tuple[list[nn.Parameter], set[str]]:
        m = self.model
        trainable: set[str] = set()
        for name, p in m.named_parameters():
            top = name.split(".")[0]
            if stage == "branches":
                on = top in ("branches", "aux_heads")
            elif stage == "fusion":
                on = top in ("fusion", "head")
            else:  # end_to_end, finetune: everything; aux heads probe detached features
                on = True
            p.requires_grad_(on)
            if on:
                trainable.add(name)
        return [p for p in m.parameters() if p.requires_grad], trainable

    def _set_modes(self, stage: str) -> None:
        self.model.train()
        if stage == "fusion":
            self.model.branches.eval()  # frozen branches keep their batch-norm statistics

    def _epoch_order(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        n = len(self.train_data)
        perm = torch.randperm(n, generator=g)
        if self.world > 1:  # shard like DistributedSampler: pad to a multiple of world, interleave
            total = math.ceil(n / self.world) * self.world
            perm = torch.cat([perm, perm[: total - n]])[self.rank :: self.world]
        return perm

    def _score(self, stage: str, metrics: dict[str, Any]) -> float:
        """The early-stopping metric on validation (for `branches`, the mean over branches)."""
        es = self.spec.train.early_stopping
        key = es.metric if es else "auroc"
        if key == "loss":
            return float(metrics["val_loss"])
        if stage == "branches":
            vals = [metrics["branches"][m].get(key, float("nan")) for m in metrics["branches"]]
            v = float(np.nanmean(vals)) if vals else float("nan")
        else:
            v = float(metrics["fused"].get(key, float("nan")))
        if math.isnan(v):  # e.g. AUROC with one class present: fall back to the loss
            v = -metrics["val_loss"] if (es is None or es.maximize) else metrics["val_loss"]
        return v

    def evaluate_val(self, stage: str) -> dict[str, Any]:
        task = self.spec.task.type
        logits, per = predict_logits(
            self.model, self.val_data, self.device, bf16=self.spec.train.bf16, branches=True
        )
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
    def _save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.workdir is None or not self.is_main:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save(state, self.workdir / CHECKPOINT)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if self.workdir is None or not (self.workdir / CHECKPOINT).exists():
            return None
        return torch.load(self.workdir / CHECKPOINT, map_location="cpu", weights_only=True)

    def _log_epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.on_epoch:
            self.on_epoch(record)
        if self.workdir is not None and self.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            with open(self.workdir / HISTORY, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())

    # -- the loop -------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> list[dict[str, Any]]:
        t = self.spec.train
        stages: list[StageSpec] = list(t.stages) or [StageSpec(name="end_to_end")]
        if t.keep == "best" and self.is_main:
            self._warn_if_validation_is_small()
        ckpt = self._load_checkpoint() if resume else None
        if ckpt is None and self.workdir is not None and self.is_main:
            (self.workdir / HISTORY).unlink(missing_ok=True)
        if ckpt is not None:
            self.history = list(ckpt.get("history", []))
            if self.workdir is not None and self.is_main:
                # a kill between an epoch's metrics line and its checkpoint leaves a line for an
                # epoch that will run again: the file restarts from the checkpoint's history
                tmp = self.workdir / (HISTORY + ".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
                os.replace(tmp, self.workdir / HISTORY)
            self.stage_results = list(ckpt.get("stage_results", []))
            self.model.load_state_dict(ckpt["model"])
            log.info(
                "resuming from %s: stage %d, epoch %d, step %d",
                self.workdir,
                ckpt["stage"],
                ckpt["epoch"],
                ckpt.get("step", 0),
            )
        g_aug = torch.Generator().manual_seed(t.seed + 7919)
        for si, stage in enumerate(stages):
            if ckpt is not None and si < ckpt["stage"]:
                continue
            self._run_stage(
                si, stage, ckpt if ckpt is not None and si == ckpt["stage"] else None, g_aug
            )
        for p in self.model.parameters():
            p.requires_grad_(True)
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
        t = self.spec.train
        name = stage.name
        epochs = t.epochs if stage.epochs is None else stage.epochs
        lr = stage.lr or (t.lr * t.finetune_lr_scale if name == "finetune" else t.lr)
        params, _ = self._stage_params(name)
        model = self.wrap(self.model)
        if not params or epochs == 0:
            self.stage_results.append({"stage": name, "epochs": 0})
            return
        if t.optimizer == "sgd":  # Nesterov momentum; weight decay as an L2 penalty
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay
            )
        else:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay)
        steps_per_epoch = math.ceil(len(self._epoch_order(0)) / t.batch_size)
        total = max(1, epochs * steps_per_epoch)
        sched = self._scheduler(opt, lr, total, steps_per_epoch)
        aux_mode = "attached" if name == "branches" else "detached"
        start_epoch, start_step = 0, 0
        best_score, best_state, best_epoch, bad = -math.inf, None, -1, 0
        es = t.early_stopping
        sign = 1.0 if (es is None or es.maximize) else -1.0
        if ckpt is not None:
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            g_aug.set_state(ckpt["g_aug"])
            if "torch_rng" in ckpt:  # dropout draws continue exactly where they stopped
                torch.set_rng_state(ckpt["torch_rng"])
            start_epoch, start_step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
            best_score, best_epoch, bad = (
                float(ckpt["best_score"]),
                int(ckpt["best_epoch"]),
                int(ckpt["bad"]),
            )
            best_state = ckpt.get("best_state")
        if ckpt is None and name == "finetune" and t.keep == "best":
            # finetuning must earn its place: the weights it starts from are the bar to beat
            best_score = self._score(name, self.evaluate_val(name))
            best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            best_epoch = -1
        self._ema = None
        if t.ema:  # exponential moving average of the weights; validated, kept and saved
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self._ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True
            )
            if ckpt is not None and ckpt.get("ema"):
                self._ema.load_state_dict(ckpt["ema"])
        bar = self._progress(name, epochs, start_epoch)
        drop = {m: r for m, r in t.modality_dropout.items() if r > 0}
        stop = False
        for epoch in range(start_epoch, epochs):
            self._set_modes(name)
            order = self._epoch_order(t.seed * 1_000_003 + si * 10_007 + epoch)
            n_steps = math.ceil(len(order) / t.batch_size)
            t0, loss_sum, count = time.perf_counter(), 0.0, 0
            for step in range(start_step if epoch == start_epoch else 0, n_steps):
                idx = order[step * t.batch_size : (step + 1) * t.batch_size]
                if len(idx) == 1 and len(order) > 1:
                    continue  # a trailing batch of one: BatchNorm cannot train on it
                inputs, masks, y = self.train_data.batch(idx, self.device)
                inputs = augment_batch(inputs, self.spec.modalities, self.spec.data.augment, g_aug)
                for m, rate in drop.items():
                    keep = (torch.rand(len(idx), generator=g_aug) >= rate).float().to(self.device)
                    masks[m] = masks[m] * keep
                    inputs[m] = inputs[m] * keep.view(-1, *([1] * (inputs[m].dim() - 1)))
                mix = None
                if t.mixup > 0:
                    inputs, masks, mix = mixup_batch(inputs, masks, t.mixup, g_aug)
                forward_loss = partial(
                    self._batch_loss, model, name, aux_mode, inputs, masks, y, mix
                )
                opt.zero_grad(set_to_none=True)
                loss = forward_loss()
                loss.backward()
                if t.sam:
                    _sam_second_step(self.model, params, t.sam, forward_loss)
                if t.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
                opt.step()
                if self._ema is not None:
                    self._ema.update_parameters(self.model)
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                count += len(idx)
                if bar is not None:
                    bar.update(
                        bar.task_ids[0],
                        description=f"{name} epoch {epoch + 1}/{epochs} loss {loss_sum / max(count, 1):.4f}",
                    )
                if (
                    t.checkpoint_every
                    and (step + 1) % t.checkpoint_every == 0
                    and step + 1 < n_steps
                ):
                    self._save_checkpoint(
                        self._state(
                            si,
                            epoch,
                            step + 1,
                            opt,
                            sched,
                            g_aug,
                            best_score,
                            best_epoch,
                            bad,
                            best_state,
                        )
                    )
            raw = None
            if self._ema is not None:  # validate (and keep as best) the averaged weights
                raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self.model.load_state_dict(self._ema.module.state_dict())
            metrics = self.evaluate_val(name)
            score = self._score(name, metrics)
            improved = (
                sign * score > sign * best_score
                if (best_epoch >= 0 or best_state is not None) and t.keep == "best"
                else True  # keep: last makes every epoch the one kept (and never stops early)
            )
            if improved:
                best_score, best_epoch, bad = score, epoch, 0
                best_state = {
                    k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                }
            else:
                bad += 1
            if raw is not None:
                self.model.load_state_dict(raw)
            record = {
                "stage": name,
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": loss_sum / max(count, 1),
                "val_loss": metrics["val_loss"],
                "val": {k: v for k, v in metrics["fused"].items() if isinstance(v, float)},
                "val_branches": {
                    m: {k: v for k, v in mm.items() if k in ("auroc", "accuracy")}
                    for m, mm in metrics["branches"].items()
                },
                "score": score,
                "best": improved,
                "seconds": time.perf_counter() - t0,
            }
            self._log_epoch(record)
            if bar is not None:
                bar.update(
                    bar.task_ids[0],
                    advance=1,
                    description=f"{name} epoch {epoch + 1}/{epochs} loss {record['train_loss']:.4f} val {score:.4f}",
                )
            elif self.is_main:
                log.info(
                    "%s epoch %d/%d train_loss %.4f val_score %.4f%s",
                    name,
                    epoch + 1,
                    epochs,
                    record["train_loss"],
                    score,
                    " *" if improved else "",
                )
            stop = es is not None and bad >= es.patience
            stop = self._agree(stop)
            self._save_checkpoint(
                self._state(
                    si,
                    epoch + 1 if not stop else epochs,
                    0,
                    opt,
                    sched,
                    g_aug,
                    best_score,
                    best_epoch,
                    bad,
                    best_state,
                )
            )
            if stop:
                break
        if bar is not None:
            bar.stop()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.stage_results.append(
            {
                "stage": name,
                "epochs_run": len([h for h in self.history if h["stage"] == name]),
                "best_epoch": best_epoch + 1,
                "best_score": best_score,
                "early_stopped": stop,
            }
        )
        if self.workdir is not None:  # the stage is done: the next one starts from its best weights
            self._save_checkpoint(
                {**self._state(si + 1, 0, 0, None, None, g_aug, -math.inf, -1, 0, None)}
            )

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
        self, si, epoch, step, opt, sched, g_aug, best_score, best_epoch, bad, best_state
    ) -> dict[str, Any]:
        return {
            "stage": si,
            "epoch": epoch,
            "step": step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": opt.state_dict() if opt is not None else {},
            "scheduler": sched.state_dict() if sched is not None else {},
            "g_aug": g_aug.get_state(),
            "torch_rng": torch.get_rng_state(),
            "ema": self._ema.state_dict() if getattr(self, "_ema", None) is not None else {},
            "best_score": best_score,
            "best_epoch": best_epoch,
            "bad": bad,
            "best_state": best_state,
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
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
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
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=False
        )
        bar.add_task(f"{name}", total=epochs, completed=start)
        bar.start()
        return bar
