"""Load a manifest with ``data.stream: true`` in a process of its own and print the stream pass's
counts as JSON (``STREAM {...}``); the test of a crash kills it for real.

``python tests/data/stream_run.py CSV [--size S] [--die-after K]``: with ``--die-after`` the
process sends itself SIGKILL right after the K-th cache entry is written (no cleanup runs, as
with ``kill -9`` or the OOM killer). ``MEDFUSE_CACHE_DIR`` says where the cache is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--die-after", type=int, default=0)
    args = ap.parse_args()

    from medfuse.core.spec import parse_spec
    from medfuse.data import load_spec_data
    from medfuse.data import stream as stream_mod

    if args.die_after:
        put = stream_mod.Cache.put
        done = {"n": 0}

        def put_then_die(self: Any, row: int, item: Any) -> None:
            put(self, row, item)
            done["n"] += 1
            if done["n"] >= args.die_after:
                os.kill(os.getpid(), signal.SIGKILL)

        stream_mod.Cache.put = put_then_die  # type: ignore[method-assign]
    spec = {
        "name": "stream-run",
        "task": {"type": "binary"},
        "data": {"source": f"manifest:{args.csv}", "stream": True, "workers": 0},
        "modalities": {
            "image": {"kind": "image", "channels": 1, "size": [args.size, args.size]},
            "clinical": {"kind": "tabular", "columns": ["age", "marker"]},
        },
    }
    info = load_spec_data(parse_spec(spec)).info["stream"]
    keep = ("decoded", "cached", "recorded", "values_sha256", "stats")
    print("STREAM " + json.dumps({k: info[k] for k in keep}), flush=True)


if __name__ == "__main__":
    main()
