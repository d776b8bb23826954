"""The ``Predictor`` protocol every runtime implements, and the shared implementation.

``PredictorBase`` holds everything that does not depend on the runtime: the package facts
(labels, task, threshold, temperature, positive class), the one input coercion
(``medfuse.core.inputs.coerce``), probabilities and decisions (``medfuse.core.decision``), and
prediction rows with their per-modality presence, reasons and plausibility flags. A runtime
(ONNX Runtime in ``medfuse.core.onnx``, PyTorch in ``medfuse.inference.predictor``) only adds
``_batch_logits(arrays, masks)`` on raw arrays of at most ``batch_size`` rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medfuse.core.decision import NONFINITE, decide, nonfinite_rows, probabilities
from medfuse.core.errors import DataError, SpecError
from medfuse.core.inputs import (
    ON_BAD_ROW,
    Batch,
    Schema,
    coerce,
    is_streamed,
    missing_text,
    split_parts,
    tally_missing,
)
from medfuse.core.paths import write_output


@runtime_checkable
class Predictor(Protocol):
    """What every medfuse predictor offers, whatever runs the model."""

    meta: dict[str, Any]
    runtime: str

    @property
    def labels(self) -> list[str]: ...
    @property
    def task(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def temperature(self) -> float: ...
    @property
    def positive(self) -> str | None: ...
    @property
    def schema(self) -> Schema: ...

    def inputs(
        self, samples: Any, *, on_bad_row: str = "fail", base_dir: str | Path | None = None
    ) -> Batch: ...
    def predict_proba(
        self,
        samples: Any,
        *,
        batch_size: int = 256,
        on_bad_row: str = "fail",
        base_dir: str | Path | None = None,
    ) -> np.ndarray: ...
    def predict(
        self,
        samples: Any,
        *,
        batch_size: int = 256,
        on_bad_row: str = "fail",
        base_dir: str | Path | None = None,
    ) -> list[Any]: ...
    def predict_rows(
        self,
        samples: Any,
        *,
        batch_size: int = 256,
        on_bad_row: str = "fail",
        base_dir: str | Path | None = None,
    ) -> Predictions: ...
    def predict_table(
        self,
        samples: Any,
        *,
        batch_size: int = 256,
        on_bad_row: str = "fail",
        base_dir: str | Path | None = None,
    ) -> list[dict[str, Any]]: ...


@dataclass
class Predictions:
    """Probabilities and decisions for a ``Batch``: ``proba`` is NaN and ``labels[i]`` None for
    a row that cannot be predicted, whose ``errors[i]`` says why."""

    batch: Batch
    proba: np.ndarray
    labels: list[Any]
    errors: list[str]
    task: str
    label_names: list[str]
    threshold: float

    def __len__(self) -> int:
        return len(self.batch)

    def columns(self) -> list[str]:
        """``id, prob_<label>..., label[, threshold], present_<m>..., reason_<m>...,
        missing_values, flags, error`` (binary tasks report P(positive) only)."""
        return table_columns(self.task, self.label_names, list(self.batch.masks))

    def rows(self) -> list[dict[str, Any]]:
        b, out = self.batch, []
        names = self.label_names
        for i in range(len(b)):
            r: dict[str, Any] = {"id": b.ids[i]}
            p = self.proba[i]
            if self.task == "binary":
                r[f"prob_{names[1]}"] = float(p)
            else:
                for j, lab in enumerate(names):
                    r[f"prob_{lab}"] = float(p[j])
            lab = self.labels[i]
            r["label"] = ";".join(lab) if isinstance(lab, list) else ("" if lab is None else lab)
            if self.task == "binary":
                r["threshold"] = self.threshold
            for m in b.masks:
                r[f"present_{m}"] = int(b.masks[m][i] > 0)
            for m in b.masks:
                r[f"reason_{m}"] = b.reasons[m][i]
            r["missing_values"] = "; ".join(b.missing_values[i])
            r["flags"] = "; ".join(b.flags[i])
            r["error"] = self.errors[i]
            out.append(r)
        return out

    def affected(self) -> list[dict[str, str]]:
        """One entry per row that was not predicted from all it was given, as given: its id and
        what happened (an error, an unusable input, a plausibility flag)."""
        return affected_rows(self.batch, self.errors)


def affected_rows(batch: Batch, errors: list[str] | None = None) -> list[dict[str, str]]:
    """The rows of ``batch`` not used as given: id and what happened (an error, from
    ``errors`` else the batch's own; an unusable input; a plausibility flag). A tabular cell
    without a value is not listed: it is a missing value, as in training."""
    errs = batch.errors if errors is None else errors
    out = []
    for i in range(len(batch)):
        what = [errs[i]] if errs[i] else []
        what += [f"{m} missing: {r[i]}" for m, r in batch.reasons.items() if r[i]]
        what += batch.flags[i]
        if what:
            out.append({"id": batch.ids[i], "issue": " | ".join(what)})
    return out


#: the end-of-run summary lists affected rows up to this many, else names the file listing them
MAX_LISTED = 20


def attention_summary(
    affected: list[dict[str, str]], rows: int, issues_file: Path | None = None
) -> list[str]:
    """The end-of-run lines of a prediction run: every affected row (an error, an unusable input,
    a plausibility flag) up to ``MAX_LISTED``, or the file that lists them all."""
    if not affected:
        return []
    head = f"{len(affected)} of {rows} rows need attention"
    if issues_file is not None:
        return [f"{head}: listed in {issues_file}"]
    listed = [f"  {a['id']}: {a['issue']}" for a in affected[:MAX_LISTED]]
    more = len(affected) - MAX_LISTED
    tail = [f"  ... and {more} more (--issues FILE lists them all)"] if more > 0 else []
    return [f"{head}:", *listed, *tail]


@dataclass
class RunResult:
    """What a prediction run over a file did (``medfuse predict``, ``python -m medfuse.runtime``):
    rows written, the rows not predicted from all they gave (an error, an unusable input, a
    plausibility flag), and the file that lists them when there are more than ``MAX_LISTED``."""

    rows: int
    affected: list[dict[str, str]] = field(default_factory=list)
    issues_file: Path | None = None
    #: rows with a tabular value missing (each standardised to the training mean), per column
    #: (``medfuse.core.inputs.missing_summary``)
    missing: dict[str, Any] = field(default_factory=lambda: tally_missing([]))
    #: the package the predictions came from (``medfuse.core.package.package_id``)
    package: str = ""

    def __int__(self) -> int:
        return self.rows

    def take(self, res: Predictions) -> None:
        """Count one batch's affected rows and missing tabular values."""
        self.affected.extend(res.affected())
        self.missing = tally_missing(res.batch.missing_values, self.missing)

    def summary(self) -> list[str]:
        """The end-of-run summary: how many rows miss a tabular value (a column empty in every
        row is otherwise seen only in the ``missing_values`` column), every affected row, or
        the file that lists them."""
        lines = [missing_text(self.missing)] if self.missing["rows"] else []
        return lines + attention_summary(self.affected, self.rows, self.issues_file)

    def list_issues(
        self, out: str | Path | None, issues_out: str | Path | None = None
    ) -> RunResult:
        """Beyond ``MAX_LISTED`` affected rows, write them all (CSV: id, issue) to
        ``issues_out`` (default: ``<out>.issues.csv``; none when both are None) and record it."""
        target = Path(issues_out) if issues_out else None
        if target is None and out is not None:
            target = Path(out).with_name(Path(out).name + ".issues.csv")
        if len(self.affected) > MAX_LISTED and target is not None:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["id", "issue"], lineterminator="\n")
            w.writeheader()
            w.writerows(self.affected)
            self.issues_file = write_output(target, buf.getvalue(), "--issues")
        return self


def table_columns(task: str, labels: list[str], modalities: list[str]) -> list[str]:
    probs = [f"prob_{labels[1]}"] if task == "binary" else [f"prob_{x}" for x in labels]
    return [
        "id",
        *probs,
        "label",
        *(["threshold"] if task == "binary" else []),
        *(f"present_{m}" for m in modalities),
        *(f"reason_{m}" for m in modalities),
        "missing_values",
        "flags",
        "error",
    ]


class PredictorBase:
    """The runtime-independent part of a predictor (see the module's docstring)."""

    meta: dict[str, Any]
    runtime: str = "?"
    path: Path

    # -- package facts --
    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"]["value"])  # present: read_meta's schema checked it

    @property
    def temperature(self) -> float:
        return float(self.meta["calibration"]["temperature"])  # read_meta fills it

    @property
    def positive(self) -> str | None:
        """The positive class of a binary task (the spec's ``task.positive`` when recorded, else
        the second label: labels are [negative, positive]); None otherwise."""
        if self.task != "binary":
            return None
        spec_task = (self.meta.get("spec") or {}).get("task") or {}
        return str(spec_task.get("positive") or self.labels[1])

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "binary" else len(self.labels)

    @property
    def schema(self) -> Schema:
        s = getattr(self, "_schema", None)
        if s is None:
            s = Schema.from_meta(self.meta)
            self._schema = s
        return s

    # -- the runtime's part --
    def _batch_logits(self, arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError

    # -- shared --
    def inputs(
        self,
        samples: Any,
        *,
        on_bad_row: str = "fail",
        base_dir: str | Path | None = None,
        unseen_category: str | None = None,
    ) -> Batch:
        """``samples`` as a ``Batch`` through the one input contract."""
        return coerce(
            samples,
            self.schema,
            on_bad_row=on_bad_row,
            base_dir=base_dir,
            unseen_category=unseen_category,
        )

    def batch_logits(self, batch: Batch, *, batch_size: int = 256) -> np.ndarray:
        """Logits ``(N, K)`` of a coerced batch; NaN for rows that cannot be predicted."""
        if batch_size < 1:
            raise SpecError("--batch-size", f"must be at least 1; got {batch_size}")
        n = len(batch)
        ok = np.array([not e for e in batch.errors], bool)
        out = np.full((n, self.num_outputs), np.nan, np.float32)
        idx = np.flatnonzero(ok)
        for s in range(0, len(idx), batch_size):
            sel = idx[s : s + batch_size]
            lg = self._batch_logits(
                {m: a[sel] for m, a in batch.arrays.items()},
                {m: k[sel] for m, k in batch.masks.items()},
            )
            out[sel] = np.asarray(lg, np.float32).reshape(len(sel), -1)
        return out

    def logits(
        self, samples: Any, *, batch_size: int = 256, on_bad_row: str = "fail"
    ) -> np.ndarray:
        if is_streamed(samples):  # a split larger than memory: its rows a part at a time
            parts = [
                self.batch_logits(self.inputs(p, on_bad_row=on_bad_row), batch_size=batch_size)
                for p in split_parts(samples)
            ]
            return np.concatenate(parts) if parts else np.zeros((0, self.num_outputs), np.float32)
        return self.batch_logits(self.inputs(samples, on_bad_row=on_bad_row), batch_size=batch_size)

    def predict_batch(
        self, batch: Batch, *, batch_size: int = 256, on_bad_row: str = "fail"
    ) -> Predictions:
        """Probabilities and labels for a coerced batch. A non-finite logit or probability is
        an error (``on_bad_row="fail"``) or a row without a label whose ``error`` says why."""
        if on_bad_row not in ON_BAD_ROW:
            raise DataError(
                f"on_bad_row must be one of {', '.join(ON_BAD_ROW)}; got {on_bad_row!r}"
            )
        logits = self.batch_logits(batch, batch_size=batch_size)
        with np.errstate(all="ignore"):
            p = probabilities(self.task, logits, self.temperature)
        errors = list(batch.errors)
        # an infinite logit is a "certain" 0 or 1 after the sigmoid: non-finite all the same
        nonfinite = set(nonfinite_rows(p).tolist()) | set(nonfinite_rows(logits).tolist())
        bad = [i for i in sorted(nonfinite) if not errors[i]]
        if bad and on_bad_row == "fail":
            ids = ", ".join(batch.ids[i] for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise DataError(f"{ids}: {NONFINITE}")
        for i in bad:
            errors[i] = NONFINITE
        p = np.asarray(p, np.float64)
        if len(bad) or any(errors):
            p[[i for i, e in enumerate(errors) if e]] = np.nan
        labels = decide(self.task, p, self.labels, self.threshold, nonfinite="none")
        return Predictions(batch, p, labels, errors, self.task, self.labels, self.threshold)

    def _by_part(
        self, split: Any, batch_size: int, on_bad_row: str, base_dir: str | Path | None = None
    ) -> Iterator[Predictions]:
        """A streamed split (larger than memory) predicted ``STREAMED_ROWS`` rows at a time;
        each part's values are dropped once the caller has taken what it needs."""
        for part in split_parts(split):
            yield self.predict_rows(
                part, batch_size=batch_size, on_bad_row=on_bad_row, base_dir=base_dir
            )

    def predict_rows(
        self,
        samples: Any,
        *,
        batch_size: int = 256,
        on_bad_row: str = "fail",
        base_dir: str | Path | None = None,
    ) -> Predictions:
        """``base_dir``: the folder relative file paths in in-memory samples (dicts, a
        DataFrame) are read from; default: the training manifest's folder when it exists here
        (a path naming a file there and another in the working directory is refused), else the
        working directory. A manifest file's paths are relative to its own folder."""
        return self.predict_batch(
            self.inputs(samples, on_bad_row=on_bad_row, base_dir=base_dir),
            batch_size=batch_size,
            on_bad_row=on_bad_row,
        )

    def predict_proba(
        self,
        samples: Any,
        *,
        batch_size: int = 256,
        on_bad_row: str = "fail",
        base_dir: str | Path | None = None,
    ) -> np.ndarray:
        """Binary: (N,) P(positive label); multiclass/multilabel: (N, K). Calibration applied.
        NaN for a row that cannot be predicted (only with ``on_bad_row="missing"``).
        ``base_dir``: :meth:`predict_rows`."""
        if is_streamed(samples):
            parts = self._by_part(samples, batch_size, on_bad_row, base_dir)
            return np.concatenate([r.proba for r in parts])
        return self.predict_rows(
            samples, batch_size=batch_size, on_bad_row=on_bad_row, base_dir=base_dir
        ).proba

    def predict(
        self,
        samples: Any,
        *,
        batch_size: int = 256,
        on_bad_row: str = "fail",
        base_dir: str | Path | None = None,
    ) -> list[Any]:
        """Labels (a list of labels per sample for multilabel); None for a row that cannot be
        predicted (only with ``on_bad_row="missing"``). ``base_dir``: :meth:`predict_rows`."""
        if is_streamed(samples):
            parts = self._by_part(samples, batch_size, on_bad_row, base_dir)
            return [v for r in parts for v in r.labels]
        return self.predict_rows(
            samples, batch_size=batch_size, on_bad_row=on_bad_row, base_dir=base_dir
        ).labels

    def predict_table(
        self,
        samples: Any,
        *,
        batch_size: int = 256,
        on_bad_row: str = "fail",
        base_dir: str | Path | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per row: id, probabilities, label, presence and reasons, flags, error.
        ``base_dir``: :meth:`predict_rows`."""
        return self.predict_rows(
            samples, batch_size=batch_size, on_bad_row=on_bad_row, base_dir=base_dir
        ).rows()


def deployed_onnx(meta: dict[str, Any]) -> str | None:
    """The INT8 ONNX file a package deploys (``medfuse quantize``: ``runtime.precision: int8``,
    its weights the fp32 source kept to re-export), ``None`` for a package whose deployed model
    is its weights."""
    rt = meta.get("runtime") or {}
    if rt.get("precision") != "int8":
        return None
    name = str(rt.get("onnx_file") or "model.onnx")
    return name if name in (meta.get("files") or {}) else None


def scored_model(meta: dict[str, Any], runtime: str) -> dict[str, Any]:
    """The model a package's outputs come from on ``runtime``: its file and precision (the
    ``model.onnx`` of a ``medfuse quantize`` package is INT8; its weights stay fp32)."""
    if runtime == "onnx":
        rt = meta.get("runtime") or {}
        name = str(rt.get("onnx_file") or "model.onnx")
        return {"runtime": "onnx", "file": name, "precision": str(rt.get("precision", "fp32"))}
    return {"runtime": "torch", "file": "model.safetensors", "precision": "fp32"}


def scored_text(scored: dict[str, Any], head: str = "scored") -> str:
    """One line naming the model an evaluation scored (:func:`scored_model`; with evaluation's
    ``medfuse.inference.predictor.load``, also where its branch rows come from)."""
    what = (
        f"{str(scored['precision']).upper()} {scored['file']} (ONNX Runtime)"
        if scored.get("runtime") == "onnx"
        else f"{scored['precision']} weights {scored['file']} (PyTorch)"
    )
    branches = f"; branch rows: {scored['branches']}" if scored.get("branches") else ""
    return f"{head}: {what}{branches}"
