"""The tracker base class, its registry, and how the study file's ``tracking:`` becomes
trackers (see hpo.tracking)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError, did_you_mean
from hpo.registry import Registry

if TYPE_CHECKING:
    from hpo.train.config import TrainConfig
    from hpo.train.results import EpochResult, FoldResult


class Tracker:
    """Base class: every hook is optional. ``trial`` is the Optuna trial number."""

    def trial_started(self, trial: int, params: dict[str, Any], config: TrainConfig) -> None:
        pass

    def epoch(self, trial: int, result: EpochResult) -> None:
        pass

    def fold_ended(self, trial: int, result: FoldResult, patience: int | None) -> None:
        pass

    def trial_ended(self, trial: int, state: str, value: float | None, reason: str | None) -> None:
        pass


TrackerFactory = Callable[..., Tracker]
TRACKERS: Registry[TrackerFactory] = Registry("tracker")


def tracker_arguments(name: str, value: Any) -> dict[str, Any] | None:
    """A study file's ``tracking.<name>`` value as the entry's arguments: a mapping as it is, a
    scalar as the first argument, true as the defaults; None (off) for null and false."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    first = next(iter(TRACKERS.arguments(name)), None)
    if first is None:
        raise ConfigError(f"tracking.{name}: takes no arguments; write {name}: true")
    return {first: value}


def check_tracking(tracking: Mapping[str, Mapping[str, Any]]) -> None:
    """Every tracker a study file names exists, with arguments it takes."""
    for name, args in tracking.items():
        if name not in TRACKERS:
            raise ConfigError(f"tracking.{name}: unknown key{did_you_mean(name, TRACKERS)}; use one of:"
                              f" {', '.join(TRACKERS)}")
        known = TRACKERS.arguments(name)
        if unknown := sorted(set(args) - set(known)):
            raise ConfigError(f"tracking.{name}: unknown argument(s) {unknown}; it takes: {', '.join(known) or 'none'}")


def build_trackers(spec: Any) -> list[Tracker]:
    """The trackers a study file asks for (``tracking:``), each by its registry entry."""
    return [TRACKERS.get(name, f"tracking.{name}")(spec.name, **args) for name, args in spec.tracking.items()]
