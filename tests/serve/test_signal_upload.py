"""ECG upload end to end for a model whose signal declares ``leads`` and ``rate``: every file
format ``GET /v1/model`` advertises is predicted over the JSON API and through the web page (in
headless Chromium) with the probability ``medfuse predict`` gives for the same file."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

TOKEN = "ecg-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORMATS = ["npy", "csv", "wfdb"]


@pytest.fixture(scope="module")
def files(ecg_package: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One recording per advertised format: a WFDB record in uV (leads I, II, V1 at 256 Hz), a
    CSV signal (time column, the same leads), and an .npy holding the model's leads in its order
    at its rate (the documented rule for a file with no lead names and no rate)."""
    from medfuse.core.readers import read_signal

    _, example = ecg_package
    d = tmp_path_factory.mktemp("ecg-files")
    for name in ("p0000.hea", "p0000.dat", "p0004.csv"):
        shutil.copy(example / "ecg" / name, d / name)
    np.save(d / "p0000.npy", read_signal(d / "p0000.hea", leads=["I", "II"], rate=128.0))
    return {
        "npy": [d / "p0000.npy"],
        "csv": [d / "p0004.csv"],
        "wfdb": [d / "p0000.hea", d / "p0000.dat"],
    }


def _b64(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


def _payload(fmt: str, paths: list[Path]) -> dict[str, Any]:
    if fmt == "wfdb":
        return {"wfdb": {"hea": _b64(paths[0]), "dat": _b64(paths[1])}}
    if fmt == "array":
        return {"array": np.load(paths[0]).tolist()}
    return {fmt: _b64(paths[0])}


def _medfuse_predict(pkg: Path, path: Path, runtime: str, tmp_path: Path) -> float:
    """``medfuse predict PKG --input FILE``: P(positive) of the one file."""
    from medfuse.cli import main

    out = tmp_path / f"{path.stem}-{runtime}.csv"
    assert (
        main(["predict", str(pkg), "--input", str(path), "--out", str(out), "--runtime", runtime])
        == 0
    )
    df = pd.read_csv(out, keep_default_na=False)
    assert df["present_ecg"].tolist() == [1] and df["error"].tolist() == [""]
    return float(df["prob_positive"][0])


@pytest.fixture(scope="module")
def ecg_server(ecg_package: tuple[Path, Path], serving: Any) -> Iterator[str]:
    """``medfuse serve``'s app for the ECG package on a real uvicorn at 127.0.0.1 (ONNX runtime
    for /v1/predict, a bearer token)."""
    from medfuse.serve.app import create_app

    with serving(create_app(ecg_package[0], token=TOKEN)) as url:
        yield url


def test_model_advertises_what_it_reads(ecg_server: str) -> None:
    info = httpx.get(ecg_server + "/v1/model", headers=AUTH).json()
    ecg = info["modalities"]["ecg"]
    assert ecg["accepts"] == ["array", *FORMATS]
    assert ecg["files"] == {"npy": [".npy"], "csv": [".csv"], "wfdb": [".hea", ".dat"]}
    assert ecg["leads"] == ["I", "II"] and ecg["rate"] == 128.0
    props = info["input_schema"]["$defs"]["EcgInput"]["properties"]
    assert set(props) == {"array", *FORMATS}


def test_every_advertised_format_predicts_like_medfuse_predict(
    ecg_server: str, ecg_package: tuple[Path, Path], files: dict, tmp_path: Path
) -> None:
    """JSON API (ONNX runtime) vs ``medfuse predict --runtime onnx`` on the same file."""
    pkg, _ = ecg_package
    accepts = httpx.get(ecg_server + "/v1/model", headers=AUTH).json()["modalities"]["ecg"]
    sources = {**files, "array": files["npy"]}
    assert set(accepts["accepts"]) == set(sources)  # a new format needs a case here
    got = {}
    for fmt in accepts["accepts"]:
        body = {"instances": [{"ecg": _payload(fmt, sources[fmt])}]}
        r = httpx.post(ecg_server + "/v1/predict", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 200, (fmt, r.text)
        pred = r.json()["predictions"][0]
        assert pred["missing"] == ["clinical"], fmt
        got[fmt] = pred["probabilities"]["positive"]
        want = _medfuse_predict(pkg, sources[fmt][0], "onnx", tmp_path)
        assert abs(got[fmt] - want) < 1e-6, (fmt, got[fmt], want)
    # the .npy holds the WFDB record as the model reads it: the same case
    assert abs(got["npy"] - got["wfdb"]) < 1e-6 and got["array"] == got["npy"]


def test_signal_upload_errors_name_the_field(ecg_server: str, files: dict) -> None:
    def detail(payload: dict) -> dict:
        body = {"instances": [{"ecg": payload}]}
        r = httpx.post(ecg_server + "/v1/predict", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 422, r.text
        return r.json()["detail"][0]

    hea, dat = (p.read_bytes() for p in files["wfdb"])

    def rec(h: bytes, d: bytes = dat) -> dict:
        return {"wfdb": {"hea": base64.b64encode(h).decode(), "dat": base64.b64encode(d).decode()}}

    d = detail(rec(b"not a header at all"))
    assert d["loc"] == ["body", "instances", 0, "ecg", "wfdb", "hea"], d
    d = detail(rec(hea.replace(b"p0000.dat", b"../etc.dat", 1)))
    assert "not a plain file name" in d["msg"] and d["loc"][-1] == "hea"
    d = detail(rec(hea.replace(b"p0000.dat", b"other.dat", 1)))  # two data files
    assert "one .dat file" in d["msg"]
    d = detail(rec(hea, dat[:10]))  # a truncated data file
    assert d["loc"] == ["body", "instances", 0, "ecg", "wfdb"], d
    assert "/tmp" not in d["msg"] and "medfuse-upload" not in d["msg"]
    d = detail({"wfdb": {"hea": base64.b64encode(hea).decode()}})  # no .dat: a schema error
    assert d["loc"][-1] == "dat"
    csv_no_leads = b"time,A,B\n0,1,2\n0.01,1,2\n"
    d = detail({"csv": base64.b64encode(csv_no_leads).decode()})
    assert "no lead 'I'" in d["msg"] and d["loc"][-1] == "csv"
    npy_3_leads = files["npy"][0].parent / "three.npy"
    np.save(npy_3_leads, np.zeros((3, 128), np.float32))
    d = detail({"npy": _b64(npy_3_leads)})
    assert "3 channels" in d["msg"] and d["loc"][-1] == "npy"


@pytest.mark.browser
def test_page_uploads_every_advertised_format(
    ecg_server: str, ecg_package: tuple[Path, Path], files: dict, browser, tmp_path: Path
) -> None:
    """In headless Chromium: each format the service advertises is picked in the file input and
    sent as what it is (its own payload field, not converted); the page shows the probability
    that ``medfuse predict --runtime torch`` (the explain route's runtime) gives for the file."""
    pkg, _ = ecg_package
    info = httpx.get(ecg_server + "/v1/model", headers=AUTH).json()["modalities"]["ecg"]
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    seen: dict[str, tuple[dict, dict, str]] = {}
    try:
        page.goto(ecg_server + "/")
        page.locator("#token").fill(TOKEN)
        page.locator("#token-save").click()
        picker = page.locator("[data-testid=file-ecg]")
        accept = picker.get_attribute("accept") or ""
        assert set(accept.split(",")) == {s for v in info["files"].values() for s in v}
        for fmt in info["files"]:
            picker.set_input_files([str(p) for p in files[fmt]])
            is_explain: Callable[[Any], bool] = lambda r: r.url.endswith("/v1/explain")  # noqa: E731
            with page.expect_response(is_explain, timeout=60_000) as resp:
                page.locator("#submit").click()
            r = resp.value
            assert r.status == 200, (fmt, r.text())
            page.locator("[data-testid=probability]").wait_for(state="visible")
            seen[fmt] = (
                r.request.post_data_json,
                r.json(),
                page.locator("[data-testid=probability]").inner_text(),
            )
            assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
        # a lone .hea is refused by the page itself, naming what to do
        picker.set_input_files([str(files["wfdb"][0])])
        page.locator("#submit").click()
        page.locator("#error").wait_for(state="visible")
        lone = page.locator("#error").inner_text()
    finally:
        page.close()
    assert set(seen) == set(FORMATS)
    for fmt, (sent, body, shown) in seen.items():
        payload = sent["instances"][0]["ecg"]
        assert list(payload) == [fmt], (fmt, list(payload))  # sent as what it is
        if fmt == "wfdb":
            assert base64.b64decode(payload["wfdb"]["dat"]) == files["wfdb"][1].read_bytes()
        else:
            assert base64.b64decode(payload[fmt]) == files[fmt][0].read_bytes()
        p = body["explanations"][0]["prediction"]["probabilities"]["positive"]
        want = _medfuse_predict(pkg, files[fmt][0], "torch", tmp_path)
        assert abs(p - want) < 1e-6, (fmt, p, want)
        assert f"P(positive) = {p:.3f}" in shown, (fmt, shown)
    assert "select its .hea and its .dat together" in lone
