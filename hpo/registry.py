"""A name -> factory registry, so that adding a loss, scheduler, format... is one entry.

A factory's keyword-only parameters (those after ``*``) are its study-file arguments, with their
defaults: validation, ``hpo list`` and the error that lists known names all read them from here.
An entry may carry properties as data (``register("wilcoxon", reports="fold")``), read with
:meth:`Registry.info` instead of comparing names in code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hpo.errors import ConfigError, did_you_mean

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    factory: F
    info: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """Maps names to factories of type ``F``; an unknown name is a ConfigError that lists the
    known ones (and the closest, when one is close).

    ``common``: arguments every entry takes, applied by the code that builds from the registry
    rather than by each factory (a scheduler's warmup); an entry registered with
    ``common=False`` does not take them.
    """

    def __init__(self, kind: str, common: Mapping[str, Any] | None = None) -> None:
        self.kind = kind
        self.common = dict(common or {})
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, **info: Any) -> Callable[[F], F]:
        def add(factory: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, factory, info)
            return factory

        return add

    def entry(self, name: str, key: str | None = None) -> Entry[F]:
        try:
            return self._entries[name]
        except KeyError:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}{did_you_mean(name, self)}; use one of: {', '.join(sorted(self))}"
            ) from None

    def get(self, name: str, key: str | None = None) -> F:
        return self.entry(name, key).factory

    def info(self, name: str) -> Mapping[str, Any]:
        """The properties the entry was registered with."""
        return self.entry(name).info

    def takes_common(self, name: str) -> bool:
        return bool(self.common) and self.info(name).get("common", True)

    def own_arguments(self, name: str) -> dict[str, Any]:
        """The factory's own study-file arguments and their defaults."""
        factory = self.get(name)
        target = factory.__init__ if inspect.isclass(factory) else factory
        params = inspect.signature(target).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def arguments(self, name: str) -> dict[str, Any]:
        """Every study-file argument of an entry and its default (the common ones included)."""
        return {**self.own_arguments(name), **(self.common if self.takes_common(name) else {})}

    def split(self, name: str, args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``args`` as (the factory's own, the common ones with their defaults filled in)."""
        own = {k: v for k, v in args.items() if k not in self.common}
        common = {**self.common, **{k: v for k, v in args.items() if k in self.common}}
        return own, (common if self.takes_common(name) else {})

    def describe(self, name: str) -> str:
        """The first line of the entry's docstring, or ''."""
        return (inspect.getdoc(self.get(name)) or "").split("\n")[0]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
