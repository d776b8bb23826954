"""Branches, fusions and the composite model that joins them."""

from medfuse.registry import Registry

BRANCHES: Registry = Registry("branch")
FUSIONS: Registry = Registry("fusion")

# Registration happens on import of these modules.
from medfuse.models import branches as _branches  # noqa: E402,F401
from medfuse.models import fusion as _fusion  # noqa: E402,F401
from medfuse.models.composite import (  # noqa: E402
    CompositeModel,
    EnsembleModel,
    build_model,
    member_spec,
    members,
)

__all__ = [
    "BRANCHES",
    "FUSIONS",
    "CompositeModel",
    "EnsembleModel",
    "build_model",
    "member_spec",
    "members",
]
