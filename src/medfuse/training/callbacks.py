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

from medfuse.training.trainer import Callback, EpochFunction, StageRun, Trainer

__all__ = ["Callback", "EpochFunction", "StageRun", "Trainer"]
