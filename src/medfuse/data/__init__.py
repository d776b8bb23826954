"""Datasets (name -> loader) and the in-memory split every loader returns.

Every source goes through ``load_data``: the binary label order is made [negative, positive]
(``task.positive``, or the class a built-in source declares), the bundle is validated
(``medfuse.data.validate``) and fingerprinted, once, whatever the source.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import DataError, PackageError, SpecError, did_you_mean
from medfuse.core.package import read_meta
from medfuse.core.paths import default_data_root as default_data_root
from medfuse.core.paths import resolve_data_root as resolve_data_root
from medfuse.core.readers.base import same_scale, scale_refusal
from medfuse.core.registry import Registry
from medfuse.core.spec import ModalitySpec
from medfuse.core.text import encode, filled, model_tokenizer, train_tokenizer
from medfuse.data.validate import (
    compare_fingerprints,
    fingerprint,
    note_share,
    validate_bundle,
)

DATASETS: Registry = Registry("data source")
log = logging.getLogger("medfuse.data")


@dataclass
class Split:
    """One split held in memory. ``arrays[m]``: raw values ``(N, *shape_m)`` (zeros where absent,
    NaN for a missing tabular value); ``masks[m]``: ``(N,)`` 1 present / 0 missing; ``y``: targets
    (binary ``(N,)`` float, multiclass ``(N,)`` int, multilabel ``(N, K)`` float); ``meta``: one row
    per sample (ids, ``patient_id``, subgroup columns, ...)."""

    arrays: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    y: np.ndarray
    meta: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Split:
        meta = self.meta.iloc[idx].reset_index(drop=True) if len(self.meta) else self.meta
        return Split(
            {k: v[idx] for k, v in self.arrays.items()},
            {k: v[idx] for k, v in self.masks.items()},
            self.y[idx],
            meta,
        )


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split | None
    modalities: dict[str, ModalitySpec]
    labels: list[str]
    task: str
    info: dict[str, Any] = field(default_factory=dict)
    #: binary: the positive class the source declares (built-in sets; a manifest's 0/1 labels:
    #: "1"); None leaves it to ``task.positive``
    positive: str | None = None

    def split(self, name: str) -> Split:
        s = getattr(self, name, None)
        if s is None:
            raise SpecError("", f"this data source has no {name!r} split")
        return s


def find_in_root(root: Path, folder: str, relative: str) -> Path | None:
    """``root/folder/relative`` or, when root is the dataset's own folder, ``root/relative``."""
    for cand in (root / folder / relative, root / relative):
        if cand.exists():
            return cand
    return None


def parse_source(source: str) -> tuple[str, str]:
    kind, _, arg = source.partition(":")
    return kind.strip(), arg.strip()


def load_data(
    source: str,
    options: dict[str, Any] | None = None,
    *,
    data_root: str | Path | None = None,
    modalities: dict[str, ModalitySpec] | None = None,
    task: str | None = None,
    on_bad_row: str = "fail",
    seed: int = 0,
    labels: list[str] | None = None,
    positive: str | None = None,
    stream: bool | str = False,
    workers: int = 2,
    preprocessing: dict[str, Any] | None = None,
) -> DataBundle:
    """Load a data source by name (``medmnist:breastmnist``, ``manifest:file.csv``, ``synthetic``).

    ``labels``: the class names the model knows (a spec's or a package's), in its order: a label
    outside them is refused. ``positive``: the positive class of a binary task. ``stream``
    (``data.stream``: true, false or ``auto``): a manifest's files are decoded once into a cache
    and streamed (``medfuse.data.stream``; ``workers`` processes decode them) instead of held in
    memory. ``preprocessing``: an existing package's (``medfuse.json``): its text modalities are
    encoded with its stored tokenizers and a manifest's categorical columns with its stored
    category codes, never refit on this data (refitting would silently hand the model other
    ids than it was trained on). The returned bundle is validated (``validate_bundle``) and
    carries its ``info["fingerprint"]``."""
    # lazy: torch (DataLoader workers), which the in-memory sources do not need
    from medfuse.data.stream import check_stream_source, stream_pass

    kind, arg = parse_source(source)
    check_stream_source(kind, stream)
    loader = DATASETS.get(kind, path="data.source")
    options = dict(options or {})
    if labels and kind == "manifest" and "labels" not in options:
        options["labels"] = list(labels)  # rows are encoded in the model's order
    extra: dict[str, Any] = {"stream": stream} if kind == "manifest" and stream is not False else {}
    stored = preprocessing or {}
    cats = {m: dict(st["categories"]) for m, st in stored.items() if st.get("categories")}
    if kind == "manifest" and cats:
        extra["categories"] = cats  # the package's codes, not codes refit on this file
    bundle = loader(
        arg,
        options,
        root=resolve_data_root(data_root),
        modalities=modalities or {},
        task=task,
        on_bad_row=on_bad_row,
        seed=seed,
        **extra,
    )
    bundle = keep_modalities(bundle, list(modalities or {}))
    tokenize_text(bundle, stored)
    if labels and bundle.task != "multilabel":
        _known_labels(bundle, list(labels), source)
    order_binary(bundle, positive)
    if any(is_lazy(x) for x in bundle.train.arrays.values()):
        stream_pass(bundle, on_bad_row=on_bad_row, workers=workers)
    validate_bundle(bundle)
    bundle.info["fingerprint"] = fingerprint(bundle)
    return bundle


def tokenize_text(
    bundle: DataBundle, stored: dict[str, dict[str, Any]] | None = None
) -> DataBundle:
    """Text modalities (texts as read, "" when absent) -> token ids. The tokenizer is the one
    ``stored`` (a package's preprocessing, or an ``hf`` branch's own) holds for the modality,
    with its ``token_offset``; without one, one trained on the training split's texts only. It
    goes to ``info["tokenizers"]`` (a non-zero offset to ``info["token_offsets"]``; the package
    stores both with the preprocessing). A text without any token is a missing modality."""
    for m, ms in bundle.modalities.items():
        if ms.kind != "text" or bundle.train.arrays[m].dtype != object:
            continue
        train = bundle.train
        tok = (stored or {}).get(m, {}).get("tokenizer")
        offset = int((stored or {}).get(m, {}).get("token_offset", 0)) if tok else 0
        if not tok:
            texts = [str(t) for t, k in zip(train.arrays[m], train.masks[m]) if k > 0 and t]
            tok = train_tokenizer(texts, int(ms.vocab or 2000))
        for split in (bundle.train, bundle.val, bundle.test):
            if split is None:
                continue
            raw = [
                "" if k <= 0 or t is None else str(t)
                for t, k in zip(split.arrays[m], split.masks[m])
            ]
            ids = encode(raw, tok, int(ms.length or 0), offset)
            split.arrays[m] = ids
            split.masks[m] = (np.asarray(split.masks[m]) * (ids != 0).any(axis=1)).astype(
                np.float32
            )
            if split is train:
                _note_cut_texts(m, ids[split.masks[m] > 0], int(ms.length or 0))
        bundle.info.setdefault("tokenizers", {})[m] = tok
        if offset:
            bundle.info.setdefault("token_offsets", {})[m] = offset
    return bundle


def _note_cut_texts(m: str, ids: np.ndarray, length: int) -> None:
    """Say how many training texts fill all ``length`` tokens (a longer one is cut there): a
    warning from a tenth of them on, when reading more may change what the model learns."""
    cut = int(filled(ids).sum())
    if not cut:
        return
    note_share(
        cut,
        len(ids),
        "text modality %r: %d of %d training texts fill all %d tokens the model reads; longer "
        "ones are cut there (modalities.%s.length reads more)",
        m,
        cut,
        len(ids),
        length,
        m,
    )


def training_reading(spec: Any) -> dict[str, dict[str, Any]]:
    """The tokenizers a training run must not fit itself: an ``hf`` branch's own
    (``own_tokenizers``) and that of a text branch starting from another package's weights
    (``init_tokenizers``); the two must agree."""
    own, init = own_tokenizers(spec), init_tokenizers(spec)
    for m in own.keys() & init.keys():
        if own[m]["tokenizer"] != init[m]["tokenizer"]:
            raise SpecError(
                f"branches.{m}",
                f"the hf model's tokenizer differs from the one {spec.train.init.package} read "
                f"{m!r} with (train.init): start from a package trained on the same model",
            )
    return own | init


def init_tokenizers(spec: Any) -> dict[str, dict[str, Any]]:
    """``train.init``: a text modality whose branch starts from another package's weights is
    read with that package's tokenizer (its embedding rows are that tokenizer's ids, not those
    of one fit on this data): ``{m: {tokenizer, token_offset}}``."""
    init = spec.train.init
    if init is None:
        return {}
    if not any(ms.kind == "text" for ms in spec.modalities.values()):
        return {}
    try:  # its checksums are verified when its weights are copied (medfuse.training.init)
        stats = read_meta(init.package, verify=False).get("preprocessing") or {}
    except (PackageError, OSError) as err:
        raise SpecError("train.init.package", f"cannot load {init.package}: {err}") from None
    out: dict[str, dict[str, Any]] = {}
    for src, dst in init.modules.items():
        for m, ms in spec.modalities.items():
            here = f"branches.{m}"
            if ms.kind != "text" or not (
                dst == "branches" or dst == here or dst.startswith(here + ".")
            ):
                continue
            there = m if dst == "branches" else src.split(".")[1] if src.count(".") else ""
            st = stats.get(there) or {}
            if st.get("tokenizer"):
                out[m] = {k: st[k] for k in ("tokenizer", "token_offset") if k in st}
    return out


def own_tokenizers(spec: Any) -> dict[str, dict[str, Any]]:
    """The text modalities whose branch brings its own tokenizer (``hf``: the model's
    ``tokenizer.json``), as stored preprocessing: ``{m: {tokenizer, token_offset: 1}}``."""
    out: dict[str, dict[str, Any]] = {}
    for m, b in spec.branches.items():
        ms = spec.modalities.get(m)
        if b.type == "hf" and ms is not None and ms.kind == "text" and b.params.get("model"):
            tok, _ = model_tokenizer(str(b.params["model"]), where=f"branches.{m}.model")
            out[m] = {"tokenizer": tok, "token_offset": 1}
    return out


def is_lazy(x: Any) -> bool:
    """A streamed modality's column (``medfuse.data.stream.LazyColumn``), not an array."""
    return type(x).__name__ == "LazyColumn"


def _known_labels(bundle: DataBundle, labels: list[str], source: str) -> None:
    """The data's classes must be the model's; the same classes in another order are re-coded."""
    if bundle.labels == labels:
        return
    unseen = [x for x in bundle.labels if x not in labels]
    if unseen or len(bundle.labels) > len(labels):
        raise DataError(
            f"{source}: labels {unseen or bundle.labels} are not among the model's {labels}; "
            "a model cannot be evaluated on classes it does not know"
        )
    code = np.array([labels.index(x) for x in bundle.labels])
    for s in (bundle.train, bundle.val, bundle.test):
        if s is not None:
            s.y = code[s.y.astype(np.int64)].astype(s.y.dtype)
    bundle.labels = list(labels)
    if bundle.positive is not None and bundle.task == "binary":
        bundle.positive = labels[1]


#: words YAML 1.1 or 1.2 reads as a boolean or null, not as the text (any case)
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"}


def _yaml_word(v: str) -> str:
    """``v`` as YAML reads it back as that text: quoted if it would read as a number, a
    boolean or null, or holds characters outside plain words."""
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ ./+-]*", v) and v.lower() not in _YAML_WORDS
    return v if plain else json.dumps(v)


def order_binary(bundle: DataBundle, positive: str | None) -> None:
    """Make a binary bundle's labels ``[negative, positive]`` (targets flipped if needed), so
    that the model predicts P(positive). The positive class is ``positive`` (the spec's
    ``task.positive``), else what the source declares; text labels with neither are refused."""
    if bundle.task != "binary":
        if positive is not None:
            raise SpecError(
                "task.positive", f"applies to binary tasks only; the data is {bundle.task!r}"
            )
        return
    want = positive if positive is not None else bundle.positive
    if want is None:
        a, b = bundle.labels
        raise SpecError(
            "task.positive",
            f"the binary labels are {a!r} and {b!r}: say which one is positive (the class "
            "whose probability the model predicts; sensitivity, PPV and the threshold are "
            "about it). Add to the spec one of:\n"
            f"  task: {{type: binary, positive: {_yaml_word(b)}}}\n"
            f"  task: {{type: binary, positive: {_yaml_word(a)}}}\n"
            f"(or on the command line: --set {shlex.quote(f'task.positive={_yaml_word(b)}')})",
        )
    if want not in bundle.labels:
        raise SpecError(
            "task.positive",
            f"{want!r} is not one of the data's labels {bundle.labels}"
            f"{did_you_mean(want, bundle.labels)}",
        )
    if want == bundle.labels[0]:
        for s in (bundle.train, bundle.val, bundle.test):
            if s is not None:
                s.y = (1 - s.y).astype(s.y.dtype)
        bundle.labels = [bundle.labels[1], bundle.labels[0]]
    bundle.positive = want
    log.info("labels: %s; positive class: %r", bundle.labels, want)


def keep_modalities(bundle: DataBundle, names: list[str]) -> DataBundle:
    """Drop the modalities a spec does not use (e.g. an image-only model on synthetic data).

    Only when the source provides every name; otherwise the bundle is returned unchanged so that
    ``complete_spec`` can say which modality is missing.
    """
    have = set(bundle.modalities)
    if not names or set(names) == have or not set(names) <= have:
        return bundle
    for s in (bundle.train, bundle.val, bundle.test):
        if s is not None:
            s.arrays = {m: s.arrays[m] for m in names}
            s.masks = {m: s.masks[m] for m in names}
    bundle.modalities = {m: bundle.modalities[m] for m in names}
    return bundle


def load_spec_data(
    spec: Any,
    data_dir: str | Path | None = None,
    *,
    data: str | Path | None = None,
    recorded: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> DataBundle:
    """A (package's) spec's own data source, loaded as training loaded it.

    ``data``: a manifest CSV to read instead of the spec's source (the data moved, or other data
    laid out the same way). ``recorded``: the package's ``data`` record; a manifest that is not
    where the spec says is then looked for where the package recorded it (its absolute path, and
    its path relative to the data root under ``data_dir``), and the loaded data is compared with
    the recorded fingerprint (``info["fingerprint_check"]``)."""
    source = spec.data.source
    kind, arg = parse_source(source)
    options = dict(spec.data.options)
    if data is not None:
        if kind != "manifest":  # another source's options do not describe a CSV
            options = {}
        # its relative paths resolve against its own folder (--data's help), never the training
        # table's base_dir (medfuse.fit): a copy of the data at another site with the same file
        # names was read from the training site's files
        options.pop("base_dir", None)
        source = f"manifest:{Path(data).expanduser()}"
    elif kind == "manifest" and recorded:
        source = f"manifest:{locate_manifest(arg, recorded.get('manifest') or {}, data_dir)}"
    bundle = load_data(
        source,
        options,
        data_root=data_dir,
        modalities=spec.modalities,
        task=spec.task.type,
        on_bad_row=spec.data.on_bad_row,
        seed=spec.train.seed,
        labels=spec.task.labels,
        positive=spec.task.positive_class,
        stream=spec.data.stream if kind == "manifest" or data is not None else False,
        workers=spec.data.workers,
        preprocessing=preprocessing if preprocessing is not None else training_reading(spec),
    )
    where = str(bundle.info.get("file", source))
    check_scales(recorded, bundle.info.get("scales") or {}, where, bundle.modalities)
    if recorded and recorded.get("fingerprint"):
        bundle.info["fingerprint_check"] = compare_fingerprints(
            recorded["fingerprint"], bundle.info["fingerprint"]
        )
    return bundle


def check_scales(
    recorded: dict[str, Any] | None,
    found: dict[str, str],
    where: str,
    modalities: dict[str, ModalitySpec],
) -> None:
    """Data read for an existing package: each file modality's files must come on the scale the
    package recorded for its training files (``data.scales``: an image's without a window, a
    signal's rate and leads without ``rate`` / ``leads``; ``file_scale``), else evaluation,
    calibration and compression would score a model on values it was never given: refused
    (:func:`~medfuse.core.readers.base.scale_refusal`)."""
    for m, was in ((recorded or {}).get("scales") or {}).items():
        now = found.get(m)
        if now and not same_scale(was, now):
            raise DataError(scale_refusal(where, m, was, now, modalities[m].kind))


def manifest_record(path: Path, as_written: str, root: Path) -> dict[str, Any]:
    """Where a manifest was: as written in the spec, absolute, and relative to the data root."""
    full = path.expanduser().resolve()
    rec: dict[str, Any] = {"as_written": as_written, "absolute": str(full), "root_relative": None}
    with contextlib.suppress(ValueError):
        rec["root_relative"] = full.relative_to(root.expanduser().resolve()).as_posix()
    return rec


def locate_manifest(arg: str, rec: dict[str, Any], data_dir: str | Path | None) -> str:
    """The manifest of a package: as written (from here, or under the data root), then where it
    was recorded; the spec's path when none exists (its loader then says it is missing)."""
    root = resolve_data_root(data_dir)
    cands = [Path(arg).expanduser(), root / arg]
    if rec.get("root_relative"):
        cands.insert(0 if data_dir else 2, root / rec["root_relative"])
    if rec.get("absolute"):
        cands.append(Path(rec["absolute"]))
    for c in cands:
        if c.is_file():
            return str(c)
    raise DataError(
        f"the manifest this package was trained on is not here: looked for "
        f"{', '.join(dict.fromkeys(str(c) for c in cands))}. Point at the data with --data FILE "
        "(a CSV laid out like the training one; relative file paths resolve against its folder) "
        "or --data-dir DIR (the data root the manifest was under)"
    )


from medfuse.data import manifest, medmnist, mitbih, ptbxl, synthetic  # noqa: E402,F401
