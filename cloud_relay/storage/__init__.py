"""Relay storage: one portable SQL schema behind a small interface, on SQLite (embedded) or PostgreSQL.

:class:`Database` is the whole interface the rest of the relay uses: :meth:`Database.transaction` yields a
:class:`Tx` with ``execute``/``execute_many``/``one``/``all`` over SQL written with ``?`` placeholders in the
common subset of SQLite and PostgreSQL (``INSERT ... ON CONFLICT DO NOTHING``, ``VALUES`` lists), plus
``lock_devices`` to serialise writers of one device's chain. :func:`open_database` picks the backend from the
URL: a file path (or ``sqlite:///path``) is SQLite, ``postgresql://...`` is PostgreSQL (psycopg 3). Both run the
same migrations (:mod:`cloud_relay.storage.schema`) and the same test suite.
"""

from __future__ import annotations

from cloud_relay.storage.base import Database, Row, Tx
from cloud_relay.storage.schema import migrate

__all__ = ["Database", "Row", "Tx", "migrate", "open_database"]


def open_database(url: str) -> Database:
    """Open (and migrate) the database at ``url``."""
    if url.startswith(("postgresql://", "postgres://")):
        from cloud_relay.storage.postgres import PostgresDatabase

        db: Database = PostgresDatabase(url)
    else:
        from cloud_relay.storage.sqlite import SqliteDatabase

        db = SqliteDatabase(url.removeprefix("sqlite://"))
    migrate(db)
    return db
