"""The search space: the study file's ``search`` section, parsed into typed parameters, and
sampled by a trial.

Each entry is a fixed value or a distribution::

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}      # float (int when low and high are ints)
    batch_size: {choices: [32, 64, 128]}            # categorical
    pretrained: false                               # fixed

Components (optimizer, scheduler, loss, freeze) name registry entries; their arguments exist
only when the entry is chosen, so they are conditional parameters::

    loss: {choose: {cross_entropy: {}, focal: {gamma: {low: 0.5, high: 3.0}}}}
    optimizer: {name: sgd, momentum: 0.9}           # one entry, fixed arguments
    scheduler: cosine                               # one entry, default arguments

What the section may hold is derived from :class:`~hpo.train.config.TrainConfig`: every field
declared with ``knob`` is a key, with its default, its accepted values and its registry. Parsing
runs twice: first the section's shape (keys, ranges, types) without importing any registry, so
a typo is reported at once; then every name against its registry (backbones, losses...).

Parameter names in Optuna: ``loss``, ``loss.focal.gamma``, ``augment.blur.enabled`` ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.data.ops import AugmentOp, check_preset, preset_ops
from hpo.errors import ConfigError, did_you_mean
from hpo.params import (  # noqa: F401 - Categorical and parse_param re-exported
    Categorical,
    Fixed,
    Param,
    Range,
    candidates,
    check,
    is_int,
    parse_param,
    suggest,
)
from hpo.train.config import Component, Knob, knobs, number


@dataclass(frozen=True)
class Choice:
    """A component: one or more registry entries, each with its own (possibly searched) arguments."""

    branches: Mapping[str, Mapping[str, Param]]


@dataclass(frozen=True)
class OpSpace:
    enabled: Param
    magnitude: Param
    p: Param


@dataclass(frozen=True)
class AugmentSpace:
    preset: Param
    ops: Mapping[str, OpSpace]


@dataclass(frozen=True)
class SearchSpace:
    """The parsed ``search`` section, by the study file's keys (``space.lr``, ``space.loss``,
    ``space.labels``...): a Param, a Choice, an AugmentSpace or (labels) a mapping of Params.
    ``space.image_size`` is None when the study takes ``data.image_size``."""

    entries: Mapping[str, Any]

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["entries"][key]
        except KeyError:
            raise AttributeError(key) from None


def search_key(f: Any) -> str:
    return f.metadata["knob"].key or f.name


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def resolve(path: str) -> Any:
    """``"module:attribute"`` -> the attribute, importing the module (a registry's, say) now."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def check_name(path: str, name: Any, key: str) -> None:
    """``name`` is one that ``path`` (a Registry, or a check(name, key) function) knows."""
    names = resolve(path)
    if hasattr(names, "get") and hasattr(names, "arguments"):
        names.get(name, key)
    else:
        names(name, key)


def parse_choice(key: str, raw: Any, registry: str, names: bool = True) -> Choice:
    """A component's entries and arguments; with ``names``, checked against ``registry``."""
    kind = key.rsplit(".", 1)[-1]
    if isinstance(raw, str):
        branches = {raw: {}}
    elif isinstance(raw, Mapping) and "choose" in raw:
        if set(raw) != {"choose"}:
            raise ConfigError(f"{key}: 'choose' stands alone; move other keys inside its entries")
        chosen = raw["choose"]
        if isinstance(chosen, list):
            chosen = {name: {} for name in chosen}
        if not isinstance(chosen, Mapping) or not chosen:
            raise ConfigError(f"{key}: choose needs a non-empty list or mapping of {kind} names")
        branches = {name: dict(args or {}) for name, args in chosen.items()}
    elif isinstance(raw, Mapping) and "name" in raw:
        branches = {raw["name"]: {k: v for k, v in raw.items() if k != "name"}}
    else:
        raise ConfigError(
            f"{key}: expected a {kind} name, {{name: .., <args>}} or {{choose: {{..}}}}"
        )
    parsed: dict[str, dict[str, Param]] = {}
    for name, args in branches.items():
        parsed[name] = {arg: parse_param(f"{key}.{name}.{arg}", value) for arg, value in args.items()}
        if names:
            _check_arguments(key, name, parsed[name], resolve(registry))
    return Choice(parsed)


def _check_arguments(key: str, name: str, args: Mapping[str, Param], registry: Any) -> None:
    registry.get(name, key)
    known = registry.arguments(name)
    for arg, param in args.items():
        if arg not in known:
            allowed = ", ".join(known) or "none"
            raise ConfigError(f"{key}.{name}: unknown argument {arg!r}; allowed: {allowed}")
        default, where = known[arg], f"{key}.{name}.{arg}"
        if isinstance(default, bool):
            check(where, param, lambda v: isinstance(v, bool), "true or false")
        elif isinstance(default, (int, float)):
            check(where, param, number(float("-inf"), integer=is_int(default)),
                  "an integer" if is_int(default) else "a number")


def _parse_op(name: str, spec: Any, names: bool) -> OpSpace:
    """One augmentation op: ``true``/``false``, or {enabled, magnitude, p}, each a value or searched."""
    if names:
        check_name("hpo.data.augment:OPS", name, "search.augment.ops")
    spec = spec if isinstance(spec, Mapping) else {"enabled": spec}
    if set(spec) - {"enabled", "magnitude", "p"}:
        raise ConfigError(f"search.augment.ops.{name}: use enabled, magnitude and p only")

    def arg(field: str, default: Any, ok: Callable[[Any], bool], expected: str) -> Param:
        key = f"search.augment.ops.{name}.{field}"
        return check(key, parse_param(key, spec.get(field, default)), ok, expected)

    return OpSpace(enabled=arg("enabled", True, lambda v: isinstance(v, bool), "true or false"),
                   magnitude=arg("magnitude", 0.5, number(0, 1), "a number in [0, 1]"),
                   p=arg("p", 0.5, number(0, 1), "a probability"))


def _parse_augment(key: str, augment: Any, names: bool) -> AugmentSpace:
    """``search.augment``: a preset and ops searched one by one."""
    augment = augment or {}
    if not isinstance(augment, Mapping) or set(augment) - {"preset", "ops"}:
        raise ConfigError(f"{key}: expected {{preset: .., ops: {{<op>: {{enabled, magnitude, p}}}}}}")
    preset = parse_param(f"{key}.preset", augment.get("preset", "none"))
    for name in candidates(preset):
        check_preset(name, f"{key}.preset")
    return AugmentSpace(preset, {name: _parse_op(name, spec, names) for name, spec in (augment.get("ops") or {}).items()})


def _parse_labels(key: str, labels: Any) -> dict[str, Param]:
    labels = labels or {}
    if not isinstance(labels, Mapping):
        raise ConfigError(f"{key}: expected a mapping of training-label options, e.g. {{age_boundary: 58}}")
    return {option: parse_param(f"{key}.{option}", value) for option, value in labels.items()}


def _parse_value(key: str, raw: Any, spec: Knob, names: bool) -> Param:
    param = parse_param(key, raw)
    if spec.accepts is not None:
        check(key, param, spec.accepts, spec.expected)
    if names and spec.names is not None:
        for name in candidates(param):
            check_name(spec.names, name, key)
    return param


def parse_search(raw: Mapping[str, Any], names: bool = True) -> SearchSpace:
    """Validate the ``search`` section; every error names its key. Without ``names``, only its
    shape: no registry is imported (the study file's first check, before torch and timm load)."""
    fields = knobs()
    known = [search_key(f) for f in fields]
    unknown = set(raw) - set(known)
    if unknown:
        hint = did_you_mean(sorted(unknown)[0], known)
        raise ConfigError(f"search: unknown key(s) {sorted(unknown)}{hint}; known: {', '.join(sorted(known))}")
    entries: dict[str, Any] = {}
    for f in fields:
        spec: Knob = f.metadata["knob"]
        name, key = search_key(f), f"search.{search_key(f)}"
        if name not in raw and spec.default_from:
            entries[name] = None  # the study file's other key gives it (data.image_size)
            continue
        if name not in raw and spec.required_hint:
            raise ConfigError(f"{key} is required: {spec.required_hint}")
        value = raw.get(name, spec.default)
        if spec.kind == "component":
            entries[name] = parse_choice(key, value, spec.names or "", names)
        elif spec.kind == "augment":
            entries[name] = _parse_augment(key, value, names)
        elif spec.kind == "labels":
            entries[name] = _parse_labels(key, value)
        else:
            entries[name] = _parse_value(key, value, spec, names)
    return SearchSpace(entries)


def _parts(space: SearchSpace) -> Iterator[tuple[str, Knob, Any]]:
    """(study-file key, knob, parsed entry) of every field, in sampling order."""
    for f in knobs():
        yield search_key(f), f.metadata["knob"], space.entries[search_key(f)]


def searched(space: SearchSpace) -> dict[str, Param]:
    """Every Optuna parameter this space can produce (conditional ones included), by name."""
    params: dict[str, Any] = {}
    for name, spec, entry in _parts(space):
        if spec.kind == "component":
            params[name] = Categorical(tuple(entry.branches)) if len(entry.branches) > 1 else None
            for branch, args in entry.branches.items():
                params |= {f"{name}.{branch}.{arg}": p for arg, p in args.items()}
        elif spec.kind == "labels":
            params |= {f"{name}.{option}": p for option, p in entry.items()}
        elif spec.kind == "augment":
            params[f"{name}.preset"] = entry.preset
            for op, ranges in entry.ops.items():
                params |= {f"{name}.{op}.{field}": getattr(ranges, field) for field in ("enabled", "magnitude", "p")}
        else:
            params[name] = entry
    return {name: p for name, p in params.items() if isinstance(p, (Categorical, Range))}


def check_params(space: SearchSpace, params: Mapping[str, Any], where: str) -> None:
    """Parameters given by hand (seed trials, hpo enqueue) must be values the space can sample."""
    known = searched(space)
    unknown = set(params) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {sorted(unknown)}; searched parameters: {', '.join(sorted(known))}")
    for name, value in params.items():
        param = known[name]
        if isinstance(param, Categorical) and value not in param.choices:
            raise ConfigError(f"{where}: {name}={value!r} is not one of its choices {list(param.choices)}")
        if isinstance(param, Range) and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and param.low <= value <= param.high
        ):
            raise ConfigError(f"{where}: {name}={value!r} is outside its range [{param.low}, {param.high}]")


# ---------------------------------------------------------------------------------------------
# Sampling


def suggest_component(trial: optuna.Trial, name: str, choice: Choice) -> Component:
    branches = list(choice.branches)
    chosen = branches[0] if len(branches) == 1 else trial.suggest_categorical(name, branches)
    args = {arg: suggest(trial, f"{name}.{chosen}.{arg}", p) for arg, p in choice.branches[chosen].items()}
    return Component(chosen, args)


def suggest_augment(trial: optuna.Trial, name: str, space: AugmentSpace) -> tuple[AugmentOp, ...]:
    ops = preset_ops(suggest(trial, f"{name}.preset", space.preset))
    for op, ranges in space.ops.items():
        if suggest(trial, f"{name}.{op}.enabled", ranges.enabled):
            ops[op] = (suggest(trial, f"{name}.{op}.magnitude", ranges.magnitude),
                       suggest(trial, f"{name}.{op}.p", ranges.p))
        else:
            ops.pop(op, None)
    return tuple(AugmentOp(op, float(m), float(p)) for op, (m, p) in ops.items())


# How a sampled value becomes the field's type (the study file may write 1 for a float).
CASTS: dict[str, Callable[[Any], Any]] = {"float": float, "int": int}


def sample(trial: optuna.Trial, space: SearchSpace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Every searchable field's value for ``trial``, by field name. ``defaults``: the value of each
    ``default_from`` key the study file gives elsewhere (``{"data.image_size": 64}``)."""
    values: dict[str, Any] = {}
    for f in knobs():
        name, spec, entry = search_key(f), f.metadata["knob"], space.entries[search_key(f)]
        if spec.kind == "component":
            values[f.name] = suggest_component(trial, name, entry)
        elif spec.kind == "augment":
            values[f.name] = suggest_augment(trial, name, entry)
        elif spec.kind == "labels":
            values[f.name] = {option: suggest(trial, f"{name}.{option}", p) for option, p in entry.items()}
        else:
            param = entry if entry is not None else Fixed(defaults[spec.default_from or ""])
            values[f.name] = CASTS.get(str(f.type), lambda v: v)(suggest(trial, name, param))
    return values


__all__ = ["Categorical", "Choice", "Fixed", "Param", "Range", "SearchSpace", "candidates",
           "check_params", "parse_search", "sample", "searched"]
