"""Errors medfuse raises on purpose: each says what was wrong, where, and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
