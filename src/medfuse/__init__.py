"""medfuse: compose, train, compress and migrate multimodal medical deep models.

>>> import medfuse
>>> result = medfuse.train("configs/synthetic.yaml")        # -> TrainResult(package, metrics, seconds)
>>> predictor = medfuse.load(result.package, device="cpu")
>>> predictor.predict_proba(samples)
>>> medfuse.fit("cases.csv", label="diagnosis", positive="malignant", out="runs/cases")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "fit", "load", "load_spec", "train"]


def __getattr__(name: str) -> Any:  # lazy: `import medfuse` stays quick
    if name in ("train", "evaluate", "fit"):
        from medfuse import api

        return getattr(api, name)
    if name == "load":
        from medfuse.inference.predictor import load

        return load
    if name == "load_spec":
        from medfuse.core.spec import load_spec

        return load_spec
    raise AttributeError(f"module 'medfuse' has no attribute {name!r}")
