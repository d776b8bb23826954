"""Report figures as PNG bytes (matplotlib's object API on the Agg canvas: no pyplot state, no
display needed): ROC and PR curves with bootstrap bands, reliability diagrams before/after
temperature scaling, the confusion matrix, forest plots, and training curves."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DPI = 110
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


def _figure(w: float = 4.6, h: float = 3.8, ncols: int = 1) -> tuple[Any, list[Any]]:
    # lazy: matplotlib, only to draw a figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # lazy: matplotlib, only to draw a figure
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def roc_png(
    bands: dict[str, dict[str, Any]], aurocs: dict[str, dict[str, float]] | None = None
) -> bytes:
    """ROC curve(s) (TPR on a fixed FPR grid) with the bootstrap band of each."""
    fig, (ax,) = _figure()
    for i, (name, b) in enumerate(bands.items()):
        c = COLORS[i % len(COLORS)]
        g, r = b["grid"], b["roc"]
        label = name
        if aurocs and name in aurocs:
            a = aurocs[name]
            label = f"{name}: AUROC {a['value']:.3f} ({a['lo']:.3f}-{a['hi']:.3f})"
        ax.fill_between(g, r["lo"], r["hi"], color=c, alpha=0.2, linewidth=0)
        ax.plot(g, r["value"], color=c, label=label, linewidth=1.8)
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC with 95% bootstrap band", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def pr_png(
    bands: dict[str, dict[str, Any]], auprcs: dict[str, dict[str, float]] | None = None
) -> bytes:
    """Precision-recall curve(s) (interpolated precision on a recall grid) with bands."""
    fig, (ax,) = _figure()
    for i, (name, b) in enumerate(bands.items()):
        c = COLORS[i % len(COLORS)]
        g, r = b["grid"], b["pr"]
        label = name
        if auprcs and name in auprcs:
            a = auprcs[name]
            label = f"{name}: AUPRC {a['value']:.3f} ({a['lo']:.3f}-{a['hi']:.3f})"
        ax.fill_between(g, r["lo"], r["hi"], color=c, alpha=0.2, linewidth=0, step="post")
        ax.plot(g, r["value"], color=c, label=label, linewidth=1.8, drawstyle="steps-post")
        ax.axhline(b.get("prevalence", 0), color=c, linestyle=":", linewidth=1)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("Precision-recall with 95% bootstrap band", fontsize=10)
    ax.legend(loc="lower left", fontsize=7)
    return _png(fig)


def _reliability_axis(ax: Any, rel: dict[str, Any], title: str, color: str) -> None:
    edges = np.asarray(rel["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    conf = np.asarray(rel["confidence"], float)
    obs = np.asarray(rel["observed"], float)
    count = np.asarray(rel["count"], float)
    ok = count > 0
    ax.bar(
        centres[ok],
        obs[ok],
        width=np.diff(edges)[ok],
        color=color,
        alpha=0.35,
        edgecolor=color,
        label="observed frequency",
    )
    ax.plot(conf[ok], obs[ok], "o-", color=color, markersize=4, label="bin mean")
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1, label="perfect")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel=rel.get("x", "predicted probability"),
        ylabel="observed frequency",
    )
    ax.set_title(f"{title}\nECE {rel['ece']:.3f} ({rel.get('binning', '')})", fontsize=9)
    ax2 = ax.twinx()
    ax2.bar(
        centres, count / max(count.sum(), 1), width=np.diff(edges) * 0.3, color="grey", alpha=0.4
    )
    ax2.set_ylim(0, 4)
    ax2.set_yticks([])


def reliability_png(panels: Sequence[tuple[str, dict[str, Any]]]) -> bytes:
    """Reliability diagrams side by side (e.g. before / after temperature scaling). Grey bars
    at the bottom: the share of samples in each bin."""
    fig, axes = _figure(3.8, 3.9, ncols=max(1, len(panels)))
    for i, (ax, (title, rel)) in enumerate(zip(axes, panels)):
        _reliability_axis(ax, rel, title, COLORS[i % len(COLORS)])
    axes[0].legend(loc="upper left", fontsize=7)
    return _png(fig)


def confusion_png(cm: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> bytes:
    """Counts (and row percentages) of the confusion matrix; rows = truth, columns = predicted."""
    m = np.asarray(cm, float)
    k = len(m)
    size = min(8.0, 2.4 + 0.6 * k)
    fig, (ax,) = _figure(size, size * 0.85)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}\n{frac[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if frac[i, j] > 0.6 else "black",
            )
    names = [str(s)[:14] for s in labels]
    ax.set_xticks(range(k), names, rotation=30 if k > 3 else 0, fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def forest_png(
    rows: Sequence[tuple[str, float, float, float]],
    *,
    xlabel: str,
    title: str,
    reference: float | None = None,
    xlim: tuple[float, float] | None = None,
) -> bytes:
    """A forest plot: one point estimate and its CI per row (top to bottom as given)."""
    n = max(1, len(rows))
    fig, (ax,) = _figure(5.6, 0.9 + 0.42 * n)
    ys = np.arange(n)[::-1]
    for y, (_, v, lo, hi) in zip(ys, rows):
        ok = all(isinstance(x, float | int) and math.isfinite(x) for x in (v, lo, hi))
        if not ok:
            continue
        ax.plot([lo, hi], [y, y], color=COLORS[0], linewidth=2)
        ax.plot([v], [y], "s", color=COLORS[0], markersize=6)
    if reference is not None:
        ax.axvline(reference, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    if xlim:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def training_png(records: Sequence[dict[str, Any]], metric: str = "auroc") -> bytes:
    """Train/validation loss and the validation metric per epoch, stages marked."""
    fig, (ax1, ax2) = _figure(4.4, 3.4, ncols=2)
    x = np.arange(1, len(records) + 1)
    tl = [r.get("train_loss", np.nan) for r in records]
    vl = [r.get("val_loss", np.nan) for r in records]
    vm = [(r.get("val") or {}).get(metric, np.nan) for r in records]
    ax1.plot(x, tl, "-o", markersize=3, label="train loss", color=COLORS[0])
    ax1.plot(x, vl, "-o", markersize=3, label="val loss", color=COLORS[1])
    ax1.set(xlabel="epoch (all stages)", ylabel="loss")
    ax1.legend(fontsize=7)
    ax2.plot(x, vm, "-o", markersize=3, color=COLORS[2])
    ax2.set(xlabel="epoch (all stages)", ylabel=f"val {metric} (fused)")
    best = [i + 1 for i, r in enumerate(records) if r.get("best")]
    if best:
        ax2.plot(
            best, [vm[i - 1] for i in best], "*", color="black", markersize=7, label="new best"
        )
        ax2.legend(fontsize=7)
    stages = [r.get("stage") for r in records]
    for ax in (ax1, ax2):
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=0.8)
    names = []
    for s in stages:
        if not names or names[-1] != s:
            names.append(s)
    fig.suptitle("training: " + " -> ".join(str(s) for s in names), fontsize=9)
    return _png(fig)
