"""What each kind of database needs, one registry entry per URL scheme: how its engine is set up
(read-write or read-only), what is done to it before Optuna opens it and after, the lock every
process of a study shares, how many local workers it holds, and how to tell that a study's
database exists without creating it."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from hpo.errors import StorageError
from hpo.registry import Registry
from hpo.settings import STORAGE as ENV_STORAGE
from hpo.storage.retry import database_reason, is_transient, retrying
from hpo.storage.urls import redact, sqlite_file

log = logging.getLogger(__name__)


@dataclass
class HeldLock:
    """What a study lock yields; ``lost`` is known once the block is left: the database ended
    the lock's session (a restart) while it was held, so another process may have held it at
    the same time."""

    lost: bool = False


class Backend:
    """A database hpo stores studies in. ``max_workers``: local worker processes it holds on one
    machine (None: no limit of its own)."""

    max_workers: int | None = None

    def engine_kwargs(self, url: str, read_only: bool) -> dict[str, Any]:
        return {}

    def prepare(self, url: str) -> None:
        """Before Optuna opens the database for writing."""

    def opened(self, engine: Any) -> None:
        """After Optuna opened it for writing."""

    @contextmanager
    def lock(self, url: str, study_name: str) -> Iterator[HeldLock]:
        """A lock shared by every process of the study."""
        yield HeldLock()  # no cross-process lock for this database (a documented limitation)

    def exists(self, url: str) -> bool:
        """Whether the database holds Optuna's tables; never creates anything."""
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return inspect(connection).has_table("studies")
        except (SQLAlchemyError, ImportError) as e:
            raise StorageError(
                f"cannot open storage {redact(url)}: {database_reason(e)}; check --storage / {ENV_STORAGE}"
            ) from None
        finally:
            engine.dispose()


# A scheme's Backend class, constructed without arguments.
STORAGES: Registry[type[Backend]] = Registry("storage")


@STORAGES.register("sqlite")
class SQLite(Backend):
    """A file on this machine. WAL mode (readers such as the dashboard work beside writers) and
    ``BEGIN IMMEDIATE`` transactions (concurrent writers queue on the busy timeout instead of
    failing on "database is locked"); read-only where the user cannot write."""

    # Measured: 16 processes on one SQLite file lose nothing with these settings; past that use a server.
    max_workers = 16

    def engine_kwargs(self, url: str, read_only: bool) -> dict[str, Any]:
        if not read_only:
            return {"connect_args": {"timeout": 60}}
        # Read-only: nothing is written, and a file the user cannot write (a colleague's, a
        # read-only mount) can still be read. A WAL database needs its shared-memory file to
        # read; where that cannot be made (a read-only folder), the file is opened as immutable:
        # nobody can be writing to it there.
        path = sqlite_file(url)
        location = quote(str(path.resolve()))
        shared = os.access(path.parent, os.W_OK) or path.with_name(path.name + "-shm").exists()
        mode = "ro" if shared else "ro&immutable=1"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(f"file:{location}?mode={mode}", uri=True, timeout=60, check_same_thread=False)

        return {"creator": connect}

    def prepare(self, url: str) -> None:
        """WAL mode (persistent in the file), set before any pool holds the file. Switching needs
        the file to itself, and SQLite answers "locked" at once (not after its busy timeout) when
        another process starting at the same moment holds it: that is waited out."""
        path = sqlite_file(url)

        def switch_to_wal() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(path, timeout=60)) as connection:
                if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    connection.execute("PRAGMA journal_mode=WAL")

        try:
            retrying(switch_to_wal, "open", retry_if=lambda e: "locked" in str(e), errors=(sqlite3.OperationalError,))()
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open SQLite file {path}: {e}; check the path and its permissions") from None

    def opened(self, engine: Any) -> None:
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

    @contextmanager
    def lock(self, url: str, study_name: str) -> Iterator[HeldLock]:
        """A file lock beside the database."""
        path = sqlite_file(url)
        with open(path.with_name(path.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield HeldLock()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def exists(self, url: str) -> bool:
        return sqlite_file(url).is_file()


def advisory_lock_key(study_name: str) -> int:
    """The PostgreSQL advisory lock that stands for ``study_name``'s study lock."""
    return zlib.crc32(f"hpo:{study_name}".encode())


@STORAGES.register("postgresql")
class PostgreSQL(Backend):
    """A server many machines share: bounded, pre-pinged pools (a restarted server is
    reconnected to), an advisory lock per study, read-only transactions for reading commands."""

    def engine_kwargs(self, url: str, read_only: bool) -> dict[str, Any]:
        # Bounded: every worker holds at most 3 connections (trial loop, heartbeat, sweeper).
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 1,
                                  "pool_timeout": 60, "pool_recycle": 1800}
        if read_only:
            kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
        return kwargs

    @contextmanager
    def lock(self, url: str, study_name: str) -> Iterator[HeldLock]:
        held, key = HeldLock(), advisory_lock_key(study_name)
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
                    # The server ended the session (a restart) and the lock with it; what the
                    # block did is committed. The caller checks what may have interleaved.
                    held.lost = True
                    log.warning("study lock lost with its database connection: %s", database_reason(e))
                finally:
                    connection.close()
        finally:
            engine.dispose()


@STORAGES.register("mysql")
class MySQL(Backend):
    """A server many machines share, pooled as PostgreSQL is. No study lock: creating a study,
    claiming a place in the budget and seeding are not serialised across processes (use
    PostgreSQL for many workers)."""

    engine_kwargs = PostgreSQL.engine_kwargs
