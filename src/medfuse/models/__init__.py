"""Branches, fusions and the composite model that joins them."""

from medfuse.registry import Registry

BRANCHES: Registry = Registry("branch")
FUSIONS: Registry = Registry("fusion")

# Registration happens on import of these modules.
from medfuse.models import branches as _branches  # noqa: E402,F401
from medfuse.models import fusion as _fusion  # noqa: E402,F401
from medfuse.models.composite import CompositeModel, build_model  # noqa: E402

__all__ = ["BRANCHES", "FUSIONS", "CompositeModel", "build_model"]
