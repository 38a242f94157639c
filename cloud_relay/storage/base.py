"""The storage interface: a database that runs portable SQL in transactions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

__all__ = ["Database", "Row", "Tx"]

Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction. SQL uses ``?`` placeholders; rows are plain tuples."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """All rows of a query."""

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per row of parameters (one round trip where the driver can)."""

    def lock_devices(self, devices: Sequence[str]) -> None:
        """Hold per-device locks until the transaction ends (writers of one chain serialise); sorted input."""


class Database(Protocol):
    """A relay database: SQLite or PostgreSQL."""

    dialect: str
    """``"sqlite"`` or ``"postgresql"`` (for the few DDL differences in the schema)."""

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """A transaction: committed (durably) when the block exits normally, rolled back otherwise.

        Failures of the database itself raise :class:`~cloud_relay.errors.StorageUnavailable`; a constraint
        violation raises :class:`~cloud_relay.errors.StorageError`.
        """

    def close(self) -> None:
        """Close the connection."""


def split_statements(script: str) -> Iterator[str]:
    """The statements of a ``;``-separated DDL script (no ``;`` inside literals in our schema)."""
    for part in script.split(";"):
        if part.strip():
            yield part.strip()
