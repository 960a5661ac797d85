"""The tracker base class, its registry, and how the study file's ``tracking:`` becomes
trackers (see hpo.tracking).

A tracker only watches: :func:`build_trackers` wraps each one in a :class:`GuardedTracker`, so a
tracker that fails (its server down, its disk full) costs its own record, never the trial.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import socket
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError, did_you_mean, first_line
from hpo.registry import Registry

if TYPE_CHECKING:
    from hpo.train.config import TrainConfig
    from hpo.train.results import EpochResult, FoldResult

log = logging.getLogger(__name__)


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
# An entry registered with ``extra="mlflow"`` needs that package (pip install -e ".[mlflow]");
# with ``choices={"mode": (...)}``, those are the argument's only values.
TRACKERS: Registry[TrackerFactory] = Registry("tracker")


class GuardedTracker(Tracker):
    """A tracker whose hooks cannot fail the trial: the first exception is logged once, as a
    warning naming the tracker, and the tracker is off for the rest of this process (a server
    that is down would otherwise cost a warning and its retries on every epoch)."""

    def __init__(self, name: str, tracker: Tracker) -> None:
        self.name, self.tracker = name, tracker
        self.failed: BaseException | None = None

    def _call(self, hook: str, *args: Any) -> None:
        if self.failed is not None:
            return
        try:
            getattr(self.tracker, hook)(*args)
        except Exception as e:  # noqa: BLE001 - any failure of a tracker is the tracker's alone
            self.failed = e
            log.warning("tracking.%s failed in %s (%s: %s); it is off for the rest of this process,"
                        " the trials go on", self.name, hook, type(e).__name__, first_line(e, 300))

    def trial_started(self, trial: int, params: dict[str, Any], config: TrainConfig) -> None:
        self._call("trial_started", trial, params, config)

    def epoch(self, trial: int, result: EpochResult) -> None:
        self._call("epoch", trial, result)

    def fold_ended(self, trial: int, result: FoldResult, patience: int | None) -> None:
        self._call("fold_ended", trial, result, patience)

    def trial_ended(self, trial: int, state: str, value: float | None, reason: str | None) -> None:
        self._call("trial_ended", trial, state, value, reason)


def missing_extra(name: str) -> ConfigError:
    extra = TRACKERS.info(name)["extra"]
    return ConfigError(f'tracking.{name}: the {extra} package is not installed; pip install -e ".[{extra}]"')


def import_extra(name: str) -> ModuleType:
    """The package an entry needs (its ``extra``), or the one-line error that says how to install it."""
    try:
        return importlib.import_module(TRACKERS.info(name)["extra"])
    except ImportError as e:
        raise missing_extra(name) from e


def worker_and_device() -> dict[str, str]:
    """Where a trial runs, as its tags: the worker's host:pid (as `hpo status` names it) and the device."""
    import torch  # loaded already by the trial that asks

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "device": device}


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
        for arg, choices in TRACKERS.info(name).get("choices", {}).items():
            if arg in args and args[arg] not in choices:
                raise ConfigError(f"tracking.{name}.{arg}: {args[arg]!r} is not one of {', '.join(choices)}")
        # Found, not imported: validating a study file must stay quick.
        if (extra := TRACKERS.info(name).get("extra")) and importlib.util.find_spec(extra) is None:
            raise missing_extra(name)


def build_trackers(spec: Any) -> list[Tracker]:
    """The trackers a study file asks for (``tracking:``), each by its registry entry, guarded."""
    return [GuardedTracker(name, TRACKERS.get(name, f"tracking.{name}")(spec.name, **args))
            for name, args in spec.tracking.items()]
