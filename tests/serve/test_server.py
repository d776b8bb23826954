"""A real ``medfuse serve`` (uvicorn) on 127.0.0.1, hit over HTTP; schemathesis against its OpenAPI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

TOKEN = "live-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(package: Path, *args: str, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medfuse", "serve", str(package), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("server did not come up")


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


@pytest.fixture(scope="module")
def server(exported_package: Path) -> Iterator[str]:
    proc, url = start_server(exported_package, "--token", TOKEN, "--no-access-log")
    try:
        yield url
    finally:
        stop(proc)


def test_live_server_answers_over_http(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as c:
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/v1/model").status_code == 401
        r = c.post(
            "/v1/predict",
            json={"instances": [{"tabular": {"age": 61, "bmi": 24.5, "marker": 1.2}}]},
            headers=AUTH,
        )
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["missing"] for p in preds] == [["image", "signal"]]
        empty = c.post("/v1/predict", json={"instances": [{}]}, headers=AUTH)  # no input at all
        assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == [
            "body",
            "instances",
            0,
        ]
        bad = c.post(
            "/v1/predict", json={"instances": [{"image": {"png": "aGVsbG8="}}]}, headers=AUTH
        )
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "png"
        assert c.get("/health").status_code == 200  # the worker survived


def _sample_files(info: dict[str, Any], root: Path) -> dict[str, dict[str, Any]]:
    """One real file per payload field ``GET /v1/model`` advertises, per image/signal modality
    (base64; WFDB as ``{"hea", "dat"}``): what a valid request's file fields hold."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from medfuse.data.examples import write_csv_signal, write_dicom, write_wfdb

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def npy(a: np.ndarray) -> str:
        buf = io.BytesIO()
        np.save(buf, a.astype(np.float32))
        return b64(buf.getvalue())

    rng = np.random.default_rng(0)
    out: dict[str, dict[str, Any]] = {}
    for m, d in info["modalities"].items():
        files, shape = d.get("files") or {}, d["shape"]
        if d["kind"] == "image":
            grey = (rng.random(shape[-2:]) * 255).astype(np.uint8)
            png = io.BytesIO()
            Image.fromarray(grey).save(png, "PNG")
            dcm = write_dicom(root / f"{m}.dcm", grey.astype(np.uint16))
            made = {"png": b64(png.getvalue()), "dicom": b64(dcm.read_bytes())}
            made["npy"] = npy(grey[None] / 255.0)
        elif d["kind"] == "signal":
            sig = rng.normal(size=shape[-2:])
            leads = d.get("leads") or [f"lead{i}" for i in range(shape[-2])]
            fs = d.get("rate") or 100.0
            csv = write_csv_signal(root / f"{m}.csv", sig, fs, leads)
            hea = write_wfdb(root / f"{m}.hea", sig, fs, leads)
            made = {
                "npy": npy(sig),
                "csv": b64(csv.read_bytes()),
                "wfdb": {
                    "hea": b64(hea.read_bytes()),
                    "dat": b64(hea.with_suffix(".dat").read_bytes()),
                },
            }
        else:
            continue
        assert set(files) <= set(made), f"no sample file for {m}: {set(files) - set(made)}"
        out[m] = {f: made[f] for f in files}
    return out


def test_schemathesis_all_checks(server: str, tmp_path: Path) -> None:
    """``schemathesis run --checks all`` against the live service's OpenAPI (examples,
    coverage and fuzzing phases; valid and invalid requests; every operation): 0 failures.

    Two things JSON Schema cannot say are supplied by ``schemathesis_hooks``: a valid request's
    arrays are rectangular and its file fields hold real files; and the built-in
    ``positive_data_acceptance`` is replaced by its variant that also allows the input
    contract's one refusal of schema-valid data, a non-finite model output (a 422 saying so).
    Everything else (modalities present, payload fields, channel counts, float32 bounds,
    categories, explain targets, documented status codes and bodies) is in the schema."""
    import json

    with httpx.Client(base_url=server, timeout=120, headers=AUTH) as c:
        info = c.get("/v1/model").json()
        files = tmp_path / "files.json"
        files.write_text(json.dumps(_sample_files(info, tmp_path)))
        warm = {"instances": [{"tabular": {"age": 50}}], "pictures": False}
        assert c.post("/v1/explain", json=warm).status_code == 200  # loads torch: not a timing
    report = tmp_path / "schemathesis.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "MEDFUSE_ST_FILES": str(files),
    }
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{server}/openapi.json",
           "--checks", "all", "--exclude-checks", "positive_data_acceptance",
           "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "25", "--seed", "17",
           "--request-timeout", "60", "--max-response-time", "30", "--no-color",
           "--report", "json", "--report-json-path", str(report)]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = json.loads(report.read_text())
    assert run.returncode == 0 and out["exit_code"] == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert out["failures"] == [] and out["errors"] == []
    assert out["operations"]["tested"] == out["operations"]["total"] == 4, out["operations"]
    assert {p: out["phases"][p]["status"] for p in ("coverage", "fuzzing")} == {
        "coverage": "success",
        "fuzzing": "success",
    }
    # every operation of the service, extensions (e.g. /v1/explain) included, was answered 2xx
    # for valid data: the generated requests reached the model, not only its validation
    rates = out["valid_rates"]
    assert {"GET /health", "GET /v1/model", "POST /v1/predict", "POST /v1/explain"} <= set(rates)
    for op in ("POST /v1/predict", "POST /v1/explain"):
        assert sum(r["accepted"] for r in rates[op].values()) > 10, (op, rates[op])
    with httpx.Client(base_url=server, timeout=30) as c:
        assert c.get("/health").status_code == 200
    print(f"schemathesis --checks all: {out['test_cases']}, {out['running_time']:.0f} s")


def test_serve_without_export_fails_with_a_clear_message(tiny_package: Path, capsys) -> None:
    """The package is loaded before uvicorn starts: no model.onnx is a clear error, exit 4."""
    from medfuse.cli import main

    assert main(["serve", str(tiny_package), "--port", str(free_port())]) == 4
    assert "medfuse export" in capsys.readouterr().err
