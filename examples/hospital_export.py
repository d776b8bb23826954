"""Build a hospital-style export from BreastMNIST, the input of README's "Your own data".

    python examples/hospital_export.py hospital [--rows 300] [--new 20] [--seed 0]

Reads ``medmnist/breastmnist.npz`` from ``$MEDFUSE_DATA_DIR`` (else ``~/.cache/medfuse``) and
writes, under the output folder:

- ``images/``: one ultrasound image per case, as an 8-bit PNG for about half of the patients
  and as a 12-bit DICOM for the others (stored = 16 x pixel, RescaleIntercept -1024, with a
  WindowCenter/WindowWidth spanning the stored range, as a scanner export would carry);
- ``cases.csv``: ``case_id, patient_id, image, age, sex, ca15_3, diagnosis``, one row per case,
  some patients with two cases, about 8% of the cases without an image (empty cell), about 15%
  without the lab value (``ca15_3``), and a string label ``benign`` / ``malignant``;
  image paths relative to the CSV's folder;
- ``new_cases.csv``: the same layout without ``diagnosis``, cases from BreastMNIST's test images
  (never in ``cases.csv``), for ``medfuse predict``.

Age and the lab value are SYNTHETIC (drawn with a weak dependence on the label); the images and
labels are BreastMNIST's (MedMNIST v2, CC BY 4.0): label 0 is malignant, 1 normal or benign.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from medfuse.data import resolve_data_root
from medfuse.data.examples import write_dicom, write_png
from medfuse.data.medmnist import locate

COLUMNS = ["case_id", "patient_id", "image", "age", "sex", "ca15_3", "diagnosis"]


def _cases(
    images: np.ndarray,
    labels: np.ndarray,
    out: Path,
    *,
    prefix: str,
    rng: np.random.Generator,
    missing_images: float,
    missing_lab: float,
) -> pd.DataFrame:
    n = len(images)
    malignant = labels.reshape(-1) == 0
    # patients: most have one case, some two (consecutive rows)
    patient, p = [], 0
    for i in range(n):
        if i == 0 or rng.random() > 0.25:
            p += 1
        patient.append(f"{prefix}P{p:04d}")
    # sorted: a set iterates in hash order, which differs between runs (PYTHONHASHSEED)
    dicom_patients = {q for q in sorted(set(patient)) if rng.random() < 0.5}
    rows = []
    for i in range(n):
        case = f"{prefix}C{i + 1:05d}"
        pid = patient[i]
        rel = ""
        if rng.random() >= missing_images:
            img = images[i].astype(np.uint8)
            if pid in dicom_patients:
                rel = f"images/{case}.dcm"
                stored = img.astype(np.uint16) * 16  # 12-bit, 0..4080
                write_dicom(
                    out / rel,
                    stored,
                    intercept=-1024.0,
                    window=(-1024.0 + 2040.0, 4080.0),  # the stored range -> [0, 1]
                    bits=12,
                    patient_id=pid,
                )
            else:
                rel = f"images/{case}.png"
                write_png(out / rel, img)
        age = float(np.clip(rng.normal(58 if malignant[i] else 50, 11), 22, 92).round())
        lab = float(np.round(rng.lognormal(np.log(32 if malignant[i] else 22), 0.45), 1))
        rows.append(
            {
                "case_id": case,
                "patient_id": pid,
                "image": rel,
                "age": age,
                "sex": "M" if rng.random() < 0.02 else "F",
                "ca15_3": np.nan if rng.random() < missing_lab else lab,
                "diagnosis": "malignant" if malignant[i] else "benign",
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    # a patient's cases share age and sex
    first = df.groupby("patient_id")[["age", "sex"]].transform("first")
    df[["age", "sex"]] = first
    return df


def build(
    out: str | Path,
    *,
    rows: int = 300,
    new: int = 20,
    seed: int = 0,
    data_dir: str | Path | None = None,
    missing_images: float = 0.08,
    missing_lab: float = 0.15,
) -> dict[str, Path]:
    """Write the export; returns the paths of ``cases.csv`` and ``new_cases.csv``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with np.load(locate("breastmnist", resolve_data_root(data_dir))) as d:
        x = np.concatenate([d["train_images"], d["val_images"]])
        y = np.concatenate([d["train_labels"], d["val_labels"]])
        xt, yt = d["test_images"], d["test_labels"]
    pick = np.sort(rng.choice(len(x), size=min(rows, len(x)), replace=False))
    cases = _cases(
        x[pick], y[pick], out, prefix="", rng=rng,
        missing_images=missing_images, missing_lab=missing_lab,
    )  # fmt: skip
    pick_t = np.sort(rng.choice(len(xt), size=min(new, len(xt)), replace=False))
    fresh = _cases(
        xt[pick_t], yt[pick_t], out, prefix="N", rng=rng, missing_images=0.0,
        missing_lab=missing_lab,
    ).drop(columns=["diagnosis"])  # fmt: skip
    paths = {"cases": out / "cases.csv", "new_cases": out / "new_cases.csv"}
    cases.to_csv(paths["cases"], index=False)
    fresh.to_csv(paths["new_cases"], index=False)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--rows", type=int, default=300, help="training cases (default 300)")
    ap.add_argument("--new", type=int, default=20, help="new cases to predict (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help="data root (default: $MEDFUSE_DATA_DIR or ~/.cache/medfuse)")
    a = ap.parse_args(argv)
    paths = build(a.out, rows=a.rows, new=a.new, seed=a.seed, data_dir=a.data_dir)
    df = pd.read_csv(paths["cases"])
    print(
        f"{paths['cases']}: {len(df)} cases, {df['patient_id'].nunique()} patients, "
        f"{int(df['image'].isna().sum())} without an image, "
        f"{int(df['ca15_3'].isna().sum())} without ca15_3; "
        f"{dict(df['diagnosis'].value_counts())}\n{paths['new_cases']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
