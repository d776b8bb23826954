"""17.11: HTTP hardening: security headers, no CDN script on the origin that keeps the token,
bad --port / --max-body-mb refused, booleans are not numbers, the 400 answer documented."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from medfuse.cli import main
from medfuse.serve.app import create_app

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def client(adv_exported: Path) -> TestClient:
    return TestClient(create_app(adv_exported, token=TOKEN, extensions=False))


@pytest.fixture(scope="module")
def open_client(adv_exported: Path) -> TestClient:
    return TestClient(create_app(adv_exported, extensions=False))


def test_security_headers_on_every_answer(client: TestClient) -> None:
    for r in (client.get("/health"), client.get("/v1/model"), client.get("/nowhere")):
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "cdn" not in csp


def test_docs_are_off_when_a_token_is_set(client: TestClient, open_client: TestClient) -> None:
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    page = open_client.get("/docs")  # no token, nothing to steal: the CDN page stays
    assert page.status_code == 200 and "cdn.jsdelivr.net" in page.headers["content-security-policy"]


def test_booleans_are_not_numbers(client: TestClient, adv_exported: Path) -> None:
    from medfuse.core.package import read_meta

    cols = read_meta(adv_exported)["spec"]["modalities"]["tabular"]["columns"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = {"instances": [{"tabular": {cols[0]: True}}]}
    r = client.post("/v1/predict", json=bad, headers=auth)
    assert r.status_code == 422, r.text
    good = {"instances": [{"tabular": {cols[0]: 1}}]}
    assert client.post("/v1/predict", json=good, headers=auth).status_code == 200
    signal = read_meta(adv_exported)["spec"]["modalities"]["signal"]
    rows = [[True] * signal["length"] for _ in range(signal["channels"])]
    r = client.post("/v1/predict", json={"instances": [{"signal": {"array": rows}}]}, headers=auth)
    assert r.status_code == 422


def test_the_400_answer_is_documented(open_client: TestClient) -> None:
    spec = open_client.get("/openapi.json").json()
    assert "400" in spec["paths"]["/v1/predict"]["post"]["responses"]


@pytest.mark.parametrize(
    "args, word",
    [
        (["--port", "70000"], "70000"),
        (["--port", "0"], "port"),
        (["--max-body-mb", "-1"], "-1"),
        (["--max-body-mb", "nan"], "nan"),
        (["--workers", "0"], "expected a positive integer; got 0"),
    ],
)
def test_bad_server_settings_exit_2(adv_exported: Path, capsys, args, word) -> None:
    with pytest.raises(SystemExit) as e:
        main(["serve", str(adv_exported), *args])
    assert e.value.code == 2
    assert word in capsys.readouterr().err
