"""One parameter of the search space: a fixed value, a set of choices or a range, parsed from
the study file, checked, and sampled by a trial. A scalar in the study file is fixed, a mapping
with ``choices`` categorical, one with ``low``/``high`` a range (int when both are ints)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.errors import ConfigError

Scalar = None | bool | int | float | str


@dataclass(frozen=True)
class Fixed:
    value: Any


@dataclass(frozen=True)
class Categorical:
    choices: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False


Param = Fixed | Categorical | Range


def parse_param(key: str, raw: Any) -> Param:
    if isinstance(raw, Mapping):
        if "choices" in raw:
            extra = set(raw) - {"choices"}
            choices = raw["choices"]
            if extra:
                raise ConfigError(f"{key}: unexpected {sorted(extra)} beside choices; remove them")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{key}: choices must be a non-empty list, e.g. choices: [a, b]")
            if any(isinstance(c, (list, dict)) for c in choices):
                raise ConfigError(f"{key}: choices must be plain values (numbers, strings, booleans)")
            return Categorical(tuple(choices))
        if "low" in raw or "high" in raw:
            return _parse_range(key, raw)
        raise ConfigError(
            f"{key}: expected a value, {{choices: [...]}} or {{low: .., high: ..}}, got {dict(raw)}"
        )
    if isinstance(raw, list):
        raise ConfigError(f"{key}: a list is not a distribution; write {{choices: {raw}}}")
    return Fixed(raw)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_range(key: str, raw: Mapping) -> Range:
    extra = set(raw) - {"low", "high", "log", "step", "type"}
    if extra:
        raise ConfigError(f"{key}: unknown range field(s) {sorted(extra)}; use low, high, log, step, type")
    if "low" not in raw or "high" not in raw:
        raise ConfigError(f"{key}: a range needs both low and high")
    low, high = raw["low"], raw["high"]
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise ConfigError(f"{key}: low and high must be numbers, got {bound!r}")
    kind = raw.get("type", "int" if is_int(low) and is_int(high) else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"{key}: type must be int or float, got {kind!r}")
    if low > high:
        raise ConfigError(f"{key}: inverted range, low {low} > high {high}; swap them")
    if low == high:
        raise ConfigError(f"{key}: empty range, low == high == {low}; write the fixed value {low} instead")
    log = bool(raw.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{key}: a log range needs low > 0, got {low}; raise low or drop log")
    step = raw.get("step")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0 or log):
        raise ConfigError(f"{key}: step must be a positive number, and cannot be used with log")
    return Range(low, high, log, step, kind == "int")


def candidates(param: Param) -> list[Any]:
    """The values a check must accept: the fixed value, every choice, or both range ends."""
    if isinstance(param, Fixed):
        return [param.value]
    if isinstance(param, Categorical):
        return list(param.choices)
    return [param.low, param.high]


def check(key: str, param: Param, ok: Callable[[Any], bool], expected: str) -> Param:
    for value in candidates(param):
        if not ok(value):
            raise ConfigError(f"{key}: {value!r} is not {expected}; fix the value or its range")
    return param


def suggest(trial: optuna.Trial, name: str, param: Param) -> Any:
    if isinstance(param, Fixed):
        return param.value
    if isinstance(param, Categorical):
        return trial.suggest_categorical(name, list(param.choices))
    if param.integer:
        return trial.suggest_int(
            name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log
        )
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)
