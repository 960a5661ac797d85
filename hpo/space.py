"""The search space: parsed from the study file's ``search`` section, sampled by a trial.

Each entry is a fixed value or a distribution::

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}      # float (int when low and high are ints)
    batch_size: {choices: [32, 64, 128]}            # categorical
    pretrained: false                               # fixed

Components (optimizer, scheduler, loss, freeze) name registry entries; their arguments exist
only when the entry is chosen, so they are conditional parameters::

    loss: {choose: {cross_entropy: {}, focal: {gamma: {low: 0.5, high: 3.0}}}}
    optimizer: {name: sgd, momentum: 0.9}           # one entry, fixed arguments
    scheduler: cosine                               # one entry, default arguments

Parameter names in Optuna: ``loss``, ``loss.focal.gamma``, ``augment.blur.enabled`` ...
:func:`trial_config` turns a trial (or stored parameters, through ``optuna.trial.FixedTrial``)
into the typed :class:`~hpo.train.config.TrainConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.data.augment import OPS, check_preset, preset_ops
from hpo.data.loader import SAMPLING
from hpo.errors import ConfigError, did_you_mean
from hpo.registry import Registry
from hpo.train.config import AugmentOp, Component, TrainConfig
from hpo.train.losses import CLASS_WEIGHTS, LOSSES
from hpo.train.models import FREEZE, HEADS, check_backbone
from hpo.train.optim import OPTIMIZERS, SCHEDULERS

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
class SearchSpace:
    backbone: Param
    pretrained: Param
    freeze: Choice
    optimizer: Choice
    lr: Param
    weight_decay: Param
    scheduler: Choice
    loss: Choice
    class_weights: Param
    batch_size: Param
    image_size: Param | None
    augment_preset: Param
    augment_ops: Mapping[str, OpSpace]
    mixup: Param
    cutmix: Param
    head: Param
    sampling: Param
    labels: Mapping[str, Param]  # training-label options of the data format (mask: age_boundary)
    accumulate: Param = Fixed(1)  # gradient accumulation: batches per optimizer step


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    kind = raw.get("type", "int" if _is_int(low) and _is_int(high) else "float")
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


def _number(low: float, high: float = float("inf"), integer: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        typed = _is_int(v) if integer else (isinstance(v, (int, float)) and not isinstance(v, bool))
        return typed and low <= v <= high

    return ok


def parse_choice(key: str, raw: Any, registry: Registry) -> Choice:
    if isinstance(raw, str):
        branches = {raw: {}}
    elif isinstance(raw, Mapping) and "choose" in raw:
        if set(raw) != {"choose"}:
            raise ConfigError(f"{key}: 'choose' stands alone; move other keys inside its entries")
        chosen = raw["choose"]
        if isinstance(chosen, list):
            chosen = {name: {} for name in chosen}
        if not isinstance(chosen, Mapping) or not chosen:
            raise ConfigError(f"{key}: choose needs a non-empty list or mapping of {registry.kind} names")
        branches = {name: dict(args or {}) for name, args in chosen.items()}
    elif isinstance(raw, Mapping) and "name" in raw:
        branches = {raw["name"]: {k: v for k, v in raw.items() if k != "name"}}
    else:
        raise ConfigError(
            f"{key}: expected a {registry.kind} name, {{name: .., <args>}} or {{choose: {{..}}}}"
        )
    parsed: dict[str, dict[str, Param]] = {}
    for name, args in branches.items():
        registry.get(name, key)
        known = registry.arguments(name)
        parsed[name] = {}
        for arg, value in args.items():
            if arg not in known:
                allowed = ", ".join(known) or "none"
                raise ConfigError(f"{key}.{name}: unknown argument {arg!r}; allowed: {allowed}")
            default = known[arg]
            param = parse_param(f"{key}.{name}.{arg}", value)
            if isinstance(default, bool):
                check(f"{key}.{name}.{arg}", param, lambda v: isinstance(v, bool), "true or false")
            elif isinstance(default, (int, float)):
                check(
                    f"{key}.{name}.{arg}",
                    param,
                    _number(float("-inf"), integer=_is_int(default)),
                    "an integer" if _is_int(default) else "a number",
                )
            parsed[name][arg] = param
    return Choice(parsed)


def _parse_op(name: str, spec: Any) -> OpSpace:
    """One augmentation op: ``true``/``false``, or {enabled, magnitude, p}, each a value or searched."""
    OPS.get(name, "search.augment.ops")
    spec = spec if isinstance(spec, Mapping) else {"enabled": spec}
    if set(spec) - {"enabled", "magnitude", "p"}:
        raise ConfigError(f"search.augment.ops.{name}: use enabled, magnitude and p only")

    def arg(field: str, default: Any, ok: Callable[[Any], bool], expected: str) -> Param:
        key = f"search.augment.ops.{name}.{field}"
        return check(key, parse_param(key, spec.get(field, default)), ok, expected)

    return OpSpace(enabled=arg("enabled", True, lambda v: isinstance(v, bool), "true or false"),
                   magnitude=arg("magnitude", 0.5, _number(0, 1), "a number in [0, 1]"),
                   p=arg("p", 0.5, _number(0, 1), "a probability"))


def _parse_augment(augment: Any) -> tuple[Param, dict[str, OpSpace]]:
    """``search.augment``: a preset and ops searched one by one."""
    if not isinstance(augment, Mapping) or set(augment) - {"preset", "ops"}:
        raise ConfigError("search.augment: expected {preset: .., ops: {<op>: {enabled, magnitude, p}}}")
    preset = parse_param("search.augment.preset", augment.get("preset", "none"))
    for name in candidates(preset):
        check_preset(name, "search.augment.preset")
    return preset, {name: _parse_op(name, spec) for name, spec in (augment.get("ops") or {}).items()}


def parse_search(raw: Mapping[str, Any]) -> SearchSpace:
    """Validate the ``search`` section; every error names its key."""
    known = {"backbone", "pretrained", "freeze", "optimizer", "lr", "weight_decay", "scheduler", "loss",
             "class_weights", "batch_size", "image_size", "augment", "mixup", "cutmix", "head", "sampling",
             "labels", "accumulate"}
    unknown = set(raw) - known
    if unknown:
        hint = did_you_mean(sorted(unknown)[0], known)
        raise ConfigError(f"search: unknown key(s) {sorted(unknown)}{hint}; known: {', '.join(sorted(known))}")
    if "backbone" not in raw:
        raise ConfigError("search.backbone is required: a timm model name or {choices: [...]}")

    def param(key: str, default: Any) -> Param:
        return parse_param(f"search.{key}", raw.get(key, default))

    backbone = check(
        "search.backbone", param("backbone", None), lambda v: isinstance(v, str), "a timm model name"
    )
    for name in candidates(backbone):
        check_backbone(name)
    pretrained = check(
        "search.pretrained",
        param("pretrained", False),
        lambda v: isinstance(v, (bool, str)),
        "true, false or a weights file path",
    )
    preset, ops = _parse_augment(raw.get("augment", {}) or {})
    image_size = None
    if "image_size" in raw:
        image_size = check(
            "search.image_size", param("image_size", None), _number(8, 4096, True), "an integer in [8, 4096]"
        )
    class_weights = param("class_weights", "none")
    for name in candidates(class_weights):
        CLASS_WEIGHTS.get(name, "search.class_weights")
    head, sampling = param("head", "single"), param("sampling", "uniform")
    for name in candidates(head):
        HEADS.get(name, "search.head")
    for name in candidates(sampling):
        SAMPLING.get(name, "search.sampling")
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ConfigError("search.labels: expected a mapping of training-label options, e.g. {age_boundary: 58}")
    return SearchSpace(
        backbone=backbone,
        pretrained=pretrained,
        freeze=parse_choice("search.freeze", raw.get("freeze", "none"), FREEZE),
        optimizer=parse_choice("search.optimizer", raw.get("optimizer", "adamw"), OPTIMIZERS),
        lr=check("search.lr", param("lr", 1e-3), _number(1e-12, 10), "a learning rate in (0, 10]"),
        weight_decay=check("search.weight_decay", param("weight_decay", 0.0), _number(0, 1), "in [0, 1]"),
        scheduler=parse_choice("search.scheduler", raw.get("scheduler", "constant"), SCHEDULERS),
        loss=parse_choice("search.loss", raw.get("loss", "cross_entropy"), LOSSES),
        class_weights=class_weights,
        batch_size=check(
            "search.batch_size", param("batch_size", 32), _number(1, 65536, True), "a positive integer"
        ),
        image_size=image_size,
        augment_preset=preset,
        augment_ops=ops,
        mixup=check("search.mixup", param("mixup", 0.0), _number(0, 1), "a probability in [0, 1]"),
        cutmix=check("search.cutmix", param("cutmix", 0.0), _number(0, 1), "a probability in [0, 1]"),
        head=head,
        sampling=sampling,
        labels={key: parse_param(f"search.labels.{key}", value) for key, value in labels.items()},
        accumulate=check(
            "search.accumulate", param("accumulate", 1), _number(1, 1024, True), "an integer in [1, 1024]"
        ),
    )


def searched(space: SearchSpace) -> dict[str, Param]:
    """Every Optuna parameter this space can produce (conditional ones included), by name."""
    params: dict[str, Param] = {
        key: getattr(space, key)
        for key in ("backbone", "pretrained", "lr", "weight_decay", "class_weights", "batch_size",
                    "image_size", "mixup", "cutmix", "head", "sampling", "accumulate")
    }
    for key in ("freeze", "optimizer", "scheduler", "loss"):
        choice: Choice = getattr(space, key)
        params[key] = Categorical(tuple(choice.branches)) if len(choice.branches) > 1 else None
        for branch, args in choice.branches.items():
            params |= {f"{key}.{branch}.{arg}": p for arg, p in args.items()}
    params |= {f"labels.{key}": p for key, p in space.labels.items()}
    params["augment.preset"] = space.augment_preset
    for op, spec in space.augment_ops.items():
        params |= {f"augment.{op}.{field}": getattr(spec, field) for field in ("enabled", "magnitude", "p")}
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


def suggest_component(trial: optuna.Trial, name: str, choice: Choice) -> Component:
    branches = list(choice.branches)
    chosen = branches[0] if len(branches) == 1 else trial.suggest_categorical(name, branches)
    args = {arg: suggest(trial, f"{name}.{chosen}.{arg}", p) for arg, p in choice.branches[chosen].items()}
    return Component(chosen, args)


def suggest_augment(trial: optuna.Trial, space: SearchSpace) -> tuple[AugmentOp, ...]:
    ops = preset_ops(suggest(trial, "augment.preset", space.augment_preset))
    for name, op in space.augment_ops.items():
        if suggest(trial, f"augment.{name}.enabled", op.enabled):
            ops[name] = (
                suggest(trial, f"augment.{name}.magnitude", op.magnitude),
                suggest(trial, f"augment.{name}.p", op.p),
            )
        else:
            ops.pop(name, None)
    return tuple(AugmentOp(name, float(m), float(p)) for name, (m, p) in ops.items())


def trial_config(trial: optuna.Trial, spec: Any) -> TrainConfig:
    """The one function that turns a trial's parameters into a training config.

    ``spec`` is a :class:`hpo.config.StudySpec`; pass ``optuna.trial.FixedTrial(params)`` to
    rebuild the config of a stored trial (as ``hpo export`` does).
    """
    space: SearchSpace = spec.search
    return TrainConfig(
        backbone=suggest(trial, "backbone", space.backbone),
        pretrained=suggest(trial, "pretrained", space.pretrained),
        freeze=suggest_component(trial, "freeze", space.freeze),
        optimizer=suggest_component(trial, "optimizer", space.optimizer),
        lr=float(suggest(trial, "lr", space.lr)),
        weight_decay=float(suggest(trial, "weight_decay", space.weight_decay)),
        scheduler=suggest_component(trial, "scheduler", space.scheduler),
        loss=suggest_component(trial, "loss", space.loss),
        class_weights=suggest(trial, "class_weights", space.class_weights),
        batch_size=int(suggest(trial, "batch_size", space.batch_size)),
        image_size=int(suggest(trial, "image_size", space.image_size or Fixed(spec.data.image_size))),
        augment=suggest_augment(trial, space),
        mixup=float(suggest(trial, "mixup", space.mixup)),
        cutmix=float(suggest(trial, "cutmix", space.cutmix)),
        max_epochs=spec.budget.max_epochs,
        patience=spec.budget.patience,
        seed=spec.seed,
        crop=tuple(spec.data.crop) if spec.data.crop else None,
        head=suggest(trial, "head", space.head),
        sampling=suggest(trial, "sampling", space.sampling),
        label_options={key: suggest(trial, f"labels.{key}", p) for key, p in space.labels.items()},
        accumulate=int(suggest(trial, "accumulate", space.accumulate)),
        compile=spec.train.compile,
        augment_on=spec.train.augment_on,
        mean=spec.data.mean,
        std=spec.data.std,
    )
