"""Parity verification: a package's runtimes against the PyTorch reference, on stored real inputs.

``verification.npz`` (written by ``medfuse export``) holds a few samples from the validation split,
some with a modality masked out, as the exported graphs see them (normalised, ``<m>`` and
``mask_<m>``, the ONNX input names), as raw values (``raw.<m>``, before preprocessing), and the
reference logits of the PyTorch model on CPU (``logits``). ``verify_package`` checks the checksums
and runs those inputs through every runtime available here:

- ``torch``: the package's weights (``model.safetensors``) rebuilt from the spec;
- ``onnx``: ``model.onnx`` with ONNX Runtime, both on the stored normalised inputs and through the
  torch-free runtime from the raw inputs (so the stored preprocessing statistics are checked too);
- ``pt2``: the ``torch.export`` program ``model.pt2``.

An fp32 runtime passes when its largest absolute logit difference is at most ``TOLERANCE``; an
INT8 ONNX model (``"precision": "int8"`` in ``medfuse.json``'s ``runtime``) passes when its labels
agree with the reference on at least ``MIN_AGREEMENT`` of the samples. With ``split`` a whole
split of the package's data is used instead, the reference computed on the fly.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.decision import decide, probabilities, reference_decisions
from medfuse.core.errors import DataError, MedfuseError, PackageError, SpecError
from medfuse.core.inputs import modalities_from_meta
from medfuse.core.onnx import OnnxPredictor, check_device
from medfuse.core.optional import installed
from medfuse.core.package import META, package_arrays, read_meta, sha256_file, typed_meta
from medfuse.core.preprocess import normalize
from medfuse.core.signing import Trust, package_digest, verify_signature
from medfuse.core.text import vocab_size

log = logging.getLogger("medfuse.export")

VERIFICATION = "verification.npz"
TOLERANCE = 1e-4
MIN_AGREEMENT = 0.99
RUNTIMES = ("torch", "onnx", "pt2")
DEFAULT_SAMPLES = 16
#: |P - threshold| at or below this is a tie (label decided by rounding), left out of agreement
TIE = 1e-6


class ParityError(MedfuseError):
    """An export does not reproduce the PyTorch model within tolerance (exit status 1)."""

    exit_code = 1


# ---- building the verification inputs ------------------------------------------------------


def select_samples(
    arrays: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    modalities: dict[str, Any],
    *,
    n: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """``n`` samples (raw arrays, masks, source indices); the last quarter (at least one) have one
    modality masked out, cycling over the modalities, as the data pipeline represents an absent
    modality (zeros, NaN for tabular, mask 0)."""
    total = len(next(iter(masks.values())))
    if total == 0:
        raise DataError("no samples to build verification inputs from")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(total, size=min(n, total), replace=False))
    raw = {m: np.array(a[idx], dtype=np.float32) for m, a in arrays.items()}
    mk = {m: np.array(k[idx], dtype=np.float32) for m, k in masks.items()}
    names = list(modalities)
    # one modality: one all-missing sample suffices; several: a quarter, each modality in turn
    k = (max(1, len(idx) // 4) if len(names) > 1 else 1) if len(idx) > 1 else 0
    for j, i in enumerate(range(len(idx) - k, len(idx))):
        m = names[j % len(names)]
        mk[m][i] = 0.0
        raw[m][i] = np.nan if modalities[m].kind == "tabular" else 0.0
    return raw, mk, idx


def random_samples(
    modalities: dict[str, Any], stats: dict[str, Any], *, n: int = DEFAULT_SAMPLES, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inputs drawn from the stored statistics (mean + std * N(0, 1)) when the data is not here;
    a text modality: random token values of its stored tokenizer (``medfuse.core.text``), the
    last quarter of each row padding."""
    rng = np.random.default_rng(seed)
    arrays, masks = {}, {}
    for m, info in modalities.items():
        st = stats[m]
        if st.get("tokenizer"):
            high = vocab_size(st["tokenizer"]) + int(st.get("token_offset", 0))
            ids = rng.integers(1, high, (n, *info.shape)).astype(np.float32)
            ids[:, info.shape[-1] - info.shape[-1] // 4 :] = 0
            arrays[m], masks[m] = ids, np.ones(n, np.float32)
            continue
        c = int(st["channel_axis"]) + 1
        shape = [1] * (len(info.shape) + 1)
        shape[c] = -1
        mean = np.asarray(st["mean"], np.float32).reshape(shape)
        std = np.asarray(st["std"], np.float32).reshape(shape)
        arrays[m] = (mean + std * rng.standard_normal((n, *info.shape))).astype(np.float32)
        masks[m] = np.ones(n, np.float32)
    return arrays, masks


def feeds_from_raw(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Normalised inputs and masks, keyed as the ONNX graph's inputs."""
    stats = meta["preprocessing"]
    feeds = {m: normalize(arrays[m], masks[m], stats[m]) for m in meta["spec"]["modalities"]}
    feeds.update(
        {f"mask_{m}": np.asarray(masks[m], np.float32) for m in meta["spec"]["modalities"]}
    )
    return feeds


def verification_bytes(
    raw: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    feeds: dict[str, np.ndarray],
    logits: np.ndarray,
    index: np.ndarray,
    meta: dict[str, Any] | None = None,
) -> bytes:
    """The ``verification.npz`` payload (with ``meta``: the package's reference decisions)."""
    out = dict(feeds)
    out.update({f"raw.{m}": a for m, a in raw.items()})
    out["logits"] = np.asarray(logits, np.float32)
    out["index"] = np.asarray(index, np.int64)
    if meta is not None:
        out.update(_decisions(meta, out["logits"]))
    buf = io.BytesIO()
    np.savez_compressed(buf, **out)
    return buf.getvalue()


def _decisions(meta: dict[str, Any], logits: np.ndarray) -> dict[str, np.ndarray]:
    m = typed_meta(meta)
    return reference_decisions(
        m.task, logits, m.labels, m.threshold.value, m.calibration.temperature
    )


def check_decisions(
    meta: dict[str, Any],
    stored: dict[str, np.ndarray],
    raw: dict[str, np.ndarray] | None,
    masks: dict[str, np.ndarray],
    feeds: dict[str, np.ndarray],
    tolerance: float = TOLERANCE,
) -> Check:
    """The package's own decision path (normalisation statistics, temperature, threshold, labels)
    recomputed on the stored verification data against the outputs stored at export: an edit of
    any of those fields in ``medfuse.json`` that changes an output fails here."""
    check = Check("package", "ok", device="cpu", criterion="stored decisions reproduced")
    problems = []
    mods = list(meta["spec"]["modalities"])
    if raw is not None and set(raw) == set(mods):
        again = feeds_from_raw(meta, raw, masks)
        gap = max(float(np.abs(again[m] - feeds[m]).max(initial=0.0)) for m in mods)
        if not np.isfinite(gap) or gap > tolerance:
            problems.append(
                f"preprocessing statistics no longer reproduce the stored inputs (max |diff| "
                f"{gap:.3g})"
            )
    if "decisions" not in stored:
        check.status = "skipped"
        check.note = f"{VERIFICATION} predates stored decisions: run `medfuse export PKG --refresh`"
        if problems:
            check.status, check.note = "fail", "; ".join(problems)
        return check
    now = _decisions(meta, stored["logits"])
    check.n = int(len(now["decisions"]))
    p_old, p_new = stored["probabilities"], now["probabilities"]
    same_shape = p_old.shape == p_new.shape
    gap = float(np.abs(p_old - p_new).max(initial=0.0)) if same_shape else float("inf")
    check.max_abs_diff = gap
    if not gap <= tolerance:
        problems.append(f"probabilities differ by {gap:.3g} (temperature or task edited)")
    changed = check.n
    if same_shape:
        # a stored probability within the tolerance of the threshold is a tie, not counted
        thr = typed_meta(meta).threshold.value
        tie = np.abs(p_old - thr) <= tolerance if meta["task"] != "multiclass" else None
        if tie is not None and tie.ndim == 2:
            tie = tie.any(axis=1)
        differ = stored["decisions"] != now["decisions"]
        changed = int(np.sum(differ & ~tie)) if tie is not None else int(np.sum(differ))
    if changed:
        problems.append(
            f"{changed} of {check.n} stored decisions change (labels or threshold edited)"
        )
    if problems:
        check.status = "fail"
        check.note = "; ".join(problems) + f": {META} was edited after export"
    return check


# ---- running each runtime ------------------------------------------------------------------


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """No TF32 on CUDA while checking parity (it alone can exceed 1e-4)."""
    import torch  # lazy: verify runs without torch (base install)

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def torch_logits(
    model: Any,
    modalities: Sequence[str],
    feeds: dict[str, np.ndarray],
    device: Any,
    batch: int = 256,
) -> np.ndarray:
    """Logits of a callable ``(inputs, masks) -> logits`` (a CompositeModel or a pt2 module)."""
    import torch  # lazy: verify runs without torch (base install)

    n = len(feeds[f"mask_{modalities[0]}"])
    out = []
    with torch.no_grad(), exact_fp32():
        for s in range(0, n, batch):
            inputs = {m: torch.from_numpy(feeds[m][s : s + batch]).to(device) for m in modalities}
            masks = {
                m: torch.from_numpy(feeds[f"mask_{m}"][s : s + batch]).to(device)
                for m in modalities
            }
            out.append(model(inputs, masks).float().cpu().numpy())
    return np.concatenate(out)


def _torch_device(device: str) -> Any:
    from medfuse.inference.helpers import resolve_device  # lazy: torch, optional for verify

    return resolve_device(device)


def _available(name: str) -> str | None:
    """None when the runtime's library imports here, else why not."""
    lib = {"torch": "torch", "pt2": "torch", "onnx": "onnxruntime"}[name]
    return None if installed(lib) else f"{lib} is not installed here"


# ---- the report ----------------------------------------------------------------------------


@dataclass
class Check:
    """One runtime's result against the reference."""

    runtime: str
    status: str  # ok | fail | skipped
    device: str = ""
    precision: str = "fp32"
    n: int = 0
    max_abs_diff: float | None = None
    label_agreement: float | None = None
    criterion: str = ""
    note: str = ""


@dataclass
class VerifyReport:
    package: Path
    inputs: str
    checks: list[Check] = field(default_factory=list)
    digest: str = ""
    signature: str | None = None

    @property
    def ok(self) -> bool:
        """Checksums passed (else read_meta raised), no check failed and a runtime ran."""
        return any(c.status == "ok" and c.runtime in RUNTIMES for c in self.checks) and not any(
            c.status == "fail" for c in self.checks
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": str(self.package),
            "checksums": "ok",
            "digest": self.digest,
            "signature": self.signature or "not checked",
            "inputs": self.inputs,
            "ok": self.ok,
            "checks": [asdict(c) for c in self.checks],
        }


def _note(check: Check, text: str) -> None:
    check.note = f"{check.note}; {text}" if check.note else text


def _judge(
    check: Check,
    logits: np.ndarray,
    ref: np.ndarray,
    meta: dict[str, Any],
    tolerance: float,
    min_agreement: float,
) -> Check:
    if logits.shape != ref.shape:
        check.status, check.note = "fail", f"output shape {logits.shape} != reference {ref.shape}"
        return check
    finite = np.isfinite(logits).all()
    check.n = int(len(ref))
    check.max_abs_diff = float(np.abs(logits - ref).max()) if finite and len(ref) else float("inf")
    typed = typed_meta(meta)
    task, labels = typed.task, typed.labels
    temp, thr = typed.calibration.temperature, typed.threshold.value
    p_ref = probabilities(task, ref, temp)
    a = decide(task, probabilities(task, logits, temp), labels, thr)
    b = decide(task, p_ref, labels, thr)
    # a reference probability ON the threshold (the validation sample that defined a Youden
    # threshold) is decided by rounding, not by the model: such ties are not counted
    tie = np.zeros(len(b), bool)
    if task != "multiclass" and len(b):
        near = np.abs(p_ref - thr) <= TIE
        tie = near if near.ndim == 1 else near.any(axis=1)
    same = [x == y for x, y, t in zip(a, b, tie) if not t]
    check.label_agreement = float(np.mean(same)) if same else 1.0
    if tie.any():
        _note(check, f"{int(tie.sum())} sample(s) exactly at the threshold not counted")
    if check.precision == "int8":
        check.criterion = f"label agreement >= {min_agreement:.0%}"
        good = finite and check.label_agreement >= min_agreement
    else:
        check.criterion = f"max |diff| <= {tolerance:g}"
        good = finite and check.max_abs_diff <= tolerance
    check.status = "ok" if good else "fail"
    if not finite:
        _note(check, "non-finite outputs")
    return check


def verify_package(
    path: str | Path,
    *,
    runtimes: Sequence[str] | str = "all",
    device: str = "cpu",
    tolerance: float = TOLERANCE,
    min_agreement: float = MIN_AGREEMENT,
    split: str | None = None,
    data_dir: str | Path | None = None,
    trust: Trust | None = None,
    trusted_pt2: str | None = None,
) -> VerifyReport:
    """Signature (with ``trust``), checksums and schema, the package's decisions, then each
    runtime on the verification inputs (or a whole ``split``).

    ``runtimes``: "all" (every runtime whose file and library are here; others are skipped) or
    names from ``RUNTIMES`` (a named runtime that cannot run is a failure, not a skip).
    ``model.pt2`` is loaded only when the signature verified or its sha256 is ``trusted_pt2``
    (a program the caller produced itself): see ``medfuse.export.pt2``.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise SpecError("--tolerance", f"must be a number >= 0; got {tolerance}")
    check_device(device)
    root = Path(path)
    signature = verify_signature(root, trust) if trust is not None and trust.given else None
    meta = read_meta(root)  # raises PackageError on a missing or altered file, or a bad field
    files = meta.get("files", {})
    explicit = runtimes != "all"
    names = list(RUNTIMES) if runtimes == "all" else list(runtimes)
    for name in names:
        if name not in RUNTIMES:
            raise MedfuseError(f"unknown runtime {name!r}; allowed: {', '.join(RUNTIMES)}, all")
    mods = list(meta["spec"]["modalities"])

    raw: dict[str, np.ndarray] | None = None
    masks: dict[str, np.ndarray] | None = None
    if split is None:
        if VERIFICATION not in files:
            raise PackageError(
                f"{root} has no {VERIFICATION}; run `medfuse export {root}` to add one "
                "(an INT8 package keeps its model.onnx)"
            )
        d = package_arrays(
            root / VERIFICATION,
            root / VERIFICATION,
            (*mods, *(f"mask_{m}" for m in mods), "logits"),
        )
        feeds = {k: d[k] for k in (*mods, *(f"mask_{m}" for m in mods))}
        raw = {m: d[f"raw.{m}"] for m in mods if f"raw.{m}" in d}
        ref = d["logits"]
        stored = {k: d[k] for k in ("logits", "probabilities", "decisions") if k in d}
        masks = {m: feeds[f"mask_{m}"] for m in mods}
        ver = meta.get("verification", {})
        inputs = f"{VERIFICATION}: {len(ref)} samples ({ver.get('source', 'stored')})"
        stale = ver.get("weights_sha256") not in (None, files.get("model.safetensors"))
        if stale and "model.safetensors" in files:
            log.warning(
                "%s was made for other weights than model.safetensors; run medfuse export again",
                VERIFICATION,
            )
    else:
        raw, masks, ref, inputs = _split_reference(root, meta, split, data_dir)
        feeds = feeds_from_raw(meta, raw, masks)

    rt = meta.get("runtime") or {}
    report = VerifyReport(root, inputs, digest=package_digest(root), signature=signature)
    if split is None:
        report.checks.append(check_decisions(meta, stored, raw, masks, feeds, tolerance))
    pt2_ok = signature is not None or (
        trusted_pt2 is not None and files.get("model.pt2") == trusted_pt2
    )
    for name in names:
        precision = "fp32"
        if name == "onnx" and rt.get("onnx_file", "model.onnx") == "model.onnx":
            precision = str(rt.get("precision", "fp32"))
        check = Check(name, "skipped", device=device, precision=precision)
        file = {
            "torch": "model.safetensors",
            "onnx": rt.get("onnx_file", "model.onnx"),
            "pt2": "model.pt2",
        }[name]
        why = _available(name) or (None if file in files else f"no {file} in the package")
        if not why and name == "pt2" and not pt2_ok:
            msg = (
                "model.pt2 not loaded: a torch.export archive can run code when loaded; "
                "give --key public.pem (a verified signature) to check it"
            )
            if explicit:
                raise PackageError(f"{root}: {msg}")
            why = msg
        if not why and name == "onnx" and str(device).startswith("cuda"):
            import onnxruntime as ort  # lazy: ONNX Runtime, only for the onnx check

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                why = "this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu)"
        if why:
            check.note = why
            check.status = "fail" if explicit else "skipped"
            report.checks.append(check)
            continue
        try:
            if name == "torch":
                # lazy: torch, optional for verify
                from medfuse.inference.package import load_package

                dev = _torch_device(device)
                check.device = str(dev)
                model = load_package(root, device=dev).model
                logits = torch_logits(model, mods, feeds, dev)
            elif name == "pt2":
                from medfuse.export.pt2 import load_pt2  # lazy: torch, optional for verify

                dev = _torch_device(device)
                check.device = str(dev)
                module = load_pt2(root / file, dev, trusted=True)
                logits = torch_logits(module, mods, feeds, dev)
            else:
                dev_name = "cuda" if str(device).startswith("cuda") else "cpu"
                if device == "auto":
                    import onnxruntime as ort  # lazy: ONNX Runtime, only for the onnx check

                    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
                    dev_name = "cuda" if has_cuda else "cpu"
                pred = OnnxPredictor(root, device=dev_name, onnx_file=file, verify=False)
                check.device = f"{pred.device} ({pred.session.get_providers()[0]})"
                logits = pred.run(feeds)
                if raw is not None and set(raw) == set(mods):  # the torch-free path end to end
                    # a sample with every modality absent (one of a single-modality package's)
                    # is no usable input to the contract: compared on the graph path only
                    batch = pred.inputs({**raw, "mask": masks}, on_bad_row="missing")
                    full = pred.batch_logits(batch)
                    usable = np.array([not e for e in batch.errors], bool)
                    if full.shape == logits.shape:
                        diff = np.abs(full - logits)[usable]
                        gap = float(diff.max()) if diff.size else 0.0
                        check.note = f"raw -> preprocess -> ORT: max |diff| {gap:.1e}"
                        if gap > tolerance:  # judge the worse of the two paths
                            logits = np.where(usable[:, None], full, logits)
            _judge(check, logits, ref, meta, tolerance, min_agreement)
        except MedfuseError as err:
            check.status, check.note = "fail", str(err)
        except Exception as err:  # a runtime's own failure is a verification failure, reported
            check.status, check.note = "fail", f"{type(err).__name__}: {err}"
        report.checks.append(check)
    return report


def _split_reference(
    root: Path, meta: dict[str, Any], split: str, data_dir: str | Path | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, str]:
    """Raw inputs of a whole split and the PyTorch (fp32, CPU) reference logits on them."""
    # lazy: torch and the data stack, optional for verify
    from medfuse.inference.helpers import package_data
    from medfuse.inference.package import load_package

    pkg = load_package(root, device="cpu")
    spec = pkg.spec
    data = package_data(spec, meta, data_dir, split=split).split(split)
    raw = {m: np.asarray(a, np.float32) for m, a in data.arrays.items()}
    masks = {m: np.asarray(k, np.float32) for m, k in data.masks.items()}
    feeds = feeds_from_raw(meta, raw, masks)
    ref = torch_logits(pkg.model, list(spec.modalities), feeds, "cpu")
    return (
        raw,
        masks,
        ref,
        f"{split} split of {spec.data.source}: {len(ref)} samples (reference: torch fp32 cpu)",
    )


def build_verification(
    package: Any,
    *,
    data_dir: str | Path | None = None,
    n: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> tuple[bytes, dict[str, Any], dict[str, np.ndarray]]:
    """``verification.npz`` bytes, its ``medfuse.json`` record, and the feeds (for export checks).

    Inputs come from the package's validation split; when its data cannot be loaded here they are
    drawn from the stored statistics instead, and the record says so.
    """
    meta, spec = package.meta, package.spec
    modalities = modalities_from_meta(meta)
    try:
        # lazy: torch and the data stack, only for data-derived inputs
        from medfuse.inference.helpers import package_data

        bundle = package_data(spec, meta, data_dir, split="val")
        raw, masks, idx = select_samples(
            bundle.val.arrays, bundle.val.masks, modalities, n=n, seed=seed
        )
        source = f"val split of {spec.data.source}"
    except (MedfuseError, OSError) as err:
        log.warning("verification inputs drawn from the stored statistics: %s", err)
        raw_all, masks_all = random_samples(modalities, meta["preprocessing"], n=n, seed=seed)
        raw, masks, idx = select_samples(raw_all, masks_all, modalities, n=n, seed=seed)
        idx = np.full(len(idx), -1)
        source = f"random from the stored statistics (data unavailable: {err})"
    feeds = feeds_from_raw(meta, raw, masks)
    logits = torch_logits(package.model.cpu().eval(), list(modalities), feeds, "cpu")
    record = {
        "file": VERIFICATION,
        "samples": int(len(logits)),
        "masked": {m: int((masks[m] == 0).sum()) for m in modalities},
        "source": source,
        "reference": "torch fp32 cpu",
        "tolerance": TOLERANCE,
        "min_label_agreement_int8": MIN_AGREEMENT,
        "weights_sha256": sha256_file(package.path / "model.safetensors"),
    }
    payload = verification_bytes(raw, masks, feeds, logits, idx, meta)
    return payload, record, {**feeds, "logits": logits}
