"""Grad-CAM and integrated gradients on a trained model; the model-randomisation sanity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfuse.core.errors import SpecError


@pytest.fixture(scope="module")
def explainer(small_package):
    from medfuse.explain.explainer import Explainer

    return Explainer.from_package(small_package, steps=16)


def _batch(split, n=6):
    return {m: split.arrays[m][:n] for m in split.arrays}, {
        m: split.masks[m][:n] for m in split.masks
    }


def test_gradcam_layers(explainer, small_test) -> None:
    from medfuse.explain.gradcam import grad_cam

    inputs, masks = explainer.tensors(*_batch(small_test))
    tgt = torch.zeros(6, dtype=torch.long)
    assert explainer.image_layers["image"] == "features.1"  # the last conv block (depth 2)
    last = grad_cam(explainer.model, inputs, masks, "image", tgt)
    assert last["upsampled"].shape == (6, 16, 16) and last["cam"].shape == (6, 8, 8)
    assert (last["upsampled"] >= 0).all() and last["upsampled"].max() > 0
    first = grad_cam(explainer.model, inputs, masks, "image", tgt, layer="branches.image.stem")
    assert first["cam"].shape == (6, 16, 16) and first["layer"] == "branches.image.stem"
    with pytest.raises(SpecError, match=r"Allowed: stem.*features\.1"):
        grad_cam(explainer.model, inputs, masks, "image", tgt, layer="feature.1")


def test_integrated_gradients_completeness(explainer, small_test) -> None:
    from medfuse.explain.integrated import integrated_gradients

    inputs, masks = explainer.tensors(*_batch(small_test))
    tgt = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        full = explainer.model(inputs, masks)[:, 0]
    for m, shape in (("signal", (6, 2, 64)), ("tabular", (6, 3))):
        r = integrated_gradients(explainer.model, inputs, masks, m, tgt, steps=32)
        assert r["attribution"].shape == shape
        with torch.no_grad():
            at_mean = explainer.model({**inputs, m: torch.zeros_like(inputs[m])}, masks)[:, 0]
        total, diff = r["attribution"].reshape(6, -1).sum(1), (full - at_mean).numpy()
        np.testing.assert_allclose(total, diff, atol=0.02)  # completeness (ReLU kinks: ~1e-2)
        np.testing.assert_allclose(r["delta"], total - diff, atol=1e-4)  # the reported error


def test_model_randomisation_sanity_check(explainer, small_test) -> None:
    """Adebayo et al. 2018: maps of the trained model differ clearly from those of the same
    architecture with random weights (low Spearman rank correlation)."""
    from medfuse.explain.sanity import randomization_check, randomized_copy, spearman

    rnd = randomized_copy(explainer.model, seed=0)
    trained_w = dict(explainer.model.named_parameters())
    assert all(not torch.equal(p, trained_w[n]) for n, p in rnd.named_parameters() if p.numel() > 1)
    assert spearman(np.arange(10.0), np.arange(10.0) ** 3) == pytest.approx(1.0)
    res = randomization_check(explainer, *_batch(small_test, 8))
    assert set(res) == {"image", "signal", "tabular"}
    assert res["image"]["method"] == "grad-cam" and res["image"]["abs"] < 0.6, res
    assert abs(res["signal"]["signed"]) < 0.4, res
    assert abs(res["tabular"]["signed"]) < 0.6, res


def test_central_mass() -> None:
    from medfuse.explain.gradcam import central_mass

    assert central_mass(np.ones((1, 28, 28)))[0] == pytest.approx(0.25, abs=0.02)
    blob = np.zeros((1, 28, 28))
    blob[0, 12:16, 12:16] = 1
    edge = np.zeros((1, 28, 28))
    edge[0, :2] = 1
    assert central_mass(blob)[0] == 1.0 and central_mass(edge)[0] == 0.0
    assert np.isnan(central_mass(np.zeros((1, 4, 4)))[0])
