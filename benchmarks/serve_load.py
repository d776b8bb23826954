"""Load test of ``medfuse serve``: 64 concurrent clients on loopback, ONNX vs torch backends.

Without ``--package`` it trains a single-composite BreastMNIST package (``ensemble=1``, ``train.keep=best``,
3 epochs). For each backend a real server is started (``medfuse serve PACKAGE --runtime R``, uvicorn, same
workers / threads for both), warmed up, then hammered by ``--clients`` concurrent keep-alive
connections for ``--seconds`` seconds, each sending one real test instance per request
(``POST /v1/predict``). Every request is accounted for: ``sent == ok + errors`` is asserted, an
``ok`` is a 200 whose JSON holds exactly one prediction. Printed side by side: requests/s, p50
and p99 latency, and the ONNX / torch throughput ratio, all measured in this one run.

Both servers run at once (an idle one costs nothing) and the load alternates between them in
``--rounds`` rounds, so that both backends see the same machine conditions (the CPU is shared).
The clients are plain asyncio HTTP/1.1 connections (``--client raw``, default) so that the load
generator, which shares the CPU with the server, spends as little of it as possible;
``--client httpx`` uses ``httpx.AsyncClient`` instead.

    python benchmarks/serve_load.py --package runs/breastmnist        # an exported package
    python benchmarks/serve_load.py --data-dir /work/shared/data      # trains a small one first
    python benchmarks/serve_load.py --mixed --clients 32 --seconds 20 # good and bad payloads

``--mixed`` sends, from every client in turn, real instances and malformed ones (broken JSON,
NaN values, wrong shapes, unknown or misspelt modalities, no modality at all, booleans for
numbers, wrong content types) to the ONNX backend while another client polls ``/health``
throughout; and finite values far outside the training range (``huge values``), which the input
contract (``medfuse.core.inputs``) predicts and FLAGS: a 200 whose prediction carries a
plausibility flag, or a 422 when the model's output for them is not finite (a non-finite
probability is never a label). It asserts: no 5xx at all, every bad request answered 4xx, every
out-of-range one flagged (or refused for a non-finite output), every good one 200 with one
prediction, and ``/health`` answering 200 on every poll.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(package: Path, runtime: str, workers: int, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "medfuse", "serve", str(package), "--runtime", runtime,
           "--port", str(port), "--workers", str(workers), "--threads", str(threads),
           "--no-access-log", "--max-batch", "64"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{runtime} server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{runtime} server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.latencies: list[float] = []

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def check_body(body: bytes) -> bool:
    try:
        return len(json.loads(body)["predictions"]) == 1
    except (ValueError, KeyError, TypeError):
        return False


async def raw_client(port: int, request: bytes, until: float, tally: Tally) -> None:
    """One keep-alive connection sending ``request`` until ``until``; every send is tallied."""
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while time.perf_counter() < until:
            t = time.perf_counter()
            tally.sent += 1
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = conn
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError) as err:
                tally.error(type(err).__name__)
                if conn is not None:
                    conn[1].close()
                conn = None  # reconnect on the next request
                await asyncio.sleep(0.01)
                continue
            if status == 200 and check_body(body):
                tally.ok += 1
                tally.latencies.append(time.perf_counter() - t)
            else:
                tally.error(f"HTTP {status}")
    finally:
        if conn is not None:
            conn[1].close()


async def httpx_client(client: Any, body: bytes, until: float, tally: Tally) -> None:
    import httpx

    headers = {"Content-Type": "application/json"}
    while time.perf_counter() < until:
        t = time.perf_counter()
        tally.sent += 1
        try:
            r = await client.post("/v1/predict", content=body, headers=headers)
        except httpx.HTTPError as err:
            tally.error(type(err).__name__)
            continue
        if r.status_code == 200 and check_body(r.content):
            tally.ok += 1
            tally.latencies.append(time.perf_counter() - t)
        else:
            tally.error(f"HTTP {r.status_code}")


async def load(port: int, body: bytes, clients: int, seconds: float, kind: str) -> Tally:
    tally = Tally()
    request = (
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    until = time.perf_counter() + seconds
    if kind == "raw":
        await asyncio.gather(*(raw_client(port, request, until, tally) for _ in range(clients)))
    else:
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60
        ) as c:
            await asyncio.gather(*(httpx_client(c, body, until, tally) for _ in range(clients)))
    return tally


def request_bodies(package: Path, data_dir: str | None, n: int = 32) -> list[bytes]:
    """One-instance JSON bodies from the package's own test split (raw values)."""
    from medfuse.core.package import read_meta
    from medfuse.core.spec import parse_spec
    from medfuse.data import load_data

    spec = parse_spec(read_meta(package)["spec"])
    bundle = load_data(spec.data.source, spec.data.options, data_root=data_dir,
                       modalities=spec.modalities, task=spec.task.type)  # fmt: skip
    split = bundle.test or bundle.val
    bodies = []
    for i in range(min(n, len(split))):
        inst: dict[str, Any] = {}
        for m, s in spec.modalities.items():
            if split.masks[m][i] == 0:
                continue
            x = split.arrays[m][i]
            if s.kind == "tabular":
                inst[m] = {c: (None if np.isnan(v) else float(v)) for c, v in zip(s.columns, x)}
            else:
                inst[m] = {"array": x.tolist()}
        bodies.append(json.dumps({"instances": [inst]}).encode())
    return bodies


#: what the input contract answers: a refusal (4xx), or a prediction flagged as implausible
REFUSED, FLAGGED = "4xx", "flagged"


def bad_bodies(good: bytes) -> list[tuple[str, bytes, str]]:
    """Malformed requests derived from a good one: (name, body, content type); see
    ``EXPECT`` for the ones the contract predicts with a flag rather than refuses."""
    inst = json.loads(good)["instances"][0]
    name, value = next(iter(inst.items()))
    out: list[tuple[str, bytes, str]] = [
        ("broken json", good[: len(good) // 2], "application/json"),
        ("not json", b"\x00\xff garbage", "application/json"),
        ("text body", b"hello", "text/plain"),
        ("no instances", b"{}", "application/json"),
        ("empty instance", b'{"instances": [{}]}', "application/json"),
        ("instances not a list", b'{"instances": 3}', "application/json"),
        ("unknown modality", json.dumps({"instances": [{name + "x": value}]}).encode(),
         "application/json"),
        ("boolean for a number", json.dumps({"instances": [{name: True}]}).encode(),
         "application/json"),
    ]  # fmt: skip
    if isinstance(value, dict) and "array" in value:
        arr = np.asarray(value["array"], dtype=np.float64)
        huge = np.full_like(arr, 3e37).tolist()
        beyond = np.full_like(arr, 1e39).tolist()  # no float32: infinite once read
        out += [
            ("huge values", json.dumps({"instances": [{name: {"array": huge}}]}).encode(),
             "application/json"),
            ("beyond float32", json.dumps({"instances": [{name: {"array": beyond}}]}).encode(),
             "application/json"),
            ("NaN values", json.dumps({"instances": [{name: {"array": np.full_like(arr, np.nan)
             .tolist()}}]}).encode(), "application/json"),
            ("wrong shape", json.dumps({"instances": [{name: {"array": [[1.0, 2.0]]}}]}).encode(),
             "application/json"),
        ]  # fmt: skip
    elif isinstance(value, dict):
        col = next(iter(value))
        out += [
            ("string for a number", json.dumps({"instances": [{name: {col: "abc"}}]}).encode(),
             "application/json"),
            ("unknown column", json.dumps({"instances": [{name: {col + "zz": 1.0}}]}).encode(),
             "application/json"),
            ("huge value", json.dumps({"instances": [{name: {col: 1e30}}]}).encode(),
             "application/json"),
        ]  # fmt: skip
    return out


#: bad requests that are not malformed: finite values outside the training range are predicted
#: and flagged (``Batch.flags``), unless the model's output for them is not finite (422)
EXPECT = {"huge values": FLAGGED, "huge value": FLAGGED}


def check_flagged(status: int, body: bytes) -> bool:
    """A 200 with one prediction carrying a plausibility flag, or the contract's 422 for a
    non-finite model output."""
    try:
        out = json.loads(body)
    except ValueError:
        return False
    if status == 422:
        return "non-finite" in json.dumps(out.get("detail"))
    if status != 200 or not check_body(body):
        return False
    return bool(out["predictions"][0].get("flags"))


def _request(body: bytes, ctype: str, path: str = "/v1/predict") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def _send(conn: Any, request: bytes) -> tuple[int, bytes]:
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return int(head[9:12]), await reader.readexactly(length)


async def mixed_load(
    port: int, goods: list[bytes], bads: list[tuple[str, bytes, str]], clients: int, seconds: float
) -> dict[str, Any]:
    """Every client alternates good and bad requests; one more client polls /health."""
    out: dict[str, Any] = {"good_sent": 0, "good_ok": 0, "bad_sent": 0, "bad_4xx": 0,
                           "flag_sent": 0, "flag_ok": 0,
                           "5xx": 0, "wrong": {}, "health_polls": 0, "health_ok": 0}  # fmt: skip
    until = time.perf_counter() + seconds

    def wrong(kind: str) -> None:
        out["wrong"][kind] = out["wrong"].get(kind, 0) + 1

    async def client(k: int) -> None:
        conn = None
        i = k
        while time.perf_counter() < until:
            i += 1
            good = i % 2 == 0
            if good:
                body, ctype, name = goods[i % len(goods)], "application/json", "good"
            else:
                name, body, ctype = bads[(i // 2) % len(bads)]
            flagged = not good and EXPECT.get(name, REFUSED) == FLAGGED
            out["good_sent" if good else "flag_sent" if flagged else "bad_sent"] += 1
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                status, resp = await _send(conn, _request(body, ctype))
            except (OSError, asyncio.IncompleteReadError, ValueError) as err:
                wrong(f"{name}: {type(err).__name__}")
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            if status >= 500:
                out["5xx"] += 1
                wrong(f"{name}: HTTP {status}")
            elif good and status == 200 and check_body(resp):
                out["good_ok"] += 1
            elif flagged and check_flagged(status, resp):
                out["flag_ok"] += 1
            elif not good and not flagged and 400 <= status < 500:
                out["bad_4xx"] += 1
            else:
                wrong(f"{name}: HTTP {status}")
        if conn is not None:
            conn[1].close()

    async def health() -> None:
        while time.perf_counter() < until:
            out["health_polls"] += 1
            try:
                conn = await asyncio.open_connection("127.0.0.1", port)
                conn[1].write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                await conn[1].drain()
                head = await asyncio.wait_for(conn[0].readuntil(b"\r\n\r\n"), 10)
                conn[1].close()
                out["health_ok"] += int(head[9:12]) == 200
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.2)

    await asyncio.gather(health(), *(client(k) for k in range(clients)))
    return out


def run_mixed(package: Path, bodies: list[bytes], a: argparse.Namespace) -> int:
    bads = bad_bodies(bodies[0])
    proc, port = start(package, "onnx", a.workers, a.threads)
    try:
        r = asyncio.run(mixed_load(port, bodies, bads, a.clients, a.seconds))
    finally:
        stop(proc)
    refused = [n for n, _, _ in bads if EXPECT.get(n, REFUSED) == REFUSED]
    flagged = [n for n, _, _ in bads if EXPECT.get(n, REFUSED) == FLAGGED]
    print(f"mixed good/bad payloads, {a.clients} clients x {a.seconds:.0f} s, onnx backend; "
          f"{len(refused)} kinds of bad request (must be 4xx): {', '.join(refused)}; "
          f"{len(flagged)} out of range (must be flagged): {', '.join(flagged)}")  # fmt: skip
    print(f"good: {r['good_ok']}/{r['good_sent']} answered 200; bad: {r['bad_4xx']}/"
          f"{r['bad_sent']} answered 4xx; out of range: {r['flag_ok']}/{r['flag_sent']} "
          f"flagged; 5xx: {r['5xx']}; /health: {r['health_ok']}/{r['health_polls']} polls 200")  # fmt: skip
    if r["wrong"]:
        print(f"unexpected answers: {r['wrong']}")
    print(json.dumps(r))
    ok = (r["5xx"] == 0 and not r["wrong"] and r["good_ok"] == r["good_sent"]
          and r["bad_4xx"] == r["bad_sent"] and r["flag_ok"] == r["flag_sent"]
          and r["health_ok"] == r["health_polls"] > 0)  # fmt: skip
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def model_latency(
    package: Path, runtimes: list[str], body: bytes, n: int = 200
) -> dict[str, float]:
    """Median batch-1 ``predict_proba`` time of each runtime (no HTTP), interleaved."""
    from medfuse.serve.service import Service

    services = {rt: Service(package, runtime=rt, threads=1) for rt in runtimes}
    any_service = next(iter(services.values()))
    inst = any_service.request_model.model_validate(json.loads(body)).instances
    arrays, masks = any_service.decode(inst)
    batch = {**arrays, "mask": masks}
    times: dict[str, list[float]] = {rt: [] for rt in runtimes}
    for i in range(n + 20):
        for rt, svc in services.items():
            t = time.perf_counter()
            svc.predictor.predict_proba(batch)
            if i >= 20:
                times[rt].append(time.perf_counter() - t)
    return {rt: float(np.median(v)) * 1000 for rt, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", help="an exported package (default: train a BreastMNIST one)")
    ap.add_argument("--data-dir", default=os.environ.get("MEDFUSE_DATA_DIR", "/work/shared/data"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds per backend")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers (both backends)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per worker (both)")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw")
    ap.add_argument("--runtimes", default="onnx,torch")
    ap.add_argument("--mixed", action="store_true", help="good and bad payloads, onnx backend")
    a = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.package:
        package = Path(a.package)
    else:
        package = Path(tempfile.mkdtemp(prefix="medfuse-load-")) / "breastmnist"
        base = [sys.executable, "-m", "medfuse"]
        subprocess.run([*base, "train", "breastmnist", "--out", str(package), "--data-dir",
                        a.data_dir, "--set", "train.epochs=3", "--set", "ensemble=1", "--set", "train.keep=best", "--device", "cpu"],
                       check=True)  # fmt: skip
        subprocess.run([*base, "export", str(package), "--data-dir", a.data_dir], check=True)
    bodies = request_bodies(package, a.data_dir)
    if a.mixed:
        raise SystemExit(run_mixed(package, bodies, a))
    body = bodies[0]
    print(f"package {package}; {a.clients} clients x {a.seconds:.0f} s per backend "
          f"({a.rounds} interleaved rounds); {a.workers} workers x {a.threads} thread(s); "
          f"body {len(body)} bytes; client {a.client}")  # fmt: skip
    runtimes = a.runtimes.split(",")
    model_only = model_latency(package, runtimes, bodies[0])
    print("model only, batch 1, in process: "
          + ", ".join(f"{rt} {ms:.2f} ms" for rt, ms in model_only.items()))  # fmt: skip
    servers = {rt: start(package, rt, a.workers, a.threads) for rt in runtimes}
    tallies = {rt: Tally() for rt in runtimes}
    walls = dict.fromkeys(runtimes, 0.0)
    try:
        for rt in runtimes:  # warm-up, not counted
            asyncio.run(load(servers[rt][1], body, a.clients, a.warmup, a.client))
        # interleaved rounds: on a shared, noisy machine both backends see the same conditions
        for _ in range(a.rounds):
            for rt in runtimes:
                t0 = time.perf_counter()
                part = asyncio.run(
                    load(servers[rt][1], body, a.clients, a.seconds / a.rounds, a.client)
                )
                walls[rt] += time.perf_counter() - t0
                tally = tallies[rt]
                tally.sent += part.sent
                tally.ok += part.ok
                tally.latencies += part.latencies
                for k, v in part.errors.items():
                    tally.errors[k] = tally.errors.get(k, 0) + v
    finally:
        for proc, _ in servers.values():
            stop(proc)
    results: dict[str, dict[str, Any]] = {}
    for rt, tally in tallies.items():
        lat = np.asarray(tally.latencies) * 1000
        errors = sum(tally.errors.values())
        assert tally.sent == tally.ok + errors, "a request is unaccounted for"
        results[rt] = {
            "sent": tally.sent,
            "ok": tally.ok,
            "errors": errors,
            "error_kinds": tally.errors,
            "seconds": walls[rt],
            "rps": tally.ok / walls[rt],
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        }
    print()
    print(f"{'backend':8} {'sent':>7} {'ok':>7} {'errors':>6} {'secs':>5} {'req/s':>8} "
          f"{'p50 ms':>8} {'p99 ms':>8}")  # fmt: skip
    for rt, r in results.items():
        print(f"{rt:8} {r['sent']:7d} {r['ok']:7d} {r['errors']:6d} {r['seconds']:5.0f} "
              f"{r['rps']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}"
              + (f"  {r['error_kinds']}" if r["errors"] else ""))  # fmt: skip
    if "onnx" in results and "torch" in results:
        ratio = results["onnx"]["rps"] / results["torch"]["rps"]
        print(f"\nONNX / torch requests/s: {ratio:.2f}x (target >= 3x)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
