"""Which optional packages are installed here, and which pip extra provides each.

``pip install medfuse`` is the core and ONNX Runtime prediction; the extras add the rest (see
pyproject's ``[project.optional-dependencies]``, which these tables mirror).
"""

from __future__ import annotations

import importlib.util

#: prediction runtimes; ``auto`` picks torch where PyTorch is installed, else onnx
RUNTIMES = ("auto", "torch", "onnx")
#: the extra that provides each optional top-level module
EXTRA_OF_MODULE: dict[str, str] = {
    **dict.fromkeys(
        ("torch", "safetensors", "pandas", "scipy", "sklearn", "pyarrow", "matplotlib"), "train"
    ),
    **dict.fromkeys(("onnx", "onnxscript"), "export"),
    "torch_pruning": "compress",
    "captum": "explain",
    **dict.fromkeys(
        ("fastapi", "starlette", "uvicorn", "httptools", "uvloop", "multipart"), "serve"
    ),
    **dict.fromkeys(("pydicom", "nibabel", "wfdb"), "medical"),
    "mlflow": "tracking",
    **dict.fromkeys(("timm", "torchvision", "transformers", "tokenizers", "peft"), "pretrained"),
    **dict.fromkeys(("model_signing", "OpenSSL"), "signing"),
}
#: the extras each extra includes (pyproject: ``export = ["medfuse[train]", ...]``)
EXTRA_INCLUDES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "export": ("export", "train"),
    "compress": ("compress", "export", "train"),
    "explain": ("explain", "train"),
    "serve": ("serve",),
    "medical": ("medical",),
    "tracking": ("tracking",),
    "signing": ("signing",),
    "pretrained": ("pretrained", "train"),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a half-removed package
        return False


def extra_for(module: str, wanted: str | None = None) -> str | None:
    """The extra to install for a missing ``module``: ``wanted`` (the extra of what was being
    run) when it includes the module's extra, else the module's own; None when ``module`` is
    not an optional dependency of medfuse."""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0])
    if extra is None:
        return None
    return wanted if wanted and extra in EXTRA_INCLUDES.get(wanted, ()) else extra


def unusable(modules: tuple[str, ...] | list[str]) -> str | None:
    """Why ``modules`` cannot be imported here (missing, or installed but failing to import),
    naming the extra to install; None when all of them import."""
    # lazy: stdlib, kept off the --help path
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # ImportError, or a broken install (an ABI mismatch)
            extra = extra_for(name)
            hint = f" (pip install 'medfuse[{extra}]')" if extra else ""
            return f"{name} cannot be imported{hint}: {type(err).__name__}: {err}"
    return None
