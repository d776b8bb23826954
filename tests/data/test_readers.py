"""Every reader on files written with the real libraries (pydicom, nibabel, wfdb, Pillow, numpy),
including a corrupt file of each kind: the error is a DataError that names the file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from medfuse.core.errors import DataError, SpecError
from medfuse.core.readers import read_image, read_modality, read_signal
from medfuse.core.spec import ModalitySpec
from medfuse.data.examples import (
    write_csv_signal,
    write_dicom,
    write_nifti,
    write_png,
    write_wfdb,
)

STORED = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 100).astype(np.uint16)


def _garbage(path: Path, n: int = 600) -> Path:
    path.write_bytes(os.urandom(n))
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ---- DICOM -----------------------------------------------------------------------------------


def test_dicom_rescale_slope_intercept(tmp_path: Path) -> None:
    p = write_dicom(tmp_path / "a.dcm", STORED, slope=2.0, intercept=-1000.0)
    x = read_image(p)
    assert x.shape == (1, 3, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 2.0 * STORED - 1000.0)


def test_dicom_signed_pixels(tmp_path: Path) -> None:
    stored = np.array([[-1024, 0], [40, 3000]], np.int16)
    x = read_image(write_dicom(tmp_path / "s.dcm", stored, signed=True))
    np.testing.assert_allclose(x[0], stored)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    """The same picture stored MONOCHROME1 (low = white) reads as its MONOCHROME2 twin."""
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", STORED, slope=2.0, intercept=-1000.0))
    m1 = read_image(
        write_dicom(
            tmp_path / "m1.dcm",
            65535 - STORED,
            slope=2.0,
            intercept=-1000.0,
            photometric="MONOCHROME1",
        )
    )
    np.testing.assert_allclose(m1, m2)
    # windowed: the window applies to the file's own modality values, then MONOCHROME1 is
    # inverted; mirrored over the value range [-1000, 2 * 65535 - 1000] it matches the twin
    mirror = -1000.0 + 2 * 65535 - 1000.0
    w1 = read_image(tmp_path / "m1.dcm", window=[mirror - 500.0, 1000.0])
    w2 = read_image(tmp_path / "m2.dcm", window=[500.0, 1000.0])
    assert 0 < w2.mean() < 1
    np.testing.assert_allclose(w1, w2, atol=1e-6)


def test_dicom_window_from_options_and_from_file(tmp_path: Path) -> None:
    p = write_dicom(tmp_path / "w.dcm", STORED, slope=2.0, intercept=-1000.0, window=(0.0, 1000.0))
    hu = 2.0 * STORED - 1000.0
    # the file's window, as DICOM defines it (PS3.3 C.11.2.1.2.1, LINEAR: centre - 0.5,
    # width - 1), applied by pydicom and scaled from its output range to [0, 1]
    expect_file = np.clip((hu - (0.0 - 0.5)) / (1000.0 - 1.0) + 0.5, 0, 1)
    np.testing.assert_allclose(read_image(p, window="file")[0], expect_file, atol=1e-6)
    expect_opt = np.clip((hu - (200.0 - 50.0)) / 100.0, 0, 1)  # [centre, width]: LINEAR_EXACT
    np.testing.assert_allclose(read_image(p, window=[200.0, 100.0])[0], expect_opt, atol=1e-6)
    # no window in the file: 'file' is 'unit', the fraction of the stored range after rescale
    q = write_dicom(tmp_path / "nw.dcm", STORED, slope=2.0, intercept=-1000.0)
    lo, hi = -1000.0, 2.0 * 65535 - 1000.0
    np.testing.assert_allclose(read_image(q, window="file")[0], (hu - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(read_image(q, window="unit"), read_image(q, window="file"))


def test_one_intensity_scale_across_formats(tmp_path: Path) -> None:
    """'unit': 8-bit and 16-bit PNGs and a 12-bit DICOM of the same picture agree on [0, 1]."""
    frac = np.linspace(0.0, 1.0, 12).reshape(3, 4)
    png8 = write_png(tmp_path / "a.png", np.round(frac * 255).astype(np.uint8))
    png16 = write_png(tmp_path / "b.png", np.round(frac * 65535).astype(np.uint16))
    dcm12 = write_dicom(tmp_path / "c.dcm", np.round(frac * 4095).astype(np.uint16), bits=12)
    dcm_ct = write_dicom(  # CT: stored 12-bit, rescaled to HU
        tmp_path / "d.dcm", np.round(frac * 4095).astype(np.uint16), bits=12, intercept=-1024.0
    )
    for p in (png8, png16, dcm12, dcm_ct):
        np.testing.assert_allclose(
            read_image(p, window="unit")[0], frac, atol=2.5e-3, err_msg=p.name
        )
    # without a window each reader keeps its own values: 0-255, 0-65535, 0-4095, HU
    assert read_image(png8).max() == 255 and read_image(png16).max() == 65535
    assert read_image(dcm12).max() == 4095 and read_image(dcm_ct).min() == -1024
    # files with no bit depth or window must already be on [0, 1]
    np.save(tmp_path / "x.npy", frac * 300)
    with pytest.raises(DataError, match=r"x\.npy: window 'unit' needs values on \[0, 1\]"):
        read_image(tmp_path / "x.npy", window="unit")
    np.save(tmp_path / "y.npy", frac)
    np.testing.assert_allclose(read_image(tmp_path / "y.npy", window="unit")[0], frac)


def test_dicom_multiframe_is_a_volume_and_a_sequence(tmp_path: Path) -> None:
    frames = np.stack([STORED + 10 * k for k in range(5)]).astype(np.uint16)  # (F, H, W)
    p = write_dicom(tmp_path / "mf.dcm", frames)
    x = read_image(p)
    assert x.shape == (1, 5, 3, 4)  # frames are the depth axis of a grey volume
    np.testing.assert_allclose(x[0, 3], STORED + 30)
    vol = read_modality(p, ModalitySpec(kind="image", channels=1, size=[5, 3, 4]))
    np.testing.assert_allclose(vol, x)
    seq = read_modality(p, ModalitySpec(kind="image", channels=1, size=[3, 4], sequence=5))
    assert seq.shape == (5, 1, 3, 4)  # (S, C, H, W) for crnn layout=sequence
    np.testing.assert_allclose(seq[:, 0], x[0])


def test_dicom_rgb(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (5, 6, 3)).astype(np.uint8)
    x = read_image(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    np.testing.assert_allclose(x, rgb.transpose(2, 0, 1))
    grey = read_modality(tmp_path / "rgb.dcm", ModalitySpec(kind="image", channels=1, size=[5, 6]))
    np.testing.assert_allclose(grey[0], rgb.mean(axis=2), rtol=1e-5)


def test_dicom_corrupt_truncated_and_non_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"junk\.dcm: not a DICOM file"):
        read_image(_garbage(tmp_path / "junk.dcm"))
    p = write_dicom(tmp_path / "t.dcm", np.zeros((64, 64), np.uint16))
    with pytest.raises(DataError, match=r"t\.dcm: not a readable image"):
        read_image(_truncate(p, 0.6))
    # a DICOM without pixel data (e.g. a structured report) is not an image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.PatientID = "x"
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match=r"sr\.dcm: DICOM holds no pixel data.*Basic Text SR"):
        read_image(tmp_path / "sr.dcm")


# ---- NIfTI -----------------------------------------------------------------------------------


def _anatomy() -> np.ndarray:
    vol = np.zeros((6, 5, 4), np.float32)  # (i=x, j=y, k=z) in RAS voxel order
    vol[5, 2, 1] = 1.0  # far patient right
    vol[2, 4, 1] = 2.0  # far anterior
    vol[2, 2, 3] = 3.0  # far superior
    return vol


def test_nifti_canonical_orientation(tmp_path: Path) -> None:
    vol = _anatomy()
    ras = read_image(write_nifti(tmp_path / "ras.nii.gz", vol, np.diag([1.0, 1.0, 1.0, 1.0])))
    lps_aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps_aff[:2, 3] = [5.0, 4.0]  # same world positions, first two voxel axes flipped
    lps = read_image(write_nifti(tmp_path / "lps.nii", vol[::-1, ::-1, :].copy(), lps_aff))
    assert ras.shape == (1, 4, 5, 6)  # (C, D=z, H=y, W=x)
    np.testing.assert_array_equal(ras, lps)
    # D inferior->superior, H anterior->posterior, W patient right->left
    assert ras[0, 3].max() == 3.0 and ras[0, :, 0].max() == 2.0 and ras[0, :, :, 0].max() == 1.0


def test_nifti_resampled_to_size_and_4d_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = write_nifti(tmp_path / "v.nii.gz", rng.normal(size=(20, 18, 11)))
    m = ModalitySpec(kind="image", channels=1, size=[8, 12, 12], window=[0.0, 4.0])
    x = read_modality(p, m)
    assert x.shape == (1, 8, 12, 12) and x.min() >= 0.0 and x.max() <= 1.0
    x4 = read_image(write_nifti(tmp_path / "t.nii", rng.normal(size=(6, 5, 4, 2))))
    assert x4.shape == (2, 4, 5, 6)


def test_nifti_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"junk\.nii\.gz: not a readable image"):
        read_image(_garbage(tmp_path / "junk.nii.gz"))
    p = write_nifti(tmp_path / "t.nii", np.zeros((16, 16, 16)))
    with pytest.raises(DataError, match=r"t\.nii: not a readable image"):
        read_image(_truncate(p))


# ---- Pillow and numpy ------------------------------------------------------------------------


def test_png_jpeg_grey_rgb_16bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 255, (7, 9)).astype(np.uint8)
    np.testing.assert_allclose(read_image(write_png(tmp_path / "g.png", grey))[0], grey)
    rgb = rng.integers(0, 255, (7, 9, 3)).astype(np.uint8)
    np.testing.assert_allclose(
        read_image(write_png(tmp_path / "c.png", rgb)), rgb.transpose(2, 0, 1)
    )
    g16 = rng.integers(0, 65535, (7, 9)).astype(np.uint16)
    np.testing.assert_allclose(read_image(write_png(tmp_path / "g16.png", g16))[0], g16)
    # a window scales display images to [0, 1] so they match windowed DICOM / NIfTI
    np.testing.assert_allclose(
        read_image(tmp_path / "g.png", window="file")[0], grey / 255.0, rtol=1e-6
    )
    np.testing.assert_allclose(
        read_image(tmp_path / "g16.png", window=[0, 1])[0], g16 / 65535.0, rtol=1e-6
    )
    from PIL import Image

    smooth = np.stack(
        [*np.meshgrid(np.linspace(0, 200, 9), np.linspace(0, 200, 7)), np.full((7, 9), 90.0)],
        axis=2,
    ).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "c.jpg", quality=95)
    j = read_image(tmp_path / "c.jpg")
    assert j.shape == (3, 7, 9) and np.abs(j - smooth.transpose(2, 0, 1)).mean() < 10
    gj = read_modality(tmp_path / "c.jpg", ModalitySpec(kind="image", channels=1, size=[14, 18]))
    assert gj.shape == (1, 14, 18)


def test_pillow_and_npy_corrupt(tmp_path: Path) -> None:
    for name in ("junk.png", "junk.jpg"):
        with pytest.raises(DataError, match=re.escape(name) + ": not a readable image"):
            read_image(_garbage(tmp_path / name))
    with pytest.raises(DataError, match=r"junk\.npy: not a readable"):
        read_image(_garbage(tmp_path / "junk.npy"))
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"text\.npy: a signal \.npy must be numeric"):
        read_signal(tmp_path / "text.npy")


def test_npy_image_and_signal(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "i.npy", a)
    np.testing.assert_allclose(read_image(tmp_path / "i.npy"), a[None])
    np.testing.assert_allclose(read_image(tmp_path / "i.npy", window=[5.5, 11.0])[0], a / 11.0)
    np.save(tmp_path / "s.npy", np.arange(10.0))
    assert read_signal(tmp_path / "s.npy").shape == (1, 10)
    m = ModalitySpec(kind="signal", channels=1, length=4, rate=50.0)
    with pytest.raises(
        DataError, match=r"s\.npy: an \.npy signal has no lead names or sampling rate"
    ):
        read_modality(tmp_path / "s.npy", m)


# ---- WFDB and CSV signals --------------------------------------------------------------------


def _sines(fs: float, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(fs * seconds)) / fs
    return np.stack([np.sin(2 * np.pi * 3 * t), 0.5 * np.cos(2 * np.pi * 5 * t), 0.1 * t])


def test_wfdb_leads_units_and_resampling(tmp_path: Path) -> None:
    sig = _sines(250.0)
    p = write_wfdb(tmp_path / "r1.hea", sig, 250.0, ["I", "II", "V1"])
    x = read_signal(p, leads=["II", "I"])
    assert x.shape == (2, 500)
    np.testing.assert_allclose(x, sig[[1, 0]], atol=1e-3)  # 16-bit storage
    np.testing.assert_allclose(read_signal(p, leads=["v1"]), sig[[2]], atol=1e-3)  # any case
    uv = write_wfdb(tmp_path / "r2.hea", sig * 1000.0, 250.0, ["I", "II", "V1"], units="uV")
    np.testing.assert_allclose(read_signal(uv), sig, atol=1e-3)  # physical units: millivolts
    r = read_signal(p, leads=["I"], rate=100.0)
    assert r.shape == (1, 200)
    t = np.arange(200) / 100.0
    np.testing.assert_allclose(r[0, 20:-20], np.sin(2 * np.pi * 3 * t)[20:-20], atol=0.02)
    m = ModalitySpec(kind="signal", channels=2, length=150, leads=["I", "II"], rate=100.0)
    assert read_modality(p, m).shape == (2, 150)
    seq = ModalitySpec(kind="signal", channels=1, length=50, leads=["I"], rate=100.0, sequence=4)
    s = read_modality(p, seq)
    assert s.shape == (4, 1, 50)  # consecutive windows
    np.testing.assert_allclose(s[1, 0], r[0, 50:100])
    with pytest.raises(DataError, match=r"r1\.hea: no lead 'aVR'; the file has I, II, V1"):
        read_signal(p, leads=["aVR"])


def test_wfdb_corrupt(tmp_path: Path) -> None:
    p = write_wfdb(tmp_path / "r.hea", _sines(100.0), 100.0, ["I", "II", "V1"])
    _truncate(p.with_suffix(".dat"))
    with pytest.raises(DataError, match=r"r\.hea: not a readable signal"):
        read_signal(p)
    (tmp_path / "bad.hea").write_text("this is not a header\n")
    with pytest.raises(DataError, match=r"bad\.hea: not a readable signal"):
        read_signal(tmp_path / "bad.hea")
    with pytest.raises(DataError, match=r"gone\.hea: file not found"):
        read_signal(tmp_path / "gone.hea")


def test_csv_signal_time_column_leads_and_rate(tmp_path: Path) -> None:
    sig = _sines(200.0)
    p = write_csv_signal(tmp_path / "s.csv", sig, 200.0, ["I", "II", "V1"])
    np.testing.assert_allclose(read_signal(p), sig, atol=1e-5)  # the time column is not a lead
    x = read_signal(p, leads=["II"], rate=100.0)
    t = np.arange(200) / 100.0
    assert x.shape == (1, 200)
    np.testing.assert_allclose(x[0, 20:-20], 0.5 * np.cos(2 * np.pi * 5 * t)[20:-20], atol=0.02)
    # irregular sampling: interpolated onto the target grid
    ti = np.sort(np.random.default_rng(0).uniform(0, 2, 2000))
    import pandas as pd

    pd.DataFrame({"t": ti, "I": np.sin(2 * np.pi * 3 * ti)}).to_csv(
        tmp_path / "irr.csv", index=False
    )
    xi = read_signal(tmp_path / "irr.csv", rate=50.0)
    g = ti[0] + np.arange(xi.shape[1]) / 50.0
    np.testing.assert_allclose(xi[0], np.sin(2 * np.pi * 3 * g), atol=0.05)
    nt = write_csv_signal(tmp_path / "nt.csv", sig, 200.0, ["I", "II", "V1"], time=False)
    assert read_signal(nt).shape == (3, 400)
    with pytest.raises(DataError, match=r"nt\.csv: resampling to 100.0 Hz needs a time column"):
        read_signal(nt, rate=100.0)


def test_csv_signal_time_in_milliseconds(tmp_path: Path) -> None:
    """A time column in milliseconds is read as such when its name says so (time_ms, time (ms));
    named plain 'time', it reads as seconds, a thousandfold too slow: resampling it is refused
    with the fix, never a record stretched a thousandfold."""
    import pandas as pd

    from medfuse.core.readers.base import file_scale

    sig = _sines(200.0)
    secs = write_csv_signal(tmp_path / "s.csv", sig, 200.0, ["I", "II", "V1"])
    want = read_signal(secs, rate=100.0)
    ms = np.arange(sig.shape[1]) * 5.0  # 200 Hz: a sample every 5 ms
    for name in ("time_ms", "Time (ms)", "t[ms]"):
        p = tmp_path / (re.sub(r"\W", "", name) + ".csv")
        pd.DataFrame({name: ms, **{k: sig[i] for i, k in enumerate(["I", "II", "V1"])}}).to_csv(
            p, index=False, float_format="%.6g"
        )
        np.testing.assert_allclose(read_signal(p, rate=100.0), want, atol=1e-5)
        assert read_signal(p).shape == (3, 400)  # the time column is not a lead
        spec = ModalitySpec(kind="signal", channels=3, length=400)
        assert file_scale(p, spec) == "200 Hz sampling and leads I, II, V1"
    wrong = tmp_path / "wrong.csv"
    pd.DataFrame({"time": ms, "I": sig[0]}).to_csv(wrong, index=False)
    with pytest.raises(DataError, match=r"wrong\.csv: .*upsampled 500-fold.*name it time_ms"):
        read_signal(wrong, rate=100.0)
    # irregular sampling in milliseconds: interpolated on the seconds grid
    ti = np.sort(np.random.default_rng(0).uniform(0, 2, 2000))
    pd.DataFrame({"time_ms": ti * 1000, "I": np.sin(2 * np.pi * 3 * ti)}).to_csv(
        tmp_path / "irr.csv", index=False
    )
    xi = read_signal(tmp_path / "irr.csv", rate=50.0)
    g = ti[0] + np.arange(xi.shape[1]) / 50.0
    np.testing.assert_allclose(xi[0], np.sin(2 * np.pi * 3 * g), atol=0.05)


def test_csv_signal_corrupt(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("time,I,II\n0,1,2\n0.01,abc,3\n")
    with pytest.raises(DataError, match=r"bad\.csv row 3, column 'I': 'abc' is not a number"):
        read_signal(tmp_path / "bad.csv")
    _garbage(tmp_path / "junk.csv")
    with pytest.raises(DataError, match=r"junk\.csv"):
        read_signal(tmp_path / "junk.csv")


# ---- dispatch and spec options ---------------------------------------------------------------


def test_unknown_type_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"x\.gif: cannot read a image from '\.gif' files; supported: .*\.dcm.*\.nii\.gz",
    ):
        read_image(tmp_path / "x.gif")
    with pytest.raises(DataError, match=r"nope\.dcm: file not found"):
        read_image(tmp_path / "nope.dcm")
    with pytest.raises(
        DataError, match=r"x\.edf: cannot read a signal .* supported: .*\.csv.*\.hea"
    ):
        read_signal(tmp_path / "x.edf")


def test_fit_errors_name_the_file(tmp_path: Path) -> None:
    p = write_wfdb(tmp_path / "r.hea", _sines(100.0), 100.0, ["I", "II", "V1"])
    with pytest.raises(DataError, match=r"r\.hea: signal has 3 channels; the model expects 2"):
        read_modality(p, ModalitySpec(kind="signal", channels=2, length=10))


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "image", "channels": 1, "size": [4, 4], "leads": ["I"]},
        {"kind": "signal", "channels": 1, "length": 4, "window": [0, 1]},
        {"kind": "signal", "channels": 2, "length": 4, "leads": ["I"]},
        {"kind": "image", "channels": 1, "size": [4, 4], "window": [0, 0]},
        {"kind": "signal", "channels": 1, "length": 4, "rate": -1},
    ],
)
def test_modality_options_are_validated(bad: dict) -> None:
    from medfuse.core.spec import parse_spec

    with pytest.raises(SpecError, match=r"modalities\.x"):
        parse_spec({"data": {"source": "synthetic"}, "modalities": {"x": bad}})


def test_resampling_an_absurd_rate_is_refused_before_allocating(tmp_path: Path) -> None:
    """A header or time column declaring a tiny sampling rate must not make resampling build
    gigabytes: the output size is checked first (a hostile upload costs nothing)."""
    import pandas as pd

    from medfuse.core.readers.medical import MAX_RESAMPLED_VALUES

    slow = write_wfdb(tmp_path / "slow.hea", _sines(100.0), 0.001, ["I", "II", "V1"])
    with pytest.raises(DataError, match=rf"slow\.hea: .*over the limit of {MAX_RESAMPLED_VALUES}"):
        read_signal(slow, rate=500.0)
    pd.DataFrame({"time": [0.0, 1e9, 2e9], "I": [1.0, 2.0, 3.0]}).to_csv(
        tmp_path / "far.csv", index=False
    )
    with pytest.raises(DataError, match=r"far\.csv: .*over the limit"):
        read_signal(tmp_path / "far.csv", rate=500.0)
    pd.DataFrame({"time": [0.0, 1e9, 3e9], "I": [1.0, 2.0, 3.0]}).to_csv(
        tmp_path / "irregular.csv", index=False
    )
    with pytest.raises(DataError, match=r"irregular\.csv: .*over the limit"):
        read_signal(tmp_path / "irregular.csv", rate=500.0)


def test_files_read_names_every_file_a_reader_opens(tmp_path: Path) -> None:
    """The file itself; for a WFDB header also its data files, and for a multi-segment record
    each segment's header and data; a header that cannot be parsed: every file of its name."""
    from medfuse.core.readers import files_read
    from medfuse.data.examples import write_png, write_wfdb

    png = write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    assert files_read(png) == [png]
    hea = write_wfdb(tmp_path / "rec", np.zeros((2, 20)), 100, ["I", "II"])
    assert files_read(hea) == [hea, tmp_path / "rec.dat"]
    seg = write_wfdb(tmp_path / "seg1", np.zeros((1, 10)), 100, ["I"])
    layout = tmp_path / "multi_layout.hea"
    layout.write_text("multi_layout 1 100 0\n~ 16 200 16 0 0 0 0 I\n")
    multi = tmp_path / "multi.hea"
    multi.write_text("# two segments and a gap\nmulti/3 1 100 30\nmulti_layout 0\nseg1 10\n~ 20\n")
    assert files_read(multi) == [multi, layout, seg, tmp_path / "seg1.dat"]
    latin = tmp_path / "latin.hea"  # a non-ASCII comment (wfdb reads it) and another data name
    latin.write_bytes(b"# Patient: M\xfcller\nlatin 1 100 10\nsignal.dat 16 200 16 0 0 0 0 I\n")
    assert files_read(latin) == [latin, tmp_path / "signal.dat"]
    odd = tmp_path / "odd.hea"
    odd.write_text("odd\n")
    (tmp_path / "odd.dat").write_bytes(b"\0")
    assert files_read(odd) == [odd, tmp_path / "odd.dat"]


def test_wfdb_record_files_names_the_data_file() -> None:
    from medfuse.core.readers.medical import wfdb_record_files

    hea = b"# a comment\nrec 2 250 1000\nrec.dat 16 200/mV 16 0 0 0 0 I\nrec.dat 16 200/mV 16 0 0 0 0 II\n"
    assert wfdb_record_files(hea) == ("rec", ["rec.dat"])
    with pytest.raises(DataError, match="not a plain file name"):
        wfdb_record_files(hea.replace(b"rec.dat", b"../x.dat", 1))
    with pytest.raises(DataError, match="multi-segment"):
        wfdb_record_files(b"rec/2 1 250 10\nseg1 10\nseg2 10\n")
    with pytest.raises(DataError, match="declares 3 signal"):
        wfdb_record_files(b"rec 3 250 10\nrec.dat 16 200 16 0 0 0 0 I\n")
    with pytest.raises(DataError, match="not a WFDB header"):
        wfdb_record_files(b"\xff\xfe binary")
