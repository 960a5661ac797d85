"""Storage URLs, the Optuna storage behind them, and the study with its fold plan.

The only module that knows storage URLs and SQLAlchemy. Errors become one-line StorageErrors
with the password masked.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import optuna
from dotenv import load_dotenv
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hpo.config import StudySpec
from hpo.data.table import ImageTable
from hpo.errors import DataError, StorageError

ENV_STORAGE = "HPO_STORAGE"
ATTR_PLAN, ATTR_FINGERPRINT, ATTR_CV, ATTR_SPEC = "fold_plan", "data_fingerprint", "cv", "spec"


def resolve_url(url: str | None, spec: StudySpec) -> str:
    """``--storage``, else ``HPO_STORAGE`` (environment or ./.env), else a SQLite file in the
    study's output folder."""
    load_dotenv(Path.cwd() / ".env", override=False)
    url = url or os.environ.get(ENV_STORAGE)
    if url:
        return url
    return f"sqlite:///{spec.outputs / f'{spec.name}.db'}"


def redact(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable storage URL>"


def _sqlite_wal(path: Path) -> None:
    """Put the SQLite file in WAL mode (persistent in the file), before any pool holds it: WAL
    lets readers (the dashboard) work beside writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with closing(sqlite3.connect(path, timeout=60)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise StorageError(
            f"cannot open SQLite file {path}: {e}; check the path and its permissions"
        ) from None


def open_storage(url: str) -> optuna.storages.BaseStorage:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(
            f"cannot parse storage URL {redact(url)!r}; use sqlite:///path.db or"
            " postgresql+psycopg://user@host/db"
        ) from None
    engine_kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": 60}}
        if parsed.database and parsed.database != ":memory:":
            _sqlite_wal(Path(parsed.database).expanduser())
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except (SQLAlchemyError, ImportError, OSError) as e:
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise StorageError(
            f"cannot open storage {redact(url)}: {reason}; check --storage / {ENV_STORAGE} and that"
            " the database is reachable"
        ) from None


def open_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, table: ImageTable, plan: np.ndarray
) -> tuple[optuna.Study, np.ndarray]:
    """Create the study (or load it) with its fold plan; return the plan every trial must use.

    A study remembers its data fingerprint and folds: a resume on changed data or a different
    cv section is refused rather than silently comparing trials trained on different splits.
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
    if ATTR_PLAN not in attrs:
        study.set_user_attr(ATTR_FINGERPRINT, table.fingerprint())
        study.set_user_attr(ATTR_CV, cv)
        study.set_user_attr(ATTR_SPEC, spec.raw)
        study.set_user_attr(ATTR_PLAN, plan.tolist())  # last: its presence marks a complete setup
        return study, plan
    if attrs.get(ATTR_FINGERPRINT) != table.fingerprint():
        raise DataError(
            f"the data differs from the data study {spec.name!r} was created with (fingerprint"
            f" {table.fingerprint()} != {attrs.get(ATTR_FINGERPRINT)}); restore that data or use a"
            " new study name (--set name=...)"
        )
    if attrs.get(ATTR_CV) != cv:
        raise DataError(
            f"study {spec.name!r} was created with cv {attrs.get(ATTR_CV)}, not {cv}; restore the"
            " cv section or use a new study name (--set name=...)"
        )
    return study, np.asarray(attrs[ATTR_PLAN], dtype=np.int64)
