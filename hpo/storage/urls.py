"""Storage URLs: where they come from, what makes one unusable, and how they are shown."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from hpo.errors import StorageError
from hpo.settings import STORAGE as ENV_STORAGE
from hpo.settings import settings


def resolve_url(url: str | None, default: str | Path | None = None) -> str:
    """``--storage``, else ``HPO_STORAGE`` (the environment, or ./.env loaded by the command
    line), else a SQLite file at ``default`` (the study's output folder); checked
    (:func:`check_url`) before anything uses it."""
    url = url or settings().storage
    if not url:
        if default is None:
            raise StorageError(f"no storage given; pass --storage URL or set {ENV_STORAGE}")
        url = f"sqlite:///{default}"
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


def scheme(url: str) -> str:
    """The database a URL names (sqlite, postgresql, mysql...), the key of hpo.storage.STORAGES."""
    return check_url(url).get_backend_name()


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_file(url: str) -> Path:
    """The database file of a SQLite URL that :func:`check_url` accepted."""
    return Path(check_url(url).database or "").expanduser()


def writable(url: str) -> bool:
    """Whether this process may write to the study's database (SQLite: the file and its
    folder); a server's permissions are known only when it answers."""
    if not is_sqlite(url):
        return True
    path = sqlite_file(url)
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
