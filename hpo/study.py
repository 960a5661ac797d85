"""A study ready for trials: input validated (hpo.checks), storage opened, study created once
with its fold plan, seed trials enqueued; its sampler seeded per process, its budget and
counts. Shared by `hpo run`, `hpo worker`, `hpo enqueue` and `hpo status`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import keys
from hpo.checks import prepare  # noqa: F401 - re-exported: study.prepare(spec)
from hpo.config import StudySpec
from hpo.data.table import ImageTable
from hpo.errors import DataError, StorageError
from hpo.records.note import ensure_note
from hpo.space import check_params
from hpo.storage import open_storage, redact, require_database, resolve_url, study_lock

log = logging.getLogger(__name__)

# Trials that count towards the budget. A FAIL (a crash, or a worker that died) does not: it is
# retried or replaced, so the study still ends with its full budget of results.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def storage_url(url: str | None, spec: StudySpec) -> str:
    """``--storage``, else ``HPO_STORAGE``, else the study's SQLite file in its output folder."""
    return resolve_url(url, spec.outputs / f"{spec.name}.db")


def stored_spec(url: str, study_name: str) -> dict[str, Any]:
    """The study file a study was created with (for workers joining without the file)."""
    require_database(url, study_name)
    storage = open_storage(url, read_only=True)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        raise StorageError(f"no study {study_name!r} in {redact(url)}; start it with hpo run first, or give the study file") from None
    attrs = storage.get_study_user_attrs(study_id)
    if keys.SPEC not in attrs:
        raise StorageError(f"study {study_name!r} in {redact(url)} was not created by hpo; give the study file")
    return attrs[keys.SPEC]


def open_study(spec: StudySpec, storage: optuna.storages.BaseStorage, table: ImageTable,
               plan: np.ndarray) -> tuple[optuna.Study, np.ndarray]:
    """Create the study (or load it) with its fold plan; return the plan every trial must use.

    Call under :func:`study_lock` when several processes may start at once. A study remembers
    its data fingerprint and folds: a resume on changed data or a different cv section is
    refused rather than silently comparing trials trained on different splits.
    """
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction=spec.direction,
        sampler=spec.build_sampler(),
        pruner=spec.build_pruner(),
        load_if_exists=True,
    )
    attrs = study.user_attrs
    cv = {"folds": spec.cv.folds, "seed": spec.cv.seed}
    if keys.FOLD_PLAN not in attrs:
        study.set_user_attr(keys.DATA_FINGERPRINT, table.fingerprint())
        study.set_user_attr(keys.CV, cv)
        study.set_user_attr(keys.SPEC, spec.raw)
        study.set_user_attr(keys.CLASSES, list(table.classes))
        study.set_user_attr(keys.FOLD_PLAN, plan.tolist())  # last: its presence marks a complete setup
        return study, plan
    if attrs.get(keys.DATA_FINGERPRINT) != table.fingerprint():
        raise DataError(
            f"the data differs from the data study {spec.name!r} was created with (fingerprint"
            f" {table.fingerprint()} != {attrs.get(keys.DATA_FINGERPRINT)}); restore that data or use a"
            " new study name (--set name=...)"
        )
    if attrs.get(keys.CV) != cv:
        raise DataError(
            f"study {spec.name!r} was created with cv {attrs.get(keys.CV)}, not {cv}; restore the"
            " cv section or use a new study name (--set name=...)"
        )
    return study, np.asarray(attrs[keys.FOLD_PLAN], dtype=np.int64)


@dataclass
class StudyHandle:
    spec: StudySpec
    url: str
    storage: optuna.storages.RDBStorage
    study: optuna.Study
    table: ImageTable
    plan: np.ndarray

    def lock(self):  # noqa: ANN201 - a context manager
        return study_lock(self.url, self.spec.name)


def connect(spec: StudySpec, url: str | None = None) -> StudyHandle:
    """Validate, open the storage (with heartbeats), and create or load the study. Safe when
    many processes start at once: creation and seeding happen under the study lock."""
    url = storage_url(url, spec)  # checked before anything is written, the cache included
    table, plan = prepare(spec)
    w = spec.workers
    storage = open_storage(url, w.heartbeat_interval, w.grace_period, w.max_retry)
    with study_lock(url, spec.name) as held:
        study, plan = open_study(spec, storage, table, plan)
        ensure_note(study, spec, table, plan)
        _enqueue_new(study, spec.seed_trials)
    handle = StudyHandle(spec, url, storage, study, table, plan)
    if held.lost:
        fail_duplicates(handle, spec.seed_trials)
    return handle


def enqueue(handle: StudyHandle, trials: list[dict[str, Any]]) -> int:
    """Put known configurations first; a configuration already in the study is skipped, even
    when several processes enqueue at once. Returns how many were added (after a lock lost to a
    database restart, a rival's copy added at the same moment may be counted too)."""
    for i, params in enumerate(trials):
        check_params(handle.spec.search, params, f"trial {i}")
    with handle.lock() as held:
        added = _enqueue_new(handle.study, trials)
    if held.lost:
        fail_duplicates(handle, trials)
    return added


def _enqueue_new(study: optuna.Study, trials: list[dict[str, Any]]) -> int:
    """Under the study lock: the configurations not yet in the study, enqueued; how many."""
    waiting = (TrialState.WAITING,)
    before = len(study.get_trials(deepcopy=False, states=waiting))
    for params in trials:
        study.enqueue_trial(params, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False, states=waiting)) - before


def fail_duplicates(handle: StudyHandle, enqueued: list[dict[str, Any]]) -> None:
    """After the lock was lost to a database restart while ``enqueued`` were added: another
    process may have added the same configurations meanwhile (both looked, saw none, added).
    Each keeps its first copy, in any state (a worker may have claimed it since); later copies
    still waiting are failed, so none runs twice. Retries and requeues of a trial carry its
    parameters too and are left alone."""
    wanted = {json.dumps(params, sort_keys=True) for params in enqueued}
    seen = set()
    with handle.lock():
        for trial in handle.study.get_trials(deepcopy=False):  # in number order: first copies first
            fixed = trial.system_attrs.get("fixed_params")
            if fixed is None or "failed_trial" in trial.system_attrs or keys.REQUEUED_FROM in trial.user_attrs:
                continue
            key = json.dumps(fixed, sort_keys=True)
            if key in wanted and key in seen and trial.state == TrialState.WAITING:
                log.warning("trial %d was enqueued twice during a database restart; failing the copy", trial.number)
                handle.storage.set_trial_user_attr(trial._trial_id, keys.FAIL_REASON,
                                                   "enqueued twice during a database restart")
                handle.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            seen.add(key)


def session_seed(seed: int, session: int) -> int:
    """The sampler seed of the ``session``-th process to sample trials of a study: the study's
    own seed for the first (a study run in one uninterrupted process is reproducible from it),
    a different stream for each later one (a resume, a second `hpo run`, each pool worker)."""
    if session == 0:
        return seed
    return int(np.random.SeedSequence([seed, session]).generate_state(1)[0])


def seed_sampler(handle: StudyHandle) -> int:
    """Give this process's sampler a seed of its own (:func:`session_seed`), counted in the
    study under its lock. Without it, every process that joins or resumes a study replays the
    seeded sequence from its start, and its first trials repeat earlier ones. Returns the seed."""
    with handle.lock():
        session = int(handle.study.user_attrs.get(keys.SAMPLER_SESSIONS, 0))
        handle.study.set_user_attr(keys.SAMPLER_SESSIONS, session + 1)
    seed = session_seed(handle.spec.sampler_seed, session)
    handle.study.sampler = handle.spec.build_sampler(seed)
    return seed


def record_budget(study: optuna.Study, budget: int) -> None:
    """The budget the last `hpo run` or `hpo worker` ran to (--n-trials), for `hpo status`."""
    if study.user_attrs.get(keys.BUDGET) != budget:
        study.set_user_attr(keys.BUDGET, budget)


def stored_budget(study: optuna.Study, spec: StudySpec) -> int:
    """The budget a study is run to: the last run's, else the study file's."""
    return int(study.user_attrs.get(keys.BUDGET, spec.budget.n_trials))


def count_states(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> dict[TrialState, int]:
    """Trials per state; pass ``trials`` when they were just read, to avoid reading them again."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    return {state: sum(t.state == state for t in trials) for state in TrialState}


def trials_done(done: int, budget: int) -> str:
    """``done``/``budget``, or, past a budget that earlier runs raised (--n-trials), the count and it."""
    return f"{done}/{budget} trials done" if done <= budget else f"{done} trials done (budget {budget})"


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no complete trial yet
        return None
