"""The files behind store URLs (Optuna's ``sqlite:///PATH`` and ``journal:PATH``, MLflow's
``sqlite:///PATH``), whether an MLflow SQLite file is whole, which program's tables a
database holds, and the inter-process locks under which a store is created. Shared by one
run's tracking, the sweep's studies and kdsweep-report, so it belongs to none of them."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kdsweep.core.errors import KdsweepError
from kdsweep.core.files import file_lock

T = TypeVar("T")

JOURNAL_PREFIX = "journal:"
# A SQLite store modified this recently may be one another worker is creating (its
# temporary migration tables come and go): only an older one is called half-created.
CREATION_WINDOW_S = 60.0
# Tables that say whose a database is: Optuna's RDB storage and MLflow's tracking store.
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
MLFLOW_TABLES = frozenset({"experiments", "runs", "metrics"})
#: The longest kdsweep waits for a database server to accept a connection: a server that
#: does not answer is one line within seconds, never minutes of a driver's retries.
CONNECT_TIMEOUT_S = 5
#: PostgreSQL's advisory lock held while a program creates its tables in a database: above
#: every crc32 (the keys of the study locks), so that no study name shares it.
CREATION_LOCK_KEY = 2**32


def attempt(call: Callable[[], T]) -> tuple[T | None, Exception | None]:
    """``call()``'s result and None, or None and what it raised. The one place kdsweep
    catches whatever a call raises, for code it does not own whose errors share no base
    class: a store's client (MLflow's own errors, a server's through requests, a database
    driver's, an artifact store's: boto's, ...) and the user's own code (the callable a
    ``_target_`` names, a network's forward, a loss, what torch's tracers make of them).
    The caller decides what the error means. A KdsweepError (already a line for the user)
    and an interrupt pass."""
    try:
        return call(), None
    except KdsweepError:
        raise
    except Exception as exc:
        return None, exc


def journal_file(url: str) -> Path | None:
    return Path(url[len(JOURNAL_PREFIX) :]).expanduser() if url.startswith(JOURNAL_PREFIX) else None


def storage_file(url: str) -> Path | None:
    """The file behind a ``sqlite:///PATH`` or ``journal:PATH`` storage URL; None for a
    server, an in-memory database or a URL that names no file."""
    journal = journal_file(url)
    if journal is not None:
        return journal
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except (ArgumentError, ValueError):
        return None
    return Path(database) if database and database != ":memory:" else None


def sqlite_tables(path: Path) -> set[str]:
    """The tables of a SQLite file, read without writing (the file is opened read-only)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def database_tables(url: str, timeout_s: int = CONNECT_TIMEOUT_S) -> set[str]:
    """The tables of the database behind a SQLAlchemy URL, read without writing: a SQLite
    file read-only, a server through SQLAlchemy's inspector (``timeout_s`` to connect)."""
    path = storage_file(url)
    if path is not None:
        return sqlite_tables(path)
    import sqlalchemy

    engine = server_engine(url, timeout_s)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def server_engine(url: str, timeout_s: int = CONNECT_TIMEOUT_S) -> Any:
    """A SQLAlchemy engine for a database server that gives up connecting after
    ``timeout_s`` (PostgreSQL's ``connect_timeout``), with no pool kept."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    connect_args = {"connect_timeout": timeout_s} if url.startswith("postgresql") else {}
    return sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)


@contextlib.contextmanager
def advisory_lock(engine: Any, key: int) -> Iterator[None]:
    """PostgreSQL's session advisory lock ``key``, taken on a connection of ``engine`` and
    held while the block runs: the lock of every process that uses this database."""
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Held while a program creates (or migrates) its tables in the store behind ``url``,
    so that processes started together on a new store never run the migrations twice at
    once (MLflow's then fail with "Online migration expected to match one row" and leave
    the store half-migrated; Optuna's with "table already exists"). A file lock beside a
    SQLite file; a PostgreSQL advisory lock for a server; none elsewhere (a journal file,
    an in-memory database, a server of another kind)."""
    path = storage_file(url)
    if path is not None and path.parent.is_dir() and not os.access(path.parent, os.W_OK):
        # SQLite writes its journal beside the file: in a read-only folder nobody can
        # create or migrate the store, and a reader must not fail making a lock file.
        yield
    elif path is not None:
        with file_lock(path.with_name(path.name + ".lock.init")):
            yield
    elif url.startswith("postgresql"):
        engine = server_engine(url)
        try:
            with advisory_lock(engine, CREATION_LOCK_KEY):
                yield
        finally:
            engine.dispose()
    else:
        yield


#: A store's kind (existing_store_kind) as a refusal names it.
WHOSE = {
    "optuna": "an Optuna storage (a sweep's hydra.sweeper.storage)",
    "mlflow": "an MLflow tracking database",
    "empty": "an empty database",
    "other": "another program's database",
}


def existing_store_kind(url: str) -> str | None:
    """Whose tables the store at ``url`` holds: "optuna", "mlflow", "empty" or "other",
    read without writing; None for one not made yet (a missing or empty file) and for a
    journal file. Every check of whose store a URL names starts here; the driver's own
    errors pass."""
    path = storage_file(url)
    if journal_file(url) is not None or (
        path is not None and (not path.is_file() or path.stat().st_size == 0)
    ):
        return None
    tables = database_tables(url)
    if tables >= OPTUNA_TABLES:
        return "optuna"
    if tables >= MLFLOW_TABLES:
        return "mlflow"
    return "empty" if not tables else "other"


def half_created_sqlite(uri: str) -> str | None:
    """The one line for a SQLite MLflow store that an earlier start left half-created (a
    full disk or a kill while MLflow created its tables: "table _alembic_tmp_experiments
    already exists" in every later run), or one that is not a database; None if the file
    is missing (MLflow creates it), empty or whole. Read-only: the file is not changed."""
    import sqlite3

    path = storage_file(uri)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return None
    if time.time() - path.stat().st_mtime < CREATION_WINDOW_S:
        return None  # another process may be creating it right now: leave it to MLflow
    fix = f"move it aside (mv {path} {path}.broken) and rerun: MLflow creates a new one"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            version = (
                db.execute("SELECT version_num FROM alembic_version").fetchall()
                if "alembic_version" in tables
                else []
            )
    except sqlite3.Error as exc:
        return f"tracking.uri={uri}: {path} is not a usable SQLite database ({exc}): {fix}"
    leftover = sorted(t for t in tables if t.startswith("_alembic_tmp"))
    if leftover:
        return (
            f"tracking.uri={uri}: the MLflow database {path} is half-created (an interrupted"
            f" schema migration left {leftover[0]}): {fix}"
        )
    if tables and not version:
        return (
            f"tracking.uri={uri}: the MLflow database {path} has a partial schema"
            f" (no alembic version: its creation was interrupted): {fix}"
        )
    return None
