"""The model package: a directory that every verb after training reads and writes.

``medfuse.json`` (spec, labels, preprocessing, threshold, calibration, versions, records, and the
sha256 of every other file), ``model.safetensors`` (never pickle), ``metrics.json``, ``README.md``.
Writes are atomic: a package is assembled in a hidden sibling directory and renamed into place, and
``medfuse.json`` (which lists the checksums) is the last file written, so an interrupted save never
leaves a directory that looks like a complete package.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medfuse.core.decision import reference_decisions
from medfuse.core.errors import MedfuseError, PackageError, SpecError
from medfuse.core.paths import output_dir
from medfuse.core.spec import parse_spec

META = "medfuse.json"
WEIGHTS = "model.safetensors"
#: the adapter weights of ``train.peft.store: adapter``, beside the merged ``model.safetensors``
ADAPTER = "adapter.safetensors"
FORMAT = "medfuse-package"
FORMAT_VERSION = 1
#: the package's signature (written by ``medfuse sign``): never part of the digest it signs
SIGNATURE = "model.sig"
#: the fields every decision depends on: a package without one of them is refused by name
REQUIRED = ("task", "labels", "spec", "preprocessing", "threshold")


# ---- the schema of medfuse.json --------------------------------------------------------------


class _Open(BaseModel):
    """Known fields are typed and checked; other (informational) fields are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=False)


class Threshold(_Open):
    """The operating point: binary ``P >= value`` is positive; multilabel per label; multiclass
    decides by argmax (``value`` is stored but unused)."""

    method: str = "fixed"
    value: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    target: float | None = None


class Calibration(_Open):
    method: str = "none"
    temperature: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)


class Stats(_Open):
    """Normalisation statistics of one modality (fit on the training split)."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)
    channel_axis: int = Field(ge=0)

    @model_validator(mode="after")
    def _finite(self) -> Stats:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values, std {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean):
            raise ValueError("mean must be finite")
        if not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError("std must be finite and > 0")
        return self


class Adapter(_Open):
    """``train.peft``'s adapter weights kept beside the merged ones (``store: adapter``): the
    file holding them, the method and its peft config, the branches adapted, the pretrained
    weights they apply to and the sha256 of the ``model.safetensors`` they were merged into."""

    file: str = Field(min_length=1)
    method: Literal["lora", "ia3"]
    branches: list[str] = Field(min_length=1)
    config: dict[str, Any]
    parameters: int = Field(ge=1)
    merged_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PackageMeta(_Open):
    """``medfuse.json``, validated on every load (``read_meta``): the decision-critical fields are
    typed with their ranges; informational fields (versions, training, data, ...) pass through."""

    format: Literal["medfuse-package"] = "medfuse-package"
    format_version: int = Field(default=FORMAT_VERSION, ge=0, le=FORMAT_VERSION)
    name: str = ""
    task: Literal["binary", "multiclass", "multilabel"]
    labels: list[str] = Field(min_length=2)
    spec: dict[str, Any]
    preprocessing: dict[str, Stats]
    threshold: Threshold
    #: old packages written before calibration existed: identity (temperature 1)
    calibration: Calibration = Field(default_factory=Calibration)
    files: dict[str, str] = Field(default_factory=dict)
    runtime: dict[str, Any] | None = None
    adapter: Adapter | None = None

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            dup = sorted({x for x in v if v.count(x) > 1})
            raise ValueError(f"labels must be unique; repeated: {dup}")
        if any(not x.strip() for x in v):
            raise ValueError("labels must be non-empty strings")
        return v

    @field_validator("files")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, digest in v.items():
            if name in (META, SIGNATURE) or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"invalid package file name {name!r}")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{name}: not a sha256 hex digest")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PackageMeta:
        if self.task == "binary" and len(self.labels) != 2:
            raise ValueError(f"labels: a binary task has 2 labels; got {len(self.labels)}")
        task = self.spec.get("task") or {}
        if task.get("type", self.task) != self.task:
            raise ValueError(f"task {self.task!r} differs from the spec's {task.get('type')!r}")
        if task.get("labels") is not None and list(task["labels"]) != self.labels:
            raise ValueError(f"labels {self.labels} differ from the spec's {task['labels']}")
        mods = list((self.spec.get("modalities") or {}).keys())
        missing = [m for m in mods if m not in self.preprocessing]
        if missing:
            raise ValueError(f"preprocessing: no statistics for modality {missing}")
        if self.adapter is not None:
            if self.files and self.adapter.file not in self.files:
                raise ValueError(
                    f"adapter.file {self.adapter.file!r} is not among the package's files "
                    f"({', '.join(sorted(self.files))}): removed, or the manifest edited"
                )
            unknown = [b for b in self.adapter.branches if b not in mods]
            if mods and unknown:
                raise ValueError(f"adapter.branches {unknown} are not modalities {mods}")
        return self


def validate_meta(meta: dict[str, Any], where: str | Path = META) -> PackageMeta:
    """``meta`` as a :class:`PackageMeta`; a missing or out-of-range field is a PackageError
    naming the field (never a KeyError, never a silent default for a decision)."""
    if not isinstance(meta, dict):
        raise PackageError(f"{where}: {META} must hold a JSON object; got {type(meta).__name__}")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise PackageError(
            f"{where}: required field(s) {', '.join(missing)} missing from {META}; "
            "the package is damaged or was edited by hand (write it again with medfuse)"
        )
    try:
        typed = PackageMeta.model_validate(meta)
    except ValidationError as err:
        lines = []
        for e in err.errors()[:5]:
            loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
            lines.append(f"{loc}: {e['msg']}")
        raise PackageError(
            f"{where}: invalid {META}: " + "; ".join(lines) + " (refusing to load it)"
        ) from None
    try:
        parse_spec(meta["spec"])
    except MedfuseError as err:
        raise PackageError(f"{where}: the stored spec does not parse: {err}") from None
    return typed


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    # lazy: stdlib, kept off the --help path
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("medfuse", "torch", "numpy", "onnx", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def package_out(path: str | Path, *, overwrite: bool = True) -> Path:
    """``path`` checked as the directory a package will be written to (call before any work):
    absent, empty or (``overwrite``) a package already, where it can be written. A verb that
    writes a new package (``--out``) passes the user's ``--overwrite``; a package rewritten in
    place is replaced by design."""
    dst = output_dir(path, "--out")  # a file in the way, a folder that is not writable
    if dst.exists() and not (dst / META).exists() and any(dst.iterdir()):
        raise SpecError(
            "--out",
            f"{dst} exists and is not a medfuse package (no {META}); refusing to replace it. "
            "Choose another directory",
        )
    if not overwrite and (dst / META).exists():
        raise SpecError(
            "--out",
            f"{dst} holds a package already; pass --overwrite (overwrite=True) to replace it, "
            "or choose another directory",
        )
    return dst


def write_package(
    path: str | Path, meta: dict[str, Any], files: dict[str, bytes | str | Path]
) -> Path:
    """Atomically (re)write a package directory from ``files`` (bytes, text or a source path)."""
    dst = package_out(path)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as err:
        raise PackageError(
            f"{dst}: cannot create the package folder ({err.strerror or err})"
        ) from None
    try:
        checksums: dict[str, str] = {}
        for name, content in files.items():
            if name == META or "/" in name or name.startswith("."):
                raise PackageError(f"invalid package file name {name!r}")
            target = tmp / name
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                data = content.encode() if isinstance(content, str) else content
                with open(target, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            checksums[name] = sha256_file(target)
        meta = dict(meta)
        meta["format"], meta["format_version"] = FORMAT, FORMAT_VERSION
        meta["files"] = dict(sorted(checksums.items()))
        meta = seal_meta(json.loads(json.dumps(meta, default=_json_default)))
        with open(tmp / META, "w") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = None
        if dst.exists():
            package_out(dst)  # again: it may have changed while the files were written
            old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            dst.rename(old)
        tmp.rename(dst)
        _fsync_dir(dst.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return dst
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json_default(o: Any) -> Any:
    # lazy: numpy, not for --help
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: ``medfuse.json``'s digest of its own content (every other key), written by medfuse's one
#: writer (:func:`write_package`): a hand edit (a threshold moved in a text editor) is refused
#: on load instead of deciding silently. It catches edits, not attackers (who can recompute it;
#: signatures catch them), and packages of releases before it have none.
META_DIGEST = "meta_sha256"


def meta_digest(meta: dict[str, Any]) -> str:
    """The sha256 of ``meta`` without :data:`META_DIGEST`, as canonical JSON."""
    body = {k: v for k, v in meta.items() if k != META_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def package_id(meta: dict[str, Any]) -> str:
    """A short identity of a package's exact state (its weights' and every file's checksums,
    threshold, temperature, statistics): the first 16 hex digits of ``medfuse.json``'s digest
    (a package of an earlier release, without one: of its content as read). Two packages of
    one name, before and after ``medfuse calibrate``, have two ids: every prediction names
    the one it came from."""
    return str(meta.get(META_DIGEST) or meta_digest(meta))[:16]


def seal_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` (as JSON would read it back) with its :data:`META_DIGEST`."""
    return {**meta, META_DIGEST: meta_digest(meta)}


def read_meta(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read ``medfuse.json``; with ``verify`` every listed file must exist with its sha256."""
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"{root} is not a directory; a model package is a directory with {META}")
    mfile = root / META
    if not mfile.exists():
        raise PackageError(f"{root} has no {META}: not a medfuse package (or an interrupted save)")
    try:
        meta = json.loads(mfile.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackageError(f"{mfile} is not valid JSON ({err}); the package is damaged") from None
    except OSError as err:
        raise PackageError(f"{mfile} cannot be read ({err.strerror or err})") from None
    if not isinstance(meta, dict):
        raise PackageError(
            f"{mfile} must hold a JSON object; got {type(meta).__name__}: the package is damaged"
        )
    if meta.get("format") != FORMAT:
        raise PackageError(
            f"{mfile} is not a medfuse package manifest (format={meta.get('format')!r})"
        )
    if not isinstance(meta.get("format_version", 0), int) or meta.get("format_version", 0) > (
        FORMAT_VERSION
    ):
        raise PackageError(
            f"{root} uses package format {meta['format_version']!r}; this medfuse reads "
            f"<= {FORMAT_VERSION}"
        )
    if verify and META_DIGEST in meta and meta_digest(meta) != meta[META_DIGEST]:
        raise PackageError(
            f"{mfile} was changed after medfuse wrote it (its content no longer matches its "
            f"{META_DIGEST}): a hand edit or a damaged copy, refused rather than decided with. "
            "Change a threshold or temperature with medfuse calibrate (--threshold-method fixed "
            "--value V), which re-derives the stored decisions; otherwise restore the package"
        )
    typed = validate_meta(meta, mfile)
    meta["calibration"] = typed.calibration.model_dump()  # defaults of old packages filled
    if verify:
        verify_files(root, meta)
    return meta


def typed_meta(meta: dict[str, Any] | PackageMeta) -> PackageMeta:
    """The typed view of a manifest already read by :func:`read_meta`."""
    return meta if isinstance(meta, PackageMeta) else validate_meta(meta)


def verify_files(root: Path, meta: dict[str, Any]) -> None:
    for name, digest in meta.get("files", {}).items():
        f = root / name
        if not f.exists():
            raise PackageError(f"{root}: {name} is listed in {META} but missing")
        got = sha256_file(f)
        if got != digest:
            raise PackageError(
                f"{root}: {name} does not match its recorded sha256 (tampered or truncated; "
                f"expected {digest[:12]}..., got {got[:12]}...); refusing to load it"
            )


def package_files(root: Path, meta: dict[str, Any]) -> dict[str, Path]:
    return {name: root / name for name in meta.get("files", {})}


VERIFICATION = "verification.npz"


def package_arrays(
    source: Path | bytes, where: str | Path, need: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Every array of a package's ``.npz`` file (``verification.npz``), or a PackageError
    naming it: truncated or corrupt, a pickled (object) array, or an array of ``need`` missing."""
    # lazy: numpy, not for --help
    import numpy as np

    try:
        with np.load(
            io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False
        ) as d:
            arrays = {k: d[k] for k in d.files}
    except Exception as err:  # the archive's own failure (BadZipFile, EOFError, zlib, ...)
        raise PackageError(
            f"{where}: not a readable .npz ({type(err).__name__}: {err}); the package is "
            "damaged (`medfuse export --refresh` rebuilds verification.npz)"
        ) from None
    missing = [k for k in need if k not in arrays]
    if missing:
        raise PackageError(
            f"{where}: arrays {missing} missing; the package is damaged (`medfuse export "
            "--refresh` rebuilds verification.npz)"
        )
    return arrays


#: the fields whose change changes the package's decisions on its verification inputs
DECISION_FIELDS = frozenset({"task", "labels", "threshold", "calibration"})


def _refresh_decisions(
    meta: dict[str, Any], content: bytes | str | Path, where: str | Path = VERIFICATION
) -> bytes | str | Path:
    """A legitimate writer (calibrate, ...) that changes a decision field re-derives the stored
    reference decisions of ``verification.npz`` (an edit by hand does not, and verify fails)."""
    # lazy: numpy, not for --help
    import numpy as np

    raw = content.read_bytes() if isinstance(content, Path) else content
    raw = raw.encode() if isinstance(raw, str) else raw
    arrays = package_arrays(raw, where)
    if "decisions" not in arrays:
        return content
    typed = validate_meta(meta)
    arrays.update(
        reference_decisions(
            typed.task,
            arrays["logits"],
            typed.labels,
            typed.threshold.value,
            typed.calibration.temperature,
        )
    )
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def update_package(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    add: dict[str, bytes | str | Path] | None = None,
    remove: tuple[str, ...] = (),
    meta_updates: dict[str, Any] | None = None,
) -> Path:
    """Copy a verified package to ``dst`` (or rewrite it in place) with files added or replaced."""
    src = Path(src)
    meta = read_meta(src)
    files: dict[str, bytes | str | Path] = {
        n: p
        for n, p in package_files(src, meta).items()
        if n not in remove and n not in (add or {})
    }
    files.update(add or {})
    meta.update(meta_updates or {})
    if set(meta_updates or {}) & DECISION_FIELDS and VERIFICATION in files:
        files[VERIFICATION] = _refresh_decisions(meta, files[VERIFICATION], src / VERIFICATION)
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    target = Path(dst) if dst is not None else src
    if target.resolve() == src.resolve():
        # sources are inside the directory being replaced: stage them in memory first
        files = {n: (c.read_bytes() if isinstance(c, Path) else c) for n, c in files.items()}
    return write_package(target, meta, files)
