"""Storages: a URL becomes Optuna's storage for the study, held up under many worker processes.

The only package that knows storage URLs and SQLAlchemy:

- transient database errors (locked SQLite, PostgreSQL restarts, deadlocks, serialization
  failures, too many clients) are retried with backoff instead of killing a worker (retry.py);
- each database's needs are one registry entry by URL scheme (backends.py: SQLite in WAL mode
  with immediate transactions, pooled and pre-pinged PostgreSQL, the study lock of each);
- URLs that cannot work are refused before anything is written (urls.py).

Errors reaching the user are one-line StorageErrors with the password masked.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager

import optuna
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from hpo.errors import StorageError
from hpo.settings import STORAGE as ENV_STORAGE
from hpo.storage.backends import STORAGES, Backend, HeldLock, advisory_lock_key
from hpo.storage.retry import (
    MAX_BACKOFF_SECONDS,
    RETRY_SECONDS,
    STORAGE_FAILURES,
    RetryingStorage,
    database_reason,
    is_transient,
    outage_within,
    retrying,
    storage_failure,
)
from hpo.storage.urls import check_url, is_sqlite, redact, resolve_url, scheme, sqlite_file, writable

# Opening a storage: a database restarting, or workers racing to create the schema.
CONNECT_RETRY_SECONDS = 10.0


def backend(url: str) -> Backend:
    """The registry entry for ``url``'s database."""
    return STORAGES.get(scheme(url), "--storage")()


def _lost_schema_race(error: BaseException) -> bool:
    """Workers starting together on a new database race to create Optuna's schema: the loser's
    CREATE TABLE or its insert of the schema version fails, and the schema is there when it
    looks again."""
    return isinstance(error, IntegrityError) or (isinstance(error, OperationalError) and "already exists" in str(error))


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    read_only: bool = False,
) -> RetryingStorage:
    """The Optuna storage for ``url``; with a heartbeat, stale trials are retried up to
    ``max_retry`` times with the same parameters. ``read_only`` (status, export, report): the
    database must exist, and nothing is written to it."""
    database = backend(url)
    if not read_only:
        database.prepare(url)
    try:
        with warnings.catch_warnings():  # heartbeats are experimental in Optuna 5; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = None
            if heartbeat_interval:
                callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
            rdb = retrying(optuna.storages.RDBStorage, "connect", seconds=CONNECT_RETRY_SECONDS,
                           retry_if=lambda e: is_transient(e) or _lost_schema_race(e))(
                url,
                engine_kwargs=database.engine_kwargs(url, read_only),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=callback,
                skip_table_creation=read_only,
            )
    except (SQLAlchemyError, StorageInternalError, ImportError, OSError) as e:
        raise StorageError(
            f"cannot open storage {redact(url)}: {database_reason(e)}; check --storage / {ENV_STORAGE} and that"
            " the database is reachable"
        ) from None
    if not read_only:
        database.opened(rdb.engine)
    return RetryingStorage(rdb)


def study_lock(url: str, study_name: str) -> AbstractContextManager[HeldLock]:
    """A lock shared by every process using this study (creating it, claiming a place in its
    budget, enqueueing seed trials): a file lock beside a SQLite database, a PostgreSQL advisory
    lock."""
    return backend(url).lock(url, study_name)


def require_database(url: str, study_name: str) -> None:
    """For commands that only read a study: refuse a database that does not exist yet, rather
    than create it (Optuna's storage creates the file or the tables on first use)."""
    if not backend(url).exists(url):
        raise StorageError(f"no study {study_name!r} in {redact(url)}; start it with hpo run first, or pass"
                           " the --storage it runs on")


def max_workers(url: str) -> int | None:
    """Local worker processes the database holds (SQLite: 16), or None."""
    return backend(url).max_workers


__all__ = [
    "CONNECT_RETRY_SECONDS", "MAX_BACKOFF_SECONDS", "RETRY_SECONDS", "STORAGES", "STORAGE_FAILURES", "HeldLock",
    "RetryingStorage", "advisory_lock_key", "check_url", "database_reason", "is_sqlite", "is_transient",
    "max_workers", "open_storage", "outage_within", "redact", "require_database", "resolve_url", "retrying",
    "sqlite_file", "storage_failure", "study_lock", "writable",
]
