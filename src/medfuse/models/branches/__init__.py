"""Encoders, one per modality. Contract: ``builder(*, input_shape, **params) -> nn.Module`` whose
``forward(x)`` maps ``(B, *input_shape)`` to ``(B, out_features)`` and which has ``out_features``."""

from medfuse.models.branches import image, pretrained, serial, signal, tabular, text  # noqa: F401
