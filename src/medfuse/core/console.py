"""What every verb's command line shares: the handler type, the rich console and metric table,
the recorded command line and the ``--data-dir`` option.

It lives in the core so that each application's verb module (``medfuse/<area>/cli.py``) can use
it without importing ``medfuse.cli``, which sits above every application. rich is imported when a
console or table is made, so building a parser stays quick.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

#: what a verb's setup function returns: runs the parsed arguments, returns the exit status
Handler = Callable[[argparse.Namespace], int | None]
#: a verb's setup function: adds the verb's arguments to its parser, returns its handler
Setup = Callable[[argparse.ArgumentParser], Handler]


def console() -> Console:
    """A rich console; pipes and CI logs get a wide one so metric tables are not truncated."""
    from rich.console import Console  # lazy: rich costs ~0.1 s, only verbs that print need it

    c = Console(soft_wrap=True)
    if not c.is_terminal:
        c = Console(soft_wrap=True, width=160)
    return c


def metrics_table(
    title: str, rows: Mapping[str, Mapping[str, Any]], keys: tuple[str, ...]
) -> Table:
    """One row per named metrics dict, one column per key (floats to 4 decimals)."""
    from rich.table import Table  # lazy: as in console()

    t = Table(title=title)
    t.add_column("")
    for k in keys:
        t.add_column(k, justify="right")
    for name, m in rows.items():
        t.add_row(
            name,
            *[f"{m[k]:.4f}" if isinstance(m.get(k), float) else str(m.get(k, "")) for k in keys],
        )
    return t


def command_line() -> str:
    """This invocation as a shell-quoted ``medfuse ...`` line (recorded in packages)."""
    return " ".join(shlex.quote(x) for x in ["medfuse", *sys.argv[1:]])


def data_dir_arg(p: argparse.ArgumentParser) -> None:
    """The ``--data-dir`` option every verb that reads a package's data shares."""
    p.add_argument("--data-dir", help="data root (default: $MEDFUSE_DATA_DIR or ~/.cache/medfuse)")


def overwrite_arg(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: a verb writing a new package may replace one already in its output."""
    p.add_argument(
        "--overwrite", action="store_true", help="replace the package already in the output"
    )


def data_arg(p: argparse.ArgumentParser) -> None:
    """``--data FILE``: the verbs that evaluate a package on its data can be pointed at it again."""
    p.add_argument(
        "--data",
        metavar="FILE",
        help="manifest CSV to use instead of the one the package was trained on (the data moved, "
        "or new data laid out the same way; relative file paths resolve against its folder)",
    )


def device_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """The ``--device`` option of the verbs that run a torch model."""
    p.add_argument(
        "--device", default=default, help=f"auto | cpu | cuda | cuda:N (default {default})"
    )


#: exit status when the reader of stdout went away (128 + SIGPIPE, as a shell reports it)
BROKEN_PIPE = 141


def bounded(
    cast: Callable[[str], float],
    low: float,
    high: float,
    *,
    what: str,
    open_low: bool = False,
    open_high: bool = False,
) -> Callable[[str], Any]:
    """An argparse ``type``: ``cast(text)`` within [low, high] (each end excluded with
    ``open_low`` / ``open_high``); else an error that says what was given and what is allowed
    (NaN and infinities are never in range)."""

    def parse(text: str) -> Any:
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None
        if not ((v > low if open_low else v >= low) and (v < high if open_high else v <= high)):
            raise argparse.ArgumentTypeError(f"expected {what}; got {text}")
        return v

    return parse


#: argparse types shared by the verbs
positive_int = bounded(int, 1, float("inf"), what="a positive integer", open_high=True)
fraction = bounded(float, 0.0, 1.0, what="a number in (0, 1)", open_low=True, open_high=True)
port = bounded(int, 1, 65535, what="a port number in 1..65535")
size_mb = bounded(
    float, 0.0, 1 << 20, what="a size in MiB, > 0 and below 1 TiB", open_low=True, open_high=True
)


def broken_pipe() -> int:
    """After a BrokenPipeError (``medfuse models | head``): point stdout at /dev/null, so that
    Python's final flush does not fail again, and return ``BROKEN_PIPE``."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return BROKEN_PIPE
