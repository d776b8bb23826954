"""``medfuse train CONFIG --nproc N ...``: start the workers through ``torch.distributed.run``.

The launcher is torchrun itself, called programmatically (as Lightning's CLI does): each worker
runs ``python -m medfuse train CONFIG ...`` with the same arguments minus the launch flags, finds
its rank in the environment torchrun sets, and trains its share. Running
``torchrun --nproc-per-node N -m medfuse train CONFIG`` by hand is the same thing.

This module imports no torch at import time (the CLI parser imports it).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

log = logging.getLogger("medfuse.distributed")

#: argparse destinations that configure the launcher and are not passed on to the workers
LAUNCH_DESTS = ("nproc", "nnodes", "node_rank", "rdzv_endpoint", "max_restarts")


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--strategy`` and launch flags of ``medfuse train``."""
    g = p.add_argument_group("distributed training (torch.distributed.run)")
    g.add_argument(
        "--strategy",
        help="single | ddp | fsdp | branch | hybrid (overrides train.strategy; default: "
        "the spec's, and ddp when several processes are started)",
    )
    g.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="start N worker processes on this node through torch.distributed.run",
    )
    g.add_argument("--nnodes", type=int, default=1, metavar="M", help="number of nodes (default 1)")
    g.add_argument("--node-rank", type=int, default=0, metavar="R", help="this node's rank")
    g.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="c10d rendezvous endpoint shared by all nodes (needed with --nnodes > 1)",
    )
    g.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="restart the workers up to K times after a failure; they resume from the last "
        "checkpoint (see train.checkpoint_every)",
    )


def launch_requested(args: argparse.Namespace) -> bool:
    return bool(
        getattr(args, "nproc", None) is not None
        or getattr(args, "nnodes", 1) > 1
        or getattr(args, "rdzv_endpoint", None)
    )


def worker_argv(parser: argparse.ArgumentParser, args: argparse.Namespace, verb: str) -> list[str]:
    """Rebuild the command line a worker runs from the parsed arguments, minus the launch flags
    (generic over the verb's arguments, so flags other areas add travel too)."""
    positionals: list[str] = []
    options: list[str] = []
    for act in parser._actions:
        if act.dest in LAUNCH_DESTS or isinstance(act, argparse._HelpAction):
            continue
        val = getattr(args, act.dest, None)
        if not act.option_strings:
            if isinstance(val, list):
                positionals.extend(str(v) for v in val)
            elif val is not None:
                positionals.append(str(val))
            continue
        opt = max(act.option_strings, key=len)
        if isinstance(act, argparse.BooleanOptionalAction):
            if val is not None and val != act.default:
                options.append(opt if val else "--no-" + opt.removeprefix("--"))
        elif isinstance(act, argparse._StoreTrueAction):
            if val:
                options.append(opt)
        elif isinstance(act, argparse._StoreFalseAction):
            if not val:
                options.append(opt)
        elif isinstance(act, argparse._CountAction):
            options.extend([opt] * int(val or 0))
        elif isinstance(act, argparse._AppendAction):
            options.extend(f"{opt}={v}" for v in (val or []) if v not in (act.default or []))
        elif val is not None and val != act.default:
            if isinstance(val, list):
                options.extend([opt, *map(str, val)])
            else:
                options.append(f"{opt}={val}")
    top = ["-v"] if getattr(args, "verbose", False) else []
    return [*top, verb, *positionals, *options]


def torchrun_argv(
    worker: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
    module: str = "medfuse",
) -> list[str]:
    """The ``torchrun`` arguments that start ``python -m <module> <worker...>`` on this node."""
    # lazy: medfuse's heavier layers, off the --help and torch-free paths
    from medfuse.core.errors import MedfuseError

    if nproc < 1:
        raise MedfuseError(f"--nproc must be at least 1; got {nproc}")
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise MedfuseError(f"--node-rank must be in [0, {nnodes}); got {node_rank}")
    if max_restarts < 0:
        raise MedfuseError(f"--max-restarts must be 0 or more; got {max_restarts}")
    out = [f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}"]
    if rdzv_endpoint:
        host, _, port = rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise MedfuseError(f"--rdzv-endpoint must be HOST:PORT; got {rdzv_endpoint!r}")
        out += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
        ]
    elif nnodes > 1:
        raise MedfuseError(
            f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (an address every node can "
            "reach, usually node 0's, and a free port)"
        )
    else:
        out.append("--standalone")
    return [*out, "-m", module, *worker]


def launch(torchrun_args: Sequence[str]) -> int:
    """Run torchrun (in this process, as its agent) and wait for the workers; the exit code."""
    # lazy: torch, not needed by the torch-free paths
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # lazy: torch, not needed by the torch-free paths
    from torch.distributed.run import get_args_parser, run

    log.info("torchrun %s", " ".join(torchrun_args))
    saved = _save_process_state()
    # each attempt's workers get a fresh TCPStore: with the agent's shared store a restarted
    # worker can read the previous attempt's addresses and fail to connect (pytorch#135712)
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    try:
        run(get_args_parser().parse_args(list(torchrun_args)))
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        print(
            f"medfuse: worker rank {rank} failed with exit code {failure.exitcode} "
            "(its error is printed above)",
            file=sys.stderr,
        )
        codes = [f.exitcode for f in err.failures.values()]
        return next((c for c in codes if c and c > 0), 1)
    finally:
        _restore_process_state(saved)
    return 0


_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
_ENV = ("OMP_NUM_THREADS", "TORCHELASTIC_SIGNALS_TO_HANDLE", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")


def _save_process_state() -> tuple[dict[str, Any], dict[str, str | None]]:
    """torchrun's agent installs signal handlers and sets environment variables in the process
    that runs it; a caller of ``medfuse.cli.main`` (a notebook, a test) gets them back after."""
    handlers: dict[str, Any] = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {n: signal.getsignal(getattr(signal, n)) for n in _SIGNALS if hasattr(signal, n)}
    return handlers, {k: os.environ.get(k) for k in _ENV}


def _restore_process_state(saved: tuple[dict[str, Any], dict[str, str | None]]) -> None:
    handlers, env = saved
    for name, handler in handlers.items():
        if handler is not None:
            signal.signal(getattr(signal, name), handler)
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def launch_from_cli(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int | None:
    """When launch flags are present, start the workers and return their exit code; else None
    (this process trains, alone or as a worker torchrun already started)."""
    if not launch_requested(args):
        return None
    # lazy: medfuse's heavier layers, off the --help and torch-free paths
    from medfuse.core.errors import MedfuseError

    if args.nproc is not None and args.nproc < 1:  # before the spec is read, not after
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.core.errors import SpecError

        raise SpecError("--nproc", f"must be at least 1; got {args.nproc}")

    if is_worker():
        raise MedfuseError(
            "this process already is a torchrun worker; drop --nproc/--nnodes/--rdzv-endpoint"
        )
    _check_spec(args)  # a bad spec fails here, once, not in every worker and every restart
    return launch(
        torchrun_argv(
            worker_argv(parser, args, "train"),
            nproc=1 if args.nproc is None else args.nproc,  # --nproc 0 is refused, not 1
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            rdzv_endpoint=args.rdzv_endpoint,
            max_restarts=args.max_restarts,
        )
    )


def _check_spec(args: argparse.Namespace) -> None:
    # lazy: medfuse's heavier layers, off the --help and torch-free paths
    from medfuse.core.spec import load_spec

    # lazy: medfuse's heavier layers, off the --help and torch-free paths
    from medfuse.distributed.strategies import STRATEGIES

    spec = load_spec(args.config, list(getattr(args, "overrides", None) or []))
    name = getattr(args, "strategy", None) or spec.train.strategy
    STRATEGIES.get(name, path="train.strategy" if not args.strategy else "--strategy")
    if name == "branch" and ((args.nproc or 1) > 1 or args.nnodes > 1):
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.core.errors import SpecError

        raise SpecError(
            "train.strategy",
            "'branch' runs in one process; with several processes use 'hybrid' "
            "(ddp across processes + branch placement inside each)",
        )


def is_worker() -> bool:
    """Whether this process is a worker torchrun started (it sets these for each worker)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def die_with_agent() -> None:
    """Have this torchrun worker killed when its parent (the agent: ``medfuse train --nproc N``)
    dies. torchrun starts each worker in a session of its own, so a ``kill -9`` of the launcher
    (or of its process group) left the ranks training, writing checkpoints into the work folder
    a ``--resume`` would then share. Linux (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # lazy: only in a worker

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the agent died before the call: nothing would signal this worker
        os._exit(1)


def exit_worker(code: int) -> NoReturn:
    """End a torchrun worker with ``code`` once its work is done, skipping only the
    interpreter's finalization and the C++ static destructors.

    ``DistributedDataParallel`` keeps its process group alive past ``destroy_process_group``
    (torch 2.13 on gloo: the group's ``pt_gloo_runloop`` and ``gloo_tcp_loop`` threads are still
    running when the worker returns, even after the model is deleted and collected). Those threads
    then race the process's teardown, which now and then aborts the finished worker ("terminate
    called without an active exception", exit -6), and torchrun reports a failed run whose
    package was written. Everything Python registered for exit still runs here (``atexit``:
    logging's flush, temporary directories, multiprocessing's cleanup), the standard streams are
    flushed, then ``os._exit`` ends the process with the leaked threads in it."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed, or its reader went away
                stream.flush()
        os._exit(code)
