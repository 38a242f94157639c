"""The persistent delivery queue in the agent's database: one row per result object and one per delivery.

Schema (component ``results``; times are ISO 8601 UTC except ``next_attempt_at``, epoch seconds)::

    results_objects     object_uid PK (SOP Instance UID), source_sop_uid, study_uid, kind (one of
                        edge.results.kinds), sop_class_uid, transfer_syntax_uid, path (relative to data_dir),
                        size_bytes, sha256 (of what we wrote; empty for an original), created_at
    results_deliveries  (object_uid, destination) PK, state, attempts, next_attempt_at, last_status (DIMSE),
                        last_error, updated_at, sent_at
    results_sources     sop_instance_uid PK: an analysed instance whose results were built (state ``built``)
                        or could not be (``failed``, with the reason); it is not looked at again

A delivery is ``pending`` until the destination confirms it (``sent``; a warning status is kept in
``last_status``), refuses it (``rejected``: a failure status or a SOP class it does not accept, recorded and not
retried), or ``max_attempts`` transient failures pass (``dead``, with the last error). Transient failures
(unreachable, association rejected or aborted, timeouts) wait ``min(backoff_max, initial * 2**(attempts-1))``.
:func:`resend` puts rejected and dead deliveries back to ``pending``.

Every state change is one transaction, committed as soon as the destination has answered, so after a restart
nothing confirmed is sent again; only a crash between the PACS's confirmation and that commit (milliseconds) can
repeat one object, with the same SOP Instance UID, which a PACS treats as the same instance.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, TypeVar, get_args

from edge.db import has_table, migrate, transaction
from edge.errors import StoreError
from edge.results.kinds import NAMES, ResultKind
from edge.store.index import utc_now

__all__ = [
    "DELIVERY_STATES",
    "Delivery",
    "DeliveryState",
    "ObjectStatus",
    "ResultObject",
    "SourceDelivery",
    "backoff_delay",
    "delivery_counts",
    "due",
    "enqueue",
    "failed_sources",
    "list_objects",
    "mark_source",
    "migrate_results",
    "record_failure",
    "record_rejected",
    "record_sent",
    "resend",
    "results_present",
    "source_counts",
    "source_delivered",
    "source_deliveries",
    "study_objects",
    "unbuilt_sources",
    "unqueued_originals",
]

DeliveryState = Literal["pending", "sent", "rejected", "dead"]
DELIVERY_STATES: tuple[DeliveryState, ...] = get_args(DeliveryState)

_MIGRATIONS = [
    """
    CREATE TABLE results_objects (
        object_uid TEXT PRIMARY KEY,
        source_sop_uid TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        kind TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX results_objects_by_source ON results_objects (source_sop_uid);
    CREATE TABLE results_deliveries (
        object_uid TEXT NOT NULL REFERENCES results_objects (object_uid),
        destination TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_status INTEGER,
        last_error TEXT NOT NULL DEFAULT '',
        updated_at TEXT NOT NULL,
        sent_at TEXT,
        PRIMARY KEY (object_uid, destination)
    );
    CREATE INDEX results_due ON results_deliveries (destination, state, next_attempt_at);
    CREATE TABLE results_sources (
        sop_instance_uid TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        at TEXT NOT NULL
    )
    """,
]

_KIND_ORDER = "CASE o.kind " + " ".join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(NAMES)) + f" ELSE {len(NAMES)} END"
"""Send order: the registry's (:data:`edge.results.kinds.KINDS`), the SR first."""


@dataclass(frozen=True)
class ResultObject:
    """One DICOM object to deliver (a result we wrote, or an original image we forward)."""

    object_uid: str
    source_sop_uid: str
    study_uid: str
    kind: ResultKind
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    """Relative to the data directory."""
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Delivery:
    """One object's delivery to one destination."""

    object_uid: str
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str
    updated_at: str
    sent_at: str | None


@dataclass(frozen=True)
class ObjectStatus:
    """A result object with its deliveries (``btt-edge results list``)."""

    object: ResultObject
    created_at: str
    deliveries: tuple[Delivery, ...] = field(default=())


def migrate_results(conn: sqlite3.Connection) -> None:
    """Create or upgrade the queue's tables."""
    migrate(conn, "results", _MIGRATIONS)


def backoff_delay(attempts: int, initial_s: float, max_s: float) -> float:
    """The wait after the ``attempts``-th failed attempt: ``initial_s`` doubling per attempt, capped."""
    return min(max_s, initial_s * 2.0 ** min(max(attempts - 1, 0), 60))


def _in_transaction(conn: sqlite3.Connection) -> None:
    if not conn.in_transaction:
        raise StoreError("the results queue must be changed inside a transaction (edge.db.transaction)")


def enqueue(conn: sqlite3.Connection, obj: ResultObject, destinations: Iterable[str], now: float) -> None:
    """Record ``obj`` and a pending delivery to each destination, inside the caller's transaction.

    Recording the same object again (same UID) adds only deliveries it does not have yet.
    """
    _in_transaction(conn)
    conn.execute(
        "INSERT INTO results_objects (object_uid, source_sop_uid, study_uid, kind, sop_class_uid, "
        "transfer_syntax_uid, path, size_bytes, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (object_uid) DO NOTHING",
        (
            obj.object_uid,
            obj.source_sop_uid,
            obj.study_uid,
            obj.kind,
            obj.sop_class_uid,
            obj.transfer_syntax_uid,
            obj.path,
            obj.size_bytes,
            obj.sha256,
            utc_now(),
        ),
    )
    conn.executemany(
        "INSERT INTO results_deliveries (object_uid, destination, state, attempts, next_attempt_at, updated_at) "
        "VALUES (?, ?, 'pending', 0, ?, ?) ON CONFLICT (object_uid, destination) DO NOTHING",
        [(obj.object_uid, destination, now, utc_now()) for destination in destinations],
    )


def mark_source(
    conn: sqlite3.Connection, sop_instance_uid: str, state: Literal["built", "failed"], reason: str = ""
) -> None:
    """Record that the results of an analysed instance were built (or could not be), in the caller's transaction."""
    _in_transaction(conn)
    conn.execute(
        "INSERT INTO results_sources (sop_instance_uid, state, reason, at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (sop_instance_uid) DO UPDATE SET state = excluded.state, reason = excluded.reason, "
        "at = excluded.at",
        (sop_instance_uid, state, reason, utc_now()),
    )


def failed_sources(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """``(sop_instance_uid, reason, at)`` of every analysed instance whose results could not be built."""
    rows = conn.execute(
        "SELECT sop_instance_uid, reason, at FROM results_sources WHERE state = 'failed' ORDER BY at"
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def unbuilt_sources(conn: sqlite3.Connection, limit: int = 16, since: str = "") -> list[tuple[str, str]]:
    """``(sop_instance_uid, received_at)`` of analysed instances received at or after ``since`` whose results are
    not built yet, oldest first (the index on state and receipt time keeps this cheap with a recent ``since``)."""
    rows = conn.execute(
        "SELECT i.sop_instance_uid, i.received_at FROM instances i WHERE i.pipeline_state = 'analysed' "
        "AND i.received_at >= ? AND NOT EXISTS "
        "(SELECT 1 FROM results_sources s WHERE s.sop_instance_uid = i.sop_instance_uid) "
        "ORDER BY i.received_at, i.sop_instance_uid LIMIT ?",
        (since, limit),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def unqueued_originals(conn: sqlite3.Connection, limit: int = 16) -> list[str]:
    """Received instances (pixels still on disk) not yet queued for forwarding as originals, oldest first."""
    rows = conn.execute(
        "SELECT i.sop_instance_uid FROM instances i WHERE i.pixels_pruned_at IS NULL AND NOT EXISTS "
        "(SELECT 1 FROM results_objects o WHERE o.object_uid = i.sop_instance_uid) "
        "ORDER BY i.received_at, i.sop_instance_uid LIMIT ?",
        (limit,),
    ).fetchall()
    return [r[0] for r in rows]


_Row = TypeVar("_Row", ResultObject, Delivery)


def _from_row(cls: type[_Row], row: sqlite3.Row) -> _Row:
    """The dataclass whose fields are the row's columns of the same names."""
    return cls(**{f.name: row[f.name] for f in fields(cls)})


def due(conn: sqlite3.Connection, destination: str, now: float, limit: int) -> list[ResultObject]:
    """Objects with a pending delivery to ``destination`` whose time has come: SRs first, then oldest first."""
    rows = conn.execute(
        "SELECT o.* FROM results_deliveries d JOIN results_objects o ON o.object_uid = d.object_uid "
        "WHERE d.destination = ? AND d.state = 'pending' AND d.next_attempt_at <= ? "
        f"ORDER BY {_KIND_ORDER}, o.created_at, o.object_uid LIMIT ?",
        (destination, now, limit),
    ).fetchall()
    return [_from_row(ResultObject, r) for r in rows]


def _update(conn: sqlite3.Connection, object_uid: str, destination: str, sql: str, *values: object) -> None:
    cursor = conn.execute(
        f"UPDATE results_deliveries SET {sql}, updated_at = ? WHERE object_uid = ? AND destination = ? "
        "AND state = 'pending'",
        (*values, utc_now(), object_uid, destination),
    )
    if cursor.rowcount != 1:
        raise StoreError(f"no pending delivery of {object_uid} to {destination}")


def record_sent(conn: sqlite3.Connection, object_uid: str, destination: str, status: int, detail: str = "") -> None:
    """The destination confirmed the object (status 0x0000 or a warning, kept with its comment)."""
    _update(conn, object_uid, destination, "state = 'sent', attempts = attempts + 1, last_status = ?, "
            "last_error = ?, sent_at = ?", status, detail, utc_now())  # fmt: skip


def record_rejected(
    conn: sqlite3.Connection, object_uid: str, destination: str, status: int | None, error: str
) -> None:
    """The destination refused the object for good (failure status, SOP class not accepted): not retried."""
    _update(conn, object_uid, destination, "state = 'rejected', attempts = attempts + 1, last_status = ?, "
            "last_error = ?", status, error)  # fmt: skip


def record_failure(
    conn: sqlite3.Connection,
    object_uid: str,
    destination: str,
    error: str,
    *,
    now: float,
    backoff_initial_s: float,
    backoff_max_s: float,
    max_attempts: int,
) -> DeliveryState:
    """A transient failure: retry after the backoff, or dead-letter after ``max_attempts``. Returns the new state."""
    row = conn.execute(
        "SELECT attempts FROM results_deliveries WHERE object_uid = ? AND destination = ?", (object_uid, destination)
    ).fetchone()
    attempts = (0 if row is None else int(row[0])) + 1
    state: DeliveryState = "dead" if attempts >= max_attempts else "pending"
    retry_at = now + backoff_delay(attempts, backoff_initial_s, backoff_max_s)
    _update(conn, object_uid, destination, "state = ?, attempts = ?, next_attempt_at = ?, last_status = NULL, "
            "last_error = ?", state, attempts, retry_at, error)  # fmt: skip
    return state


def resend(
    conn: sqlite3.Connection,
    *,
    now: float,
    object_uid: str | None = None,
    destination: str | None = None,
    states: Sequence[DeliveryState] = ("rejected", "dead"),
) -> int:
    """Put matching deliveries back to ``pending``, due now, with a fresh attempt count; returns how many."""
    clauses = [f"state IN ({', '.join('?' * len(states))})"]
    values: list[object] = list(states)
    if object_uid is not None:
        clauses.append("object_uid = ?")
        values.append(object_uid)
    if destination is not None:
        clauses.append("destination = ?")
        values.append(destination)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE results_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ? "
            f"WHERE {' AND '.join(clauses)}",
            (now, utc_now(), *values),
        )
    return cursor.rowcount


def source_delivered(conn: sqlite3.Connection, source_sop_uid: str) -> bool:
    """The results of ``source_sop_uid`` are built, delivered somewhere, and every delivery of them (SR, GSPS,
    overlay) is confirmed. Without a destination for them they are never delivered (the image stays analysed)."""
    built = conn.execute(
        "SELECT 1 FROM results_sources WHERE sop_instance_uid = ? AND state = 'built'", (source_sop_uid,)
    ).fetchone()
    total, sent = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(d.state = 'sent'), 0) FROM results_objects o JOIN results_deliveries d "
        "ON d.object_uid = o.object_uid WHERE o.source_sop_uid = ? AND o.kind != 'original'",
        (source_sop_uid,),
    ).fetchone()
    return built is not None and total > 0 and total == sent


def list_objects(conn: sqlite3.Connection, *, source_sop_uid: str | None = None) -> list[ObjectStatus]:
    """Every queued object with its deliveries, oldest first."""
    where, values = ("WHERE source_sop_uid = ?", (source_sop_uid,)) if source_sop_uid else ("", ())
    objects = conn.execute(f"SELECT * FROM results_objects {where} ORDER BY created_at, object_uid", values).fetchall()
    deliveries: dict[str, list[Delivery]] = {}
    for row in conn.execute("SELECT * FROM results_deliveries ORDER BY destination"):
        deliveries.setdefault(row["object_uid"], []).append(_from_row(Delivery, row))
    return [
        ObjectStatus(
            object=_from_row(ResultObject, r),
            created_at=r["created_at"],
            deliveries=tuple(deliveries.get(r["object_uid"], ())),
        )
        for r in objects
    ]


@dataclass(frozen=True)
class SourceDelivery:
    """One result object of a source image and its delivery to one destination (the study view)."""

    object_uid: str
    kind: str
    destination: str
    state: str
    attempts: int
    last_error: str


def source_deliveries(conn: sqlite3.Connection, source_sop_uid: str) -> list[SourceDelivery]:
    """The deliveries of every object made from (or forwarding) ``source_sop_uid``, by kind and destination;
    empty where results have never run."""
    if not has_table(conn, "results_objects"):
        return []
    rows = conn.execute(
        "SELECT o.object_uid, o.kind, d.destination, d.state, d.attempts, d.last_error "
        "FROM results_objects o JOIN results_deliveries d ON d.object_uid = o.object_uid "
        "WHERE o.source_sop_uid = ? ORDER BY o.kind, d.destination",
        (source_sop_uid,),
    )
    return [SourceDelivery(*row) for row in rows]


def results_present(conn: sqlite3.Connection) -> bool:
    """Whether results delivery has created its tables on this box (it has run)."""
    return has_table(conn, "results_deliveries")


def study_objects(conn: sqlite3.Connection, study_uid: str) -> list[str]:
    """The ids of the objects queued for one study."""
    return [row[0] for row in conn.execute("SELECT object_uid FROM results_objects WHERE study_uid = ?", (study_uid,))]


def delivery_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Delivery state -> how many deliveries are in it."""
    if not has_table(conn, "results_deliveries"):
        return {}
    rows = conn.execute("SELECT state, COUNT(*) FROM results_deliveries GROUP BY state").fetchall()
    return {str(state): int(count) for state, count in rows}


def source_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Build state of the source images (``built``, ``failed``, ...) -> how many are in it."""
    if not has_table(conn, "results_sources"):
        return {}
    rows = conn.execute("SELECT state, COUNT(*) FROM results_sources GROUP BY state").fetchall()
    return {str(state): int(count) for state, count in rows}
