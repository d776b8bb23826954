"""The HTTP service: a FastAPI app over one package, ONNX Runtime by default.

Routes: ``GET /health`` (no token needed), ``GET /v1/model``, ``POST /v1/predict``; the OpenAPI
schema is at ``/openapi.json`` (docs at ``/docs``, off when a token is set: the Swagger page loads
its script from a CDN). Every answer carries CSP, X-Frame-Options and nosniff headers
(``SecurityHeaders``). Errors: 401 (bearer token missing or wrong,
when a token is set), 413 (body over ``max_body_bytes``), 422 (schema or content error; ``detail``
lists ``{"loc", "msg", "type"}`` naming the field, as FastAPI does). A bad image or a NaN signal is
a 422 with the reason, never a 500.

Extension point (for other areas, e.g. explanations): a module listed in ``EXTENSION_MODULES``
registers ``install(app)`` with ``@extension("name")``; ``create_app`` imports the modules and
calls each ``install`` after the core routes exist. Inside, use:

- ``app.state.service``: ``decode(instances) -> (arrays, masks)`` (raw, as training saw them),
  ``predict(instances)``, ``instance_model`` (the pydantic model of one instance), ``meta``,
  ``modalities``, ``path`` (the package directory);
- ``app.state.predictor``: the loaded predictor (``predict_proba``, ``logits``);
- ``app.state.auth``: a dependency that enforces the bearer token (``Depends(app.state.auth)``);
- ``app.state.error_responses``: the OpenAPI ``responses`` of a route with a request body
  (400, 413, 422, and 401 when a token is set), to document a route's errors as the core's;
- ``add_routes(app, router)``: include an ``APIRouter`` with the token enforced.

The path ``/`` is left free for a web page.
"""

import hmac
import importlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medfuse import __version__
from medfuse.core.errors import DataError, MedfuseError
from medfuse.core.signing import Trust, verify_signature
from medfuse.serve.schemas import ErrorDetail, Health, ModelInfo, PredictResponse
from medfuse.serve.service import InputError, Service

log = logging.getLogger("medfuse.serve")

DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_MAX_BATCH = 64
#: requests with at most this many instances are predicted on the event loop (no thread hop)
INLINE_INSTANCES = 4
ENV_CONFIG = "MEDFUSE_SERVE_CONFIG"

#: modules whose import registers app extensions with ``@extension`` (each area adds its own line)
EXTENSION_MODULES: list[str] = [
    "medfuse.serve.explain_routes",
]
_EXTENSIONS: dict[str, Callable[[FastAPI], None]] = {}


def extension(name: str) -> Callable[[Callable[[FastAPI], None]], Callable[[FastAPI], None]]:
    """Register ``install(app)``, called by ``create_app`` once the core routes exist."""

    def deco(fn: Callable[[FastAPI], None]) -> Callable[[FastAPI], None]:
        if name in _EXTENSIONS:
            raise ValueError(f"serve extension {name!r} is already registered")
        _EXTENSIONS[name] = fn
        return fn

    return deco


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Include ``router`` with the app's bearer-token check applied to every route in it."""
    app.include_router(router, dependencies=[Depends(app.state.auth)])


def _auth_dependency(token: str | None) -> Callable[..., None]:
    bearer = HTTPBearer(auto_error=False, description="the token given to `medfuse serve --token`")

    if token is None:

        def no_auth() -> None:
            return None

        return no_auth
    expected = token.encode()

    def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        ok = credentials is not None and hmac.compare_digest(
            credentials.credentials.encode(), expected
        )
        if not ok:
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token


class BodyLimit:
    """413 for a request body over ``max_bytes``: a declared ``Content-Length`` is refused before
    reading, a body without one (chunked) as soon as the running count passes the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self, size: int | None = None) -> str:
        got = f"of {size} bytes " if size is not None else ""
        return f"request body {got}exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        try:
            size = int(declared) if declared is not None else None
        except ValueError:
            size = None
        if size is not None and size > self.max_bytes:
            response = JSONResponse(
                status_code=413,
                content={"detail": self._message(size)},
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self._message())
            return message

        await self.app(scope, limited, send)


#: every answer's security headers; the page at ``/`` and ``/static`` loads nothing external
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
#: ``/docs`` (only when no token is set): FastAPI's Swagger page loads its script from a CDN
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


class SecurityHeaders:
    """Content-Security-Policy, X-Frame-Options: DENY, X-Content-Type-Options: nosniff and
    Referrer-Policy: no-referrer on every HTTP answer (a pure ASGI middleware: no per-request
    task, so it costs nothing measurable)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = (DOCS_CSP if scope.get("path") in DOCS_PATHS else CSP).encode()

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in _SECURITY_HEADER_NAMES
                ]
                headers += [
                    (b"content-security-policy", csp),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_SECURITY_HEADER_NAMES = {
    b"content-security-policy",
    b"x-frame-options",
    b"x-content-type-options",
    b"referrer-policy",
}


def _error_responses(token: bool) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        400: {
            "model": ErrorDetail,
            "description": "malformed request (a body that cannot be parsed)",
        },
        413: {"model": ErrorDetail, "description": "request body over the size limit"},
        422: {"model": ErrorDetail, "description": "schema or content error naming the field"},
    }
    if token:
        out[401] = {"model": ErrorDetail, "description": "missing or wrong bearer token"}
    return out


def create_app(
    package_path: str | Path,
    *,
    runtime: str = "onnx",
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_batch: int = DEFAULT_MAX_BATCH,
    device: str = "cpu",
    threads: int | None = None,
    extensions: bool = True,
    trust: dict[str, Any] | None = None,
) -> FastAPI:
    """A FastAPI app serving ``package_path`` with ``runtime`` ("onnx" needs ``model.onnx``:
    run ``medfuse export`` first; "torch" needs PyTorch). ``token`` enables bearer auth and
    turns ``/docs`` off (its page loads a CDN script on the origin that holds the token).
    ``trust`` (``{"key": ...}`` or ``{"identity": ..., "issuer": ...}``): the package's signature
    must verify before anything of it is loaded."""
    if trust:
        verify_signature(package_path, Trust(**trust))
    service = Service(
        package_path, runtime=runtime, device=device, threads=threads, max_batch=max_batch
    )
    app = FastAPI(
        title=f"medfuse: {service.name}",
        version=__version__,
        description=(
            f"{service.task} model over {', '.join(service.modalities)} "
            f"(labels: {', '.join(service.labels)}), served with the {runtime} runtime. "
            "POST a batch of instances to /v1/predict; GET /v1/model describes the inputs."
        ),
        docs_url=None if token is not None else "/docs",
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_bytes=int(max_body_bytes))
    app.add_middleware(SecurityHeaders)
    auth = _auth_dependency(token)
    app.state.service = service
    app.state.predictor = service.predictor
    app.state.meta = service.meta
    app.state.package_path = service.path
    app.state.auth = auth
    app.state.max_body_bytes = int(max_body_bytes)
    errors = _error_responses(token is not None)
    app.state.error_responses = errors  # for extension routes taking a request body
    guarded = [Depends(auth)] if token is not None else []
    PredictRequest = service.request_model  # a class, built for this package

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness: the model is loaded (no token needed, reveals no inputs)."""
        return {"status": "ok", "model": service.name, "runtime": service.runtime}

    @app.get(
        "/v1/model",
        response_model=ModelInfo,
        tags=["model"],
        dependencies=guarded,
        responses={k: v for k, v in errors.items() if k == 401},
    )
    def model_info() -> dict[str, Any]:
        """Labels, modalities, input schema, threshold, calibration, runtime and versions."""
        return service.info()

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        tags=["model"],
        dependencies=guarded,
        responses=errors,
    )
    async def predict(body: PredictRequest) -> Response:  # type: ignore[valid-type]
        """Probabilities, label and threshold for each instance (missing modalities allowed)."""
        instances = body.instances  # type: ignore[attr-defined]
        if len(instances) <= INLINE_INSTANCES:
            # a small request runs on the event loop: a thread hop (and the GIL hand-offs that
            # come with it) costs as much as the ONNX inference itself; workers = cores
            predictions = service.predict(instances)
        else:  # a big batch must not hold the loop: other connections keep being served
            predictions = await run_in_threadpool(service.predict, instances)
        out = {
            "model": service.name,
            "package": service.package_id,
            "runtime": service.runtime,
            "predictions": predictions,
        }
        # built to PredictResponse's shape by Service.predict: serialised directly (the model
        # documents it; re-validating every response would cost a third of a small request)
        return Response(json.dumps(out, allow_nan=False), media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer, but JSON-safe: a NaN or infinity that Python's parser read
        # (not JSON, yet many clients send it) is echoed as text, never a 500 while encoding
        detail = _json_safe(jsonable_encoder(err.errors()))
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(InputError)
    async def _input_error(request: Request, err: InputError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": list(err.loc), "msg": err.msg, "type": "value_error"}]},
        )

    @app.exception_handler(DataError)
    async def _data_error(request: Request, err: DataError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["body"], "msg": str(err), "type": "value_error"}]},
        )

    @app.exception_handler(MedfuseError)
    async def _medfuse_error(request: Request, err: MedfuseError) -> JSONResponse:
        log.error("request failed: %s", err)
        return JSONResponse(status_code=500, content={"detail": str(err)})

    if extensions:
        install_extensions(app)
    return app


def _json_safe(v: Any) -> Any:
    """``v`` with every non-finite float as its text (``"nan"``, ``"inf"``)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def install_extensions(app: FastAPI) -> None:
    """Import ``EXTENSION_MODULES`` and call every registered ``install(app)``."""
    for mod in EXTENSION_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError as err:
            log.warning("serve extension module %s not loaded: %s", mod, err)
    for name, install in _EXTENSIONS.items():
        install(app)
        log.debug("serve extension %s installed", name)


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers: ``create_app(**json.loads($MEDFUSE_SERVE_CONFIG))``."""
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        raise RuntimeError(f"{ENV_CONFIG} is not set; start the service with `medfuse serve`")
    return create_app(**json.loads(raw))


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    package_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    token: str | None = None,
    runtime: str = "onnx",
    device: str = "cpu",
    threads: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_batch: int = DEFAULT_MAX_BATCH,
    access_log: bool = True,
    log_level: str = "info",
    trust: dict[str, Any] | None = None,
) -> None:
    """Run the service with uvicorn (blocks). The package is checked (signature with ``trust``,
    checksums, schema) and loaded BEFORE the port is bound, so an unsigned, altered or damaged
    package, or a missing ``model.onnx``, fails here with a clear message."""
    # lazy: uvicorn (medfuse[serve]), only to serve
    import uvicorn

    if not 0 < int(port) < 65536:
        raise MedfuseError(f"port {port} is outside 1..65535")
    if int(max_body_bytes) <= 0:
        raise MedfuseError(f"the request size limit must be positive; got {max_body_bytes} bytes")
    if trust:
        log.info(verify_signature(package_path, Trust(**trust)))
    config = {
        "package_path": str(Path(package_path).resolve()),
        "runtime": runtime,
        "token": token,
        "max_body_bytes": int(max_body_bytes),
        "max_batch": int(max_batch),
        "device": device,
        "threads": threads,
        "trust": trust,
    }
    Service(package_path, runtime=runtime, device=device, threads=threads)  # fail early, clearly
    if host not in LOOPBACK and token is None:
        log.warning(
            "serving on %s without --token: anyone who can reach it can use the model", host
        )
    os.environ[ENV_CONFIG] = json.dumps(config)
    uvicorn.run(
        "medfuse.serve.app:app_from_env",
        factory=True,
        host=host,
        port=int(port),
        workers=int(workers),
        access_log=access_log,
        log_level=log_level,
    )
