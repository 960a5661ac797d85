"""Experiment trackers: thin callbacks that follow each trial's training, one registry entry each.

A tracker hears a trial start, every epoch of every fold, each fold's end and the trial's end;
it never decides anything. The study file names them with their arguments::

    tracking:
      tensorboard: {folder: runs/tb}      # or tensorboard: runs/tb (the first argument)

``hpo run --tensorboard DIR`` is ``--set tracking.tensorboard=DIR``. Each entry is a factory
(study name, *its arguments) -> Tracker, in a module of its own beside this one.
"""

from hpo.tracking import tensorboard  # noqa: F401 - registers its tracker
from hpo.tracking.base import TRACKERS, Tracker, build_trackers, check_tracking, tracker_arguments

__all__ = ["TRACKERS", "Tracker", "build_trackers", "check_tracking", "tracker_arguments"]
