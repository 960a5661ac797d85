"""A name -> factory registry, so that adding a loss, scheduler, format... is one entry."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from hpo.errors import ConfigError, did_you_mean

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Maps names to factories; an unknown name is a ConfigError that lists the known ones.

    Each factory's keyword-only parameters (those after ``*``) are its study-file arguments, with
    their defaults; the positional ones are supplied by hpo at build time.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def add(factory: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return add

    def get(self, name: str, key: str | None = None) -> F:
        try:
            return self._entries[name]
        except KeyError:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}{did_you_mean(name, self)}; use one of: {', '.join(sorted(self))}"
            ) from None

    def arguments(self, name: str) -> dict[str, Any]:
        """The study-file arguments of an entry and their defaults."""
        params = inspect.signature(self.get(name)).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
