"""Storage URLs: where they come from, how they are shown, how failures read."""

from __future__ import annotations

import pytest

from hpo.config import parse_spec
from hpo.errors import StorageError
from hpo.storage import open_storage, redact, resolve_url
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
    with pytest.raises(StorageError, match="cannot parse storage URL"):
        open_storage("not a url")


def test_sqlite_is_created_with_wal(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'deep' / 'er' / 's.db'}")
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
