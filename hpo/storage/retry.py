"""Which database errors are worth retrying, the retry itself, and Optuna's storage behind a
delegate that retries every call.

:class:`RetryingStorage` wraps Optuna's own storage stack (``optuna.storages.get_storage``:
its trial cache over the RDB storage) behind the same base classes, and forwards each public
method with retries, as Optuna's ``_CachedStorage`` wraps its backend: nothing of Optuna's is
patched, and ``tests/storage/test_retry.py`` checks that every public method of the installed
Optuna's ``BaseStorage`` and ``BaseHeartbeat`` is forwarded.
"""

from __future__ import annotations

import functools
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from hpo.errors import StorageError, first_line
from hpo.settings import STORAGE as ENV_STORAGE

log = logging.getLogger(__name__)
RETRY_SECONDS = 120.0
MAX_BACKOFF_SECONDS = 5.0  # the longest sleep between two tries of a retried call
PERMANENT_CONNECT_ERRORS = ("does not exist", "password authentication failed", "no pg_hba.conf entry")
# What a storage call raises when the database itself fails (for callers that must carry on).
STORAGE_FAILURES = (StorageInternalError, SQLAlchemyError)
# SQLite's primary result codes worth waiting out: another connection holds the lock. Every other
# code (no such table, read-only file, disk I/O error, a damaged file...) stays as it is.
SQLITE_TRANSIENT_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# What to do about SQLite's permanent errors, by primary result code (the rest: the generic fix).
SQLITE_FIXES = {
    sqlite3.SQLITE_READONLY: "make the database file and its folder writable, or pass another --storage",
    sqlite3.SQLITE_IOERR: "check the disk the database file is on (full, failing or unmounted)",
    sqlite3.SQLITE_FULL: "free disk space where the database file is",
    sqlite3.SQLITE_CORRUPT: "the database file is damaged; restore it from a copy or start a new study",
    sqlite3.SQLITE_NOTADB: "the file is not a SQLite database; pass the study's database as --storage",
    sqlite3.SQLITE_CANTOPEN: "check the database file's path and permissions",
}
# When a storage call in this process last met a transient database error (time.monotonic()):
# during an outage and until its end, whichever call notices it.
_last_transient_error = -float("inf")


def outage_within(seconds: float) -> bool:
    """Whether a storage call in this process met a transient database error (a lost
    connection, a restart) in the last ``seconds``."""
    return time.monotonic() - _last_transient_error < seconds


def _unwrapped(error: BaseException) -> BaseException:
    """The database error itself: Optuna wraps it in StorageInternalError."""
    while isinstance(error, StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__
    return error


def _sqlite_code(error: BaseException) -> int | None:
    """The SQLite primary result code of a database error, or None when not from SQLite (or a
    Python too old to tell, before 3.11)."""
    orig = getattr(error, "orig", error)
    code = getattr(orig, "sqlite_errorcode", None) if isinstance(orig, sqlite3.Error) else None
    return None if code is None else code & 0xFF


def is_transient(error: BaseException) -> bool:
    """Database errors worth retrying: lost connections, locks, deadlocks, serialization
    failures, too many clients; for SQLite, busy and locked only (by result code)."""
    error = _unwrapped(error)
    if isinstance(getattr(error, "orig", None), sqlite3.Error):
        code = _sqlite_code(error)
        if code is not None:
            return code in SQLITE_TRANSIENT_CODES
        return any(word in str(error.orig) for word in ("locked", "busy"))  # type: ignore[union-attr]
    if isinstance(error, (OperationalError, InterfaceError)):  # InterfaceError: connection closed
        # Not a database or role that does not exist, nor refused credentials: retrying cannot
        # fix those. libpq reports them at connection time without an SQLSTATE, so by message.
        message = str(error.orig)
        return not any(permanent in message for permanent in PERMANENT_CONNECT_ERRORS)
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def database_reason(error: BaseException) -> str:
    """The first line of the database driver's own message, under Optuna's and SQLAlchemy's
    wrappers."""
    cause = error.__cause__ or error
    return first_line(getattr(cause, "orig", None) or cause)


def storage_fix(error: BaseException) -> str:
    """What the user can do about a database error that is not retried."""
    code = _sqlite_code(_unwrapped(error))
    return SQLITE_FIXES.get(code, f"check --storage / {ENV_STORAGE} and that the database is healthy")  # type: ignore[arg-type]


def storage_failure(error: BaseException) -> StorageError | None:
    """A database error that reached the user's command, as one line (None: not a database
    error). Transient ones were retried for RETRY_SECONDS first."""
    if not isinstance(error, STORAGE_FAILURES):
        return None
    if is_transient(error):
        return StorageError(f"the database stayed unreachable for {RETRY_SECONDS:.0f} s ({database_reason(error)});"
                            " check that it is running, then run the same command to resume")
    return StorageError(f"database error, not retried: {database_reason(error)}; {storage_fix(error)}")


def retrying(call: Callable[..., Any], name: str, seconds: float = RETRY_SECONDS,
             retry_if: Callable[[BaseException], bool] | None = None,
             errors: tuple[type[BaseException], ...] = STORAGE_FAILURES) -> Callable[..., Any]:
    """``call`` retried with backoff for ``seconds`` while its error (one of ``errors``) is
    transient (or ``retry_if``)."""
    retry_if = retry_if or is_transient

    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _last_transient_error
        deadline, delay = time.monotonic() + seconds, 0.05
        while True:
            try:
                return call(*args, **kwargs)
            except errors as e:
                if is_transient(e):
                    _last_transient_error = time.monotonic()
                if not retry_if(_unwrapped(e)) or time.monotonic() > deadline:
                    raise
                # One warning per outage, not one per attempt.
                log.log(logging.WARNING if delay == 0.05 else logging.DEBUG,
                        "storage %s: transient error, retrying for up to %.0fs: %s", name, seconds,
                        database_reason(e))
                time.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    return wrapper


def _forwarded(name: str) -> Callable[..., Any]:
    """A method that calls the wrapped storage's ``name``, retried on transient errors."""

    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return retrying(getattr(self._inner, name), name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"``{name}`` of the wrapped storage, retried on transient database errors."
    return method


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """Optuna's storage for an RDBStorage (its trial cache over it), every call retried on
    transient database errors; heartbeats included."""

    def __init__(self, rdb: optuna.storages.RDBStorage) -> None:
        self.rdb = rdb  # for what only the database has (its engine, optuna-dashboard's extras)
        self._inner = optuna.storages.get_storage(rdb)  # Optuna's cache layer over it

    @property
    def engine(self) -> Any:
        return self.rdb.engine

    @property
    def heartbeat_interval(self) -> int | None:
        return self.rdb.heartbeat_interval

    @property
    def grace_period(self) -> int | None:
        return self.rdb.grace_period

    # BaseStorage
    create_new_study = _forwarded("create_new_study")
    delete_study = _forwarded("delete_study")
    set_study_user_attr = _forwarded("set_study_user_attr")
    set_study_system_attr = _forwarded("set_study_system_attr")
    get_study_id_from_name = _forwarded("get_study_id_from_name")
    get_study_name_from_id = _forwarded("get_study_name_from_id")
    get_study_directions = _forwarded("get_study_directions")
    get_study_user_attrs = _forwarded("get_study_user_attrs")
    get_study_system_attrs = _forwarded("get_study_system_attrs")
    get_all_studies = _forwarded("get_all_studies")
    create_new_trial = _forwarded("create_new_trial")
    set_trial_param = _forwarded("set_trial_param")
    get_trial_id_from_study_id_trial_number = _forwarded("get_trial_id_from_study_id_trial_number")
    get_trial_number_from_id = _forwarded("get_trial_number_from_id")
    get_trial_param = _forwarded("get_trial_param")
    set_trial_state_values = _forwarded("set_trial_state_values")
    set_trial_intermediate_value = _forwarded("set_trial_intermediate_value")
    set_trial_user_attr = _forwarded("set_trial_user_attr")
    set_trial_system_attr = _forwarded("set_trial_system_attr")
    get_trial = _forwarded("get_trial")
    get_all_trials = _forwarded("get_all_trials")
    get_n_trials = _forwarded("get_n_trials")
    get_best_trial = _forwarded("get_best_trial")
    get_trial_params = _forwarded("get_trial_params")
    get_trial_user_attrs = _forwarded("get_trial_user_attrs")
    get_trial_system_attrs = _forwarded("get_trial_system_attrs")
    check_trial_is_updatable = _forwarded("check_trial_is_updatable")
    remove_session = _forwarded("remove_session")
    # BaseHeartbeat
    record_heartbeat = _forwarded("record_heartbeat")
    get_heartbeat_interval = _forwarded("get_heartbeat_interval")
    get_heartbeat_stale_trial_callback = _forwarded("get_heartbeat_stale_trial_callback")
    get_failed_trial_callback = _forwarded("get_failed_trial_callback")

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, except during and right after an outage: no heartbeat could
        be recorded while the database was down, so a live trial looks stale until its
        heartbeat thread, backing off between tries, has had a grace period to reach the
        database again."""
        stale = retrying(self._inner._get_stale_trial_ids, "_get_stale_trial_ids")(study_id)
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        if stale and outage_within(grace + MAX_BACKOFF_SECONDS):
            log.info("not failing %d stale-looking trial(s) yet: the database was down until moments ago", len(stale))
            return []
        return stale
