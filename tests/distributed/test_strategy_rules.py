"""Each strategy owns its rules (``Strategy.validate(spec, world)``), with the messages that
``start_session`` gave when they were an if-chain there."""

from __future__ import annotations

import copy

import pytest

from medfuse.core.errors import SpecError
from medfuse.core.spec import parse_spec
from medfuse.distributed.strategies import STRATEGIES, start_session


def _spec(tiny_synthetic, **train):
    d = copy.deepcopy(tiny_synthetic)
    d["train"].update(train)
    return parse_spec(d)


def test_fsdp_refuses_ema_and_sam(tiny_synthetic) -> None:
    fsdp = STRATEGIES.get("fsdp")
    with pytest.raises(SpecError, match=r"train\.ema.*weight EMA is not supported with 'fsdp'"):
        fsdp.validate(_spec(tiny_synthetic, ema=0.9), 2)
    with pytest.raises(SpecError, match=r"train\.sam.*sharpness-aware.*not supported with 'fsdp'"):
        fsdp.validate(_spec(tiny_synthetic, sam=0.05), 2)
    fsdp.validate(_spec(tiny_synthetic), 2)
    for name in ("ddp", "single"):  # the others take both
        STRATEGIES.get(name).validate(_spec(tiny_synthetic, ema=0.9, sam=0.05), 2)


def test_branch_is_one_process_and_hybrid_is_not(tiny_synthetic) -> None:
    spec = _spec(tiny_synthetic, placement={"signal": "cpu"})
    with pytest.raises(
        SpecError,
        match=r"train\.strategy.*'branch' is model parallel inside one "
        r"process, but 2 processes were started; use 'hybrid'",
    ):
        STRATEGIES.get("branch").validate(spec, 2)
    STRATEGIES.get("branch").validate(spec, 1)
    STRATEGIES.get("hybrid").validate(spec, 4)


@pytest.mark.parametrize("name", ["single", "ddp", "fsdp"])
def test_placement_belongs_to_branch_and_hybrid(tiny_synthetic, name) -> None:
    spec = _spec(tiny_synthetic, placement={"signal": "cpu"})
    with pytest.raises(
        SpecError,
        match=rf"train\.placement.*'branch' and 'hybrid' strategies only; the "
        rf"strategy is '{name}'",
    ):
        STRATEGIES.get(name).validate(spec, 1)


def test_start_session_applies_the_rules_of_the_strategy_it_runs(tiny_synthetic) -> None:
    # one process: ddp trains as single, whose rule refuses a placement
    with pytest.raises(SpecError, match=r"the strategy is 'single'"):
        start_session(_spec(tiny_synthetic, strategy="ddp", placement={"image": "cpu"}), "cpu")
    # fsdp in one process trains as single: ema is then fine
    assert start_session(_spec(tiny_synthetic, strategy="fsdp", ema=0.9), "cpu").strategy_name == (
        "single"
    )
