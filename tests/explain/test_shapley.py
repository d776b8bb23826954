"""Exact modality Shapley values: the axioms on known games, efficiency on a real model, absent
modalities, and the acceptance check: the dataset ranking matches the generator's truth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from medfuse.explain.shapley import coalitions, exact_shapley


def _game(m: int, v) -> np.ndarray:
    """Values of every coalition in ``coalitions`` order for a set function ``v(frozenset)``."""
    return np.array([[v(frozenset(np.flatnonzero(row))) for row in coalitions(m)]])


def test_known_games() -> None:
    a = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(exact_shapley(_game(3, lambda s: a[list(s)].sum())), [a])
    # pure interaction of players 0 and 1: they share it equally, player 2 is a null player
    phi = exact_shapley(_game(3, lambda s: float({0, 1} <= s)))
    np.testing.assert_allclose(phi, [[0.5, 0.5, 0.0]])
    # a random 4-player game: efficiency, and symmetry under relabelling the players
    rng = np.random.default_rng(0)
    table = {
        frozenset(s): rng.normal() for r in range(5) for s in itertools.combinations(range(4), r)
    }
    v = _game(4, lambda s: table[s])
    phi = exact_shapley(v)
    assert abs(phi.sum() - (v[0, -1] - v[0, 0])) < 1e-12
    perm = [2, 0, 3, 1]
    v2 = _game(4, lambda s: table[frozenset(perm[i] for i in s)])
    np.testing.assert_allclose(exact_shapley(v2)[0], phi[0][perm], atol=1e-12)
    with pytest.raises(ValueError, match="2\\*\\*M"):
        exact_shapley(np.zeros((1, 6)))


def test_efficiency_and_presence_on_trained_model(small_package, small_test) -> None:
    from medfuse.explain.explainer import Explainer
    from medfuse.inference.predictor import load

    pred = load(small_package)
    ex = Explainer(pred)
    arrays = {m: small_test.arrays[m][:40].copy() for m in ex.names}
    masks = {m: small_test.masks[m][:40].copy() for m in ex.names}
    masks["signal"][::3] = 0.0  # a third of the cases without their signal
    arrays["signal"][::3] = 0.0
    res = ex.shapley(arrays, masks, batch=16)  # several chunks
    p = pred.predict_proba({**arrays, "mask": masks})
    # no modality at all is refused as user input (the input contract); the data pipeline's own
    # arrays (a Split: .arrays / .masks) pass through, so the baseline is computed on one
    from types import SimpleNamespace

    zeros = {m: np.zeros(40, np.float32) for m in ex.names}
    none = pred.predict_proba(SimpleNamespace(arrays=arrays, masks=zeros))
    for sc, r in res.items():
        # Shapley values sum to f(all present) - f(none present), to float precision
        assert np.abs(r.values.sum(1) - (r.full - r.base)).max() < 1e-9, sc
    pr = res["probability"]
    np.testing.assert_allclose(pr.full, p, atol=1e-5)
    np.testing.assert_allclose(pr.base, none, atol=1e-5)
    j = ex.names.index("signal")
    assert np.all(pr.values[::3, j] == 0.0)  # an absent modality contributes exactly nothing
    assert np.abs(pr.values[1::3, j]).mean() > 0.01


def test_dataset_ranking_matches_generator_truth(small_package, small_test, true_weights) -> None:
    """Acceptance (small run): mean |Shapley| ranks image > signal > tabular like the truth."""
    from medfuse.explain.explainer import Explainer

    ex = Explainer.from_package(small_package)
    res = ex.shapley(small_test.arrays, small_test.masks)
    truth = {m: np.abs(small_test.meta[f"contrib_{m}"]).mean() for m in ex.names}
    true_rank = sorted(truth, key=lambda m: -truth[m])
    assert true_rank == sorted(true_weights, key=lambda m: -true_weights[m])
    for sc in ("probability", "logit"):
        assert res[sc].summary()["ranking"] == true_rank, res[sc].summary()
    # per case too: each modality's Shapley value tracks its true contribution
    from scipy.stats import spearmanr

    for j, m in enumerate(ex.names[:2]):
        r = spearmanr(res["logit"].values[:, j], small_test.meta[f"contrib_{m}"]).statistic
        assert r > 0.6, (m, r)


def test_multiclass_target_and_efficiency(tmp_path, untrained) -> None:
    from medfuse.explain.explainer import Explainer
    from medfuse.explain.shapley import modality_shapley
    from medfuse.inference.predictor import load

    make_package, make_inputs = untrained
    pred = load(make_package(tmp_path / "mc"))
    arrays, masks = make_inputs(4)
    ex = Explainer(pred, target="c", steps=4)
    inputs, mk = ex.tensors(arrays, masks)
    tgt = torch.full((4,), 2)
    res = modality_shapley(pred.model, inputs, mk, task="multiclass", target=tgt)
    p = pred.predict_proba({**arrays, "mask": masks})
    np.testing.assert_allclose(res["probability"].full, p[:, 2], atol=1e-5)
    assert (
        np.abs(
            res["probability"].values.sum(1) - (res["probability"].full - res["probability"].base)
        ).max()
        < 1e-9
    )
    out = ex.explain(arrays, masks, pictures=False)
    assert {s["explained"]["class"] for s in out.samples} == {"c"}
    predicted = Explainer(pred, steps=4).explain(arrays, masks, pictures=False)
    assert [s["explained"]["index"] for s in predicted.samples] == p.argmax(1).tolist()
