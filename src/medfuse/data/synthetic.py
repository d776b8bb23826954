"""SYNTHETIC virtual patients: image + signal + tabular, label depending on all three together.

Each patient has one latent factor per modality (z_image, z_signal, z_tabular ~ N(0, 1)). The
label is ``1[w_image*z_image + w_signal*z_signal + w_tabular*z_tabular + noise > 0]`` and each
factor is only visible, noisily, in its own modality:
  - image: a bright blob at a random position whose contrast encodes z_image, on textured noise;
  - signal: a rhythm whose burst amplitude encodes z_signal, with noise and baseline wander;
  - tabular: ``marker`` encodes z_tabular; ``age`` and ``bmi`` are distractors.
So no single branch can see more than its share, and fusion measurably wins. The generator
records the true contribution ``w_m * z_m`` of each modality per case (``contrib_<m>`` in meta).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import SpecError
from medfuse.core.spec import ModalitySpec
from medfuse.data import DATASETS, DataBundle, Split

DEFAULTS: dict[str, Any] = {
    "n_train": 1500,
    "n_val": 500,
    "n_test": 1000,
    "image_size": 28,
    "signal_length": 128,
    "signal_channels": 2,
    "weights": {"image": 1.0, "signal": 1.0, "tabular": 1.0, "text": 1.0},
    "label_noise": 0.3,
    "missing": {},
    "text": False,
    "text_length": 24,
}
#: words of the generated notes: some lean positive, some negative, the rest say nothing
POSITIVE_WORDS = ("fever", "worse", "acute", "elevated", "pain", "tachycardic", "deteriorating")
NEGATIVE_WORDS = ("stable", "improved", "normal", "resolved", "comfortable", "afebrile", "clear")
FILLER_WORDS = (
    "patient", "seen", "today", "reports", "history", "noted", "on", "ward", "review",
    "plan", "continue", "monitoring", "family", "aware", "the", "and", "with", "overnight",
)  # fmt: skip


def generate(n: int, *, seed: int, **opts: Any) -> Split:
    """``n`` virtual patients; deterministic for a given seed and options."""
    o = {**DEFAULTS, **opts}
    w = {**DEFAULTS["weights"], **o["weights"]}
    rng = np.random.default_rng(seed)
    names = ("image", "signal", "tabular", "text") if o["text"] else ("image", "signal", "tabular")
    z = {m: rng.standard_normal(n) for m in names}
    logit = sum(w[m] * z[m] for m in z) + o["label_noise"] * rng.standard_normal(n)
    y = (logit > 0).astype(np.float32)

    s = int(o["image_size"])
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cy, cx = rng.uniform(s * 0.25, s * 0.75, (2, n))
    radius = rng.uniform(s * 0.08, s * 0.16, n)
    blob = np.exp(
        -((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2)
        / (2 * radius[:, None, None] ** 2)
    )
    contrast = 1.0 + 0.45 * z["image"]
    image = 0.4 * rng.standard_normal((n, s, s)) + contrast[:, None, None] * blob * 2.0
    image = image[:, None].astype(np.float32)  # (N, 1, S, S)

    t = np.linspace(0, 1, int(o["signal_length"]), dtype=np.float32)
    c = int(o["signal_channels"])
    freq = rng.uniform(3, 6, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    amp = 1.0 + 0.45 * z["signal"]
    centre = rng.uniform(0.3, 0.7, (n, 1, 1))
    envelope = np.exp(-((t[None, None] - centre) ** 2) / (2 * 0.08**2))
    lead_gain = np.linspace(1.0, 0.6, c)[None, :, None]
    signal = lead_gain * (
        amp[:, None, None] * envelope * np.sin(2 * np.pi * 4 * freq * t[None, None] + phase)
    )
    signal += 0.3 * np.sin(2 * np.pi * 0.5 * t[None, None] + rng.uniform(0, 6, (n, 1, 1)))  # wander
    signal += 0.25 * rng.standard_normal((n, c, t.size))
    signal = signal.astype(np.float32)

    tab = np.stack(
        [
            rng.normal(60, 12, n),  # age (distractor)
            rng.normal(26, 4, n),  # bmi (distractor)
            z["tabular"] + 0.5 * rng.standard_normal(n),  # marker
        ],
        axis=1,
    ).astype(np.float32)

    arrays = {"image": image, "signal": signal, "tabular": tab}
    if o["text"]:
        arrays["text"] = notes(z["text"], rng)
    masks = {m: np.ones(n, np.float32) for m in arrays}
    for m, rate in dict(o["missing"]).items():
        if m not in arrays:
            raise SpecError(
                f"data.options.missing.{m}", f"no such modality; use {', '.join(arrays)}"
            )
        gone = rng.random(n) < float(rate)
        masks[m][gone] = 0.0
        arrays[m][gone] = np.nan if m == "tabular" else ("" if m == "text" else 0.0)
    meta = pd.DataFrame(
        {
            "id": [f"synthetic-{seed}-{i}" for i in range(n)],
            "patient_id": [f"vp-{seed}-{i}" for i in range(n)],
            "sex": rng.choice(["F", "M"], n),
            **{f"contrib_{m}": w[m] * z[m] for m in z},
        }
    )
    return Split(arrays, masks, y, meta)


def notes(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One short clinical-style note per case: 3-6 signal words, each positive-leaning with
    probability sigmoid(1.5 z) (else negative-leaning), among 4-10 filler words."""
    out = np.empty(len(z), dtype=object)
    p_pos = 1.0 / (1.0 + np.exp(-1.5 * z))
    for i in range(len(z)):
        k = int(rng.integers(3, 7))
        signal = [
            str(rng.choice(POSITIVE_WORDS if rng.random() < p_pos[i] else NEGATIVE_WORDS))
            for _ in range(k)
        ]
        words = signal + [str(w) for w in rng.choice(FILLER_WORDS, int(rng.integers(4, 11)))]
        rng.shuffle(words)
        out[i] = " ".join(words).capitalize() + "."
    return out


@DATASETS.register("synthetic")
def load_synthetic(
    arg: str,
    options: dict[str, Any],
    *,
    root: Path,
    modalities: dict[str, ModalitySpec],
    task: str | None,
    on_bad_row: str,
    seed: int,
) -> DataBundle:
    """Seeded SYNTHETIC virtual patients (image + signal + tabular); no download."""
    unknown = set(options) - set(DEFAULTS) - {"seed"}
    if unknown:
        raise SpecError(
            f"data.options.{sorted(unknown)[0]}", f"unknown option; allowed: {', '.join(DEFAULTS)}"
        )
    base = int(options.pop("seed", 1234))
    o = {**DEFAULTS, **options}
    gen = {k: v for k, v in o.items() if not k.startswith("n_")}
    train = generate(int(o["n_train"]), seed=base, **gen)
    val = generate(int(o["n_val"]), seed=base + 1, **gen)
    test = generate(int(o["n_test"]), seed=base + 2, **gen)
    mods = {
        "image": ModalitySpec(kind="image", channels=1, size=[int(o["image_size"])] * 2),
        "signal": ModalitySpec(
            kind="signal", channels=int(o["signal_channels"]), length=int(o["signal_length"])
        ),
        "tabular": ModalitySpec(kind="tabular", columns=["age", "bmi", "marker"]),
    }
    if o["text"]:  # generated notes whose words carry the text factor (tokenized after loading)
        mods["text"] = ModalitySpec(kind="text", length=int(o["text_length"]), vocab=256)
    return DataBundle(
        train,
        val,
        test,
        mods,
        ["negative", "positive"],
        "binary",
        info={
            "name": "SYNTHETIC virtual patients (not real data)",
            "synthetic": True,
            "options": o,
        },
        positive="positive",
    )
