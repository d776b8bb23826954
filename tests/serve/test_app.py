"""The HTTP app in process (FastAPI TestClient): routes, payload kinds, errors, extension point.

(No ``from __future__ import annotations``: FastAPI reads the test route's annotations.)
"""

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from medfuse.serve.app import _EXTENSIONS, EXTENSION_MODULES, create_app, extension

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(exported_package: Path) -> TestClient:
    return TestClient(create_app(exported_package, token=TOKEN, max_body_bytes=300_000))


@pytest.fixture(scope="module")
def cases(exported_package: Path) -> dict[str, np.ndarray]:
    """A few real test-split cases of the package's own (synthetic) data."""
    from medfuse.api import prepare_data
    from medfuse.core.package import read_meta
    from medfuse.core.spec import parse_spec

    _, bundle = prepare_data(parse_spec(read_meta(exported_package)["spec"]))
    return {m: a[:4] for m, a in bundle.test.arrays.items()}


def _instance(cases: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    age, bmi, marker = (float(v) for v in cases["tabular"][i])
    return {
        "image": {"array": cases["image"][i].tolist()},
        "signal": {"array": cases["signal"][i].tolist()},
        "tabular": {"age": age, "bmi": bmi, "marker": marker},
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_health_and_model_info(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "model": "tiny", "runtime": "onnx"}
    info = client.get("/v1/model", headers=AUTH).json()
    assert info["labels"] == ["negative", "positive"]
    assert info["modalities"]["image"]["shape"] == [1, 16, 16]
    assert info["modalities"]["tabular"]["columns"] == ["age", "bmi", "marker"]
    assert info["runtime"]["precision"] == "fp32" and info["runtime"]["name"] == "onnx"
    assert 0 <= info["threshold"]["value"] <= 1
    assert "torch" in info["versions"]["package"] and "onnxruntime" in info["versions"]["serving"]
    assert set(info["input_schema"]["properties"]) == {"image", "signal", "tabular"}


def test_predict_matches_the_torch_predictor(
    client: TestClient, cases: dict[str, np.ndarray], exported_package: Path
) -> None:
    from medfuse.inference.predictor import load

    body = {"instances": [_instance(cases, i) for i in range(4)] + [{"tabular": {"age": 50}}]}
    r = client.post("/v1/predict", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 5
    ref = load(exported_package)
    p = ref.predict_proba(
        [{m: cases[m][i] for m in cases} for i in range(4)]
    )  # list of per-sample dicts
    got = np.array([x["probabilities"]["positive"] for x in preds[:4]])
    assert np.abs(got - p).max() < 1e-5
    assert [x["label"] for x in preds[:4]] == ref.predict(
        [{m: cases[m][i] for m in cases} for i in range(4)]
    )
    assert preds[4]["missing"] == ["image", "signal"]
    # an instance with no input at all gets no label: a 422 naming the instance
    r = client.post("/v1/predict", json={"instances": [{}]}, headers=AUTH)
    assert r.status_code == 422 and _detail(r)[0]["loc"] == ["body", "instances", 0]
    assert "no usable input" in _detail(r)[0]["msg"]
    assert all(abs(sum(x["probabilities"].values()) - 1) < 1e-9 for x in preds)


def test_file_payloads_png_dicom_npy(client: TestClient, cases: dict[str, np.ndarray]) -> None:
    from PIL import Image

    img = cases["image"][0, 0]
    # PNG at another size: resized like the data readers do
    u8 = np.clip((img - img.min()) / (np.ptp(img) + 1e-6) * 255, 0, 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(u8).resize((40, 40)).save(png, "PNG")
    npy = io.BytesIO()
    np.save(npy, cases["signal"][0])
    body = {
        "instances": [
            {"image": {"png": _b64(png.getvalue())}},
            {"image": {"dicom": _b64(_dicom_bytes(u8.astype(np.uint16) * 4))}},
            {"signal": {"npy": _b64(npy.getvalue())}},
        ]
    }
    r = client.post("/v1/predict", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [p["missing"] for p in r.json()["predictions"]] == [
        ["signal", "tabular"],
        ["signal", "tabular"],
        ["image", "tabular"],
    ]


def _dicom_bytes(pixels: np.ndarray) -> bytes:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _detail(r: Any) -> list[dict[str, Any]]:
    d = r.json()["detail"]
    return d if isinstance(d, list) else [{"msg": d, "loc": []}]


@pytest.mark.parametrize(
    ("instance", "loc", "text"),
    [
        ({"imaging": {}}, ["body", "instances", 0, "imaging"], "Extra inputs"),
        ({"tabular": {"weight": 3}}, ["body", "instances", 0, "tabular", "weight"], "Extra"),
        ({"tabular": {"age": "old"}}, ["body", "instances", 0, "tabular", "age"], "not a number"),
        ({"image": {"png": "%%%"}}, ["body", "instances", 0, "image", "png"], "base64"),
        (
            {"image": {"png": base64.b64encode(b"GIF89a-not-really").decode()}},
            ["body", "instances", 0, "image", "png"],
            "image",
        ),
        (
            {"image": {"dicom": base64.b64encode(b"\0" * 300).decode()}},
            ["body", "instances", 0, "image", "dicom"],
            "DICOM",
        ),
        (
            {"image": {"array": [[[1.0, 2.0], [3.0]]]}},
            ["body", "instances", 0, "image", "array"],
            "ragged",
        ),
        (
            {"image": {"array": [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]]}},
            ["body", "instances", 0, "image", "array"],
            "2 channels cannot be fitted to 1",
        ),
        ({"image": {"array": None, "png": None}}, ["body", "instances", 0, "image"], "exactly one"),
    ],
)
def test_bad_content_is_a_422_naming_the_field(
    client: TestClient, instance: dict[str, Any], loc: list[Any], text: str
) -> None:
    r = client.post("/v1/predict", json={"instances": [instance]}, headers=AUTH)
    assert r.status_code == 422, r.text
    d = _detail(r)[0]
    assert d["loc"] == loc and text in d["msg"], d


def test_nan_signal_and_errors_leave_the_service_healthy(client: TestClient) -> None:
    nan_signal = json.dumps(
        {"instances": [{"signal": {"array": [[float("nan")] * 32, [0.0] * 32]}}]}
    )  # Python's json writes NaN, as many clients do
    r = client.post(
        "/v1/predict", content=nan_signal, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "NaN" in _detail(r)[0]["msg"]
    r = client.post("/v1/predict", json={"instances": [{"tabular": {"age": 1e40}}]}, headers=AUTH)
    assert r.status_code == 422
    r = client.post(
        "/v1/predict", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    r = client.post("/v1/predict", json={"instances": []}, headers=AUTH)
    assert r.status_code == 422 and _detail(r)[0]["loc"] == ["body", "instances"]
    r = client.post("/v1/predict", json={"instances": [{}] * 65}, headers=AUTH)
    assert r.status_code == 422  # over max_batch
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/v1/predict", json={"instances": [{}]}, headers=AUTH).status_code == 422
    ok = {"instances": [{"tabular": {"age": 50}}]}
    assert client.post("/v1/predict", json=ok, headers=AUTH).status_code == 200


def test_auth_and_size_limit(client: TestClient, cases: dict[str, np.ndarray]) -> None:
    body = {"instances": [{}]}
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert (
        client.post("/v1/predict", json=body, headers={"Authorization": "Bearer x"}).status_code
        == 401
    )
    assert client.get("/v1/model").status_code == 401
    big = {"instances": [_instance(cases, 0)] * 60}  # ~ 0.5 MB of JSON
    r = client.post("/v1/predict", json=big, headers=AUTH)
    assert r.status_code == 413 and "limit of 300000 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b" " * 10_000

    r = client.post(
        "/v1/predict", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 413


def test_openapi_schema_describes_the_inputs(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    assert {"Instance", "PredictRequest", "PredictResponse", "ImageInput", "TabularColumns"} <= set(
        comps
    )
    assert set(comps["TabularColumns"]["properties"]) == {"age", "bmi", "marker"}
    assert set(comps["ImageInput"]["properties"]) == {"array", "png", "dicom", "npy"}
    post = schema["paths"]["/v1/predict"]["post"]
    assert {"401", "413", "422"} <= set(post["responses"])
    assert "securitySchemes" in schema["components"]


def test_openapi_schema_says_what_the_contract_accepts(client: TestClient) -> None:
    """What JSON Schema can say of the input contract is in the schema: at least one modality
    given, exactly one payload field, channel counts, float32 bounds, canonical base64, the
    explain targets; the service refuses what the schema refuses, naming the field."""
    schema = client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    present = comps["Instance"]["anyOf"]
    assert [b["required"] for b in present] == [["image"], ["signal"], ["tabular"]]
    assert len(comps["ImageInput"]["oneOf"]) == 4  # exactly one of array, png, dicom, npy
    image = comps["ImageInput"]["properties"]["array"]["anyOf"]
    assert [(a.get("minItems"), a.get("maxItems")) for a in image[:2]] == [(1, 1), (3, 3)]
    signal = comps["SignalInput"]["properties"]["array"]["anyOf"][0]
    assert (signal["minItems"], signal["maxItems"], signal["items"]["minItems"]) == (2, 2, 1)
    assert signal["items"]["items"]["maximum"] == float(np.finfo(np.float32).max)
    assert "pattern" in comps["SignalInput"]["properties"]["npy"]["anyOf"][0]
    explain = schema["paths"]["/v1/explain"]["post"]
    assert {"400", "401", "413", "422", "501"} <= set(explain["responses"])
    req = comps["ExplainRequest"]["properties"]
    assert req["target"]["anyOf"][0]["enum"] == ["positive", "1"]

    def post(path: str, body: dict[str, Any]) -> Any:
        return client.post(path, json=body, headers=AUTH)

    r = post("/v1/predict", {"instances": [{"tabular": {"age": 1e39}}]})  # beyond float32
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "age"
    r = post("/v1/predict", {"instances": [{"tabular": {"age": "61"}}]})  # a number, as JSON
    assert r.status_code == 422 and "not a number" in r.json()["detail"][0]["msg"]
    r = post("/v1/predict", {"instances": [{"signal": {"array": [[], []]}}]})
    assert r.status_code == 422 and "empty signal" in r.json()["detail"][0]["msg"]
    r = post(
        "/v1/explain", {"instances": [{"tabular": {"age": 50}}], "steps": 8.0, "pictures": False}
    )
    assert r.status_code == 200, r.text  # an integer, as JSON Schema has it
    got = r.json()
    # a binary model's explained class is its positive class, labels[1] (index said 0)
    assert got["explanations"][0]["explained"] == {
        **got["explanations"][0]["explained"],
        "label": "positive",
        "index": 1,
    }
    assert got["explained_model"]["file"] == "model.safetensors"
    assert "note" not in got["explained_model"]  # fp32: what /v1/predict runs too
    for bad in ({"steps": True}, {"steps": "8"}, {"pictures": 0}, {"target": "negative"}):
        r = post("/v1/explain", {"instances": [{"tabular": {"age": 50}}], **bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == [
            "body",
            next(iter(bad)),
        ]


def test_a_validation_error_echoing_nan_is_a_422_not_a_500(exported_package: Path) -> None:
    """Python's JSON parser reads NaN; FastAPI's error echoes the input, which its encoder
    refuses: the service answers the 422 with the value as text."""
    c = TestClient(create_app(exported_package), raise_server_exceptions=False)
    sig = [[float("nan")] * 32, [0.0] * 32]
    body = json.dumps({"instances": [{"signal": {"array": sig, "npy": "AAAA"}}]})
    r = c.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    d = r.json()["detail"][0]
    assert "exactly one" in d["msg"] and d["input"]["array"][0][0] == "nan"


def test_torch_runtime_gives_the_same_answers(
    exported_package: Path, client: TestClient, cases: dict[str, np.ndarray]
) -> None:
    torch_client = TestClient(create_app(exported_package, runtime="torch"))
    body = {"instances": [_instance(cases, i) for i in range(3)]}
    a = client.post("/v1/predict", json=body, headers=AUTH).json()
    b = torch_client.post("/v1/predict", json=body).json()
    assert b["runtime"] == "torch"
    for x, y in zip(a["predictions"], b["predictions"]):
        assert x["label"] == y["label"]
        assert abs(x["probabilities"]["positive"] - y["probabilities"]["positive"]) < 1e-5


def test_onnx_runtime_without_export_fails_clearly(tiny_package: Path) -> None:
    from medfuse.core.errors import PackageError

    with pytest.raises(PackageError, match="medfuse export"):
        create_app(tiny_package)


def test_extension_point_adds_routes(exported_package: Path) -> None:
    from fastapi import APIRouter, Request

    from medfuse.serve.app import add_routes

    @extension("test-echo")
    def install(app: Any) -> None:
        router = APIRouter()

        @router.post("/v1/echo-missing")
        async def echo(request: Request) -> dict[str, Any]:
            body = app.state.service.request_model.model_validate(await request.json())
            _, masks = app.state.service.decode(body.instances)
            return {"missing": [m for m, k in masks.items() if k[0] == 0]}

        add_routes(app, router)

    try:
        c = TestClient(create_app(exported_package, token=TOKEN))
        assert c.post("/v1/echo-missing", json={"instances": [{}]}).status_code == 401
        r = c.post("/v1/echo-missing", json={"instances": [{"tabular": {"age": 3}}]}, headers=AUTH)
        assert r.json() == {"missing": ["image", "signal"]}
    finally:
        _EXTENSIONS.pop("test-echo")
    assert EXTENSION_MODULES == EXTENSION_MODULES  # the list other areas append to exists


def test_categorical_columns_in_the_schema() -> None:
    """A text column's schema lists its categories (and the integer a numeric category stands
    for) when unseen values are refused; with ``unseen_category: flag`` any string is valid."""
    from medfuse.core.inputs import Modality
    from medfuse.serve.schemas import request_models

    mod = Modality(
        "labs",
        "tabular",
        (2,),
        columns=("sex", "grade"),
        categories={"sex": ["F", "M"], "grade": ["1", "2"]},
    )
    for policy, want in (("error", ["F", "M"]), ("flag", None)):
        inst, _ = request_models({"labs": mod}, 4, policy)
        schema = inst.model_json_schema()
        cols = schema["$defs"]["LabsColumns"]["properties"]
        sex = cols["sex"]["anyOf"]
        if want:
            assert sex[0] == {"enum": want} and cols["grade"]["anyOf"][0] == {
                "enum": ["1", "2", 1, 2]
            }
        else:
            assert {"type": "string"} in sex and {"type": "null"} in sex
        present = schema["anyOf"][0]["properties"]["labs"]["anyOf"]
        assert present[0]["properties"]["sex"] == {"enum": ["F", "M"]}  # a known value is present


def test_only_readable_file_formats_are_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A payload field whose reader cannot run here is neither advertised nor in the schema:
    WFDB needs wfdb, DICOM pydicom, resampling a CSV signal to the model's rate scipy."""
    from medfuse.core.inputs import Modality
    from medfuse.serve import schemas

    ecg = Modality("ecg", "signal", (2, 64), channels=2, length=64, leads=["I", "II"], rate=100.0)
    raw = Modality("raw", "signal", (2, 64), channels=2, length=64)
    img = Modality("img", "image", (1, 8, 8), channels=1, size=(8, 8))
    assert list(schemas.file_fields(ecg)) == ["npy", "csv", "wfdb"]
    monkeypatch.setattr(schemas, "installed", lambda mod: mod not in ("scipy", "wfdb", "pydicom"))
    assert list(schemas.file_fields(ecg)) == ["npy"]
    assert list(schemas.file_fields(raw)) == ["npy", "csv"]  # no rate: nothing to resample
    assert list(schemas.file_fields(img)) == ["png", "npy"]
    props = schemas.modality_model(ecg).model_json_schema()["properties"]
    assert set(props) == {"array", "npy"}


def test_every_answer_names_the_package_it_came_from(
    exported_package: Path, cases: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """A package keeps its name through ``medfuse calibrate``: answers before and after could
    not be told apart. Each /v1/predict answer and /v1/model name the package's id, which
    another threshold or temperature changes."""
    import shutil

    from medfuse.core.package import package_id, read_meta
    from medfuse.report.calibration import calibrate_package

    pkg = shutil.copytree(exported_package, tmp_path / "pkg")
    body = {"instances": [_instance(cases, 0)]}
    first = TestClient(create_app(pkg)).post("/v1/predict", json=body).json()
    assert first["package"] == package_id(read_meta(pkg)) and len(first["package"]) == 16
    calibrate_package(pkg)
    client = TestClient(create_app(pkg))
    after = client.post("/v1/predict", json=body).json()
    assert after["model"] == first["model"] and after["package"] != first["package"]
    assert client.get("/v1/model").json()["package"] == after["package"]
