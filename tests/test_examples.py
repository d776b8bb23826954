"""README's "Your own data", run as written (smaller: 120 cases, 2 epochs), so it cannot rot; and
the acceptance of issue 15 on the example builder's export (90 cases, 1 epoch, one trained pair
of packages shared by the module):

- the three routes of a table (``medfuse train --table``, ``medfuse.fit(df)`` with the DataFrame
  read from the same CSV, ``medfuse train <out>.spec.yaml``) make the same package: the same
  weights bit for bit, the same metrics, labels, positive class, threshold, calibration and
  preprocessing; only recorded paths, times and the command line differ (listed in ``ALLOWED``);
- ``new_cases.csv`` predicted through the Python API (DataFrame and path), ``medfuse predict``,
  the real HTTP server, ``medfuse explain`` (all PyTorch: equal to 1e-6) and the torch-free
  ``python -m medfuse.runtime`` after ``medfuse export`` (ONNX Runtime: 1e-5) gives the same
  probabilities, under the case ids of the spec's id column, naming per row the clinical
  columns without a value;
- ``medfuse explain`` reads the input as predict does: an unreadable image stops it naming the
  row and file, or with ``--on-bad-row missing`` is explained as absent, saying why."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    """The subprocesses' environment: the data, one thread, and the medfuse under test first on
    the path (a relative PYTHONPATH=src would not hold in their working directories)."""
    import medfuse

    src = str(Path(medfuse.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "MEDFUSE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": path}  # fmt: skip


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


@pytest.mark.data("medmnist/breastmnist.npz")
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
    assert preds["id"].tolist() == new["case_id"].tolist()  # the spec's id column
    doc = json.loads((tmp_path / "hospital-explained/explanation.json").read_text())
    assert [s["id"] for s in doc["samples"]] == new["case_id"].tolist()
    np.testing.assert_allclose(
        [s["prediction"]["probabilities"]["malignant"] for s in doc["samples"]],
        preds["prob_malignant"].to_numpy(),
        atol=1e-6,
    )
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


#: issue 15 acceptance: the example export's size and the training kept small
ROWS, NEW, SEED = 90, 10, 3
SMALL = ["train.epochs=1", "branches.image.width=8"]
ENTRY_TOL = {"torch": 1e-6, "onnx": 1e-5}


@pytest.fixture(scope="module")
def hospital(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The example export, trained once by ``medfuse train --table`` (a subprocess, one thread)
    and once by ``medfuse.fit(df)`` (here, one thread): the same floats in the same order."""
    import hospital_export

    import medfuse

    root = tmp_path_factory.mktemp("hospital")
    env = _env(data_dir)
    paths = hospital_export.build(root / "hospital", rows=ROWS, new=NEW, data_dir=data_dir)
    common = ["--label", "diagnosis", "--positive", "malignant", "--seed", str(SEED)]
    small = [a for o in SMALL for a in ("--set", o)]
    _run(
        [sys.executable, "-m", "medfuse", "train", "--table", "hospital/cases.csv", *common,
         *small, "--out", "runs/cli/hospital", "--device", "cpu"],
        root, env,
    )  # fmt: skip
    df = pd.read_csv(paths["cases"])
    threads = torch.get_num_threads()  # the subprocess runs 1 thread; another count sums
    torch.set_num_threads(1)  # floats in another order, and the weights differ in the last bits
    try:
        res = medfuse.fit(
            df,
            label="diagnosis",
            positive="malignant",
            seed=SEED,
            base_dir=paths["cases"].parent,
            out=root / "runs/api/hospital",
            overrides=list(SMALL),
            device="cpu",
            progress=False,
            verbose=False,
        )
    finally:
        torch.set_num_threads(threads)
    return SimpleNamespace(
        root=root,
        env=env,
        cases=paths["cases"],
        new=paths["new_cases"],
        cli=root / "runs/cli/hospital",
        api=Path(res.package),
    )


def _diff(a: Any, b: Any, at: str = "") -> list[str]:
    """Key paths where two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{at}.{k}" if at else k)
        return out
    return [] if a == b else [at]


#: the only medfuse.json fields the two routes may differ in: recorded paths (the CSV vs the
#: DataFrame's ``<out>.table.csv`` and where its relative paths resolve), hashes over the
#: manifest rows (which hold the paths: relative in the CSV, absolute in the table written for
#: the DataFrame) and over files that name it, times, and the command line (fit has none)
ALLOWED = {
    "created",
    "training.seconds",
    "training.command",
    "spec.data.source",
    "spec.data.options.base_dir",
    "data.name",
    "data.file",
    "data.manifest.as_written",
    "data.manifest.absolute",
    "data.layout.base_dir",
    "data.fingerprint.train.sha256",
    "data.fingerprint.val.sha256",
    "data.fingerprint.test.sha256",
    "files.README.md",
    "files.metrics.jsonl",
    "training.ranks",  # each rank's peak RSS is a measurement, as the seconds are (checked below)
    "meta_sha256",  # the digest of medfuse.json's content, which differs in the fields above
}

#: the per-rank fields that are measurements of this machine, not results
MEASURED = ("peak_rss_mib", "workers_peak_rss_mib")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the timings of each epoch (wall time, throughput, data wait)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    timings = ("seconds", "samples_per_s", "data_wait_s", "compute_s", "val_s")
    return [{k: v for k, v in r.items() if k not in timings} for r in rows]


@pytest.mark.data("medmnist/breastmnist.npz")
def test_table_routes_give_the_same_package(hospital: SimpleNamespace) -> None:
    h = hospital
    cli, api = h.cli, h.api
    assert sorted(p.name for p in cli.iterdir()) == sorted(p.name for p in api.iterdir())
    assert _sha(cli / "model.safetensors") == _sha(api / "model.safetensors")  # bit for bit
    assert (cli / "metrics.json").read_bytes() == (api / "metrics.json").read_bytes()
    assert json.dumps(_jsonl(cli / "metrics.jsonl")) == json.dumps(_jsonl(api / "metrics.jsonl"))
    readme = [
        (x, y)
        for x, y in zip((cli / "README.md").read_text().splitlines(),
                        (api / "README.md").read_text().splitlines(), strict=True)
        if x != y
    ]  # fmt: skip
    assert all(x.startswith("- Data: manifest ") for pair in readme for x in pair), readme
    m_cli, m_api = (json.loads((p / "medfuse.json").read_text()) for p in (cli, api))
    differ = set(_diff(m_cli, m_api))
    assert differ <= ALLOWED, sorted(differ - ALLOWED)
    assert "model.safetensors" not in str(differ) and "spec.data.options.base_dir" in differ
    ranks = [
        [{k: v for k, v in r.items() if k not in MEASURED} for r in m["training"]["ranks"]]
        for m in (m_cli, m_api)
    ]
    assert ranks[0] == ranks[1] and len(ranks[0]) == 1  # files decoded, rows read: the same
    for k in ("name", "task", "labels", "threshold", "calibration", "preprocessing"):
        assert m_cli[k] == m_api[k], k
    assert m_cli["name"] == "hospital" and m_cli["labels"] == ["benign", "malignant"]
    assert m_cli["spec"]["task"]["positive"] == "malignant"
    for split, fp in m_cli["data"]["fingerprint"].items():  # the same values were read
        assert fp["values_sha256"] == m_api["data"]["fingerprint"][split]["values_sha256"]
    assert m_cli["data"]["layout"]["id_column"] == "case_id" == m_api["data"]["layout"]["id_column"]
    assert m_cli["data"]["layout"]["base_dir"] == str(h.cases.parent.resolve())
    assert m_api["data"]["layout"]["base_dir"] == str(h.cases.parent.resolve())
    assert m_cli["training"]["command"].startswith("medfuse train --table hospital/cases.csv")
    assert m_cli["spec"]["train"]["seed"] == SEED
    # the third route: the saved spec trains the same weights again
    spec_file = h.root / "runs/cli/hospital.spec.yaml"
    assert "branches.image.width" not in spec_file.read_text()  # overrides are written in...
    assert "width: 8" in spec_file.read_text()  # ...as values
    _run(
        [sys.executable, "-m", "medfuse", "train", str(spec_file), "--out", "runs/again",
         "--device", "cpu"],
        h.root, h.env,
    )  # fmt: skip
    again = h.root / "runs/again"
    assert _sha(again / "model.safetensors") == _sha(cli / "model.safetensors")
    assert json.loads((again / "metrics.json").read_text())["test"]["n"] > 0
    assert (again / "metrics.json").read_bytes() == (cli / "metrics.json").read_bytes()


def _runtime(pkg: Path, inp: Path, out: Path, env: dict[str, str], cwd: Path) -> str:
    """``python -m medfuse.runtime`` where torch and pandas cannot be imported."""
    code = (
        "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); from blocked_run import Refuse; "
        "sys.meta_path.insert(0, Refuse({'torch', 'pandas'})); "
        "runpy.run_module('medfuse.runtime', run_name='__main__')"
    )
    return _run(
        [sys.executable, "-c", code, str(REPO / "tests"), str(pkg), "--input", str(inp),
         "--out", str(out)],
        cwd, env,
    )  # fmt: skip


@pytest.mark.data("medmnist/breastmnist.npz")
def test_new_cases_give_the_same_probabilities_everywhere(
    hospital: SimpleNamespace, tmp_path: Path
) -> None:
    import medfuse
    from medfuse.cli import main

    h = hospital
    pkg = h.cli
    new = pd.read_csv(h.new)
    ids = new["case_id"].tolist()
    assert new["patient_id"].duplicated().any()  # a patient with two cases: ids must differ
    holes = new["ca15_3"].isna().to_numpy()
    assert holes.any() and not holes.all()  # some lab values missing, as the builder writes
    want_missing = ["ca15_3" if x else "" for x in holes]
    got: dict[str, np.ndarray] = {}

    # Python API (PyTorch): the DataFrame read from new_cases.csv, and the path
    model = medfuse.load(pkg, device="cpu")
    got["api-dataframe"] = model.predict_proba(new)
    got["api-path"] = model.predict_proba(h.new)
    table = model.predict_table(new)
    assert [r["id"] for r in table] == ids
    assert [r["missing_values"] for r in table] == want_missing
    # the fit(df) route's package predicts the same DataFrame the same (its files found through
    # the recorded base_dir), and the same path
    other = medfuse.load(h.api, device="cpu")
    got["api-fit-package"] = other.predict_proba(new)

    # medfuse predict (PyTorch), as a user runs it: a new process, the training layout
    out = tmp_path / "cli.csv"
    _run(
        [sys.executable, "-m", "medfuse", "predict", str(pkg), "--input", str(h.new),
         "--out", str(out), "--runtime", "torch"],
        h.root, h.env,
    )  # fmt: skip
    cli = pd.read_csv(out, keep_default_na=False)
    assert cli["id"].tolist() == ids  # the spec's id column, not row-N nor the patient id
    assert cli["missing_values"].tolist() == want_missing
    assert (cli["present_image"] == 1).all() and (cli["present_clinical"] == 1).all()
    assert (cli["error"] == "").all() and set(cli["label"]) <= {"benign", "malignant"}
    got["cli"] = cli["prob_malignant"].to_numpy(np.float64)

    # the real HTTP server (PyTorch runtime) on loopback: one JSON instance per case, the
    # image file as base64 (PNG or DICOM), the clinical values (null where empty)
    start_server, stop = _server_helpers()
    proc, url = start_server(pkg, "--runtime", "torch", "--no-access-log")
    try:
        body = {"instances": [_instance(r, h.new.parent) for _, r in new.iterrows()]}
        r = httpx.post(f"{url}/v1/predict", json=body, timeout=120)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
    finally:
        stop(proc)
    got["http"] = np.array([p["probabilities"]["malignant"] for p in preds])
    assert [p["missing_values"] for p in preds] == [[c] if c else [] for c in want_missing]
    assert [p["label"] for p in preds] == cli["label"].tolist()

    # medfuse explain (PyTorch): the same file, the same layout, the same ids
    assert main(["explain", str(pkg), "--input", str(h.new), "-o", str(tmp_path / "ex"),
                 "--steps", "4"]) == 0  # fmt: skip
    doc = json.loads((tmp_path / "ex" / "explanation.json").read_text())
    assert [s["id"] for s in doc["samples"]] == ids
    assert [";".join(s["missing_values"]) for s in doc["samples"]] == want_missing
    got["explain"] = np.array(
        [s["prediction"]["probabilities"]["malignant"] for s in doc["samples"]]
    )

    # torch-free: medfuse export (ONNX, parity-verified), then python -m medfuse.runtime where
    # torch and pandas cannot be imported; and medfuse predict --runtime onnx
    exported = tmp_path / "exported"
    shutil.copytree(pkg, exported)
    assert main(["export", str(exported)]) == 0
    rt = tmp_path / "runtime.csv"
    _runtime(exported, h.new, rt, h.env, h.root)
    runtime = pd.read_csv(rt, keep_default_na=False)
    assert runtime["id"].tolist() == ids
    assert runtime["missing_values"].tolist() == want_missing
    got["onnx-runtime"] = runtime["prob_malignant"].to_numpy(np.float64)
    out_onnx = tmp_path / "cli-onnx.csv"
    args = ["predict", str(exported), "--input", str(h.new), "--out", str(out_onnx)]
    assert main([*args, "--runtime", "onnx"]) == 0
    got["onnx-cli"] = pd.read_csv(out_onnx)["prob_malignant"].to_numpy(np.float64)

    ref = np.asarray(got["api-dataframe"], np.float64)
    assert ref.shape == (NEW,) and np.isfinite(ref).all()
    diffs = {k: float(np.abs(np.asarray(v, np.float64) - ref).max()) for k, v in got.items()}
    print("max |p - p(api-dataframe)|:", json.dumps(diffs))
    for k, d in diffs.items():
        tol = ENTRY_TOL["onnx" if k.startswith("onnx") else "torch"]
        assert d <= tol, (k, d, diffs)


@pytest.mark.data("medmnist/breastmnist.npz")
def test_explain_refuses_or_flags_an_unreadable_image(
    hospital: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medfuse.cli import main

    h = hospital
    new = pd.read_csv(h.new)
    broken = h.new.parent / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    new.loc[2, "image"] = "images/broken.png"
    csv = h.new.parent / "new_cases_broken.csv"  # beside new_cases.csv: the same layout
    new.to_csv(csv, index=False)
    base = ["explain", str(h.cli), "--input", str(csv), "--steps", "4"]
    assert main([*base, "-o", str(tmp_path / "fail")]) == 3
    err = capsys.readouterr().err
    assert "row 4 (image)" in err and "broken.png" in err and "--on-bad-row missing" in err
    assert not (tmp_path / "fail" / "explanation.json").exists()
    assert main([*base, "--on-bad-row", "missing", "-o", str(tmp_path / "ok")]) == 0
    err = capsys.readouterr().err
    assert f"{new['case_id'][2]}: image missing:" in err and "broken.png" in err
    doc = json.loads((tmp_path / "ok" / "explanation.json").read_text())
    s = doc["samples"][2]
    assert s["id"] == new["case_id"][2] and s["present"] == {"image": False, "clinical": True}
    assert "broken.png" in s["reasons"]["image"] and "image" not in s["maps"]
    assert doc["not_explained"] == [] and len(doc["samples"]) == NEW
    # medfuse predict with the same option agrees on that row
    out = tmp_path / "p.csv"
    assert main(["predict", str(h.cli), "--input", str(csv), "--on-bad-row", "missing",
                 "--out", str(out)]) == 0  # fmt: skip
    p = pd.read_csv(out, keep_default_na=False)
    assert p["present_image"][2] == 0 and "broken.png" in p["reason_image"][2]
    explained = [x["prediction"]["probabilities"]["malignant"] for x in doc["samples"]]
    np.testing.assert_allclose(explained, p["prob_malignant"].astype(float), atol=1e-6)
