"""The embedded backend: one SQLite file in WAL mode with ``synchronous=FULL`` (a commit survives power loss)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cloud_relay.errors import StorageError, StorageUnavailable
from cloud_relay.storage.base import Row

__all__ = ["SqliteDatabase"]


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self._conn.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self._conn.execute(sql, params).fetchall()]

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._conn.executemany(sql, rows)

    def lock_devices(self, devices: Sequence[str]) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already holds the database's single write lock."""


class SqliteDatabase:
    """A SQLite file shared by the relay's threads (one connection, serialised by a lock) and processes."""

    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=30000")
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"SQLite {self.path}: {exc}") from exc
            try:
                yield _SqliteTx(self._conn)
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise StorageError(f"SQLite {self.path}: {exc}") from exc
                if isinstance(exc, sqlite3.Error):
                    raise StorageUnavailable(f"SQLite {self.path}: {exc}") from exc
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
