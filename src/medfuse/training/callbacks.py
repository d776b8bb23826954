"""The trainer's extension points, in the manner of Lightning's ``Callback`` and Hugging Face's
``TrainerCallback``: subclass :class:`Callback`, override the hooks you need, and pass instances
to ``Trainer(..., callbacks=[...])``. The trainer calls each hook on every callback, in list order.

=====================  ===========================================================================
on_fit_start           before anything trains (after the trainer is built): swap data, set state
on_checkpoint_load     the checkpoint rank 0 read from disk (``None``: none); return the one to use
on_stage_start         a stage begins (its optimizer and scheduler exist): ``StageRun``
loss                   the loss of one forward pass; ``None`` leaves it to the next callback and
                       finally to the trainer's own (``Trainer.stage_loss``)
on_epoch_end           an epoch's record, before it is logged: amend it in place
on_checkpoint_save     the state about to be checkpointed (every rank calls it): amend it in place
on_stage_end           a stage ended, with its result
on_fit_end             training is over (the kept weights are loaded)
=====================  ===========================================================================

Distillation (``medfuse.compress.distill``) and the distributed trainer
(``medfuse.distributed.strategies``) are callbacks; no extension overrides the trainer's
private methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the trainer imports this module
    import torch

    from medfuse.training.trainer import StageRun, Trainer


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
