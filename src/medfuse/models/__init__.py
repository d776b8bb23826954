"""Branches, fusions and the composite model that joins them."""

from medfuse.core.registry import Registry
from medfuse.core.spec import BRANCH_RESERVED, Spec, register_spec_check

BRANCHES: Registry = Registry("branch")
FUSIONS: Registry = Registry("fusion")


@register_spec_check
def check_builder_params(spec: Spec) -> None:
    """Branch and fusion parameters against their registered builders (``parse_spec`` runs it)."""
    for name, b in spec.branches.items():
        params = {k: v for k, v in b.params.items() if k not in BRANCH_RESERVED}
        BRANCHES.check_params(b.type, params, path=f"branches.{name}", skip=("input_shape",))
    FUSIONS.check_params(
        spec.fusion.type, spec.fusion.params, path="fusion", skip=("feature_dims", "num_outputs")
    )


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
