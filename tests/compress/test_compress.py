"""quantize, prune, distill and benchmark on the tiny three-modality package (LSTM signal branch):
each verb's package round-trips through save/load and records what was done in medfuse.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

import medfuse
from medfuse.cli import main
from medfuse.compress.measure import benchmark, count_macs
from medfuse.compress.prune import prune, prune_recurrent_hidden
from medfuse.compress.quantize import quantize
from medfuse.core.errors import SpecError
from medfuse.core.package import read_meta
from medfuse.core.spec import parse_spec
from medfuse.export.onnx import export_onnx_bytes, input_names
from medfuse.models import build_model


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _batch(spec, n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, *s.shape, generator=g) for m, s in spec.modalities.items()}
    masks = {m: torch.ones(n) for m in spec.modalities}
    return inputs, masks


@pytest.fixture(scope="module")
def quantized(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "tiny-int8"
    return quantize(tiny_package, out=out, calibration=32).package


@pytest.fixture(scope="module")
def pruned(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("p") / "tiny-pruned"
    return prune(tiny_package, out=out, amount=0.5, finetune_epochs=1).package


# ---- quantize ----------------------------------------------------------------------------------


def test_a_transpose_without_perm_gets_its_default_written_out() -> None:
    """The default perm (axes reversed) written out computes the same; a second pass finds
    nothing to do; an input whose rank nobody knows is refused rather than written."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from medfuse.compress.quantize import explicit_transpose_perms
    from medfuse.core.errors import MedfuseError

    def model(shape):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        g = helper.make_graph(
            [helper.make_node("Transpose", ["x"], ["y"], name="t")], "g", [x], [y]
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    m = model([2, 3, 4])
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    want = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    assert explicit_transpose_perms(m) == 1
    assert list(m.graph.node[0].attribute[0].ints) == [2, 1, 0]
    got = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert got.shape == (4, 3, 2) and explicit_transpose_perms(m) == 0
    with pytest.raises(MedfuseError, match=r"Transpose 't' has no perm.*unknown rank"):
        explicit_transpose_perms(model(None))


def test_quantize_auto_writes_an_int8_package_that_still_loads(tiny_package, quantized):
    meta = read_meta(quantized)  # checksums verified
    assert meta["runtime"] == {
        "default": "onnx",
        "onnx_file": "model.onnx",
        "precision": "int8",
        "opset": 17,
    }
    rec = meta["compression"][-1]
    assert rec["method"] == "quantize"
    # per branch: the CNN statically (QDQ), the LSTM and the MLP dynamically
    assert rec["settings"]["parts"] == {
        "image": "static",
        "signal": "dynamic",
        "tabular": "dynamic",
        "fusion+head": "dynamic",
    }
    assert rec["calibration"]["samples"] == 32 and rec["calibration"]["split"] == "train"
    m = rec["metrics"]
    assert m["split"] == "test" and set(m["before"]) >= {"auroc", "auprc", "ece"}
    assert abs(m["after"]["auroc"] - m["before"]["auroc"]) < 0.1
    assert m["label_agreement"] >= 0.9
    ops = _ops(quantized / "model.onnx")
    assert {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLSTM"} <= ops
    assert "LSTM" not in ops
    # every Transpose spells out its perm (the quantizer writes one without for the image
    # projection's Gemm; ONNX Runtime 1.20-1.30 abort the process on it: explicit_transpose_perms)
    nodes = onnx.load(str(quantized / "model.onnx")).graph.node
    transposes = [n for n in nodes if n.op_type == "Transpose"]
    assert transposes and all(any(a.name == "perm" for a in n.attribute) for n in transposes)
    # the quantized model runs in ONNX Runtime on real inputs, close to the fp32 model
    import onnxruntime as ort

    pred = medfuse.load(quantized)
    src = medfuse.load(tiny_package)
    inputs, masks = _batch(pred.spec)
    feed = {m: inputs[m].numpy() for m in inputs} | {f"mask_{m}": masks[m].numpy() for m in masks}
    sess = ort.InferenceSession(str(quantized / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], feed)[0]
    with torch.no_grad():
        ref = src.model(inputs, masks).numpy()
        torch_q = pred.model(inputs, masks).numpy()
    assert np.abs(got - ref).max() < 0.1
    # torch inference of a quantized package is the fp32 source model (weights kept)
    np.testing.assert_allclose(torch_q, ref, atol=1e-6)
    assert (quantized / "model.safetensors").read_bytes() == (
        tiny_package / "model.safetensors"
    ).read_bytes()
    # metrics.json holds the INT8 model's metrics; the source package is untouched
    metrics = json.loads((quantized / "metrics.json").read_text())
    assert metrics["runtime"]["precision"] == "int8" and "fp32" in metrics
    assert "runtime" not in read_meta(tiny_package)


def test_an_int8_package_is_evaluated_and_predicted_as_it_is_deployed(
    tiny_package, quantized, tmp_path, capsys
):
    """evaluate, the clinical evaluation, calibrate and predict score the INT8 model.onnx that
    an INT8 package deploys (as medfuse serve runs it), not its kept fp32 weights, and say so;
    the branch rows come from the fp32 auxiliary heads, and say so too."""
    from medfuse.api import evaluate
    from medfuse.core.onnx import OnnxPredictor
    from medfuse.inference.helpers import package_data
    from medfuse.inference.predictor import load
    from medfuse.report.calibration import calibrate_package
    from medfuse.report.clinical import clinical_evaluation
    from medfuse.runtime import choose_runtime

    deployed, weights = load(quantized, deployed=True), load(quantized)
    assert deployed.scored["precision"] == "int8" and deployed.scored["file"] == "model.onnx"
    assert "fp32" in deployed.scored["branches"]
    assert weights.scored == {"runtime": "torch", "file": "model.safetensors", "precision": "fp32"}
    test = package_data(deployed.spec, deployed.meta).test
    ort_logits = OnnxPredictor(quantized).logits(test)
    got = deployed.logits(test)
    np.testing.assert_allclose(got, ort_logits, rtol=0, atol=1e-6)
    assert np.abs(got - weights.logits(test)).max() > 1e-4  # INT8 is not the fp32 model
    # the verbs' metrics are the INT8 model's (dynamic INT8 scales activations by their batch's
    # range: the same batches as the verb's, 64 samples for evaluate on a CPU, 256 for the rest)
    from sklearn.metrics import roc_auc_score

    m = evaluate(quantized, device="cpu")
    assert m["model"]["precision"] == "int8"
    y = np.asarray(test.y)
    int8_64 = roc_auc_score(y, OnnxPredictor(quantized).logits(test, batch_size=64)[:, 0])
    assert m["auroc"] == pytest.approx(int8_64, abs=1e-12)
    assert set(m["branches"]) == set(deployed.spec.modalities)
    assert evaluate(tiny_package, device="cpu")["model"]["precision"] == "fp32"
    ev = clinical_evaluation(quantized, n_boot=20, subgroup=None)
    assert ev.summary["package"]["model"]["precision"] == "int8"
    assert ev.auroc["value"] == pytest.approx(roc_auc_score(y, ort_logits[:, 0]), abs=1e-12)
    rec = calibrate_package(quantized, out=tmp_path / "cal")["calibration"]
    assert rec["model"]["precision"] == "int8"
    # medfuse predict's auto runtime is the one the package deploys; the CLI says which
    assert choose_runtime(quantized) == "onnx" and choose_runtime(tiny_package) == "torch"
    assert main(["evaluate", str(quantized), "--no-ci"]) == 0
    assert "scored: INT8 model.onnx (ONNX Runtime)" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    x = {
        m: rng.random((3, *s.shape), dtype=np.float32) for m, s in deployed.spec.modalities.items()
    }
    np.savez(tmp_path / "x.npz", **x)
    assert (
        main(
            [
                "predict",
                str(quantized),
                "--input",
                str(tmp_path / "x.npz"),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    assert "predictions of: INT8 model.onnx (ONNX Runtime)" in capsys.readouterr().err
    # INT8 kernels are CPU kernels: --device cuda predicts there, and says so (was an error
    # naming a CUDA provider the onnxruntime package lacks)
    args = ["predict", str(quantized), "--input", str(tmp_path / "x.npz"), "--device", "cuda"]
    assert main([*args, "--out", str(tmp_path / "p2.csv")]) == 0
    assert "on the CPU (not cuda: INT8 kernels are CPU kernels)" in capsys.readouterr().err
    assert OnnxPredictor(quantized, device="cuda").device == "cpu"  # serve, the runtime too
    col = f"prob_{deployed.labels[1]}"
    got_p = pd.read_csv(tmp_path / "p.csv")[col].to_numpy()
    np.testing.assert_allclose(got_p, OnnxPredictor(quantized).predict_proba(x), atol=1e-6)


def test_quantize_forced_methods(tiny_package, tmp_path):
    static = quantize(tiny_package, out=tmp_path / "s", method="static", calibration=16)
    ops = _ops(static.package / "model.onnx")
    assert "LSTM" in ops and "DequantizeLinear" in ops  # no static INT8 LSTM kernel: stays fp32
    assert "/model/signal/rnn/LSTM" in static.record["settings"]["fp32_layers"]
    dynamic = quantize(tiny_package, out=tmp_path / "d", method="dynamic")
    ops = _ops(dynamic.package / "model.onnx")
    assert "ConvInteger" in ops and "DynamicQuantizeLSTM" in ops
    assert dynamic.record["settings"]["parts"]["image"] == "dynamic"


def test_quantize_rejects_bad_settings(tiny_package, tmp_path):
    with pytest.raises(SpecError, match="quantization method"):
        quantize(tiny_package, out=tmp_path / "x", method="int4")
    with pytest.raises(SpecError, match="calibration"):
        quantize(tiny_package, out=tmp_path / "x", calibration=0)
    with pytest.raises(SpecError, match="is an input package"):
        quantize(tiny_package, out=tiny_package, calibration=8)


# ---- prune -------------------------------------------------------------------------------------


def test_structured_prune_round_trip_and_onnx(tiny_package, pruned):
    src, pkg = medfuse.load(tiny_package), medfuse.load(pruned)
    meta = read_meta(pruned)
    rec = meta["compression"][-1]
    assert rec["method"] == "prune" and rec["settings"]["kind"] == "structured"
    assert rec["parameters"]["after"] < rec["parameters"]["before"]
    assert rec["macs"]["after"] < rec["macs"]["before"] / 1.8
    assert rec["finetune"]["epochs"] == 1
    assert set(rec["metrics"]["before"]) >= {"auroc", "auprc", "ece"}
    branches = meta["spec"]["branches"]
    assert branches["signal"]["hidden"] == 4  # the LSTM lost half its hidden units
    assert "layer_shapes" in branches["image"] and "layer_shapes" in branches["tabular"]
    assert "runtime" not in meta and meta["threshold"]["chosen_on"] == "val"
    # each branch keeps its output width, so the fusion and head are untouched
    for m in src.spec.modalities:
        assert pkg.model.branches[m].out_features == src.model.branches[m].out_features
    assert pkg.model.head[0].weight.shape == src.model.head[0].weight.shape
    # the spec alone rebuilds the pruned model (no pickle) and it exports to ONNX
    import onnxruntime as ort

    inputs, masks = _batch(pkg.spec)
    with torch.no_grad():
        ref = pkg.model(inputs, masks).numpy()
    sess = ort.InferenceSession(
        export_onnx_bytes(pkg.model, pkg.spec), providers=["CPUExecutionProvider"]
    )
    feed = dict(zip(input_names(list(inputs)), [*inputs.values(), *masks.values()]))
    got = sess.run(["logits"], {k: v.numpy() for k, v in feed.items()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    rebuilt = build_model(parse_spec(meta["spec"]))
    rebuilt.load_state_dict(pkg.model.state_dict(), strict=True)


def test_unstructured_prune_reports_sparsity(tiny_package, tmp_path):
    res = prune(tiny_package, out=tmp_path / "u", amount=0.6, structured=False, finetune_epochs=1)
    rec = res.record
    assert rec["settings"]["kind"] == "unstructured"
    assert rec["sparsity"]["weights"] == pytest.approx(0.6, abs=0.01)  # zeros survive fine-tuning
    assert rec["macs"]["after"] == rec["macs"]["before"]  # dense kernels: no saving, said so
    assert "saves no time" in rec["note"]
    pkg = medfuse.load(res.package)
    assert "layer_shapes" not in json.dumps(pkg.meta["spec"])
    w = pkg.model.branches["image"].stem[0].weight
    assert not any(n.endswith("_orig") for n, _ in pkg.model.named_parameters())
    assert float((w == 0).float().mean()) > 0.0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_hidden_pruning_is_exact_for_dead_units(cell):
    """Units with no weights always output 0; removing them must not change the branch output."""
    from medfuse.models import BRANCHES

    enc = BRANCHES.get(cell)(
        input_shape=(3, 12), hidden=8, layers=2, bidirectional=True, out_features=5
    ).eval()
    dead, h = [1, 4, 6, 7], 8
    cols = torch.tensor(dead + [u + h for u in dead])  # both directions' outputs
    with torch.no_grad():
        for name, p in enc.rnn.named_parameters():
            rows = torch.tensor([g * h + u for g in range(p.shape[0] // h) for u in dead])
            p[rows] = 0.0  # no input reaches the dead units: their output is always 0
            if name.startswith("weight_hh"):
                p[:, dead] = 0.0  # and nothing reads them (so they are the least important)
            elif name.startswith("weight_ih_l1"):
                p[:, cols] = 0.0
        enc.proj[1].weight[:, cols] = 0.0
        x = torch.randn(4, 3, 12)
        before = enc(x)
        assert prune_recurrent_hidden(enc, 0.5) == 4
        after = enc(x)
    assert enc.rnn.hidden_size == 4 and enc.proj[1].in_features == 8
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)


def test_layer_shapes_errors_name_the_field(tiny_spec):
    tiny_spec["modalities"] = {"image": {"kind": "image", "channels": 1, "size": [16, 16]}}
    tiny_spec["task"]["labels"] = ["n", "p"]
    tiny_spec["branches"] = {"image": {**tiny_spec["branches"]["image"]}}
    tiny_spec["branches"]["image"]["layer_shapes"] = {"stem.O": [1, 2]}
    with pytest.raises(
        SpecError, match=r"layer_shapes.stem.O.*did you mean 'stem.1'.*Layers: stem.0, stem.1"
    ):
        build_model(parse_spec(tiny_spec))
    tiny_spec["branches"]["image"]["layer_shapes"] = {"stem.1": [2, 3]}
    with pytest.raises(SpecError, match="list of 1 positive integers"):
        build_model(parse_spec(tiny_spec))
    tiny_spec["branches"]["image"]["layer_shapes"] = {"stem.0": [1, 2], "stem.1": [2]}
    model = build_model(parse_spec(tiny_spec))
    assert model.branches["image"].stem[0].out_channels == 2


def test_prune_rejects_bad_amount(tiny_package, tmp_path):
    with pytest.raises(SpecError, match="amount"):
        prune(tiny_package, out=tmp_path / "x", amount=1.5)
    with pytest.raises(SystemExit) as exc:  # the CLI refuses it before loading anything
        main(["prune", str(tiny_package), "--amount", "0", "-o", str(tmp_path / "x")])
    assert exc.value.code == 2


def test_count_macs_includes_lstm():
    spec = parse_spec(
        {
            "data": {"source": "synthetic"},
            "task": {"labels": ["n", "p"]},
            "modalities": {"s": {"kind": "signal", "channels": 2, "length": 32}},
            "branches": {"s": {"type": "lstm", "hidden": 8, "out_features": 4}},
            "head": {"hidden": 0},
        }
    )
    lstm = 32 * 4 * 8 * (2 + 8)
    linear = 8 * 4 + 5 * 1  # projection, then the head on 4 features + 1 mask
    assert count_macs(build_model(spec), spec) == lstm + linear


# ---- distill -----------------------------------------------------------------------------------


def test_distill_into_a_single_modality_student(tiny_package, tmp_path):
    student = {
        "branches": {"signal": {"type": "cnn1d", "width": 4, "depth": 2, "out_features": 8}},
        "train": {"epochs": 2, "batch_size": 32, "early_stopping": None},
    }
    res = medfuse.compress.distill(
        tiny_package, student=student, out=tmp_path / "kd", device="cpu", progress=False
    )
    meta = read_meta(res.package)
    rec = meta["compression"][0]
    assert rec["method"] == "distill" and rec["student"]["modalities"] == ["signal"]
    assert rec["teachers"][0]["modalities"] == ["image", "signal", "tabular"]
    assert rec["settings"]["temperature"] == 4.0 and rec["settings"]["alpha"] == 0.7
    assert 0 < rec["parameter_ratio"] < 1
    assert set(rec["metrics"]["after"]) >= {"auroc", "auprc", "ece"}
    pred = medfuse.load(res.package)
    assert list(pred.spec.modalities) == ["signal"]
    p = pred.predict_proba([{"signal": np.zeros((2, 32), np.float32)}])
    assert p.shape == (1,) and 0 <= p[0] <= 1


def test_distill_rejects_a_modality_the_teacher_lacks(tiny_package, tmp_path):
    with pytest.raises(SpecError, match="teacher has no modality 'ecg'"):
        medfuse.compress.distill(
            tiny_package,
            student={"branches": {"ecg": {"type": "cnn1d"}}},
            out=tmp_path / "x",
            device="cpu",
        )


def test_kd_loss_is_minimal_at_the_teacher():
    from medfuse.compress.distill import kd_loss, soft_targets

    t = np.array([[2.0], [-1.0]])
    soft = torch.from_numpy(soft_targets("binary", [t, t], 2.0))
    z = torch.tensor(t, dtype=torch.float32, requires_grad=True)
    kd_loss("binary", z, soft, 2.0).sum().backward()
    assert z.grad.abs().max() < 1e-6
    mc = soft_targets("multiclass", [np.array([[1.0, 0.0, -1.0]])], 1.0)
    assert mc.shape == (1, 3) and mc.sum() == pytest.approx(1.0)


# ---- benchmark and the CLI ---------------------------------------------------------------------


def test_benchmark_table_and_pareto_plot(tiny_package, quantized, pruned, tmp_path):
    res = benchmark([tiny_package, quantized, pruned], out_dir=tmp_path / "b", repeats=2)
    rows = {r["name"]: r for r in res["rows"]}
    base, q, p = rows["tiny"], rows["tiny-int8"], rows["tiny-pruned"]
    assert base["delta"] == {"auroc": 0.0, "auprc": 0.0, "ece": 0.0}
    assert (
        q["precision"] == "int8" and q["engine"] == "onnxruntime" and q["artifact"] == "model.onnx"
    )
    assert "torch_b64" not in q["latency"] and "onnxruntime_b64" in q["latency"]
    assert set(base["latency"]) == {"torch_b1", "torch_b64", "onnxruntime_b1", "onnxruntime_b64"}
    assert p["macs"] < base["macs"] and p["parameters"] < base["parameters"]
    for r in res["rows"]:
        s = r["latency"]["onnxruntime_b64"]
        assert 0 < s["p50_ms"] <= s["p95_ms"] and s["throughput"] > 0
    files = {k: Path(v) for k, v in res["files"].items()}
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"
    assert "tiny-int8" in files["markdown"].read_text()
    assert json.loads(files["json"].read_text())["rows"][0]["name"] == "tiny"


def test_cli_quantize_and_benchmark(tiny_package, tmp_path, capsys):
    out = tmp_path / "cli-int8"
    code = main(["quantize", str(tiny_package), "--calibration", "16", "-o", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["record"]["calibration"]["samples"] == 16
    assert read_meta(out)["compression"][-1]["command"].startswith("medfuse")
    code = main(["benchmark", str(tiny_package), str(out), "--repeats", "2", "-o", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "cli-int8" in text and (tmp_path / "pareto.png").exists()


def test_teacher_views_full_masked_probe(tiny_package, tmp_path):
    import torch

    from medfuse.compress._common import package_data
    from medfuse.compress.distill import view_logits
    from medfuse.inference.helpers import predict_logits, to_tensors

    pred = medfuse.load(tiny_package)
    split = package_data(pred.package).val
    full = view_logits(pred.package, split, "full", ["signal"])
    masked = view_logits(pred.package, split, "masked", ["signal"])
    probe = view_logits(pred.package, split, "probe", ["signal"])
    # full: what the package predicts; masked: the same patient with only the signal present
    assert np.allclose(full, pred.logits(split), atol=1e-5)
    assert np.allclose(masked, pred.logits({"signal": split.arrays["signal"]}), atol=1e-5)
    assert not np.allclose(full, masked, atol=1e-3)
    # probe: the teacher's auxiliary head of the signal branch
    t = to_tensors(split, pred.meta["preprocessing"])
    want = predict_logits(pred.model, t, torch.device("cpu"), branches=True)[1]["signal"]
    assert np.allclose(probe, want) and not np.allclose(probe, masked, atol=1e-3)

    student = {
        "branches": {"signal": {"type": "cnn1d", "width": 4, "depth": 2, "out_features": 8}},
        "train": {"epochs": 1, "batch_size": 32, "early_stopping": None},
    }
    res = medfuse.compress.distill(
        tiny_package,
        student=student,
        out=tmp_path / "kd",
        device="cpu",
        progress=False,
        teacher_view="probe",
    )
    rec = read_meta(res.package)["compression"][0]
    assert rec["settings"]["teacher_view"] == "probe"
    assert "the auxiliary head of the student's one modality" in rec["settings"]["soft_targets"]
    # "before" is the teacher as it decides (all its modalities; it was the probe's metrics,
    # and auroc_retained their ratio); the view its soft targets came from is named beside it
    whole = medfuse.evaluate(tiny_package, device="cpu")["auroc"]
    assert rec["metrics"]["before"]["auroc"] == pytest.approx(whole, abs=1e-6)
    assert rec["metrics"]["teacher_view_metrics"]["auroc"] != pytest.approx(whole, abs=1e-6)
    two = {"branches": {"signal": {"type": "cnn1d"}, "tabular": {"type": "mlp"}}}
    with pytest.raises(SpecError, match="ONE modality"):
        medfuse.compress.distill(
            tiny_package, student=two, out=tmp_path / "y", device="cpu", teacher_view="probe"
        )
    with pytest.raises(SpecError, match="teacher view"):
        medfuse.compress.distill(
            tiny_package, student=student, out=tmp_path / "z", device="cpu", teacher_view="half"
        )


def test_prune_keeps_the_packages_operating_point_rule(tiny_package, tmp_path):
    """A package whose threshold ``calibrate --threshold-method sensitivity`` set was pruned to
    one at Youden's J (the spec's method) without a word."""
    from medfuse.report.calibration import calibrate_package

    cal = tmp_path / "sens"
    calibrate_package(tiny_package, out=cal, threshold_method="sensitivity", target=0.9)
    assert read_meta(cal)["threshold"]["method"] == "sensitivity"
    res = prune(cal, out=tmp_path / "p", amount=0.3, finetune_epochs=0)
    thr = read_meta(res.package)["threshold"]
    assert thr["method"] == "sensitivity" and thr["target"] == 0.9
    assert res.record["threshold"]["before"]["method"] == "sensitivity"
    assert "package's own rule (sensitivity, target 0.9)" in res.record["threshold"]["note"]


def test_prune_refuses_an_int8_package(quantized, tmp_path):
    """Pruning an INT8 package gave an fp32 one named ``...-int8-pruned``, its "before" the
    fp32 weights rather than the INT8 model the source deploys."""
    with pytest.raises(SpecError, match=r"INT8 package.*Prune its fp32 source, then quantize"):
        prune(quantized, out=tmp_path / "p", amount=0.3, finetune_epochs=0)


def test_distill_refuses_an_int8_teacher(quantized, tmp_path):
    """An INT8 teacher was read as its fp32 weights: targets and "before" of another model."""
    student = {"branches": {"signal": {"type": "cnn1d", "width": 4, "depth": 2}}}
    with pytest.raises(SpecError, match=r"INT8 package.*Distill from its fp32 source"):
        medfuse.compress.distill(quantized, student=student, out=tmp_path / "kd", device="cpu")


def test_http_explain_of_an_int8_package_says_what_it_explains(quantized):
    """/v1/explain on an INT8 package answered from the fp32 weights (its prediction differs
    from /v1/predict's INT8 one) with only runtime 'torch' to hint at it."""
    from fastapi.testclient import TestClient

    from medfuse.serve.app import create_app

    c = TestClient(create_app(quantized))
    body = {"instances": [{"tabular": {"age": 50}}], "steps": 4, "pictures": False}
    r = c.post("/v1/explain", json=body)
    assert r.status_code == 200, r.text
    assert "fp32 weights" in r.json()["explained_model"]["note"]


def test_writing_a_package_over_another_needs_overwrite(tiny_package, tmp_path, capsys):
    """``calibrate --out``, ``quantize -o``, ``prune -o`` and ``distill -o`` replaced a package
    already in their output (another model, lost) without a word; ``train`` asked for
    --overwrite."""
    import shutil

    from medfuse.report.calibration import calibrate_package

    victim = shutil.copytree(tiny_package, tmp_path / "victim")
    before = (victim / "medfuse.json").read_bytes()
    student = {"branches": {"signal": {"type": "cnn1d", "width": 4, "depth": 2}}}
    attempts = [
        lambda **kw: calibrate_package(tiny_package, out=victim, **kw),
        lambda **kw: medfuse.compress.quantize(tiny_package, out=victim, calibration=8, **kw),
        lambda **kw: prune(tiny_package, out=victim, amount=0.3, finetune_epochs=0, **kw),
        lambda **kw: medfuse.compress.distill(
            tiny_package, student=student, out=victim, device="cpu", **kw
        ),
    ]
    for write in attempts:
        with pytest.raises(SpecError, match="holds a package already; pass --overwrite"):
            write()
        assert (victim / "medfuse.json").read_bytes() == before
    code = main(["quantize", str(tiny_package), "-o", str(victim), "--calibration", "8"])
    assert code == SpecError.exit_code and "holds a package already" in capsys.readouterr().err
    assert (victim / "medfuse.json").read_bytes() == before
    # asked for: replaced
    code = main(
        ["quantize", str(tiny_package), "-o", str(victim), "--calibration", "8", "--overwrite"]
    )
    assert code == 0 and read_meta(victim)["runtime"]["precision"] == "int8"
    prune(tiny_package, out=victim, amount=0.3, finetune_epochs=0, overwrite=True)
    assert read_meta(victim)["compression"][-1]["method"].startswith("prune")


def test_an_output_written_with_a_tilde_is_still_the_input(tiny_package, tmp_path, monkeypatch):
    """``-o ~/pkg`` naming the input package was compared unexpanded and, with --overwrite,
    accepted: the input would have been replaced by its own pruned copy."""
    monkeypatch.setenv("HOME", str(tiny_package.parent))
    monkeypatch.chdir(tmp_path)  # a regression writes its './~' here, not in the repository
    with pytest.raises(SpecError, match="is an input package"):
        prune(
            tiny_package,
            out=f"~/{tiny_package.name}",
            amount=0.3,
            finetune_epochs=0,
            overwrite=True,
        )
