"""A torchrun worker ends through ``exit_worker``: its exit code, its buffered output and its
``atexit`` work kept, the interpreter's finalization skipped (where torch's leaked gloo threads
race the teardown; see ``medfuse.distributed.launch.exit_worker``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = """
import atexit, os, sys
from pathlib import Path
from medfuse.distributed.launch import exit_worker

class Finalized:
    def __init__(self):  # builtins are gone by the time __del__ runs: keep what it needs
        self.fd = os.open(Path(sys.argv[1], "finalized"), os.O_WRONLY | os.O_CREAT)
        self.write = os.write

    def __del__(self):
        self.write(self.fd, b"yes")

kept = Finalized()  # a module global: collected only by the interpreter's finalization
atexit.register(lambda: Path(sys.argv[1], "atexit").write_text("yes"))
sys.stdout.write("no newline, still in the buffer")
exit_worker(3)
"""


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_exit_worker_keeps_code_output_and_atexit_but_skips_finalization(tmp_path: Path) -> None:
    done = _run(["-c", WORKER, str(tmp_path)])
    assert done.returncode == 3, done.stderr
    assert done.stdout == "no newline, still in the buffer"
    assert (tmp_path / "atexit").read_text() == "yes"
    assert (tmp_path / "finalized").read_text() == ""  # no finalization ran


def test_python_m_medfuse_ends_a_worker_through_exit_worker(tmp_path: Path) -> None:
    """The same verb's output and exit code as a worker (LOCAL_RANK set) and as a plain process;
    a usage error's exit code passes through."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")}
    plain = subprocess.run(
        [sys.executable, "-m", "medfuse", "models"], env=env, capture_output=True, text=True
    )
    worker = _run(["-m", "medfuse", "models"], LOCAL_RANK="0")
    assert plain.returncode == worker.returncode == 0
    assert worker.stdout == plain.stdout and "cnn" in worker.stdout
    bad = _run(["-m", "medfuse", "no-such-verb"], LOCAL_RANK="0")
    assert bad.returncode == 2 and "no-such-verb" in bad.stderr
