"""The Python API: ``train``, ``evaluate``, ``load`` (see ``medfuse.inference.predictor``)."""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.core.package import read_meta
from medfuse.core.preprocess import channel_axis, fit_stats
from medfuse.core.spec import Spec, complete_spec, load_spec, parse_spec
from medfuse.data import DataBundle, Split, load_data, load_spec_data
from medfuse.inference.helpers import Tensors, predict_logits, to_tensors
from medfuse.inference.package import save_package
from medfuse.training.metrics import SUMMARY_KEYS, choose_threshold, compute_metrics, probabilities
from medfuse.training.trainer import HISTORY

log = logging.getLogger("medfuse")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_data(spec: Spec, data_dir: str | Path | None = None) -> tuple[Spec, DataBundle]:
    """Load the spec's data source and complete the spec (modalities, labels, default branches)."""
    bundle = load_data(
        spec.data.source,
        spec.data.options,
        data_root=data_dir,
        modalities=spec.modalities or None,
        task=spec.task.type,
        on_bad_row=spec.data.on_bad_row,
        seed=spec.train.seed,
    )
    if bundle.task != spec.task.type:
        from medfuse.core.errors import SpecError

        raise SpecError(
            "task.type", f"the data is {bundle.task!r} but the spec says {spec.task.type!r}"
        )
    return complete_spec(spec, bundle.modalities, bundle.labels), bundle


def fit_preprocessing(spec: Spec, train: Split, info: dict[str, Any]) -> dict[str, Any]:
    axes = {
        m: channel_axis(spec.modalities[m].kind, bool(spec.modalities[m].sequence))
        for m in spec.modalities
    }
    stats = fit_stats(train.arrays, train.masks, axes)
    for m, cats in (info.get("categories") or {}).items():
        if cats:
            stats[m]["categories"] = cats
    return stats


def threshold_for(spec: Spec, y_val: np.ndarray, p_val: np.ndarray) -> dict[str, Any]:
    t = spec.threshold
    if spec.task.type != "binary":
        return {"method": "argmax" if spec.task.type == "multiclass" else "fixed", "value": 0.5}
    value = choose_threshold(y_val, p_val, t.method, t.target, t.value)
    return {"method": t.method, "target": t.target, "value": value, "chosen_on": "val"}


def split_metrics(
    model: torch.nn.Module,
    spec: Spec,
    data: Tensors,
    threshold: float,
    device: torch.device,
    *,
    branches: bool = True,
) -> dict[str, Any]:
    """Fused metrics, plus each branch alone (its auxiliary head) and each modality removed."""
    task, labels = spec.task.type, spec.task.labels
    y = data.y.numpy()
    logits, per = predict_logits(model, data, device, bf16=spec.train.bf16, branches=branches)
    out = compute_metrics(task, y, probabilities(task, logits), threshold, labels)
    paired = np.all([data.masks[m].numpy() > 0 for m in spec.modalities], axis=0)
    if not paired.all():  # some samples miss a modality: fully paired subset vs the others
        for key, sel in (("paired", paired), ("partial", ~paired)):
            out[key] = {"n": int(sel.sum())}
            if sel.any():
                p_sel = probabilities(task, logits[sel])
                mm = compute_metrics(task, y[sel], p_sel, threshold, labels)
                out[key].update({k: mm[k] for k in SUMMARY_KEYS if k in mm})
    if branches:
        out["branches"] = {}
        for m, lg in per.items():
            present = data.masks[m].numpy() > 0
            if present.sum() >= 2:
                mm = compute_metrics(
                    task, y[present], probabilities(task, lg[present]), threshold, labels
                )
                out["branches"][m] = {k: mm[k] for k in SUMMARY_KEYS if k in mm}
        if len(spec.modalities) > 1:
            out["without"] = {}
            for m in spec.modalities:
                masks = {k: (torch.zeros_like(v) if k == m else v) for k, v in data.masks.items()}
                inputs = {k: (torch.zeros_like(v) if k == m else v) for k, v in data.inputs.items()}
                lg, _ = predict_logits(
                    model, Tensors(inputs, masks, data.y), device, bf16=spec.train.bf16
                )
                mm = compute_metrics(task, y, probabilities(task, lg), threshold, labels)
                out["without"][m] = {k: mm[k] for k in SUMMARY_KEYS if k in mm}
    return out


@dataclass
class TrainResult:
    package: Path
    metrics: dict[str, Any]
    seconds: float


def package_data_info(bundle: DataBundle) -> dict[str, Any]:
    """What a package records of its data source: name, synthetic or not, file, options."""
    return {k: v for k, v in bundle.info.items() if k in ("name", "synthetic", "file", "options")}


@dataclass
class _Fit:
    """What every model fitted in one ``train`` call shares."""

    session: Any  # medfuse.distributed.strategies.Session
    train: Tensors
    val: Tensors
    resume: bool
    progress: bool | None
    on_epoch: Callable[[dict[str, Any]], None] | None


def _fit_member(
    spec: Spec, fit: _Fit, workdir: Path, *, end: bool = True
) -> tuple[torch.nn.Module | None, list[dict[str, Any]], dict[str, Any] | None]:
    """Build and fit one composite (``spec.ensemble`` is 1); the trained model on rank 0.
    ``end``: end a distributed session afterwards (false for an ensemble's members)."""
    from medfuse.models import build_model

    seed_everything(spec.train.seed)
    model = build_model(spec)
    init_record = None
    if spec.train.init is not None:  # before the trainer (and any resume checkpoint) takes over
        from medfuse.training.init import INIT_RECORD, init_from_package
        from medfuse.training.trainer import CHECKPOINT

        saved = workdir / INIT_RECORD
        if fit.resume and (workdir / CHECKPOINT).exists() and saved.exists():
            init_record = json.loads(saved.read_text())  # the checkpoint has the weights
        else:
            init_record = init_from_package(model, spec.train.init)
            if fit.session.rank == 0:
                workdir.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps(init_record))
    trainer = fit.session.trainer(
        model,
        spec,
        fit.train,
        fit.val,
        workdir=workdir,
        progress=fit.progress,
        on_epoch=fit.on_epoch,
    )
    trainer.fit(resume=fit.resume)
    return fit.session.finish(trainer, end=end), trainer.stage_results, init_record


#: a finished ensemble member in the work directory: its weights, its record in the metadata
MEMBER_DONE = "member{k}.safetensors"


def _fit_ensemble(
    spec: Spec, fit: _Fit, workdir: Path
) -> tuple[torch.nn.Module | None, list[dict[str, Any]], dict[str, Any] | None, list[dict]]:
    """Fit ``spec.ensemble`` members one after another, each as its own run (seed
    ``train.seed + 1000 k``, its own early stopping and checkpoints under ``workdir/member<k>``).
    A finished member is saved in the workdir (one file: its weights, its record in the
    metadata), so ``--resume`` retrains only the unfinished ones. Returns the EnsembleModel
    (rank 0), member 0's stages, its init record, and a record per member."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from medfuse.models import build_model, member_spec

    session = fit.session
    fit = replace(fit, resume=fit.resume or session.restart > 0)  # a torchrun restart resumes
    if not fit.resume and session.rank == 0:  # a fresh run: nothing of an earlier one is kept
        (workdir / HISTORY).unlink(missing_ok=True)
        for old in workdir.glob("member*.*"):
            old.unlink()
    ens = build_model(spec) if session.rank == 0 else None
    records: list[dict[str, Any]] = []
    for k in range(spec.ensemble):
        mspec = member_spec(spec, k)
        done = workdir / MEMBER_DONE.format(k=k)
        rec = None  # rank 0 reads its disk; every rank follows its decision
        if session.rank == 0 and fit.resume and done.exists():
            with safe_open(str(done), framework="pt") as f:
                rec = json.loads(f.metadata()["record"])
            ens.members[k].load_state_dict(load_file(str(done)), strict=True)  # type: ignore[union-attr]
        rec = session.agree(rec)
        if rec is not None:
            log.info("ensemble member %d/%d: already trained, kept", k + 1, spec.ensemble)
        else:
            log.info("ensemble member %d/%d (seed %d)", k + 1, spec.ensemble, mspec.train.seed)
            t_k = time.perf_counter()
            mdir = workdir / f"member{k}"
            model, stages, init_k = _fit_member(mspec, fit, mdir, end=False)
            seconds = round(time.perf_counter() - t_k, 2)
            rec = {"seed": mspec.train.seed, "stages": stages, "init": init_k, "seconds": seconds}
            if model is not None:  # rank 0
                ens.members[k].load_state_dict(model.state_dict(), strict=True)  # type: ignore[union-attr]
                state = {n: v.detach().cpu().contiguous() for n, v in model.state_dict().items()}
                workdir.mkdir(parents=True, exist_ok=True)
                _merge_history(workdir / HISTORY, mdir / HISTORY, k)  # before: a retry redoes it
                tmp = done.with_name(done.name + ".tmp")
                save_file(state, str(tmp), metadata={"record": json.dumps(rec)})
                tmp.replace(done)  # atomic: a member file is whole or absent
                shutil.rmtree(mdir, ignore_errors=True)
        records.append(rec)
    session.end()
    init_record = records[0].get("init")
    records = [{key: v for key, v in r.items() if key != "init"} for r in records]
    if ens is None:
        return None, [], init_record, records
    return ens.to(session.device), records[0]["stages"], init_record, records


def _merge_history(merged: Path, member_file: Path, k: int) -> None:
    """Member ``k``'s epochs into the ensemble's ``metrics.jsonl`` (tagged ``member``), replacing
    any of its lines an interrupted earlier attempt left there."""
    keep = []
    if merged.exists():
        keep = [x for x in merged.read_text().splitlines() if json.loads(x).get("member") != k]
    if member_file.exists():
        keep += [
            json.dumps({"member": k, **json.loads(x)}) for x in member_file.read_text().splitlines()
        ]
    tmp = merged.with_name(merged.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    tmp.replace(merged)


def train(
    spec: Spec | dict[str, Any] | str | Path,
    *,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    seed: int | None = None,
    resume: bool = False,
    progress: bool | None = None,
    overrides: list[str] | None = None,
    command: str | None = None,
    strategy: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train the composite a spec describes and save it as a package (returned with its metrics).

    ``strategy`` overrides ``train.strategy`` (see ``medfuse.distributed``); under torchrun every
    rank calls this, rank 0 writes the package and the other ranks return empty metrics.
    ``on_epoch(record)`` is called after every epoch (experiment tracking, e.g. MLflow)."""
    t0 = time.perf_counter()
    if isinstance(spec, str | Path):
        spec = load_spec(spec, overrides)
    else:
        spec = parse_spec(spec)
    if seed is not None:
        d = spec.to_dict()
        d["train"]["seed"] = int(seed)
        spec = parse_spec(d)
    if strategy is not None:
        d = spec.to_dict()
        d["train"]["strategy"] = strategy
        spec = parse_spec(d)
    seed_everything(spec.train.seed)
    spec, bundle = prepare_data(spec, data_dir)
    from medfuse.distributed.strategies import start_session

    session = start_session(spec, device)  # rank, device, process group (single: no-op)
    dev = session.device
    out = Path(out) if out is not None else Path("runs") / spec.name
    workdir = out.with_name(out.name + ".train")
    stats = fit_preprocessing(spec, bundle.train, bundle.info)
    train_t, val_t = to_tensors(bundle.train, stats), to_tensors(bundle.val, stats)
    fit = _Fit(session, train_t, val_t, resume, progress, on_epoch)
    if spec.ensemble == 1:
        model, stage_results, init_record = _fit_member(spec, fit, workdir)
        member_records = None
    else:
        model, stage_results, init_record, member_records = _fit_ensemble(spec, fit, workdir)
    if model is None:
        return TrainResult(out, {}, time.perf_counter() - t0)
    model = model.eval()
    task = spec.task.type
    val_logits, _ = predict_logits(model, val_t, dev, bf16=spec.train.bf16)
    thr = threshold_for(spec, bundle.val.y, probabilities(task, val_logits))
    metrics = {"val": split_metrics(model, spec, val_t, thr["value"], dev)}
    if bundle.test is not None:
        metrics["test"] = split_metrics(
            model, spec, to_tensors(bundle.test, stats), thr["value"], dev
        )
    seconds = time.perf_counter() - t0
    training = {
        "stages": stage_results,
        "seconds": round(seconds, 2),
        "device": str(dev),
        **session.record(),
        "seed": spec.train.seed,
        "samples": {
            "train": len(bundle.train),
            "val": len(bundle.val),
            "test": len(bundle.test) if bundle.test else 0,
        },
        "command": command,
    }
    if init_record is not None:
        training["init"] = init_record
    if member_records is not None:
        training["members"] = member_records
    extra = {}
    if (workdir / HISTORY).exists():
        extra[HISTORY] = (workdir / HISTORY).read_bytes()
    data_info = package_data_info(bundle)
    data_info["bad_rows"] = len(bundle.info.get("bad_rows", []))
    pkg = save_package(
        out,
        model=model,
        spec=spec,
        preprocessing=stats,
        threshold=thr,
        metrics=metrics,
        training=training,
        data_info=data_info,
        extra_files=extra,
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return TrainResult(pkg, metrics, seconds)


def fit(
    table: Any,
    label: str,
    positive: str | None = None,
    *,
    out: str | Path | None = None,
    id_column: str | None = None,
    patient_column: str | None = None,
    base_dir: str | Path | None = None,
    seed: int = 0,
    overrides: list[str] | None = None,
    device: str = "auto",
    progress: bool | None = None,
    verbose: bool = True,
    command: str | None = None,
) -> TrainResult:
    """A table in, a model out: ``fit("cases.csv", label="diagnosis", positive="malignant")``.

    ``table`` is a CSV path or a pandas DataFrame: one row per sample, file paths for images and
    signals, clinical values, the label. Columns are typed and the spec inferred by
    ``medfuse.data.table`` (printed when ``verbose``), saved as ``<out>.spec.yaml`` beside the
    package, and trained with ``train``: ``medfuse train <out>.spec.yaml`` repeats the run."""
    from medfuse.data.table import write_table_spec

    ts, out, spec_file = write_table_spec(
        table,
        label=label,
        positive=positive,
        out=out,
        id_column=id_column,
        patient_column=patient_column,
        base_dir=base_dir,
        seed=seed,
        overrides=overrides,
    )
    if verbose:
        print(f"{ts.describe()}\nspec saved: {spec_file}", flush=True)
    return train(spec_file, out=out, device=device, progress=progress, command=command)


def evaluate(
    package: str | Path,
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Metrics of a package on a split of its own data source (threshold and calibration applied)."""
    from medfuse.inference.predictor import load

    pred = load(package, device=device)
    spec = pred.spec
    bundle = load_spec_data(spec, data_dir)
    data = bundle.split(split)
    stats = pred.meta["preprocessing"]
    t = to_tensors(data, stats)
    out = split_metrics(pred.model, spec, t, pred.threshold, pred.device)
    if pred.temperature != 1.0:
        task = spec.task.type
        p = pred.predict_proba(data)
        cal = compute_metrics(task, data.y, p, pred.threshold, spec.task.labels)
        # the stored threshold lives on the calibrated scale (medfuse calibrate maps it), so
        # every threshold metric, not only ECE/Brier, comes from the calibrated probabilities
        out.update({k: v for k, v in cal.items() if k in out})
    out["split"] = split
    return out


def package_summary(path: str | Path) -> dict[str, Any]:
    meta = read_meta(path)
    return {
        "name": meta["name"],
        "task": meta["task"],
        "labels": meta["labels"],
        "parameters": meta.get("parameters"),
    }
