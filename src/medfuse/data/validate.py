"""Every data source checked once, before anything trains on (or is evaluated on) it, and a
fingerprint of what was loaded.

``validate_bundle`` refuses what would train silently on garbage: arrays and labels of different
lengths, non-numeric arrays, labels outside the task's classes (a -1 in a binary set), NaN or
infinite image/signal values, infinite tabular cells (NaN is a missing value there), a modality
whose training values are all the same. Errors name the split, the array or column and the first
rows. ``fingerprint`` summarises each split (rows, label counts, a hash of ids, labels, presence
and file paths, and one of the values read); ``compare_fingerprints`` says what changed.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from medfuse.core.errors import DataError
from medfuse.core.inputs import PADDED_SHARE, signal_fill
from medfuse.core.preprocess import range_subsample

log = logging.getLogger("medfuse.data")

SPLITS = ("train", "val", "test")


def _first(rows: np.ndarray, limit: int = 5) -> str:
    """``rows 3, 17 (of 4)``: positions within the split (0-based), the first few."""
    rows = np.asarray(rows).ravel()
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return f"row{'s' if len(rows) > 1 else ''} {shown}" + (
        f" and {len(rows) - limit} more" if len(rows) > limit else ""
    )


def _where(split: str, meta: Any, rows: np.ndarray) -> str:
    """Rows of a split, with the manifest's line numbers or ids when the source records them."""
    text = f"{split} {_first(rows)}"
    if meta is not None and len(meta):
        col = "row" if "row" in meta else ("id" if "id" in meta else None)
        if col is not None:
            vals = [str(v) for v in meta[col].to_numpy()[np.asarray(rows)[:5]]]
            text += f" ({'manifest line' if col == 'row' else 'id'} {', '.join(vals)})"
    return text


def validate_bundle(bundle: Any) -> None:
    """Check every split of a loaded ``DataBundle``; raises DataError naming what and where.
    An empty train or val split is refused unless the source allowed it
    (``info["empty_splits"]``: data read for an existing package's evaluation, which needs
    neither); the constant-input checks, about training values, are then skipped with no
    training rows."""
    task, k = bundle.task, len(bundle.labels)
    may_be_empty = set(bundle.info.get("empty_splits") or ())
    for name in SPLITS:
        split = getattr(bundle, name, None)
        if split is None:
            continue
        if name in ("train", "val") and len(split.y) == 0 and name not in may_be_empty:
            raise DataError(f"the {name} split is empty")
        _check_labels(name, split, task, k, bundle.labels)
        n = len(split.y)
        for m, spec in bundle.modalities.items():
            if m not in split.arrays or m not in split.masks:
                raise DataError(f"{name} split: no array for modality {m!r}")
            x, mask = split.arrays[m], np.asarray(split.masks[m])
            lazy = type(x).__name__ == "LazyColumn"  # streamed: its values were checked by the pass
            x = x if lazy else np.asarray(x)
            if len(x) != n or len(mask) != n:
                raise DataError(
                    f"{name} split: array {m!r} has {len(x)} rows and its mask {len(mask)}, but "
                    f"there are {n} labels; every array needs one row per label"
                )
            if not lazy and (not np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
                raise DataError(f"{name} split: array {m!r} is {x.dtype}, not numbers")
            if tuple(x.shape[1:]) != tuple(spec.shape):
                raise DataError(
                    f"{name} split: array {m!r} has samples of shape {tuple(x.shape[1:])}; the "
                    f"modality declares {tuple(spec.shape)}"
                )
            if not np.isin(mask, (0, 1)).all():
                raise DataError(f"{name} split: the mask of {m!r} must hold 0/1")
            if not lazy and n:  # an empty split (``empty_splits``) has no values to check
                _check_values(name, split.meta, m, spec, x, mask)
    if len(bundle.train.y) or "train" not in may_be_empty:
        _check_constant(bundle)


def _check_labels(name: str, split: Any, task: str, k: int, labels: list[str]) -> None:
    y = np.asarray(split.y)
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{name} split: labels are {y.dtype}, not numbers")
    bad = ~np.isfinite(y.astype(np.float64))
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(y), -1).any(axis=1))
        raise DataError(f"labels: NaN or infinite at {_where(name, split.meta, rows)}")
    if task == "multilabel":
        if y.ndim != 2 or y.shape[1] != k:
            raise DataError(f"{name} split: multilabel targets must be (N, {k}); got {y.shape}")
        bad = ~np.isin(y, (0, 1)).all(axis=1)
        allowed = "0 or 1 per label"
    elif task == "binary":
        bad = ~np.isin(y, (0, 1)) if y.ndim == 1 else np.ones(len(y), bool)
        allowed = f"0 ({labels[0]}) or 1 ({labels[1]})"
    else:
        bad = (y != np.round(y)) | (y < 0) | (y >= k) if y.ndim == 1 else np.ones(len(y), bool)
        allowed = f"0..{k - 1} ({', '.join(labels)})"
    if np.any(bad):
        rows = np.flatnonzero(bad)
        seen = sorted({str(v) for v in np.asarray(y[rows[:5]]).ravel().tolist()})
        raise DataError(
            f"labels: {', '.join(seen)} at {_where(name, split.meta, rows)}; a {task} task with "
            f"{k} classes allows {allowed}"
        )


def _check_values(name: str, meta: Any, m: str, spec: Any, x: np.ndarray, mask: np.ndarray) -> None:
    flat = x.reshape(len(x), -1)
    if spec.kind == "tabular":  # NaN is a missing value; infinity is not a value
        inf = np.isinf(flat) & (mask[:, None] > 0)
        if inf.any():
            for j in np.flatnonzero(inf.any(axis=0)):
                col = (spec.columns or [])[j % max(len(spec.columns or []), 1)]
                rows = np.flatnonzero(inf[:, j])
                raise DataError(
                    f"{m!r} column {col!r}: infinite values at {_where(name, meta, rows)}; leave "
                    "a missing value empty (NaN), never infinite"
                )
        return
    bad = (~np.isfinite(flat)).any(axis=1) & (mask > 0)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"array {m!r} ({spec.kind}): NaN or infinite values at {_where(name, meta, rows)}; "
            "fix or drop those samples (an unreadable file can be marked missing: leave its cell "
            "empty)"
        )


def _constant(m: str, spec: Any, x: np.ndarray, mask: np.ndarray) -> list[str] | None:
    """The constant (or empty) parts of a modality in training: ``[m]`` for an image/signal,
    its columns for a tabular one; None when the modality is never present."""
    n = int((mask > 0).sum())
    if n == 0:
        return None
    present = x[mask > 0].reshape(n, -1)
    if spec.kind != "tabular":
        return [m] if float(np.ptp(present)) == 0.0 else []
    cols = list(spec.columns or [])
    width = len(cols) or present.shape[1]
    per = present.reshape(len(present), -1, width)  # (N, [S,] columns)
    const = []
    for j in range(width):
        v = per[:, :, j].ravel()
        v = v[~np.isnan(v)]
        if len(v) == 0 or float(v.max() - v.min()) == 0.0:
            const.append(cols[j] if cols else str(j))
    return const


def _check_constant(bundle: Any) -> None:
    """A constant feature carries no information (a warning); when every feature of every
    modality is constant, nothing can be learnt (an error)."""
    split, informative = bundle.train, False
    streamed = (bundle.info.get("stream") or {}).get("constant") or {}
    for m, spec in bundle.modalities.items():
        if m in streamed:  # computed by the stream pass
            const = streamed[m]
        else:
            const = _constant(m, spec, np.asarray(split.arrays[m]), np.asarray(split.masks[m]))
        if const is None:
            log.warning("modality %r is missing in every training sample", m)
            continue
        width = 1 if spec.kind != "tabular" else len(spec.columns or []) or 1
        informative |= len(const) < width
        if spec.kind != "tabular" and const:
            log.warning("%r (%s): every training value is the same (no information)", m, spec.kind)
        elif const:
            log.warning(
                "%r: constant or empty in training (no information): %s", m, ", ".join(const)
            )
    if bundle.modalities and not informative:
        raise DataError(
            "every input is constant (or missing) in the training split: "
            f"{', '.join(bundle.modalities)} carry no information; nothing can be learnt"
        )


def check_trainable(bundle: Any) -> None:
    """Training only (``prepare_data``), never data read for an existing package (whose train
    split may be empty, or another one): refuses a tabular column empty in every training row
    (its weights never see a value, its statistics fall back to mean 0 / std 1 and no range,
    so a value given later would move the output unflagged) and a class (a multilabel label's
    positives or negatives) without a training row (an output never learnt, yet evaluated)."""
    train = bundle.train
    for m, spec in bundle.modalities.items():
        if spec.kind != "tabular" or m not in train.arrays:
            continue
        cols = list(spec.columns or [])
        x = np.asarray(train.arrays[m], np.float64)
        width = len(cols) or (x.shape[-1] if x.ndim > 1 else 1)
        flat = x[np.asarray(train.masks[m]) > 0].reshape(-1, width)  # columns: the last axis
        empty = [cols[j] if cols else str(j) for j in np.flatnonzero(np.isnan(flat).all(axis=0))]
        if empty:
            todo = f"from modalities.{m}.columns" if len(empty) < width else f"(or modality {m!r})"
            raise DataError(
                f"{m!r} (tabular): column{'s' if len(empty) > 1 else ''} "
                f"{', '.join(map(repr, empty))} empty in every training row ({len(train.y)} rows): "
                "the model would never see a value there, and a value given at evaluation or "
                "prediction would go through weights that never learnt from one. Drop the "
                f"column{'s' if len(empty) > 1 else ''} {todo}, or fill in values in the "
                "training rows"
            )
    _check_classes(np.asarray(train.y), bundle.task, list(bundle.labels))
    for m, spec in bundle.modalities.items():
        if spec.kind == "signal" and m in train.arrays:
            _note_padding(m, spec, train.arrays[m], train.masks[m])


def note_share(count: int, of: int, msg: str, *args: Any) -> None:
    """Say of the training data that ``count`` of ``of`` rows have some property (a cut text, a
    padded record): a warning from a tenth of them on, else for information."""
    (log.warning if count >= 0.1 * of else log.info)(msg, *args)


def _note_padding(m: str, spec: Any, x: Any, mask: np.ndarray) -> None:
    """Say how many training records (of at most 512 spread over the split, the range
    subsample) fill under half of what the model reads, the rest zero padding: the prediction
    flag's rule (``medfuse.core.inputs.signal_fill``), said once for the training data; a
    warning from a tenth of them on."""
    present = np.flatnonzero(np.asarray(mask) > 0)
    if not len(present):
        return
    rows = present[range_subsample(len(present))]
    held, total = signal_fill(np.asarray(x[rows]), bool(spec.sequence))
    short = int((total - held > PADDED_SHARE * total).sum())
    if not short:
        return
    note_share(
        short,
        len(rows),
        "signal modality %r: %d of %d training records%s fill under half of the %d samples the "
        "model reads, the rest zero padding; a length nearer theirs "
        "(modalities.%s.length) reads less padding",
        m,
        short,
        len(rows),
        " (sampled)" if len(rows) < len(present) else "",
        total,
        m,
    )


def _check_classes(y: np.ndarray, task: str, labels: list[str]) -> None:
    """Every class has a training row; every multilabel label positive and negative ones."""
    never = "; the model would have an output it never learnt, and evaluation would score it"
    if task == "multilabel":
        pos = (y.reshape(len(y), -1) > 0.5).sum(axis=0)
        parts = [
            f"never {word} in the training split: {', '.join(repr(labels[j]) for j in idx)}"
            for word, idx in (
                ("positive", np.flatnonzero(pos == 0)),
                ("negative", np.flatnonzero(pos == len(y))),
            )
            if len(idx)
        ]
        if parts:
            per = ", ".join(f"{lab} {int(p)}" for lab, p in zip(labels, pos, strict=False))
            raise DataError(
                f"label(s) {'; '.join(parts)} (positives per label among the {len(y)} training "
                f"rows: {per}){never}. Give each label positive and negative training rows "
                "(more data, or another split), or drop the label from the label columns"
            )
        return
    counts = np.bincount(y.astype(np.int64).ravel(), minlength=len(labels))
    missing = [labels[j] for j in np.flatnonzero(counts[: len(labels)] == 0)]
    if missing:
        per = ", ".join(f"{lab} {int(c)}" for lab, c in zip(labels, counts, strict=False))
        rows = "training rows (more data, or a split that puts some of its rows in training)"
        todo = (
            f"Give {'the class' if len(missing) == 1 else 'each class'} {rows}, or drop it (its "
            "rows, and its name from the spec's labels)"
            if task == "multiclass"
            else f"A binary task learns from training rows of both classes: give it {rows}"
        )
        raise DataError(
            f"no training row of class {', '.join(map(repr, missing))} (rows per class in the "
            f"training split: {per}){never}. {todo}"
        )


# ---- fingerprint ------------------------------------------------------------------------------


def _split_paths(bundle: Any, split: Any) -> list[str]:
    """The manifest file cells of a split's rows (``info['paths']`` is per manifest row)."""
    paths = bundle.info.get("paths") or {}
    if not paths or "row" not in split.meta:
        return []
    idx = split.meta["row"].to_numpy().astype(np.int64) - 2
    return [f"{m}:{cells[i]}" for m, cells in sorted(paths.items()) for i in idx]


def _label_counts(y: np.ndarray, task: str, labels: list[str]) -> dict[str, int]:
    if task == "multilabel":
        return {lab: int(y[:, j].sum()) for j, lab in enumerate(labels)}
    codes = y.astype(np.int64)
    return {lab: int((codes == j).sum()) for j, lab in enumerate(labels)}


#: how ``values_sha256`` is computed: SHA-256 over each modality (sorted by name) of each row's
#: :func:`values_digest` (hex), in row order (a streamed split's rows are hashed where they are
#: decoded); fingerprints recorded under another scheme are not compared by value
VALUES_SCHEME = "rows-stored-sha256"

#: how a row is stored in its float32 slot: as float32, or, when every value is such an
#: integer (bit for bit), as uint8 or int16 in the slot's first bytes (the rest of the slot is
#: never written: a hole in the file). An 8-bit image at its training size takes a quarter.
STORED: dict[str, Any] = {"f4": np.float32, "u1": np.uint8, "i2": np.int16}


def compact(x: np.ndarray) -> tuple[str, np.ndarray]:
    """A row's smallest exact storage (:data:`STORED`) and its values in it."""
    x = np.ascontiguousarray(x, np.float32)
    if x.size:
        lo, hi = float(x.min()), float(x.max())  # NaN: every comparison is false
        for kind, low, high in (("u1", 0, 255), ("i2", -32768, 32767)):
            if lo >= low and hi <= high:
                small = x.astype(STORED[kind])
                back = small.astype(np.float32)
                if np.array_equal(back.view(np.int32), x.view(np.int32)):  # -0.0 stays float
                    return kind, small
                break  # in range, but not all integers
    return "f4", x


def stored_digest(kind: str, small: Any) -> str:
    """SHA-256 of a row in its storage: the kind (:data:`STORED`), then its bytes. ``compact``
    is exact and one-to-one, so this identifies the row's float32 values, and a cached row is
    checked without widening it (an 8-bit row hashes a quarter of the bytes)."""
    h = hashlib.sha256(kind.encode() + b"\0")
    h.update(small)
    return h.hexdigest()


def values_digest(x: np.ndarray) -> str:
    """The digest of one sample's float32 values (:func:`stored_digest` of its :func:`compact`
    storage): the same whether the row was decoded into memory or stored in the cache."""
    return stored_digest(*compact(x))


def hash_rows(h: Any, x: np.ndarray) -> None:
    """Add the rows of an in-memory array to a split's ``values_sha256`` (:data:`VALUES_SCHEME`)."""
    for row in np.asarray(x):
        h.update(values_digest(row).encode())


def fingerprint(bundle: Any) -> dict[str, dict[str, Any]]:
    """Per split: ``rows``, ``labels`` (count per class), ``sha256`` of the sample ids, labels,
    presence masks and file paths (which samples, labelled how) and ``values_sha256`` of the
    arrays as read (their content, by :data:`VALUES_SCHEME`)."""
    out: dict[str, dict[str, Any]] = {}
    for name in SPLITS:
        split = getattr(bundle, name, None)
        if split is None:
            continue
        h = hashlib.sha256()
        ids = split.meta["id"].astype(str).tolist() if "id" in split.meta else []
        h.update("\n".join(ids).encode())
        h.update(np.ascontiguousarray(split.y, np.float64).tobytes())
        for m in sorted(split.masks):
            h.update(np.ascontiguousarray(split.masks[m], np.float32).tobytes())
        h.update("\n".join(_split_paths(bundle, split)).encode())
        streamed = (bundle.info.get("stream") or {}).get("values_sha256") or {}
        if name in streamed:  # the stream pass hashed the same rows in the same order
            values = streamed[name]
        else:
            v = hashlib.sha256()
            for m in sorted(split.arrays):
                hash_rows(v, split.arrays[m])
            values = v.hexdigest()
        out[name] = {
            "rows": len(split.y),
            "labels": _label_counts(np.asarray(split.y), bundle.task, bundle.labels),
            "sha256": h.hexdigest(),
            "values_sha256": values,
            "values_scheme": VALUES_SCHEME,
        }
    return out


def compare_fingerprints(
    recorded: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per split of the recorded fingerprint: ``same`` and the ``differences`` in words."""
    out: dict[str, dict[str, Any]] = {}
    for name, old in recorded.items():
        new = now.get(name)
        diffs: list[str] = []
        if new is None:
            diffs.append("the split is absent now")
        else:
            if new["rows"] != old["rows"]:
                diffs.append(f"{new['rows']} rows, {old['rows']} recorded")
            if new["labels"] != old["labels"]:
                diffs.append(f"label counts {new['labels']}, {old['labels']} recorded")
            if new["sha256"] != old.get("sha256") and len(diffs) == 0:
                diffs.append("other samples, labels or files (same counts)")
            same_scheme = new.get("values_scheme") == old.get("values_scheme")
            if not diffs and same_scheme and new.get("values_sha256") != old.get("values_sha256"):
                diffs.append(
                    "the same samples, but the values read differ (files or readers changed)"
                )
        out[name] = {"same": not diffs, "differences": diffs}
    return out
