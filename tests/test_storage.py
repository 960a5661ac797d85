"""Storage URLs: where they come from, how they are shown, how failures read."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from hpo.config import parse_spec
from hpo.errors import StorageError
from hpo.storage import is_transient, open_storage, redact, resolve_url, stored_spec
from tests.conftest import tiny_study


def test_url_precedence(image_root, tmp_path, monkeypatch):
    spec = parse_spec(tiny_study(image_root, tmp_path))
    monkeypatch.chdir(tmp_path)
    assert resolve_url(None, spec) == f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}"
    (tmp_path / ".env").write_text("HPO_STORAGE=sqlite:///from-dotenv.db\n")
    assert resolve_url(None, spec) == "sqlite:///from-dotenv.db"
    monkeypatch.setenv("HPO_STORAGE", "sqlite:///from-env.db")
    assert resolve_url(None, spec) == "sqlite:///from-env.db"
    assert resolve_url("sqlite:///cli.db", spec) == "sqlite:///cli.db"


def test_passwords_never_shown():
    url = "postgresql+psycopg://alice:s3cret@db.example/hpo"
    assert redact(url) == "postgresql+psycopg://alice:***@db.example/hpo"


def test_unreachable_postgres_is_one_line_without_password():
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
