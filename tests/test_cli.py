"""CLI integration on a tiny synthetic run: train -> evaluate -> predict -> models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml


def medfuse(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "medfuse", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_train_evaluate_predict(tmp_path, tiny_spec) -> None:
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump(tiny_spec))
    out = tmp_path / "pkg"
    r = medfuse(
        "train",
        str(cfg),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--seed",
        "3",
        "--set",
        "train.epochs=1",
    )
    assert "auroc" in r.stdout and str(out) in r.stdout
    meta = json.loads((out / "medfuse.json").read_text())
    assert meta["spec"]["train"]["seed"] == 3 and meta["spec"]["train"]["epochs"] == 1

    r = medfuse("evaluate", str(out), "--json", "--split", "val")
    m = json.loads(r.stdout)
    stored = json.loads((out / "metrics.json").read_text())["val"]
    assert abs(m["auroc"] - stored["auroc"]) < 1e-9 and m["split"] == "val"
    assert "image only" in medfuse("evaluate", str(out)).stdout

    # predict from an .npz holding one array per modality (one modality missing entirely)
    rng = np.random.default_rng(0)
    npz = tmp_path / "x.npz"
    np.savez(
        npz,
        image=rng.random((3, 1, 16, 16), dtype=np.float32),
        tabular=rng.random((3, 3), dtype=np.float32),
    )
    preds = tmp_path / "preds.csv"
    medfuse("predict", str(out), "--input", str(npz), "--out", str(preds))
    df = pd.read_csv(preds)
    assert list(df.columns)[:4] == ["id", "prob_positive", "label", "threshold"] and len(df) == 3
    assert df["present_signal"].eq(0).all() and df["present_image"].eq(1).all()
    assert df["prob_positive"].between(0, 1).all() and set(df["label"]) <= {"negative", "positive"}

    bad = tmp_path / "bad.npz"
    np.savez(bad, picture=np.zeros((1, 16, 16)))
    r = medfuse("predict", str(out), "--input", str(bad), check=False)
    assert r.returncode == 3 and "picture" in r.stderr and "image" in r.stderr


def test_models_lists_registries() -> None:
    out = json.loads(medfuse("models", "--json").stdout)
    assert {"cnn", "resnet18", "cnn1d", "lstm", "gru", "mlp"} <= set(out["branches"])
    assert {"concat", "late", "gated"} <= set(out["fusions"])
    assert out["branches"]["lstm"]["params"]["bidirectional"] is False


def test_missing_package_is_a_clear_error(tmp_path) -> None:
    r = medfuse("evaluate", str(tmp_path / "nope"), check=False)
    assert r.returncode == 4 and "not a directory" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "pkg", "--out", "x", "--amount", "1"], "expected a number in (0, 1); got 1"),
        (["benchmark", "pkg", "--repeats", "two"], "expected a positive integer; got 'two'"),
    ],
)
def test_numeric_options_out_of_range_exit_2_saying_what_is_allowed(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from medfuse.cli import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


# ---- the verb table ---------------------------------------------------------------------------

HEAVY = ("torch", "pandas", "scipy", "sklearn", "matplotlib", "captum", "fastapi", "onnx")


def test_verb_table_and_verb_modules_agree() -> None:
    import argparse
    import importlib
    import inspect

    from medfuse.cli import VERBS, build_parser, load_setup

    for name, verb in VERBS.items():
        p = argparse.ArgumentParser(prog=f"medfuse {name}")
        handler = load_setup(name)(p)  # the verb's arguments build, and it returns its handler
        assert callable(handler), name
        assert p.format_help().startswith(f"usage: medfuse {name}"), name
        assert verb.help and "\n" not in verb.help, name
    # every setup function of a verb module is in the table (a verb cannot be forgotten)
    for module in {v.module for v in VERBS.values()}:
        mod = importlib.import_module(module)
        setups = {
            n for n, f in inspect.getmembers(mod, inspect.isfunction) if n.startswith("setup_")
        }
        listed = {v.setup for v in VERBS.values() if v.module == module}
        assert setups == listed, module
    sub = next(a for a in build_parser()._subparsers._group_actions if hasattr(a, "choices"))
    assert list(sub.choices) == list(VERBS)
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == {n: v.help for n, v in VERBS.items()}


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from medfuse.cli import build_parser, main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'predict' in out.getvalue()\n"
        "for n in ('train', 'evaluate', 'predict', 'export'):\n"
        "    build_parser([n])\n"
        "build_parser()  # every verb's arguments\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    after_all = set(r.stdout.strip().split(","))
    # building every verb's arguments needs the standard library only
    assert not after_all & {*HEAVY, "rich", "pydantic", "numpy", "onnxruntime"}, after_all


def blocked(modules: str, *args: str) -> subprocess.CompletedProcess:
    from pathlib import Path

    script = Path(__file__).parent / "blocked_run.py"
    return subprocess.run(
        [sys.executable, str(script), modules, *args], capture_output=True, text=True, timeout=120
    )


def test_a_verb_without_its_extra_exits_2_naming_it(tmp_path) -> None:
    r = blocked("torch", "train", "synthetic", "--device", "cpu")
    assert r.returncode == 2, r.stderr
    assert "needs torch" in r.stderr and "pip install 'medfuse[train]'" in r.stderr
    r = blocked("fastapi", "serve", str(tmp_path))
    assert r.returncode == 2 and "pip install 'medfuse[serve]'" in r.stderr, r.stderr
    # --help works without the extra: only running the verb needs it
    r = blocked("torch,pandas,scipy,sklearn", "train", "--help")
    assert r.returncode == 0 and "--strategy" in r.stdout and "blocked-loaded: []" in r.stderr


def test_missing_extra_names_the_verbs_own_extra_when_it_includes_the_module() -> None:
    from medfuse.cli import missing_extra

    def err(name: str) -> ModuleNotFoundError:
        return ModuleNotFoundError(f"No module named {name!r}", name=name)

    assert missing_extra("explain", err("torch")) == "explain"  # [explain] brings torch
    assert missing_extra("quantize", err("onnx.helper")) == "compress"
    assert missing_extra("serve", err("torch")) == "train"  # serve --runtime torch
    assert missing_extra("predict", err("pandas")) == "train"
    assert missing_extra("predict", err("pydicom")) == "medical"
    assert missing_extra("train", err("mlflow")) == "tracking"
    assert missing_extra("train", err("medfuse.nope")) is None  # a defect, not an install
