"""Export + verify for every registered branch and fusion (new ones are covered on registration).

Each branch is paired with a fusion (cycling), so every branch and every fusion is exported at
least once; the model is a real package (BatchNorm statistics moved off their defaults) and the
verification runs PyTorch and ONNX Runtime and requires max |logit diff| <= 1e-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medfuse.core.optional import unusable
from medfuse.core.preprocess import channel_axis, fit_stats
from medfuse.core.spec import parse_spec
from medfuse.data import own_tokenizers
from medfuse.export.exporter import export_package
from medfuse.export.verify import TOLERANCE
from medfuse.inference.package import save_package
from medfuse.models import BRANCHES, FUSIONS, build_model

#: modality shapes tried in order until the branch builds; (name, modality, extra branch params)
CANDIDATES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("image", {"kind": "image", "channels": 1, "size": [16, 16]}, {}),
    ("signal", {"kind": "signal", "channels": 2, "length": 24}, {}),
    ("tabular", {"kind": "tabular", "columns": ["a", "b", "c"]}, {}),
    ("volume", {"kind": "image", "channels": 1, "size": [3, 12, 12]}, {}),
    (
        "signal_sequence",
        {"kind": "signal", "channels": 2, "length": 16, "sequence": 3},
        {"layout": "sequence"},
    ),
]
#: the modality a branch's variant takes (BRANCHES.variants: ``hf`` on text)
VARIANTS: dict[str, dict[str, Any]] = {"text": {"kind": "text", "length": 8, "vocab": 64}}
TABULAR = {"kind": "tabular", "columns": ["age", "bmi", "marker"]}
#: size parameters shrunk where a builder accepts them (structure kept, export time cut)
SMALL = {"width": 4, "hidden": 8, "out_features": 8, "element_features": 8}
IMAGE = {"kind": "image", "channels": 1, "size": [16, 16]}


def _small(accepted: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in SMALL.items() if k in accepted}


def _spec(branch: str, fusion: str, variant: str | None = None) -> dict[str, Any]:
    accepted = BRANCHES.params(branch, skip=("input_shape",))
    example = BRANCHES.variants(branch)[variant] if variant else BRANCHES.example(branch)
    small = _small(accepted) | example
    fusion_small = _small(FUSIONS.params(fusion))
    candidates = [(variant, VARIANTS[variant], {})] if variant else CANDIDATES
    for _, modality, extra in candidates:
        if any(k not in accepted for k in extra):
            continue
        other = ("t", IMAGE, "cnn") if modality["kind"] == "tabular" else ("t", TABULAR, "mlp")
        d = {
            "name": f"sweep-{branch}-{fusion}",
            "data": {"source": "manifest:/nonexistent/sweep.csv"},  # no data: random inputs
            "task": {"type": "binary", "labels": ["n", "p"]},
            "modalities": {"x": modality, other[0]: other[1]},
            "branches": {
                "x": {"type": branch, **small, **extra},
                other[0]: {"type": other[2], **_small(BRANCHES.params(other[2]))},
            },
            "fusion": {"type": fusion, **fusion_small},
            "head": {"hidden": 8},
        }
        try:
            build_model(parse_spec(d))
            return d
        except Exception:
            continue
    raise AssertionError(f"branch {branch!r} builds on none of the sweep's modality shapes")


def _pairs() -> list[tuple[str, str, str | None]]:
    """(branch, fusion, variant): every branch and fusion, and every branch's variants."""
    b, f = BRANCHES.names(), FUSIONS.names()
    pairs: list[tuple[str, str, str | None]] = [
        (name, f[i % len(f)], None) for i, name in enumerate(b)
    ]
    pairs += [(b[0], name, None) for name in f[len(b) :]]
    pairs += [(name, f[0], v) for name in b for v in BRANCHES.variant_kinds(name)]
    return pairs


PAIRS = _pairs()


def test_pairs_cover_every_registered_branch_and_fusion() -> None:
    assert {p[0] for p in PAIRS} == set(BRANCHES.names())
    assert {p[1] for p in PAIRS} == set(FUSIONS.names())


def make_package(
    path: Path, branch: str, fusion: str, variant: str | None = None, **branch_params: Any
) -> Path:
    raw = _spec(branch, fusion, variant)
    raw["branches"]["x"].update(branch_params)
    spec = parse_spec(raw)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(spec)
    arrays = {
        m: rng.normal(3.0, 2.0, (32, *s.shape)).astype(np.float32)
        for m, s in spec.modalities.items()
    }
    masks = {m: np.ones(32, np.float32) for m in spec.modalities}
    axes = {m: channel_axis(s.kind, bool(s.sequence)) for m, s in spec.modalities.items()}
    stats = fit_stats(arrays, masks, axes)
    for m, st in own_tokenizers(spec).items():  # text: the branch's own tokenizer, ids as they are
        stats[m] = {"mean": [0.0], "std": [1.0], "channel_axis": 0, **st}
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics off their defaults
        for _ in range(2):
            model(
                {m: torch.randn(8, *s.shape) for m, s in spec.modalities.items()},
                {m: torch.ones(8) for m in spec.modalities},
            )
    model.eval()
    return save_package(
        path,
        model=model,
        spec=spec,
        preprocessing=stats,
        threshold={"method": "fixed", "value": 0.5},
        metrics={},
    )


#: zoo branches whose export takes 8-20 s on a shared CPU run under ``slow`` (timm stays in
#: the fast run, and tests/models/test_pretrained.py exports a LoRA-tuned timm ViT)
SLOW_EXPORT = ("hf", "torchvision")


@pytest.mark.parametrize(
    ("branch", "fusion", "variant"),
    [
        pytest.param(
            b,
            f,
            v,
            id=f"{b}-{f}" + (f"-{v}" if v else ""),
            marks=[pytest.mark.slow] if b in SLOW_EXPORT else [],
        )
        for b, f, v in PAIRS
    ],
)
def test_onnx_export_and_verify(
    branch: str, fusion: str, variant: str | None, tmp_path: Path
) -> None:
    if reason := unusable(BRANCHES.requires(branch)):
        pytest.skip(f"branch {branch!r}: {reason}")
    pkg = make_package(tmp_path / "p", branch, fusion, variant)
    res = export_package(pkg, format="onnx", samples=8)
    assert res.report is not None and res.report.ok, res.report.to_dict()
    rows = {c.runtime: c for c in res.report.checks}
    for name in ("torch", "onnx"):
        assert rows[name].status == "ok", rows[name]
        assert rows[name].max_abs_diff is not None and rows[name].max_abs_diff <= TOLERANCE
        assert rows[name].n == 8
    assert rows["pt2"].status == "skipped"
    # masked samples are part of the verification inputs
    with np.load(pkg / "verification.npz") as d:
        assert (d["mask_x"] == 0).any() or (d["mask_t"] == 0).any()


def test_onnx_export_of_avgmax_pooling(tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p", "resnet18", "concat", pool="avgmax")
    res = export_package(pkg, format="onnx", samples=8)
    assert res.report is not None and res.report.ok, res.report.to_dict()
    onnx_row = next(c for c in res.report.checks if c.runtime == "onnx")
    assert onnx_row.max_abs_diff is not None and onnx_row.max_abs_diff <= TOLERANCE


#: torch.export is much slower to trace: one recurrent branch (the hard case) here;
#: ``medfuse export --format pt2`` runs the same verification for any package
PT2_PAIRS = [p[:2] for p in PAIRS if p[0] == "lstm"] or [PAIRS[0][:2]]


@pytest.mark.parametrize(("branch", "fusion"), PT2_PAIRS, ids=[f"{b}-{f}" for b, f in PT2_PAIRS])
def test_pt2_export_and_verify(branch: str, fusion: str, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p", branch, fusion)
    res = export_package(pkg, format="pt2", samples=8)
    assert res.report is not None and res.report.ok, res.report.to_dict()
    rows = {c.runtime: c for c in res.report.checks}
    assert rows["pt2"].status == "ok" and rows["pt2"].max_abs_diff <= TOLERANCE
    assert (pkg / "model.pt2").exists()
    # the program is self-contained: torch.export.load, no medfuse model code
    prog = torch.export.load(str(pkg / "model.pt2")).module()
    with np.load(pkg / "verification.npz") as d:
        inputs = {m: torch.from_numpy(d[m][:3]) for m in ("x", "t")}
        masks = {m: torch.from_numpy(d[f"mask_{m}"][:3]) for m in ("x", "t")}
        ref = d["logits"][:3]
    with torch.no_grad():
        got = prog(inputs, masks).numpy()
    assert np.abs(got - ref).max() <= TOLERANCE
