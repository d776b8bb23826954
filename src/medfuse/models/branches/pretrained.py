"""Pretrained image branches that wrap model zoos: ``timm``, ``torchvision`` and ``hf``.

medfuse re-implements none of them: each branch asks its zoo for the encoder (features, no
classifier) and wraps it with the input adaptation the pretrained weights expect, *inside* the
module, so the package, ONNX export and the torch-free runtime apply it identically:

    (B, C, H, W) on [0, 1] -> grey to 3 channels (repeat) -> resize to the model's input size
    -> (x - mean) / std with the pretrained mean/std -> encoder -> (B, out_features)

The package's own normalisation statistics for such a modality are the identity (see
``RAW_INPUT``), so the only normalisation is the pretrained one.

Weights are read from local files only; nothing is downloaded. ``weights`` names a file or a
directory, or ``hub``: the local Hugging Face hub cache (``HF_HOME``) or, for torchvision, the
torch hub cache (``TORCH_HOME``). A missing file is a SpecError that says where to put it.

Every weight file read is recorded (sha256, origin, license when known) in
``branch.pretrained_record``; ``save_package`` writes these under ``pretrained`` in
``medfuse.json``. A package is rebuilt from that record without the weight files (its own
weights replace them): see :func:`from_records`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from medfuse.core.errors import SpecError
from medfuse.core.package import sha256_file
from medfuse.core.text import TOKENIZER_FILE, model_tokenizer
from medfuse.models import BRANCHES

#: branch types whose modality reaches them unnormalised ([0, 1] images): they normalise with
#: their pretrained mean/std themselves (``fit_preprocessing`` writes identity statistics)
RAW_INPUT = ("timm", "torchvision", "hf")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: while a package is loaded: its ``pretrained`` records by key; builders then build the
#: architecture only (no weight file is read; the package's weights are loaded afterwards)
_RECORDS: ContextVar[dict[str, dict[str, Any]] | None] = ContextVar("_RECORDS", default=None)


@contextlib.contextmanager
def from_records(records: dict[str, Any] | None) -> Iterator[None]:
    """Build pretrained branches from a package's ``pretrained`` records, reading no weights."""
    by_key = {r["key"]: r for r in (records or {}).values() if isinstance(r, dict) and "key" in r}
    token = _RECORDS.set(by_key)
    try:
        yield
    finally:
        _RECORDS.reset(token)


def _recorded(key: str) -> dict[str, Any] | None:
    records = _RECORDS.get()
    if records is None:
        return None
    return records.get(key, {})


def _need(module: str, branch: str) -> Any:
    """Import an optional zoo, or say which extra provides it."""

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise SpecError(
            "branches",
            f"the {branch!r} branch needs {module} (pip install 'medfuse[pretrained]'): {err}",
        ) from None


def _missing(branch: str, what: str, where: str) -> SpecError:
    other = "'model' to a local model directory" if branch == "hf" else "'weights' to a local file"
    return SpecError(
        "branches",
        f"{branch}: {what}: not on this machine, and medfuse never downloads weights. Put the "
        f"file(s) at {where} (copy them from a machine with network access; docs/pretrained.md), "
        f"or set the branch's {other}",
    )


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The Hugging Face hub in offline mode for the duration: a cache miss fails at once
    instead of trying the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants: Any = None
    with contextlib.suppress(Exception):
        # lazy: huggingface_hub, only when this runs
        import huggingface_hub.constants as hub_constants

        constants = hub_constants
    was = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = was
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


class PretrainedInput(nn.Module):
    """``(B, C, H, W)`` on [0, 1] -> what the pretrained encoder expects: 3 channels (a grey
    image repeated), ``size``, ``(x - mean) / std``."""

    def __init__(
        self,
        in_channels: int,
        in_size: tuple[int, int],
        size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise SpecError(
                "modalities",
                f"a pretrained image branch takes 1 (grey) or 3 (RGB) channels; got {in_channels}",
            )
        self.repeat = in_channels == 1
        self.resize = tuple(size) != tuple(in_size)
        self.size = (int(size[0]), int(size[1]))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat:
            x = x.repeat(1, 3, 1, 1)  # (B, 1, H, W) -> (B, 3, H, W)
        if self.resize:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return (x - mean) / std  # (B, 3, h, w)


class PretrainedBranch(nn.Module):
    """Input adaptation + a zoo encoder; ``forward`` maps ``(B, C, H, W)`` to ``(B, F)``."""

    def __init__(
        self, prep: PretrainedInput, encoder: nn.Module, record: dict[str, Any], kind: str
    ) -> None:
        super().__init__()
        self.prep = prep
        self.encoder = encoder
        self.kind = kind
        self.pretrained_record = record
        with torch.no_grad():
            was = encoder.training
            encoder.eval()
            probe = torch.zeros(1, 3, *prep.size)
            self.out_features = int(self._encode(probe).shape[-1])
            encoder.train(was)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "hf":
            out = self.encoder(pixel_values=x)
            hidden = out.last_hidden_state  # (B, tokens, D) or (B, D, h, w)
            if hidden.dim() == 4:
                return torch.as_tensor(hidden.mean(dim=(2, 3)))
            return torch.as_tensor(hidden.mean(dim=1))  # mean over tokens
        return torch.as_tensor(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._encode(self.prep(x))  # (B, C, H, W) -> (B, F)
        # a view (timm's class token, x[:, 0]) would be the output of an FSDP unit, whose
        # backward hook an in-place op downstream could drop: the features own their memory
        return out.clone() if out._base is not None else out


def _image(input_shape: tuple[int, ...], branch: str) -> tuple[int, tuple[int, int]]:
    if len(input_shape) != 3:
        raise SpecError(
            "branches", f"{branch} needs a 2D image modality (C, H, W); got {tuple(input_shape)}"
        )
    return int(input_shape[0]), (int(input_shape[1]), int(input_shape[2]))


def _weights_file(path: Path) -> Path:
    """A weight file, or the one a model directory holds."""
    if path.is_file():
        return path
    for name in (
        "model.safetensors",
        "pytorch_model.bin",
        "open_clip_model.safetensors",
        "model.pth",
    ):
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.glob("*") if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    if len(found) == 1:
        return found[0]
    raise SpecError(
        "branches",
        f"{path}: no weight file (model.safetensors, pytorch_model.bin, *.pth); found "
        f"{[p.name for p in path.iterdir()] if path.is_dir() else 'nothing'}",
    )


# ---- timm ----------------------------------------------------------------------------------


def _hub_file(repo: str, branch: str) -> Path:
    """A file of ``repo`` from the local Hugging Face hub cache, never the network."""
    hub = _need("huggingface_hub", branch)
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
        hit = hub.try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return Path(hit)
    cache = os.environ.get("HF_HUB_CACHE") or str(Path(hub.constants.HF_HUB_CACHE))
    return_where = f"{cache}/models--{repo.replace('/', '--')} (huggingface-cli download {repo})"
    raise _missing(branch, f"the hub weights {repo!r}", return_where)


@BRANCHES.register(
    "timm",
    example={
        "model": "vit_tiny_patch16_224",
        "model_args": {
            "img_size": 16,
            "patch_size": 8,
            "embed_dim": 16,
            "depth": 1,
            "num_heads": 2,
        },
    },
    requires=("timm",),
)
def timm_branch(
    *,
    input_shape: tuple[int, ...],
    model: str,
    weights: str | None = None,
    model_args: dict[str, Any] | None = None,
    input_size: list[int] | None = None,
) -> nn.Module:
    """Any ``timm.create_model`` name as a feature encoder (``num_classes=0``).

    ``weights``: a local file or directory (``model.safetensors``), ``hub`` (the local Hugging
    Face cache), or none (random init). ``model_args``: keywords of the timm model.
    ``input_size``: [H, W] the image is resized to (default: the model's fixed input size, else
    the modality's)."""
    timm = _need("timm", "timm")
    in_channels, in_size = _image(input_shape, "timm")
    args = dict(model_args or {})
    key = f"timm:{model}:{json.dumps(args, sort_keys=True)}"
    recorded = _recorded(key)
    try:
        enc = timm.create_model(model, pretrained=False, num_classes=0, **args)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        names = timm.list_models(f"*{model.split('_')[0]}*")[:8]
        raise SpecError("branches", f"timm: {err}. Similar: {', '.join(names)}") from None
    cfg = dict(enc.pretrained_cfg or {})
    record: dict[str, Any] = {"key": key, "type": "timm", "model": model}
    if recorded is None and weights is not None:
        if weights == "hub":
            repo = cfg.get("hf_hub_id")
            if not repo:
                raise SpecError(
                    "branches",
                    f"timm: {model!r} has no Hugging Face hub weights; set 'weights' to a file",
                )
            file = _hub_file(str(repo), "timm")
            origin = f"hf-hub:{repo}"
        else:
            p = Path(weights).expanduser()
            if not p.exists():
                raise _missing("timm", f"weights file {weights!r}", str(p))
            file = _weights_file(p)
            origin = f"file:{file.name}" + (
                f" (timm {cfg['hf_hub_id']})" if cfg.get("hf_hub_id") else ""
            )
        # custom_load says how timm reads the file: a PyTorch state (safetensors, .bin, .pth)
        # by its loader; original JAX .npz weights by the model's own reader. The registry
        # entry of some models asks for the latter, and timm before 1.0.31 kept that for a file
        custom = file.suffix.lower() == ".npz"
        if custom and not hasattr(enc, "load_pretrained"):
            raise SpecError(
                "branches",
                f"timm: {model!r} has no reader of original .npz weights ({file}; timm's ViT "
                "family has one); give its PyTorch weights: .safetensors, .bin or .pth",
            )
        overlay = {"file": str(file), "source": "", "url": "", "custom_load": custom}
        with _offline():  # the file named, never the hub
            enc = timm.create_model(
                model,
                pretrained=True,
                pretrained_cfg_overlay=overlay,
                num_classes=0,
                **args,
            )
        record["weights"] = {
            "sha256": sha256_file(file),
            "origin": origin,
            "license": cfg.get("license"),
        }
    elif recorded:
        record = dict(recorded)
    size = _timm_size(enc, cfg, in_size, input_size)
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    record["preprocess"] = {"channels": 3, "size": list(size), "mean": list(mean), "std": list(std)}
    return PretrainedBranch(
        PretrainedInput(in_channels, in_size, size, mean, std), enc, record, "timm"
    )


def _timm_size(
    enc: nn.Module, cfg: dict[str, Any], in_size: tuple[int, int], asked: list[int] | None
) -> tuple[int, int]:
    if asked:
        return (int(asked[0]), int(asked[-1]))
    patch = getattr(enc, "patch_embed", None)
    fixed = getattr(patch, "img_size", None)
    if fixed is not None and not getattr(patch, "dynamic_img_size", False):
        return (int(fixed[0]), int(fixed[1]))
    if cfg.get("fixed_input_size") and cfg.get("input_size"):
        return (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    return in_size


# ---- torchvision ---------------------------------------------------------------------------


@BRANCHES.register(
    "torchvision",
    example={"model": "mobilenet_v3_small", "model_args": {"width_mult": 0.1}},
    requires=("torchvision",),
)
def torchvision_branch(
    *,
    input_shape: tuple[int, ...],
    model: str,
    weights: str | None = None,
    weights_file: str | None = None,
    model_args: dict[str, Any] | None = None,
    input_size: list[int] | None = None,
) -> nn.Module:
    """A torchvision classification builder (``torchvision.models.get_model``) without its
    classifier. ``weights``: its weight enum's name (``DEFAULT``, ``IMAGENET1K_V1``): mean, std
    and crop size come from it, and its file from ``weights_file`` or the torch hub cache."""
    _need("torchvision", "torchvision")
    # lazy: torchvision, only when this runs
    from torchvision import models as tvm

    in_channels, in_size = _image(input_shape, "torchvision")
    args = dict(model_args or {})
    key = f"torchvision:{model}:{weights}:{json.dumps(args, sort_keys=True)}"
    recorded = _recorded(key)
    try:
        enc = tvm.get_model(model, weights=None, **args)
    except ValueError as err:
        raise SpecError("branches", f"torchvision: {err}") from None
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, in_size
    record: dict[str, Any] = {"key": key, "type": "torchvision", "model": model}
    if weights is not None:
        try:
            enum = tvm.get_model_weights(model)
            w = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except (KeyError, ValueError):
            choices = [e.name for e in tvm.get_model_weights(model)] + ["DEFAULT"]
            raise SpecError(
                "branches", f"torchvision: {model!r} has no weights {weights!r}; allowed: {choices}"
            ) from None
        t = w.transforms()
        mean, std = tuple(t.mean), tuple(t.std)
        size = (int(t.crop_size[0]), int(t.crop_size[-1]))
        if recorded is None:
            file = (
                Path(weights_file).expanduser()
                if weights_file
                else Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
            )
            if not file.is_file():
                raise _missing("torchvision", f"{model} {w.name} ({Path(w.url).name})", str(file))
            state = _load_state(file)
            enc.load_state_dict(state)
            record["weights"] = {
                "sha256": sha256_file(file),
                "origin": f"torchvision {w} ({w.url})",
                "license": "BSD-3-Clause (torchvision; check the dataset's terms)",
            }
        elif recorded:
            record = dict(recorded)
    if input_size:
        size = (int(input_size[0]), int(input_size[-1]))
    elif weights is None:
        size = in_size
    _strip_classifier(enc)
    record["preprocess"] = {"channels": 3, "size": list(size), "mean": list(mean), "std": list(std)}
    return PretrainedBranch(
        PretrainedInput(in_channels, in_size, size, mean, std), enc, record, "torchvision"
    )


def _load_state(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        # lazy: safetensors (torch), only to read or write weights
        from safetensors.torch import load_file

        return load_file(str(file))
    state: dict[str, torch.Tensor] = torch.load(str(file), map_location="cpu", weights_only=True)
    return state  # weights_only: never a pickle's code


def _strip_classifier(enc: nn.Module) -> None:
    for name in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(enc, name, None), nn.Module):
            setattr(enc, name, nn.Identity())
            return


# ---- Hugging Face --------------------------------------------------------------------------


def _tiny_dir(key: str, prefix: str) -> tuple[Path, bool]:
    """This process's folder for the tiny model ``key``, and whether it is already written."""
    cached = _TINY.get(key)
    if cached is not None and (cached / "config.json").is_file():
        return cached, True
    _TINY[key] = Path(tempfile.mkdtemp(prefix=prefix))
    return _TINY[key], False


def tiny_hf_model(folder: str | Path | None = None) -> Path:
    """A tiny random ViT saved as a Hugging Face model directory (config.json, model.safetensors,
    preprocessor_config.json): what the registry's example and the tests load through the same
    path a downloaded model takes. Written once per process when ``folder`` is None."""

    transformers = _need("transformers", "hf")
    if folder is None:
        folder, written = _tiny_dir("hf", "medfuse-tiny-vit-")
        if written:
            return folder
    folder = Path(folder)
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        add_pooling_layer=False,
    )
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "size": {"height": 16, "width": 16},
            }
        )
    )
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\nA tiny random ViT.\n")
    return folder


_TINY: dict[str, Path] = {}

#: the tiny text model's words (a WordPiece vocabulary: whole words and ``##`` pieces)
TINY_WORDS = (
    "fever",
    "cough",
    "pain",
    "chest",
    "normal",
    "stable",
    "worse",
    "improved",
    "acute",
    "chronic",
    "no",
    "and",
    "the",
    "with",
    "of",
    "patient",
    "denies",
    "reports",
    "mild",
    "severe",
    "##s",
    "##ing",
    "##ed",
    "##ly",
)


def tiny_hf_text_model(
    folder: str | Path | None = None,
    *,
    words: Sequence[str] = TINY_WORDS,
    hidden: int = 16,
    layers: int = 1,
) -> Path:
    """A tiny random BERT saved as a Hugging Face model directory (config.json,
    model.safetensors, tokenizer.json: a WordPiece fast tokenizer over ``words`` with [CLS] ...
    [SEP], built with ``tokenizers``): what the registry's example, the tests and
    benchmarks/text_fusion.py load through the same path a downloaded model takes. Written once
    per process when ``folder`` is None."""

    transformers = _need("transformers", "hf")
    tk = _need("tokenizers", "hf")
    if folder is None:
        folder, written = _tiny_dir("hf_text", "medfuse-tiny-bert-")
        if written:
            return folder
    folder = Path(folder)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*specials, *words, ",", "."]))}
    tok = tk.Tokenizer(tk.models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = tk.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    tok.post_processor = tk.processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = tk.decoders.WordPiece()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / TOKENIZER_FILE))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\nA tiny random BERT.\n")
    return folder


@BRANCHES.register(
    "hf",
    example=lambda: {"model": str(tiny_hf_model())},
    variants={"text": lambda: {"model": str(tiny_hf_text_model())}},
    requires=("transformers",),
)
def hf_branch(
    *,
    input_shape: tuple[int, ...],
    model: str,
    input_size: list[int] | None = None,
    pool: Literal["mean", "cls"] = "mean",
) -> nn.Module:
    """A Hugging Face ``AutoModel`` encoder of images, or of text with its own tokenizer.

    An image model (ViT, DeiT, ConvNeXt, ...) on an image modality, mean-pooled, or a text
    model (BERT-style) on a text modality, pooled by ``pool`` (``mean``: over the attention
    mask; ``cls``: the first token's state; ``pool`` applies to text only). ``model``: a local
    directory (``config.json`` + ``model.safetensors``; a text model also ``tokenizer.json``)
    or a hub id read from the local hub cache only. Image mean/std/size from its
    ``preprocessor_config.json``; text: its own tokenizer (``medfuse.core.text``)."""
    transformers = _need("transformers", "hf")
    transformers.logging.set_verbosity_error()  # no load report on stdout
    key = f"hf:{model}"
    recorded = _recorded(key)
    text = len(input_shape) == 1
    if recorded is not None:  # a package: the architecture from its record, its own weights
        if not recorded.get("config"):
            raise SpecError("branches", f"hf: the package records no config for {model!r}")
        record = dict(recorded)
        cfg_d = dict(recorded["config"])
        config = transformers.AutoConfig.for_model(cfg_d.pop("model_type"), **cfg_d)
        enc = transformers.AutoModel.from_config(config, **_attention(text))
        folder = None
    else:
        enc, record, folder = _hf_load(transformers, model, text)
    takes = getattr(enc, "main_input_name", "pixel_values")
    if text != (takes == "input_ids"):
        raise SpecError(
            "branches",
            f"hf: {model!r} is a{' text' if takes == 'input_ids' else 'n image'} model "
            f"(it takes {takes}); the modality is a{' text' if text else 'n image'} one "
            f"(shape {tuple(input_shape)})",
        )
    if text:
        return _hf_text(enc, record, folder, int(input_shape[0]), pool, model)
    if pool != "mean":
        raise SpecError(
            "branches",
            f"hf: pool {pool!r} applies to text models; {model!r} is an image model, "
            "mean-pooled over its tokens",
        )
    in_channels, in_size = _image(input_shape, "hf")
    prep = recorded["preprocess"] if recorded is not None else _hf_preprocess(folder, enc.config)
    size = tuple(int(v) for v in (input_size or prep["size"]))
    record["preprocess"] = {"channels": 3, **prep, "size": list(size)}
    pi = PretrainedInput(
        in_channels, in_size, (size[0], size[-1]), tuple(prep["mean"]), tuple(prep["std"])
    )
    return PretrainedBranch(pi, enc, record, "hf")


def _attention(text: bool) -> dict[str, Any]:
    """Text encoders run eager attention: a fully padded row (a missing text) stays finite and
    the ONNX graph has no fused attention kernel to disagree with PyTorch."""
    return {"attn_implementation": "eager"} if text else {}


def _hf_load(transformers: Any, model: str, text: bool) -> tuple[nn.Module, dict[str, Any], Path]:
    """An ``AutoModel`` from a local directory or the local hub cache (never the network), its
    folder, and its record: weights digest, origin, license, config."""
    local = Path(model).expanduser()
    try:
        with _offline():
            enc = transformers.AutoModel.from_pretrained(
                str(local) if local.exists() else model, local_files_only=True, **_attention(text)
            )
    except OSError as err:
        if local.exists():
            raise SpecError("branches", f"hf: cannot read {local}: {err}") from None
        hub = _need("huggingface_hub", "hf")
        cache = Path(hub.constants.HF_HUB_CACHE)
        raise _missing(
            "hf",
            f"{model!r}",
            f"{cache}/models--{model.replace('/', '--')} (huggingface-cli download {model}) "
            "or a local directory named in 'model'",
        ) from None
    folder = local if local.exists() else None
    if folder is None:
        hub = _need("huggingface_hub", "hf")
        with _offline():
            folder = Path(hub.snapshot_download(model, local_files_only=True))
    files = sorted(
        p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()
    )
    digest = hashlib.sha256()
    for p in files:
        digest.update(sha256_file(p).encode())
    record: dict[str, Any] = {"key": f"hf:{model}", "type": "hf", "model": model}
    record["weights"] = {
        "sha256": sha256_file(files[0]) if len(files) == 1 else digest.hexdigest(),
        "files": [p.name for p in files],
        "origin": f"file:{folder.name}" if local.exists() else f"hf-hub:{model}",
        "license": _card_license(folder / "README.md"),
    }
    record["config"] = enc.config.to_diff_dict() | {"model_type": enc.config.model_type}
    return enc, record, folder


class HFTextBranch(nn.Module):
    """``(B, L)`` values (token id + 1, 0 pads: ``medfuse.core.text``) -> the encoder with the
    attention mask derived from the 0s -> pooled ``(B, hidden)``. Deriving the mask inside the
    model keeps one float input per modality (ONNX, the runtime and HTTP need nothing else)."""

    def __init__(self, encoder: nn.Module, record: dict[str, Any], pad_id: int, pool: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pretrained_record = record
        self.pad_id = int(pad_id)
        config: Any = encoder.config
        self.vocab_size = int(config.vocab_size)
        self.pool = pool
        self.out_features = int(config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = x.round().long()  # (B, L)
        keep = code > 0  # (B, L): a token (padding is 0)
        ids = torch.where(keep, code - 1, self.pad_id).clamp(0, self.vocab_size - 1)
        # the first position is always attended: a row without tokens (a missing text) then
        # attends to one padding token instead of none (finite; its features are masked anyway)
        attend = torch.cat([torch.ones_like(keep[:, :1]), keep[:, 1:]], dim=1).long()
        hidden = self.encoder(input_ids=ids, attention_mask=attend).last_hidden_state
        if self.pool == "cls":
            return torch.as_tensor(hidden[:, 0])  # (B, H): the [CLS] token
        w = keep.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return torch.as_tensor((hidden * w).sum(1) / w.sum(1).clamp_min(1.0))  # (B, H)


def _hf_text(
    enc: nn.Module, record: dict[str, Any], folder: Path | None, length: int, pool: str, model: str
) -> HFTextBranch:
    """The text branch of an ``hf`` model; its tokenizer's digest goes to the record (the
    tokenizer itself is the package's preprocessing: ``medfuse.core.text.model_tokenizer``)."""
    limit = getattr(enc.config, "max_position_embeddings", None)
    if limit is not None and length > int(limit):
        raise SpecError(
            "modalities",
            f"hf: {model!r} reads at most {limit} tokens per text; the text modality's length "
            f"is {length}: set it to {limit} or less",
        )
    if folder is not None:
        tok, path = model_tokenizer(str(folder))
        record["tokenizer"] = {
            "file": TOKENIZER_FILE,
            "sha256": hashlib.sha256(tok.encode("utf-8")).hexdigest(),
            "read_from": path,
        }
    record["preprocess"] = {"tokens": length, "pool": pool, "token_offset": 1}
    pad = getattr(enc.config, "pad_token_id", None)
    return HFTextBranch(enc, record, int(pad) if pad is not None else 0, pool)


def _hf_preprocess(folder: Path | None, config: Any) -> dict[str, Any]:
    p = folder / "preprocessor_config.json" if folder is not None else None
    d = json.loads(p.read_text()) if p is not None and p.is_file() else {}
    side = getattr(config, "image_size", 224)
    side = side if isinstance(side, int) else int(side[0])
    size: Any = d.get("size") or {}
    if isinstance(size, dict):
        hw = [
            int(size.get("height") or size.get("shortest_edge") or side),
            int(size.get("width") or size.get("shortest_edge") or side),
        ]
    else:
        hw = [int(size), int(size)]
    return {
        "size": hw,
        "mean": [float(v) for v in d.get("image_mean", IMAGENET_MEAN)],
        "std": [float(v) for v in d.get("image_std", IMAGENET_STD)],
    }


def _card_license(card: Path) -> str | None:
    """The ``license:`` of a model card's YAML header, when there is one."""
    if not card.is_file():
        return None
    for line in card.read_text(errors="replace").splitlines()[:40]:
        if line.strip().startswith("license:"):
            return line.split(":", 1)[1].strip() or None
    return None
