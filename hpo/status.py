"""`hpo status`: what a study holds and who is working on it, read from its storage."""

from __future__ import annotations

import time
from datetime import timezone

import optuna
from optuna.trial import TrialState
from rich.table import Table
from rich.text import Text

from hpo import keys
from hpo.config import StudySpec
from hpo.errors import StorageError
from hpo.records.artifacts import artifact_location
from hpo.records.models import kept
from hpo.storage import open_storage, redact, require_database
from hpo.study import COUNTED, best_value, count_states, storage_url, stored_budget, trials_done


def load_existing(spec: StudySpec, url: str | None, read_only: bool = True) -> optuna.Study:
    """The study as stored; never creates a database, and (``read_only``) writes nothing."""
    url = storage_url(url, spec)
    require_database(url, spec.name)
    try:
        return optuna.load_study(study_name=spec.name, storage=open_storage(url, read_only=read_only))
    except KeyError:
        raise StorageError(f"no study {spec.name!r} in {redact(url)}; start it with hpo run") from None


def study_status(spec: StudySpec, url: str | None = None) -> list[object]:
    study = load_existing(spec, url)
    trials = study.get_trials(deepcopy=False)
    counts = count_states(study, trials)
    done = sum(counts[s] for s in COUNTED)
    best = best_value(study)
    head = Text(f"study {spec.name}: {trials_done(done, stored_budget(study, spec))}; "
                + ", ".join(f"{s.name.lower()} {n}" for s, n in counts.items() if n)
                + (f"; best macro F1 {best:.4f} (trial {study.best_trial.number})" if best is not None else ""))

    running = Table(title="running trials")
    for column in ("#", "worker", "fold", "epoch", "val F1", "running for"):
        running.add_column(column)
    now = time.time()
    for t in trials:
        if t.state == TrialState.RUNNING:
            p = t.user_attrs.get(keys.PROGRESS, {})
            start = t.datetime_start
            if start is not None and start.tzinfo is None:
                start = start.replace(tzinfo=timezone.utc)  # Optuna 5 stores UTC
            since = now - start.timestamp() if start else 0
            running.add_row(str(t.number), str(t.user_attrs.get(keys.WORKER, "?")), str(p.get("fold", "-")),
                            str(p.get("epoch", "-")), str(p.get("f1", "-")), f"{since:.0f}s")

    workers = Table(title="workers")
    for column in ("worker", "device", "state", "trial", "last seen"):
        workers.add_column(column)
    stale_after = spec.workers.grace_period  # a live worker says so every sweep_interval
    for key, info in sorted(study.user_attrs.items()):
        if not key.startswith(keys.WORKER_PREFIX):
            continue
        age = now - info["last_seen"]
        state = "finished" if info.get("finished") else ("live" if age < stale_after else "lost")
        if state == "finished" and age > 3600:
            continue  # old history: keep the table short
        workers.add_row(key.removeprefix(keys.WORKER_PREFIX), info.get("device", "?"), state,
                        str(info.get("trial") if info.get("trial") is not None else "-"), f"{age:.0f}s ago")
    return [head, running, workers, kept_line(study, spec)]


def kept_line(study: optuna.Study, spec: StudySpec) -> Text:
    """The fold models kept for the ensemble, and the disk they take."""
    entries = kept(study)
    if not entries:
        return Text(f"kept fold models: none (models.keep: {spec.models.keep})")
    size = sum(k.bytes for k in entries) / 2**20
    files = sum(len(k.checkpoints) for k in entries)
    return Text(f"kept fold models: trials {', '.join(str(k.trial) for k in entries)} (best first, models.keep:"
                f" {spec.models.keep}), {files} files, {size:.1f} MB in {artifact_location(spec)}")
