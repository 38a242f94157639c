"""The production backend: PostgreSQL through psycopg 3 (the same schema and SQL as SQLite)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from cloud_relay.errors import StorageError, StorageUnavailable
from cloud_relay.storage.base import Row

__all__ = ["PostgresDatabase"]


def _pg(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (our SQL has no ``%`` or ``?`` in literals)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgTx:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(_pg(sql), params)
        return self._cur.rowcount

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self._cur.execute(_pg(sql), params)
        row = self._cur.fetchone()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cur.execute(_pg(sql), params)
        return [tuple(r) for r in self._cur.fetchall()]

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(_pg(sql), rows)

    def lock_devices(self, devices: Sequence[str]) -> None:
        if devices:
            self._cur.execute(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(d, 0)))"
                " FROM (SELECT unnest(%s::text[]) AS d ORDER BY 1) AS s",
                (list(devices),),
            )


class PostgresDatabase:
    """One psycopg connection (reconnected after a failure), serialised by a lock across the relay's threads."""

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                self._conn = None
                raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        with self._lock:
            conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield _PgTx(cur)
            except psycopg.IntegrityError as exc:
                raise StorageError(f"PostgreSQL: {exc}") from exc
            except psycopg.Error as exc:
                if conn.broken:
                    self._conn = None
                raise StorageUnavailable(f"PostgreSQL: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
