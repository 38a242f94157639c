"""The agent's one SQLite database (``<data_dir>/edge.db``): WAL, full fsync, one transaction per state change.

Every component (index, pipeline, receipts, outbox) keeps its tables here, so that a state change and the
receipt or outbox row it causes commit together. Each component declares its schema as a list of migrations;
:func:`migrate` applies the ones not yet applied, each in its own transaction.

The database holds patient data: it is created 0600 in a directory created 0700, whatever the umask, and SQLite
gives its ``-wal`` and ``-shm`` files the database file's mode.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from runtime.durable import PRIVATE, make_dirs

__all__ = ["DB_FILENAME", "connect", "has_table", "migrate", "transaction"]

DB_FILENAME = "edge.db"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database with the pragmas every connection needs.

    ``synchronous=FULL`` in WAL mode makes every commit durable across power loss, which an acknowledged
    image or a signed receipt needs. Connections are in autocommit mode; use :func:`transaction`.
    """
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30.0, check_same_thread=False
        )
    else:
        make_dirs(path.parent)
        # Created here, private, before SQLite would create it 0644 less the umask; -wal and -shm follow its mode.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE.file))
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def has_table(conn: sqlite3.Connection, table: str) -> bool:
    """Whether ``table`` exists (a component that never ran on this box has not created its tables)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return row is not None


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run a block in one ``BEGIN IMMEDIATE`` transaction; commit on success, roll back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[str]) -> None:
    """Apply the migrations of ``component`` not yet applied, in order.

    ``migrations[i]`` is a script of one or more SQL statements that brings the schema to version ``i + 1``.
    Migrations are append-only: never edit one that has shipped.
    """
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
    current = int(row[0]) if row else 0
    for version, script in enumerate(migrations[current:], start=current + 1):
        quoted = component.replace("'", "''")
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script};\n"
                f"INSERT INTO schema_version (component, version) VALUES ('{quoted}', {version}) "
                "ON CONFLICT(component) DO UPDATE SET version = excluded.version;\nCOMMIT;"
            )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
