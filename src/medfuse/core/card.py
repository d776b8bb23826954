"""The model card (``README.md`` inside a package)."""

from __future__ import annotations

import html
import re
from typing import Any

from medfuse.core.decision import SUMMARY_KEYS

_MARKDOWN = re.compile(r"([\\`*_\[\]|])")


def text(v: Any) -> str:
    """User text (names, labels, data descriptions) as inert Markdown: HTML escaped (no raw tag
    reaches a renderer), Markdown punctuation backslash-escaped, newlines folded."""
    s = html.escape(" ".join(str(v).split()), quote=True)
    return _MARKDOWN.sub(r"\\\1", s)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else text(v)


def _calibration_line(c: dict[str, Any]) -> str:
    if c.get("method", "none") == "none":
        return "- Calibration: none (probabilities as trained; `medfuse calibrate` fits one)"
    line = f"- Calibration: {c['method']} scaling, T = {c.get('temperature', 1.0):.4f}"
    if "ece_before" in c:
        line += (
            f", fitted on {c.get('fitted_on', 'val')}; validation ECE "
            f"{c['ece_before']:.4f} -> {c['ece_after']:.4f} ({c.get('binning', '10 bins')})"
        )
    if c.get("note"):  # a temperature at a bound; a multiclass AUROC that moved
        line += f"\n  - **Note:** {text(c['note'])}"
    return line


def _ensemble_note(spec: dict[str, Any], meta: dict[str, Any]) -> str:
    """`` (an ensemble of K members, seeds ...)`` for an ensemble package, else nothing."""
    if spec.get("ensemble", 1) == 1:
        return ""
    seeds = ", ".join(str(m["seed"]) for m in meta.get("training", {}).get("members", []))
    return (
        f" (an ensemble of {spec['ensemble']} members, seeds {seeds}, their probabilities averaged)"
    )


def model_card(meta: dict[str, Any], metrics: dict[str, Any]) -> str:
    spec = meta["spec"]
    data = meta.get("data", {})
    synthetic = bool(data.get("synthetic"))
    lines = [f"# Model card: {text(meta['name'])}", ""]
    if synthetic:
        lines += [
            "> **Trained on SYNTHETIC data (virtual patients).** Not for any clinical use.",
            "",
        ]
    lines += [
        f"- Task: {text(meta['task'])}; labels: {', '.join(text(x) for x in meta['labels'])}",
        f"- Data: {text(data.get('name', spec['data']['source']))}",
        "- Modalities: "
        + ", ".join(
            f"{text(n)} ({text(m['kind'])}, branch {text(spec['branches'][n]['type'])})"
            for n, m in spec["modalities"].items()
        ),
        f"- Fusion: {text(spec['fusion']['type'])}; parameters: {meta.get('parameters', '?'):,}"
        + _ensemble_note(spec, meta),
        f"- Decision threshold: {meta['threshold']['value']:.4f} "
        f"({text(meta['threshold'].get('method'))}"
        + (", chosen on validation)" if meta["threshold"].get("chosen_on") else ")")
        + (
            f"\n  - **Caution:** {text(meta['threshold']['caution'])}"
            if meta["threshold"].get("caution")
            else ""
        ),
        _calibration_line(meta.get("calibration") or {}),
        "- Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items() if k != "platform"),
        "",
        "## Metrics",
        "",
        "| split | " + " | ".join(SUMMARY_KEYS) + " |",
        "|---|" + "---|" * len(SUMMARY_KEYS),
    ]
    for split in ("val", "test"):
        if split in metrics:
            lines.append(
                f"| {split} | "
                + " | ".join(_fmt(metrics[split].get(k, "")) for k in SUMMARY_KEYS)
                + " |"
            )
    lines += [
        "",
        "## Intended use and limitations",
        "",
        "A research model. It has not been validated prospectively or cleared for clinical use. "
        "Performance was measured on the test split named above only; expect it to differ on other "
        "sites, devices and populations. Missing modalities are supported (presence masks), but "
        "metrics with a modality removed may be much lower.",
        "",
    ]
    return "\n".join(lines)
