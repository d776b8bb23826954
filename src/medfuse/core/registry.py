"""One small Registry class; one instance per family (branches, fusions, datasets, ...)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from medfuse.core.errors import SpecError, did_you_mean, not_allowed

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Name -> builder. Registering a name twice is an error (as in torchvision)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}
        self._examples: dict[str, dict[str, Any] | Callable[[], dict[str, Any]]] = {}
        self._requires: dict[str, tuple[str, ...]] = {}
        self._variants: dict[str, dict[str, dict[str, Any] | Callable[[], dict[str, Any]]]] = {}

    def register(
        self,
        name: str,
        *,
        doc: str | None = None,
        example: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        requires: tuple[str, ...] = (),
        variants: dict[str, dict[str, Any] | Callable[[], dict[str, Any]]] | None = None,
    ) -> Callable[[T], T]:
        """``example``: small parameters that build it (what the test sweeps use, for builders
        whose defaults are large or that need a parameter), or a function making them (e.g. a
        tiny model directory written on first use); ``requires``: optional top-level
        modules it imports when built (the sweeps skip it, naming the extra, where one is
        missing); ``variants``: other uses of the same builder by the modality kind they
        take (``hf``: an image model, and a text model on ``text``), each with its example, so
        that the sweeps cover every use."""

        def deco(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.family} {name!r} is already registered")
            self._items[name] = fn
            self._docs[name] = doc or (inspect.getdoc(fn) or "").split("\n")[0]
            self._examples[name] = example or {}
            self._requires[name] = tuple(requires)
            self._variants[name] = dict(variants or {})
            return fn

        return deco

    def example(self, name: str) -> dict[str, Any]:
        """Small parameters that build ``name`` (empty: its defaults do)."""
        self.get(name)
        ex = self._examples.get(name) or {}
        return dict(ex() if callable(ex) else ex)

    def variants(self, name: str) -> dict[str, dict[str, Any]]:
        """``{modality kind: example parameters}`` of ``name``'s other uses (``register``)."""
        self.get(name)
        return {k: dict(v() if callable(v) else v) for k, v in self._variants[name].items()}

    def variant_kinds(self, name: str) -> list[str]:
        """The modality kinds of ``name``'s variants, without building their examples."""
        self.get(name)
        return list(self._variants[name])

    def requires(self, name: str) -> tuple[str, ...]:
        """Optional modules building ``name`` imports."""
        self.get(name)
        return self._requires.get(name, ())

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str, *, path: str = "") -> T:
        if name not in self._items:
            raise SpecError(path, not_allowed(self.family, name, self._items))
        return self._items[name]

    def doc(self, name: str) -> str:
        return self._docs[name]

    def params(self, name: str, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """Keyword parameters a builder accepts, with their defaults (for `medfuse models`)."""
        sig = inspect.signature(self.get(name))
        out: dict[str, Any] = {}
        for p in sig.parameters.values():
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in skip:
                continue
            out[p.name] = None if p.default is inspect.Parameter.empty else p.default
        return out

    def _choices(self, name: str) -> dict[str, tuple[Any, ...]]:
        """The keyword parameters annotated ``Literal[...]``, with their allowed values."""
        hints = typing.get_type_hints(self._items[name])
        return {k: typing.get_args(h) for k, h in hints.items() if typing.get_origin(h) is Literal}

    def check_params(
        self, name: str, params: dict[str, Any], *, path: str, skip: tuple[str, ...] = ()
    ) -> None:
        """Unknown or ill-typed keyword parameters become a SpecError naming the field path."""
        sig = inspect.signature(self.get(name, path=f"{path}.type"))
        allowed = {
            p.name: p
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in skip
        }
        choices = self._choices(name)
        for key, value in params.items():
            if key not in allowed:
                raise SpecError(
                    f"{path}.{key}",
                    f"{self.family} {name!r} has no parameter {key!r}{did_you_mean(key, allowed)} "
                    f"Allowed: {', '.join(sorted(allowed)) or '(none)'}",
                )
            if key in choices:
                if value not in choices[key]:
                    raise SpecError(f"{path}.{key}", not_allowed(key, value, choices[key]))
                continue
            default = allowed[key].default
            if default is inspect.Parameter.empty or default is None or value is None:
                continue
            ok = isinstance(value, type(default)) or (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            )
            if isinstance(default, bool) != isinstance(value, bool):
                ok = False
            if isinstance(default, tuple | list) and isinstance(value, tuple | list):
                ok = True
            if not ok:
                raise SpecError(
                    f"{path}.{key}",
                    f"must be of type {type(default).__name__}; got {value!r} "
                    f"({type(value).__name__}) instead",
                )
        missing = [
            n
            for n, p in allowed.items()
            if p.default is inspect.Parameter.empty and n not in params
        ]
        if missing:
            raise SpecError(f"{path}.{missing[0]}", f"required parameter of {self.family} {name!r}")
