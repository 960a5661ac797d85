"""MLflow (``tracking.mlflow`` in the study file, or ``hpo run --tracker mlflow``): an experiment
per study, a run per trial, a nested run per fold::

    experiment <study>
      trial-0007                params: the trial's parameters; artifact config.yaml (the full
                                TrainConfig); tags state, prune_reason, worker, device; metrics
                                value (the trial's), fold_best_macro_f1 (step: fold), f1_class_<i>
                                (mean over folds of each class's F1, i = the class's index)
        fold-0 ... fold-4       train_loss, val_loss, val_macro_f1, val_accuracy, lr,
                                images_per_second, data_wait (step: epoch); best_macro_f1

so a pruned trial's fold curves end where the pruner stopped it (status KILLED, its reason in
``prune_reason``). The tracking URI is ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the
SQLite file ``runs/mlflow/mlflow.db`` (MLflow 3 refuses plain folders); several machines need a
server (``mlflow server``), where every worker logs its own runs.

A server that does not answer is retried with MLflow's own settings (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_TIMEOUT``: minutes by default) before the guard warns once and turns the
tracker off for the process.

Everything goes through an ``MlflowClient`` with explicit run ids, never the fluent
``mlflow.start_run``: its active run is global state that threads and workers would share.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from hpo.settings import settings
from hpo.tracking.base import TRACKERS, Tracker, import_extra, worker_and_device
from hpo.train.config import TrainConfig
from hpo.train.results import EpochResult, FoldResult

LOCAL = Path("runs/mlflow")
# hpo's trial states as MLflow run statuses.
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def local_store(folder: Path) -> str:
    """The SQLite store in ``folder``, created under a file lock: workers starting together would
    otherwise race to create its tables."""
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    with FileLock(folder / ".create.lock"):
        import_extra("mlflow").MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    return uri


class MlflowTracker(Tracker):
    def __init__(self, study: str, tracking_uri: str | None) -> None:
        self.mlflow = import_extra("mlflow")  # here, not in a hook: a missing package fails the start
        self.study, self.uri = study, tracking_uri
        self.client: Any = None  # an MlflowClient, connected at the first trial (failures are guarded)
        self.experiment: str | None = None
        self.parent: str | None = None
        self.folds: dict[int, str] = {}  # fold -> its open run
        self.results: list[FoldResult] = []

    def _connect(self) -> None:
        if self.client is not None:
            return
        uri = self.uri or settings().mlflow_tracking_uri or local_store(LOCAL)
        self.client = self.mlflow.MlflowClient(tracking_uri=uri)
        default = not self.uri and uri.startswith("sqlite:")  # the local store: artifacts beside it
        artifacts = (LOCAL / "artifacts").resolve().as_uri() if default else None
        self.experiment = self._experiment(artifacts)

    def _experiment(self, artifacts: str | None) -> str:
        """The study's experiment, created by whichever worker comes first."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.study)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.study, artifact_location=artifacts)
        except MlflowException:  # another worker created it meanwhile
            found = self.client.get_experiment_by_name(self.study)
            if found is None:
                raise
            return found.experiment_id

    def _run(self, name: str, tags: dict[str, str]) -> str:
        return self.client.create_run(self.experiment, run_name=name, tags=tags).info.run_id

    def _metrics(self, run: str, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()
                   if not math.isnan(v)]  # no validation when training on all data
        if metrics:
            self.client.log_batch(run, metrics=metrics)

    def trial_started(self, trial: int, params: dict[str, Any], config: TrainConfig) -> None:
        self._connect()
        self.folds, self.results = {}, []
        self.parent = self._run(f"trial-{trial:04d}", {"trial": str(trial), "state": "RUNNING",
                                                       **worker_and_device()})
        from mlflow.entities import Param

        self.client.log_batch(self.parent, params=[Param(k, str(v)) for k, v in params.items()])
        self.client.log_dict(self.parent, config.to_dict(), "config.yaml")

    def epoch(self, trial: int, result: EpochResult) -> None:
        if result.fold not in self.folds:
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

            tags = {MLFLOW_PARENT_RUN_ID: self.parent, "trial": str(trial)}
            self.folds[result.fold] = self._run(f"fold-{result.fold}", tags)
        self._metrics(self.folds[result.fold], {
            "train_loss": result.train_loss, "val_loss": result.val_loss, "val_macro_f1": result.macro_f1,
            "val_accuracy": result.accuracy, "lr": result.lr, "images_per_second": result.images_per_second,
            "data_wait": result.data_wait}, result.epoch)

    def fold_ended(self, trial: int, result: FoldResult, patience: int | None) -> None:
        self.results.append(result)
        run = self.folds.pop(result.fold, None)
        if run is None:
            return
        self._metrics(run, {"best_macro_f1": result.best_f1})
        self._metrics(self.parent, {"fold_best_macro_f1": result.best_f1}, result.fold)
        self.client.set_tag(run, "best_epoch", str(result.best_epoch))
        if result.stopped_early is not None:
            self.client.set_tag(run, "stopped_early",
                                f"after epoch {result.stopped_early} ({patience} without improvement)")
        self.client.set_terminated(run, "FINISHED")

    def trial_ended(self, trial: int, state: str, value: float | None, reason: str | None) -> None:
        status = STATUS.get(state, "FAILED")
        for run in self.folds.values():  # the fold the trial stopped in
            self.client.set_terminated(run, status)
        per_class = [f.per_class_f1 for f in self.results if f.per_class_f1]
        means = {f"f1_class_{i}": sum(c) / len(c) for i, c in enumerate(zip(*per_class, strict=True))}
        self._metrics(self.parent, {**({"value": value} if value is not None else {}), **means})
        self.client.set_tag(self.parent, "state", state)
        if reason:
            self.client.set_tag(self.parent, "prune_reason" if state == "PRUNED" else "error", reason[:5000])
        self.client.set_terminated(self.parent, status)
        self.folds, self.parent = {}, None


@TRACKERS.register("mlflow", extra="mlflow")
def mlflow(study: str, *, tracking_uri: str | None = None) -> Tracker:
    """MLflow: an experiment per study, a run per trial, a nested run per fold (mlflow ui)."""
    return MlflowTracker(study, tracking_uri)
