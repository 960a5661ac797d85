"""Storage URLs, the Optuna storage behind them, and the study with its fold plan.

The only module that knows storage URLs and SQLAlchemy. It makes Optuna's RDB storage hold up
under many worker processes:

- transient database errors (locked SQLite, PostgreSQL restarts, deadlocks, serialization
  failures, too many clients) are retried with backoff instead of killing a worker;
- SQLite runs in WAL mode with ``BEGIN IMMEDIATE`` transactions, so concurrent writers queue on
  the busy timeout instead of failing on "database is locked";
- PostgreSQL pools are bounded and pre-pinged (a restarted server is reconnected to);
- :func:`study_lock` serialises the few steps that must not interleave across processes
  (creating a study, claiming a trial of the budget, enqueueing seed trials).

Errors reaching the user are one-line StorageErrors with the password masked.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import random
import sqlite3
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import optuna
from optuna.exceptions import StorageInternalError
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.pool import NullPool

from hpo import keys
from hpo.config import StudySpec
from hpo.data.table import ImageTable
from hpo.errors import DataError, StorageError, first_line
from hpo.settings import STORAGE as ENV_STORAGE
from hpo.settings import settings

log = logging.getLogger(__name__)
RETRY_SECONDS = 120.0
MAX_BACKOFF_SECONDS = 5.0  # the longest sleep between two tries of a retried call
CONNECT_RETRY_SECONDS = 10.0  # opening a storage: a database restarting, or workers racing to create the schema
PERMANENT_CONNECT_ERRORS = ("does not exist", "password authentication failed", "no pg_hba.conf entry")
# What a storage call raises when the database itself fails (for callers that must carry on).
STORAGE_FAILURES = (StorageInternalError, SQLAlchemyError)
# When a storage call in this process last met a transient database error (time.monotonic()):
# during an outage and until its end, whichever call notices it.
_last_transient_error = -float("inf")


def outage_within(seconds: float) -> bool:
    """Whether a storage call in this process met a transient database error (a lost
    connection, a restart) in the last ``seconds``."""
    return time.monotonic() - _last_transient_error < seconds


def resolve_url(url: str | None, spec: StudySpec | None = None) -> str:
    """``--storage``, else ``HPO_STORAGE`` (the environment, or ./.env loaded by the command
    line), else a SQLite file in the study's output folder; checked (:func:`check_url`) before
    anything uses it."""
    url = url or settings().storage
    if not url:
        if spec is None:
            raise StorageError(f"no storage given; pass --storage URL or set {ENV_STORAGE}")
        url = f"sqlite:///{spec.outputs / f'{spec.name}.db'}"
    check_url(url)
    return url


def check_url(url: str) -> URL:
    """The parsed URL, or a one-line StorageError: called before anything is written, so a URL
    that cannot work leaves no file behind. Refused: an unparseable URL, in-memory SQLite (its
    tables live in one connection, which workers, heartbeats and a resume never share), and a
    SQLite URL whose path was read as a host (``sqlite://runs/my.db``: two slashes)."""
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except ArgumentError:
        raise StorageError(
            f"cannot parse storage URL {redact(url)!r}; use sqlite:///path.db or"
            " postgresql+psycopg://user@host/db"
        ) from None
    if backend != "sqlite":
        return parsed
    if parsed.host:
        path = "/".join(part for part in (parsed.host, parsed.database) if part)
        raise StorageError(
            f"storage URL {url!r} names no file (SQLite read {parsed.host!r} as a host); write three"
            f" slashes before a relative path (sqlite:///{path}) or four before an absolute one"
            f" (sqlite:////abs/{path})"
        )
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file::memory:") \
            or parsed.query.get("mode") == "memory":
        raise StorageError(
            f"storage URL {url!r} is an in-memory SQLite database, which keeps nothing and which worker"
            " processes, heartbeats and a resume cannot share; give a file (sqlite:///runs/my.db) or leave"
            f" --storage and {ENV_STORAGE} unset for runs/<study>/<study>.db"
        )
    return parsed


def redact(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not a URL: shown as typed unless it could hold a password (user:secret@host).
        return url if "@" not in url else "<unparseable storage URL>"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def writable(url: str) -> bool:
    """Whether this process may write to the study's database (SQLite: the file and its
    folder); a server's permissions are known only when it answers."""
    if not is_sqlite(url):
        return True
    path = sqlite_file(url)
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def storage_failure(error: BaseException) -> StorageError | None:
    """A database error that reached the user's command, as one line (None: not a database
    error). Transient ones were retried for RETRY_SECONDS first."""
    if not isinstance(error, STORAGE_FAILURES):
        return None
    if is_transient(error):
        return StorageError(f"the database stayed unreachable for {RETRY_SECONDS:.0f} s ({database_reason(error)});"
                            " check that it is running, then run the same command to resume")
    return StorageError(f"database error, not retried: {database_reason(error)}; {storage_fix(error)}")


def _unwrapped(error: BaseException) -> BaseException:
    """The database error itself: Optuna wraps it in StorageInternalError."""
    while isinstance(error, StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__
    return error


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


def _sqlite_code(error: BaseException) -> int | None:
    """The SQLite primary result code of a database error, or None when not from SQLite (or a
    Python too old to tell, before 3.11)."""
    orig = getattr(error, "orig", error)
    code = getattr(orig, "sqlite_errorcode", None) if isinstance(orig, sqlite3.Error) else None
    return None if code is None else code & 0xFF


def storage_fix(error: BaseException) -> str:
    """What the user can do about a database error that is not retried."""
    code = _sqlite_code(_unwrapped(error))
    return SQLITE_FIXES.get(code, f"check --storage / {ENV_STORAGE} and that the database is healthy")  # type: ignore[arg-type]


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


def retrying(call: Callable[..., Any], name: str, seconds: float = RETRY_SECONDS,
             retry_if: Callable[[BaseException], bool] | None = None,
             errors: tuple[type[BaseException], ...] = (StorageInternalError, SQLAlchemyError)) -> Callable[..., Any]:
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


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage with every database call retried on transient errors."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, except during and right after an outage: no heartbeat could
        be recorded while the database was down, so a live trial looks stale until its
        heartbeat thread, backing off between tries, has had a grace period to reach the
        database again."""
        stale = _stale_trial_ids(self, study_id)
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        if stale and outage_within(grace + MAX_BACKOFF_SECONDS):
            log.info("not failing %d stale-looking trial(s) yet: the database was down until moments ago", len(stale))
            return []
        return stale


for _name in (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "get_best_trial", "get_trial_user_attrs",
    "get_trial_system_attrs", "record_heartbeat",
    # Optuna's cache layer calls these private methods of the backend directly.
    "_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param",
):
    setattr(RetryingRDBStorage, _name, retrying(getattr(optuna.storages.RDBStorage, _name), _name))
_stale_trial_ids = retrying(optuna.storages.RDBStorage._get_stale_trial_ids, "_get_stale_trial_ids")


def sqlite_file(url: str) -> Path:
    """The database file of a SQLite URL that :func:`check_url` accepted."""
    return Path(check_url(url).database or "").expanduser()


def _read_only_sqlite(path: Path) -> dict[str, Any]:
    """Engine arguments that open ``path`` read-only: nothing is written, and a file the user
    cannot write (a colleague's, a read-only mount) can still be read. A WAL database needs its
    shared-memory file to read; where that cannot be made (a read-only folder), the file is
    opened as immutable: nobody can be writing to it there."""
    location = quote(str(path.resolve()))
    mode = "ro" if os.access(path.parent, os.W_OK) or path.with_name(path.name + "-shm").exists() else "ro&immutable=1"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(f"file:{location}?mode={mode}", uri=True, timeout=60, check_same_thread=False)

    return {"creator": connect}


def _prepare_sqlite(path: Path) -> None:
    """WAL mode (persistent in the file), set before any pool holds the file: readers such as
    the dashboard then work beside writers. Switching needs the file to itself, and SQLite
    answers "locked" at once (not after its busy timeout) when another process starting at the
    same moment holds it: that is waited out."""

    def switch_to_wal() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=60)) as connection:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")

    try:
        retrying(switch_to_wal, "open", retry_if=lambda e: "locked" in str(e), errors=(sqlite3.OperationalError,))()
    except (OSError, sqlite3.Error) as e:
        raise StorageError(f"cannot open SQLite file {path}: {e}; check the path and its permissions") from None


def _begin_immediate(engine: Any) -> None:
    """Take SQLite's write lock at the start of each transaction: a deferred transaction that
    reads, then writes, fails at once with "database is locked" when another process wrote in
    between; an immediate one waits its turn on the busy timeout."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # let us issue BEGIN ourselves

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # drop connections opened before the listeners existed


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    read_only: bool = False,
) -> optuna.storages.RDBStorage:
    """The Optuna storage for ``url``; with a heartbeat, stale trials are retried up to
    ``max_retry`` times with the same parameters. ``read_only`` (status, export, report): the
    database must exist, and nothing is written to it."""
    backend = check_url(url).get_backend_name()
    if backend == "sqlite":
        path = sqlite_file(url)
        if read_only:
            engine_kwargs: dict[str, Any] = _read_only_sqlite(path)
        else:
            engine_kwargs = {"connect_args": {"timeout": 60}}
            _prepare_sqlite(path)
    else:
        # Bounded: every worker holds at most 3 connections (trial loop, heartbeat, sweeper).
        engine_kwargs = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 1,
                         "pool_timeout": 60, "pool_recycle": 1800}
        if read_only and backend == "postgresql":
            engine_kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
    try:
        with warnings.catch_warnings():  # heartbeats are experimental in Optuna 5; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = None
            if heartbeat_interval:
                callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
            # Workers starting together on a new database race to create Optuna's schema; the
            # loser's insert of the schema version fails, and the schema is there when it looks again.
            storage = retrying(RetryingRDBStorage, "connect", seconds=CONNECT_RETRY_SECONDS,
                               retry_if=lambda e: is_transient(e) or isinstance(e, IntegrityError))(
                url,
                engine_kwargs=engine_kwargs,
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
    if backend == "sqlite" and not read_only:
        _begin_immediate(storage.engine)
    return storage


@dataclass
class HeldLock:
    """What :func:`study_lock` yields; ``lost`` is known once the block is left: the database
    ended the lock's session (a restart) while it was held, so another process may have held it
    at the same time."""

    lost: bool = False


def advisory_lock_key(study_name: str) -> int:
    """The PostgreSQL advisory lock that stands for ``study_name``'s study lock."""
    return zlib.crc32(f"hpo:{study_name}".encode())


@contextmanager
def study_lock(url: str, study_name: str) -> Iterator[HeldLock]:
    """A lock shared by every process using this study: a file lock beside a SQLite database,
    a PostgreSQL advisory lock otherwise."""
    held = HeldLock()
    if is_sqlite(url):
        path = sqlite_file(url)
        with open(path.with_name(path.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield held
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if make_url(url).get_backend_name() != "postgresql":
        yield held  # other databases: no cross-process lock (documented limitation)
        return
    key = advisory_lock_key(study_name)
    engine = create_engine(url, poolclass=NullPool)

    def locked_connection() -> Any:
        """A new connection each try: one that a restart broke cannot be used again."""
        connection = engine.connect()
        try:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        except BaseException:
            connection.close()
            raise
        return connection

    try:
        connection = retrying(locked_connection, "lock")()
        try:
            yield held
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            except SQLAlchemyError as e:
                if not is_transient(e):
                    raise
                # The server ended the session (a restart) and the lock with it; what the block
                # did is committed. The caller checks what may have interleaved.
                held.lost = True
                log.warning("study lock lost with its database connection: %s", database_reason(e))
            finally:
                connection.close()
    finally:
        engine.dispose()


def require_database(url: str, study_name: str) -> None:
    """For commands that only read a study: refuse a database that does not exist yet, rather
    than create it (Optuna's storage creates the file or the tables on first use)."""
    missing = f"no study {study_name!r} in {redact(url)}; start it with hpo run first, or pass the --storage it runs on"
    if is_sqlite(url):
        if not sqlite_file(url).is_file():
            raise StorageError(missing)
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            exists = inspect(connection).has_table("studies")
    except (SQLAlchemyError, ImportError) as e:
        raise StorageError(
            f"cannot open storage {redact(url)}: {database_reason(e)}; check --storage / {ENV_STORAGE}"
        ) from None
    finally:
        engine.dispose()
    if not exists:
        raise StorageError(missing)


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
