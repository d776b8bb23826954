"""``POST /v1/explain`` and the web page, against a real uvicorn server on 127.0.0.1; the page
driven in headless Chromium (Playwright)."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "src" / "medfuse" / "serve" / "static"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a.astype(np.float32))
    return buf.getvalue()


def _instance(split, i: int, *, signal: bool = True) -> dict:
    inst = {
        "image": {"npy": base64.b64encode(_npy(split.arrays["image"][i])).decode()},
        "tabular": dict(zip(["age", "bmi", "marker"], map(float, split.arrays["tabular"][i]))),
    }
    if signal:
        inst["signal"] = {"array": split.arrays["signal"][i].tolist()}
    return inst


def test_page_and_assets_are_served_without_external_resources(live_server) -> None:
    url, _ = live_server
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text
    for name in ("app.js", "style.css"):
        r = httpx.get(f"{url}/static/{name}")
        assert r.status_code == 200 and len(r.text) > 500
    for f in STATIC.iterdir():  # no CDN: nothing the page loads comes from elsewhere
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", f.read_text()), f.name
        assert "cdn" not in f.read_text().lower(), f.name


def test_explain_api(live_server, small_test) -> None:
    url, token = live_server
    auth = {"Authorization": f"Bearer {token}"}
    body = {"instances": [_instance(small_test, 0), _instance(small_test, 1, signal=False)]}
    assert httpx.post(url + "/v1/explain", json=body, timeout=60).status_code == 401
    r = httpx.post(url + "/v1/explain", json=body, headers=auth, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    pred = httpx.post(url + "/v1/predict", json=body, headers=auth, timeout=60).json()
    assert out["runtime"] == "torch" and len(out["explanations"]) == 2
    for e, p in zip(out["explanations"], pred["predictions"]):
        assert e["prediction"]["label"] == p["label"]
        for k, v in p["probabilities"].items():
            assert abs(e["prediction"]["probabilities"][k] - v) < 1e-5
        for c in (e["contributions"], e["contributions_logit"]):
            assert abs(sum(c["values"].values()) - (c["full"] - c["base"])) < 1e-9
        assert abs(e["contributions"]["full"] - e["explained"]["probability"]) < 1e-6
        cam = np.asarray(e["maps"]["image"]["upsampled"])
        assert e["maps"]["image"]["method"] == "grad-cam" and cam.shape == (16, 16)
        assert len(e["maps"]["tabular"]["features"]) == 3
        for key, uri in e["pictures"].items():
            assert uri.startswith("data:image/png;base64,"), key
            assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    first, second = out["explanations"]
    assert np.asarray(first["maps"]["signal"]["attribution"]).shape == (2, 64)
    assert set(first["pictures"]) == {"image", "signal", "tabular", "modalities"}
    assert "signal" not in second["maps"] and second["prediction"]["missing"] == ["signal"]
    assert second["contributions"]["values"]["signal"] == 0.0


def test_explain_api_errors_name_the_field(live_server, small_test) -> None:
    url, token = live_server
    auth = {"Authorization": f"Bearer {token}"}
    inst = _instance(small_test, 0)

    def detail(body: dict) -> list:
        r = httpx.post(url + "/v1/explain", json=body, headers=auth, timeout=60)
        assert r.status_code == 422, r.text
        return r.json()["detail"]

    d = detail({"instances": [inst], "target": "negative", "pictures": False})
    assert d[0]["loc"] == ["body", "target"] and "positive" in d[0]["msg"]
    assert detail({"instances": [inst] * 5})[0]["loc"][:2] == ["body", "instances"]
    assert detail({"instances": [inst], "steps": 0})[0]["loc"] == ["body", "steps"]
    bad = {**inst, "image": {"npy": base64.b64encode(b"not an npy").decode()}}
    assert detail({"instances": [bad]})[0]["loc"][:4] == ["body", "instances", 0, "image"]
    assert httpx.get(url + "/health").json()["status"] == "ok"


@pytest.mark.browser
def test_page_in_headless_chromium(live_server, small_test, browser, tmp_path) -> None:
    """Upload a test image and a signal, fill a clinical field, submit: the prediction, the
    threshold, the Grad-CAM overlay, the signal attribution and the contributions appear."""
    url, token = live_server
    img, sig = tmp_path / "case-image.npy", tmp_path / "case-ecg.csv"
    np.save(img, small_test.arrays["image"][3])
    s = small_test.arrays["signal"][3]  # (2, 64) -> one column per lead, with a header line
    sig.write_text("lead0,lead1\n" + "\n".join(f"{a:.7g},{b:.7g}" for a, b in s.T))
    age = float(small_test.arrays["tabular"][3, 0])
    # what the same case gives through the API (the page must show this)
    inst = {
        "image": {"npy": base64.b64encode(_npy(small_test.arrays["image"][3])).decode()},
        "signal": {"array": np.asarray([[float(f"{v:.7g}") for v in row] for row in s]).tolist()},
        "tabular": {"age": float(f"{age:.6g}")},
    }
    ref = httpx.post(
        url + "/v1/explain",
        json={"instances": [inst], "pictures": False},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ).json()["explanations"][0]

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    outside: list[str] = []
    page.on(
        "request",
        lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url),
    )
    try:
        page.goto(url + "/")
        page.locator("#token").fill(token)  # the service has a token: the page asks for it
        page.locator("#token-save").click()
        page.locator("[data-testid=file-image]").set_input_files(str(img))
        page.locator("[data-testid=file-signal]").set_input_files(str(sig))
        page.locator("[data-testid=field-age]").fill(f"{age:.6g}")
        page.locator("#submit").click()
        overlay = page.locator("[data-testid=overlay-image]")
        overlay.wait_for(state="visible", timeout=60_000)
        label = page.locator("[data-testid=label]").inner_text()
        prob = page.locator("[data-testid=probability]").inner_text()
        thr = page.locator("[data-testid=threshold]").inner_text()
        rows = page.locator("#contributions tr[data-modality]").count()
        sizes = page.evaluate(
            "() => Array.from(document.querySelectorAll('#results img'))"
            ".map(i => [i.dataset.testid, i.complete, i.naturalWidth])"
        )
        assert page.locator("#error").is_hidden()
        out = Path(os.environ.get("MEDFUSE_ARTIFACTS", REPO / "artifacts"))
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out / "explain_page.png"), full_page=True)
    finally:
        page.close()
    assert label == ref["prediction"]["label"]
    p = ref["prediction"]["probabilities"]["positive"]
    assert f"P(positive) = {p:.3f}" in prob, (prob, p)
    assert f"threshold {ref['prediction']['threshold']:.3f}" in thr
    assert rows == 3
    shown = {t: w for t, done, w in sizes if done}
    assert shown.get("overlay-image", 0) > 100 and shown.get("attribution-signal", 0) > 100
    assert shown.get("features-tabular", 0) > 100 and shown.get("picture-modalities", 0) > 100
    assert not outside, f"the page fetched from elsewhere: {outside}"


def test_page_shows_plausibility_flags(live_server, browser) -> None:
    """A clinical value outside the training range is shown as a flag next to the prediction."""
    url, token = live_server
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(url + "/")
        page.locator("#token").fill(token)
        page.locator("#token-save").click()
        page.locator("[data-testid=field-age]").fill("300")
        page.locator("#submit").click()
        flags = page.locator("[data-testid=flags]")
        flags.wait_for(state="visible", timeout=60_000)
        text = flags.inner_text()
    finally:
        page.close()
    assert "age=300 outside the training range" in text


def test_explain_refuses_a_package_changed_on_disk_since_startup(
    small_package, small_test, tmp_path
) -> None:
    """/v1/explain loaded the package from disk on its first call: after ``medfuse calibrate``
    in place it explained the new model (P 0.27 beside /v1/predict's 0.45 in one server), and a
    package whose signature the service had checked at startup no longer had one."""
    import shutil

    from fastapi.testclient import TestClient

    from medfuse.report.calibration import calibrate_package
    from medfuse.serve.app import create_app

    pkg = shutil.copytree(small_package, tmp_path / "pkg")
    body = {"instances": [_instance(small_test, 0)], "pictures": False}
    client = TestClient(create_app(pkg, runtime="torch"))
    calibrate_package(pkg)  # in place, after the service started
    r = client.post("/v1/explain", json=body)
    assert r.status_code == 503, r.text
    assert "changed on disk since the service started" in r.text and "calibration" in r.text
    assert client.post("/v1/predict", json={"instances": body["instances"]}).status_code == 200
    # a service started on the package as it now is explains it
    fresh = TestClient(create_app(pkg, runtime="torch"))
    assert fresh.post("/v1/explain", json=body).status_code == 200
