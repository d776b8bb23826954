"""Explanations for composite models: which pixels, which samples of a signal, which clinical
fields and which *modality* moved a prediction.

- ``gradcam``: Grad-CAM (captum ``LayerGradCam``) on an image branch's last convolutional block;
- ``integrated``: integrated gradients (captum) over a signal (per lead, per time step) or a
  tabular row (per feature);
- ``shapley``: exact Shapley values over modality presence (all ``2**M`` subsets, through the
  presence masks every fusion honours);
- ``sanity``: the model-randomisation check (Adebayo et al. 2018);
- ``explainer``: ``Explainer`` (one loaded package, all of the above) and ``explain_file``
  (``medfuse explain``);
- ``plots``: the PNGs.

captum and matplotlib load lazily: importing this package costs nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Explainer", "exact_shapley", "explain_file", "modality_shapley"]


def __getattr__(name: str) -> Any:
    if name in ("Explainer", "explain_file"):
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.explain import explainer

        return getattr(explainer, name)
    if name in ("exact_shapley", "modality_shapley"):
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.explain import shapley

        return getattr(shapley, name)
    raise AttributeError(f"module 'medfuse.explain' has no attribute {name!r}")
