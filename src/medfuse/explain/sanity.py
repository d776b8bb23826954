"""The model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

An explanation that depends on what the model learned must change when the learned weights are
replaced by random ones. We re-initialise every parameter of the model (each module's own
``reset_parameters``, which also resets batch-norm statistics), explain the same samples again
and compare the maps with Spearman's rank correlation: near 1 = the method ignores the model
(a red flag), near 0 = it depends on the weights.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.explain.explainer import Explainer


def randomized_copy(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-initialised (independent randomisation)."""
    rnd = copy.deepcopy(model)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for mod in rnd.modules():
            reset = getattr(mod, "reset_parameters", None)
            if mod is not rnd and callable(reset):
                reset()
    finally:
        torch.random.set_rng_state(gen_state)
    return rnd.eval()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened); NaN when either is constant."""
    # lazy: scipy, only for this statistic
    from scipy.stats import spearmanr

    x, y = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _map(entry: dict[str, Any]) -> np.ndarray:
    if "upsampled" in entry:
        return np.asarray(entry["upsampled"])
    if "features" in entry:
        return np.asarray([f["attribution"] for f in entry["features"]])
    return np.asarray(entry["attribution"])


def randomization_check(
    explainer: Any, arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray], *, seed: int = 0
) -> dict[str, Any]:
    """Explain with the trained and with a randomised model; per modality, the mean over samples
    of Spearman(|trained map|, |random map|) (``abs``) and of the signed maps (``signed``)."""

    trained = explainer.explain(arrays, masks, pictures=False).samples
    pred = copy.copy(explainer.predictor)
    pred.model = randomized_copy(explainer.model, seed=seed).to(explainer.predictor.device)
    rnd = Explainer(
        pred, layer=explainer.layer, steps=explainer.steps, target=explainer.target
    ).explain(arrays, masks, pictures=False)
    out: dict[str, Any] = {}
    for m in explainer.names:
        rows = [
            (_map(a["maps"][m]), _map(b["maps"][m]))
            for a, b in zip(trained, rnd.samples)
            if m in a["maps"] and m in b["maps"]
        ]
        if not rows:
            continue
        ab = [spearman(np.abs(x), np.abs(y)) for x, y in rows]
        sg = [spearman(x, y) for x, y in rows]
        out[m] = {
            "method": next(a["maps"][m]["method"] for a in trained if m in a["maps"]),
            "abs": float(np.nanmean(ab)) if np.isfinite(ab).any() else float("nan"),
            "signed": float(np.nanmean(sg)) if np.isfinite(sg).any() else float("nan"),
            "n": len(rows),
        }
    return out
