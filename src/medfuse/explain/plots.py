"""The pictures: Grad-CAM overlays, signal attributions over the waveform, signed bar charts.

Every function returns PNG bytes. Figures are built with ``matplotlib.figure.Figure`` (no pyplot
state), so they are safe to draw from a server's worker threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

POS, NEG = "#c0392b", "#2e6fba"  # red pushes towards the explained class, blue away


def _figure(w: float, h: float, **margins: float):
    """A figure with fixed margins (constrained layout costs ~0.3 s a figure on this CPU)."""
    # lazy: matplotlib, only to draw a figure
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    fig.subplots_adjust(**{"left": 0.1, "right": 0.95, "bottom": 0.12, "top": 0.88, **margins})
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) or (C, D, H, W) raw -> something imshow draws (middle slice of a volume)."""
    x = np.asarray(image, np.float32)
    if x.ndim == 4:
        x = x[:, x.shape[1] // 2]
    x = np.nan_to_num(x)
    lo, hi = np.percentile(x, 1), np.percentile(x, 99)
    x = np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    if x.shape[0] == 3:
        return x.transpose(1, 2, 0), None
    return x[0] if x.shape[0] == 1 else x.mean(0), "gray"


def gradcam_overlay(
    image: np.ndarray, cam: np.ndarray, *, title: str = "", alpha: float = 0.45
) -> bytes:
    """The image (left) and the image with the Grad-CAM heat map over it (right)."""
    img, cmap = _display_image(image)
    c = np.asarray(cam, np.float32)
    if c.ndim == 3:
        c = c[c.shape[0] // 2]
    c = c / c.max() if c.max() > 0 else c
    fig = _figure(6.4, 3.4, left=0.02, right=0.9, bottom=0.03, top=0.85, wspace=0.08)
    a0, a1 = fig.subplots(1, 2)
    a0.imshow(img, cmap=cmap, interpolation="nearest")
    a0.set_title("input", fontsize=9)
    a1.imshow(img, cmap=cmap, interpolation="nearest")
    im = a1.imshow(c, cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
    a1.set_title("Grad-CAM (relative)", fontsize=9)
    for a in (a0, a1):
        a.set_xticks([])
        a.set_yticks([])
    fig.colorbar(im, cax=fig.add_axes((0.92, 0.1, 0.02, 0.7)))
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def signal_attribution(
    signal: np.ndarray,
    attribution: np.ndarray,
    *,
    leads: Sequence[str] | None = None,
    title: str = "",
    max_leads: int = 12,
) -> bytes:
    """One panel per lead: the waveform (black) over a band coloured by its signed attribution."""
    # lazy: matplotlib, only to draw a figure
    from matplotlib.collections import LineCollection

    x = np.asarray(signal, np.float32)
    a = np.asarray(attribution, np.float32)
    c = min(x.shape[0], max_leads)
    t = np.arange(x.shape[1])
    lim = float(np.abs(a[:c]).max()) or 1.0
    h = 0.9 + 1.3 * c
    fig = _figure(8.0, h, left=0.09, right=0.86, bottom=0.45 / h, top=1 - 0.4 / h, hspace=0.15)
    axes = np.atleast_1d(fig.subplots(c, 1, sharex=True, squeeze=False)[:, 0])
    lc = None
    for i, ax in enumerate(axes):
        pts = np.stack([t, x[i]], axis=1)
        segs = np.stack([pts[:-1], pts[1:]], axis=1)
        lc = LineCollection(segs, linewidths=3.2, alpha=0.85, zorder=1)
        lc.set_array((a[i, :-1] + a[i, 1:]) / 2)
        lc.set_cmap("bwr")  # white (invisible) where the attribution is ~0
        lc.set_clim(-lim, lim)
        ax.add_collection(lc)
        ax.plot(t, x[i], color="black", linewidth=0.7, zorder=2)
        lo, hi = float(np.nanmin(x[i])), float(np.nanmax(x[i]))
        pad = 0.1 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(0, len(t) - 1)
        ax.set_ylabel(leads[i] if leads and i < len(leads) else f"lead {i}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("time (samples)", fontsize=8)
    if lc is not None:
        fig.colorbar(
            lc, cax=fig.add_axes((0.88, 0.45 / h, 0.015, 1 - 0.85 / h)), label="IG attribution"
        )
    if x.shape[0] > c:
        fig.text(0.01, 0.005, f"first {c} of {x.shape[0]} leads shown", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def signed_bars(
    names: Sequence[str],
    values: Sequence[float],
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "attribution",
) -> bytes:
    """Horizontal signed bars (red > 0 pushes towards the explained class, blue < 0 away)."""
    v = np.asarray(values, np.float64)
    n = len(v)
    h = 1.0 + 0.35 * max(n, 2)
    fig = _figure(6.0, h, left=0.3, bottom=0.45 / h, top=1 - 0.35 / h)
    ax = fig.subplots()
    ypos = np.arange(n)[::-1]
    ax.barh(ypos, v, color=[POS if x > 0 else NEG for x in v], height=0.6)
    ax.set_yticks(ypos, labels=list(labels) if labels is not None else list(names), fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    lim = float(np.abs(v).max()) if n else 1.0
    ax.set_xlim(-1.25 * (lim or 1.0), 1.25 * (lim or 1.0))
    for y, x in zip(ypos, v):
        ax.text(
            x, y, f" {x + 0.0:+.3g} ", va="center", ha="left" if x >= 0 else "right", fontsize=7
        )
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return _png(fig)


def modality_waterfall(
    names: Sequence[str],
    values: Sequence[float],
    base: float,
    full: float,
    *,
    scale: str,
    title: str = "",
) -> bytes:
    """From ``f(no modality)`` to ``f(all present)``: one step per modality (Shapley value)."""
    v = np.asarray(values, np.float64)
    h = 1.0 + 0.42 * (len(v) + 2)
    fig = _figure(6.0, h, left=0.2, bottom=0.45 / h, top=1 - 0.35 / h)
    ax = fig.subplots()
    rows = ["none present", *names, "prediction"]
    ypos = np.arange(len(rows))[::-1]
    ax.barh(ypos[0], base, color="#888888", height=0.6)
    left = base
    for k, x in enumerate(v, start=1):
        ax.barh(ypos[k], x, left=left, color=POS if x > 0 else NEG, height=0.6)
        ax.text(
            left + x,
            ypos[k],
            f" {x:+.3f} ",
            va="center",
            ha="left" if x >= 0 else "right",
            fontsize=7,
        )
        left += x
    ax.barh(ypos[-1], full, color="#444444", height=0.6)
    ax.text(base, ypos[0], f" {base:.3f}", va="center", fontsize=7)
    ax.text(full, ypos[-1], f" {full:.3f}", va="center", fontsize=7)
    ax.set_yticks(ypos, labels=rows, fontsize=8)
    ax.set_xlabel(f"{scale} of the explained class", fontsize=8)
    if scale == "probability":
        ax.set_xlim(0, 1.08)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title or "modality contributions (exact Shapley)", fontsize=10)
    return _png(fig)


def dataset_contributions(
    names: Sequence[str], mean_abs: Sequence[float], mean: Sequence[float], *, scale: str, n: int
) -> bytes:
    """Dataset level: mean |Shapley| per modality (bars) with the mean signed value (marker)."""
    a, m = np.asarray(mean_abs, np.float64), np.asarray(mean, np.float64)
    h = 1.0 + 0.45 * max(len(a), 2)
    fig = _figure(6.0, h, left=0.2, bottom=0.45 / h, top=1 - 0.35 / h)
    ax = fig.subplots()
    ypos = np.arange(len(a))[::-1]
    ax.barh(ypos, a, color="#7f8c8d", height=0.6, label="mean |Shapley|")
    ax.scatter(m, ypos, color="black", marker="D", s=18, zorder=3, label="mean Shapley")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(ypos, labels=list(names), fontsize=8)
    ax.set_xlabel(f"{scale} of the explained class", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"modality contributions over {n} samples", fontsize=10)
    return _png(fig)
