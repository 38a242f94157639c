"""The capacity component's durable state in the agent database (component ``capacity``).

Tables::

    capacity_state   key TEXT PK, value TEXT          the run-time switch (``enabled``), the measured score
    capacity_offers  offer_id PK, envelope, made_ms, expires_ms, withdrawn_ms, reason
    capacity_jobs    job_id PK, envelope, state, reason, items, device_ms, updated_ms
                     state: accepted -> running -> done | failed | rejected | preempted

``btt-edge capacity enable|disable`` writes the switch here; the running agent reads it every turn, so the switch
works without a restart and survives one.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from edge.db import has_table, migrate, transaction
from protocol.clock import now_ms

__all__ = [
    "COMPONENT",
    "MIGRATIONS",
    "CapacityStatus",
    "JobLine",
    "JobTotals",
    "capacity_present",
    "get_value",
    "jobs",
    "migrate_capacity",
    "open_offer",
    "set_value",
    "status",
    "switch",
]

COMPONENT = "capacity"
MIGRATIONS = [
    """
    CREATE TABLE capacity_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE capacity_offers (
        offer_id TEXT PRIMARY KEY, envelope TEXT NOT NULL, made_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        withdrawn_ms INTEGER, reason TEXT
    );
    CREATE TABLE capacity_jobs (
        job_id TEXT PRIMARY KEY, envelope TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
        items INTEGER NOT NULL DEFAULT 0, device_ms INTEGER NOT NULL DEFAULT 0, updated_ms INTEGER NOT NULL
    )
    """
]


def migrate_capacity(conn: sqlite3.Connection) -> None:
    """Create or upgrade the tables."""
    migrate(conn, COMPONENT, MIGRATIONS)


def get_value(conn: sqlite3.Connection, key: str) -> Any:
    """The JSON value stored under ``key``, None when unset."""
    row = conn.execute("SELECT value FROM capacity_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])


def set_value(conn: sqlite3.Connection, key: str, value: Any) -> None:
    """Store ``value`` under ``key`` (joins the caller's transaction, else commits its own)."""
    sql = "INSERT INTO capacity_state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    if conn.in_transaction:
        conn.execute(sql, (key, json.dumps(value)))
    else:
        with transaction(conn):
            conn.execute(sql, (key, json.dumps(value)))


def switch(conn: sqlite3.Connection, default: bool) -> bool:
    """Whether sharing is on: the run-time switch when set, else the configured default."""
    value = get_value(conn, "enabled")
    return default if value is None else bool(value)


def open_offer(conn: sqlite3.Connection, now: int | None = None) -> dict[str, Any] | None:
    """The newest offer not withdrawn and not expired (its envelope), or None."""
    row = conn.execute(
        "SELECT envelope FROM capacity_offers WHERE withdrawn_ms IS NULL AND expires_ms > ? "
        "ORDER BY made_ms DESC LIMIT 1",
        (now_ms() if now is None else now,),
    ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


@dataclass(frozen=True)
class JobLine:
    """One job of the recent-jobs list."""

    job_id: str
    state: str
    reason: str
    items: int
    device_ms: int
    updated_ms: int


def jobs(conn: sqlite3.Connection, limit: int = 20) -> list[JobLine]:
    """The most recent jobs, newest first."""
    rows = conn.execute(
        "SELECT job_id, state, reason, items, device_ms, updated_ms FROM capacity_jobs "
        "ORDER BY updated_ms DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [JobLine(*row) for row in rows]


@dataclass(frozen=True)
class JobTotals:
    """The jobs done: how many, their items and the device time they took."""

    jobs_done: int
    items: int
    device_s: float


@dataclass(frozen=True)
class CapacityStatus:
    """What ``btt-edge capacity status`` and the control socket show (``to_json()`` is their JSON)."""

    enabled: bool
    switch: str
    """``config`` (``[capacity] enabled``) or ``btt-edge capacity`` (the switch a technician set)."""
    decision: dict[str, Any] | None
    """The policy's last decision (``offer``, ``reason``), as the service stored it."""
    accelerator: dict[str, Any] | None
    score_mflops: int | None
    offer: dict[str, Any] | None
    """The signed part of the open offer."""
    jobs: list[JobLine]
    totals: JobTotals

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def capacity_present(conn: sqlite3.Connection) -> bool:
    """Whether capacity sharing has created its tables on this box (it has run)."""
    return has_table(conn, "capacity_state")


def status(conn: sqlite3.Connection, default_enabled: bool) -> CapacityStatus:
    """What ``btt-edge capacity status`` and the control API show: switch, last policy decision, accelerator,
    score, the open offer, recent jobs and totals."""
    value = get_value(conn, "enabled")
    offer = open_offer(conn)
    done = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(items), 0), COALESCE(SUM(device_ms), 0) FROM capacity_jobs WHERE state = 'done'"
    ).fetchone()
    return CapacityStatus(
        enabled=default_enabled if value is None else bool(value),
        switch="config" if value is None else "btt-edge capacity",
        decision=get_value(conn, "decision"),
        accelerator=get_value(conn, "accelerator"),
        score_mflops=get_value(conn, "score_mflops"),
        offer=None if offer is None else offer["signed"],
        jobs=jobs(conn),
        totals=JobTotals(jobs_done=done[0], items=done[1], device_s=done[2] / 1000),
    )
