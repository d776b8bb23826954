"""Tiny generated example datasets in the file formats hospitals and PhysioNet produce.

``make_dicom_example(dir)`` writes a manifest mixing DICOM and PNG images (30% of images
missing), WFDB and CSV ECG records and tabular columns; ``make_volume_example(dir)`` writes
NIfTI volumes in mixed orientations and sizes. Both are SYNTHETIC (the virtual patients of
``medfuse.data.synthetic``, so the label depends on every modality) and written with the real
libraries (pydicom, Pillow, wfdb, nibabel). The ``write_*`` helpers are what the tests use.

Run ``python -m medfuse.data.examples dicom examples/dicom`` (or ``volume3d``) to build one for
``configs/dicom-manifest.yaml`` / ``configs/volume3d.yaml``.
"""

from __future__ import annotations

import argparse
import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.data.synthetic import generate

# ---- writers -------------------------------------------------------------------------------


def write_dicom(
    path: str | Path,
    stored: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    bits: int = 16,
    signed: bool = False,
    patient_id: str = "anon",
    modality: str = "CT",
) -> Path:
    """A CT-like DICOM file from stored values ``(H, W)``, ``(F, H, W)`` (multi-frame) or
    ``(H, W, 3)`` (RGB); modality value = ``slope * stored + intercept``; ``modality``: the
    Modality attribute (an RGB file's is ``OT``). The UIDs derive from
    the file name, the patient and the values, so the same call writes the same bytes."""
    # lazy: pydicom (medfuse[medical]), only for DICOM
    from pydicom.dataset import Dataset, FileMetaDataset

    # lazy: pydicom (medfuse[medical]), only for DICOM
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    path = Path(path)
    rgb = photometric == "RGB"
    frames = stored.shape[0] if (stored.ndim == 3 and not rgb) or stored.ndim == 4 else 1
    sop = SecondaryCaptureImageStorage if rgb else CTImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    values = hashlib.sha256(np.ascontiguousarray(stored).tobytes()).hexdigest()
    seed = [path.name, patient_id, values, str(stored.shape)]

    def uid(kind: str) -> str:
        return str(generate_uid(entropy_srcs=["|".join([kind, *seed])]))

    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.PatientID, ds.Modality = patient_id, "OT" if rgb else modality
    h, w = (stored.shape[-3], stored.shape[-2]) if rgb else stored.shape[-2:]
    ds.Rows, ds.Columns = int(h), int(w)
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric
    if rgb:
        ds.PlanarConfiguration = 0
        bits = 8
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if not rgb:
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    dtype = {(8, False): "u1", (8, True): "i1", (16, False): "<u2", (16, True): "<i2"}
    ds.PixelData = np.ascontiguousarray(stored).astype(dtype[(ds.BitsAllocated, signed)]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """A NIfTI-1 file (``.nii`` or ``.nii.gz``) with the given voxel array and affine."""
    # lazy: nibabel (medfuse[medical]), only for NIfTI
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path


def write_wfdb(
    path: str | Path,
    signal: np.ndarray,
    fs: float,
    leads: list[str],
    *,
    units: str = "mV",
    comments: list[str] | None = None,
) -> Path:
    """A WFDB record ``<path>.hea`` + ``.dat`` from a physical signal ``(C, T)``; returns the .hea."""
    # lazy: wfdb (medfuse[medical]), only for WFDB records
    import wfdb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name[: -len(".hea")] if path.name.endswith(".hea") else path.name
    x = np.asarray(signal, np.float64).T  # (T, C)
    with warnings.catch_warnings():  # wfdb's own pandas deprecation noise
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        wfdb.wrsamp(
            name,
            fs=fs,
            units=[units] * x.shape[1],
            sig_name=list(leads),
            p_signal=x,
            fmt=["16"] * x.shape[1],
            comments=comments or [],
            write_dir=str(path.parent),
        )
    return path.parent / f"{name}.hea"


def write_csv_signal(
    path: str | Path, signal: np.ndarray, fs: float, leads: list[str], *, time: bool = True
) -> Path:
    """A CSV signal: a ``time`` column in seconds (optional) and one column per lead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: dict[str, Any] = {}
    if time:
        cols["time"] = np.arange(signal.shape[1]) / fs
    cols.update({lead: signal[i] for i, lead in enumerate(leads)})
    pd.DataFrame(cols).to_csv(path, index=False, float_format="%.6g")
    return path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """An 8-bit (uint8) or 16-bit (uint16) grey PNG from ``(H, W)``, or RGB from ``(H, W, 3)``."""
    # lazy: Pillow, only when an image file is read
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path)
    return path


# ---- example datasets ----------------------------------------------------------------------

#: the DICOM example's stored values: modality value = 0.01 * stored - 100, in 0..255 like PNG
_SLOPE, _INTERCEPT = 0.01, -100.0
ECG_LEADS = ["I", "II", "V1"]


def _grey(v: np.ndarray) -> np.ndarray:
    """Synthetic image values -> display grey levels 0..255 (float)."""
    return np.clip((v + 2.0) / 6.0, 0.0, 1.0) * 255.0


def _split_column(n: int, rng: np.random.Generator, y: np.ndarray) -> list[str]:
    out = np.empty(n, dtype=object)
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        k_test, k_val = round(0.25 * len(idx)), round(0.2 * len(idx))
        out[idx[:k_test]] = "test"
        out[idx[k_test : k_test + k_val]] = "val"
        out[idx[k_test + k_val :]] = "train"
    return list(out)


def make_dicom_example(
    directory: str | Path,
    *,
    n: int = 120,
    seed: int = 0,
    missing_images: float = 0.3,
    image_size: int = 32,
    fs: float = 256.0,
    bad_files: int = 0,
) -> Path:
    """Write a mixed-format manifest example; returns ``<directory>/manifest.csv``.

    Columns: ``image`` (DICOM, 1/3 of them MONOCHROME1, or 8-bit PNG; a ``missing_images``
    fraction empty), ``ecg`` (WFDB records with leads I, II, V1 at ``fs`` Hz, a quarter in uV,
    or CSV files with a time column), ``age``, ``bmi``, ``marker`` (10% empty), ``sex`` (text),
    ``label``, ``patient_id`` and ``split``. ``bad_files`` rows point at corrupt files (a
    truncated DICOM, a WFDB header whose data file is missing, ...) to exercise
    ``data.on_bad_row``. The label depends on image, ECG and marker together.
    """
    d = Path(directory)
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "ecg").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    length = int(fs)  # one second
    s = generate(n, seed=seed + 7, image_size=image_size, signal_length=length, signal_channels=2)
    grey = _grey(s.arrays["image"][:, 0])  # (n, H, W) in 0..255
    ecg = s.arrays["signal"]  # (n, 2, T)
    rows = []
    image_gone = rng.random(n) < missing_images
    for i in range(n):
        pid = f"p{i:04d}"
        row: dict[str, Any] = {"id": f"case-{i:04d}", "patient_id": pid}
        if not image_gone[i]:
            if i % 5 in (0, 1):  # PNG
                rel = f"images/{pid}.png"
                write_png(d / rel, np.round(grey[i]).astype(np.uint8))
            else:  # DICOM
                rel = f"images/{pid}.dcm"
                stored = np.round((grey[i] - _INTERCEPT) / _SLOPE).astype(np.uint16)
                mono1 = i % 3 == 0
                # MONOCHROME1 stores the negative: its window sits at the mirrored value
                mirror = 2 * _INTERCEPT + _SLOPE * 65535
                write_dicom(
                    d / rel,
                    (65535 - stored) if mono1 else stored,
                    slope=_SLOPE,
                    intercept=_INTERCEPT,
                    photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
                    window=(mirror - 127.5 if mono1 else 127.5, 255.0),
                    patient_id=pid,
                )
            row["image"] = rel
        else:
            row["image"] = ""
        extra = 0.05 * rng.standard_normal((1, length))  # V1: not used by the model
        sig = np.concatenate([ecg[i], extra])  # (3, T) in mV
        if i % 5 == 4:
            rel = f"ecg/{pid}.csv"
            write_csv_signal(d / rel, sig, fs, ECG_LEADS)
        else:
            uv = i % 4 == 0
            rel = f"ecg/{pid}.hea"
            write_wfdb(
                d / rel, sig * (1000.0 if uv else 1.0), fs, ECG_LEADS, units="uV" if uv else "mV"
            )
        row["ecg"] = rel
        age, bmi, marker = s.arrays["tabular"][i]
        row.update(
            age=round(float(age), 1),
            bmi=round(float(bmi), 1),
            marker=round(float(marker), 3) if rng.random() > 0.1 else None,
            sex=str(s.meta["sex"][i]),
            label="positive" if s.y[i] > 0 else "negative",
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    df["split"] = _split_column(n, rng, s.y)
    for k, i in enumerate(rng.choice(np.flatnonzero(~image_gone), size=bad_files, replace=False)):
        pid = df.at[i, "patient_id"]
        if k % 2 == 0:  # a truncated DICOM image
            bad = d / f"images/{pid}-corrupt.dcm"
            good = d / str(df.at[i, "image"])
            if good.suffix == ".dcm":
                bad.write_bytes(good.read_bytes()[:400])
            else:
                bad.write_bytes(b"DICM" + bytes(100))
            df.at[i, "image"] = str(bad.relative_to(d))
        else:  # a WFDB header without its data file
            hea = d / f"ecg/{pid}-nodata.hea"
            hea.write_text(
                f"{pid}-nodata 3 {fs:g} {length}\n"
                + "".join(f"{pid}-nodata.dat 16 200/mV 16 0 0 0 0 {lead}\n" for lead in ECG_LEADS)
            )
            df.at[i, "ecg"] = str(hea.relative_to(d))
    path = d / "manifest.csv"
    df.to_csv(path, index=False)
    return path


def make_volume_example(
    directory: str | Path, *, n: int = 64, seed: int = 0, size: int = 16
) -> Path:
    """NIfTI volumes (mixed ``.nii`` / ``.nii.gz``, RAS and LPS affines, varying shapes) with a
    bright blob whose contrast, plus a tabular ``marker``, decides the label; returns the manifest.
    """
    d = Path(directory)
    (d / "volumes").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    z_img, z_tab = rng.standard_normal(n), rng.standard_normal(n)
    y = (z_img + z_tab + 0.3 * rng.standard_normal(n) > 0).astype(int)
    rows = []
    for i in range(n):
        shape = (size + int(rng.integers(0, 5)), size + int(rng.integers(0, 5)), size // 2 + 2)
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, k) for k in shape], indexing="ij"))
        centre = rng.uniform(-0.4, 0.4, (3, 1, 1, 1))
        blob = np.exp(-((grid - centre) ** 2).sum(0) / (2 * 0.25**2))
        vol = 40.0 * rng.standard_normal(shape) + (300.0 + 120.0 * z_img[i]) * blob  # "HU"
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        if i % 2:  # the same anatomy stored LPS: flip the first two voxel axes
            vol = vol[::-1, ::-1, :]
            affine = np.diag([-1.0, -1.0, 2.0, 1.0])
            affine[:2, 3] = [shape[0] - 1, shape[1] - 1]
        ext = ".nii.gz" if i % 3 else ".nii"
        rel = f"volumes/v{i:04d}{ext}"
        write_nifti(d / rel, vol, affine)
        rows.append(
            {
                "id": f"vol-{i:04d}",
                "patient_id": f"p{i:04d}",
                "volume": rel,
                "marker": round(float(z_tab[i] + 0.3 * rng.standard_normal()), 3),
                "label": "positive" if y[i] else "negative",
            }
        )
    df = pd.DataFrame(rows)
    df["split"] = _split_column(n, rng, y)
    path = d / "manifest.csv"
    df.to_csv(path, index=False)
    return path


EXAMPLES = {"dicom": make_dicom_example, "volume3d": make_volume_example}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m medfuse.data.examples", description="write a tiny example dataset"
    )
    p.add_argument("example", choices=sorted(EXAMPLES))
    p.add_argument("directory")
    p.add_argument("--n", type=int, help="number of cases")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    kw: dict[str, Any] = {"seed": a.seed}
    if a.n:
        kw["n"] = a.n
    print(EXAMPLES[a.example](a.directory, **kw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
