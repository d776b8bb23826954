"""Every registered branch (and each of its variants: ``hf`` on text) and fusion: forward,
backward, a missing modality, save/load."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medfuse.core.optional import unusable
from medfuse.core.spec import parse_spec
from medfuse.inference.package import load_package, save_package
from medfuse.models import BRANCHES, FUSIONS, build_model

SHAPES = {
    "image": {"kind": "image", "channels": 1, "size": [16, 16]},
    "signal": {"kind": "signal", "channels": 2, "length": 24},
    "tabular": {"kind": "tabular", "columns": ["a", "b", "c"]},
    # tried last: only branches that accept none of the above land here (crnn: D slices)
    "volume": {"kind": "image", "channels": 1, "size": [3, 12, 12]},
    # never tried: a branch's variant for text names it (BRANCHES.variants)
    "text": {"kind": "text", "length": 8, "vocab": 64},
}
KIND_OF_BRANCH = {}


def _kind_for(branch: str) -> str:
    """Which modality kind a branch accepts, found by trying (new branches need no edit here)."""
    for kind, m in SHAPES.items():
        if kind == "text":
            continue
        spec = parse_spec(
            {
                "data": {"source": "synthetic"},
                "task": {"labels": ["n", "p"]},
                "modalities": {"x": m},
                "branches": {"x": {"type": branch, **BRANCHES.example(branch)}},
            }
        )
        try:
            build_model(spec)
            return kind
        except Exception:
            continue
    raise AssertionError(f"branch {branch!r} accepts none of the test modalities")


def _spec(branch: str, fusion: str, task: str = "binary", variant: str | None = None) -> dict:
    kind = variant or _kind_for(branch)
    example = BRANCHES.variants(branch)[variant] if variant else BRANCHES.example(branch)
    mods = {"x": SHAPES[kind], "t": SHAPES["tabular"] if kind != "tabular" else SHAPES["image"]}
    other = "mlp" if kind != "tabular" else "cnn"
    labels = ["n", "p"] if task == "binary" else ["a", "b", "c"]
    return {
        "data": {"source": "synthetic"},
        "task": {"type": task, "labels": labels},
        "modalities": mods,
        "branches": {"x": {"type": branch, **example}, "t": {"type": other}},
        "fusion": {"type": fusion},
    }


def _batch(spec, n: int = 4):
    inputs = {
        m: torch.randint(0, 30, (n, *s.shape)).float()
        if s.kind == "text"
        else torch.randn(n, *s.shape)
        for m, s in spec.modalities.items()
    }
    masks = {m: torch.ones(n) for m in spec.modalities}
    return inputs, masks


def _sweep() -> list:
    """Every branch with every fusion; a zoo branch (timm, torchvision, hf: seconds each) with
    the first fusion in the fast run and with the others under ``slow``."""
    out = []
    for branch in BRANCHES.names():
        for variant in (None, *BRANCHES.variant_kinds(branch)):
            for i, fusion in enumerate(FUSIONS.names()):
                slow = bool(BRANCHES.requires(branch)) and i > 0
                out.append(
                    pytest.param(
                        branch,
                        fusion,
                        variant,
                        id=f"{branch}-{fusion}" + (f"-{variant}" if variant else ""),
                        marks=[pytest.mark.slow] if slow else [],
                    )
                )
    return out


@pytest.mark.parametrize(("branch", "fusion", "variant"), _sweep())
def test_forward_backward_missing_and_roundtrip(
    branch: str, fusion: str, variant: str | None, tmp_path
) -> None:
    if reason := unusable(BRANCHES.requires(branch)):
        pytest.skip(f"branch {branch!r}: {reason}")
    spec = parse_spec(_spec(branch, fusion, variant=variant))
    torch.manual_seed(0)
    model = build_model(spec)
    inputs, masks = _batch(spec)
    logits = model(inputs, masks)
    assert logits.shape == (4, 1)
    logits.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("branches.x.")]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the branch"

    # a missing modality: zero tensor + mask 0 must give finite output, and the values of the
    # absent modality must not matter
    model.eval()
    masks_missing = dict(masks, x=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    a = model(
        dict(inputs, x=inputs["x"] * masks_missing["x"].view(-1, *[1] * (inputs["x"].dim() - 1))),
        masks_missing,
    )
    b = model(dict(inputs, x=torch.randn_like(inputs["x"]) * 5), masks_missing)
    assert torch.isfinite(a).all()
    assert torch.allclose(a[1], b[1], atol=1e-5) and torch.allclose(a[3], b[3], atol=1e-5)
    all_missing = {m: torch.zeros(4) for m in masks}
    assert torch.isfinite(
        model({m: torch.zeros_like(v) for m, v in inputs.items()}, all_missing)
    ).all()

    _assert_roundtrip_identical(model, spec, inputs, masks, tmp_path / "p")


def _assert_roundtrip_identical(model, spec, inputs, masks, path) -> None:
    """Saved as a package and loaded back, the model gives identical outputs."""
    stats = {  # identity statistics: a package always carries one entry per modality
        m: {"mean": [0.0] * s.shape[0], "std": [1.0] * s.shape[0], "channel_axis": 0}
        for m, s in spec.modalities.items()
    }
    pkg = save_package(
        path, model=model, spec=spec, preprocessing=stats, threshold={"value": 0.5}, metrics={}
    )
    loaded = load_package(pkg).model
    with torch.no_grad():
        assert torch.equal(model(inputs, masks), loaded(inputs, masks))


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_multi_output_tasks(task: str) -> None:
    spec = parse_spec(_spec("cnn", "concat", task))
    model = build_model(spec)
    inputs, masks = _batch(spec)
    assert model(inputs, masks).shape == (4, 3)


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        BRANCHES.register("cnn")(lambda **k: None)


def test_resnet18_is_resnet18_sized() -> None:
    spec = parse_spec(
        {
            "data": {"source": "synthetic"},
            "task": {"labels": ["n", "p"]},
            "modalities": {"image": SHAPES["image"] | {"size": [28, 28]}},
            "branches": {"image": {"type": "resnet18"}},
        }
    )
    n = sum(p.numel() for p in build_model(spec).branches.parameters())
    assert 10.5e6 < n < 11.5e6
    # 28-px friendly: the last block still has spatial extent (stride-1 stem, no max-pool)
    feats = (
        build_model(spec)
        .branches["image"]
        .features(build_model(spec).branches["image"].stem(torch.randn(1, 1, 28, 28)))
    )
    assert feats.shape[-1] == 4


@pytest.mark.parametrize("branch", ["cnn", "resnet18"])
def test_avgmax_pool_sees_the_strongest_response(branch: str, tmp_path) -> None:
    raw = _spec(branch, "concat")
    raw["branches"]["x"]["pool"] = "avgmax"
    spec = parse_spec(raw)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    enc = model.branches["x"]
    x = torch.randn(2, *spec.modalities["x"].shape)
    fmap = enc.features(enc.stem(x))
    pooled = enc.pool(fmap).flatten(1)
    c = fmap.shape[1]
    assert pooled.shape == (2, 2 * c)
    assert torch.allclose(pooled[:, :c], fmap.mean(dim=(2, 3)), atol=1e-6)
    assert torch.equal(pooled[:, c:], fmap.amax(dim=(2, 3)))
    _assert_roundtrip_identical(model, spec, *_batch(spec), tmp_path / "p")
    raw["branches"]["x"]["pool"] = "max"
    from medfuse.core.errors import SpecError

    with pytest.raises(SpecError, match=r"'branches\.x\.pool'.*unknown pool 'max'.*avg, avgmax"):
        parse_spec(raw)


def test_gated_weights_renormalise_over_present() -> None:
    spec = parse_spec(_spec("cnn", "gated"))
    model = build_model(spec).eval()
    inputs, masks = _batch(spec)
    masks["x"] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    model(inputs, masks)
    w = model.fusion.last_weights
    assert np.allclose(w.sum(1).numpy(), 1.0, atol=1e-5)
    assert (w[1, 0] == 0) and (w[3, 0] == 0)
    _ = copy


def test_cnn_stem_stride_downsamples_first_and_exports(tmp_path) -> None:
    """``stem_stride`` 4: a 4x4 patch stem, the first stage at a quarter of the resolution (16x
    fewer positions); the package round trip and ONNX export hold; out-of-range strides are
    SpecErrors that name the branch."""
    import onnxruntime as ort

    from medfuse.core.errors import SpecError
    from medfuse.export.onnx import export_onnx, input_names

    raw = _spec("cnn", "concat")
    raw["modalities"]["x"] = {"kind": "image", "channels": 1, "size": [32, 32]}
    raw["branches"]["x"] = {"type": "cnn", "width": 4, "depth": 2, "stem_stride": 4}
    spec = parse_spec(raw)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    enc = model.branches["x"]
    x = torch.randn(2, 1, 32, 32)
    assert enc.stem(x).shape[-2:] == (9, 9)  # (32 + 2*2 - 4) / 4 + 1
    full = parse_spec({**raw, "branches": {**raw["branches"], "x": {"type": "cnn", "width": 4}}})
    assert build_model(full).branches["x"].stem(x).shape[-2:] == (32, 32)
    inputs, masks = _batch(spec)
    _assert_roundtrip_identical(model, spec, inputs, masks, tmp_path / "p")
    sess = ort.InferenceSession(str(export_onnx(model, spec, tmp_path / "m.onnx")))
    arrays = [v.numpy() for v in (*inputs.values(), *masks.values())]
    got = sess.run(None, dict(zip(input_names(list(inputs)), arrays, strict=True)))[0]
    with torch.no_grad():
        want = model(inputs, masks).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    for bad, msg in ((0, "must be 1 to 8"), (9, "must be 1 to 8")):
        raw["branches"]["x"]["stem_stride"] = bad
        with pytest.raises(SpecError, match=rf"branches.*stem_stride {msg}|stem_stride {msg}"):
            build_model(parse_spec(raw))
    raw["modalities"]["x"]["size"] = [4, 4]
    raw["branches"]["x"]["stem_stride"] = 8
    with pytest.raises(
        SpecError, match=r"stem_stride 8 is larger than the input \(4, 4\); use at most 4"
    ):
        build_model(parse_spec(raw))
