"""Explanations in the clinical report: the two slots ``modality_contributions`` (dataset-level
exact Shapley values over the evaluated split) and ``explained_examples`` (a few cases per class,
with their Grad-CAM / integrated-gradients pictures).

Importing this module registers both providers with ``medfuse.report.html``; ``sections(ev)``
returns them for ``build_report(..., extra_sections=...)`` instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medfuse.explain.explainer import SHAPLEY_SCALE, Explainer
from medfuse.explain.plots import dataset_contributions
from medfuse.inference.predictor import decide
from medfuse.report.html import Section, esc, img_tag, num, register_section, table

#: cases scored for the dataset-level contributions (the first N of the split)
MAX_CASES = 2000
#: explained examples per class: the most confident correct one and the most confident error
PER_CLASS = 2


def _split(ev: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any]:
    data = ev.bundle.split(ev.predictions.split)
    return data.arrays, data.masks, data


def contributions_section(ev: Any) -> Section | None:
    """Mean |Shapley| per modality over the split (and by true class); None for one modality."""
    pred = ev.predictor
    names = list(pred.spec.modalities)
    if len(names) < 2:
        return None
    arrays, masks, data = _split(ev)
    n = min(len(data), MAX_CASES)
    arrays = {m: arrays[m][:n] for m in names}
    masks = {m: masks[m][:n] for m in names}
    ex = Explainer(pred)
    res = ex.shapley(arrays, masks)
    s = res[SHAPLEY_SCALE].summary()
    lg = res["logit"].summary()
    y = np.asarray(data.y[:n])
    by_class: list[tuple[str, np.ndarray]] = []
    if pred.task == "binary" or pred.task == "multiclass":
        for k, lab in enumerate(pred.labels):
            sel = (y == k) if y.ndim == 1 else y[:, k] > 0
            if sel.any():
                by_class.append((lab, res[SHAPLEY_SCALE].values[sel].mean(0)))
    meta = getattr(data, "meta", None)
    truth = None
    if meta is not None and all(f"contrib_{m}" in meta.columns for m in names):
        truth = {m: float(np.abs(meta[f"contrib_{m}"].to_numpy()[:n]).mean()) for m in names}
    header = ["modality", "present in", "mean |Shapley|", "mean Shapley", "mean |Shapley| (logit)"]
    header += [f"mean Shapley, true {lab}" for lab, _ in by_class]
    if truth:
        header.append("generator's mean |contribution|")
    rows = []
    for j, m in enumerate(names):
        row = [
            f"<b>{esc(m)}</b>",
            f"{float(np.mean(masks[m] > 0)):.0%}",
            num(s["mean_abs"][m], 4),
            num(s["mean"][m], 4),
            num(lg["mean_abs"][m], 4),
        ]
        row += [num(float(v[j]), 4) for _, v in by_class]
        if truth:
            row.append(num(truth[m], 3))
        rows.append(row)

    png = dataset_contributions(
        names,
        [s["mean_abs"][m] for m in names],
        [s["mean"][m] for m in names],
        scale=SHAPLEY_SCALE,
        n=n,
    )
    explained = (
        f"the probability of {pred.labels[1]}"
        if pred.task == "binary"
        else "the probability of the predicted class"
    )
    body = (
        f"<p>Exact Shapley values over modality presence (all {2 ** len(names)} subsets of the "
        f"modalities, an absent modality being a zero input with mask 0), on {esc(explained)}, "
        f"over {n} cases of the {esc(ev.predictions.split)} split. Each case's "
        "values add up to its prediction minus the prediction with no modality. Ranking by mean "
        f"|Shapley|: <b>{esc(' > '.join(s['ranking']))}</b>.</p>"
    )
    if truth:
        true_rank = sorted(names, key=lambda m: -truth[m])
        verdict = "matches" if true_rank == s["ranking"] else "differs from"
        body += (
            f"<p>The data generator knows each case's true contribution: its ranking "
            f"{esc(' > '.join(true_rank))} {verdict} the model's.</p>"
        )
    body += table(header, rows) + img_tag(png, "modality contributions", width=620)
    return Section("modality_contributions", "Modality contributions", body)


def _says(decision: Any, label: str) -> bool:
    return label in decision if isinstance(decision, list) else decision == label


def _pick(ev: Any, y: np.ndarray, p: np.ndarray, labels: list[str], task: str) -> list[int]:
    """Per class: the most confident correct case and the most confident error (if any)."""

    pred = ev.predictor
    decided = decide(task, p, labels, pred.threshold)
    chosen: list[int] = []
    for k, lab in enumerate(labels):
        cls = np.flatnonzero(y == k) if y.ndim == 1 else np.flatnonzero(y[:, k] > 0)
        if not len(cls):
            continue
        conf = p[cls] if task == "binary" else p[cls, k]
        if task == "binary" and k == 0:
            conf = 1 - conf
        right = [i for i in cls[np.argsort(-conf)] if _says(decided[i], lab)]
        wrong = [i for i in cls[np.argsort(conf)] if not _says(decided[i], lab)]
        picks = right[:1] + wrong[:1]
        chosen += [int(i) for i in picks[:PER_CLASS]]
    return chosen


def examples_section(ev: Any) -> Section | None:
    """A few explained cases per true class: the modality waterfall and every map."""
    pred = ev.predictor
    arrays, masks, data = _split(ev)
    y = np.asarray(data.y)
    p = np.asarray(ev.predictions.p)
    idx = _pick(ev, y, p, list(pred.labels), pred.task)
    if not idx:
        return None
    meta = getattr(data, "meta", None)
    ids = (
        [str(meta["id"].iloc[i]) for i in idx]
        if meta is not None and "id" in meta.columns
        else [f"case {i}" for i in idx]
    )
    ex = Explainer(pred)
    res = ex.explain(
        {m: arrays[m][idx] for m in ex.names}, {m: masks[m][idx] for m in ex.names}, ids
    )
    parts = [
        "<p>Per true class, the most confidently correct case and the most confident error. "
        "Images: Grad-CAM on the last convolutional block; signals and clinical values: "
        "integrated gradients from the training mean (red pushes towards the explained class). "
        "Maps are aids to review, not proof of what the model learned.</p>"
    ]
    for i, s, pics in zip(idx, res.samples, res.pictures):
        true = (
            pred.labels[int(y[i])]
            if y.ndim == 1
            else ", ".join(lab for k, lab in enumerate(pred.labels) if y[i, k] > 0)
        )
        got = s["prediction"]["label"]
        got = ", ".join(got) if isinstance(got, list) else got
        ok = "correct" if got == true else "error"
        parts.append(
            f"<h3>{esc(s['id'])}: true {esc(true)}, predicted {esc(got)} ({ok}); "
            f"P({esc(s['explained']['class'])}) = {s['explained']['probability']:.3f}</h3>"
        )
        parts.append(img_tag(pics["modalities"], f"{s['id']} modality contributions", width=520))
        for m in ex.names:
            if m in pics:
                parts.append(img_tag(pics[m], f"{s['id']} {m}", width=560))
    return Section("explained_examples", "Explained examples", "\n".join(parts))


def sections(ev: Any) -> list[Section]:
    """Both sections (those that apply) for ``build_report(ev, extra_sections=...)``."""
    return [s for s in (contributions_section(ev), examples_section(ev)) if s is not None]


register_section("modality_contributions")(contributions_section)
register_section("explained_examples")(examples_section)
