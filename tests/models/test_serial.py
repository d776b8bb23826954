"""Serial composition (``crnn``), sequence fusion (``sequence``), their ONNX export, and training
with modality dropout and missing modalities."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medfuse.core.errors import SpecError
from medfuse.core.spec import parse_spec
from medfuse.models import BRANCHES, FUSIONS, build_model

SMALL = {"width": 4, "depth": 2, "element_features": 8, "hidden": 8, "out_features": 6}


def _crnn(shape: tuple[int, ...], **kw) -> torch.nn.Module:
    return BRANCHES.get("crnn")(input_shape=shape, **{**SMALL, **kw}).eval()


def test_crnn_volume_runs_one_cnn_per_slice_then_the_rnn() -> None:
    torch.manual_seed(0)
    net = _crnn((2, 5, 12, 12))  # (C, D, H, W)
    x = torch.randn(3, 2, 5, 12, 12)
    with torch.no_grad():
        out = net(x)
        per_slice = torch.stack([net.cnn(x[:, :, d]) for d in range(5)], dim=1)  # (B, D, F)
        manual = net.rnn(per_slice.transpose(1, 2))
    assert out.shape == (3, 6) and net.out_features == 6
    torch.testing.assert_close(out, manual)
    with torch.no_grad():  # slice order matters (an RNN, not a pooled bag of slices)
        assert not torch.allclose(net(x.flip(2)), out, atol=1e-4)


def test_crnn_image_and_signal_sequences() -> None:
    torch.manual_seed(0)
    img = _crnn((4, 1, 10, 10), layout="sequence")  # (S, C, H, W)
    x = torch.randn(2, 4, 1, 10, 10)
    with torch.no_grad():
        manual = img.rnn(torch.stack([img.cnn(x[:, s]) for s in range(4)], 1).transpose(1, 2))
        torch.testing.assert_close(img(x), manual)
    beats = _crnn((6, 2, 30), layout="sequence", cell="gru", bidirectional=True)  # (S, C, T)
    assert isinstance(beats.rnn.rnn, torch.nn.GRU) and beats.rnn.rnn.bidirectional
    assert beats.cnn.spatial_dims == 1
    assert beats(torch.randn(3, 6, 2, 30)).shape == (3, 6)


def test_crnn_errors_name_what_is_allowed() -> None:
    with pytest.raises(SpecError, match="needs layout: sequence"):
        _crnn((6, 2, 30))
    with pytest.raises(SpecError, match=r"crnn needs a volume .* got \(2, 30\)"):
        _crnn((2, 30))
    with pytest.raises(SpecError, match="unknown crnn cell 'lstn'; did you mean 'lstm'"):
        _crnn((1, 4, 8, 8), cell="lstn")
    with pytest.raises(SpecError, match="unknown crnn layout 'volumes'; did you mean 'volume'"):
        _crnn((1, 4, 8, 8), layout="volumes")
    spec = {
        "data": {"source": "synthetic"},
        "modalities": {"v": {"kind": "image", "channels": 1, "size": [4, 8, 8]}},
        "branches": {"v": {"type": "crnn", "hiden": 3}},
    }
    with pytest.raises(SpecError, match=r"branches\.v\.hiden.*did you mean 'hidden'"):
        parse_spec(spec)
    # a spec's choice parameters are checked when it is parsed, under their own field path
    spec["branches"]["v"] = {"type": "crnn", "cell": "lstn"}
    with pytest.raises(SpecError, match=r"'branches\.v\.cell'.*unknown cell 'lstn'; did you mean"):
        parse_spec(spec)


def _fusion(dims: dict[str, int], **kw) -> torch.nn.Module:
    return FUSIONS.get("sequence")(feature_dims=dims, num_outputs=1, hidden=5, **kw).eval()


def test_sequence_fusion_equals_an_lstm_over_the_present_tokens_only() -> None:
    torch.manual_seed(0)
    dims = {"a": 3, "b": 4, "c": 2}
    f = _fusion(dims)
    feats = {n: torch.randn(4, d) for n, d in dims.items()}
    masks = {
        "a": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        "b": torch.tensor([1.0, 1.0, 0.0, 0.0]),
        "c": torch.tensor([1.0, 1.0, 1.0, 0.0]),
    }
    with torch.no_grad():
        out = f(feats, masks)
        assert out.shape == (4, 5 + 3) and f.out_features == 8
        for i in range(4):
            present = [j for j, n in enumerate(dims) if masks[n][i] > 0]
            expect_mask = torch.stack([masks[n][i] for n in dims])
            torch.testing.assert_close(out[i, 5:], expect_mask)
            if not present:
                assert torch.all(out[i, :5] == 0)
                continue
            toks = torch.stack(
                [f.proj[n](feats[n][i]) + f.embed[j] for j, n in enumerate(dims) if j in present]
            )
            seq, _ = f.lstm(toks.unsqueeze(0))  # the sequence holds only present modalities
            torch.testing.assert_close(out[i, :5], seq[0, -1])


def test_sequence_fusion_parameters_are_checked() -> None:
    spec = {
        "data": {"source": "synthetic"},
        "modalities": {"t": {"kind": "tabular", "columns": ["a"]}},
        "fusion": {"type": "sequence", "hiden": 4},
    }
    with pytest.raises(SpecError, match=r"fusion\.hiden.*did you mean 'hidden'"):
        parse_spec(spec)


def _serial_spec() -> dict:
    return {
        "data": {"source": "synthetic"},
        "task": {"type": "multiclass", "labels": ["a", "b", "c"]},
        "modalities": {
            "volume": {"kind": "image", "channels": 1, "size": [4, 12, 12]},
            "beats": {"kind": "signal", "channels": 2, "length": 24, "sequence": 5},
            "clinical": {"kind": "tabular", "columns": ["age", "sex"]},
        },
        "branches": {
            "volume": {"type": "crnn", **SMALL},
            "beats": {
                "type": "crnn",
                "layout": "sequence",
                "cell": "gru",
                "bidirectional": True,
                **SMALL,
            },
            "clinical": {"type": "mlp", "hidden": 8, "out_features": 4},
        },
        "fusion": {"type": "sequence", "hidden": 8},
    }


def test_onnx_export_parity_with_missing_modalities() -> None:
    """crnn (volume + beat sequence) and sequence fusion through the shared exporter."""
    import onnxruntime as ort

    from medfuse.export.onnx import export_onnx_bytes

    spec = parse_spec(_serial_spec())
    torch.manual_seed(0)
    model = build_model(spec).eval()
    sess = ort.InferenceSession(export_onnx_bytes(model, spec), providers=["CPUExecutionProvider"])
    b = 6  # exported with batch 2: the batch axis is dynamic
    g = torch.Generator().manual_seed(1)
    xs = {m: torch.randn(b, *s.shape, generator=g) for m, s in spec.modalities.items()}
    masks = {
        "volume": torch.tensor([1.0, 0, 1, 0, 1, 0]),
        "beats": torch.tensor([1.0, 1, 0, 0, 1, 0]),
        "clinical": torch.tensor([1.0, 1, 1, 1, 0, 0]),
    }
    xs = {m: x * masks[m].view(-1, *[1] * (x.dim() - 1)) for m, x in xs.items()}
    with torch.no_grad():
        ref = model(xs, masks).numpy()
    feed = {m: x.numpy() for m, x in xs.items()} | {
        f"mask_{m}": v.numpy() for m, v in masks.items()
    }
    got = sess.run(["logits"], feed)[0]
    assert got.shape == (b, 3)
    assert np.abs(got - ref).max() <= 1e-4


def test_modality_dropout_trains_and_reports_missing_metrics(tiny_spec: dict, tmp_path) -> None:
    """Modality dropout in training; test metrics with each modality removed, and paired vs
    partial metrics when some test samples miss a modality."""
    from medfuse.api import train

    spec = copy.deepcopy(tiny_spec)
    spec["data"]["options"]["missing"] = {"image": 0.3}
    spec["fusion"] = {"type": "sequence", "hidden": 8}
    spec["train"]["modality_dropout"] = {"image": 0.3, "signal": 0.3}
    res = train(spec, out=tmp_path / "pkg", device="cpu", progress=False)
    test = res.metrics["test"]
    assert set(test["without"]) == {"image", "signal", "tabular"}
    assert all(np.isfinite(v["auroc"]) for v in test["without"].values())
    assert test["paired"]["n"] + test["partial"]["n"] == test["n"]
    assert 0.15 * test["n"] < test["partial"]["n"] < 0.45 * test["n"]
    assert np.isfinite(res.metrics["val"]["auroc"])
