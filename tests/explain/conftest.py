"""Explain fixtures: a small three-modality model that has learned something (synthetic data
with distinct true modality weights), its test split, and untrained packages of other tasks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

#: the generator's true modality weights: a distinct ranking image > signal > tabular
WEIGHTS = {"image": 1.5, "signal": 1.0, "tabular": 0.5}

SMALL: dict[str, Any] = {
    "name": "explain-small",
    "task": {"type": "binary"},
    "data": {
        "source": "synthetic",
        "options": {
            "n_train": 300,
            "n_val": 100,
            "n_test": 200,
            "image_size": 16,
            "signal_length": 64,
            "signal_channels": 2,
            "weights": WEIGHTS,
        },
    },
    "branches": {
        "image": {"type": "cnn", "width": 8, "depth": 2, "out_features": 16},
        "signal": {"type": "cnn1d", "width": 8, "depth": 3, "out_features": 16},
        "tabular": {"type": "mlp", "hidden": 16, "out_features": 8},
    },
    "fusion": {"type": "concat"},
    "head": {"hidden": 16},
    "train": {"epochs": 6, "batch_size": 32, "lr": 0.005, "early_stopping": None, "seed": 1},
}


@pytest.fixture(scope="session")
def small_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained three-modality package (about 5 s): test AUROC ~0.93."""
    from medfuse.api import train

    out = tmp_path_factory.mktemp("explain") / "small"
    return train(copy.deepcopy(SMALL), out=out, device="cpu", progress=False).package


@pytest.fixture(scope="session")
def small_test() -> Any:
    """The small package's test split (raw arrays, masks, labels, meta with contrib_<m>)."""
    from medfuse.api import prepare_data
    from medfuse.core.spec import parse_spec

    return prepare_data(parse_spec(copy.deepcopy(SMALL)))[1].test


def _untrained_package(
    path: Path, task: str = "multiclass", labels: list[str] | None = None
) -> Path:
    """A package with random weights (no training): for shape/plumbing tests of other tasks."""
    import torch

    from medfuse.core.spec import parse_spec
    from medfuse.inference.package import save_package
    from medfuse.models import build_model

    labels = labels or (["a", "b", "c"] if task != "binary" else ["neg", "pos"])
    spec = parse_spec(
        {
            "name": "untrained",
            "task": {"type": task, "labels": labels},
            "data": {"source": "synthetic"},
            "modalities": {
                "xray": {"kind": "image", "channels": 1, "size": [12, 12]},
                "ecg": {"kind": "signal", "channels": 3, "length": 40},
                "labs": {"kind": "tabular", "columns": ["crp", "sex"]},
            },
            "branches": {
                "xray": {"type": "cnn", "width": 4, "depth": 2, "out_features": 8},
                "ecg": {"type": "gru", "hidden": 6, "out_features": 6},
                "labs": {"type": "mlp", "hidden": 8, "out_features": 4},
            },
            "fusion": {"type": "gated", "hidden": 8},
            "head": {"hidden": 8},
        }
    )
    torch.manual_seed(0)
    model = build_model(spec).eval()
    stats = {
        "xray": {"mean": [0.0], "std": [1.0], "channel_axis": 0},
        "ecg": {"mean": [0.0] * 3, "std": [1.0] * 3, "channel_axis": 0},
        "labs": {
            "mean": [1.0, 0.5],
            "std": [2.0, 0.5],
            "channel_axis": 0,
            "categories": {"sex": ["F", "M"]},
        },
    }
    thr = {"method": "argmax" if task == "multiclass" else "fixed", "value": 0.5}
    return save_package(
        path, model=model, spec=spec, preprocessing=stats, threshold=thr, metrics={}
    )


def _untrained_inputs(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    arrays = {
        "xray": rng.standard_normal((n, 1, 12, 12)).astype(np.float32),
        "ecg": rng.standard_normal((n, 3, 40)).astype(np.float32),
        "labs": np.stack([rng.normal(1, 2, n), rng.integers(0, 2, n)], 1).astype(np.float32),
    }
    masks = {m: np.ones(n, np.float32) for m in arrays}
    return arrays, masks


@pytest.fixture
def untrained() -> Any:
    """``(make_package(path, task, labels), make_inputs(n, seed))`` for an untrained 3-modality
    model (image ``xray`` 12x12, signal ``ecg`` 3x40 GRU, tabular ``labs`` with a category)."""
    return _untrained_package, _untrained_inputs


@pytest.fixture
def true_weights() -> dict[str, float]:
    return dict(WEIGHTS)


TOKEN = "explain-test-token"


@pytest.fixture(scope="session")
def live_server(small_package: Path, serving: Any) -> Any:
    """``medfuse serve``'s app on a real uvicorn server at 127.0.0.1:<free port> (torch runtime,
    bearer token ``TOKEN``). Yields ``(base_url, token)``."""
    from medfuse.serve.app import create_app

    with serving(create_app(small_package, runtime="torch", token=TOKEN)) as url:
        yield url, TOKEN
