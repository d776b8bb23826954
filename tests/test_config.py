"""Spec validation: errors name the field path, the bad value and what is allowed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from medfuse.core.errors import SpecError
from medfuse.core.spec import apply_overrides, load_spec, parse_spec


def test_unknown_branch_suggests_the_close_name(tiny_spec) -> None:
    tiny_spec["branches"]["image"]["type"] = "resnt18"
    with pytest.raises(SpecError) as e:
        parse_spec(tiny_spec)
    msg = str(e.value)
    assert "branches.image.type" in msg and "resnt18" in msg and "did you mean 'resnet18'" in msg
    assert "cnn1d" in msg  # lists what is allowed


def test_unknown_branch_parameter(tiny_spec) -> None:
    tiny_spec["branches"]["image"]["widht"] = 8
    with pytest.raises(SpecError, match=r"branches\.image\.widht.*did you mean 'width'"):
        parse_spec(tiny_spec)


def test_wrong_parameter_type(tiny_spec) -> None:
    tiny_spec["branches"]["image"]["width"] = "wide"
    with pytest.raises(SpecError, match=r"branches\.image\.width.*must be of type int"):
        parse_spec(tiny_spec)


def test_unknown_top_level_field_and_literal(tiny_spec) -> None:
    tiny_spec["trian"] = {}
    with pytest.raises(SpecError, match=r"'trian'.*did you mean 'train'"):
        parse_spec(tiny_spec)
    del tiny_spec["trian"]
    tiny_spec["train"]["schedule"] = "cosin"
    with pytest.raises(SpecError, match=r"train\.schedule.*cosine"):
        parse_spec(tiny_spec)


def test_unknown_fusion_and_data_source(tiny_spec) -> None:
    tiny_spec["fusion"]["type"] = "gatd"
    with pytest.raises(SpecError, match=r"fusion\.type.*did you mean 'gated'"):
        parse_spec(tiny_spec)
    from medfuse.data import load_data

    with pytest.raises(SpecError, match=r"data\.source.*did you mean 'synthetic'"):
        load_data("synthtic")


def test_branch_for_unknown_modality() -> None:
    spec = {
        "data": {"source": "synthetic"},
        "modalities": {"image": {"kind": "image", "channels": 1, "size": [8, 8]}},
        "branches": {"imgae": {"type": "cnn"}},
    }
    with pytest.raises(SpecError, match=r"branches\.imgae.*did you mean 'image'"):
        parse_spec(spec)


def test_json_roundtrip_and_overrides(tiny_spec) -> None:
    spec = parse_spec(tiny_spec)
    again = parse_spec(json.loads(spec.to_json()))
    assert again == spec
    assert parse_spec(yaml.safe_load(spec.to_yaml())) == spec
    d = apply_overrides(
        tiny_spec, ["train.lr=0.01", "branches.image.width=6", "train.stages=[branches, fusion]"]
    )
    s = parse_spec(d)
    assert s.train.lr == 0.01 and s.branches["image"].params["width"] == 6
    assert [st.name for st in s.train.stages] == ["branches", "fusion"]


def test_shipped_configs_are_valid() -> None:
    for name in ("synthetic", "breastmnist", "pneumoniamnist"):
        assert load_spec(f"configs/{name}.yaml").name == name


def test_cli_bad_spec_exits_2_with_message(tmp_path, tiny_spec) -> None:
    tiny_spec["branches"]["image"]["type"] = "resnt18"
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(tiny_spec))
    r = subprocess.run(
        [sys.executable, "-m", "medfuse", "train", str(cfg), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "branches.image.type" in r.stderr and "resnet18" in r.stderr
    assert not (tmp_path / "o").exists()
