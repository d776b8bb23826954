"""ensemble: K: members trained one after another (seed + k), probabilities averaged; the package,
--resume, Grad-CAM, ONNX export, prune and quantize with an ensemble."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medfuse.api import train
from medfuse.core.errors import SpecError


@pytest.fixture(scope="module")
def ens_spec(tiny_synthetic) -> dict:
    import copy

    return {**copy.deepcopy(tiny_synthetic), "ensemble": 2}


@pytest.fixture(scope="module")
def ens_package(ens_spec, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ens") / "p"
    return train(ens_spec, out=out, device="cpu", progress=False).package


def _split_tensors(pkg):
    from medfuse.api import load_spec_data
    from medfuse.inference.helpers import to_tensors

    bundle = load_spec_data(pkg.spec, None)
    return bundle.test, to_tensors(bundle.test, pkg.meta["preprocessing"])


def test_members_have_their_seeds_and_the_package_averages_their_probabilities(
    ens_package, tiny_package
) -> None:
    from safetensors.torch import load_file

    from medfuse.inference.package import load_package
    from medfuse.inference.predictor import load
    from medfuse.models import CompositeModel, EnsembleModel, member_spec
    from medfuse.models.composite import count_parameters

    pkg = load_package(ens_package)
    assert isinstance(pkg.model, EnsembleModel) and len(pkg.model.members) == 2
    meta = pkg.meta
    assert [m["seed"] for m in meta["training"]["members"]] == [0, 1000]
    single = count_parameters(CompositeModel(member_spec(pkg.spec, 0)))
    assert meta["parameters"] == 2 * single
    a, b = (dict(m.named_parameters()) for m in pkg.model.members)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different seeds, different weights
    single_w = load_file(str(tiny_package / "model.safetensors"))  # the same spec, seed 0
    ens_w = load_file(str(ens_package / "model.safetensors"))
    assert all(torch.equal(v, ens_w[f"members.0.{k}"]) for k, v in single_w.items())

    split, t = _split_tensors(pkg)
    with torch.no_grad():
        each = [torch.sigmoid(m(t.inputs, t.masks))[:, 0].numpy() for m in pkg.model.members]
    mean = np.mean(each, axis=0)
    got = load(ens_package).predict_proba({m: split.arrays[m] for m in split.arrays})
    assert np.abs(np.asarray(got).reshape(-1) - mean).max() < 1e-6
    assert not np.allclose(each[0], each[1])

    lines = [json.loads(x) for x in (ens_package / "metrics.jsonl").read_text().splitlines()]
    assert [(r["member"], r["epoch"]) for r in lines] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert "an ensemble of 2 members, seeds 0, 1000" in (ens_package / "README.md").read_text()


def test_resume_retrains_only_the_unfinished_member(ens_spec, ens_package, tmp_path) -> None:
    from safetensors.torch import load_file

    calls = []

    def crash_in_member_1(record: dict) -> None:
        calls.append(record)
        if len(calls) == 3:  # member 0 ran epochs 1-2; member 1 dies after its first epoch
            raise KeyboardInterrupt

    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        train(ens_spec, out=out, device="cpu", progress=False, on_epoch=crash_in_member_1)
    assert (tmp_path / "p.train" / "member0.safetensors").exists() and not out.exists()
    calls.clear()
    res = train(ens_spec, out=out, device="cpu", progress=False, resume=True, on_epoch=calls.append)
    # member 0 is kept; member 1 died in its epoch-1 callback, before that epoch's checkpoint
    assert [r["epoch"] for r in calls] == [1, 2]
    resumed, whole = (load_file(str(p / "model.safetensors")) for p in (res.package, ens_package))
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)  # as if never interrupted
    lines = [json.loads(x) for x in (res.package / "metrics.jsonl").read_text().splitlines()]
    assert [(r["member"], r["epoch"]) for r in lines] == [(0, 1), (0, 2), (1, 1), (1, 2)]


def test_gradcam_of_an_ensemble_of_identical_members_is_the_members_map(ens_package) -> None:
    from medfuse.explain.gradcam import grad_cam
    from medfuse.inference.package import load_package

    pkg = load_package(ens_package)
    model = pkg.model
    model.members[1].load_state_dict(model.members[0].state_dict())
    _, t = _split_tensors(pkg)
    inputs = {m: v[:4] for m, v in t.inputs.items()}
    masks = {m: v[:4] for m, v in t.masks.items()}
    tgt = torch.zeros(4, dtype=torch.long)
    ens = grad_cam(model, inputs, masks, "image", tgt)
    one = grad_cam(model.members[0], inputs, masks, "image", tgt)
    assert ens["layer"] == one["layer"] == "branches.image.features.1"
    assert one["cam"].max() > 0
    np.testing.assert_allclose(ens["cam"], one["cam"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_an_exported_ensemble_keeps_parity_and_serves(ens_package, tmp_path, fmt) -> None:
    from medfuse.core.package import read_meta
    from medfuse.export.exporter import export_package

    dst = tmp_path / "p"
    shutil.copytree(ens_package, dst)
    res = export_package(dst, format=fmt)
    assert res.report is not None and res.report.ok, res.report
    assert read_meta(dst)["exports"][fmt]["max_abs_diff"] <= 1e-4
    if fmt != "onnx":
        return
    # the exported ensemble served over HTTP (ONNX Runtime and torch backends) = the predictor
    from fastapi.testclient import TestClient

    from medfuse.inference.predictor import load
    from medfuse.serve.app import create_app

    torch_predictor = load(dst)  # PyTorch, the reference
    split, _ = _split_tensors(torch_predictor)
    rows = [{m: split.arrays[m][i] for m in split.arrays} for i in range(3)]
    ref = torch_predictor.predict_proba(rows)
    body = {
        "instances": [
            {
                "image": {"array": r["image"].tolist()},
                "signal": {"array": r["signal"].tolist()},
                "tabular": dict(zip(["age", "bmi", "marker"], map(float, r["tabular"]))),
            }
            for r in rows
        ]
    }
    for runtime in ("onnx", "torch"):
        r = TestClient(create_app(dst, runtime=runtime)).post("/v1/predict", json=body)
        assert r.status_code == 200, r.text
        got = [x["probabilities"]["positive"] for x in r.json()["predictions"]]
        assert np.abs(np.array(got) - ref).max() < 1e-5, runtime


def test_prune_refuses_an_ensemble_and_quantize_knows_member_nodes(ens_package, tmp_path) -> None:
    from medfuse.compress.prune import prune
    from medfuse.compress.quantize import HEAD, node_owner

    with pytest.raises(SpecError, match=r"ensemble of 2 members.*medfuse distill"):
        prune(ens_package, out=tmp_path / "pruned")
    assert not (tmp_path / "pruned").exists()
    mods = ["image", "signal"]
    assert node_owner("/model/members.1/branches.image/features/Conv", mods) == "image"
    assert node_owner("/model/members.0/branches.signal/LSTM", mods) == "signal"
    assert node_owner("/model/members.3/head/head.0/Gemm", mods) == HEAD


def test_ensemble_size_is_validated(ens_spec) -> None:
    from medfuse.core.spec import parse_spec

    for bad in (0, 33, "two"):
        with pytest.raises(SpecError, match=r"ensemble"):
            parse_spec({**ens_spec, "ensemble": bad})


def test_an_ensemble_teaches_a_single_student(ens_package, tmp_path) -> None:
    import medfuse.compress
    from medfuse.inference.package import load_package
    from medfuse.models import CompositeModel

    student = {
        "branches": {"image": {"type": "cnn", "width": 4, "depth": 2, "out_features": 8}},
        "train": {"epochs": 1, "batch_size": 32, "early_stopping": None},
    }
    res = medfuse.compress.distill(
        ens_package, student=student, out=tmp_path / "kd", device="cpu", progress=False
    )
    pkg = load_package(res.package)
    assert isinstance(pkg.model, CompositeModel) and pkg.spec.ensemble == 1
    with pytest.raises(SpecError, match=r"ensemble.*a student is one composite"):
        medfuse.compress.distill(
            ens_package, student={**student, "ensemble": 2}, out=tmp_path / "x", device="cpu"
        )
    assert not (tmp_path / "x").exists()
    assert pkg.meta["compression"][0]["teachers"][0]["modalities"] == ["image", "signal", "tabular"]


def test_int8_quantization_of_an_ensemble_quantizes_every_member(ens_package, tmp_path) -> None:
    import onnx

    from medfuse.compress.quantize import quantize

    res = quantize(ens_package, out=tmp_path / "q", calibration=16)
    settings = res.record["settings"]
    assert settings["parts"]["image"] == "static"  # the members' image nodes were found
    assert sorted(settings["fp32_layers"]) == [  # the thin stem of each member stays fp32
        "/model/members.0/image/stem/stem.0/Conv",
        "/model/members.1/image/stem/stem.0/Conv",
    ]
    graph = onnx.load(str(res.package / "model.onnx")).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name not in settings["fp32_layers"]]
    assert convs and all(n.input[1] in dq for n in convs)  # INT8 weights (QDQ) everywhere else
    assert {n.name.split("/")[2] for n in convs} == {"members.0", "members.1"}
