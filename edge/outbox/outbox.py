"""The durable outbox: everything the box owes the cloud relay, in the agent database (component ``outbox``).

Kinds and priority classes (lower is sent first; the one table is :mod:`edge.outbox.kinds`)::

    certificate, settlements, receipts   0  accounting: never evicted, never dropped
    results                              1  results summaries (counts, timings; never patient data)
    offers                               2  capacity offers
    health                               3  health reports (outbox depth, drop counters, link state)

Telemetry (classes above 0) is bounded by ``[outbox] max_telemetry_items``: queuing beyond it drops the oldest
pending telemetry items first, in the same transaction, and adds them to a per-kind drop counter that is never
reset; health reports carry the counters, so the relay learns what was dropped.

An item's life: ``pending`` until the relay's application acknowledgement lists its id as stored -> ``done`` (the
broker's PUBACK is not enough), or rejects it permanently -> ``rejected`` with the reason (kept for a technician,
not resent; ``btt-edge outbox requeue`` makes it pending again). A transient rejection or no answer leaves it
``pending``: it is sent again, and the relay de-duplicates on the item id, so resending is always safe. Item ids are
stable and unique per device: receipts ``receipt:<seq>:<signature prefix>``, settlements
``settlement:<batch>:<signature prefix>``, the certificate ``certificate:<hash prefix>``, telemetry ``<kind>:<random
hex>``.

Callers queue inside their own transaction (``enqueue`` joins it), so an item commits with the state change
that caused it; receipts and settlements come in through :mod:`edge.outbox.feed`.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from edge.config import AgentConfig, OutboxConfig
from edge.db import DB_FILENAME, connect, has_table, migrate, transaction
from edge.errors import OutboxError
from edge.outbox.kinds import KEPT, NAMES, TELEMETRY, OutboxKind, spec
from protocol.clock import now_ms

__all__ = [
    "COMPONENT",
    "MAX_BODY_BYTES",
    "MIGRATIONS",
    "Item",
    "Outbox",
    "Rejection",
    "Settled",
]

COMPONENT = "outbox"
MIGRATIONS = [
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        item TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'rejected')),
        settled_ms INTEGER,
        reason TEXT
    );
    CREATE INDEX outbox_pending ON outbox (state, priority, id);
    CREATE TABLE outbox_marks (source TEXT PRIMARY KEY, mark INTEGER NOT NULL);
    CREATE TABLE outbox_dropped (kind TEXT PRIMARY KEY, count INTEGER NOT NULL)
    """,
]

MAX_BODY_BYTES = 512 * 1024
"""Largest body one item may have (it must fit one MQTT message with room to spare)."""
_CHUNK = 500


@dataclass(frozen=True)
class Item:
    """A pending item: ``row`` orders it, ``item`` is its id on the wire, ``body`` its JSON text."""

    row: int
    item: str
    kind: str
    body: str


@dataclass(frozen=True)
class Rejection:
    """The relay refused an item; ``permanent`` ones are never resent."""

    item: str
    reason: str
    permanent: bool


@dataclass(frozen=True)
class Settled:
    """What one acknowledgement changed: items newly done and newly rejected."""

    done: int
    rejected: int


class Outbox:
    """The outbox tables behind a small API; every method works on the connection it is given."""

    def __init__(self, config: OutboxConfig, *, clock: Callable[[], int] = now_ms) -> None:
        self._cfg = config
        self._clock = clock

    @staticmethod
    def migrate(conn: sqlite3.Connection) -> None:
        """Create or upgrade the tables."""
        migrate(conn, COMPONENT, MIGRATIONS)

    @classmethod
    def open(cls, config: AgentConfig) -> Outbox:
        """The agent's outbox, its tables created or upgraded in ``<data_dir>/edge.db``."""
        conn = connect(config.agent.data_dir / DB_FILENAME)
        try:
            cls.migrate(conn)
        finally:
            conn.close()
        return cls(config.outbox)

    # --- queuing ----------------------------------------------------------------------------------------

    def enqueue(
        self, conn: sqlite3.Connection, kind: OutboxKind, body: Mapping[str, Any], *, item: str | None = None
    ) -> bool:
        """Queue ``body`` (a JSON object, never patient data) as ``kind``; joins the caller's open transaction.

        ``item`` is a stable id (the default is a random one). Returns False when an item with this id is
        already queued (or was delivered): queuing is idempotent. Raises :class:`OutboxError` for an unknown
        kind or a body that is not JSON or too large; nothing is written then.
        """
        known = spec(kind)
        if known is None:
            raise OutboxError(f"unknown outbox kind {kind!r}; one of {', '.join(NAMES)}")
        priority = known.priority
        if not isinstance(body, Mapping):
            raise OutboxError(f"{kind} item must be a JSON object, got {type(body).__name__}")
        try:
            text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise OutboxError(f"{kind} item is not JSON: {exc}") from exc
        if len(text.encode("utf-8")) > MAX_BODY_BYTES:
            raise OutboxError(f"{kind} item is larger than {MAX_BODY_BYTES} bytes")
        item = item or f"{kind}:{secrets.token_hex(12)}"
        with self._joined(conn):
            cur = conn.execute(
                "INSERT OR IGNORE INTO outbox (item, kind, priority, body, created_ms) VALUES (?, ?, ?, ?, ?)",
                (item, kind, priority, text, self._clock()),
            )
            if cur.rowcount and priority > 0:
                self._evict(conn)
        return bool(cur.rowcount)

    def _evict(self, conn: sqlite3.Connection) -> None:
        excess = self._telemetry_pending(conn) - self._cfg.max_telemetry_items
        if excess <= 0:
            return
        marks = ",".join("?" * len(TELEMETRY))
        victims = conn.execute(
            f"SELECT id, kind FROM outbox WHERE state = 'pending' AND kind IN ({marks}) ORDER BY id LIMIT ?",
            (*TELEMETRY, excess),
        ).fetchall()
        for row in victims:
            conn.execute("DELETE FROM outbox WHERE id = ?", (row["id"],))
            conn.execute(
                "INSERT INTO outbox_dropped (kind, count) VALUES (?, 1)"
                " ON CONFLICT(kind) DO UPDATE SET count = count + 1",
                (row["kind"],),
            )

    @staticmethod
    def _telemetry_pending(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending' AND priority > 0").fetchone()[0])

    @staticmethod
    def _joined(conn: sqlite3.Connection) -> AbstractContextManager[sqlite3.Connection]:
        return nullcontext(conn) if conn.in_transaction else transaction(conn)

    # --- feed marks (edge.outbox.feed) ---------------------------------------------------------------------

    @staticmethod
    def mark(conn: sqlite3.Connection, source: str) -> int:
        """How far ``source`` has been copied into the outbox (0 = not at all)."""
        row = conn.execute("SELECT mark FROM outbox_marks WHERE source = ?", (source,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def set_mark(conn: sqlite3.Connection, source: str, mark: int) -> None:
        """Record that ``source`` is copied up to ``mark`` (inside the transaction that copied it)."""
        conn.execute(
            "INSERT INTO outbox_marks (source, mark) VALUES (?, ?) ON CONFLICT(source) DO UPDATE SET mark = ?",
            (source, mark, mark),
        )

    # --- sending ----------------------------------------------------------------------------------------

    @staticmethod
    def pending(conn: sqlite3.Connection, limit: int, *, skip: Collection[int] = ()) -> list[Item]:
        """Up to ``limit`` pending items in send order (class, then age), leaving out the rows in ``skip``."""
        rows = conn.execute(
            "SELECT id, item, kind, body FROM outbox WHERE state = 'pending' ORDER BY priority, id LIMIT ?",
            (limit + len(skip),),
        ).fetchall()
        return [Item(r["id"], r["item"], r["kind"], r["body"]) for r in rows if r["id"] not in skip][:limit]

    def settle(self, conn: sqlite3.Connection, stored: Iterable[str], rejected: Iterable[Rejection] = ()) -> Settled:
        """Apply one acknowledgement from the relay in one transaction; ids not pending are ignored."""
        now = self._clock()
        done = refused = 0
        with transaction(conn):
            for chunk in _chunks(list(stored)):
                cur = conn.execute(
                    "UPDATE outbox SET state = 'done', settled_ms = ?"
                    f" WHERE state = 'pending' AND item IN ({','.join('?' * len(chunk))})",
                    (now, *chunk),
                )
                done += cur.rowcount
            for rejection in rejected:
                if rejection.permanent:
                    cur = conn.execute(
                        "UPDATE outbox SET state = 'rejected', settled_ms = ?, reason = ?"
                        " WHERE state = 'pending' AND item = ?",
                        (now, rejection.reason[:1000], rejection.item),
                    )
                    refused += cur.rowcount
        return Settled(done, refused)

    @staticmethod
    def requeue(conn: sqlite3.Connection, items: Iterable[str] | None = None) -> int:
        """Make rejected items pending again (all of them when ``items`` is None), e.g. once the relay is fixed."""
        with transaction(conn):
            if items is None:
                cur = conn.execute("UPDATE outbox SET state = 'pending', settled_ms = NULL WHERE state = 'rejected'")
                return cur.rowcount
            count = 0
            for item in items:
                cur = conn.execute(
                    "UPDATE outbox SET state = 'pending', settled_ms = NULL WHERE state = 'rejected' AND item = ?",
                    (item,),
                )
                count += cur.rowcount
        return count

    @staticmethod
    def rejected(conn: sqlite3.Connection, limit: int = 100) -> list[tuple[str, str, str]]:
        """The most recently rejected items as (item, kind, reason)."""
        rows = conn.execute(
            "SELECT item, kind, reason FROM outbox WHERE state = 'rejected' ORDER BY settled_ms DESC, id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [(r["item"], r["kind"], r["reason"] or "") for r in rows]

    def prune(self, conn: sqlite3.Connection) -> int:
        """Delete items acknowledged more than ``keep_done_days`` ago (the ``kept`` kinds' rows stay: the
        certificate)."""
        cutoff = self._clock() - int(self._cfg.keep_done_days * 86_400_000)
        kept = sorted(KEPT)
        with transaction(conn):
            cur = conn.execute(
                "DELETE FROM outbox WHERE state = 'done' AND settled_ms < ?"
                f" AND kind NOT IN ({','.join('?' * len(kept))})",
                (cutoff, *kept),
            )
        return cur.rowcount

    # --- reporting --------------------------------------------------------------------------------------

    def stats(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """Pending items per kind, the age of the oldest, items rejected, and the drop counters."""
        pending = {
            r["kind"]: int(r["n"])
            for r in conn.execute("SELECT kind, count(*) AS n FROM outbox WHERE state = 'pending' GROUP BY kind")
        }
        oldest = conn.execute("SELECT min(created_ms) FROM outbox WHERE state = 'pending'").fetchone()[0]
        rejected = conn.execute("SELECT count(*) FROM outbox WHERE state = 'rejected'").fetchone()[0]
        dropped = {r["kind"]: int(r["count"]) for r in conn.execute("SELECT kind, count FROM outbox_dropped")}
        return {
            "pending": pending,
            "oldest_pending_age_s": 0 if oldest is None else max(0, (self._clock() - int(oldest)) // 1000),
            "rejected": int(rejected),
            "dropped": dropped,
        }

    @staticmethod
    def state(conn: sqlite3.Connection, item: str) -> str | None:
        """``pending``, ``done`` or ``rejected``; None for an unknown (or pruned) item."""
        row = conn.execute("SELECT state FROM outbox WHERE item = ?", (item,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def present(conn: sqlite3.Connection) -> bool:
        """Whether the outbox's tables exist on this box."""
        return has_table(conn, "outbox")

    @staticmethod
    def state_of_prefix(conn: sqlite3.Connection, prefix: str) -> str | None:
        """:meth:`state` of an item whose id starts with ``prefix`` (``settlement:7:``); None when none has."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        row = conn.execute("SELECT state FROM outbox WHERE item LIKE ? ESCAPE '\\'", (escaped + "%",)).fetchone()
        return None if row is None else str(row[0])


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
