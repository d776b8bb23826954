"""PTB-XL: 12-lead ECGs with age, sex, height and weight, and the five diagnostic superclasses.

Reads a PTB-XL folder (the full dataset or a subset) holding ``ptbxl_database.csv``,
``scp_statements.csv`` and the WFDB records the database's ``filename_lr`` (100 Hz) or
``filename_hr`` (500 Hz) columns name. Two modalities:

- ``ecg`` (signal ``(12, 10 * rate)``, mV), the leads in the order I, II, III, aVR, aVL, aVF, V1-V6
  (or the ``leads`` option's);
- ``clinical`` (tabular): ``age`` (PTB-XL writes ages over 89 as 300; they become 90), ``sex``
  (0 male, 1 female), ``height`` (cm), ``weight`` (kg). Missing values stay NaN, so the record is
  kept and the model sees the value as missing (standardised to 0) rather than losing the ECG.

Labels follow the dataset authors' recipe: each code in ``scp_codes`` that is a diagnostic
statement in ``scp_statements.csv`` contributes its ``diagnostic_class``; records with no
diagnostic superclass are dropped (``keep_unlabeled`` keeps them with all-zero targets). The split
is the dataset's patient-disjoint ``strat_fold``: 1-8 train, 9 validation, 10 test.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfuse.core.errors import DataError, SpecError, did_you_mean
from medfuse.core.readers.medical import fill_invalid
from medfuse.core.spec import ModalitySpec
from medfuse.data import DATASETS, DataBundle, Split
from medfuse.data.mitbih import cached_arrays

FOLDER = "ptb-xl-subset"
DATABASE = "ptbxl_database.csv"
STATEMENTS = "scp_statements.csv"
SUPERCLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]
LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
CLINICAL_COLUMNS = ["age", "sex", "height", "weight"]
DEFAULTS: dict[str, Any] = {
    "rate": 100,  # 100 (filename_lr) or 500 (filename_hr)
    "leads": None,  # default: all 12
    "folds": {"train": [1, 2, 3, 4, 5, 6, 7, 8], "val": [9], "test": [10]},
    "keep_unlabeled": False,
    "max_records": None,  # the first N records of each split, for quick runs
    "cache": True,
}


def locate_dir(root: Path) -> Path:
    """``<root>/ptb-xl-subset``, ``<root>/ptb-xl`` or ``root`` itself: the one with the database."""
    for cand in (root / FOLDER, root / "ptb-xl", root):
        if (cand / DATABASE).is_file():
            if not (cand / STATEMENTS).is_file():
                raise DataError(f"{cand / STATEMENTS}: missing (PTB-XL needs it for the labels)")
            return cand
    raise DataError(
        f"PTB-XL not found: no {DATABASE} in {root / FOLDER}, {root / 'ptb-xl'} or {root} "
        "(set --data-dir or MEDFUSE_DATA_DIR, or give the folder as data.source ptbxl:<dir>)"
    )


def superclasses(scp_codes: str, diagnostic: dict[str, str], where: str) -> list[str]:
    """The sorted diagnostic superclasses of one ``scp_codes`` entry (``"{'NORM': 100.0}"``)."""
    try:
        codes = ast.literal_eval(scp_codes)
    except (ValueError, SyntaxError):
        raise DataError(f"{where}: scp_codes is not a dict literal: {scp_codes!r}") from None
    if not isinstance(codes, dict):
        raise DataError(f"{where}: scp_codes is not a dict: {scp_codes!r}")
    return sorted({diagnostic[c] for c in codes if c in diagnostic})


def read_tables(folder: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """The database (indexed by ``ecg_id``) and code -> diagnostic superclass."""
    db = pd.read_csv(folder / DATABASE, index_col="ecg_id")
    need = {"age", "sex", "height", "weight", "scp_codes", "strat_fold", "filename_lr"}
    missing = sorted(need - set(db.columns))
    if missing:
        raise DataError(f"{folder / DATABASE}: missing columns {', '.join(missing)}")
    st = pd.read_csv(folder / STATEMENTS, index_col=0)
    if "diagnostic" not in st.columns or "diagnostic_class" not in st.columns:
        raise DataError(f"{folder / STATEMENTS}: needs 'diagnostic' and 'diagnostic_class' columns")
    diag = st[st["diagnostic"] == 1]["diagnostic_class"].dropna()
    return db, {str(k): str(v) for k, v in diag.items()}


def _lead_index(sig_name: list[str], leads: list[str], where: str) -> list[int]:
    names = [s.upper() for s in sig_name]
    out = []
    for lead in leads:
        if lead.upper() not in names:
            raise DataError(f"{where}: no lead {lead!r}; it has {', '.join(sig_name)}")
        out.append(names.index(lead.upper()))
    return out


def _read_signals(folder: Path, files: list[str], leads: list[str], length: int) -> np.ndarray:
    # lazy: wfdb (medfuse[medical]), only for WFDB records
    import wfdb

    out = np.zeros((len(files), len(leads), length), np.float32)
    for i, rel in enumerate(files):
        path = folder / rel
        try:
            rec = wfdb.rdrecord(str(path))
        except Exception as err:
            raise DataError(f"{path}: not a readable WFDB record ({err})") from None
        x = np.asarray(rec.p_signal, np.float32)[:, _lead_index(rec.sig_name, leads, str(path))].T
        if x.shape[1] != length:
            raise DataError(f"{path}: {x.shape[1]} samples, expected {length} (10 s)")
        try:  # invalid samples: the one rule of the signal readers (a lead mostly invalid: refused)
            out[i] = fill_invalid(x, list(leads))
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
    return out


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise SpecError(
            f"data.options.{unknown[0]}",
            f"unknown option{did_you_mean(unknown[0], DEFAULTS)} Allowed: {', '.join(DEFAULTS)}",
        )
    o = {**DEFAULTS, **options}
    if o["rate"] not in (100, 500):
        raise SpecError("data.options.rate", f"must be 100 or 500; got {o['rate']!r}")
    folds = o["folds"]
    if not (isinstance(folds, dict) and {"train", "val"} <= set(folds) <= {"train", "val", "test"}):
        raise SpecError(
            "data.options.folds", f"must map train, val (and test) to folds; got {folds!r}"
        )
    seen: dict[int, str] = {}
    for name, fs in folds.items():
        for f in fs if isinstance(fs, list) else [fs]:
            if f in seen:
                raise SpecError(f"data.options.folds.{name}", f"fold {f} is already in {seen[f]!r}")
            seen[f] = name
    if o["max_records"] is not None and not (
        isinstance(o["max_records"], int) and o["max_records"] > 0
    ):
        raise SpecError(
            "data.options.max_records", f"must be a positive integer; got {o['max_records']!r}"
        )
    return o


@DATASETS.register("ptbxl")
def load_ptbxl(
    arg: str,
    options: dict[str, Any],
    *,
    root: Path,
    modalities: dict[str, ModalitySpec],
    task: str | None,
    on_bad_row: str,
    seed: int,
) -> DataBundle:
    """PTB-XL 12-lead ECG + age/sex/height/weight; multilabel NORM/MI/STTC/CD/HYP; strat_fold split."""
    o = _check_options(options)
    folder = locate_dir(Path(arg).expanduser() if arg else root)
    db, diag = read_tables(folder)
    col = "filename_lr" if o["rate"] == 100 else "filename_hr"
    if col not in db.columns:
        raise DataError(f"{folder / DATABASE}: no {col} column for rate {o['rate']}")
    folds = {k: v if isinstance(v, list) else [v] for k, v in o["folds"].items()}
    labels_of = {
        i: superclasses(str(c), diag, f"{folder / DATABASE} ecg_id {i}")
        for i, c in db["scp_codes"].items()
    }
    db = db[db["strat_fold"].isin([f for v in folds.values() for f in v])]
    if not o["keep_unlabeled"]:
        db = db[[bool(labels_of[i]) for i in db.index]]
    chosen: dict[str, pd.DataFrame] = {}
    for name, fs in folds.items():
        part = db[db["strat_fold"].isin(fs)]
        if o["max_records"] is not None:
            part = part.iloc[: int(o["max_records"])]
        chosen[name] = part
    for name in ("train", "val"):
        if chosen[name].empty:
            raise DataError(f"{folder / DATABASE}: no records in folds {folds[name]} for {name!r}")
    leads = [str(v) for v in (o["leads"] or LEADS)]
    length = 10 * int(o["rate"])
    ids = sorted({int(i) for p in chosen.values() for i in p.index})
    files = [str(db.loc[i, col]) for i in ids]
    paths = [folder / DATABASE, folder / STATEMENTS]
    for rel in files:
        for ext in (".hea", ".dat"):
            p = folder / f"{rel}{ext}"
            if not p.exists():
                raise DataError(f"{p}: missing (named by {DATABASE})")
            paths.append(p)
    cached = cached_arrays(
        "ptbxl",
        {"ids": ids, "rate": o["rate"], "leads": [v.upper() for v in leads]},
        paths,
        lambda: {
            "ecg": _read_signals(folder, files, leads, length),
            "ecg_id": np.array(ids, np.int64),
        },
        enabled=bool(o["cache"]),
    )
    row_of = {int(i): r for r, i in enumerate(cached["ecg_id"])}
    wanted = (set(modalities) & {"ecg", "clinical"}) if modalities else {"ecg", "clinical"}

    def make(part: pd.DataFrame) -> Split:
        rows = np.array([row_of[int(i)] for i in part.index], np.int64)
        age = part["age"].to_numpy(np.float64)
        age = np.where(age >= 300, 90.0, age)  # PTB-XL's code for "over 89"
        clinical = np.stack(
            [
                age,
                part["sex"].to_numpy(np.float64),
                part["height"].to_numpy(np.float64),
                part["weight"].to_numpy(np.float64),
            ],
            axis=1,
        ).astype(np.float32)
        arrays = {"ecg": cached["ecg"][rows], "clinical": clinical}
        arrays = {k: v for k, v in arrays.items() if k in wanted}
        y = np.array(
            [[float(c in labels_of[i]) for c in SUPERCLASSES] for i in part.index], np.float32
        ).reshape(len(part), len(SUPERCLASSES))
        meta = pd.DataFrame(
            {
                "id": [f"ptbxl-{int(i)}" for i in part.index],
                "ecg_id": part.index.to_numpy(),
                "patient_id": [f"{int(p)}" for p in part["patient_id"]]
                if "patient_id" in part
                else [f"ptbxl-{int(i)}" for i in part.index],
                "strat_fold": part["strat_fold"].to_numpy(),
                "age": age,
                "sex": np.where(part["sex"].to_numpy() == 1, "F", "M"),
            }
        )
        return Split(arrays, {k: np.ones(len(part), np.float32) for k in arrays}, y, meta)

    splits = {k: make(v) for k, v in chosen.items()}
    test = splits.get("test")
    mods = {
        "ecg": ModalitySpec(kind="signal", channels=len(leads), length=length),
        "clinical": ModalitySpec(kind="tabular", columns=list(CLINICAL_COLUMNS)),
    }
    mods = {k: v for k, v in mods.items() if k in wanted}
    return DataBundle(
        splits["train"],
        splits["val"],
        test if test is not None and len(test) else None,
        mods,
        list(SUPERCLASSES),
        "multilabel",
        info={
            "name": "PTB-XL diagnostic superclasses",
            "synthetic": False,
            "file": str(folder),
            "options": {k: o[k] for k in DEFAULTS if k != "cache"},
            "sizes": {k: len(v) for k, v in splits.items()},
            "positives": {
                k: dict(zip(SUPERCLASSES, v.y.sum(0).astype(int).tolist()))
                for k, v in splits.items()
            },
        },
    )
