"""Metrics per subgroup (sex, age band, site, ...) with CIs and the best-worst gap.

The groups are resampled *jointly*: one resample of patients from the whole split is cut into
groups, so group sizes vary from resample to resample as they would in a new cohort, and the gap
between the best and the worst group gets an honest interval of its own. Each group's intervals
follow :mod:`medfuse.report.ci`: exact intervals for proportions, the bootstrap for the rest,
none for AUROC and the like when the group has too few positives or negatives (and then none for
the gap either, when such a group is ranked). Empty cells of a subgroup column form a group of
their own, ``missing``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import DataError, did_you_mean
from medfuse.report.ci import (
    LEVEL,
    RESAMPLES,
    bootstrap,
    bootstrap_interval,
    difference_withheld,
    finish_intervals,
    metric_rows,
    point_rows,
)
from medfuse.training.metrics import left_out


def _unlike_macro_means(
    result: dict[str, Any],
    task: str,
    y: np.ndarray,
    sel: dict[str, np.ndarray],
    ranked: list[str],
    labels: list[str] | None,
    k: int,
) -> None:
    """A multiclass or multilabel group's macro means leave out a class it lacks (a label of one
    class in it): groups lacking different ones are averaged over different classes, so their
    gap compares unlike means (a sensitivity of 1/4 beside 1/5 from one label left out).
    Said per group (``macro_note``) and on the gap, whose interval is then withheld."""
    lacking: dict[str, list[str]] = {}
    for g in result["groups"]:
        idx = left_out(task, np.asarray(y)[sel[g]], k)
        lacking[g] = [labels[j] if labels and j < len(labels) else str(j) for j in idx]
        if lacking[g]:
            what = "one class only" if task == "multilabel" else "no sample"
            result["groups"][g]["macro_note"] = (
                f"{', '.join(lacking[g])} with {what} in this group: left out of its macro means"
            )
    if len({tuple(lacking[g]) for g in ranked}) > 1 and result.get("gap"):
        differ = "; ".join(f"{g}: {', '.join(lacking[g]) or 'none'}" for g in ranked)
        note = (
            "the groups' macro means are over different classes (left out: " + differ + "): "
            "their gap compares unlike means"
        )
        gap = result["gap"]
        gap.update(lo=float("nan"), hi=float("nan"), method=f"no interval: {note}")
        result["macro_note"] = note


def _of(groups: Any, sel: np.ndarray) -> Any:
    """The patient ids of the selected samples (None when samples are the units)."""
    return None if groups is None else np.asarray(groups)[sel]


#: columns tried, in order, when no column is named
CANDIDATES = (
    "sex",
    "gender",
    "age_band",
    "age_group",
    "site",
    "centre",
    "center",
    "hospital",
    "scanner",
    "device",
    "ethnicity",
)
#: a numeric column with more distinct values than this is cut into quartile bands
MAX_LEVELS = 8
#: groups smaller than this are listed but not ranked
MIN_GROUP = 10
KEYS = ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "accuracy")
_SKIP = ("id", "patient_id", "record", "file", "path")


def _usable_meta_columns(meta: pd.DataFrame) -> list[str]:
    return [
        c
        for c in meta.columns
        if c not in _SKIP and not str(c).startswith("contrib_") and meta[c].nunique() >= 2
    ]


def available_columns(meta: pd.DataFrame, tabular_columns: dict[str, list[str]]) -> list[str]:
    """Subgroup columns: metadata columns plus the columns of tabular modalities."""
    out = _usable_meta_columns(meta) if len(meta) else []
    for cols in tabular_columns.values():
        out += [c for c in cols if c not in out]
    return out


def auto_column(
    meta: pd.DataFrame, tabular_columns: dict[str, list[str]] | None = None
) -> str | None:
    """A sensible default subgroup column among those ``--subgroup`` accepts, or None (MedMNIST,
    for one, has none): the first of :data:`CANDIDATES` found in the metadata or among the
    columns of a tabular input (``tabular_columns``: per tabular modality, as for
    :func:`subgroup_values`), else a metadata column with 2 to :data:`MAX_LEVELS` values shared
    by several rows. A tabular input is picked only by a candidate name: its other columns are
    model features, not groupings."""
    usable = _usable_meta_columns(meta) if len(meta) else []
    tabular = [c for cols in (tabular_columns or {}).values() for c in cols]
    for c in CANDIDATES:
        if c in usable or c in tabular:
            return c
    for c in usable:  # a column of shared values (not an identifier, unique per row)
        if 2 <= meta[c].nunique() <= min(MAX_LEVELS, len(meta) - 1):
            return c
    return None


def band(values: pd.Series) -> tuple[np.ndarray, str]:
    """Categorical values as strings; numeric columns with many values cut into quartile bands.
    Empty cells (NaN, None) are the group ``missing``, whichever the column's type."""
    s = pd.Series(values)
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    if numeric and s.nunique(dropna=True) > MAX_LEVELS:
        q = s.quantile([0, 0.25, 0.5, 0.75, 1.0]).to_numpy()
        edges = np.unique(q)
        cats = pd.cut(s, edges, include_lowest=True, duplicates="drop")
        bands = cats.cat.categories
        for digits in (4, 6, 10, 17):  # enough digits for distinct band names
            names = [f"{iv.left:.{digits}g}-{iv.right:.{digits}g}" for iv in bands]
            if len(set(names)) == len(names):
                break
        codes = cats.cat.codes.to_numpy()  # -1: an empty cell
        out = np.where(codes >= 0, np.array(names, object)[np.maximum(codes, 0)], "missing")
        return out.astype(str), "quartile bands"
    return s.astype(object).where(s.notna(), "missing").astype(str).to_numpy(), "values"


def subgroup_values(
    column: str,
    meta: pd.DataFrame,
    arrays: dict[str, np.ndarray],
    tabular_columns: dict[str, list[str]],
    categories: dict[str, dict[str, list[str]]] | None = None,
) -> tuple[np.ndarray, str]:
    """The subgroup label of each sample for ``column`` (metadata first, then tabular inputs;
    a text column of a tabular input by its category names, ``categories``: the package's per
    modality and column, not by the codes the model reads)."""
    if len(meta) and column in meta.columns:
        vals, how = band(meta[column])
        return vals, f"metadata column '{column}' ({how})"
    for mod, cols in tabular_columns.items():
        if column in cols:
            raw = arrays[mod][:, cols.index(column)]
            names = ((categories or {}).get(mod) or {}).get(column)
            if names:
                vals = np.array(
                    ["missing" if not np.isfinite(c) else names[int(c)] for c in raw], object
                ).astype(str)
                return vals, f"tabular input '{mod}.{column}' (categories)"
            vals, how = band(pd.Series(raw))
            return vals, f"tabular input '{mod}.{column}' ({how})"
    avail = available_columns(meta, tabular_columns)

    raise DataError(
        f"no subgroup column {column!r} in this data{did_you_mean(column, avail)} "
        + (
            f"Available: {', '.join(avail)}"
            if avail
            else "This data source has no subgroup columns (MedMNIST, for one, provides none)."
        )
    )


def subgroup_metrics(
    task: str,
    y: np.ndarray,
    p: np.ndarray,
    values: np.ndarray,
    threshold: float = 0.5,
    *,
    groups: Any = None,
    n_boot: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    gap_metric: str = "auroc",
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """``{groups: {value: {n, positives, metrics}}, gap: {...}}``; each group's intervals as
    :func:`medfuse.report.ci.metric_intervals` gives them (exact for proportions, bootstrap for
    the rest, none with too few of a class), the gap's by the joint bootstrap (none when a ranked
    group has too few of a class for ``gap_metric``)."""
    values = np.asarray(values).astype(str)
    names = sorted(np.unique(values))
    sel = {g: values == g for g in names}
    y = np.asarray(y)
    rankable = [
        g
        for g in names
        if sel[g].sum() >= MIN_GROUP and (task != "binary" or len(np.unique(y[sel[g]])) == 2)
    ]

    def rows(w: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        per_gap = []
        for g in names:
            m = metric_rows(task, y[sel[g]], p[sel[g]], w[:, sel[g]], threshold)
            for k in KEYS:
                if k in m:
                    out[f"{g}\0{k}"] = m[k]
            if g in rankable:
                per_gap.append(m[gap_metric])
        if len(per_gap) >= 2:
            a = np.stack(per_gap, axis=1)
            ok = np.isfinite(a).all(axis=1)
            out["\0gap"] = np.where(ok, np.nanmax(a, axis=1) - np.nanmin(a, axis=1), np.nan)
        return out

    dist = bootstrap(rows, len(y), groups=groups, n_boot=n_boot, seed=seed)
    result: dict[str, Any] = {"groups": {}, "gap": None, "metric": gap_metric}
    points = {}
    for g in names:
        yy, pp = y[sel[g]], p[sel[g]]
        gg = _of(groups, sel[g])
        pt = point_rows(task, yy, pp, threshold)
        points[g] = pt
        result["groups"][g] = {
            "n": int(sel[g].sum()),
            "positives": int(np.asarray(yy).sum()) if task == "binary" else None,
            "ranked": g in rankable,
            "metrics": finish_intervals(
                task,
                yy,
                pp,
                threshold,
                pt,
                {k: dist[f"{g}\0{k}"] for k in KEYS if f"{g}\0{k}" in dist},
                groups=gg,
                level=level,
            ),
        }
    if "\0gap" in dist:
        vals = {g: points[g][gap_metric] for g in rankable}
        best = max(vals, key=lambda g: vals[g])
        worst = min(vals, key=lambda g: vals[g])
        # a group too thin for the gap's metric (a sensitivity gap: its positives)
        thin = {
            g: r
            for g in rankable
            if (r := difference_withheld(task, gap_metric, y[sel[g]], _of(groups, sel[g])))
        }
        why = "no interval: " + "; ".join(
            f"{g}: {r.removeprefix('no interval: ')}" for g, r in thin.items()
        )
        result["gap"] = {
            "metric": gap_metric,
            "best": best,
            "worst": worst,
            **bootstrap_interval(
                vals[best] - vals[worst], dist["\0gap"], why if thin else None, level
            ),
        }
    if task != "binary":
        k = int(np.asarray(p).reshape(len(p), -1).shape[1])
        _unlike_macro_means(result, task, y, sel, rankable, labels, k)
    small = [g for g in names if g not in rankable]
    if small:
        result["note"] = (
            f"not ranked (fewer than {MIN_GROUP} samples or one class only): {', '.join(small)}"
        )
    return result
