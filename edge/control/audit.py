"""The audit log of technician actions, in the agent's database (component ``control``).

Table ``control_audit``: ``id INTEGER PK, requested_at, finished_at, uid INTEGER, pid INTEGER, action, params (JSON),
outcome (requested | ok | refused | failed), detail``. An action is recorded (``requested``, its own transaction)
before it runs and its outcome after (a second transaction), so an action the agent died during still shows.
``uid`` and ``pid`` are the peer's credentials from the socket (``SO_PEERCRED``), not what the client says.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Literal

from edge.db import migrate, transaction
from edge.store.index import utc_now

__all__ = ["Outcome", "finish", "migrate_audit", "recent", "start"]

Outcome = Literal["ok", "refused", "failed"]

_MIGRATIONS = [
    """
    CREATE TABLE control_audit (
        id INTEGER PRIMARY KEY,
        requested_at TEXT NOT NULL,
        finished_at TEXT,
        uid INTEGER,
        pid INTEGER,
        action TEXT NOT NULL,
        params TEXT NOT NULL,
        outcome TEXT NOT NULL DEFAULT 'requested',
        detail TEXT NOT NULL DEFAULT ''
    )
    """,
]


def migrate_audit(conn: sqlite3.Connection) -> None:
    """Create or upgrade the audit table."""
    migrate(conn, "control", _MIGRATIONS)


def start(conn: sqlite3.Connection, action: str, params: dict[str, Any], uid: int | None, pid: int | None) -> int:
    """Record that ``action`` was requested; returns the entry's id."""
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO control_audit (requested_at, uid, pid, action, params) VALUES (?, ?, ?, ?, ?)",
            (utc_now(), uid, pid, action, json.dumps(params, sort_keys=True, default=str)),
        )
    return int(cur.lastrowid or 0)


def finish(conn: sqlite3.Connection, entry: int, outcome: Outcome, detail: str) -> None:
    """Record how the action of ``entry`` ended."""
    with transaction(conn):
        conn.execute(
            "UPDATE control_audit SET finished_at = ?, outcome = ?, detail = ? WHERE id = ?",
            (utc_now(), outcome, detail[:2000], entry),
        )


def recent(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """The latest entries, newest first."""
    rows = conn.execute("SELECT * FROM control_audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [{**dict(r), "params": json.loads(r["params"])} for r in rows]
