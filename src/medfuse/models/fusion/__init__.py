"""Fusions. Contract: ``builder(*, feature_dims, num_outputs, **params) -> nn.Module`` whose
``forward(features, masks)`` takes ``{modality: (B, D_m)}`` and ``{modality: (B,)}`` presence masks
(1 present, 0 missing) and returns the fused representation ``(B, out_features)``. A missing
modality must never change the output through its (zero) features."""

from medfuse.models.fusion import basic, sequence  # noqa: F401
