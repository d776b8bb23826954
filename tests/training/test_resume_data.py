"""``--resume`` checks the data as it checks the spec: a run records its data's fingerprint in
its work directory (``data.json``), and a resume on other data (labels flipped, values changed)
is refused naming the split, since the checkpoint's weights were trained on the recorded data and
its normalisation. A work directory of an older medfuse (no record) resumes, with a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfuse.api import train
from medfuse.core.errors import SpecError
from medfuse.training.pipeline import RUN_DATA
from medfuse.training.trainer import CHECKPOINT

N = 36


def _manifest(root: Path) -> Path:
    """``N`` tiny grey PNGs (brighter when positive) and an age column, with a split column."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(N):
        y = i % 2
        px = np.clip(rng.normal(90 + 60 * y, 30, (8, 8)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(root / "img" / f"{i}.png")
        split = "train" if i < 24 else ("val" if i < 30 else "test")
        age = 50 + 5 * y + i % 7
        rows.append(
            {"id": f"s{i}", "label": y, "image": f"img/{i}.png", "age": age, "split": split}
        )
    csv = root / "cases.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _crash_in_epoch_2(record: dict[str, Any]) -> None:
    """Stop the run at the end of its second epoch: after the first epoch's checkpoint."""
    if record["epoch"] == 2:
        raise KeyboardInterrupt("simulated crash in epoch 2")


def _epochs(package: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (package / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def interrupted(tmp_path: Path, image_age_spec: Any) -> tuple[dict[str, Any], Path, Path]:
    """(spec, manifest, out): a run of 3 epochs stopped after its first epoch's checkpoint."""
    csv = _manifest(tmp_path / "data")
    spec, out = image_age_spec(csv, "resume-data", 3, stream=False), tmp_path / "pkg"
    with pytest.raises(KeyboardInterrupt):
        train(spec, out=out, device="cpu", progress=False, on_epoch=_crash_in_epoch_2)
    work = out.with_name(out.name + ".train")
    assert (work / CHECKPOINT).exists()
    return spec, csv, out


def test_resume_on_the_same_data_records_and_passes_the_data_check(interrupted, caplog) -> None:
    spec, _, out = interrupted
    recorded = json.loads((out.with_name("pkg.train") / RUN_DATA).read_text())
    assert set(recorded) == {"train", "val", "test"} and recorded["train"]["rows"] == 24
    caplog.set_level(logging.INFO, logger="medfuse")
    res = train(spec, out=out, device="cpu", progress=False, resume=True)
    assert f"resuming from {out.with_name('pkg.train')}: stage 0, epoch 1" in caplog.text
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["data"]["fingerprint"] == recorded  # the package's data is the checkpoint's
    assert _epochs(res.package) == [1, 2, 3]
    assert "could not be checked" not in caplog.text


def test_resume_on_changed_labels_or_values_is_refused_naming_the_split(interrupted) -> None:
    spec, csv, out = interrupted
    df = pd.read_csv(csv)
    train_rows = df.split == "train"
    # the training labels flipped: the same counts, other labels
    flipped = df.copy()
    flipped.loc[train_rows, "label"] = 1 - flipped.loc[train_rows, "label"]
    flipped.to_csv(csv, index=False)
    with pytest.raises(SpecError, match=r"--resume") as err:
        train(spec, out=out, device="cpu", progress=False, resume=True)
    msg = str(err.value)
    assert "the train split: other samples, labels or files (same counts)" in msg
    assert "val split" not in msg and "test split" not in msg
    assert str(out.with_name("pkg.train")) in msg
    assert "trained on the recorded data" in msg and "Start without --resume" in msg
    # the values of the validation rows changed (same samples, labels and files)
    changed = df.copy()
    changed.loc[df.split == "val", "age"] += 3
    changed.to_csv(csv, index=False)
    with pytest.raises(SpecError, match=r"the val split: the same samples, but the values read"):
        train(spec, out=out, device="cpu", progress=False, resume=True)
    assert not out.exists()  # no package of the wrong data
    # the spec pointed back at the checkpoint's data (a test row changed, which the weights do
    # not depend on: it only scores): the refusals kept the checkpoint
    df.loc[df.split == "test", "age"] += 3
    df.to_csv(csv, index=False)
    res = train(spec, out=out, device="cpu", progress=False, resume=True)
    assert _epochs(res.package) == [1, 2, 3]


def test_an_older_work_directory_without_the_record_resumes_with_a_warning(
    interrupted, caplog
) -> None:
    spec, _, out = interrupted
    work = out.with_name("pkg.train")
    (work / RUN_DATA).unlink(missing_ok=True)  # as an older medfuse left it
    caplog.set_level(logging.WARNING, logger="medfuse")
    res = train(spec, out=out, device="cpu", progress=False, resume=True)
    warned = [r.getMessage() for r in caplog.records if "could not be checked" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert str(work) in warned[0] and "records no data fingerprint" in warned[0]
    assert _epochs(res.package) == [1, 2, 3]


def test_a_torchrun_restart_checks_the_data_as_a_resume_does(
    interrupted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted job resumes without --resume (Session.resume: restart > 0): its data is
    checked against the checkpoint's the same way; here the training labels changed between
    the attempts."""
    from medfuse.distributed.strategies import Session

    spec, csv, out = interrupted
    df = pd.read_csv(csv)
    df.loc[df.split == "train", "label"] = 1 - df.loc[df.split == "train", "label"]
    df.to_csv(csv, index=False)
    monkeypatch.setattr(Session, "resume", lambda self, asked: True)  # as after a restart
    with pytest.raises(SpecError, match=r"the train split: other samples, labels or files"):
        train(spec, out=out, device="cpu", progress=False)
