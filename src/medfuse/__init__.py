"""medfuse: compose, train, compress and migrate multimodal medical deep models.

>>> import medfuse
>>> result = medfuse.train("configs/synthetic.yaml")        # -> TrainResult(package, metrics, seconds)
>>> predictor = medfuse.load(result.package, device="cpu")
>>> predictor.predict_proba(samples)
>>> medfuse.fit("cases.csv", label="diagnosis", positive="malignant", out="runs/cases")

The names below are imported on first use, so ``import medfuse`` stays quick and needs no torch
(``pip install medfuse`` predicts with ONNX Runtime: ``medfuse.runtime.load``); ``dir(medfuse)``,
IDEs and type checkers see them all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medfuse.core.errors import DataError, MedfuseError, PackageError, SpecError

if TYPE_CHECKING:
    from medfuse.api import TrainResult, evaluate, fit, train
    from medfuse.core.onnx import OnnxPredictor
    from medfuse.core.spec import Spec, load_spec
    from medfuse.inference.package import Package, load_package
    from medfuse.inference.predictor import Predictor, load

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first use)
_LAZY: dict[str, str] = {
    "train": "medfuse.api",
    "evaluate": "medfuse.api",
    "fit": "medfuse.api",
    "TrainResult": "medfuse.api",
    "load": "medfuse.inference.predictor",
    "Predictor": "medfuse.inference.predictor",
    "Package": "medfuse.inference.package",
    "load_package": "medfuse.inference.package",
    "OnnxPredictor": "medfuse.core.onnx",
    "Spec": "medfuse.core.spec",
    "load_spec": "medfuse.core.spec",
}

__all__ = [
    "DataError",
    "MedfuseError",
    "OnnxPredictor",
    "Package",
    "PackageError",
    "Predictor",
    "Spec",
    "SpecError",
    "TrainResult",
    "__version__",
    "evaluate",
    "fit",
    "load",
    "load_package",
    "load_spec",
    "train",
]


def __getattr__(name: str) -> Any:  # lazy: torch and pydantic load only when a name is used
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medfuse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public surface (what IDEs complete), not the module's own helpers."""
    return sorted(__all__)
