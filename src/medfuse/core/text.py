"""Text as model input: a word-level tokenizer built from the training texts (Hugging Face ``tokenizers``,
no torch), stored in the package's preprocessing, and the one encoding every entry point uses.

A text becomes ``length`` token ids (0 pads, 1 is an unknown word), carried as float32 like
every other modality so that normalisation, batching, ONNX inputs and the runtime need nothing
special; the text branch casts them back to integers. An empty or absent text is a missing
modality (mask 0), never a crash.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medfuse.core.errors import DataError

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


def encode(texts: Sequence[str], tokenizer_json: str, length: int) -> np.ndarray:
    """``(N, length)`` float32 token ids, truncated or padded with 0 (``[PAD]``)."""
    tok = _load(tokenizer_json)
    out = np.zeros((len(texts), int(length)), np.float32)
    if not texts:
        return out
    for i, enc in enumerate(tok.encode_batch([str(t) for t in texts])):
        ids = enc.ids[: int(length)]
        out[i, : len(ids)] = ids
    return out


def is_tokenizer(stat: dict[str, Any]) -> bool:
    return isinstance(stat.get("tokenizer"), str)


def check_tokenizer(tokenizer_json: str) -> None:
    """A stored tokenizer must parse (a PackageError upstream names the modality)."""
    json.loads(tokenizer_json)
    _load(tokenizer_json)
