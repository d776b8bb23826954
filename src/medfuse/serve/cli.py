"""``medfuse serve``."""

from __future__ import annotations

import argparse

from medfuse.core.console import Handler, port, positive_int, size_mb
from medfuse.core.trust import add_trust_arguments, trust_from_args


def setup_serve(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=port, default=8000, help="1..65535 (default 8000)")
    p.add_argument("--workers", type=positive_int, default=1, help="uvicorn worker processes")
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
        "--max-body-mb",
        type=size_mb,
        default=16.0,
        help="request size limit in MiB (413 above)",
    )
    p.add_argument(
        "--max-batch", type=positive_int, default=64, help="instances per request (default 64)"
    )
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument(
        "--require-signature",
        action="store_true",
        help="refuse to start unless the package's model.sig verifies (--key or --identity)",
    )
    add_trust_arguments(p)

    def run(a: argparse.Namespace) -> int:
        from medfuse.serve.app import serve  # lazy: fastapi and uvicorn, only when the verb runs

        trust = trust_from_args(a)
        if a.require_signature and trust is None:
            p.error("--require-signature needs --key public.pem or --identity")
        if trust is not None and not a.require_signature:
            p.error("--key/--identity are checked only with --require-signature")

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
            trust=None
            if trust is None
            else {"key": trust.key, "identity": trust.identity, "issuer": trust.issuer},
        )
        return 0

    return run
