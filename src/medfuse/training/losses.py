"""Task losses, with optional inverse-frequency class weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class TaskLoss(nn.Module):
    """Per-sample loss for a task: BCE (binary, multilabel) or cross-entropy (multiclass)."""

    def __init__(
        self,
        task: str,
        y_train: np.ndarray,
        *,
        class_weights: str = "none",
        label_smoothing: float = 0.0,
        num_outputs: int = 1,
    ) -> None:
        super().__init__()
        self.task = task
        self.smoothing = float(label_smoothing)
        weight = None
        if class_weights in ("balanced", "sqrt"):
            if task == "multiclass":
                counts = np.bincount(y_train.astype(int), minlength=num_outputs).astype(np.float64)
                weight = len(y_train) / (num_outputs * np.maximum(counts, 1))
            else:
                y2 = y_train.reshape(len(y_train), -1)
                pos = y2.sum(0)
                weight = (len(y2) - pos) / np.maximum(pos, 1)
            if class_weights == "sqrt":  # the square root: half-way (in log) to no weighting
                weight = np.sqrt(weight)
        self.register_buffer(
            "weight",
            torch.tensor(weight, dtype=torch.float32) if weight is not None else torch.ones(0),
        )

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, K) logits -> (B,) loss per sample."""
        w = self.weight if self.weight.numel() else None
        logits = logits.float()
        if self.task == "multiclass":
            return F.cross_entropy(
                logits, y.long(), weight=w, label_smoothing=self.smoothing, reduction="none"
            )
        target = y.float().reshape(logits.shape)
        if self.smoothing:
            target = target * (1 - self.smoothing) + 0.5 * self.smoothing
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=w, reduction="none")
        return loss.mean(dim=1)
