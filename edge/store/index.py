"""The index of received instances in the agent's database (``<data_dir>/edge.db``, see :mod:`edge.db`).

Schema (component ``store.index``; columns are ``TEXT`` unless noted, times are ISO 8601 UTC with ``Z``)::

    patients   patient_key INTEGER PK, patient_id, patient_name, birth_date, sex
               UNIQUE (patient_id, patient_name, birth_date)
    studies    study_uid PK, patient_key -> patients, study_date, study_time, accession_number,
               study_description, first_received_at, last_received_at
    series     series_uid PK, study_uid -> studies, modality, series_number INTEGER, series_description
    instances  sop_instance_uid PK, series_uid -> series, sop_class_uid, instance_number INTEGER,
               rows INTEGER, columns INTEGER, number_of_frames INTEGER, transfer_syntax_uid, calling_ae,
               received_at, size_bytes INTEGER, path (relative to data_dir), pipeline_state,
               state_reason, state_changed_at, pixels_pruned_at (NULL until retention removes the pixels)

``pipeline_state`` is one of :data:`PIPELINE_STATES`. Ingest sets ``received``; the pipeline moves an instance
along :data:`TRANSITIONS` with :func:`set_state`, a compare-and-set that runs inside the caller's transaction,
so that a component can write its own rows (a receipt, an outbox entry) in the same commit::

    with transaction(conn):
        set_state(conn, sop_uid, "analysed", expected="processing")
        conn.execute("INSERT INTO receipts ...")

:func:`record_instance` adds (or, for the ``replace`` duplicate policy, replaces) one instance in its own
transaction; the store calls it only after the file is durable, so every row names a complete file.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from edge.db import has_table, migrate, transaction
from edge.errors import StateConflict, StoreError
from edge.store.header import InstanceHeader

__all__ = [
    "PIPELINE_STATES",
    "TRANSITIONS",
    "Instance",
    "PipelineState",
    "Study",
    "clinical_work_pending",
    "get_instance",
    "has_study",
    "index_counts",
    "index_present",
    "instance_path",
    "instances_in_state",
    "list_instances",
    "list_studies",
    "migrate_index",
    "record_instance",
    "set_state",
    "state_counts",
    "utc_now",
]

PipelineState = Literal["received", "processing", "analysed", "skipped", "failed", "forwarded"]
PIPELINE_STATES: tuple[PipelineState, ...] = get_args(PipelineState)
"""``received`` (stored by ingest), ``processing`` (a worker has it), ``analysed`` (findings recorded),
``skipped`` (the model cannot read it; the reason is kept), ``failed`` (analysis failed; may be retried),
``forwarded`` (results delivered to the clinic's PACS)."""

TRANSITIONS: dict[PipelineState, frozenset[PipelineState]] = {
    "received": frozenset({"processing", "skipped"}),
    "processing": frozenset({"analysed", "skipped", "failed", "received"}),
    "analysed": frozenset({"forwarded"}),
    "failed": frozenset({"processing", "received"}),
    "skipped": frozenset(),
    "forwarded": frozenset(),
}
"""Allowed moves of :func:`set_state`. ``processing -> received`` re-queues work a crash interrupted.
A replaced duplicate (policy ``replace``) goes back to ``received`` from any state."""

_MIGRATIONS = [
    """
    CREATE TABLE patients (
        patient_key INTEGER PRIMARY KEY,
        patient_id TEXT NOT NULL,
        patient_name TEXT NOT NULL,
        birth_date TEXT NOT NULL,
        sex TEXT NOT NULL,
        UNIQUE (patient_id, patient_name, birth_date)
    );
    CREATE TABLE studies (
        study_uid TEXT PRIMARY KEY,
        patient_key INTEGER NOT NULL REFERENCES patients (patient_key),
        study_date TEXT NOT NULL,
        study_time TEXT NOT NULL,
        accession_number TEXT NOT NULL,
        study_description TEXT NOT NULL,
        first_received_at TEXT NOT NULL,
        last_received_at TEXT NOT NULL
    );
    CREATE TABLE series (
        series_uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL REFERENCES studies (study_uid),
        modality TEXT NOT NULL,
        series_number INTEGER,
        series_description TEXT NOT NULL
    );
    CREATE INDEX series_by_study ON series (study_uid);
    CREATE TABLE instances (
        sop_instance_uid TEXT PRIMARY KEY,
        series_uid TEXT NOT NULL REFERENCES series (series_uid),
        sop_class_uid TEXT NOT NULL,
        instance_number INTEGER,
        rows INTEGER,
        columns INTEGER,
        number_of_frames INTEGER,
        transfer_syntax_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        received_at TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        path TEXT NOT NULL,
        pipeline_state TEXT NOT NULL DEFAULT 'received',
        state_reason TEXT NOT NULL DEFAULT '',
        state_changed_at TEXT NOT NULL,
        pixels_pruned_at TEXT
    );
    CREATE INDEX instances_by_series ON instances (series_uid);
    CREATE INDEX instances_by_state ON instances (pipeline_state, received_at)
    """,
]


def utc_now() -> str:
    """The current time as the index stores it: ``2026-11-24T10:00:00.123Z``."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


@dataclass(frozen=True)
class Instance:
    """One row of the index, with its series, study and patient."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    patient_name: str
    modality: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    transfer_syntax_uid: str
    calling_ae: str
    received_at: str
    size_bytes: int
    path: str
    """Relative to the data directory; see :func:`instance_path`."""
    pipeline_state: PipelineState
    state_reason: str
    state_changed_at: str
    pixels_pruned_at: str | None


@dataclass(frozen=True)
class Study:
    """One study with its patient and a summary of its instances."""

    study_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    first_received_at: str
    last_received_at: str
    instance_count: int
    size_bytes: int
    states: dict[str, int] = field(default_factory=dict)
    """Number of instances in each pipeline state."""


_INSTANCE_SELECT = """
    SELECT i.sop_instance_uid, i.sop_class_uid, i.series_uid, se.study_uid, p.patient_id, p.patient_name,
           se.modality, i.instance_number, i.rows, i.columns, i.number_of_frames, i.transfer_syntax_uid,
           i.calling_ae, i.received_at, i.size_bytes, i.path, i.pipeline_state, i.state_reason,
           i.state_changed_at, i.pixels_pruned_at
    FROM instances i
    JOIN series se ON se.series_uid = i.series_uid
    JOIN studies st ON st.study_uid = se.study_uid
    JOIN patients p ON p.patient_key = st.patient_key
"""


def migrate_index(conn: sqlite3.Connection) -> None:
    """Create or upgrade the index tables."""
    migrate(conn, "store.index", _MIGRATIONS)


def instance_path(data_dir: Path, instance: Instance) -> Path:
    """The absolute path of an instance's file."""
    return data_dir / instance.path


def record_instance(
    conn: sqlite3.Connection,
    header: InstanceHeader,
    *,
    path: str,
    size_bytes: int,
    calling_ae: str,
    received_at: str,
    replace: bool = False,
) -> None:
    """Add one instance, its series, study and patient, in one transaction.

    With ``replace=True`` an existing row for the SOP Instance UID is overwritten and goes back to
    ``received``; otherwise an existing row raises :class:`~edge.errors.StoreError` (the store checks for
    duplicates first, under its own lock).
    """
    with transaction(conn):
        conn.execute(
            "INSERT INTO patients (patient_id, patient_name, birth_date, sex) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (patient_id, patient_name, birth_date) DO UPDATE SET sex = excluded.sex",
            (header.patient_id, header.patient_name, header.patient_birth_date, header.patient_sex),
        )
        patient_key = conn.execute(
            "SELECT patient_key FROM patients WHERE patient_id = ? AND patient_name = ? AND birth_date = ?",
            (header.patient_id, header.patient_name, header.patient_birth_date),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO studies (study_uid, patient_key, study_date, study_time, accession_number, "
            "study_description, first_received_at, last_received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (study_uid) DO UPDATE SET patient_key = excluded.patient_key, "
            "last_received_at = excluded.last_received_at",
            (
                header.study_uid,
                patient_key,
                header.study_date,
                header.study_time,
                header.accession_number,
                header.study_description,
                received_at,
                received_at,
            ),
        )
        conn.execute(
            "INSERT INTO series (series_uid, study_uid, modality, series_number, series_description) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (series_uid) DO NOTHING",
            (header.series_uid, header.study_uid, header.modality, header.series_number, header.series_description),
        )
        values = (
            header.sop_instance_uid,
            header.series_uid,
            header.sop_class_uid,
            header.instance_number,
            header.rows,
            header.columns,
            header.number_of_frames,
            header.transfer_syntax_uid,
            calling_ae,
            received_at,
            size_bytes,
            path,
            received_at,
        )
        insert = (
            "INSERT INTO instances (sop_instance_uid, series_uid, sop_class_uid, instance_number, rows, columns, "
            "number_of_frames, transfer_syntax_uid, calling_ae, received_at, size_bytes, path, pipeline_state, "
            "state_reason, state_changed_at, pixels_pruned_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'received', '', ?, NULL)"
        )
        if replace:
            insert = "INSERT OR REPLACE" + insert.removeprefix("INSERT")
        try:
            conn.execute(insert, values)
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"instance {header.sop_instance_uid} is indexed already") from exc


def _instance(row: sqlite3.Row) -> Instance:
    return Instance(*row)


def get_instance(conn: sqlite3.Connection, sop_instance_uid: str) -> Instance | None:
    """The instance with this SOP Instance UID, or ``None``."""
    row = conn.execute(_INSTANCE_SELECT + " WHERE i.sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
    return None if row is None else _instance(row)


def list_instances(conn: sqlite3.Connection, study_uid: str | None = None) -> list[Instance]:
    """Every instance (of one study, if given), oldest first."""
    if study_uid is None:
        rows = conn.execute(_INSTANCE_SELECT + " ORDER BY i.received_at, i.sop_instance_uid").fetchall()
    else:
        rows = conn.execute(
            _INSTANCE_SELECT + " WHERE se.study_uid = ? ORDER BY i.received_at, i.sop_instance_uid", (study_uid,)
        ).fetchall()
    return [_instance(r) for r in rows]


def instances_in_state(conn: sqlite3.Connection, state: PipelineState, limit: int = 100) -> list[Instance]:
    """Up to ``limit`` instances in ``state``, oldest received first (the pipeline's work queue)."""
    rows = conn.execute(
        _INSTANCE_SELECT + " WHERE i.pipeline_state = ? ORDER BY i.received_at, i.sop_instance_uid LIMIT ?",
        (state, limit),
    ).fetchall()
    return [_instance(r) for r in rows]


def list_studies(conn: sqlite3.Connection, limit: int = -1) -> list[Study]:
    """Every study (the ``limit`` most recent, if given), most recently received first, with instance counts per
    pipeline state."""
    studies = conn.execute(
        """
        SELECT st.study_uid, p.patient_id, p.patient_name, p.birth_date, p.sex, st.study_date, st.study_time,
               st.accession_number, st.study_description, st.first_received_at, st.last_received_at,
               COUNT(i.sop_instance_uid), COALESCE(SUM(i.size_bytes), 0)
        FROM studies st
        JOIN patients p ON p.patient_key = st.patient_key
        LEFT JOIN series se ON se.study_uid = st.study_uid
        LEFT JOIN instances i ON i.series_uid = se.series_uid
        GROUP BY st.study_uid
        ORDER BY st.last_received_at DESC, st.study_uid
        LIMIT ?
        """,
        (limit,),
    ).fetchall()
    states: dict[str, dict[str, int]] = {}
    for study_uid, state, count in conn.execute(
        "SELECT se.study_uid, i.pipeline_state, COUNT(*) FROM instances i "
        "JOIN series se ON se.series_uid = i.series_uid GROUP BY se.study_uid, i.pipeline_state"
    ):
        states.setdefault(study_uid, {})[state] = count
    columns = [f.name for f in dataclasses.fields(Study) if f.name != "states"]
    return [Study(**dict(zip(columns, row, strict=True)), states=states.get(row[0], {})) for row in studies]


def index_present(conn: sqlite3.Connection) -> bool:
    """Whether the index has been created on this box (the store has run)."""
    return has_table(conn, "studies")


def has_study(conn: sqlite3.Connection, study_uid: str) -> bool:
    """Whether the index holds the study (False when the index has not been created)."""
    if not index_present(conn):
        return False
    return conn.execute("SELECT 1 FROM studies WHERE study_uid = ?", (study_uid,)).fetchone() is not None


def state_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Pipeline state -> number of instances in it (empty when the index has not been created)."""
    if not has_table(conn, "instances"):
        return {}
    rows = conn.execute("SELECT pipeline_state, COUNT(*) FROM instances GROUP BY pipeline_state").fetchall()
    return {str(state): int(count) for state, count in rows}


def index_counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """How many studies and instances the index holds ((0, 0) when it has not been created)."""
    if not index_present(conn):
        return 0, 0
    studies = conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
    instances = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    return int(studies), int(instances)


def clinical_work_pending(conn: sqlite3.Connection) -> bool:
    """Whether an instance waits for or is in analysis (``received`` or ``processing``)."""
    row = conn.execute("SELECT 1 FROM instances WHERE pipeline_state IN ('received', 'processing') LIMIT 1").fetchone()
    return row is not None


def set_state(
    conn: sqlite3.Connection,
    sop_instance_uid: str,
    state: PipelineState,
    *,
    expected: PipelineState | Sequence[PipelineState],
    reason: str = "",
) -> None:
    """Move an instance from one of the ``expected`` states to ``state``, inside the caller's transaction.

    Raises :class:`ValueError` for a move :data:`TRANSITIONS` does not allow (a programming error),
    :class:`~edge.errors.StoreError` outside a transaction, and :class:`~edge.errors.StateConflict` when
    the instance is missing or no longer in an expected state (another worker, or a replaced duplicate).
    """
    olds: tuple[PipelineState, ...] = (expected,) if isinstance(expected, str) else tuple(expected)
    for old in olds:
        if state not in TRANSITIONS[old]:
            raise ValueError(f"pipeline state cannot move from {old!r} to {state!r}")
    if not conn.in_transaction:
        raise StoreError("set_state must run inside a transaction (edge.db.transaction)")
    marks = ", ".join("?" * len(olds))
    cursor = conn.execute(
        f"UPDATE instances SET pipeline_state = ?, state_reason = ?, state_changed_at = ? "
        f"WHERE sop_instance_uid = ? AND pipeline_state IN ({marks})",
        (state, reason, utc_now(), sop_instance_uid, *olds),
    )
    if cursor.rowcount != 1:
        row = conn.execute(
            "SELECT pipeline_state FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        found = "not indexed" if row is None else f"in state {row[0]!r}"
        raise StateConflict(f"instance {sop_instance_uid} is {found}, expected {' or '.join(olds)}")
