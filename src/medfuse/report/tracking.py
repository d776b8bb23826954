"""Optional experiment tracking for ``medfuse train --track mlflow``: the spec as parameters,
every epoch's losses and validation metrics, the final metrics and the package as an artifact.

MLflow is an optional extra (``pip install medfuse[tracking]``); nothing imports it unless
tracking is asked for. Without ``--track-uri`` runs go to a local file store, ``./mlruns``
(``mlflow ui --backend-store-uri ./mlruns`` to browse it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medfuse.core.errors import MedfuseError

TRACKERS = ("mlflow",)
DEFAULT_URI = "./mlruns"
INSTALL_HINT = "pip install medfuse[tracking]"


class TrackingError(MedfuseError):
    """Tracking was asked for but cannot run (backend missing or unreachable)."""

    exit_code = 2


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (lists and None as strings)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d if isinstance(d, int | float | str | bool) else str(d)
    return out


def _uri(uri: str | None) -> str:
    """A local path becomes an absolute ``file:`` URI; anything with a scheme is kept."""
    uri = uri or DEFAULT_URI
    if "://" in uri or uri.startswith("file:"):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


class MlflowTracker:
    """One MLflow run: ``log_params``, ``on_epoch`` (the Trainer callback), ``finish``."""

    def __init__(
        self, uri: str | None = None, experiment: str = "medfuse", run_name: str | None = None
    ) -> None:
        try:
            # lazy: mlflow (medfuse[tracking]), only when tracking (optional: its absence is handled here)
            import mlflow
        except ImportError:
            raise TrackingError(
                f"--track mlflow needs MLflow, which is not installed: {INSTALL_HINT}"
            ) from None
        self.mlflow = mlflow
        self.uri = _uri(uri)
        if self.uri.startswith("file:"):
            # recent MLflow refuses new file stores unless this opt-out is set
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(self.uri)
        try:
            mlflow.set_experiment(experiment)
            self.run = mlflow.start_run(run_name=run_name)
        except Exception as err:
            raise TrackingError(f"cannot start an MLflow run at {self.uri}: {err}") from None
        self.step = 0

    @property
    def run_id(self) -> str:
        return str(self.run.info.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: (str(v)[:500] if isinstance(v, str) else v) for k, v in flatten(params).items()}
        self.mlflow.log_params(flat)

    def on_epoch(self, record: dict[str, Any]) -> None:
        """Trainer callback: one step per epoch across stages (``stage`` is logged as a tag)."""
        self.step += 1
        m: dict[str, float] = {}
        for k in ("train_loss", "val_loss", "lr", "score"):
            v = record.get(k)
            if isinstance(v, int | float):
                m[k] = float(v)
        for k, v in (record.get("val") or {}).items():
            if isinstance(v, int | float) and v == v:  # NaN is not logged
                m[f"val_{k}"] = float(v)
        for b, mm in (record.get("val_branches") or {}).items():
            for k, v in mm.items():
                if isinstance(v, int | float) and v == v:
                    m[f"val_{b}_{k}"] = float(v)
        self.mlflow.log_metrics(m, step=self.step)
        self.mlflow.set_tag("last_stage", str(record.get("stage")))

    def finish(self, result: Any) -> None:
        """Final val/test metrics and the package directory as the artifact ``package/``."""
        final: dict[str, float] = {}
        for split, mm in (result.metrics or {}).items():
            for k, v in mm.items():
                if isinstance(v, int | float) and v == v:
                    final[f"final_{split}_{k}"] = float(v)
        self.mlflow.log_metrics(final)
        self.mlflow.log_metric("train_seconds", float(result.seconds))
        self.mlflow.log_artifacts(str(result.package), artifact_path="package")
        self.mlflow.set_tag("package", str(result.package))
        self.mlflow.end_run()

    def fail(self) -> None:
        self.mlflow.end_run(status="FAILED")


@contextlib.contextmanager
def tracking(
    kind: str | None,
    uri: str | None = None,
    *,
    params: dict[str, Any] | None = None,
    experiment: str = "medfuse",
    run_name: str | None = None,
) -> Iterator[MlflowTracker | None]:
    """``with tracking(args.track, args.track_uri, params=...) as t:`` -> a tracker or None.

    The run is marked FAILED if the body raises; the caller calls ``t.finish(result)``.
    """
    if kind is None or os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 tracks
        yield None
        return
    if kind not in TRACKERS:
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.core.errors import SpecError, not_allowed

        raise SpecError("--track", not_allowed("tracker", kind, TRACKERS))
    t = MlflowTracker(uri, experiment, run_name)
    if params:
        t.log_params(params)
    try:
        yield t
    except BaseException:
        t.fail()
        raise
    finally:
        if t.mlflow.active_run() is not None:
            t.mlflow.end_run()
