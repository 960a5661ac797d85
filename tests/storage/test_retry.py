"""The retrying storage forwards every call of Optuna's storage interface, and nothing else."""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

from hpo.storage import RetryingStorage, open_storage


def interface() -> set[str]:
    """Every public method of the installed Optuna's storage and heartbeat interfaces, and the
    abstract ones whatever their name (BaseHeartbeat's ``_get_stale_trial_ids``)."""
    names = set(BaseStorage.__abstractmethods__) | set(BaseHeartbeat.__abstractmethods__)
    for base in (BaseStorage, BaseHeartbeat):
        names |= {name for name, member in vars(base).items() if callable(member) and not name.startswith("_")}
    return names


def test_every_method_of_optunas_storage_interface_is_forwarded_with_retries():
    """An Optuna release that adds a storage method fails this test, instead of letting its
    calls bypass the retries (or reach a base class default)."""
    missing = sorted(interface() - set(vars(RetryingStorage)))
    assert not missing, f"RetryingStorage does not forward {missing}; add them"
    assert not RetryingStorage.__abstractmethods__


def test_forwarded_calls_reach_optunas_cache_and_database(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=3)
    assert isinstance(storage, RetryingStorage) and isinstance(storage, BaseHeartbeat)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    assert study._storage is storage  # not wrapped again by Optuna
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert storage.get_n_trials(study._study_id) == 3 and storage.get_heartbeat_interval() == 1
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").best_value == study.best_value
