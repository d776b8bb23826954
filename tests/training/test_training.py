"""Trainer: stages, metrics.jsonl, early stopping, bf16, and resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from medfuse.api import train


def test_staged_training_records_each_stage(tiny_spec, tmp_path) -> None:
    tiny_spec["train"]["stages"] = [
        {"name": "branches", "epochs": 2},
        {"name": "fusion", "epochs": 1},
        {"name": "finetune", "epochs": 1},
    ]
    res = train(tiny_spec, out=tmp_path / "p", device="cpu", progress=False)
    meta = json.loads((res.package / "medfuse.json").read_text())
    stages = [s["stage"] for s in meta["training"]["stages"]]
    assert stages == ["branches", "fusion", "finetune"]
    lines = [json.loads(x) for x in (res.package / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in lines] == ["branches", "branches", "fusion", "finetune"]
    assert all("auroc" in r["val"] and "train_loss" in r for r in lines)
    assert set(res.metrics["test"]["branches"]) == {"image", "signal", "tabular"}
    assert set(res.metrics["test"]["without"]) == {"image", "signal", "tabular"}


def test_fusion_stage_freezes_branches(tiny_spec, tmp_path) -> None:
    """After a fusion-only stage the branch weights are exactly the initial ones."""
    import torch

    from medfuse.api import prepare_data
    from medfuse.core.spec import parse_spec
    from medfuse.models import build_model

    tiny_spec["train"]["stages"] = [{"name": "fusion", "epochs": 2}]
    res = train(tiny_spec, out=tmp_path / "p", device="cpu", progress=False)
    spec, _ = prepare_data(parse_spec(tiny_spec))
    torch.manual_seed(spec.train.seed)
    init = build_model(spec).state_dict()
    trained = load_file(str(res.package / "model.safetensors"))
    branch_keys = [k for k in init if k.startswith("branches.") and "num_batches" not in k]
    assert branch_keys and all(torch.equal(init[k], trained[k]) for k in branch_keys)
    assert any(not torch.equal(init[k], trained[k]) for k in init if k.startswith("head."))


def test_early_stopping_stops_and_restores_best(tiny_spec, tmp_path) -> None:
    tiny_spec["train"].update(epochs=30, early_stopping={"metric": "auroc", "patience": 1}, lr=0.05)
    res = train(tiny_spec, out=tmp_path / "p", device="cpu", progress=False)
    meta = json.loads((res.package / "medfuse.json").read_text())
    st = meta["training"]["stages"][0]
    assert st["early_stopped"] and st["epochs_run"] < 30
    hist = [json.loads(x) for x in (res.package / "metrics.jsonl").read_text().splitlines()]
    best = max(h["score"] for h in hist)
    assert abs(res.metrics["val"]["auroc"] - best) < 1e-9


def test_keep_last_runs_every_epoch_and_keeps_the_final_weights(tiny_spec, tmp_path) -> None:
    # the setting above stops early under keep: best; keep: last must run on and keep the end
    tiny_spec["train"].update(
        epochs=12, early_stopping={"metric": "auroc", "patience": 1}, lr=0.05, keep="last"
    )
    res = train(tiny_spec, out=tmp_path / "p", device="cpu", progress=False)
    st = json.loads((res.package / "medfuse.json").read_text())["training"]["stages"][0]
    assert not st["early_stopped"] and st["epochs_run"] == 12 and st["best_epoch"] == 12
    hist = [json.loads(x) for x in (res.package / "metrics.jsonl").read_text().splitlines()]
    assert abs(res.metrics["val"]["auroc"] - hist[-1]["score"]) < 1e-9


def test_sgd_optimizer_is_nesterov_momentum_and_recorded(tiny_spec, tmp_path, monkeypatch) -> None:
    import torch

    made: list[dict] = []

    class SpySGD(torch.optim.SGD):  # the real SGD; records how the trainer built it
        def __init__(self, params, **kw) -> None:
            made.append(kw)
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    tiny_spec["train"].update(
        optimizer="sgd", lr=0.05, weight_decay=5e-4, epochs=4, keep="last", early_stopping=None
    )
    res = train(tiny_spec, out=tmp_path / "p", device="cpu", progress=False)
    assert made == [{"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}]
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["spec"]["train"]["optimizer"] == "sgd"
    hist = [json.loads(x) for x in (res.package / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]  # it learns
    tiny_spec["train"]["optimizer"] = "adam"
    from medfuse.core.errors import SpecError
    from medfuse.core.spec import parse_spec

    with pytest.raises(SpecError, match=r"train\.optimizer.*adamw.*sgd"):
        parse_spec(tiny_spec)


def test_sam_step_takes_the_gradient_at_the_perturbed_weights_and_moves_back() -> None:
    import torch
    from torch import nn

    from medfuse.training.trainer import _sam_second_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    params = list(model.parameters())

    def loss_at() -> torch.Tensor:
        return ((model(x) - y) ** 2).mean()

    loss_at().backward()
    g = [p.grad.clone() for p in params]
    before = [p.detach().clone() for p in params]
    stats = model[1].running_mean.clone()
    _sam_second_step(model, params, 0.1, loss_at)
    for p, b in zip(params, before, strict=True):  # the weights are back where they were
        assert torch.allclose(p, b)
    assert torch.equal(model[1].running_mean, stats)  # the perturbed pass left BN stats alone
    assert model[1].momentum == 0.1
    # the gradient now is the one at w + rho * g / |g|, computed independently here
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    with torch.no_grad():
        for p, gi in zip(params, g, strict=True):
            p.add_(gi * 0.1 / norm)
    ref = torch.autograd.grad(loss_at(), params)
    for p, r in zip(params, ref, strict=True):
        assert torch.allclose(p.grad, r, atol=1e-6)
    assert any(not torch.allclose(r, gi, atol=1e-4) for r, gi in zip(ref, g, strict=True))


def test_sam_trains_and_is_recorded(tiny_spec, tmp_path) -> None:
    tiny_spec["train"].update(sam=0.05, epochs=4, keep="last", early_stopping=None)
    res = train(tiny_spec, out=tmp_path / "p", device="cpu", progress=False)
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["spec"]["train"]["sam"] == 0.05
    hist = [json.loads(x) for x in (res.package / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]  # it learns
    from medfuse.core.errors import SpecError
    from medfuse.core.spec import parse_spec

    tiny_spec["train"]["sam"] = 0
    with pytest.raises(SpecError, match=r"train\.sam"):
        parse_spec(tiny_spec)


def test_picking_the_epoch_on_a_small_validation_split_warns(tiny_spec, tmp_path, caplog) -> None:
    # 48 validation samples: one class has fewer than 30, so keep: best warns and keep: last not
    tiny_spec["train"]["epochs"] = 1
    with caplog.at_level("WARNING", logger="medfuse.train"):
        train(tiny_spec, out=tmp_path / "best", device="cpu", progress=False)
    msgs = [r.getMessage() for r in caplog.records if "rarest class" in r.getMessage()]
    assert len(msgs) == 1 and "of 48" in msgs[0] and "train.keep: last" in msgs[0]
    caplog.clear()
    tiny_spec["train"]["keep"] = "last"
    with caplog.at_level("WARNING", logger="medfuse.train"):
        train(tiny_spec, out=tmp_path / "last", device="cpu", progress=False)
    assert not [r for r in caplog.records if "rarest class" in r.getMessage()]


def test_bf16_autocast_trains(tiny_spec, tmp_path) -> None:
    tiny_spec["train"]["bf16"] = True
    tiny_spec["train"]["epochs"] = 1
    res = train(tiny_spec, out=tmp_path / "p", device="cpu", progress=False)
    assert 0.0 <= res.metrics["test"]["auroc"] <= 1.0


def test_modality_dropout_and_class_weights(tiny_spec, tmp_path) -> None:
    tiny_spec["train"].update(
        modality_dropout={"image": 0.5}, class_weights="balanced", schedule="onecycle"
    )
    res = train(tiny_spec, out=tmp_path / "p", device="cpu", progress=False)
    assert "without" in res.metrics["test"]


def _run(cfg, out, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medfuse",
            "train",
            str(cfg),
            "--out",
            str(out),
            "--device",
            "cpu",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_resume_after_kill_9_matches_uninterrupted_run(tiny_spec, tmp_path) -> None:
    """kill -9 mid-run, then --resume: the final weights equal those of a run never interrupted."""
    tiny_spec["train"].update(epochs=6, early_stopping=None)
    tiny_spec["data"]["options"].update(n_train=192)
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump(tiny_spec))
    ref = _run(cfg, tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()

    out = tmp_path / "run"
    proc = _run(cfg, out)
    ckpt = tmp_path / "run.train" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        hist = tmp_path / "run.train" / "metrics.jsonl"
        if ckpt.exists() and hist.exists() and len(hist.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "medfuse.json").exists(), "killed run must not leave a complete package"
    assert ckpt.exists()
    hist_file = tmp_path / "run.train" / "metrics.jsonl"
    done_before = len(hist_file.read_text().splitlines())
    assert done_before < 6
    # the race a kill can hit: an epoch's metrics line written, its checkpoint not yet; resume
    # runs that epoch again and must not leave two lines for it
    last = json.loads(hist_file.read_text().splitlines()[-1])
    with open(hist_file, "a") as f:
        f.write(json.dumps({**last, "epoch": last["epoch"] + 1}) + "\n")

    resumed = _run(cfg, out, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = load_file(str(tmp_path / "ref" / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].float() - b[k].float()).abs().max() <= 1e-6, k
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == list(range(1, 7))


@pytest.mark.slow
def test_synthetic_fusion_beats_every_single_branch(tmp_path) -> None:
    """The shipped synthetic config: fused test AUROC exceeds the best branch by >= 0.05."""
    res = train("configs/synthetic.yaml", out=tmp_path / "syn", device="cpu", progress=False)
    test = res.metrics["test"]
    best = max(v["auroc"] for v in test["branches"].values())
    assert test["auroc"] - best >= 0.05


def test_mixup_mixes_every_modality_with_one_weight_and_trains(tiny_spec, tmp_path) -> None:
    import torch

    from medfuse.training.augment import mixup_batch

    g = torch.Generator().manual_seed(0)
    inputs = {"a": torch.arange(4.0).view(4, 1), "b": torch.arange(4.0).view(4, 1) * 10}
    masks = {"a": torch.ones(4), "b": torch.tensor([1.0, 0.0, 1.0, 1.0])}
    mixed, present, (lam, perm) = mixup_batch(inputs, masks, 0.4, g)
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == [0, 1, 2, 3]
    for m in inputs:  # one weight and one partner for every modality
        want = lam * inputs[m] + (1 - lam) * inputs[m][perm]
        assert torch.allclose(mixed[m], want)
    assert torch.equal(present["b"], torch.maximum(masks["b"], masks["b"][perm]))
    # same generator state, same mix (resume reproduces it)
    again = mixup_batch(inputs, masks, 0.4, torch.Generator().manual_seed(0))
    assert again[2][0] == lam and torch.equal(again[2][1], perm)

    tiny_spec["train"].update(epochs=2, mixup=0.2)
    res = train(tiny_spec, out=tmp_path / "p", device="cpu", progress=False)
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["spec"]["train"]["mixup"] == 0.2
    assert 0.0 <= res.metrics["test"]["auroc"] <= 1.0


def test_the_shipped_text_demo_config_trains_four_modalities_and_predicts_raw_notes(
    tmp_path,
) -> None:
    """``medfuse demo --text``'s config (shrunk): generated notes are a fourth modality whose
    tokenizer, trained on the training notes, travels in the package; raw text predicts."""
    pytest.importorskip("tokenizers")
    from medfuse.core.spec import load_spec_dict, parse_spec
    from medfuse.inference.predictor import load

    d = load_spec_dict("synthetic-text")
    d["data"]["options"].update(n_train=96, n_val=48, n_test=48, image_size=16, signal_length=64)
    d["train"]["stages"] = [{"name": "end_to_end", "epochs": 1}]
    res = train(parse_spec(d), out=tmp_path / "txt", device="cpu", progress=False)
    assert set(res.metrics["test"]["branches"]) == {"image", "signal", "tabular", "text"}
    pred = load(res.package)
    assert isinstance(pred.meta["preprocessing"]["text"]["tokenizer"], str)
    row = {"tabular": [50.0, 25.0, 0.0], "text": "patient stable, no complaints"}
    out = pred.predict_batch(pred.inputs([row]))
    assert out.rows()[0]["present_text"] == 1 and out.rows()[0]["present_image"] == 0
