"""The top-level API stays what the README says, whatever was imported before."""

from __future__ import annotations

import subprocess
import sys


def test_top_level_names_are_the_api_functions() -> None:
    code = (
        "import medfuse, medfuse.training.metrics, medfuse.data, medfuse.inference.predictor;"
        "import inspect;"
        "assert inspect.isfunction(medfuse.train), medfuse.train;"
        "assert inspect.isfunction(medfuse.evaluate) and inspect.isfunction(medfuse.load)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_medfuse_is_light() -> None:
    """`import medfuse` must not pull in torch (the CLI and the runtime stay quick)."""
    code = "import sys, medfuse; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_predictor_protocol_asks_only_for_its_public_api() -> None:
    """``medfuse.core.predictor.Predictor`` is what your own predictor implements: an object
    with its public methods and properties satisfies it (``isinstance``), whatever private
    helpers medfuse's own predictors have."""
    from medfuse.core.predictor import Predictor

    declared = [*dir(Predictor), *Predictor.__annotations__]  # methods, properties, attributes
    public = sorted({n for n in declared if not n.startswith("_")})
    assert {"predict", "predict_proba", "predict_rows", "predict_table", "schema"} <= set(public)
    own = type("OwnPredictor", (), {n: lambda *a, **k: None for n in public})()
    assert isinstance(own, Predictor)
