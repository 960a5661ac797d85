"""Experiment trackers: thin callbacks that follow each trial's training, one registry entry each.

A tracker hears a trial start, every epoch of every fold, each fold's end and the trial's end;
it never decides anything. The study file names them with their arguments::

    tracking:
      tensorboard: {folder: runs/tb}      # or tensorboard: runs/tb (the first argument)
      mlflow: {tracking_uri: http://mlflow:5000}     # pip install -e ".[mlflow]"
      wandb: {project: hpo, mode: offline}            # pip install -e ".[wandb]"

``hpo run --tensorboard DIR`` is ``--set tracking.tensorboard=DIR``; ``--tracker mlflow:tracking_uri=URI``
is ``--set tracking.mlflow.tracking_uri=URI``. Each entry is a factory (study name, *its arguments)
-> Tracker, in a module of its own beside this one; a failing tracker never fails a trial (see
:class:`~hpo.tracking.base.GuardedTracker`).
"""

from hpo.tracking import mlflow, tensorboard, wandb  # noqa: F401 - each registers its tracker
from hpo.tracking.base import (
    TRACKERS,
    GuardedTracker,
    Tracker,
    build_trackers,
    check_tracking,
    tracker_arguments,
)

__all__ = ["TRACKERS", "GuardedTracker", "Tracker", "build_trackers", "check_tracking", "tracker_arguments"]
