"""Shared fixtures: tiny specs and a tiny trained package (built once per session), and the
shared real-data root (tests that need it skip with a clear reason when it is absent)."""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import medfuse.models  # noqa: F401  (registers the spec check of branch and fusion parameters)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


#: on a subprocess's PYTHONPATH, its ``sitecustomize`` declares torchvision's ops as below (a
#: torchrun worker or a benchmark that builds timm / Hugging Face branches)
SITE = Path(__file__).resolve().parent / "site"
sys.path.insert(0, str(SITE))
from torchvision_ops import declare_missing_ops  # noqa: E402

declare_missing_ops()


REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    for cand in (os.environ.get("MEDFUSE_DATA_DIR"), REPO.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.data("medmnist/breastmnist.npz", "mit-bih-arrhythmia", ...)``: the test
    skips, before any fixture is built, when a file or folder it names is not in the data folder
    (a folder holding some of the datasets)."""
    for mark in item.iter_markers("data"):
        d = shared_data_dir()
        missing = [name for name in mark.args if d is None or not (d / name).exists()]
        if missing:
            where = d or "MEDFUSE_DATA_DIR or ../shared/data"
            pytest.skip(f"real data not found: {', '.join(missing)} in {where}")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real medical datasets (../shared/data or $MEDFUSE_DATA_DIR); skips when absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip(
            "real data not found: set MEDFUSE_DATA_DIR or place ../shared/data beside the repo"
        )
    return d


TINY_SYNTHETIC: dict[str, Any] = {
    "name": "tiny",
    "task": {"type": "binary"},
    "data": {
        "source": "synthetic",
        "options": {
            "n_train": 96,
            "n_val": 48,
            "n_test": 48,
            "image_size": 16,
            "signal_length": 32,
            "signal_channels": 2,
        },
    },
    "branches": {
        "image": {"type": "cnn", "width": 4, "depth": 2, "out_features": 8},
        "signal": {"type": "lstm", "hidden": 8, "out_features": 8},
        "tabular": {"type": "mlp", "hidden": 8, "out_features": 4},
    },
    "fusion": {"type": "concat"},
    "head": {"hidden": 8},
    "train": {"epochs": 2, "batch_size": 32, "early_stopping": None},
}


@pytest.fixture
def tiny_spec() -> dict[str, Any]:
    """A three-modality synthetic spec that trains in about a second."""
    return copy.deepcopy(TINY_SYNTHETIC)


@pytest.fixture(scope="session")
def tiny_synthetic() -> dict[str, Any]:
    """The tiny spec for module- and session-scoped fixtures (deep-copy before changing it)."""
    return copy.deepcopy(TINY_SYNTHETIC)


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained three-modality package (synthetic, image+signal+tabular, LSTM signal branch)."""
    from medfuse.api import train

    out = tmp_path_factory.mktemp("pkg") / "tiny"
    return train(copy.deepcopy(TINY_SYNTHETIC), out=out, device="cpu", progress=False).package


def _image_age_spec(csv: Path, name: str, epochs: int, **data: Any) -> dict[str, Any]:
    """A binary model of a manifest with an 8x8 grey ``image`` column and an ``age`` column:
    tiny branches, batch 8, seed 0; ``data``: more of the spec's ``data`` section."""
    return {
        "name": name,
        "task": {"type": "binary"},
        "data": {"source": f"manifest:{csv}", **data},
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [8, 8]},
            "clinical": {"kind": "tabular", "columns": ["age"]},
        },
        "branches": {
            "image": {"type": "cnn", "width": 4, "depth": 1, "out_features": 4},
            "clinical": {"type": "mlp", "hidden": 4, "out_features": 4},
        },
        "head": {"hidden": 8},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "early_stopping": None, "seed": 0},
    }


@pytest.fixture(scope="session")
def image_age_spec() -> Any:
    """``(csv, name, epochs, **data) -> spec``: a tiny image + age manifest model's spec."""
    return _image_age_spec


# ---- headless Chromium (browser tests: HTML report, explanation pages) ------------------------

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium (``apt-get install -y chromium``); skips when absent."""
    import shutil

    for cand in (os.environ.get("MEDFUSE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if cand and Path(cand).exists():
            return str(cand)
    pytest.skip("no chromium binary (apt-get install -y chromium, or set MEDFUSE_CHROMIUM)")


@pytest.fixture(scope="session")
def browser(chromium_path: str):
    """A Playwright Chromium browser (headless, system chromium); skips without playwright."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def serving() -> Any:
    """:func:`_serving`: run an ASGI app on a real loopback server (``with serving(app) as url``)."""
    return _serving


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    """An ASGI ``app`` (``medfuse serve``'s) on a real uvicorn server at 127.0.0.1:<free port>,
    stopped on exit. Yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
