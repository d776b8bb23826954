"""MIT-BIH Arrhythmia Database: heartbeats with the AAMI classes and de Chazal's inter-patient split.

Each annotated beat becomes one sample with three modalities:

- ``beat`` (signal ``(C, L)``): the waveform of one lead around the annotated R peak, after a
  0.5-40 Hz band-pass and resampling; with ``template`` a second channel holds the record's
  *normal-beat template* (the median of its non-premature beats), so the network sees how this
  beat differs from the patient's usual one, which is what transfers across patients;
- ``rhythm`` (signal ``(4, context)``): for the ``context`` beats ending at this one, the RR interval
  before and after each beat divided by the record's mean RR, the RR before in seconds, and the
  R amplitude divided by the record's median amplitude: the rhythm context for an RNN;
- ``clinical`` (tabular): the subject's ``age`` and ``sex`` (0 male, 1 female) from the header
  comment, NaN where the header has ``?`` or ``-1``.

Labels are the AAMI EC57 classes N, S, V, F; Q beats (paced, fusion of paced, unclassifiable) are
not samples (their R peaks still count for the RR intervals). The split is the inter-patient one
of de Chazal et al. (2004): paced records 102, 104, 107, 217 are excluded, DS1 trains (a few of
its records held out for validation, by record) and DS2 is the test set only.

Extracting every beat of 44 records takes seconds, so the result is cached as an ``.npz`` under
``~/.cache/medfuse/derived`` (``$XDG_CACHE_HOME`` respected), keyed by the extraction options and
the sizes and modification times of the source files; the data directory is only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import DataError, SpecError, did_you_mean
from medfuse.core.paths import file_state
from medfuse.core.readers.base import reader_versions
from medfuse.core.readers.medical import fill_invalid
from medfuse.core.spec import ModalitySpec
from medfuse.data import DATASETS, DataBundle, Split, default_data_root

FOLDER = "mit-bih-arrhythmia"
LABELS = ["N", "S", "V", "F"]
#: AAMI EC57 beat classes (de Chazal et al. 2004, table I); "Q" beats are dropped as samples.
AAMI: dict[str, str] = {
    **dict.fromkeys("NLRejB", "N"),
    **dict.fromkeys("AaJSn", "S"),
    **dict.fromkeys("VEr", "V"),
    "F": "F",
    **dict.fromkeys("/fQ", "Q"),
}
BEAT_SYMBOLS = frozenset(AAMI)
PACED = (102, 104, 107, 217)
DS1 = (101, 106, 108, 109, 112, 114, 115, 116, 118, 119, 122, 124, 201, 203, 205, 207, 208, 209,
       215, 220, 223, 230)  # fmt: skip
DS2 = (100, 103, 105, 111, 113, 117, 121, 123, 200, 202, 210, 212, 213, 214, 219, 221, 222, 228,
       231, 232, 233, 234)  # fmt: skip
#: DS1 records held out for validation: together they hold ~20% of DS1's S, V and F beats, while
#: the records that carry most of DS1's S (209) and F (208) beats stay in training.
VAL_RECORDS = (118, 124, 205, 223)
RHYTHM_FEATURES = ["rr_pre", "rr_post", "rr_pre_seconds", "amplitude"]
#: with ``rr_local``: RR before and after, each divided by the mean RR of the preceding beats
LOCAL_RR_FEATURES = ["rr_pre_local", "rr_post_local"]
CLINICAL_COLUMNS = ["age", "sex"]

#: Options that change what is extracted (and so the cache key), with their defaults.
EXTRACT_DEFAULTS: dict[str, Any] = {
    "lead": "MLII",
    "fs": 180,  # Hz after resampling (the records are 360 Hz)
    "window": [0.25, 0.45],  # seconds before and after the R peak
    "band": [0.5, 40.0],  # band-pass in Hz; null = raw signal
    "context": 16,  # beats in the rhythm sequence up to and including the current beat
    "context_after": 0,  # beats after the current one also in the sequence
    "rr_norm": "mean",  # RR intervals are divided by the record's mean (as de Chazal) or median
    "rr_local": 0,  # > 0: also RR / the mean RR of that many preceding beats (local rhythm)
}
DEFAULTS: dict[str, Any] = {
    **EXTRACT_DEFAULTS,
    "template": True,  # add the record's normal-beat template as a second channel
    "records": None,  # restrict to these records (the split is intersected with them)
    "train_records": None,  # default: DS1 minus val_records
    "val_records": list(VAL_RECORDS),
    "test_records": list(DS2),
    "max_beats": None,  # at most this many beats per record (evenly spaced), for quick runs
    "train_fraction": None,  # e.g. {N: 0.3}: keep a seeded random fraction of a class in training
    "cache": True,
}
CACHE_VERSION = 2  # 2: invalid samples by the readers' rule (fill_invalid), not set to 0


# -- caching shared with the other ECG datasets ------------------------------------------------
def derived_dir() -> Path:
    """Where derived (extracted) arrays are cached: ``<user cache>/medfuse/derived``."""
    return default_data_root() / "derived"


def source_fingerprint(files: list[Path]) -> str:
    """A hash of the files' names and states (:func:`~medfuse.core.paths.file_state`: size,
    modification and change times, inode; cheap, no file is read)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{f.name}:{file_state(f)}\n".encode())
    return h.hexdigest()


def cached_arrays(
    name: str,
    key: dict[str, Any],
    files: list[Path],
    build: Callable[[], dict[str, np.ndarray]],
    *,
    enabled: bool = True,
) -> dict[str, np.ndarray]:
    """``build()``'s arrays, from ``derived/<name>-<hash>.npz`` when a previous run made them.

    The hash covers ``key`` (the extraction options), the releases of the libraries that read and
    filter (:func:`~medfuse.core.readers.base.reader_versions`) and the source files'
    fingerprint, so a changed option, library or source file simply makes a new cache entry.
    Written atomically, so a concurrent or killed run never leaves a half-written file behind.
    """
    if not enabled:
        return build()
    libs = reader_versions()  # another wfdb or scipy release may extract other values
    blob = json.dumps({"key": key, "v": CACHE_VERSION, "libs": libs}, sort_keys=True, default=str)
    digest = hashlib.sha256((blob + source_fingerprint(files)).encode()).hexdigest()[:16]
    path = derived_dir() / f"{name}-{digest}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as d:
                return {k: d[k] for k in d.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # unreadable: rebuild it
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a cache file need not be
        os.replace(tmp, path)
    except OSError:  # a read-only cache is not an error: the arrays are still returned
        pass
    return arrays


# -- header and beat extraction ----------------------------------------------------------------
def parse_age_sex(comments: list[str]) -> tuple[float, float]:
    """``(age, sex)`` from a MIT-BIH header comment like ``69 M 1085 1629 x1``.

    Sex is 0 for male, 1 for female; ``?``, ``-1`` or an unparsable field gives NaN.
    """
    fields = comments[0].split() if comments else []
    age = float("nan")
    if fields:
        try:
            a = float(fields[0])
            age = a if a >= 0 else float("nan")
        except ValueError:
            pass
    sex = {"M": 0.0, "F": 1.0}.get(fields[1].upper() if len(fields) > 1 else "", float("nan"))
    return age, sex


def _bandpass(x: np.ndarray, fs: float, band: list[float] | None) -> np.ndarray:
    if not band:
        return x
    # lazy: scipy, only for this statistic
    from scipy.signal import butter, sosfiltfilt

    lo, hi = float(band[0]), min(float(band[1]), 0.45 * fs)
    sos = butter(2, [lo, hi], btype="band", fs=fs, output="sos")
    return sosfiltfilt(sos, x)


def _resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    if fs_in == fs_out:
        return x
    # lazy: scipy, only for this statistic
    from scipy.signal import resample_poly

    r = Fraction(fs_out / fs_in).limit_denominator(1000)
    return resample_poly(x, r.numerator, r.denominator)


def extract_record(
    path: str | Path,
    *,
    lead: str = "MLII",
    fs: float = 180,
    window: list[float] | tuple[float, float] = (0.25, 0.45),
    band: list[float] | None = (0.5, 40.0),  # type: ignore[assignment]
    context: int = 16,
    context_after: int = 0,
    rr_norm: str = "mean",
    rr_local: int = 0,
) -> dict[str, Any]:
    """Every AAMI-labelled beat of one WFDB record (``path`` without extension, ``.atr`` beside).

    Returns ``beat`` ``(N, L)`` (mV), ``template`` ``(L,)``, ``rhythm`` ``(N, F, context)``
    (F = 4, or 6 with ``rr_local``: RR before/after over the mean RR of the ``rr_local`` beats
    before this one, the local rhythm, so a premature beat stands out even when the rate drifts),
    ``label`` ``(N,)`` (index into N/S/V/F), ``sample`` ``(N,)`` (R peak, in samples of the
    original rate), ``symbol`` ``(N,)``, ``age``, ``sex``. Beats whose window would leave the
    record are skipped.
    """
    # lazy: wfdb (medfuse[medical]), only for WFDB records
    import wfdb

    path = Path(path)
    try:
        rec = wfdb.rdrecord(str(path))
        ann = wfdb.rdann(str(path), "atr")
    except Exception as err:  # wfdb raises bare OSError/ValueError/IndexError on bad files
        raise DataError(
            f"{path}: not a readable WFDB record with .atr annotations ({err})"
        ) from None
    if lead not in rec.sig_name:
        raise DataError(
            f"{path}: no lead {lead!r}; the record has {', '.join(rec.sig_name)} "
            "(set data.options.lead)"
        )
    fs_in = float(rec.fs)
    x = np.asarray(rec.p_signal[:, rec.sig_name.index(lead)], dtype=np.float64)
    try:  # invalid samples: the one rule of the signal readers (a lead mostly invalid: refused)
        x = fill_invalid(x[None], [lead])[0]
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    x = _resample(_bandpass(x, fs_in, band), fs_in, float(fs))

    symbols = np.asarray(ann.symbol)
    is_beat = np.isin(symbols, list(BEAT_SYMBOLS))
    samples = np.asarray(ann.sample)[is_beat].astype(np.int64)
    symbols = symbols[is_beat]
    order = np.argsort(samples, kind="stable")
    samples, symbols = samples[order], symbols[order]
    n_all = len(samples)
    before, after = round(float(window[0]) * fs), round(float(window[1]) * fs)
    length = before + after
    peaks = np.round(samples * (float(fs) / fs_in)).astype(np.int64)

    # RR intervals over all beats (Q beats included, so the rhythm stays intact)
    if n_all >= 2:
        rr = np.diff(samples) / fs_in
        rr_pre = np.concatenate([[rr[0]], rr])
        rr_post = np.concatenate([rr, [rr[-1]]])
    else:
        rr_pre = rr_post = np.ones(n_all)
    rr_ref = float(np.median(rr_pre) if rr_norm == "median" else np.mean(rr_pre)) if n_all else 1.0
    amp = x[np.clip(peaks, 0, len(x) - 1)] if n_all else np.zeros(0)
    amp_med = float(np.median(np.abs(amp))) if n_all else 1.0
    amp_med = amp_med if amp_med > 1e-6 else 1.0
    feats = [rr_pre / rr_ref, rr_post / rr_ref, rr_pre, amp / amp_med]
    if rr_local > 0 and n_all:
        # trailing mean of the rr_local RR intervals before beat i (the record mean at the start)
        c = np.concatenate([[0.0], np.cumsum(rr_pre)])
        i = np.arange(n_all)
        lo = np.maximum(i - rr_local, 0)
        local = np.where(i > 0, (c[i] - c[lo]) / np.maximum(i - lo, 1), rr_ref)
        local = np.where(local > 1e-6, local, rr_ref)
        feats += [rr_pre / local, rr_post / local]
    per_beat = np.stack(feats, axis=0)

    ok = (peaks - before >= 0) & (peaks + after <= len(x))
    labels = np.array([AAMI[s] for s in symbols], dtype=object)
    keep = ok & (labels != "Q")
    idx = np.flatnonzero(keep)
    offsets = np.arange(-before, after)
    beats = x[peaks[idx, None] + offsets[None, :]] if len(idx) else np.zeros((0, length))
    # the record's normal-beat template: median of the non-premature beats (no labels used)
    in_window = np.flatnonzero(ok)
    regular = in_window[(rr_pre[in_window] / rr_ref) >= 0.9]
    pool = regular if len(regular) >= 10 else in_window
    template = (
        np.median(x[peaks[pool, None] + offsets[None, :]], axis=0)
        if len(pool)
        else np.zeros(length)
    )
    # rhythm context: the `context` beats ending at each kept beat, then `context_after` beats
    # (edge-padded at the record's start and end)
    steps = np.arange(-context + 1, context_after + 1)
    ctx = np.clip(idx[:, None] + steps[None, :], 0, max(n_all - 1, 0))
    rhythm = (
        per_beat[:, ctx].transpose(1, 0, 2)
        if len(idx)
        else np.zeros((0, len(per_beat), len(steps)))
    )
    age, sex = parse_age_sex(list(rec.comments or []))
    return {
        "beat": beats.astype(np.float32),
        "template": template.astype(np.float32),
        "rhythm": rhythm.astype(np.float32),
        "label": np.array([LABELS.index(v) for v in labels[idx]], dtype=np.int64),
        "sample": samples[idx],
        "symbol": symbols[idx].astype(str),
        "age": age,
        "sex": sex,
    }


def locate_dir(root: Path) -> Path:
    """``<root>/mit-bih-arrhythmia`` or ``root`` itself, whichever holds WFDB headers."""
    for cand in (root / FOLDER, root):
        if cand.is_dir() and any(cand.glob("*.hea")):
            return cand
    raise DataError(
        f"MIT-BIH records not found: looked for NNN.hea/.dat/.atr in {root / FOLDER} and {root} "
        "(set --data-dir or MEDFUSE_DATA_DIR to the folder holding mit-bih-arrhythmia/)"
    )


def _record_list(value: Any, option: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | int):
        value = [value]
    if not isinstance(value, list | tuple):
        raise SpecError(f"data.options.{option}", f"must be a list of record names; got {value!r}")
    return [str(v) for v in value]


def resolve_splits(options: dict[str, Any]) -> dict[str, list[str]]:
    """Record names per split from the options (defaults: de Chazal's DS1 / DS2)."""
    val = _record_list(options["val_records"], "val_records")
    train = _record_list(options["train_records"], "train_records") or [
        str(r) for r in DS1 if str(r) not in val
    ]
    test = _record_list(options["test_records"], "test_records")
    only = _record_list(options["records"], "records")
    splits = {"train": train, "val": val, "test": test}
    if only:
        splits = {k: [r for r in v if r in only] for k, v in splits.items()}
    seen: dict[str, str] = {}
    for name, recs in splits.items():
        for r in recs:
            if r in seen:
                raise SpecError(
                    f"data.options.{name}_records",
                    f"record {r} is in both {seen[r]!r} and {name!r}; a patient belongs to one split",
                )
            seen[r] = name
    for name in ("train", "val"):
        if not splits[name]:
            raise SpecError(
                f"data.options.{name}_records",
                f"the {name} split has no records (records={only or 'all'}); "
                f"name some with data.options.{name}_records",
            )
    return splits


def _split_from(
    d: dict[str, np.ndarray], records: list[str], options: dict[str, Any], wanted: set[str]
) -> Split:
    sel_parts = []
    max_beats = options["max_beats"]
    for r in records:
        idx = np.flatnonzero(d["record"] == r)
        if max_beats is not None and len(idx) > int(max_beats):
            idx = idx[np.linspace(0, len(idx) - 1, int(max_beats)).round().astype(int)]
        sel_parts.append(idx)
    sel = np.concatenate(sel_parts) if sel_parts else np.zeros(0, np.int64)
    rec_index = {r: i for i, r in enumerate(d["records"])}
    rec_of = np.array([rec_index[r] for r in d["record"][sel]], dtype=np.int64)
    beat = d["beat"][sel][:, None]  # (N, 1, L)
    if options["template"]:
        beat = np.concatenate([beat, d["templates"][rec_of][:, None]], axis=1)  # (N, 2, L)
    arrays = {
        "beat": np.ascontiguousarray(beat, dtype=np.float32),
        "rhythm": d["rhythm"][sel],
        "clinical": np.stack([d["ages"][rec_of], d["sexes"][rec_of]], axis=1).astype(np.float32),
    }
    arrays = {k: v for k, v in arrays.items() if k in wanted}
    n = len(sel)
    sexes = d["sexes"][rec_of]
    meta = pd.DataFrame(
        {
            "id": [f"{r}-{s}" for r, s in zip(d["record"][sel], d["sample"][sel])],
            "patient_id": d["record"][sel],
            "sample": d["sample"][sel],
            "symbol": d["symbol"][sel],
            "age": d["ages"][rec_of],
            "sex": np.where(np.isnan(sexes), None, np.where(sexes == 1.0, "F", "M")),
        }
    )
    masks = {k: np.ones(n, np.float32) for k in arrays}
    return Split(arrays, masks, d["label"][sel].astype(np.int64), meta)


def _subsample(split: Split, fractions: dict[str, float], seed: int) -> Split:
    """Keep a random ``fractions[c]`` of the training beats of class ``c`` (seeded): a sampler
    that undersamples the majority class and shortens each epoch."""
    rng = np.random.default_rng(seed + 4099)
    keep = np.ones(len(split), bool)
    for label, frac in fractions.items():
        idx = np.flatnonzero(split.y == LABELS.index(label))
        drop = rng.random(len(idx)) >= float(frac)
        keep[idx[drop]] = False
    return split.subset(np.flatnonzero(keep))


def _extract_all(folder: Path, records: list[str], opts: dict[str, Any]) -> dict[str, np.ndarray]:
    parts: dict[str, list[Any]] = {k: [] for k in ("beat", "rhythm", "label", "sample", "symbol")}
    record_col, templates, ages, sexes = [], [], [], []
    for r in records:
        e = extract_record(
            folder / r,
            lead=str(opts["lead"]),
            fs=float(opts["fs"]),
            window=list(opts["window"]),
            band=opts["band"],
            context=int(opts["context"]),
            context_after=int(opts["context_after"]),
            rr_norm=str(opts["rr_norm"]),
            rr_local=int(opts["rr_local"]),
        )
        for k in parts:
            parts[k].append(e[k])
        record_col.append(np.full(len(e["label"]), r))
        templates.append(e["template"])
        ages.append(e["age"])
        sexes.append(e["sex"])
    return {
        **{k: np.concatenate(v) for k, v in parts.items()},
        "record": np.concatenate(record_col).astype(str),
        "records": np.array(records, dtype=str),
        "templates": np.stack(templates).astype(np.float32),
        "ages": np.array(ages, np.float32),
        "sexes": np.array(sexes, np.float32),
    }


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise SpecError(
            f"data.options.{unknown[0]}",
            f"unknown option{did_you_mean(unknown[0], DEFAULTS)} Allowed: {', '.join(DEFAULTS)}",
        )
    o = {**DEFAULTS, **options}
    w = o["window"]
    if not (isinstance(w, list | tuple) and len(w) == 2 and all(float(v) >= 0 for v in w)):
        raise SpecError(
            "data.options.window", f"must be [seconds_before, seconds_after]; got {w!r}"
        )
    if float(w[0]) + float(w[1]) <= 0:
        raise SpecError("data.options.window", "the window must have a positive length")
    if not (isinstance(o["fs"], int | float) and o["fs"] > 0):
        raise SpecError("data.options.fs", f"must be a positive rate in Hz; got {o['fs']!r}")
    if not (isinstance(o["context"], int) and o["context"] >= 1):
        raise SpecError("data.options.context", f"must be an integer >= 1; got {o['context']!r}")
    if o["band"] is not None and not (isinstance(o["band"], list | tuple) and len(o["band"]) == 2):
        raise SpecError(
            "data.options.band", f"must be [low_hz, high_hz] or null; got {o['band']!r}"
        )
    if not (isinstance(o["context_after"], int) and o["context_after"] >= 0):
        raise SpecError(
            "data.options.context_after", f"must be an integer >= 0; got {o['context_after']!r}"
        )
    if not (isinstance(o["rr_local"], int) and o["rr_local"] >= 0):
        raise SpecError(
            "data.options.rr_local", f"must be an integer >= 0 (beats); got {o['rr_local']!r}"
        )
    if o["rr_norm"] not in ("mean", "median"):
        raise SpecError("data.options.rr_norm", f"must be 'mean' or 'median'; got {o['rr_norm']!r}")
    tf = o["train_fraction"]
    if tf is not None and not (
        isinstance(tf, dict)
        and all(k in LABELS and isinstance(v, int | float) and 0 < v <= 1 for k, v in tf.items())
    ):
        raise SpecError(
            "data.options.train_fraction",
            f"must map classes ({', '.join(LABELS)}) to fractions in (0, 1]; got {tf!r}",
        )
    if o["max_beats"] is not None and not (isinstance(o["max_beats"], int) and o["max_beats"] > 0):
        raise SpecError(
            "data.options.max_beats", f"must be a positive integer; got {o['max_beats']!r}"
        )
    return o


@DATASETS.register("mitbih")
def load_mitbih(
    arg: str,
    options: dict[str, Any],
    *,
    root: Path,
    modalities: dict[str, ModalitySpec],
    task: str | None,
    on_bad_row: str,
    seed: int,
) -> DataBundle:
    """MIT-BIH Arrhythmia beats (AAMI N/S/V/F), de Chazal inter-patient split; beat+rhythm+clinical."""
    o = _check_options(options)
    folder = locate_dir(Path(arg).expanduser() if arg else root)
    splits = resolve_splits(o)
    records = sorted({r for v in splits.values() for r in v})
    files = []
    for r in records:
        for ext in (".hea", ".dat", ".atr"):
            f = folder / f"{r}{ext}"
            if not f.exists():
                raise DataError(f"{f}: missing (record {r} of the MIT-BIH split)")
            files.append(f)
    key = {"records": records, **{k: o[k] for k in EXTRACT_DEFAULTS}}
    data = cached_arrays(
        "mitbih", key, files, lambda: _extract_all(folder, records, o), enabled=bool(o["cache"])
    )
    all_names = {"beat", "rhythm", "clinical"}
    wanted = set(modalities) & all_names if modalities else all_names
    parts = {s: _split_from(data, recs, o, wanted) for s, recs in splits.items()}
    counts_all = {
        s: {lab: int((p.y == i).sum()) for i, lab in enumerate(LABELS)} for s, p in parts.items()
    }
    if o["train_fraction"]:
        parts["train"] = _subsample(parts["train"], o["train_fraction"], seed)
    beat_len = int(data["beat"].shape[1])
    mods = {
        "beat": ModalitySpec(kind="signal", channels=2 if o["template"] else 1, length=beat_len),
        "rhythm": ModalitySpec(
            kind="signal",
            channels=int(data["rhythm"].shape[1]),
            length=int(data["rhythm"].shape[2]),
        ),
        "clinical": ModalitySpec(kind="tabular", columns=list(CLINICAL_COLUMNS)),
    }
    mods = {k: v for k, v in mods.items() if k in wanted}
    test = parts["test"] if splits["test"] else None
    counts = {
        s: {lab: int((p.y == i).sum()) for i, lab in enumerate(LABELS)} for s, p in parts.items()
    }
    return DataBundle(
        parts["train"],
        parts["val"],
        test,
        mods,
        list(LABELS),
        "multiclass",
        info={
            "name": "MIT-BIH Arrhythmia (AAMI N/S/V/F, inter-patient)",
            "synthetic": False,
            "file": str(folder),
            "options": {k: o[k] for k in DEFAULTS if k != "cache"},
            "records": splits,
            "counts": counts,  # beats per class and split, after training undersampling
            "counts_all": counts_all,  # before it
            "rhythm_features": RHYTHM_FEATURES + (LOCAL_RR_FEATURES if o["rr_local"] else []),
        },
    )
