"""``medfuse serve``."""

from __future__ import annotations

import argparse

from medfuse.core.console import Handler


def setup_serve(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (default: no auth)")
    p.add_argument(
        "--runtime",
        default="onnx",
        choices=["onnx", "torch"],
        help="onnx (model.onnx; run medfuse export first) or torch (the weights)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per worker")
    p.add_argument(
        "--max-body-mb", type=float, default=16.0, help="request size limit in MiB (413 above)"
    )
    p.add_argument("--max-batch", type=int, default=64, help="instances per request (default 64)")
    p.add_argument("--no-access-log", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from medfuse.serve.app import serve  # lazy: fastapi and uvicorn, only when the verb runs

        serve(
            a.package,
            host=a.host,
            port=a.port,
            workers=a.workers,
            token=a.token,
            runtime=a.runtime,
            device=a.device,
            threads=a.threads,
            max_body_bytes=int(a.max_body_mb * 1024 * 1024),
            max_batch=a.max_batch,
            access_log=not a.no_access_log,
        )
        return 0

    return run
