"""README's "Your own data", run as written (smaller: 120 cases, 2 epochs), so it cannot rot; and
the three routes of a table (``medfuse train --table``, ``medfuse.fit(df)``, ``medfuse train
<out>.spec.yaml``) give the same weights and metrics for the same seed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """The command lines of the bash block in README's "Your own data" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's 'Your own data' has no bash block"
    return [ln.split(" #")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "MEDFUSE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{shlex.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _instance(row: pd.Series, base: Path) -> dict:
    """One HTTP instance from a new_cases.csv row: the image file as base64, clinical values."""
    inst: dict = {
        "clinical": {
            c: (None if pd.isna(row[c]) else (row[c] if c == "sex" else float(row[c])))
            for c in ("age", "sex", "ca15_3")
        }
    }
    if isinstance(row["image"], str):
        key = "dicom" if row["image"].endswith(".dcm") else "png"
        inst["image"] = {key: base64.b64encode((base / row["image"]).read_bytes()).decode()}
    return inst


def _server_helpers():
    """``start_server`` / ``stop`` of tests/serve/test_server.py (a real uvicorn on loopback)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_serve_helpers", REPO / "tests/serve/test_server.py"
    )
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.start_server, mod.stop


def test_readme_your_own_data(data_dir: Path, tmp_path: Path) -> None:
    start_server, stop = _server_helpers()
    env = _env(data_dir)
    cmds = readme_commands()
    assert any(c.startswith("medfuse train --table") for c in cmds)
    serve = None
    for line in cmds:
        cmd = shlex.split(line)
        if cmd[0] == "export":
            continue  # MEDFUSE_DATA_DIR: set in env above
        if cmd[0] == "python":
            _run([sys.executable, str(REPO / cmd[1]), *cmd[2:], "--rows", "120", "--new", "8"],
                 tmp_path, env)  # fmt: skip
            continue
        assert cmd[0] == "medfuse", line
        if cmd[1] == "serve":
            serve = cmd
            continue
        extra = ["--set", "train.epochs=2"] if cmd[1] == "train" else []
        out = _run([sys.executable, "-m", "medfuse", *cmd[1:], *extra], tmp_path, env)
        if cmd[1] == "train":
            assert "positive 'malignant'" in out and "spec saved: runs/hospital.spec.yaml" in out
    assert (tmp_path / "runs/hospital.spec.yaml").exists()
    assert not (tmp_path / "runs/hospital/hospital.spec.yaml").exists()  # not a package file
    assert (tmp_path / "hospital-report.html").stat().st_size > 10_000
    preds = pd.read_csv(tmp_path / "hospital-predictions.csv")
    new = pd.read_csv(tmp_path / "hospital/new_cases.csv")
    assert len(preds) == len(new) == 8
    assert set(preds["label"]) <= {"benign", "malignant"}
    # the served model (ONNX Runtime) gives the CLI's (torch) probabilities for the same cases
    assert serve is not None
    args = [a for a in serve[2:] if a != "--port" and not a.isdigit()]
    proc, url = start_server(tmp_path / args[0], *args[1:])
    try:
        body = {"instances": [_instance(r, tmp_path / "hospital") for _, r in new.iterrows()]}
        r = httpx.post(f"{url}/v1/predict", json=body, timeout=60)
        assert r.status_code == 200, r.text
        http = [p["probabilities"]["malignant"] for p in r.json()["predictions"]]
    finally:
        stop(proc)
    np.testing.assert_allclose(http, preds["prob_malignant"].to_numpy(), atol=1e-5)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fit(df: pd.DataFrame, base: Path, out: Path):
    import medfuse

    return medfuse.fit(
        df,
        label="diagnosis",
        positive="malignant",
        seed=3,
        base_dir=base,
        out=out,
        overrides=["train.epochs=1", "branches.image.width=8"],
        device="cpu",
        progress=False,
        verbose=False,
    )


def test_table_routes_give_the_same_package(data_dir: Path, tmp_path: Path) -> None:
    import hospital_export

    env = _env(data_dir)
    paths = hospital_export.build(tmp_path / "h", rows=90, new=4, data_dir=data_dir)
    common = ["--label", "diagnosis", "--positive", "malignant", "--seed", "3"]
    small = ["--set", "train.epochs=1", "--set", "branches.image.width=8"]
    _run(
        [sys.executable, "-m", "medfuse", "train", "--table", str(paths["cases"]), *common, *small,
         "--out", "runs/cli", "--device", "cpu"],
        tmp_path, env,
    )  # fmt: skip
    df = pd.read_csv(paths["cases"])
    threads = torch.get_num_threads()  # the subprocesses run 1 thread; another count sums
    torch.set_num_threads(1)  # floats in another order, and the weights differ in the last bits
    try:
        res = _fit(df, paths["cases"].parent, tmp_path / "runs/api")
    finally:
        torch.set_num_threads(threads)
    spec_file = tmp_path / "runs/cli.spec.yaml"
    _run(
        [sys.executable, "-m", "medfuse", "train", str(spec_file), "--out", "runs/again",
         "--device", "cpu"],
        tmp_path, env,
    )  # fmt: skip
    pkgs = [tmp_path / "runs/cli", res.package, tmp_path / "runs/again"]
    shas = [_sha(p / "model.safetensors") for p in pkgs]
    assert len(set(shas)) == 1, shas
    metrics = [json.loads((p / "metrics.json").read_text()) for p in pkgs]
    assert metrics[0] == metrics[1] == metrics[2]
    assert metrics[0]["test"]["n"] > 0
    meta = json.loads((pkgs[0] / "medfuse.json").read_text())
    assert meta["spec"]["task"]["labels"] == ["benign", "malignant"]
    assert meta["spec"]["train"]["seed"] == 3
