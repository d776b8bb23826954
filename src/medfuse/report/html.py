"""The self-contained HTML report: one file, inline CSS, every figure a base64 PNG data URI, no
script and no external resource, so it can be mailed, archived or opened offline.

Sections come in a fixed order (``SLOTS``). Two slots are left for the explainability area:
``modality_contributions`` and ``explained_examples``. Fill them either by passing
``extra_sections=[Section("modality_contributions", "Modality contributions", body_html)]`` to
:func:`build_report` / :func:`write_report`, or, to have ``medfuse report`` include them
automatically, by registering a provider::

    from medfuse.report.html import Section, register_section, img_tag

    @register_section("modality_contributions")
    def contributions(ev):            # ev: medfuse.report.clinical.Evaluation
        return Section("modality_contributions", "Modality contributions", "<p>...</p>")

A provider returns a Section or None (nothing to show); if it raises, the report shows the error
in that section instead of failing.
"""

from __future__ import annotations

import base64
import html
import importlib
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.core.errors import MedfuseError
from medfuse.core.inputs import missing_summary, missing_text
from medfuse.core.package import versions
from medfuse.core.paths import output_file
from medfuse.core.predictor import scored_text
from medfuse.report import plots
from medfuse.report.ci import fmt_interval
from medfuse.report.clinical import clinical_evaluation
from medfuse.training.trainer import HISTORY

log = logging.getLogger("medfuse.report")

#: the report's sections, in order; providers and extra sections name one of these ids
SLOTS = (
    "summary",
    "model_card",
    "data",
    "metrics",
    "operating_point",
    "curves",
    "calibration",
    "subgroups",
    "per_modality",
    "modality_contributions",  # hook: explainability (medfuse.explain)
    "explained_examples",  # hook: explainability (medfuse.explain)
    "training",
    "reproducibility",
)


@dataclass
class Section:
    """One report section: ``id`` (a slot from ``SLOTS`` or a new id, appended before
    'reproducibility'), a title and its body as HTML (escape text with ``html.escape``;
    embed figures with :func:`img_tag`)."""

    id: str
    title: str
    body: str


SectionProvider = Callable[[Any], "Section | None"]
SECTION_PROVIDERS: dict[str, SectionProvider] = {}
#: modules whose import registers section providers (each area adds its own line)
PROVIDER_MODULES: list[str] = ["medfuse.explain.report"]


def load_providers() -> None:
    """Import ``PROVIDER_MODULES`` (their import registers providers); a missing one is skipped."""

    for mod in PROVIDER_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError as err:
            log.warning("report section module %s not loaded: %s", mod, err)


def register_section(slot: str) -> Callable[[SectionProvider], SectionProvider]:
    """Register ``provider(evaluation) -> Section | None`` for a slot (one provider per slot)."""

    def deco(fn: SectionProvider) -> SectionProvider:
        if slot in SECTION_PROVIDERS:
            raise ValueError(f"a report section provider for {slot!r} is already registered")
        SECTION_PROVIDERS[slot] = fn
        return fn

    return deco


# ---- small HTML helpers ----------------------------------------------------------------------


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def img_tag(png: bytes, alt: str, *, width: int | None = None) -> str:
    """An <img> with the PNG embedded as a base64 data URI (no external file)."""
    data = base64.b64encode(png).decode("ascii")
    w = f' style="max-width:{width}px"' if width else ""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}"{w}>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return esc(x)


def ci(iv: dict[str, float] | None, digits: int = 3) -> str:
    return "n/a" if not iv else esc(fmt_interval(iv, digits))


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;
color:#1d232a;background:#f6f7f9;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px}
header{background:#143d59;color:#fff;padding:22px 24px}
header h1{margin:0 0 4px 0;font-size:1.6em}
header .sub{opacity:.85}
section{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:16px 20px;margin:18px 0}
h2{margin-top:0;font-size:1.25em;color:#143d59;border-bottom:1px solid #e5e9ee;padding-bottom:6px}
h3{font-size:1.02em;margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #dde2e8;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eef2f6}
td.r,th.r{text-align:right}
.headline{font-size:1.35em;font-weight:600;margin:6px 0}
.warn{background:#fff4e5;border:1px solid #f0b35b;padding:8px 12px;border-radius:6px}
.note{color:#55606b;font-size:.9em}
.figs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.figs img{max-width:100%;border:1px solid #e5e9ee;border-radius:4px;background:#fff}
code,pre{background:#f0f2f5;border-radius:4px;padding:1px 4px;font-size:.9em}
pre{padding:8px;white-space:pre-wrap;word-break:break-all}
nav a{margin-right:10px;font-size:.9em;color:#143d59}
"""

GLOSSARY = {
    "auroc": "P(a random positive scores above a random negative); threshold-free",
    "auprc": "average precision (area under precision-recall); threshold-free",
    "accuracy": "share of correct decisions at the threshold",
    "balanced_accuracy": "mean of sensitivity and specificity (macro recall)",
    "sensitivity": "true positive rate (recall) at the threshold",
    "specificity": "true negative rate at the threshold",
    "ppv": "positive predictive value (precision) at the threshold",
    "npv": "negative predictive value at the threshold",
    "f1": "harmonic mean of PPV and sensitivity",
    "kappa": "Cohen's kappa (agreement beyond chance)",
    "ece": "expected calibration error (lower is better)",
    "brier": "mean squared error of the probabilities (lower is better)",
}


# ---- sections --------------------------------------------------------------------------------


def _summary(ev: Any, ctx: dict[str, Any]) -> Section:
    s = ev.summary
    a = s["metrics"].get("auroc")
    meta = ev.predictor.meta
    synthetic = bool(meta.get("data", {}).get("synthetic"))
    body = ""
    if synthetic:
        body += (
            '<p class="warn"><b>Trained and evaluated on SYNTHETIC data (virtual patients).</b> '
            "These figures say nothing about any clinical performance.</p>"
        )
    body += (
        f'<p class="headline">{esc(s["split"])} AUROC {ci(a)} '
        f'<span class="note">(95% CI)</span></p>'
        f"<p>{esc(s['n'])} {esc(s['split'])} samples; CIs: exact (Clopper-Pearson) for "
        f"proportions, else {esc(s['bootstrap']['resamples'])} percentile bootstrap resamples "
        f"of {esc(s['bootstrap']['unit'])} (n/a: too few of a class), seed "
        f"{esc(s['bootstrap']['seed'])}. Operating point: threshold "
        f"{num(s['threshold'].get('value'), 4)} ({esc(s['threshold'].get('method'))}).</p>"
    )
    if ev.predictor.task == "binary":  # labels are [negative, positive]
        neg, pos = ev.predictor.labels
        body += (
            f"<p>Positive class: <b>{esc(pos)}</b> (probabilities are P({esc(pos)}); "
            f"sensitivity and PPV are about {esc(pos)}, specificity and NPV about "
            f"{esc(neg)}).</p>"
        )
    check = (ev.bundle.info.get("fingerprint_check") or {}).get(s["split"])
    if check and not check["same"]:
        body += (
            '<p class="warn"><b>The data differs from what the package recorded for this '
            f"split:</b> {esc('; '.join(check['differences']))}</p>"
        )
    body += (
        "<nav>"
        + "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in ctx["toc"] if i != "summary")
        + "</nav>"
    )
    return Section("summary", "Summary", body)


def _model_card(ev: Any, ctx: dict[str, Any]) -> Section:
    meta = ev.predictor.meta
    spec = meta["spec"]
    thr = meta.get("threshold", {})
    calib = meta.get("calibration", {})
    rows = [
        ("name", esc(meta.get("name"))),
        ("task", f"{esc(meta['task'])}; labels: {esc(', '.join(meta['labels']))}"),
        (
            "modalities",
            "<br>".join(
                f"{esc(n)}: {esc(m['kind'])} {esc(_shape(m))}, branch "
                f"<code>{esc(spec['branches'][n]['type'])}</code>"
                for n, m in spec["modalities"].items()
            ),
        ),
        ("fusion / head", f"<code>{esc(spec['fusion']['type'])}</code>; head {esc(spec['head'])}"),
        ("parameters", f"{meta.get('parameters', 0):,}"),
        (
            "decision threshold",
            f"{num(thr.get('value'), 4)} ({esc(thr.get('method'))}"
            + (f", target {esc(thr['target'])}" if thr.get("target") else "")
            + (f", chosen on {esc(thr['chosen_on'])})" if thr.get("chosen_on") else ")"),
        ),
        (
            "calibration",
            f"temperature {num(calib.get('temperature', 1.0), 4)} ({esc(calib.get('method', 'none'))}"
            + (f", fitted on {esc(calib['fitted_on'])}" if calib.get("fitted_on") else "")
            + ")",
        ),
        ("created", esc(meta.get("created", "?"))),
        (
            "compression",
            esc(", ".join(str(c.get("method", c)) for c in meta.get("compression", [])) or "none"),
        ),
    ]
    body = table(("", ""), rows)
    body += (
        "<h3>Intended use and limitations</h3><p>A research model. It has not been validated "
        "prospectively or cleared for clinical use. Performance was measured on the split named "
        "in this report only; expect it to differ on other sites, devices and populations. "
        "Missing modalities are supported (presence masks), but metrics with a modality removed "
        "may be much lower (see 'Per modality').</p>"
    )
    return Section("model_card", "Model card", body)


def _shape(m: dict[str, Any]) -> str:
    if m["kind"] == "image":
        return f"{m.get('channels')}x{'x'.join(str(v) for v in m.get('size') or [])}"
    if m["kind"] == "signal":
        return f"{m.get('channels')} ch x {m.get('length')}"
    return f"{len(m.get('columns') or [])} columns"


def _data(ev: Any, ctx: dict[str, Any]) -> Section:
    b = ev.bundle
    meta = ev.predictor.meta
    d = meta.get("data", {})
    task = ev.predictor.task
    labels = ev.predictor.labels
    rows = []
    for name in ("train", "val", "test"):
        s = getattr(b, name, None)
        if s is None:
            continue
        y = np.asarray(s.y)
        if not len(y):  # e.g. an external test set's train and val
            rows.append((esc(name), "0", "-", "-", "-", "-"))
            continue
        if task == "binary":
            dist = f"{int(y.sum())} {esc(labels[1])} ({y.mean():.1%})"
        elif task == "multiclass":
            counts = np.bincount(y.astype(int), minlength=len(labels))
            dist = ", ".join(f"{esc(labels[i])} {c}" for i, c in enumerate(counts))
        else:
            dist = ", ".join(f"{esc(labels[j])} {int(y[:, j].sum())}" for j in range(y.shape[1]))
        pats = (
            str(s.meta["patient_id"].nunique())
            if len(s.meta) and "patient_id" in s.meta.columns
            else "n/a"
        )
        present = ", ".join(f"{esc(m)} {float(np.mean(v)):.0%}" for m, v in s.masks.items())
        imputed = missing_text(missing_summary(s.arrays, s.masks, ev.predictor.schema), short=True)
        rows.append((esc(name), str(len(y)), pats, dist, present, esc(imputed)))
    body = (
        f"<p>Source: <b>{esc(d.get('name') or meta['spec']['data']['source'])}</b> "
        f"(<code>{esc(meta['spec']['data']['source'])}</code>)"
        + (f"; file <code>{esc(d['file'])}</code>" if d.get("file") else "")
        + "</p>"
    )
    body += table(
        ("split", "samples", "patients", "labels", "modality present", "rows imputed"), rows
    )
    body += (
        '<p class="note">Rows imputed: rows with a tabular value missing, each standardised to '
        "the training mean (the model saw the average there, not the patient's value).</p>"
    )
    cols = [c for c in ev.predictions.meta.columns] if len(ev.predictions.meta) else []
    body += f'<p class="note">Metadata columns: {esc(", ".join(cols) or "none")}.</p>'
    return Section("data", "Data", body)


def _metrics(ev: Any, ctx: dict[str, Any]) -> Section:
    s = ev.summary
    rows = [
        (
            esc(k),
            f'<span class="r">{num(iv["value"])}</span>',
            f"{num(iv['lo'])} - {num(iv['hi'])}",
            esc(GLOSSARY.get(k, "")),
        )
        for k, iv in s["metrics"].items()
    ]
    body = table(("metric", "estimate", "95% CI", "meaning"), rows)
    b = s["bootstrap"]
    body += (
        f'<p class="note">Point estimates as in metrics.json (scikit-learn). 95% percentile '
        f"bootstrap intervals: {esc(b['resamples'])} resamples of {esc(b['unit'])}, seed "
        f"{esc(b['seed'])}; resamples where a metric is undefined (one class only) are left out. "
        f"Threshold metrics use the operating point below. ECE: {esc(s['calibration']['binning'])}."
        "</p>"
    )
    return Section("metrics", f"Metrics on {s['split']} (n={s['n']})", body)


def _operating_point(ev: Any, ctx: dict[str, Any]) -> Section:
    s = ev.summary
    thr = s["threshold"]
    task = ev.predictor.task
    m = s["metrics"]
    body = ""
    if task == "binary":
        body += (
            f"<p>Threshold <b>{num(thr.get('value'), 4)}</b> on P({esc(ev.predictor.labels[1])}) "
            f"- method <code>{esc(thr.get('method'))}</code>"
            + (f", target {esc(thr.get('target'))}" if thr.get("target") else "")
            + f"; {esc(thr.get('source', 'package'))}.</p>"
            + (f"<p><b>Caution:</b> {esc(thr['caution'])}</p>" if thr.get("caution") else "")
        )
        rows = [
            (esc(k), ci(m.get(k)))
            for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1")
            if k in m
        ]
        body += table(("at the threshold", "estimate (95% CI)"), rows)
    elif task == "multiclass":
        body += "<p>Decision: the most probable class (argmax).</p>"
    else:
        body += (
            f"<p>Each label is predicted when its probability >= {num(thr.get('value'), 4)}.</p>"
        )
    cm = s.get("confusion_matrix")
    if cm:
        body += (
            '<div class="figs">'
            + img_tag(
                plots.confusion_png(cm, ev.predictor.labels, f"confusion matrix ({s['split']})"),
                "confusion matrix",
            )
            + "</div>"
        )
    return Section("operating_point", "Operating point and confusion matrix", body)


def _curves(ev: Any, ctx: dict[str, Any]) -> Section | None:
    if not ev.bands:
        return None
    s = ev.summary
    if ev.predictor.task == "binary":
        name = next(iter(ev.bands))
        au = {name: s["metrics"]["auroc"]}
        ap = {name: s["metrics"]["auprc"]}
    else:
        au = ap = None
    body = '<div class="figs">'
    body += img_tag(plots.roc_png(ev.bands, au), "ROC curve with confidence band")
    body += img_tag(plots.pr_png(ev.bands, ap), "precision-recall curve with confidence band")
    body += "</div>"
    body += (
        '<p class="note">Bands: pointwise 95% percentile bootstrap intervals (same resamples as '
        "the metrics) of the TPR at each FPR and of the interpolated precision (best precision "
        "at any recall at least as high) at each recall. Dotted line in PR: prevalence.</p>"
    )
    return Section("curves", "ROC and precision-recall curves", body)


def _calibration(ev: Any, ctx: dict[str, Any]) -> Section:
    c = ev.summary["calibration"]
    temp = c["before_after_temperature"]
    body = (
        f"<p>ECE {num(c['ece'])} ({esc(c['binning'])}), Brier {num(c['brier'])} on "
        f"{esc(ev.summary['split'])} with the package's probabilities (temperature "
        f"{num(c['temperature'], 4)}).</p>"
    )
    if c["stored"]:
        body += (
            f"<p>Temperature scaling is <b>applied</b>: T = {num(c['temperature'], 4)}, fitted on "
            f"{esc(c.get('stored_fitted_on', 'val'))} by minimising the negative log-likelihood.</p>"
        )
    else:
        body += (
            f'<p class="warn">Temperature scaling is <b>not applied</b> to this package. Fitted on '
            f"validation it would use T = {num(temp, 4)}; the 'after' figures show its effect. "
            f"Run <code>medfuse calibrate {esc(ev.predictor.package.path)}</code> to store it.</p>"
        )
    rows = []
    figs = []
    for split, r in c["before_after"].items():
        rows.append(
            (
                esc(split),
                num(r["ece_before"]),
                num(r["ece_after"]),
                num(r["brier_before"]),
                num(r["brier_after"]),
                num(r["nll_before"]),
                num(r["nll_after"]),
                esc(r["n"]),
            )
        )
        figs.append(
            img_tag(
                plots.reliability_png(
                    [
                        (f"{split}: before (T=1)", r["before"]),
                        (f"{split}: after (T={temp:.3g})", r["after"]),
                    ]
                ),
                f"reliability diagrams before and after temperature scaling on {split}",
            )
        )
    body += table(
        (
            "split",
            "ECE before",
            "ECE after",
            "Brier before",
            "Brier after",
            "NLL before",
            "NLL after",
            "n",
        ),
        rows,
    )
    body += '<div class="figs">' + "".join(figs) + "</div>"
    body += (
        '<p class="note">Temperature scaling divides the logits by T: the ranking (AUROC) of a '
        "binary or multilabel model is unchanged (a multiclass softmax's one-vs-rest AUROC moves; "
        "its argmax decisions do not); `medfuse calibrate` maps the stored threshold through the same transform, "
        "so decisions are unchanged unless a new operating point is asked for.</p>"
    )
    return Section("calibration", "Calibration", body)


def _subgroups(ev: Any, ctx: dict[str, Any]) -> Section:
    sg = ev.summary.get("subgroups") or {}
    if not sg.get("column"):
        return Section("subgroups", "Subgroups", f"<p>{esc(sg.get('note', 'not requested'))}</p>")
    keys = ("auroc", "sensitivity", "specificity", "ppv", "npv")
    rows = []
    forest = []
    for g, d in sg["groups"].items():
        m = d["metrics"]
        rows.append(
            (
                esc(g),
                esc(d["n"]),
                esc(d["positives"] if d["positives"] is not None else ""),
                *[ci(m.get(k)) for k in keys],
            )
        )
        a = m.get("auroc")
        if a:
            forest.append((f"{g} (n={d['n']})", a["value"], a["lo"], a["hi"]))
    full = ev.summary["metrics"]["auroc"]
    forest.insert(0, (f"all (n={ev.summary['n']})", full["value"], full["lo"], full["hi"]))
    body = f"<p>Groups by {esc(sg['source'])}.</p>"
    body += table(("group", "n", "positives", *keys), rows)
    gap = sg.get("gap")
    if gap:
        body += (
            f"<p><b>Gap</b> in {esc(gap['metric'])} between the best group ({esc(gap['best'])}) "
            f"and the worst ({esc(gap['worst'])}): {ci(gap)} (95% CI of the best-worst "
            "difference, groups resampled jointly).</p>"
        )
    if sg.get("note"):
        body += f'<p class="note">{esc(sg["note"])}</p>'
    body += (
        '<div class="figs">'
        + img_tag(
            plots.forest_png(
                forest,
                xlabel="AUROC (95% CI)",
                title=f"AUROC by {sg['column']}",
                reference=full["value"],
            ),
            "forest plot of AUROC per subgroup",
        )
        + "</div>"
    )
    return Section("subgroups", f"Subgroups: {sg['column']}", body)


def _per_modality(ev: Any, ctx: dict[str, Any]) -> Section | None:
    pm = ev.summary.get("per_modality")
    if not pm:
        return Section(
            "per_modality", "Per modality", "<p>One modality only: nothing to remove.</p>"
        )
    keys = ("auroc", "auprc", "sensitivity", "specificity", "brier")
    rows, forest = [], []
    for name, m in pm["rows"].items():
        label = f"{name} (n={m['n']})" if "n" in m else name
        rows.append((esc(label), *[ci(m.get(k)) for k in keys]))
        a = m.get("auroc")
        if a:
            forest.append((label, a["value"], a["lo"], a["hi"]))
    body = table(("model", *keys), rows)
    drops = pm.get("auroc_drop_without") or {}
    if drops:
        body += table(
            ("modality removed", "AUROC drop (full - without), 95% CI"),
            [(esc(m), ci(iv)) for m, iv in drops.items()],
        )
    body += f'<p class="note">{esc(pm["note"])}</p>'
    body += (
        '<div class="figs">'
        + img_tag(
            plots.forest_png(
                forest,
                xlabel="AUROC (95% CI)",
                title="full model, modality removed, complete / incomplete samples",
                reference=0.5,
            ),
            "forest plot of AUROC per modality",
        )
        + "</div>"
    )
    return Section("per_modality", "Per modality", body)


def _training(ev: Any, ctx: dict[str, Any]) -> Section:

    path = Path(ev.predictor.package.path) / HISTORY
    meta = ev.predictor.meta
    tr = meta.get("training", {})
    body = ""
    stages = tr.get("stages") or []
    if stages:
        body += table(
            ("stage", "epochs run", "best epoch", "best val score", "early stopped"),
            [
                (
                    esc(st.get("stage")),
                    esc(st.get("epochs_run", st.get("epochs", ""))),
                    esc(st.get("best_epoch", "")),
                    num(st.get("best_score")),
                    esc(st.get("early_stopped", "")),
                )
                for st in stages
            ],
        )
    if path.exists():
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if records:
            body += (
                '<div class="figs">'
                + img_tag(plots.training_png(records), "training curves")
                + "</div>"
            )
    else:
        body += "<p>No metrics.jsonl in this package.</p>"
    body += (
        f"<p>Device {esc(tr.get('device', '?'))}, seed {esc(tr.get('seed', '?'))}, "
        f"{esc(tr.get('seconds', '?'))} s.</p>"
    )
    return Section("training", "Training", body)


def _reproducibility(ev: Any, ctx: dict[str, Any]) -> Section:

    meta = ev.predictor.meta
    tr = meta.get("training", {})
    now = versions()
    for name in ("scikit-learn", "scipy", "matplotlib"):
        try:
            # lazy: importlib (optional: its absence is handled here)
            from importlib.metadata import version

            now[name] = version(name)
        except Exception:  # a missing distribution just is not listed
            continue
    then = meta.get("versions", {})
    keys = sorted(set(now) | set(then))
    body = (
        f"<p>Report command: <pre>{esc(ctx['command'])}</pre></p>"
        f"<p>Training command: <pre>{esc(tr.get('command') or 'n/a (Python API)')}</pre></p>"
        f"<p>Generated {esc(ctx['generated'])}; package {esc(ev.predictor.package.path)} "
        f"(weights sha256 {esc(meta.get('files', {}).get('model.safetensors', '?')[:16])}...).</p>"
    )
    body += table(
        ("software", "at training", "at this report"),
        [(esc(k), esc(then.get(k, "")), esc(now.get(k, ""))) for k in keys],
    )
    return Section("reproducibility", "Reproducibility", body)


BUILTIN: dict[str, Callable[[Any, dict[str, Any]], Section | None]] = {
    "summary": _summary,
    "model_card": _model_card,
    "data": _data,
    "metrics": _metrics,
    "operating_point": _operating_point,
    "curves": _curves,
    "calibration": _calibration,
    "subgroups": _subgroups,
    "per_modality": _per_modality,
    "training": _training,
    "reproducibility": _reproducibility,
}


def _safe(build: Callable[[], Section | None], slot: str, title: str) -> Section | None:
    try:
        return build()
    except Exception as err:  # one broken section must not lose the report
        log.warning("report section %r failed: %s", slot, err)
        return Section(slot, title, f'<p class="warn">This section failed: {esc(err)}</p>')


def build_report(
    ev: Any,
    *,
    command: str | None = None,
    extra_sections: Sequence[Section] = (),
    providers: bool = True,
) -> str:
    """The report HTML for an evaluation (``clinical_evaluation(..., curves=True)``).

    ``extra_sections`` fill slots (e.g. ``modality_contributions``) or are appended before
    'reproducibility'; registered ``SECTION_PROVIDERS`` run too unless ``providers=False``.
    """
    if providers:
        load_providers()
    ctx: dict[str, Any] = {
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "toc": [],
    }
    by_slot: dict[str, Section | None] = {}
    for slot in SLOTS:
        if slot in BUILTIN and slot != "summary":
            by_slot[slot] = _safe(lambda s=slot: BUILTIN[s](ev, ctx), slot, slot)
        elif providers and slot in SECTION_PROVIDERS:
            by_slot[slot] = _safe(lambda s=slot: SECTION_PROVIDERS[s](ev), slot, slot)
    extras_after: list[Section] = []
    for sec in extra_sections:
        if sec.id in SLOTS:
            by_slot[sec.id] = sec
        else:
            extras_after.append(sec)
    order: list[Section] = []
    for slot in SLOTS:
        if slot == "reproducibility":
            order += extras_after
        sec = by_slot.get(slot)
        if sec is not None:
            order.append(sec)
    ctx["toc"] = [(s.id, s.title) for s in order]
    summary = _safe(lambda: _summary(ev, ctx), "summary", "Summary")
    order.insert(0, summary)  # type: ignore[arg-type]
    meta = ev.predictor.meta
    title = f"medfuse evaluation report: {meta.get('name')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{esc(title)}</h1><div class='sub'>{esc(meta.get('task'))} - "
        f"{esc(', '.join(meta.get('labels', [])))} - split {esc(ev.summary['split'])} - "
        f"{esc(scored_text(ev.predictor.scored))} - "
        f"python {esc(platform.python_version())}</div></header><main>",
    ]
    for sec in order:
        parts.append(f'<section id="{esc(sec.id)}"><h2>{esc(sec.title)}</h2>{sec.body}</section>')
    parts.append("</main></body></html>")
    return "\n".join(parts)


def write_report(
    package: str | Path,
    output: str | Path = "report.html",
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    device: str = "cpu",
    n_boot: int = 1000,
    seed: int = 0,
    subgroup: str | None = "auto",
    command: str | None = None,
    extra_sections: Sequence[Section] = (),
    data: str | Path | None = None,
) -> tuple[Path, Any]:
    """Evaluate ``package`` and write the self-contained report; returns (path, evaluation).
    ``output``'s folder must exist (checked before the evaluation)."""

    out = output_file(output, "--output")
    ev = clinical_evaluation(
        package,
        split=split,
        data_dir=data_dir,
        device=device,
        n_boot=n_boot,
        seed=seed,
        subgroup=subgroup,
        curves=True,
        data=data,
    )
    text = build_report(ev, command=command, extra_sections=extra_sections)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise MedfuseError(f"--output {out}: cannot write it ({err.strerror or err})") from None
    return out, ev
