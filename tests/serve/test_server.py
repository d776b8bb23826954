"""A real ``medfuse serve`` (uvicorn) on 127.0.0.1, hit over HTTP; schemathesis against its OpenAPI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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


def test_schemathesis_finds_no_server_errors(server: str) -> None:
    """Generated valid and invalid requests for every operation: never a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    ran: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        # GETs without parameters have no invalid form: negative cases for the POST only
        modes = (
            list(schemathesis.GenerationMode)
            if op.method.upper() == "POST"
            else [schemathesis.GenerationMode.POSITIVE]
        )
        for mode in modes:

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(
                max_examples=30,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    headers=AUTH, timeout=30, checks=[schemathesis.checks.not_a_server_error]
                )

            check()
            ran.append(f"{op.label} ({mode.value})")
    # every operation of the service, extensions (e.g. /v1/explain) included
    assert {"GET /health (positive)", "GET /v1/model (positive)"} <= set(ran)
    assert {"POST /v1/predict (positive)", "POST /v1/predict (negative)"} <= set(ran)
    with httpx.Client(base_url=server, timeout=30) as c:
        assert c.get("/health").status_code == 200


def test_serve_without_export_fails_with_a_clear_message(tiny_package: Path, capsys) -> None:
    """The package is loaded before uvicorn starts: no model.onnx is a clear error, exit 4."""
    from medfuse.cli import main

    assert main(["serve", str(tiny_package), "--port", str(free_port())]) == 4
    assert "medfuse export" in capsys.readouterr().err
