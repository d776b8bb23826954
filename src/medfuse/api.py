"""The Python API: ``train``, ``evaluate``, ``load`` (see ``medfuse.inference.predictor``).

The fit pipeline itself (data, preprocessing, fit, threshold, metrics) is
``medfuse.training.pipeline``; this module parses the arguments, starts the session and writes
the package."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfuse.core.inputs import missing_summary, plausibility_summary
from medfuse.core.package import read_meta
from medfuse.core.spec import Spec, load_spec, parse_spec
from medfuse.data import DataBundle, load_spec_data
from medfuse.data.table import table_run
from medfuse.distributed.strategies import start_session
from medfuse.inference.helpers import package_data, to_tensors
from medfuse.inference.package import save_package
from medfuse.inference.predictor import Predictor, load
from medfuse.training.pipeline import (
    SplitScores,
    check_out,
    fit_preprocessing,
    left_checkpoint,
    package_data_info,
    prepare_data,
    run_fit,
    score_split,
    scores_metrics,
    seed_everything,
    split_metrics,
    threshold_for,
    with_seed,
    work_dir,
)
from medfuse.training.trainer import HISTORY

log = logging.getLogger("medfuse")

__all__ = [
    "TrainResult",
    "evaluate",
    "fit_preprocessing",
    "load_spec_data",
    "package_data_info",
    "package_summary",
    "prepare_data",
    "seed_everything",
    "split_metrics",
    "threshold_for",
    "train",
]


@dataclass
class TrainResult:
    package: Path
    metrics: dict[str, Any]
    seconds: float


def train(
    spec: Spec | dict[str, Any] | str | Path,
    *,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    seed: int | None = None,
    resume: bool = False,
    resume_overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    overrides: list[str] | None = None,
    command: str | None = None,
    strategy: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train the composite a spec describes and save it as a package (returned with its metrics).

    ``out`` must be absent, empty, or (with ``overwrite``) a package; this is checked before
    training. ``resume`` continues an interrupted run from its checkpoint when the spec is the
    one it was trained with, except the fields named in ``resume_overrides`` (``train.*``,
    ``threshold.*``; recorded in the package). ``strategy`` overrides ``train.strategy`` (see
    ``medfuse.distributed``); under torchrun every rank calls this, rank 0 writes the package and
    the other ranks return empty metrics. ``on_epoch(record)`` is called after every epoch
    (experiment tracking, e.g. MLflow)."""
    t0 = time.perf_counter()
    spec = load_spec(spec, overrides) if isinstance(spec, str | Path) else parse_spec(spec)
    spec = with_seed(spec, seed, strategy)
    out = Path(out) if out is not None else Path("runs") / spec.name
    check_out(out, overwrite=overwrite)
    seed_everything(spec.train.seed)
    spec, bundle = prepare_data(spec, data_dir)

    session = start_session(spec, device)  # rank, device, process group (single: no-op)
    workdir = work_dir(out)
    fitted = run_fit(
        spec,
        bundle,
        session,
        workdir=workdir,
        resume=resume,
        resume_overrides=resume_overrides,
        progress=progress,
        on_epoch=on_epoch,
    )
    if fitted.model is None:
        return TrainResult(out, {}, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    extra = {}
    if (workdir / HISTORY).exists():
        extra[HISTORY] = (workdir / HISTORY).read_bytes()
    data_info = package_data_info(bundle)
    data_info["bad_rows"] = len(bundle.info.get("bad_rows", []))
    pkg = save_package(
        out,
        model=fitted.model,
        spec=spec,
        preprocessing=fitted.stats,
        threshold=fitted.threshold,
        metrics=fitted.metrics,
        training=fitted.training_record(bundle, session, seconds, command),
        data_info=data_info,
        extra_files=extra,
        adapter=fitted.adapter,
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return TrainResult(pkg, fitted.metrics, seconds)


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
    overwrite: bool = False,
) -> TrainResult:
    """A table in, a model out: ``fit("cases.csv", label="diagnosis", positive="malignant")``.

    ``table`` is a CSV path or a pandas DataFrame: one row per sample, file paths for images and
    signals, clinical values, the label. Columns are typed and the spec inferred by
    ``medfuse.data.table`` (printed when ``verbose``), saved as ``<out>.spec.yaml`` beside the
    package, and trained with ``train``: ``medfuse train <out>.spec.yaml`` repeats the run.
    A package in ``out`` is replaced only with ``overwrite``; if training fails, the files
    beside it are put back as they were."""

    with table_run(
        table,
        label=label,
        positive=positive,
        out=out,
        overwrite=overwrite,
        id_column=id_column,
        patient_column=patient_column,
        base_dir=base_dir,
        seed=seed,
        overrides=overrides,
        resumable=left_checkpoint,
    ) as (ts, pkg, spec_file):
        if verbose:
            print(f"{ts.describe()}\nspec saved: {spec_file}", flush=True)
        return train(
            spec_file,
            out=pkg,
            device=device,
            progress=progress,
            command=command,
            overwrite=overwrite,
        )


def evaluate(
    package: str | Path,
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    device: str = "auto",
    data: str | Path | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Metrics of a package on a split of its own data source (threshold and calibration applied;
    ``threshold``: another operating point for every row, e.g. one re-chosen on validation by
    ``medfuse evaluate --threshold-method``, on the package's calibrated scale).
    ``data``: a manifest CSV to use instead (the data moved, or an external test set: with every
    row's split ``test`` all of it is evaluated, train and val may be empty); ``data_check`` in
    the result says whether the data matches the fingerprint recorded at training, and
    ``data_rows`` (manifests) how many of the manifest's rows were evaluated and how they were
    split."""

    pred = load(package, device=device, deployed=True)  # an INT8 package: its INT8 model
    bundle = package_data(pred.spec, pred.meta, data_dir, data=data, split=split)
    t = to_tensors(bundle.split(split), pred.meta["preprocessing"])
    scores = score_split(pred.model, pred.spec, t, pred.device)
    return evaluation_record(pred, bundle, split, scores, threshold)


def evaluation_record(
    pred: Predictor,
    bundle: DataBundle,
    split: str,
    scores: SplitScores,
    threshold: float | None = None,
) -> dict[str, Any]:
    """What :func:`evaluate` returns, from ``split`` of ``bundle`` scored by ``pred``
    (``scores``, with its branches: ``medfuse evaluate`` with CIs scores the split once for
    both its tables)."""
    data_split = bundle.split(split)
    # every row (fused, paired / partial, each branch, each modality removed) at the package's
    # temperature: its stored threshold lives on the calibrated scale (medfuse calibrate maps it)
    thr = pred.threshold if threshold is None else float(threshold)
    out = scores_metrics(pred.spec, scores, thr, temperature=pred.temperature)
    out["split"] = split
    out["model"] = pred.scored
    # the rows evaluated with a tabular value imputed (the training mean), as a prediction says
    out["missing_values"] = missing_summary(data_split.arrays, data_split.masks, pred.schema)
    # the rows a prediction would flag (another unit, a value no training row held, a blank
    # image): an external cohort in pounds was scored without a word
    out["plausibility"] = plausibility_summary(data_split, pred.schema)
    out["positive"] = pred.spec.task.positive_class
    out["data_check"] = (bundle.info.get("fingerprint_check") or {}).get(
        split, {"same": None, "differences": ["no fingerprint recorded in this package"]}
    )
    rows = rows_evaluated(bundle.info.get("splits"), split, len(data_split))
    if rows is not None:
        rows["empty_splits"] = list(bundle.info.get("empty_splits") or [])
        out["data_rows"] = rows
    # the stored threshold chosen on little, or inseparable, validation data (a re-chosen one's
    # caution comes with it: medfuse evaluate --threshold-method)
    if threshold is None and (caution := (pred.meta.get("threshold") or {}).get("caution")):
        out["threshold_caution"] = caution
    if out["data_check"].get("same") is not False and (used := used_in_fitting(pred, split)):
        out["optimistic"] = used
    return out


def used_in_fitting(pred: Predictor, split: str) -> str | None:
    """What the package's fitting took from ``split`` of its own data, so that its metrics
    there are optimistic (``None`` for test, the held-out split): train fitted the weights;
    val chose the kept epoch (``train.keep: best``), the threshold and the temperature."""
    if split == "train":
        return "the model was fitted on the train split: its metrics there are optimistic"
    if split != "val":
        return None
    meta = pred.meta
    chose = []
    if pred.spec.train.keep == "best":
        chose.append("the kept epoch (train.keep: best)")
    if (meta.get("threshold") or {}).get("chosen_on") == "val":
        chose.append("the threshold")
    if (meta.get("calibration") or {}).get("method", "none") != "none":
        chose.append("the temperature (medfuse calibrate)")
    if not chose:
        return None
    return (
        f"the val split chose {', '.join(chose)}: its metrics are optimistic; the test split "
        "is the held-out estimate"
    )


def rows_evaluated(splits: dict[str, Any] | None, split: str, n: int) -> dict[str, Any] | None:
    """How many rows of a manifest (its ``info["splits"]``) the ``split`` evaluated (``n``), how
    they were chosen, in words (``text``); with a split drawn by the seed, how to evaluate every
    row. None for a source that is not a manifest."""
    if not splits:
        return None
    total, col = int(splits["rows"]), splits.get("column")
    rec: dict[str, Any] = {"evaluated": n, "rows": total, "split": split, "column": col}
    if col is not None:
        rec["text"] = (
            f"{n} of {total} manifest rows evaluated: those marked {split!r} in column {col!r}"
        )
        return rec
    rec["seed"] = splits.get("seed")
    name = splits.get("split_column") or "split"
    rec["text"] = (
        f"{n} of {total} manifest rows evaluated: the manifest has no column {name!r}, so its "
        f"rows were split by the training seed ({rec['seed']}) and only its {split} split is "
        f"evaluated. To evaluate every row, add a column {name!r} holding {split!r} in every row"
    )
    return rec


def package_summary(path: str | Path) -> dict[str, Any]:
    meta = read_meta(path)
    return {
        "name": meta["name"],
        "task": meta["task"],
        "labels": meta["labels"],
        "parameters": meta.get("parameters"),
    }
