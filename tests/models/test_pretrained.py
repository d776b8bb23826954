"""Pretrained branches (timm, Hugging Face): local weights, offline errors, the weights record,
a package that rebuilds without the weight files; LoRA fine-tuning merged into the package.

Models are tiny and random, saved to tmp dirs and read back through the path downloaded weights
take (a file, a model directory, the hub cache). Nothing is downloaded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medfuse.core.errors import SpecError
from medfuse.core.optional import unusable
from medfuse.core.spec import parse_spec
from medfuse.inference.package import load_package, save_package
from medfuse.models import BRANCHES, build_model

TIMM = BRANCHES.example("timm")
IMAGE = {"kind": "image", "channels": 1, "size": [16, 16]}
TAB = {"kind": "tabular", "columns": ["a", "b"]}


def _need(*modules: str) -> None:
    if reason := unusable(modules):
        pytest.skip(reason)


def _spec(branch: dict[str, Any], **train: Any) -> Any:
    return parse_spec(
        {
            "data": {"source": "synthetic"},
            "task": {"labels": ["n", "p"]},
            "modalities": {"x": IMAGE, "t": TAB},
            "branches": {"x": branch, "t": {"type": "mlp", "hidden": 4, "out_features": 4}},
            "head": {"hidden": 4},
            "train": train or {},
        }
    )


def _identity(spec: Any) -> dict[str, Any]:
    return {
        m: {"mean": [0.0] * s.shape[0], "std": [1.0] * s.shape[0], "channel_axis": 0}
        for m, s in spec.modalities.items()
    }


def _save(path: Path, model: torch.nn.Module, spec: Any) -> Path:
    return save_package(
        path,
        model=model,
        spec=spec,
        preprocessing=_identity(spec),
        threshold={"value": 0.5},
        metrics={},
    )


def _timm_weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 'downloaded' timm checkpoint: a tiny random ViT's state (with its classifier head)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = timm.create_model(TIMM["model"], num_classes=5, **TIMM["model_args"])
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    file = tmp_path / "hub" / "model.safetensors"
    file.parent.mkdir(parents=True)
    save_file(state, str(file))
    return file, state


def test_timm_is_told_how_to_read_the_weight_file(tmp_path, monkeypatch) -> None:
    """A PyTorch weight file is read by timm's loader (custom_load false), original JAX .npz
    weights by the model's own reader (true). This ViT's registry entry says true, which timm
    before 1.0.31 kept for a file named too: it read model.safetensors as an .npz and failed."""
    _need("timm")
    import timm

    file, _ = _timm_weights(tmp_path)
    npz = tmp_path / "vit.npz"
    npz.write_bytes(b"")
    seen: list[dict] = []
    real = timm.create_model

    def spy(*args, **kw):
        if kw.get("pretrained"):
            seen.append(dict(kw["pretrained_cfg_overlay"]))
            if seen[-1]["file"].endswith(".npz"):
                raise RuntimeError("stop: the overlay is what is checked")
        return real(*args, **kw)

    monkeypatch.setattr(timm, "create_model", spy)
    build_model(_spec({"type": "timm", **TIMM, "weights": str(file)}))
    assert seen[-1] == {"file": str(file), "source": "", "url": "", "custom_load": False}
    with pytest.raises(RuntimeError, match="stop"):
        build_model(_spec({"type": "timm", **TIMM, "weights": str(npz)}))
    assert seen[-1]["custom_load"] is True
    cnn = {"type": "timm", "model": "resnet10t", "model_args": {}, "weights": str(npz)}
    with pytest.raises(SpecError, match=r"resnet10t.*no reader of original \.npz weights"):
        build_model(_spec(cnn))  # a model without timm's .npz reader: refused, not an error inside


def test_timm_reads_a_local_file_records_it_and_the_package_needs_it_no_more(tmp_path) -> None:
    _need("timm")
    file, state = _timm_weights(tmp_path)
    spec = _spec({"type": "timm", **TIMM, "weights": str(file.parent)})  # a model directory
    model = build_model(spec).eval()
    enc = model.branches["x"].encoder
    assert torch.equal(
        enc.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"]
    )
    assert "head.weight" not in enc.state_dict()  # features only (num_classes=0)
    # its preprocessing: grey repeated to 3 channels, the pretrained (ViT) mean/std
    prep = model.branches["x"].prep
    assert prep.repeat and prep.mean.flatten().tolist() == [0.5, 0.5, 0.5]

    pkg = _save(tmp_path / "p", model, spec)
    meta = json.loads((pkg / "medfuse.json").read_text())
    rec = meta["pretrained"]["x"]
    assert rec["weights"]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    import timm

    # the registry's license (apache-2.0; timm 1.0.20's registry gives none for this model)
    registry = timm.create_model(TIMM["model"], pretrained=False, **TIMM["model_args"])
    assert rec["weights"]["license"] == registry.pretrained_cfg.get("license")
    assert "model.safetensors" in rec["weights"]["origin"]
    assert rec["preprocess"] == {
        "channels": 3,
        "size": [16, 16],
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }

    shutil.rmtree(file.parent)  # the deployment machine has no weight files: the package suffices
    x = {"x": torch.rand(3, 1, 16, 16), "t": torch.randn(3, 2)}
    masks = {"x": torch.ones(3), "t": torch.ones(3)}
    loaded = load_package(pkg)
    with torch.no_grad():
        assert torch.equal(model(x, masks), loaded.model(x, masks))
    assert loaded.meta["pretrained"]["x"]["weights"] == rec["weights"]


def test_missing_weights_say_where_to_put_them_and_never_download(tmp_path, monkeypatch) -> None:
    _need("timm", "transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpecError, match=r"never downloads weights.*Put the file\(s\) at .*nope"):
        build_model(_spec({"type": "timm", **TIMM, "weights": str(tmp_path / "nope.safetensors")}))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        SpecError, match=r"vit_tiny_patch16_224.*never downloads.*models--timm--vit_tiny"
    ):
        build_model(_spec({"type": "timm", **TIMM, "weights": "hub"}))
    with pytest.raises(
        SpecError, match=r"'nobody/no-model'.*never downloads.*huggingface-cli download"
    ):
        build_model(_spec({"type": "hf", "model": "nobody/no-model"}))
    if not unusable(("torchvision",)):  # a weight enum's file, looked for in the torch hub cache
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        with pytest.raises(
            SpecError, match=r"mobilenet_v3_small.*never downloads.*torch/hub/checkpoints/"
        ):
            build_model(
                _spec({"type": "torchvision", "model": "mobilenet_v3_small", "weights": "DEFAULT"})
            )
        with pytest.raises(SpecError, match=r"has no weights 'NOPE'.*IMAGENET1K_V1"):
            build_model(
                _spec({"type": "torchvision", "model": "mobilenet_v3_small", "weights": "NOPE"})
            )
    with pytest.raises(SpecError, match=r"required parameter of branch 'timm'"):
        parse_spec(
            {
                "data": {"source": "synthetic"},
                "modalities": {"x": IMAGE},
                "branches": {"x": {"type": "timm"}},
            }
        )


def test_filled_caches_are_read_as_a_download_would_leave_them(tmp_path, monkeypatch) -> None:
    """``weights: hub`` reads the Hugging Face cache's layout (refs/main -> snapshots/<rev>/),
    and a torchvision weight enum reads $TORCH_HOME/hub/checkpoints/<the enum's file name>: the
    weights in the model are the file's, and the package records the file's digest."""
    _need("timm")
    import huggingface_hub
    import timm

    file, state = _timm_weights(tmp_path)
    repo = timm.create_model(TIMM["model"], **TIMM["model_args"]).pretrained_cfg["hf_hub_id"]
    rev = "0" * 40
    snap = tmp_path / "cache" / f"models--{repo.replace('/', '--')}" / "snapshots" / rev
    snap.mkdir(parents=True)
    shutil.copy(file, snap / "model.safetensors")
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(rev)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    model = build_model(_spec({"type": "timm", **TIMM, "weights": "hub"}))
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(model.branches["x"].encoder.state_dict()[key], state[key])
    rec = model.branches["x"].pretrained_record
    assert rec["weights"]["origin"] == f"hf-hub:{repo}"
    assert rec["weights"]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()

    if unusable(("torchvision",)):
        return
    from torchvision import models as tvm

    torch.manual_seed(2)
    src = tvm.get_model("mobilenet_v3_small", weights=None)
    url = tvm.get_model_weights("mobilenet_v3_small").DEFAULT.url
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name
    ckpt.parent.mkdir(parents=True)
    torch.save(src.state_dict(), ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    tv = build_model(
        _spec({"type": "torchvision", "model": "mobilenet_v3_small", "weights": "DEFAULT"})
    )
    enc = tv.branches["x"].encoder.state_dict()
    assert torch.equal(enc["features.0.0.weight"], src.state_dict()["features.0.0.weight"])
    assert (
        tv.branches["x"].pretrained_record["weights"]["sha256"]
        == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    )


def test_hf_directory_round_trip_without_the_directory(tmp_path) -> None:
    _need("transformers")
    from medfuse.models.branches.pretrained import tiny_hf_model

    folder = tiny_hf_model(tmp_path / "vit")
    spec = _spec({"type": "hf", "model": str(folder)})
    model = build_model(spec).eval()
    pkg = _save(tmp_path / "p", model, spec)
    rec = json.loads((pkg / "medfuse.json").read_text())["pretrained"]["x"]
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert rec["weights"]["sha256"] == digest and rec["weights"]["license"] == "apache-2.0"
    assert rec["config"]["model_type"] == "vit"
    shutil.rmtree(folder)
    x = {"x": torch.rand(2, 1, 16, 16), "t": torch.randn(2, 2)}
    masks = {"x": torch.ones(2), "t": torch.ones(2)}
    with torch.no_grad():
        assert torch.equal(model(x, masks), load_package(pkg).model(x, masks))


def test_freeze_prefixes_are_checked(tmp_path) -> None:
    from medfuse.training.finetune import apply_finetune, is_trainable

    spec = _spec(
        {"type": "cnn", "width": 4, "depth": 2, "out_features": 8}, freeze=["branches.x.stem"]
    )
    model = build_model(spec)
    rec = apply_finetune(model, spec)
    assert rec is not None and rec["freeze"] == ["branches.x.stem"]
    assert not is_trainable(spec, "branches.x.stem.0.weight")
    assert not is_trainable(spec, "module.members.1.branches.x.stem.0.weight")
    assert is_trainable(spec, "branches.x.features.0.conv1.weight")
    bad = _spec({"type": "cnn", "width": 4, "depth": 2}, freeze=["branches.x.nothing"])
    with pytest.raises(SpecError, match=r"train.freeze.*'branches.x.nothing' names no parameter"):
        apply_finetune(build_model(bad), bad)
    with pytest.raises(SpecError, match=r"train.peft.branches.*no modality named 'y'"):
        _spec({"type": "cnn"}, peft={"branches": ["y"]})


SYNTH: dict[str, Any] = {
    "name": "lora",
    "task": {"type": "binary"},
    "data": {
        "source": "synthetic",
        "options": {"n_train": 64, "n_val": 32, "n_test": 32, "image_size": 16},
    },
    "modalities": {
        "image": {"kind": "image", "channels": 1, "size": [16, 16]},
        "tabular": {"kind": "tabular", "columns": ["age", "bmi", "marker"]},
    },
    "branches": {"tabular": {"type": "mlp", "hidden": 4, "out_features": 4}},
    "head": {"hidden": 0},
    "train": {"epochs": 2, "batch_size": 32, "early_stopping": None, "lr": 0.01},
}


def test_lora_on_a_timm_vit_trains_few_parameters_merges_and_exports(tmp_path) -> None:
    """LoRA r=1 on every Linear of a (tiny) timm ViT: under 2% of the model trains (a ViT-S
    would be far under); the package holds the merged plain ViT, and ONNX matches PyTorch."""
    _need("timm", "peft", "onnx")
    from medfuse.api import train
    from medfuse.export.exporter import export_package
    from medfuse.export.verify import TOLERANCE

    file, state = _timm_weights(tmp_path)
    raw = copy.deepcopy(SYNTH)
    args = dict(TIMM["model_args"], embed_dim=64, depth=2, num_heads=2)
    raw["branches"]["image"] = {"type": "timm", "model": TIMM["model"], "model_args": args}
    raw["train"]["peft"] = {
        "branches": ["image"],
        "r": 1,
        "alpha": 2,
        "target_modules": ["qkv", "proj"],
    }
    pkg = train(raw, out=tmp_path / "pkg", device="cpu", progress=False).package
    meta = json.loads((pkg / "medfuse.json").read_text())
    rec = meta["training"]["finetune"]
    assert rec["peft"]["r"] == 1
    frac = rec["parameters"]["trainable_fraction"]
    assert 0 < frac < 0.02, rec["parameters"]
    # identity statistics: the branch normalises with its pretrained mean/std itself
    assert meta["preprocessing"]["image"]["mean"] == [0.0] and meta["preprocessing"]["image"][
        "std"
    ] == [1.0]
    from safetensors.torch import load_file

    weights = load_file(str(pkg / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in weights)  # merged, plain names
    assert "branches.image.encoder.blocks.0.attn.qkv.weight" in weights
    res = export_package(pkg, format="onnx", samples=8)
    assert res.report is not None and res.report.ok, res.report.to_dict()
    onnx_row = next(c for c in res.report.checks if c.runtime == "onnx")
    assert onnx_row.max_abs_diff is not None and onnx_row.max_abs_diff <= TOLERANCE
    _ = (file, state, np)


def test_lora_frozen_base_does_not_move(tmp_path) -> None:
    """The base weights of an adapted branch change only by the merged low-rank update."""
    _need("transformers", "peft")
    from medfuse.models.branches.pretrained import tiny_hf_model
    from medfuse.training.finetune import apply_finetune, merge_finetune

    spec = _spec(
        {"type": "hf", "model": str(tiny_hf_model(tmp_path / "vit"))},
        peft={"branches": ["x"], "r": 2},
    )
    model = build_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = apply_finetune(model, spec)
    assert rec is not None
    from medfuse.training.finetune import is_trainable

    trainable = [
        n
        for n, p in model.named_parameters()
        if is_trainable(spec, n) and n.startswith("branches.x.")
    ]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # as if trained: a non-zero B
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    merged = merge_finetune(model)
    after = merged.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    linear = {f"{n}.weight" for n, m in merged.named_modules() if isinstance(m, torch.nn.Linear)}
    assert changed and set(changed) <= linear  # only Linear weights, by the low-rank update
    assert all(k.startswith("branches.x.") for k in changed)
