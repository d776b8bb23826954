"""Fine-tuning that fits big models, on tiny random models: IA3 adapters (merged like LoRA),
``store: adapter`` (the adapter weights beside the merged ones, covered by the digests),
layer-wise lr decay (the optimizer's actual learning rates), gradient checkpointing (the same
loss and gradients, the blocks really recomputed) and bf16 autocast in the trainer."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_pretrained import SYNTH, TIMM, _need, _spec, _timm_weights

from medfuse.core.errors import PackageError, SpecError
from medfuse.core.package import ADAPTER, validate_meta
from medfuse.core.spec import parse_spec
from medfuse.models import build_model

VIT = dict(TIMM["model_args"], embed_dim=32, depth=2, num_heads=2)


def _vit(**extra: Any) -> dict[str, Any]:
    return {"type": "timm", "model": TIMM["model"], "model_args": VIT, **extra}


def test_peft_method_fields_are_checked() -> None:
    def spec(**peft: Any) -> Any:
        return _spec({"type": "cnn"}, peft={"branches": ["x"], **peft})

    assert spec(method="ia3", target_modules=["qkv", "fc2"], feedforward_modules=["fc2"])
    with pytest.raises(SpecError, match=r"train.peft.*r apply to method 'lora' only"):
        spec(method="ia3", r=4)
    with pytest.raises(SpecError, match=r"feedforward_modules applies to method 'ia3' only"):
        spec(feedforward_modules=["fc2"])
    with pytest.raises(SpecError, match=r"feedforward_modules \['fc1'\] are not in target_modules"):
        spec(method="ia3", target_modules=["qkv"], feedforward_modules=["fc1"])
    with pytest.raises(SpecError, match=r"train.peft.method.*must be one of.*'lora'.*'ia3'"):
        spec(method="adalora")
    raw = _spec({"type": "cnn"}).to_dict()
    raw["ensemble"] = 2
    raw["train"]["peft"] = {"branches": ["x"], "store": "adapter"}
    with pytest.raises(SpecError, match=r"train.peft.store.*ensemble of 2"):
        parse_spec(raw)


def test_ia3_merge_keeps_outputs_and_only_scales_the_targets(tmp_path) -> None:
    """IA3 on a timm ViT: only the ia3 vectors train; merging them (feedforward: the input side)
    gives the plain architecture with the same outputs as the adapted model."""
    _need("timm", "peft")
    from medfuse.training.finetune import apply_finetune, is_trainable, merge_finetune

    spec = _spec(
        _vit(),
        peft={"branches": ["x"], "method": "ia3", "target_modules": ["qkv", "fc2"]}
        | {"feedforward_modules": ["fc2"]},
    )
    model = build_model(spec).eval()
    plain = set(model.state_dict())
    rec = apply_finetune(model, spec)
    assert rec is not None and rec["peft"]["method"] == "ia3"
    adapted = [n for n, _ in model.named_parameters() if "ia3_l" in n]
    assert len(adapted) == 4  # qkv and fc2 of 2 blocks
    trainable = [n for n, _ in model.named_parameters() if is_trainable(spec, n)]
    assert all("ia3_l" in n for n in trainable if n.startswith("branches.x."))
    assert 0 < rec["parameters"]["trainable_fraction"] < 0.1
    fc2 = model.branches["x"].encoder.blocks[0].mlp.fc2
    assert fc2.is_feedforward and not model.branches["x"].encoder.blocks[0].attn.qkv.is_feedforward
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained
        for n, p in model.named_parameters():
            if "ia3_l" in n:
                p.uniform_(0.5, 1.5)
    x = {"x": torch.rand(3, 1, 16, 16), "t": torch.randn(3, 2)}
    masks = {"x": torch.ones(3), "t": torch.ones(3)}
    with torch.no_grad():
        before = model(x, masks)
        merged = merge_finetune(model)
        after = merged(x, masks)
    assert set(merged.state_dict()) == plain
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    bad = _spec(_vit(), peft={"branches": ["x"], "method": "ia3", "target_modules": ["nope"]})
    with pytest.raises(
        SpecError, match=r"target_modules.*'x' has no Linear layer named \['nope'\]"
    ):
        apply_finetune(build_model(bad), bad)


def test_ia3_store_adapter_round_trip_covered_by_digests_and_exported(tmp_path) -> None:
    """Train IA3 with store: adapter from a pretrained (timm) weights file: the package's
    model.safetensors is the merged model; adapter.safetensors + the base weights rebuild it;
    the adapter file is digested, validated by the schema, and ONNX matches PyTorch."""
    _need("timm", "peft", "onnx")
    from medfuse.api import train
    from medfuse.export.exporter import export_package
    from medfuse.inference.package import load_package
    from medfuse.training.finetune import apply_finetune, merge_finetune

    file, _ = _timm_weights(tmp_path)
    raw = copy.deepcopy(SYNTH)
    raw["branches"]["image"] = _vit(weights=str(file))
    raw["branches"]["image"]["model_args"] = dict(TIMM["model_args"])  # the file's architecture
    raw["train"]["peft"] = {
        "branches": ["image"],
        "method": "ia3",
        "target_modules": ["qkv", "fc2"],
        "feedforward_modules": ["fc2"],
        "store": "adapter",
    }
    pkg = train(raw, out=tmp_path / "pkg", device="cpu", progress=False).package
    meta = json.loads((pkg / "medfuse.json").read_text())
    rec = meta["adapter"]
    assert rec["file"] == ADAPTER and rec["method"] == "ia3" and rec["branches"] == ["image"]
    assert rec["config"]["feedforward_modules"] == ["fc2"] and "store" not in rec["config"]
    assert rec["base"]["image"]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert rec["merged_sha256"] == meta["files"]["model.safetensors"]
    assert meta["files"][ADAPTER] == hashlib.sha256((pkg / ADAPTER).read_bytes()).hexdigest()
    adapter = load_file(str(pkg / ADAPTER))
    assert adapter and all("ia3_l" in k for k in adapter)
    assert rec["parameters"] == sum(v.numel() for v in adapter.values())
    merged = load_file(str(pkg / "model.safetensors"))
    assert not any("ia3_l" in k or "base_layer" in k for k in merged)

    # base (the pretrained file) + adapter + the rest of the package = the merged weights
    spec = parse_spec(meta["spec"])
    model = build_model(spec)
    apply_finetune(model, spec)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # ia3 vectors start at 1
    rest = {k: v for k, v in merged.items() if not k.startswith("branches.image.")}
    missing, unexpected = model.load_state_dict({**adapter, **rest}, strict=False)
    assert not unexpected and all(k.startswith("branches.image.") for k in missing)
    assert any("ia3_l" in k and not torch.equal(state[k], adapter[k]) for k in adapter)  # learnt
    rebuilt = merge_finetune(model).state_dict()
    assert set(rebuilt) == set(merged)
    for k, v in merged.items():
        torch.testing.assert_close(rebuilt[k], v, rtol=1e-5, atol=1e-6, msg=k)

    res = export_package(pkg, format="onnx", samples=8)
    assert res.report is not None and res.report.ok, res.report.to_dict()
    meta = json.loads((pkg / "medfuse.json").read_text())
    assert ADAPTER in meta["files"] and validate_meta(meta).adapter is not None  # export kept it
    load_package(pkg)

    data = bytearray((pkg / ADAPTER).read_bytes())  # a changed adapter is refused
    data[-1] ^= 0xFF
    (pkg / ADAPTER).write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"adapter.safetensors does not match its recorded"):
        load_package(pkg)
    del meta["files"][ADAPTER]  # a manifest whose adapter names no file of the package
    with pytest.raises(PackageError, match=r"adapter.file 'adapter.safetensors' is not among"):
        validate_meta(meta)
    meta["adapter"] = {**rec, "method": "prefix"}
    with pytest.raises(PackageError, match=r"adapter.method"):
        validate_meta(meta)


def _composite_spec(**train: Any) -> dict[str, Any]:
    raw = copy.deepcopy(SYNTH)
    raw["branches"]["image"] = _vit()
    raw["train"].update(epochs=1, schedule="constant", lr=0.01, **train)
    return raw


def test_layer_decay_sets_each_encoder_layer_lr(tmp_path) -> None:
    """0.5 decay over a 2-block ViT (timm's grouping: embeddings 0, block 0 1, block 1 and the
    final norm 2): lr x 0.25, x 0.5, x 1; fusion, head and the tabular branch at lr. Read from
    the optimizer the trainer really built."""
    _need("timm")
    from medfuse.distributed.strategies import start_session
    from medfuse.training.pipeline import prepare_data, run_fit
    from medfuse.training.trainer import Callback

    seen: dict[str, float] = {}

    class Rates(Callback):
        def on_stage_start(self, trainer: Any, run: Any) -> None:
            names = {id(p): n for n, p in trainer.model.named_parameters()}
            for g in run.opt.param_groups:
                seen.update({names[id(p)]: g["lr"] for p in g["params"]})

    spec, bundle = prepare_data(parse_spec(_composite_spec(layer_decay=0.5)))
    run_fit(spec, bundle, start_session(spec, "cpu"), progress=False, callbacks=[Rates()])
    enc = "branches.image.encoder."
    expect = {
        enc + "cls_token": 0.0025,
        enc + "pos_embed": 0.0025,
        enc + "patch_embed.proj.weight": 0.0025,
        enc + "blocks.0.attn.qkv.weight": 0.005,
        enc + "blocks.0.mlp.fc2.bias": 0.005,
        enc + "blocks.1.attn.qkv.weight": 0.01,
        enc + "norm.weight": 0.01,
        "branches.tabular.net.0.weight": 0.01,
    }
    for name, lr in expect.items():
        assert seen[name] == pytest.approx(lr), name
    head = [n for n in seen if n.startswith(("head.", "fusion."))]
    assert head and all(seen[n] == pytest.approx(0.01) for n in head)
    assert len(seen) == sum(1 for _ in build_model(spec).parameters())  # every one trains

    # Hugging Face (a 1-layer ViT): embeddings 0, layers.0 1, the final layernorm 2
    from medfuse.models.branches.pretrained import tiny_hf_model
    from medfuse.training.finetune import layer_scales

    hf = build_model(_spec({"type": "hf", "model": str(tiny_hf_model(tmp_path / "vit"))}))
    scales = layer_scales(hf, 0.5)
    assert len(scales) == sum(1 for _ in hf.branches["x"].encoder.parameters())
    layer = next(n for n in scales if ".layers.0." in n or ".layer.0." in n)
    e = "branches.x.encoder."
    assert scales[e + "embeddings.cls_token"] == 0.25 and scales[layer] == 0.5
    assert scales[e + "layernorm.weight"] == 1.0
    with pytest.raises(SpecError, match=r"train.layer_decay.*pretrained branches.*has none"):
        from medfuse.training.finetune import apply_finetune

        plain = _spec({"type": "cnn"}, layer_decay=0.7)
        apply_finetune(build_model(plain), plain)


def _loss_and_grads(model: torch.nn.Module, x: dict, masks: dict) -> tuple[float, dict]:
    model.zero_grad()
    logits, _ = model(x, masks, aux="detached")
    loss = logits.float().pow(2).mean()
    loss.backward()
    return float(loss.detach()), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("kind", ["timm", "hf"])
def test_grad_checkpointing_same_loss_and_gradients_and_recomputes(kind, tmp_path) -> None:
    """With LoRA (a frozen patch embedding: the blocks' input needs no gradient) the adapters
    get the same gradients with checkpointing as without, and the blocks' attention runs twice
    per step (forward, then again in the backward pass) only with it."""
    _need("timm" if kind == "timm" else "transformers", "peft")
    from medfuse.models.branches.pretrained import tiny_hf_model
    from medfuse.training.finetune import apply_finetune, merge_finetune

    branch = _vit() if kind == "timm" else {"type": "hf", "model": str(tiny_hf_model(tmp_path))}
    peft = {"branches": ["x"], "r": 2}
    results = []
    for on in (False, True):
        torch.manual_seed(0)
        spec = _spec(branch, peft=peft, grad_checkpointing=on)
        model = build_model(spec)
        rec = apply_finetune(model, spec)
        assert rec is not None and rec.get("grad_checkpointing", []) == (["x"] if on else [])
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)  # non-zero: gradients reach lora_A too
                p.requires_grad_("lora_" in n or not n.startswith("branches.x."))
        enc = model.branches["x"].encoder
        blocks = enc.blocks if kind == "timm" else getattr(enc, "layers", None)
        if blocks is None:  # transformers < 5
            blocks = enc.encoder.layer
        calls = [0]  # the first block's attention (inside the checkpointed forward)
        attn = blocks[0].attn if kind == "timm" else blocks[0].attention
        attn.register_forward_pre_hook(lambda *_, c=calls: c.__setitem__(0, c[0] + 1))
        model.train()
        torch.manual_seed(1)
        x = {"x": torch.rand(4, 1, 16, 16), "t": torch.randn(4, 2)}
        masks = {"x": torch.ones(4), "t": torch.ones(4)}
        loss, grads = _loss_and_grads(model, x, masks)
        results.append((loss, grads, calls[0]))
        if on:
            merge_finetune(model)
            assert not (
                enc.grad_checkpointing if kind == "timm" else blocks[0].gradient_checkpointing
            )
    (l0, g0, c0), (l1, g1, c1) = results
    assert (c0, c1) == (1, 2)
    assert l1 == pytest.approx(l0, rel=1e-6)
    lora = [n for n in g0 if "lora_A" in n]
    assert lora and set(g1) == set(g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)


def test_grad_checkpointing_needs_a_supporting_branch() -> None:
    from medfuse.training.finetune import apply_finetune

    plain = _spec({"type": "cnn"}, grad_checkpointing=True)
    with pytest.raises(SpecError, match=r"train.grad_checkpointing.*pretrained branches"):
        apply_finetune(build_model(plain), plain)
    _need("torchvision")
    tv = _spec(
        {"type": "torchvision", "model": "mobilenet_v3_small", "model_args": {"width_mult": 0.1}},
        grad_checkpointing=True,
    )
    model = build_model(tv)
    with pytest.raises(SpecError, match=r"branch 'x' \(MobileNetV3\) supports no gradient"):
        apply_finetune(model, tv)

    # layer decay's generic fallback: the encoder's top-level children, features.N one by one
    from medfuse.training.finetune import layer_scales

    scales = layer_scales(model, 0.5)
    by_unit: dict[str, set[float]] = {}
    for n, s in scales.items():
        by_unit.setdefault(".".join(n.split(".")[3:5]), set()).add(s)
    assert all(len(v) == 1 for v in by_unit.values())  # one rate per unit
    order = list(by_unit)  # registration order: input to output
    rates = [by_unit[u].pop() for u in order]
    assert order[0] == "features.0" and rates == sorted(rates) and rates[-1] == 1.0
    assert rates[0] == 0.5 ** (len(order) - 1) and len(set(rates)) == len(order)


@pytest.mark.parametrize("bf16", [False, True])
def test_bf16_autocasts_the_training_forward(bf16, tmp_path) -> None:
    """train.bf16: the branches' Linear layers compute in bfloat16 in the training steps (and
    float32 without it); the loss and the weights stay float32."""
    _need("timm")
    from medfuse.distributed.strategies import start_session
    from medfuse.training.pipeline import prepare_data, run_fit

    spec, bundle = prepare_data(parse_spec(_composite_spec(bf16=bf16)))
    model = build_model(spec)
    dtypes: set[torch.dtype] = set()
    qkv = model.branches["image"].encoder.blocks[0].attn.qkv

    def hook(mod: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        if mod.training:
            dtypes.add(out.dtype)

    qkv.register_forward_hook(hook)
    out = run_fit(spec, bundle, start_session(spec, "cpu"), model=model, progress=False)
    assert dtypes == ({torch.bfloat16} if bf16 else {torch.float32})
    assert qkv.weight.dtype == torch.float32
    assert out.model is not None and 0.0 <= out.metrics["val"]["auroc"] <= 1.0
