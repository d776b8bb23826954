"""Errors medfuse raises on purpose: each says what was wrong, where, and what is allowed.

Exit codes of ``medfuse <verb>`` and ``python -m medfuse.runtime``: 0 success; 1 a failure that
is not the input's (``MedfuseError``: a verification that fails, a device that is not there);
2 a usage or spec error (``SpecError``, argparse, a missing extra); 3 the input data
(``DataError``); 4 the model package (``PackageError``); 130 interrupted; 141 stdout closed
by its reader (``medfuse models | head``); ``INTERNAL_ERROR``
(70) an unexpected exception: a defect in medfuse, reported on one line with the hint to rerun
with ``-v`` for the traceback. Every failure a user's input can cause is one of 1-4.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable
from typing import Any


class MedfuseError(Exception):
    """Base class; the CLI prints the message and exits with ``exit_code``."""

    exit_code = 1


class SpecError(MedfuseError, ValueError):
    """A spec (config) value is invalid. ``path`` is the dotted field path."""

    exit_code = 2

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"spec error at '{path}': {message}" if path else f"spec error: {message}")


class DataError(MedfuseError):
    """Input data is missing or malformed (names the file, row or field)."""

    exit_code = 3


class PackageError(MedfuseError):
    """A model package is incomplete, tampered with or inconsistent."""

    exit_code = 4


def csv_rows(index: Iterable[Any], limit: int = 5) -> str:
    """'rows 2, 4, 7 and 3 more': 0-based data rows as a CSV's line numbers (the header is 1)."""
    rows = [int(i) for i in index]
    shown = ", ".join(str(r + 2) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """' did you mean 'x'?' when a close match exists, else ''."""
    match = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def not_allowed(what: str, value: object, allowed: Iterable[str]) -> str:
    """The one message template for a value outside an allowed set."""
    allowed = sorted(allowed)
    return (
        f"unknown {what} {value!r}{did_you_mean(str(value), allowed)} Allowed: {', '.join(allowed)}"
    )


#: exit status of an unexpected exception (sysexits' EX_SOFTWARE): a defect, not the input's
INTERNAL_ERROR = 70


def refuse_duplicate_columns(where: str, columns: Iterable[Any]) -> None:
    """A table whose header names a column twice is refused: readers disagree on which one a
    name means (pandas, training's, reads the first; a CSV row dict the last), so the same file
    was scored on two different columns by two verbs."""
    counts = Counter(map(str, columns))
    twice = [c for c, n in counts.items() if n > 1]
    if twice:
        raise DataError(
            f"{where}: the header names column(s) {', '.join(map(repr, twice))} "
            "more than once; which one is meant is ambiguous: rename or drop the duplicates"
        )


def one_line(err: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(err).split())


def internal_error(prog: str, err: BaseException, rerun: str) -> str:
    """The one-line report of an unexpected exception (never a traceback unless asked for):
    ``rerun`` says how to get the traceback (e.g. ``medfuse -v predict ...``)."""
    return (
        f"{prog}: internal error: {type(err).__name__}: {one_line(err)}\n"
        f"{prog}: this is a defect in medfuse, not a problem with your input; rerun with "
        f"{rerun} for the traceback and report it"
    )
