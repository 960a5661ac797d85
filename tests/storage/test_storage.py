"""Storage URLs: where they come from, how they are shown, how failures read."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

import hpo.storage as storage_module
from hpo.config import parse_spec
from hpo.errors import StorageError
from hpo.settings import load_env
from hpo.storage import (
    MAX_BACKOFF_SECONDS,
    advisory_lock_key,
    database_reason,
    is_transient,
    open_storage,
    redact,
    resolve_url,
    retrying,
    study_lock,
)
from hpo.study import storage_url, stored_spec
from hpo.workers.heartbeat import fail_stale_trials
from tests.conftest import tiny_study


def test_url_precedence(image_root, tmp_path, monkeypatch):
    spec = parse_spec(tiny_study(image_root, tmp_path))
    monkeypatch.chdir(tmp_path)
    assert storage_url(None, spec) == f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}"
    (tmp_path / ".env").write_text("HPO_STORAGE=sqlite:///from-dotenv.db\n")
    monkeypatch.setenv("HPO_STORAGE", "")  # so that the variable load_env sets is removed after the test
    monkeypatch.delenv("HPO_STORAGE")
    load_env()  # as the command line does first thing
    assert storage_url(None, spec) == "sqlite:///from-dotenv.db"
    monkeypatch.setenv("HPO_STORAGE", "sqlite:///from-env.db")
    assert storage_url(None, spec) == "sqlite:///from-env.db"
    assert storage_url("sqlite:///cli.db", spec) == "sqlite:///cli.db"


def test_passwords_never_shown():
    url = "postgresql+psycopg://alice:s3cret@db.example/hpo"
    assert redact(url) == "postgresql+psycopg://alice:***@db.example/hpo"


def test_unreachable_postgres_is_one_line_without_password(monkeypatch):
    monkeypatch.setattr(storage_module, "CONNECT_RETRY_SECONDS", 0)
    with pytest.raises(StorageError) as info:
        open_storage("postgresql+psycopg://alice:s3cret@127.0.0.1:1/hpo?connect_timeout=3")
    message = str(info.value)
    assert "s3cret" not in message and "alice:***@127.0.0.1:1/hpo" in message
    assert message.startswith("cannot open storage") and "\n" not in message


def test_bad_url_is_a_storage_error():
    with pytest.raises(StorageError, match="cannot parse storage URL '/tmp/plain.db'; use sqlite:///path.db"):
        open_storage("/tmp/plain.db")
    with pytest.raises(StorageError, match="cannot parse storage URL '<unparseable storage URL>'"):
        open_storage("bob:hunter2@db")


def test_sqlite_is_created_with_wal(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'deep' / 'er' / 's.db'}")
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_missing_database_or_refused_login_is_not_retried_a_lost_server_is():
    def connect_error(message: str) -> OperationalError:
        return OperationalError("connect", {}, Exception(message))

    assert not is_transient(connect_error('FATAL:  database "hpo" does not exist'))
    assert not is_transient(connect_error('FATAL:  password authentication failed for user "bob"'))
    assert is_transient(connect_error("connection to server at 127.0.0.1, port 5432 failed: Connection refused"))
    assert is_transient(connect_error("server closed the connection unexpectedly"))


def test_read_only_commands_never_create_a_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'new.db'}"
    with pytest.raises(StorageError, match=r"no study 'tiny' in sqlite:///.*new.db; start it with hpo run first"):
        stored_spec(url, "tiny")
    assert list(tmp_path.iterdir()) == []


def _outage() -> None:
    """A storage call that meets a lost connection once, then succeeds: an outage that ended."""
    attempts = []

    def call() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    retrying(call, "test")()
    assert len(attempts) == 2


def test_no_trial_is_stale_until_a_grace_period_after_an_outage(tmp_path, monkeypatch):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    time.sleep(3)  # the heartbeat is now older than the grace period
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]

    _outage()  # its heartbeat thread could not have reached the database either
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING

    # The grace period and a last backoff have passed since the error.
    monkeypatch.setattr(storage_module.retry, "_last_transient_error", time.monotonic() - 2 - MAX_BACKOFF_SECONDS - 1)
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL


def test_losing_the_study_lock_with_its_connection_does_not_fail_the_locked_step(postgres_url, request):
    from sqlalchemy import create_engine, text

    admin = create_engine(postgres_url)
    request.addfinalizer(admin.dispose)
    done = []
    with study_lock(postgres_url, "lost-lock") as held:
        with admin.connect() as connection:  # as a server restart does to every session
            ended = connection.execute(text("SELECT pg_terminate_backend(pid, 5000) FROM pg_locks"
                                            " WHERE locktype = 'advisory' AND objid::bigint = :key"),
                                       {"key": advisory_lock_key("lost-lock")}).scalars().all()
        assert ended == [True]
        done.append("claimed")
    assert done == ["claimed"] and held.lost  # the caller can check what may have interleaved
    with study_lock(postgres_url, "lost-lock") as held:  # and the lock can be taken again
        done.append("again")
    assert done == ["claimed", "again"] and not held.lost


def test_waiting_for_the_study_lock_survives_losing_the_connection(postgres_url, request):
    import threading

    from sqlalchemy import create_engine, text

    key = advisory_lock_key("waited-lock")
    admin = create_engine(postgres_url)
    request.addfinalizer(admin.dispose)
    holder = admin.connect()
    holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
    got, errors = [], []

    def wait_for_the_lock() -> None:
        try:
            with study_lock(postgres_url, "waited-lock"):
                got.append("lock")
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    waiter = threading.Thread(target=wait_for_the_lock)
    waiter.start()
    with admin.connect() as connection:  # the restart ends the waiting session
        waiting = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid::bigint = :k AND NOT granted"
        deadline = time.monotonic() + 30
        while not (pids := connection.execute(text(waiting), {"k": key}).scalars().all()):
            assert time.monotonic() < deadline, "the waiter never queued for the lock"
            time.sleep(0.05)
        connection.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pids[0]})
    holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    holder.close()
    waiter.join(timeout=60)
    assert not errors and got == ["lock"]


# ---------------------------------------------------------------------------------------------
# SQLite errors by result code; URLs that cannot work refused before anything is written.


def _sqlite_error(tmp_path, make) -> OperationalError:
    """A real sqlite3 error, wrapped as SQLAlchemy wraps it."""
    import sqlite3

    path = tmp_path / "codes.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS t (x)")
    try:
        make(path)
    except sqlite3.Error as e:
        return OperationalError("statement", {}, e)
    raise AssertionError("no SQLite error was raised")


def test_sqlite_busy_is_retried_its_permanent_errors_are_not(tmp_path):
    import sqlite3

    def locked(path):
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            sqlite3.connect(path, timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
        finally:
            holder.execute("ROLLBACK")

    def no_table(path):
        sqlite3.connect(path).execute("SELECT * FROM trials")

    def read_only(path):
        sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("INSERT INTO t VALUES (1)")

    def not_a_database(path):
        path.write_bytes(b"this is not a database, just text" * 100)
        sqlite3.connect(path).execute("SELECT * FROM t")

    assert is_transient(_sqlite_error(tmp_path, locked))
    for permanent in (no_table, read_only, not_a_database):
        error = _sqlite_error(tmp_path, permanent)
        assert not is_transient(error), error


def test_a_permanent_sqlite_error_fails_at_once_in_one_line(tmp_path):
    import sqlite3

    from hpo.storage import storage_failure

    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    with sqlite3.connect(tmp_path / "s.db") as connection:  # the file loses its tables under the study
        connection.execute("DROP TABLE trials")
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        storage.get_all_trials(study_id)
    assert time.monotonic() - started < 5  # not retried for RETRY_SECONDS
    failure = storage_failure(info.value)
    assert str(failure).startswith("database error, not retried: no such table: trials")
    assert "\n" not in str(failure)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared&uri=true"])
def test_in_memory_sqlite_is_refused_before_anything_runs(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (lambda: open_storage(url), lambda: resolve_url(url)):
        with pytest.raises(StorageError, match="is an in-memory SQLite database, which keeps nothing"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_url_with_two_slashes_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = (r"storage URL 'sqlite://runs/my.db' names no file \(SQLite read 'runs' as a host\); write three"
               r" slashes before a relative path \(sqlite:///runs/my.db\)")
    for call in (lambda: open_storage("sqlite://runs/my.db"), lambda: resolve_url("sqlite://runs/my.db"),
                 lambda: stored_spec("sqlite://runs/my.db", "tiny")):
        with pytest.raises(StorageError, match=message):
            call()
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_storage_writes_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    del study
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix == ".db"}
    reader = open_storage(url, read_only=True)
    assert len(optuna.load_study(study_name="s", storage=reader).trials) == 2
    with pytest.raises(Exception) as info:
        reader.set_study_user_attr(reader.get_study_id_from_name("s"), "note", "x")
    assert database_reason(info.value) == "attempt to write a readonly database"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix == ".db"} == files


def test_workers_racing_to_create_the_schema_all_open_it(tmp_path):
    """A permanent SQLite error is not retried, but losing the race to create Optuna's tables
    (another process created them first: "already exists") is, when opening a storage."""
    import sqlite3

    from hpo.storage import _lost_schema_race

    path = tmp_path / "race.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE trial_heartbeats (x)")
        try:
            connection.execute("CREATE TABLE trial_heartbeats (x)")
        except sqlite3.OperationalError as e:
            error = OperationalError("CREATE TABLE", {}, e)
    assert not is_transient(error) and _lost_schema_race(error)
