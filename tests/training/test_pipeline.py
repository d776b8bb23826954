"""The fit pipeline around the trainer: what training prints (data summary, epoch lines with the
metric's name and seconds, the best-epoch star), ``--out`` checked before training, ``--resume``
checked against the checkpoint's spec, a step-level resume's whole-epoch train loss, and the
trainer's callbacks."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from medfuse.api import prepare_data, train
from medfuse.core.errors import SpecError
from medfuse.core.spec import parse_spec
from medfuse.inference.helpers import to_tensors
from medfuse.models import build_model
from medfuse.training.callbacks import Callback
from medfuse.training.pipeline import fit_preprocessing, seed_everything
from medfuse.training.trainer import Trainer


def _one_epoch(spec: dict, **train_fields) -> dict:
    d = copy.deepcopy(spec)
    d["train"].update(epochs=1, **train_fields)
    return d


# ---- training that talks ---------------------------------------------------------------------


def test_training_prints_a_data_summary_and_named_metrics(tiny_spec, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="medfuse")
    spec = copy.deepcopy(tiny_spec)
    spec["train"]["early_stopping"] = {"metric": "auprc", "patience": 5}
    res = train(spec, out=tmp_path / "p", device="cpu", progress=False)
    text = caplog.text
    # rows, patients and class counts per split; labels in order with the positive class
    assert re.search(r"train: 96 rows; 96 patients; negative: \d+, positive: \d+", text), text
    assert re.search(r"val  : 48 rows; 48 patients", text)
    assert re.search(r"test : 48 rows; 48 patients", text)
    assert "labels (in order): ['negative', 'positive']; positive class: 'positive'" in text
    assert re.search(r"modalities present: image \d+%, signal \d+%, tabular \d+%", text)
    assert "selection: the epoch with the best val_auprc is kept" in text
    # each epoch: seconds, the metric by name, a star for the epoch kept as best so far
    lines = re.findall(r"end_to_end epoch \d/2 .*", text)
    assert len(lines) == 2, text
    assert re.fullmatch(
        r"end_to_end epoch 1/2 \d+\.\d s \d+ samples/s data wait \d+% "
        r"train_loss \S+ val_auprc \S+ \*",
        lines[0],
    )
    assert "val_score" not in text
    hist = [json.loads(x) for x in (res.package / "metrics.jsonl").read_text().splitlines()]
    assert all(h["seconds"] > 0 and h["metric"] == "val_auprc" for h in hist)
    assert all(h["samples_per_s"] > 0 and h["data_wait_s"] >= 0 < h["compute_s"] for h in hist)
    assert all(h["val_s"] > 0 for h in hist)


def test_keep_last_marks_no_epoch_as_best(tiny_spec, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="medfuse")
    spec = copy.deepcopy(tiny_spec)
    spec["train"]["keep"] = "last"
    train(spec, out=tmp_path / "p", device="cpu", progress=False)
    lines = re.findall(r"end_to_end epoch \d/2 .*", caplog.text)
    assert len(lines) == 2 and not any(x.endswith("*") for x in lines), lines
    assert "selection: the last epoch is kept (train.keep: last" in caplog.text


def test_progress_bar_shows_an_eta(tiny_spec, tmp_path, capsys) -> None:
    train(_one_epoch(tiny_spec), out=tmp_path / "p", device="cpu", progress=True)
    cap = capsys.readouterr()
    shown = cap.out + cap.err  # rich writes the final state of the bar on stop
    assert "eta" in shown and "end_to_end epoch 1/1" in shown and "val_auroc" in shown, shown


# ---- --out is checked before training ----------------------------------------------------------


def test_out_is_checked_before_training(tiny_spec, tiny_package, tmp_path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=r"--out.*not a medfuse package"):
        train(tiny_spec, out=precious, device="cpu", progress=False)
    assert time.perf_counter() - t0 < 2.0  # refused up front, not after a training run
    assert not (tmp_path / "precious.train").exists()
    assert (precious / "thesis.tex").read_text() == "..."
    pkg = shutil.copytree(tiny_package, tmp_path / "pkg")
    before = (pkg / "medfuse.json").read_bytes()
    with pytest.raises(SpecError, match=r"--out.*holds a package already; pass --overwrite"):
        train(tiny_spec, out=pkg, device="cpu", progress=False)
    assert (pkg / "medfuse.json").read_bytes() == before
    res = train(_one_epoch(tiny_spec), out=pkg, device="cpu", progress=False, overwrite=True)
    assert (
        json.loads((res.package / "medfuse.json").read_text())["training"]["stages"][0][
            "epochs_run"
        ]
        == 1
    )
    with pytest.raises(SpecError, match="a file, not a package directory"):
        (tmp_path / "f").write_text("x")
        train(tiny_spec, out=tmp_path / "f", device="cpu", progress=False)


def test_cli_train_refuses_an_existing_package_without_overwrite(tiny_package, tmp_path) -> None:
    from medfuse.cli import main

    pkg = shutil.copytree(tiny_package, tmp_path / "pkg")
    assert main(["train", "synthetic", "--out", str(pkg), "--device", "cpu"]) != 0
    assert (pkg / "medfuse.json").exists()


# ---- --resume checks the spec ------------------------------------------------------------------


def _crash_after(epoch: int):
    def crash(record: dict) -> None:
        if record["epoch"] == epoch:
            raise KeyboardInterrupt(f"simulated crash after epoch {epoch}")

    return crash


def test_resume_refuses_a_changed_spec_and_records_allowed_overrides(tiny_spec, tmp_path) -> None:
    spec = copy.deepcopy(tiny_spec)
    spec["train"]["epochs"] = 3
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        train(spec, out=out, device="cpu", progress=False, on_epoch=_crash_after(1))
    changed = copy.deepcopy(spec)
    changed["train"].update(lr=0.01, epochs=2)
    with pytest.raises(SpecError) as err:
        train(changed, out=out, device="cpu", progress=False, resume=True)
    msg = str(err.value)
    assert "train.epochs: 3 -> 2" in msg and "train.lr: 0.001 -> 0.01" in msg
    assert "--resume-override" in msg
    # a changed architecture: the same refusal, never a size-mismatch traceback
    arch = copy.deepcopy(spec)
    arch["branches"]["image"]["width"] = 6
    with pytest.raises(SpecError, match=r"branches\.image\.width: 4 -> 6.*start without --resume"):
        train(arch, out=out, device="cpu", progress=False, resume=True)
    with pytest.raises(SpecError, match=r"'branches\.image\.width' cannot change on resume"):
        train(
            arch,
            out=out,
            device="cpu",
            progress=False,
            resume=True,
            resume_overrides=["branches.image.width"],
        )
    # an explicit override list lets training settings change; the package records it
    res = train(
        changed,
        out=out,
        device="cpu",
        progress=False,
        resume=True,
        resume_overrides=["train.epochs", "train.lr"],
    )
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert meta["training"]["resume_overrides"] == ["train.epochs", "train.lr"]
    assert meta["spec"]["train"]["epochs"] == 2


def test_resume_refuses_another_ranking_or_fewer_epochs_than_trained(tiny_spec, tmp_path) -> None:
    """A resume allowed to change train.early_stopping compared the new metric's scores with the
    checkpoint's best of the old one (a loss of 1.9 never beat an AUROC of 0.775: the package
    kept the old epoch, its record said loss); one allowed fewer epochs than trained wrote a
    spec of 1 epoch holding the weights of 2."""
    spec = copy.deepcopy(tiny_spec)
    spec["train"].update(epochs=4, keep="best", early_stopping={"metric": "auroc", "patience": 9})
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):  # in epoch 3's end: the checkpoint holds 2
        train(spec, out=out, device="cpu", progress=False, on_epoch=_crash_after(3))
    by_loss = copy.deepcopy(spec)
    by_loss["train"]["early_stopping"] = {"metric": "loss", "patience": 9}
    with pytest.raises(SpecError, match=r"ranked its epochs by val_auroc.*ranks by val_loss"):
        train(by_loss, out=out, device="cpu", progress=False, resume=True,
              resume_overrides=["train.early_stopping"])  # fmt: skip
    fewer = copy.deepcopy(spec)
    fewer["train"]["epochs"] = 1
    with pytest.raises(SpecError, match=r"has trained 2 epochs; this spec asks for 1"):
        train(fewer, out=out, device="cpu", progress=False, resume=True,
              resume_overrides=["train.epochs"])  # fmt: skip
    # refused: the work directory still resumes with the spec it was trained with
    assert train(spec, out=out, device="cpu", progress=False, resume=True).package.exists()


def test_resume_across_a_stage_boundary(tiny_synthetic, tmp_path) -> None:
    """The checkpoint written when the branches stage ends holds that stage's ranking (the mean
    over branches); a run killed before the next stage's first checkpoint resumes (it was
    refused as ranking by another metric: a torchrun restart too)."""
    spec = copy.deepcopy(tiny_synthetic)
    spec["train"]["stages"] = [{"name": "branches", "epochs": 1}, {"name": "fusion", "epochs": 2}]

    def crash(record: dict) -> None:
        if record.get("stage") == "fusion":
            raise KeyboardInterrupt("killed in the fusion stage's first epoch")

    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        train(spec, out=out, device="cpu", progress=False, on_epoch=crash)
    seen: list[tuple[str, int]] = []
    res = train(
        spec,
        out=out,
        device="cpu",
        progress=False,
        resume=True,
        on_epoch=lambda r: seen.append((r["stage"], r["epoch"])),
    )
    assert seen == [("fusion", 1), ("fusion", 2)]  # continued: the branches stage not run again
    stages = json.loads((res.package / "medfuse.json").read_text())["training"]["stages"]
    assert [s["stage"] for s in stages] == ["branches", "fusion"]


def test_resume_of_an_unchanged_spec_needs_no_override(tiny_spec, tmp_path) -> None:
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_spec, out=out, device="cpu", progress=False, on_epoch=_crash_after(1))
    res = train(tiny_spec, out=out, device="cpu", progress=False, resume=True)
    meta = json.loads((res.package / "medfuse.json").read_text())
    assert "resume_overrides" not in meta["training"]
    assert [h["epoch"] for h in map(json.loads, (res.package / "metrics.jsonl").open())] == [1, 2]


def test_a_checkpoint_of_another_architecture_is_a_spec_error(tiny_spec, tmp_path) -> None:
    """The last line of defence (a checkpoint whose spec record was lost): no raw traceback."""
    spec, bundle = prepare_data(parse_spec(tiny_spec))
    stats = fit_preprocessing(spec, bundle.train, bundle.info)
    tr, va = to_tensors(bundle.train, stats), to_tensors(bundle.val, stats)
    work = tmp_path / "w"
    Trainer(build_model(spec), spec, tr, va, device=torch.device("cpu"), workdir=work).fit()
    d = spec.to_dict()
    d["branches"]["image"]["width"] = 6
    other = parse_spec(d)
    trainer = Trainer(build_model(other), other, tr, va, device=torch.device("cpu"), workdir=work)
    with pytest.raises(SpecError, match="another architecture"):
        trainer.fit(resume=True)


# ---- a step-level resume keeps the whole epoch's train loss ----------------------------------


class _CrashAtStep(Callback):
    """Raises in the loss hook on its ``n``-th forward pass (a crash in the middle of an epoch)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def loss(self, trainer, stage, logits, aux, masks, y):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("simulated crash mid-epoch")
        return None


def test_step_level_resume_logs_the_whole_epochs_train_loss(tiny_spec, tmp_path) -> None:
    d = copy.deepcopy(tiny_spec)
    d["train"].update(checkpoint_every=1, epochs=1)
    spec, bundle = prepare_data(parse_spec(d))
    stats = fit_preprocessing(spec, bundle.train, bundle.info)
    tr, va = to_tensors(bundle.train, stats), to_tensors(bundle.val, stats)
    cpu = torch.device("cpu")

    def trainer(work: Path, callbacks=()) -> Trainer:
        seed_everything(spec.train.seed)
        model = build_model(spec)
        return Trainer(model, spec, tr, va, device=cpu, workdir=work, callbacks=list(callbacks))

    whole = trainer(tmp_path / "a").fit()
    with pytest.raises(KeyboardInterrupt):  # 3 steps of 32: crash in step 3, checkpoint at 2
        trainer(tmp_path / "b", [_CrashAtStep(3)]).fit()
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["partial_loss"][1] == 64
    assert ckpt["world"] == 1 and ckpt["batch_size"] == 32  # a position in global batches
    resumed = trainer(tmp_path / "b").fit(resume=True)
    assert len(resumed) == 1
    assert resumed[0]["train_loss"] == whole[0]["train_loss"]  # bit-exact, over all 96 samples
    # the epoch's global order digest is carried across the restart
    assert resumed[0]["order_sha256"] == whole[0]["order_sha256"] != ""
    assert "resumed_from_world" not in resumed[0]

    # the global batch may not change mid-epoch: step 2 of batch 16 is another sample
    d16 = spec.to_dict()
    d16["train"]["batch_size"] = 16
    spec16 = parse_spec(d16)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "c", [_CrashAtStep(3)]).fit()
    seed_everything(spec.train.seed)
    smaller = Trainer(build_model(spec16), spec16, tr, va, device=cpu, workdir=tmp_path / "c")
    with pytest.raises(SpecError, match=r"train.batch_size.*global batch of 32; with 16 step 2"):
        smaller.fit(resume=True)


def test_a_steps_global_batch_is_the_same_samples_for_any_world(tiny_spec) -> None:
    """Each epoch is one permutation, padded to a multiple of the world and interleaved over the
    ranks: rank r's step-s batch is positions r::W of the global batch [s*B, (s+1)*B), so the
    global batch of a step is the same samples with 1, 2 or 4 processes (what lets a mid-epoch
    checkpoint of N processes resume with M); only the padding of the last batch differs."""
    from medfuse.training.trainer import padded

    d = copy.deepcopy(tiny_spec)
    d["data"]["options"]["n_train"] = 90  # 11 global batches of 8 and one of 2
    d["train"]["batch_size"] = 8
    spec, bundle = prepare_data(parse_spec(d))
    stats = fit_preprocessing(spec, bundle.train, bundle.info)
    tr, va = to_tensors(bundle.train, stats), to_tensors(bundle.val, stats)
    model = build_model(spec)
    big = 8
    seed = 12345

    def ranks(world: int) -> list[Trainer]:
        per = copy.deepcopy(spec.to_dict())
        per["train"]["batch_size"] = big // world
        rs = parse_spec(per)
        cpu = torch.device("cpu")
        return [Trainer(model, rs, tr, va, device=cpu, rank=r, world=world) for r in range(world)]

    one = ranks(1)[0]._global_order(seed)
    assert len(one) == 90 and sorted(one.tolist()) == list(range(90))
    for world in (1, 2, 4):
        trainers = ranks(world)
        glob = trainers[0]._global_order(seed)
        assert torch.equal(glob, padded(one, world))  # one permutation, padded for the world
        per_rank = [t._epoch_order(seed) for t in trainers]
        b = big // world
        for s in range(math.ceil(90 / big)):
            step = glob[s * big : (s + 1) * big]
            for r, order in enumerate(per_rank):
                assert torch.equal(order[s * b : (s + 1) * b], step[r::world])
            if s < 90 // big:  # a full global batch: the same samples, in the same order
                assert torch.equal(step, one[s * big : (s + 1) * big])
    assert len(padded(one, 4)) == 92  # the last batch: 2 samples, padded to 4 with 4 ranks


# ---- callbacks -----------------------------------------------------------------------------------


def test_callbacks_see_every_hook_in_order(tiny_spec, tmp_path) -> None:
    calls: list[str] = []

    class Recorder(Callback):
        def on_fit_start(self, trainer):
            calls.append("fit_start")

        def on_stage_start(self, trainer, run):
            calls.append(f"stage_start:{run.name}")

        def on_epoch_end(self, trainer, record):
            record["extra"] = 1  # amend the record before it is logged
            calls.append(f"epoch:{record['epoch']}")

        def on_checkpoint_save(self, trainer, state):
            calls.append("save")

        def on_stage_end(self, trainer, result):
            calls.append(f"stage_end:{result['epochs_run']}")

        def on_fit_end(self, trainer):
            calls.append("fit_end")

    spec, bundle = prepare_data(parse_spec(tiny_spec))
    stats = fit_preprocessing(spec, bundle.train, bundle.info)
    tr, va = to_tensors(bundle.train, stats), to_tensors(bundle.val, stats)
    t = Trainer(
        build_model(spec),
        spec,
        tr,
        va,
        device=torch.device("cpu"),
        workdir=tmp_path,
        callbacks=[Recorder()],
    )
    hist = t.fit()
    assert calls == [
        "fit_start",
        "stage_start:end_to_end",
        "epoch:1",
        "save",
        "epoch:2",
        "save",
        "stage_end:2",
        "save",
        "fit_end",
    ]
    assert all(h["extra"] == 1 for h in hist)
    assert all(json.loads(x)["extra"] == 1 for x in (tmp_path / "metrics.jsonl").open())


def test_no_extension_overrides_a_private_trainer_method() -> None:
    """Distillation and the distributed trainer are callbacks, not Trainer subclasses."""
    import medfuse.compress.distill as distill
    import medfuse.distributed.strategies as strategies

    for mod in (distill, strategies):
        for obj in vars(mod).values():
            assert not (isinstance(obj, type) and obj is not Trainer and issubclass(obj, Trainer))


def test_normalisation_statistics_are_exact_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value and deviation in float64 (numpy's nanstd subtracts the mean in float32: 2e-9
    off here, enough for the streamed statistics to round to other float32 values), NaN-aware,
    and the same whether the samples are summed in one part or many."""
    import numpy as np

    from medfuse.core import preprocess

    rng = np.random.default_rng(0)
    x = (100 + rng.normal(0, 3, (40, 4, 64))).astype(np.float32)  # a large mean, a small spread
    x[3, 1, 5] = np.nan
    want_mean = np.nanmean(x.astype(np.float64), axis=(0, 2))
    want_std = np.nanstd(x.astype(np.float64), axis=(0, 2))
    assert np.abs(np.nanstd(x, axis=(0, 2), dtype=np.float64) / want_std - 1).max() > 1e-10
    for rows in (256, 7):
        monkeypatch.setattr(preprocess, "STATS_ROWS", rows)
        got = preprocess.fit_stats({"s": x}, {"s": np.ones(40)}, {"s": 0})["s"]
        np.testing.assert_allclose(got["mean"], want_mean, rtol=1e-14)
        np.testing.assert_allclose(got["std"], want_std, rtol=1e-14)


def test_resume_with_nothing_to_resume_says_so(tiny_spec, tmp_path, caplog) -> None:
    """``--resume`` with a mistyped ``--out`` (no work folder) trained the whole run from the
    start without a word, while the user believed it continued."""
    with caplog.at_level(logging.WARNING, logger="medfuse"):
        train(tiny_spec, out=tmp_path / "typo", device="cpu", progress=False, resume=True)
    assert "--resume: no checkpoint in" in caplog.text and "training from the start" in caplog.text


def test_keep_last_marks_no_epoch_best_in_the_record(tiny_spec, tiny_package, tmp_path) -> None:
    """Under ``train.keep: last`` no epoch is selected, yet metrics.jsonl (and the report's
    training curve) marked every epoch a new best."""
    spec = {**tiny_spec, "train": {**tiny_spec["train"], "keep": "last", "epochs": 3}}
    res = train(spec, out=tmp_path / "p", device="cpu", progress=False)
    records = [json.loads(x) for x in (res.package / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and not any(r["best"] for r in records)
    first = json.loads((tiny_package / "metrics.jsonl").read_text().splitlines()[0])
    assert first["best"] is True  # keep: best marks the epochs it kept


def test_normalize_is_the_elementwise_formula_and_leaves_its_input() -> None:
    """normalize works in place on its one new array: the values are (x - mean) / std in
    float32, a NaN result 0, an infinite one kept, an absent sample (mask 0 or NaN) all 0; the
    caller's array is not touched."""
    import numpy as np

    from medfuse.core.preprocess import normalize

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (6, 2, 5, 4)).astype(np.float32)
    x[1, 0, 2, 3], x[2, 0, 0, 0] = np.nan, np.float32(3e38)
    before = x.copy()
    stat = {"channel_axis": 0, "mean": [1.5, -2.0], "std": [0.5, 3.0]}
    mask = np.array([1, 1, 1, 0, np.nan, 1], np.float32)
    mean = np.array([1.5, -2.0], np.float32).reshape(1, 2, 1, 1)
    std = np.array([0.5, 3.0], np.float32).reshape(1, 2, 1, 1)
    with np.errstate(over="ignore"):
        want = (x - mean) / std
    want[np.isnan(want)] = 0.0
    want[[3, 4]] = 0.0
    got = normalize(x, mask, stat)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.isinf(got[2, 0, 0, 0]) and got[1, 0, 2, 3] == 0.0
    assert np.array_equal(x, before, equal_nan=True)
    assert np.array_equal(normalize(x, None, stat)[3], ((x[3] - mean) / std)[0])  # no mask
    with pytest.raises(ValueError, match="a mask of 5 values for a batch of 6"):
        normalize(x, np.ones(5, np.float32), stat)  # every sample present: still refused
