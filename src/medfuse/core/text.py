"""Text as model input: the tokenizer (Hugging Face ``tokenizers``, no torch) stored in the
package's preprocessing, and the one encoding every entry point uses.

The tokenizer is either a word-level one built from the training texts (``train_tokenizer``:
``gru_text``), or a pretrained model's own (its ``tokenizer.json``: ``model_tokenizer``, the
``hf`` text branch), stored with ``token_offset: 1``.

A text becomes ``length`` values carried as float32 like every other modality, so that
normalisation, batching, ONNX inputs and the runtime need nothing special; the text branch casts
them back to integers. 0 always pads. With ``token_offset`` 0 (a trained word-level tokenizer)
the values are the ids themselves ([PAD] is 0, [UNK] 1); with ``token_offset`` 1 (a model's own
tokenizer, whose id 0 is a real token such as RoBERTa's ``<s>``) they are id + 1, the
tokenizer's special tokens ([CLS] ... [SEP]) included and kept within ``length``, and the branch
derives its attention mask from the 0s. An empty or absent text, or one with no token besides
the special ones, is a missing modality (all 0, mask 0), never a crash.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.errors import DataError, SpecError

PAD, UNK = "[PAD]", "[UNK]"


def _tokenizers() -> Any:
    try:
        # lazy: tokenizers (optional: its absence is handled here)
        import tokenizers
    except ImportError:
        raise DataError(
            "a text modality needs the tokenizers library (pip install 'medfuse[pretrained]')"
        ) from None
    return tokenizers


def train_tokenizer(texts: Iterable[str], vocab: int) -> str:
    """A word-level tokenizer fit on ``texts``: the ``vocab - 2`` most frequent words (ties by
    the word itself, so the same texts always give the same tokenizer; the package's ids are
    reproduced when its data is read again), lower-cased, accents stripped, punctuation split
    off (the ``tokenizers`` BERT normalizer and pre-tokenizer). Its JSON."""

    tk = _tokenizers()
    normalizer = tk.normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre = tk.pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for t in texts:
        if t:
            counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(str(t))))
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(int(vocab) - 2, 0)]
    table = {PAD: 0, UNK: 1, **{w: i + 2 for i, (w, _) in enumerate(top)}}
    tok = tk.Tokenizer(tk.models.WordLevel(vocab=table, unk_token=UNK))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    return str(tok.to_str())


@functools.lru_cache(maxsize=8)
def _load(tokenizer_json: str) -> Any:
    return _tokenizers().Tokenizer.from_str(tokenizer_json)


def vocab_size(tokenizer_json: str) -> int:
    return int(_load(tokenizer_json).get_vocab_size())


@functools.lru_cache(maxsize=8)
def _load_truncating(tokenizer_json: str, length: int) -> Any:
    """A model's own tokenizer, truncating to ``length`` tokens with its special tokens kept,
    padding nothing (its own settings in the file are replaced: the modality's length rules)."""
    tok = _tokenizers().Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(max_length=int(length))
    return tok


def encode(texts: Sequence[str], tokenizer_json: str, length: int, offset: int = 0) -> np.ndarray:
    """``(N, length)`` float32 values: token ids + ``offset``, padded with 0 (module doc)."""
    out = np.zeros((len(texts), int(length)), np.float32)
    if not texts:
        return out
    if offset == 0:  # a trained word-level tokenizer: no special tokens, [PAD] is 0
        for i, enc in enumerate(_load(tokenizer_json).encode_batch([str(t) for t in texts])):
            ids = enc.ids[: int(length)]
            out[i, : len(ids)] = ids
        return out
    tok = _load_truncating(tokenizer_json, int(length))
    for i, enc in enumerate(tok.encode_batch([str(t) for t in texts])):
        if all(enc.special_tokens_mask):  # nothing but [CLS] [SEP]: no text
            continue
        out[i, : len(enc.ids)] = np.asarray(enc.ids, np.float32) + offset
    return out


def unknown_value(tokenizer_json: str, offset: int = 0) -> int | None:
    """The value ``encode`` writes for the tokenizer's unknown token (its id + ``offset``);
    ``None`` for a tokenizer without one (byte-level BPE reads every text)."""
    tok = _load(tokenizer_json)
    name = getattr(tok.model, "unk_token", None)
    i = tok.token_to_id(name) if isinstance(name, str) else None
    return None if i is None else int(i) + int(offset)


def unknown_shares(ids: np.ndarray, tokenizer_json: str, offset: int = 0) -> np.ndarray:
    """Per encoded text (``encode``'s rows), the share of its tokens that are the unknown token:
    words outside the vocabulary (0 for an empty text or a tokenizer without one)."""
    ids = np.asarray(ids).reshape(len(ids), -1)
    unk = unknown_value(tokenizer_json, offset)
    if unk is None or not len(ids):
        return np.zeros(len(ids))
    n = (ids != 0).sum(axis=1)
    return np.asarray((ids == unk).sum(axis=1) / np.maximum(n, 1), np.float64)


def filled(ids: np.ndarray) -> np.ndarray:
    """Per encoded text, whether it fills every position the model reads: a longer text was cut
    there (``encode`` keeps the first ``length`` tokens)."""
    ids = np.asarray(ids).reshape(len(ids), -1)
    return ids[:, -1] != 0 if ids.shape[1] else np.zeros(len(ids), bool)


#: the file a Hugging Face model directory keeps its (fast) tokenizer in
TOKENIZER_FILE = "tokenizer.json"


def model_tokenizer(model: str, where: str = "branches") -> tuple[str, str]:
    """A pretrained model's own tokenizer: the JSON of ``tokenizer.json`` in ``model`` (a local
    model directory, or a hub id read from the local Hugging Face cache only), and where it was
    read. A missing file is a SpecError saying how to make or bring it."""
    local = Path(model).expanduser()
    if local.exists():
        path: Path | None = local / TOKENIZER_FILE if local.is_dir() else None
    else:
        path = None
        try:
            # lazy: huggingface_hub (optional), only for a hub id
            import huggingface_hub
        except ImportError:
            raise SpecError(
                where,
                f"{model!r} is not a local directory, and reading the hub cache needs "
                "huggingface_hub (pip install 'medfuse[pretrained]')",
            ) from None
        hit = huggingface_hub.try_to_load_from_cache(model, TOKENIZER_FILE)
        path = Path(hit) if isinstance(hit, str) else None
    if path is None or not path.is_file():
        raise SpecError(
            where,
            f"{model}: no {TOKENIZER_FILE} (the model's fast tokenizer, which medfuse stores in "
            "the package and applies without torch). Bring it with the model "
            f"(huggingface-cli download <id> --local-dir DIR), or write it from the model's "
            'slow tokenizer files (vocab.txt...) on any machine: python -c "from transformers '
            "import AutoTokenizer as T; T.from_pretrained('DIR').save_pretrained('DIR')\"",
        )
    text = path.read_text(encoding="utf-8")
    try:
        _load(text)
    except Exception as err:  # the tokenizers library's own parse error, reported as ours
        raise SpecError(where, f"{path}: not a tokenizers JSON file: {err}") from None
    return text, str(path)


def tokens(values: np.ndarray, tokenizer_json: str, offset: int = 0) -> list[str]:
    """The token strings of one encoded text (``encode``'s row), padding left out."""
    tok = _load(tokenizer_json)
    return [str(tok.id_to_token(int(v) - offset)) for v in np.asarray(values).ravel() if v != 0]


def is_tokenizer(stat: dict[str, Any]) -> bool:
    return isinstance(stat.get("tokenizer"), str)


def check_tokenizer(tokenizer_json: str) -> None:
    """A stored tokenizer must parse (a PackageError upstream names the modality)."""
    json.loads(tokenizer_json)
    _load(tokenizer_json)
