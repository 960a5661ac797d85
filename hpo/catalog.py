"""Every registry hpo builds from, for `hpo list`: what each extension point holds, with the
arguments and defaults each entry takes, read from the same registry the study file is
validated against."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from hpo.errors import ConfigError, did_you_mean
from hpo.registry import Registry

# kind -> (where the registry lives, the study-file key that names its entries)
REGISTRIES: dict[str, tuple[str, str]] = {
    "formats": ("hpo.data.formats:FORMATS", "data.format"),
    "augmentations": ("hpo.data.augment:OPS", "search.augment.ops"),
    "sampling": ("hpo.data.sampling:SAMPLING", "search.sampling"),
    "losses": ("hpo.train.losses:LOSSES", "search.loss"),
    "class-weights": ("hpo.train.losses:CLASS_WEIGHTS", "search.class_weights"),
    "optimizers": ("hpo.train.optim:OPTIMIZERS", "search.optimizer"),
    "schedulers": ("hpo.train.optim:SCHEDULERS", "search.scheduler"),
    "heads": ("hpo.train.models:HEADS", "search.head"),
    "freeze": ("hpo.train.models:FREEZE", "search.freeze"),
    "samplers": ("hpo.strategy:SAMPLERS", "sampler.type"),
    "pruners": ("hpo.strategy:PRUNERS", "pruner.type"),
    "trackers": ("hpo.tracking:TRACKERS", "tracking"),
    "storages": ("hpo.storage:STORAGES", "--storage (the URL's scheme)"),
}


@dataclass(frozen=True)
class Listed:
    name: str
    arguments: dict[str, Any]  # study-file arguments and their defaults, the common ones included
    description: str
    info: dict[str, Any]


def registry(kind: str) -> Registry:
    if kind not in REGISTRIES:
        raise ConfigError(f"hpo list: unknown kind {kind!r}{did_you_mean(kind, REGISTRIES)}; use one of: {', '.join(REGISTRIES)}")
    module, _, name = REGISTRIES[kind][0].partition(":")
    return getattr(importlib.import_module(module), name)


def listing(kind: str) -> list[Listed]:
    entries = registry(kind)
    return [Listed(name, entries.arguments(name), entries.describe(name), dict(entries.info(name)))
            for name in sorted(entries)]


def render(kind: str) -> str:
    """The kind's entries as text: name, arguments with their defaults, what it does."""
    key = REGISTRIES[kind][1]
    lines = [f"{kind} ({key})"]
    for item in listing(kind):
        arguments = ", ".join(f"{arg}={default!r}" for arg, default in item.arguments.items())
        lines.append(f"  {item.name:<20} {item.description}")
        if arguments:
            lines.append(f"  {'':<20} arguments: {arguments}")
        if properties := ", ".join(f"{key}={value}" for key, value in item.info.items() if key != "common"):
            lines.append(f"  {'':<20} properties: {properties}")
    return "\n".join(lines)


def render_all(kind: str | None = None) -> str:
    kinds = [kind] if kind else list(REGISTRIES)
    for name in kinds:
        registry(name)  # an unknown kind fails before anything is printed
    return "\n\n".join(render(name) for name in kinds)
