"""Reading prediction inputs (manifest, .npz, one file) and writing prediction tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.decision import decide
from medfuse.core.errors import DataError
from medfuse.core.inputs import npz_modalities
from medfuse.core.readers import suffix_of
from medfuse.core.readers.base import read_one_file


def read_inputs(
    path: str | Path, modalities: dict[str, Any], stats: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], pd.DataFrame]:
    """Raw arrays, masks and an id table for a prediction input file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"input {p} not found")
    suf = suffix_of(p)
    if suf == ".csv":
        # lazy: the dataset registry, only for manifests
        from medfuse.data.manifest import read_rows

        df = pd.read_csv(p)
        cats = {m: s.get("categories", {}) for m, s in stats.items()}
        from medfuse.data import resolve_data_root

        # a manifest given to predict reads files only under its own folder or the data root
        roots = [p.parent, resolve_data_root(None)]
        arrays, masks, _ = read_rows(
            df,
            p.parent,
            modalities,
            {},
            on_bad_row="missing",
            categories=cats,
            where=str(p),
            contain=roots,
        )
        ids = (
            df["id"].astype(str)
            if "id" in df.columns
            else pd.Series([f"row-{i + 2}" for i in range(len(df))])
        )
        return arrays, masks, pd.DataFrame({"id": ids})
    if suf == ".npz":
        with np.load(p, allow_pickle=False) as d:
            keys = set(d.files)
            present = npz_modalities(p, keys, modalities)
            n = len(d[present[0]])
            arrays, masks = {}, {}
            for m, spec in modalities.items():
                if m in keys:
                    x = d[m].astype(np.float32)
                    if x.shape[1:] != tuple(spec.shape):
                        if spec.kind == "image" and x.ndim == len(spec.shape):  # (N, H, W) grey
                            x = x[:, None]
                        if x.shape[1:] != tuple(spec.shape):
                            raise DataError(
                                f"{p}: array {m!r} has shape {x.shape[1:]} per sample; expected {tuple(spec.shape)}"
                            )
                    arrays[m] = x
                    masks[m] = (
                        d[f"mask_{m}"].astype(np.float32)
                        if f"mask_{m}" in keys
                        else np.ones(n, np.float32)
                    )
                else:
                    arrays[m] = np.full(
                        (n, *spec.shape), np.nan if spec.kind == "tabular" else 0.0, np.float32
                    )
                    masks[m] = np.zeros(n, np.float32)
            ids = [str(v) for v in d["id"]] if "id" in keys else [f"{p.stem}-{i}" for i in range(n)]
        return arrays, masks, pd.DataFrame({"id": ids})
    one = read_one_file(p, modalities)  # an image or a signal for a model with one such modality
    if one is not None:
        return one[0], one[1], pd.DataFrame({"id": [p.name]})
    raise DataError(
        f"{p}: use a manifest .csv, an .npz with one array per modality, or one image/signal file"
    )


def prediction_table(
    ids: pd.DataFrame, p: np.ndarray, labels: list[str], task: str, threshold: float
) -> pd.DataFrame:
    df = ids.copy()
    if task == "binary":
        df[f"prob_{labels[1]}"] = p
    else:
        for j, lab in enumerate(labels):
            df[f"prob_{lab}"] = p[:, j]
    pred = decide(task, p, labels, threshold)
    df["label"] = [";".join(v) if isinstance(v, list) else v for v in pred]
    if task == "binary":
        df["threshold"] = threshold
    return df


def predict_file(
    package: str | Path, input_path: str | Path, *, device: str = "cpu", batch_size: int = 256
) -> pd.DataFrame:
    # lazy: torch; serve.batch uses this module without it
    from medfuse.inference.predictor import load

    pred = load(package, device=device)
    arrays, masks, ids = read_inputs(input_path, pred.spec.modalities, pred.meta["preprocessing"])
    p = pred.predict_proba({**arrays, "mask": masks}, batch_size=batch_size)
    return prediction_table(ids, p, pred.labels, pred.task, pred.threshold)
