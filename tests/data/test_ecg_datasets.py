"""ECG datasets: MIT-BIH (beats, AAMI classes, de Chazal split) and PTB-XL (folds, superclasses).

The unit tests write tiny WFDB records with wfdb itself; the real-data tests use the shared
MIT-BIH and PTB-XL copies (``data_dir`` fixture, skipped when absent).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfuse.core.errors import DataError, SpecError
from medfuse.data import load_data
from medfuse.data.mitbih import (
    AAMI,
    DEFAULTS,
    DS1,
    DS2,
    PACED,
    cached_arrays,
    extract_record,
    parse_age_sex,
    resolve_splits,
)

FS = 360
# wfdb itself uses a pandas keyword that pandas deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")


def _write_record(
    folder: Path, name: str, peaks: list[int], symbols: list[str], *, comment: str = "61 F x"
) -> np.ndarray:
    """A 2-lead record (V1, MLII) whose MLII has a 1 mV Gaussian spike at every beat annotation."""
    import wfdb

    n = max(peaks) + FS
    t = np.arange(n)
    mlii = np.zeros(n)
    for p, s in zip(peaks, symbols):
        if s in AAMI:
            mlii += (2.0 if s == "V" else 1.0) * np.exp(-0.5 * ((t - p) / 4.0) ** 2)
    sig = np.stack([0.1 * np.sin(t / 50.0), mlii], axis=1)
    wfdb.wrsamp(
        name,
        fs=FS,
        units=["mV", "mV"],
        sig_name=["V1", "MLII"],
        p_signal=sig,
        fmt=["212", "212"],
        comments=[comment],
        write_dir=str(folder),
    )
    wfdb.wrann(name, "atr", np.asarray(peaks), symbol=symbols, write_dir=str(folder))
    return mlii


def _tiny_records(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # r1: regular N at 1 s, one premature V, one paced beat, a rhythm (non-beat) annotation
    _write_record(
        folder,
        "r1",
        [20, 360, 720, 1080, 1300, 1800, 1850, 2160, 2520, 2880, 3240, 3600],
        ["N", "N", "N", "N", "V", "+", "/", "N", "A", "N", "F", "N"],
    )
    _write_record(
        folder, "r2", [360 * k for k in range(1, 12)], ["N"] * 5 + ["A"] + ["N"] * 5, comment="? M"
    )
    _write_record(folder, "r3", [360 * k for k in range(1, 10)], ["N"] * 4 + ["V"] + ["N"] * 4)


def test_extract_record_cuts_beats_around_r_peaks(tmp_path: Path) -> None:
    _tiny_records(tmp_path)
    e = extract_record(tmp_path / "r1", fs=360, window=[0.25, 0.45], band=None, context=4)
    # beat 20 leaves the window (starts before 0); '+' is not a beat; '/' is Q: all dropped
    assert e["symbol"].tolist() == ["N", "N", "N", "V", "N", "A", "N", "F", "N"]
    assert e["label"].tolist() == [0, 0, 0, 2, 0, 1, 0, 3, 0]
    before = round(0.25 * 360)
    assert e["beat"].shape == (9, before + round(0.45 * 360))
    # the annotated R peak sits at index `before` of each window, with the spike's amplitude
    assert np.allclose(e["beat"][:, before], [1, 1, 1, 2, 1, 1, 1, 1, 1], atol=1e-2)
    assert int(np.argmax(e["beat"][3])) == before
    # rhythm: RR around the premature V (1080 -> 1300 -> 1850 with the paced beat kept for RR)
    assert e["rhythm"].shape == (9, 4, 4)
    rr_seconds = e["rhythm"][3, 2, -1]  # RR before the V, in seconds
    assert rr_seconds == pytest.approx(220 / 360, abs=1e-4)
    d = np.diff([20, 360, 720, 1080, 1300, 1850, 2160, 2520, 2880, 3240, 3600]) / 360
    rr_mean = np.mean(np.concatenate([d[:1], d]))  # normalised by the record's mean RR
    assert e["rhythm"][3, 0, -1] == pytest.approx((220 / 360) / rr_mean, rel=1e-3)
    assert e["rhythm"][3, 1, -1] == pytest.approx((550 / 360) / rr_mean, rel=1e-3)
    # the sequence ends at the current beat: its previous step is the beat before
    assert e["rhythm"][3, 2, -2] == pytest.approx(360 / 360, abs=1e-4)
    # with beats after the current one: the step after the V is the (paced) beat 550 samples later
    e2 = extract_record(tmp_path / "r1", fs=360, band=None, context=2, context_after=2)
    assert e2["rhythm"].shape == (9, 4, 4)
    assert e2["rhythm"][3, 2, 1] == pytest.approx(220 / 360, abs=1e-4)  # the V itself
    assert e2["rhythm"][3, 2, 2] == pytest.approx(550 / 360, abs=1e-4)
    assert e2["rhythm"][-1, 2, 3] == e2["rhythm"][-1, 2, 2]  # padded past the record's end
    # rr_local: RR before/after over the mean of the 2 RR intervals before the V (1 s each)
    e3 = extract_record(tmp_path / "r1", fs=360, band=None, context=4, rr_local=2)
    assert e3["rhythm"].shape == (9, 6, 4)
    assert np.array_equal(e3["rhythm"][:, :4], e["rhythm"])
    assert e3["rhythm"][3, 4, -1] == pytest.approx(220 / 360, rel=1e-4)
    assert e3["rhythm"][3, 5, -1] == pytest.approx(550 / 360, rel=1e-4)
    # template: a normal beat (peak 1 mV at the centre), not the 2 mV premature V
    assert e["template"][before] == pytest.approx(1.0, abs=0.02)
    assert e["age"] == 61 and e["sex"] == 1.0


def test_extract_record_resamples_and_names_missing_lead(tmp_path: Path) -> None:
    _tiny_records(tmp_path)
    e = extract_record(tmp_path / "r2", fs=180, window=[0.25, 0.45], band=[0.5, 40], context=3)
    assert e["beat"].shape == (11, 45 + 81)
    assert e["rhythm"].shape == (11, 4, 3)
    assert np.isnan(e["age"]) and e["sex"] == 0.0
    with pytest.raises(DataError, match=r"no lead 'II'.*V1, MLII"):
        extract_record(tmp_path / "r2", lead="II")
    (tmp_path / "bad.hea").write_text("not a header\n")
    with pytest.raises(DataError, match="bad"):
        extract_record(tmp_path / "bad")


def test_parse_age_sex_handles_unknowns() -> None:
    assert parse_age_sex(["69 M 1085 1629 x1"]) == (69.0, 0.0)
    age, sex = parse_age_sex(["-1 F 742 654 x1"])
    assert np.isnan(age) and sex == 1.0
    age, sex = parse_age_sex(["? ?"])
    assert np.isnan(age) and np.isnan(sex)
    assert np.isnan(parse_age_sex([])[0])


def test_loader_on_generated_records_splits_by_record_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tiny_records(tmp_path / "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    opts = {
        "train_records": ["r1"],
        "val_records": ["r2"],
        "test_records": ["r3"],
        "fs": 360,
        "context": 4,
    }
    b = load_data("mitbih", opts, data_root=tmp_path / "data")
    cached = list((tmp_path / "cache" / "medfuse" / "derived").glob("mitbih-*.npz"))
    assert len(cached) == 1
    assert set(b.modalities) == {"beat", "rhythm", "clinical"}
    assert b.train.arrays["beat"].shape[1:] == (2, 252)  # beat + template
    assert set(b.train.meta["patient_id"]) == {"r1"}
    assert set(b.val.meta["patient_id"]) == {"r2"}
    assert b.test is not None and set(b.test.meta["patient_id"]) == {"r3"}
    assert b.train.y.tolist() == [0, 0, 0, 2, 0, 1, 0, 3, 0]
    assert np.isnan(b.val.arrays["clinical"][:, 0]).all()  # '?' age -> missing
    # the second load comes from the cache and is identical
    b2 = load_data("mitbih", opts, data_root=tmp_path / "data")
    assert np.array_equal(b2.train.arrays["rhythm"], b.train.arrays["rhythm"])
    # a spec that names only some modalities gets only those
    only = load_data(
        "mitbih",
        {**opts, "template": False},
        data_root=tmp_path / "data",
        modalities={"rhythm": b.modalities["rhythm"]},
    )
    assert set(only.train.arrays) == {"rhythm"} and set(only.modalities) == {"rhythm"}
    with pytest.raises(SpecError, match="record r1 is in both"):
        load_data("mitbih", {**opts, "val_records": ["r1"]}, data_root=tmp_path / "data")
    with pytest.raises(SpecError, match=r"data\.options\.windw.*did you mean 'window'"):
        load_data("mitbih", {"windw": [0.1, 0.1]}, data_root=tmp_path / "data")
    with pytest.raises(DataError, match="MIT-BIH records not found"):
        load_data("mitbih", opts, data_root=tmp_path / "nowhere")


def test_cache_rebuilds_when_a_source_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "src.txt"
    src.write_text("a")
    calls = []

    def build() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"x": np.arange(3)}

    cached_arrays("t", {"k": 1}, [src], build)
    cached_arrays("t", {"k": 1}, [src], build)
    assert len(calls) == 1
    src.write_text("ab")  # size changes -> new fingerprint
    cached_arrays("t", {"k": 1}, [src], build)
    cached_arrays("t", {"k": 2}, [src], build)
    assert len(calls) == 3
    # other bytes of the same size, the modification time put back (cp -p, a restored backup)
    st = src.stat()
    src.write_text("cd")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    cached_arrays("t", {"k": 2}, [src], build)
    assert len(calls) == 4
    # another release of a library that reads or filters: a new entry
    import medfuse.data.mitbih as mitbih

    libs = mitbih.reader_versions()
    monkeypatch.setattr(mitbih, "reader_versions", lambda: {**libs, "wfdb": "0.0.1"})
    cached_arrays("t", {"k": 2}, [src], build)
    assert len(calls) == 5


def test_default_split_is_de_chazal() -> None:
    s = resolve_splits(dict(DEFAULTS))
    assert set(s["train"]) | set(s["val"]) == {str(r) for r in DS1}
    assert set(s["test"]) == {str(r) for r in DS2}
    assert not set(s["train"]) & set(s["val"])
    assert len(DS1) == len(DS2) == 22
    assert not {str(r) for r in PACED} & (set(s["train"]) | set(s["val"]) | set(s["test"]))


# -- real data --------------------------------------------------------------------------------
@pytest.mark.data("mit-bih-arrhythmia")
def test_mitbih_real_split_and_aami_counts(data_dir: Path) -> None:
    b = load_data("mitbih", {}, data_root=data_dir)
    train, val, test = (set(p.meta["patient_id"]) for p in (b.train, b.val, b.test))
    assert train | val == {str(r) for r in DS1}
    assert test == {str(r) for r in DS2}
    assert not (train & val) and not (train & test) and not (val & test)
    assert b.modalities["beat"].shape == (2, 126)
    assert b.modalities["rhythm"].shape == (4, 16)
    assert b.train.arrays["clinical"].shape[1] == 2
    # DS2 AAMI totals as published by de Chazal et al. 2004 (N 44259, S 1837, V 3221, F 388);
    # a few beats at record edges have no full window
    n_test = np.bincount(b.test.y, minlength=4)
    assert n_test[1:].tolist() == [1837, 3220, 388]
    assert 44200 <= n_test[0] <= 44259
    # record 208 (DS1): 1586 N, 2 S, 992 V, 373 F in its annotations; its first beat (an F at
    # sample 46) and its last (an N 65 samples before the end) have no full window
    m = b.train.meta["patient_id"] == "208"
    assert collections.Counter(b.train.y[m.to_numpy()].tolist()) == {0: 1585, 1: 2, 2: 992, 3: 372}
    # header: record 208 is a 23-year-old woman; record 103's age is unknown (-1)
    assert b.train.arrays["clinical"][m.to_numpy()][0].tolist() == [23.0, 1.0]
    t103 = b.test.arrays["clinical"][(b.test.meta["patient_id"] == "103").to_numpy()]
    assert np.isnan(t103[:, 0]).all() and (t103[:, 1] == 0).all()


@pytest.mark.data("ptb-xl-subset")
def test_ptbxl_real_folds_labels_and_missing_values(data_dir: Path) -> None:
    b = load_data("ptbxl", {}, data_root=data_dir)
    db = pd.read_csv(data_dir / "ptb-xl-subset" / "ptbxl_database.csv", index_col="ecg_id")
    folds = {name: set(p.meta["strat_fold"]) for name, p in (("tr", b.train), ("va", b.val))}
    assert folds["tr"] <= set(range(1, 9)) and folds["va"] == {9}
    assert set(b.test.meta["strat_fold"]) == {10}
    assert (len(b.train), len(b.val), len(b.test)) == (352, 72, 64)  # 12 unlabelled dropped
    assert not set(b.train.meta["patient_id"]) & set(b.test.meta["patient_id"])
    assert b.modalities["ecg"].shape == (12, 1000)
    assert b.labels == ["NORM", "MI", "STTC", "CD", "HYP"] and b.task == "multilabel"
    # missing heights/weights stay as NaN values, not dropped rows
    h = b.train.arrays["clinical"][:, 2]
    assert np.isnan(h).mean() > 0.5 and (~np.isnan(h)).sum() > 50
    assert np.isnan(b.train.arrays["clinical"][:, 3]).any()
    # ecg 1: 56-year-old woman, no height, 63 kg, NORM
    row = b.train.meta.index[b.train.meta["ecg_id"] == 1][0]
    c = b.train.arrays["clinical"][row]
    assert c[0] == 56 and c[1] == 1 and np.isnan(c[2]) and c[3] == 63
    assert b.train.y[row].tolist() == [1, 0, 0, 0, 0]
    assert db.loc[1, "strat_fold"] == b.train.meta["strat_fold"][row]
    # multilabel: some records carry more than one superclass
    assert (b.train.y.sum(1) > 1).any()
    with pytest.raises(SpecError, match="fold 9 is already"):
        load_data("ptbxl", {"folds": {"train": [9], "val": [9]}}, data_root=data_dir)


@pytest.mark.data("mit-bih-arrhythmia", "ptb-xl-subset")
def test_tiny_end_to_end_training_on_both(data_dir: Path, tmp_path: Path) -> None:
    from medfuse.api import train

    small = {"epochs": 1, "batch_size": 64, "early_stopping": None, "class_weights": "balanced"}
    spec = {
        "task": {"type": "multiclass"},
        "data": {
            "source": "mitbih",
            "options": {
                # 209: S beats in training (101 and 208 keep none of theirs at 150 beats)
                "records": [101, 118, 208, 209, 100],
                "val_records": [118],
                "max_beats": 150,
            },
        },
        "branches": {
            "beat": {"type": "cnn1d", "width": 4, "depth": 2, "out_features": 8},
            "rhythm": {"type": "lstm", "hidden": 8, "out_features": 8},
            "clinical": {"type": "mlp", "hidden": 4, "out_features": 4},
        },
        "head": {"hidden": 8},
        "train": small,
    }
    r = train(spec, out=tmp_path / "mitbih", device="cpu", progress=False, data_dir=data_dir)
    t = r.metrics["test"]
    assert t["n"] == 150 and set(t["per_class"]) == {"N", "S", "V", "F"}
    assert set(t["branches"]) == {"beat", "rhythm", "clinical"}
    assert np.asarray(t["confusion_matrix"]).shape == (4, 4)
    assert np.asarray(t["confusion_matrix"]).sum() == 150
    spec = {
        "task": {"type": "multilabel"},
        # the fewest first training records with every superclass and a height (refused else)
        "data": {"source": "ptbxl", "options": {"max_records": 68}},
        "branches": {
            "ecg": {"type": "cnn1d", "width": 4, "depth": 2, "out_features": 8},
            "clinical": {"type": "mlp", "hidden": 4, "out_features": 4},
        },
        "head": {"hidden": 8},
        "train": {**small, "class_weights": "none"},
    }
    r = train(spec, out=tmp_path / "ptbxl", device="cpu", progress=False, data_dir=data_dir)
    t = r.metrics["test"]
    assert t["n"] == 64 and set(t["per_label"]) == {"NORM", "MI", "STTC", "CD", "HYP"}
    assert 0.0 <= t["auroc"] <= 1.0  # a label absent from the tiny test set does not crash
