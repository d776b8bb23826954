"""``Explainer``: one loaded package, every explanation; ``explain_file``: ``medfuse explain``.

What is explained: for a binary task the positive class (``labels[1]``); for a multiclass or
multilabel task the predicted class (highest probability), unless a ``target`` is given. Maps
(Grad-CAM, integrated gradients) are on the explained class's *logit* (pre-sigmoid/softmax, as
usual for gradients); modality Shapley values are on the calibrated *probability* scale (the
number a clinician sees), with the logit-scale values reported beside them.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.core.errors import DataError, SpecError, did_you_mean
from medfuse.core.paths import output_dir
from medfuse.core.predictor import affected_rows, deployed_onnx
from medfuse.core.preprocess import normalize
from medfuse.core.text import tokens as text_tokens
from medfuse.explain import gradcam, integrated
from medfuse.explain.gradcam import resolve_layer
from medfuse.explain.plots import (
    dataset_contributions,
    gradcam_overlay,
    modality_waterfall,
    signal_attribution,
    signed_bars,
)
from medfuse.explain.shapley import SCALES, ShapleyResult, modality_shapley
from medfuse.inference.predictor import decide, load
from medfuse.training.metrics import probabilities

log = logging.getLogger("medfuse.explain")

#: the scale the modality contributions are drawn and ranked on
SHAPLEY_SCALE = "probability"
#: a text's picture shows its tokens with the largest |attribution|, up to this many
MAX_TOKENS = 24


def _round(a: Any, digits: int = 6) -> Any:
    return np.round(np.asarray(a, np.float64), digits).tolist()


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


@dataclass
class Explained:
    """Explanations of a batch: ``samples`` (JSON-ready dicts), ``pictures`` (per sample
    ``{name: png bytes}``) and the Shapley results over the batch."""

    samples: list[dict[str, Any]]
    pictures: list[dict[str, bytes]]
    shapley: dict[str, ShapleyResult] = field(default_factory=dict)


class Explainer:
    """Explanations for one model package (a loaded ``medfuse.inference.predictor.Predictor``)."""

    def __init__(
        self,
        predictor: Any,
        *,
        layer: str | None = None,
        steps: int = 32,
        target: str | int | None = None,
    ) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.spec = predictor.spec
        self.modalities = dict(self.spec.modalities)
        self.names = list(self.modalities)
        self.stats = predictor.meta["preprocessing"]
        self.labels = list(predictor.labels)
        self.task = predictor.task
        self.layer = layer
        self.steps = int(steps)
        if self.steps < 1:
            raise SpecError("--steps", f"must be >= 1; got {steps}")
        self.target = self._target_index(target)
        self.image_layers: dict[str, str | None] = {}

        images = [m for m, s in self.modalities.items() if s.kind == "image"]
        if layer is not None:
            owner = [m for m in images if layer.startswith(f"branches.{m}.")]
            if not images or (layer.startswith("branches.") and not owner):
                raise SpecError(
                    "--layer",
                    f"{layer!r} names no layer of an image branch; image modalities: "
                    f"{', '.join(images) or '(none)'}",
                )
        for m in images:
            mine = layer
            if (
                layer is not None
                and layer.startswith("branches.")
                and not layer.startswith(f"branches.{m}.")
            ):
                mine = None  # the layer belongs to another image branch
            try:
                self.image_layers[m] = resolve_layer(self.model, m, mine)[0]
            except SpecError:
                if mine is not None:
                    raise
                self.image_layers[m] = None  # no convolution: integrated gradients instead

    @classmethod
    def from_package(cls, path: str | Path, *, device: str = "cpu", **kw: Any) -> Explainer:

        return cls(load(path, device=device), **kw)

    # ---- inputs and targets -------------------------------------------------------------

    def _target_index(self, target: str | int | None) -> int | None:
        """Class index to explain (multiclass/multilabel); binary models: the positive class."""
        if target is None:
            return None
        if self.task == "binary":
            # a class name first: with labels ['1', '0'], '1' names the negative class
            if str(target) == self.labels[1] or (str(target) == "1" and "1" not in self.labels):
                return None
            raise SpecError(
                "--target",
                f"a binary model is explained for its positive class {self.labels[1]!r}; "
                f"got {target!r}",
            )
        if str(target) in self.labels:
            return self.labels.index(str(target))
        try:
            idx = int(target)
        except (TypeError, ValueError):
            raise SpecError(
                "--target",
                f"no class {target!r}{did_you_mean(str(target), self.labels)} "
                f"Allowed: {', '.join(self.labels)} (or an index)",
            ) from None
        if not 0 <= idx < len(self.labels):
            raise SpecError("--target", f"class index {idx} out of range 0..{len(self.labels) - 1}")
        return idx

    def tensors(
        self, arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Raw arrays + masks -> normalised tensors as the model sees them (absent = 0)."""
        dev = self.predictor.device
        missing = [m for m in self.names if m not in arrays]
        if missing:
            raise DataError(f"no input for modality {missing[0]!r}; modalities: {self.names}")
        inputs, mk = {}, {}
        for m in self.names:
            mask = np.asarray(masks[m], np.float32)
            inputs[m] = torch.from_numpy(normalize(arrays[m], mask, self.stats[m])).to(dev)
            mk[m] = torch.from_numpy(mask).to(dev)
        return inputs, mk

    def _targets(self, logits: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        if self.task == "binary":
            return torch.zeros(n, dtype=torch.long)
        if self.target is not None:
            return torch.full((n,), self.target, dtype=torch.long)
        return logits.argmax(dim=1).cpu()

    # ---- explanations -------------------------------------------------------------------

    def shapley(
        self, arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray], *, batch: int = 256
    ) -> dict[str, ShapleyResult]:
        """Exact modality Shapley values for every sample (both scales), in chunks."""
        n = len(masks[self.names[0]])
        parts: list[dict[str, ShapleyResult]] = []
        for s in range(0, n, batch):
            sl = slice(s, s + batch)
            inputs, mk = self.tensors(
                {m: arrays[m][sl] for m in self.names}, {m: masks[m][sl] for m in self.names}
            )
            with torch.no_grad():
                tgt = self._targets(self.model(inputs, mk))
            parts.append(
                modality_shapley(
                    self.model,
                    inputs,
                    mk,
                    task=self.task,
                    target=tgt,
                    temperature=self.predictor.temperature,
                )
            )
        out = {}
        for sc in SCALES:
            rs = [p[sc] for p in parts]
            out[sc] = ShapleyResult(
                self.names,
                sc,
                np.concatenate([r.values for r in rs]) if rs else np.zeros((0, len(self.names))),
                np.concatenate([r.base for r in rs]) if rs else np.zeros(0),
                np.concatenate([r.full for r in rs]) if rs else np.zeros(0),
            )
        return out

    def explain(
        self,
        arrays: dict[str, np.ndarray],
        masks: dict[str, np.ndarray],
        ids: list[str] | None = None,
        *,
        pictures: bool = True,
    ) -> Explained:
        """Every explanation of every sample in a (small) batch of raw inputs."""

        inputs, mk = self.tensors(arrays, masks)
        n = len(mk[self.names[0]])
        ids = list(ids) if ids is not None else [str(i) for i in range(n)]
        with torch.no_grad():
            logits = self.model(inputs, mk)  # (B, K)
        tgt = self._targets(logits)
        lg = logits.float().cpu().numpy()
        p = probabilities(self.task, lg, self.predictor.temperature)
        decided = decide(self.task, p, self.labels, self.predictor.threshold)
        shap = modality_shapley(
            self.model,
            inputs,
            mk,
            task=self.task,
            target=tgt,
            temperature=self.predictor.temperature,
        )
        samples: list[dict[str, Any]] = []
        pics: list[dict[str, bytes]] = [{} for _ in range(n)]
        for i in range(n):
            k = int(tgt[i])
            label = self.labels[1] if self.task == "binary" else self.labels[k]
            prob = float(p[i]) if self.task == "binary" else float(p[i, k])
            samples.append(
                {
                    "id": ids[i],
                    "prediction": {
                        "label": decided[i],
                        "probabilities": (
                            {self.labels[0]: float(1.0 - p[i]), self.labels[1]: float(p[i])}
                            if self.task == "binary"
                            else {lab: float(p[i, j]) for j, lab in enumerate(self.labels)}
                        ),
                        "threshold": (
                            self.predictor.threshold if self.task != "multiclass" else None
                        ),
                        "missing": [m for m in self.names if not mk[m][i] > 0],
                    },
                    "explained": {
                        "class": label,
                        # the class's place in labels (binary: 1, the positive class, whose
                        # single logit is explained; it said 0, the negative class's place)
                        "index": 1 if self.task == "binary" else k,
                        "probability": prob,
                        "logit": float(lg[i, 0 if self.task == "binary" else k]),
                    },
                    "present": {m: bool(mk[m][i] > 0) for m in self.names},
                    "shapley": {sc: shap[sc].sample(i) for sc in SCALES},
                    "maps": {},
                }
            )
        for m, s in self.modalities.items():
            present = (mk[m] > 0).cpu().numpy()
            if not present.any():
                continue
            if s.kind == "image" and self.image_layers.get(m):
                r = gradcam.grad_cam(self.model, inputs, mk, m, tgt, layer=self.image_layers[m])
                cm = gradcam.central_mass(r["upsampled"])
                for i in np.flatnonzero(present):
                    samples[i]["maps"][m] = {
                        "method": "grad-cam",
                        "layer": r["layer"],
                        "target_scale": "logit",
                        "cam": _round(r["cam"][i]),
                        "upsampled": _round(r["upsampled"][i], 5),
                        "central_mass": float(cm[i]) if np.isfinite(cm[i]) else None,
                    }
                    if pictures:
                        pics[i][m] = gradcam_overlay(
                            arrays[m][i],
                            r["upsampled"][i],
                            title=f"{ids[i]}: {m}, towards {samples[i]['explained']['class']}",
                        )
                continue
            if s.kind == "text":
                r = integrated.token_occlusion(self.model, inputs, mk, m, tgt)
                for i in np.flatnonzero(present):
                    a = r["attribution"][i]
                    feats = self._tokens(m, arrays[m][i], a)
                    samples[i]["maps"][m] = {
                        "method": "token-occlusion",
                        "baseline": "the token replaced by padding, one at a time",
                        "target_scale": "logit",
                        "total": float(a.sum()),
                        "features": feats,
                    }
                    if pictures:
                        shown = sorted(feats, key=lambda t: -abs(t["attribution"]))[:MAX_TOKENS]
                        shown.sort(key=lambda t: int(t["name"].split(":", 1)[0]))
                        pics[i][m] = signed_bars(
                            [t["name"] for t in shown],
                            [t["attribution"] for t in shown],
                            title=f"{ids[i]}: {m}, towards {samples[i]['explained']['class']}",
                            xlabel="logit change when the token is removed",
                        )
                continue
            r = integrated.integrated_gradients(self.model, inputs, mk, m, tgt, steps=self.steps)
            for i in np.flatnonzero(present):
                a = r["attribution"][i]
                entry: dict[str, Any] = {
                    "method": "integrated-gradients",
                    "baseline": "training mean (normalised zero)",
                    "steps": self.steps,
                    "target_scale": "logit",
                    "delta": float(r["delta"][i]),
                    "total": float(a.sum()),
                }
                title = f"{ids[i]}: {m}, towards {samples[i]['explained']['class']}"
                if s.kind == "tabular":
                    entry["features"] = self._features(m, arrays[m][i], a)
                    if pictures:
                        fs = entry["features"]
                        pics[i][m] = signed_bars(
                            [f["name"] for f in fs],
                            [f["attribution"] for f in fs],
                            labels=[f"{f['name']} = {f['display']}" for f in fs],
                            title=title,
                            xlabel="integrated gradients (logit)",
                        )
                else:
                    entry["attribution"] = _round(a)
                    if s.kind == "signal":
                        entry["per_lead"] = _round(np.abs(a).sum(axis=-1))
                    if pictures:
                        if s.kind == "signal" and a.ndim == 2:
                            pics[i][m] = signal_attribution(arrays[m][i], a, title=title)
                        elif s.kind == "image":
                            pics[i][m] = gradcam_overlay(
                                arrays[m][i], np.abs(a).sum(0), title=title + " (|IG|)"
                            )
                samples[i]["maps"][m] = entry
        if pictures:
            for i in range(n):
                sv = shap[SHAPLEY_SCALE].sample(i)
                pics[i]["modalities"] = modality_waterfall(
                    self.names,
                    [sv["values"][m] for m in self.names],
                    sv["base"],
                    sv["full"],
                    scale=SHAPLEY_SCALE,
                    title=f"{ids[i]}: modality contributions to P({samples[i]['explained']['class']})",
                )
        return Explained(samples, pics, shap)

    def _tokens(self, m: str, raw: np.ndarray, attr: np.ndarray) -> list[dict[str, Any]]:
        """A text's tokens (``position:token``) with their occlusion attributions."""
        st = self.stats[m]
        words = text_tokens(raw, st["tokenizer"], int(st.get("token_offset", 0)))
        positions = np.flatnonzero(np.asarray(raw).ravel() != 0)
        return [
            {
                "name": f"{j}:{w}",
                "value": float(np.asarray(raw).ravel()[j]),
                "display": w,
                "missing": False,
                "attribution": float(attr[j]),
            }
            for j, w in zip(positions, words, strict=True)
        ]

    def _features(self, m: str, raw: np.ndarray, attr: np.ndarray) -> list[dict[str, Any]]:
        cols = list(self.modalities[m].columns or [])
        cats = self.stats[m].get("categories", {}) or {}
        out = []
        for j, col in enumerate(cols):
            v = float(raw[j])
            missing = not np.isfinite(v)
            if missing:
                display = "missing"
            elif col in cats and 0 <= int(v) < len(cats[col]):
                display = str(cats[col][int(v)])
            else:
                display = f"{v:.4g}"
            out.append(
                {
                    "name": col,
                    "value": None if missing else v,
                    "display": display,
                    "missing": missing,
                    "attribution": float(attr[j]),
                }
            )
        return out


# ---- medfuse explain ------------------------------------------------------------------------


def parse_rows(text: str | None, n: int) -> list[int] | None:
    """``"0,3,5"`` or ``"0-4,9"`` -> row indices (0-based, in file order), checked against ``n``."""
    if text is None or not str(text).strip():
        return None
    rows: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                rows.extend(range(int(lo), int(hi) + 1))
            else:
                rows.append(int(part))
        except ValueError:
            raise SpecError(
                "--rows", f"expects 0-based row numbers like 0,3,5 or 0-4; got {text!r}"
            ) from None
    bad = [r for r in rows if not 0 <= r < n]
    if bad:
        raise SpecError("--rows", f"row {bad[0]} out of range; the input has {n} rows (0..{n - 1})")
    return rows


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "sample"


def explained_model(pred: Any) -> dict[str, Any]:
    """The model the attributions are of (they need its gradients: the weights, in PyTorch);
    for an INT8 package, which deploys its INT8 ``model.onnx``, a note saying so."""
    out = dict(pred.scored)
    if deployed_onnx(pred.meta):
        out["note"] = (
            "the package deploys its INT8 model.onnx, which has no gradients: these are the "
            "explanations of its fp32 weights, whose outputs differ slightly from the INT8 "
            "model's (medfuse quantize's record: label agreement, largest logit change)"
        )
    return out


def explain_file(
    package: str | Path,
    input_path: str | Path,
    *,
    out: str | Path,
    rows: str | list[int] | None = None,
    layer: str | None = None,
    target: str | int | None = None,
    steps: int = 32,
    device: str = "cpu",
    max_samples: int = 20,
    on_bad_row: str = "fail",
    base_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Explain the rows of a prediction input (manifest .csv / .npz / one file) and write
    ``explanation.json`` plus PNGs (``<id>_<modality>.png``, ``<id>_modalities.png`` and
    ``dataset_modalities.png`` when there are several rows) into ``out``. Returns the JSON written.

    The input is read by the one input contract (``medfuse.core.inputs``), exactly as
    ``medfuse predict`` reads it: a manifest in the training layout (ids from the spec's id
    column, relative paths against the manifest's folder or ``base_dir``), ``on_bad_row``
    "fail" (an unusable input stops with the row named) or "missing" (the modality is explained
    as absent and the sample says why; a row with no usable input is not explained and is
    listed under ``not_explained``). Each sample carries its ``reasons``, ``missing_values``
    (tabular columns without a value) and plausibility ``flags``.

    Maps are drawn for ``rows`` (default: the first ``max_samples``); modality Shapley values
    are computed for every explainable row and averaged over them (dataset level).
    """

    t0 = time.perf_counter()
    if int(max_samples) < 0:
        raise SpecError("--max-samples", f"must be >= 0; got {max_samples}")
    outdir = output_dir(out, "--out")  # before any work: a file in the way, not writable
    pred = load(package, device=device)
    ex = Explainer(pred, layer=layer, steps=steps, target=target)
    # the one input contract, as `medfuse predict` reads it
    batch = pred.inputs(input_path, on_bad_row=on_bad_row, base_dir=base_dir)
    ids = list(batch.ids)
    n = len(ids)
    ok = [i for i in range(n) if not batch.errors[i]]
    not_explained = [
        {"row": i, "id": ids[i], "error": batch.errors[i]} for i in range(n) if batch.errors[i]
    ]
    if not ok:
        raise DataError(f"{input_path}: no row has a usable input ({not_explained[0]['error']})")
    arrays = {m: batch.arrays[m][ok] for m in ex.names}
    masks = {m: batch.masks[m][ok] for m in ex.names}
    sel = rows if isinstance(rows, list) else parse_rows(rows, n)
    if sel is None:
        sel = ok[:max_samples]
        if len(ok) > max_samples:
            log.info(
                "maps for the first %d of %d rows (choose others with --rows)", max_samples, len(ok)
            )
    else:
        sel = [r for r in sel if not batch.errors[r]]
    outdir.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    used: set[str] = set()
    for s in range(0, len(sel), 16):
        chunk = sel[s : s + 16]
        res = ex.explain(
            {m: batch.arrays[m][chunk] for m in ex.names},
            {m: batch.masks[m][chunk] for m in ex.names},
            [ids[r] for r in chunk],
        )
        for r, sample, pics in zip(chunk, res.samples, res.pictures):
            sample["row"] = r
            sample["reasons"] = {m: why[r] for m, why in batch.reasons.items() if why[r]}
            sample["missing_values"] = list(batch.missing_values[r])
            sample["flags"] = list(batch.flags[r])
            stem = _safe(sample["id"])
            if stem in used:
                stem = f"{stem}_row{r}"
            used.add(stem)
            sample["pictures"] = {}
            for key, png in pics.items():
                name = f"{stem}_{key}.png"
                (outdir / name).write_bytes(png)
                sample["pictures"][key] = name
            samples.append(sample)
    shap = ex.shapley(arrays, masks)
    dataset = {sc: shap[sc].summary() for sc in SCALES}
    d = dataset[SHAPLEY_SCALE]
    picture = None
    if len(ok) > 1:
        picture = "dataset_modalities.png"
        png = dataset_contributions(
            ex.names,
            [d["mean_abs"][m] for m in ex.names],
            [d["mean"][m] for m in ex.names],
            scale=SHAPLEY_SCALE,
            n=d["n"],
        )
        (outdir / picture).write_bytes(png)
    doc = {
        "package": str(package),
        "input": str(input_path),
        "task": ex.task,
        "labels": ex.labels,
        "explained": (
            f"positive class {ex.labels[1]!r}"
            if ex.task == "binary"
            else (f"class {ex.labels[ex.target]!r}" if ex.target is not None else "predicted class")
        ),
        "scales": {
            "maps": "logit of the explained class",
            "shapley": f"{SHAPLEY_SCALE} of the explained class (logit values beside)",
        },
        "modalities": {m: s.kind for m, s in ex.modalities.items()},
        "model": explained_model(pred),
        "on_bad_row": on_bad_row,
        "samples": samples,
        "not_explained": not_explained,
        "affected": affected_rows(batch),
        "dataset": {
            "n": len(ok),
            "shapley": dataset,
            "per_sample": {
                "ids": [ids[i] for i in ok],
                SHAPLEY_SCALE: _round(shap[SHAPLEY_SCALE].values),
            },
            "picture": picture,
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (outdir / "explanation.json").write_text(
        json.dumps(finite_or_none(doc), indent=1, allow_nan=False)
    )
    return doc
