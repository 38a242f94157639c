"""Exposures, unit images, status and faults in the agent's database (component ``unit``).

Schema (times ``*_at`` are ISO 8601 UTC as :func:`edge.store.index.utc_now` writes them; ``*_ms`` Unix ms)::

    unit_devices    serial PK, model, manufacturer, firmware, first_seen_at, last_seen_at,
                    watermark_id INTEGER NULL (every exposure id up to it is recorded; NULL until first contact)
    unit_exposures  exposure_key PK, unit_serial, exposure_id, program, kvp, ma, time_ms, dap_mgy_cm2,
                    started_ms (the unit's clock), aborted, received_at, received_ms,
                    image_state ('pending' | 'matched' | 'no_image'), sop_instance_uid NULL,
                    UNIQUE (unit_serial, exposure_id)  -- recording is idempotent on the unit's exposure id
    unit_images     sop_instance_uid PK, device_serial, acquired_ms NULL, seen_ms,
                    state ('pending' | 'matched' | 'no_exposure'), exposure_key NULL -> unit_exposures
    unit_status     serial PK, state, heat_pct, tube_temp_c, faults (comma-separated hex), unit_time_ms, updated_at
    unit_faults     fault_key PK, unit_serial, code, raised_at, cleared_at NULL
    unit_link       id = 1, port, state, version, error, counters (JSON), updated_at,
                    clock_offset_ms NULL (unit clock minus agent clock), last_heard_s NULL

An exposure is the billable use: :func:`record_exposure` inserts it once per ``(unit, exposure id)`` in one
transaction, together with its receipt, and a replay of the unit's log or a duplicated report is a no-op.
Images are matched to exposures by device serial number and acquisition time (:func:`nearest_exposure`, a
pure rule); after
``grace`` an exposure still unmatched is recorded as ``no_image`` and an image as ``no_exposure`` (both can
still match later if the other side turns up).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edge.db import has_table, migrate, transaction
from edge.receipts.book import ReceiptBook
from edge.store.index import utc_now
from firmware_bridge.driver import DriverStatus
from firmware_bridge.messages import ExposureCompleted, Identify, Status, encode_message
from protocol.receipts import Use

__all__ = [
    "COMPONENT",
    "USE_KIND",
    "ExposureLine",
    "ExposureRecord",
    "FaultChange",
    "FaultLine",
    "ImageFacts",
    "OpenFault",
    "UnitDevice",
    "UnitLink",
    "UnitState",
    "UnitSummary",
    "contiguous_watermark",
    "devices",
    "expire_unmatched",
    "exposure_digest",
    "faults",
    "list_exposures",
    "match_image",
    "migrate_unit",
    "nearest_exposure",
    "pending_images",
    "recent_exposures",
    "record_exposure",
    "record_identity",
    "record_image",
    "record_link",
    "record_status",
    "set_watermark",
    "summary",
    "unit_present",
    "watermark",
]

COMPONENT = "unit"
USE_KIND = "exposure"
"""The service kind of an exposure in receipts and rights."""

_MIGRATIONS = [
    """
    CREATE TABLE unit_devices (
        serial TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        manufacturer TEXT NOT NULL,
        firmware TEXT NOT NULL,
        first_seen_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL,
        watermark_id INTEGER
    );
    CREATE TABLE unit_exposures (
        exposure_key INTEGER PRIMARY KEY,
        unit_serial TEXT NOT NULL,
        exposure_id INTEGER NOT NULL,
        program TEXT NOT NULL,
        kvp REAL NOT NULL,
        ma REAL NOT NULL,
        time_ms INTEGER NOT NULL,
        dap_mgy_cm2 REAL NOT NULL,
        started_ms INTEGER NOT NULL,
        aborted INTEGER NOT NULL,
        received_at TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        image_state TEXT NOT NULL DEFAULT 'pending' CHECK (image_state IN ('pending', 'matched', 'no_image')),
        sop_instance_uid TEXT UNIQUE,
        UNIQUE (unit_serial, exposure_id)
    );
    CREATE INDEX unit_exposures_by_state ON unit_exposures (image_state, unit_serial, started_ms);
    CREATE TABLE unit_images (
        sop_instance_uid TEXT PRIMARY KEY,
        device_serial TEXT NOT NULL,
        acquired_ms INTEGER,
        seen_ms INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'matched', 'no_exposure')),
        exposure_key INTEGER REFERENCES unit_exposures (exposure_key)
    );
    CREATE INDEX unit_images_by_state ON unit_images (state, seen_ms);
    CREATE TABLE unit_status (
        serial TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        heat_pct INTEGER NOT NULL,
        tube_temp_c REAL NOT NULL,
        faults TEXT NOT NULL,
        unit_time_ms INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE unit_faults (
        fault_key INTEGER PRIMARY KEY,
        unit_serial TEXT NOT NULL,
        code INTEGER NOT NULL,
        raised_at TEXT NOT NULL,
        cleared_at TEXT
    );
    CREATE TABLE unit_link (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        port TEXT NOT NULL,
        state TEXT NOT NULL,
        version INTEGER,
        error TEXT,
        counters TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    """
    ALTER TABLE unit_link ADD COLUMN clock_offset_ms INTEGER;
    ALTER TABLE unit_link ADD COLUMN last_heard_s REAL
    """,
]


def migrate_unit(conn: sqlite3.Connection) -> None:
    """Create or upgrade the unit tables."""
    migrate(conn, COMPONENT, _MIGRATIONS)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- devices and the exposure log ---------------------------------------------------------------------------


def record_identity(conn: sqlite3.Connection, identity: Identify) -> bool:
    """Upsert the unit; True if it was seen for the first time (its watermark is still unknown)."""
    now = utc_now()
    with transaction(conn):
        conn.execute(
            "INSERT INTO unit_devices (serial, model, manufacturer, firmware, first_seen_at, last_seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO UPDATE SET model = excluded.model, "
            "manufacturer = excluded.manufacturer, firmware = excluded.firmware, last_seen_at = excluded.last_seen_at",
            (identity.serial, identity.model, identity.manufacturer, identity.firmware, now, now),
        )
    return watermark(conn, identity.serial) is None


def watermark(conn: sqlite3.Connection, serial: str) -> int | None:
    """Every exposure id of ``serial`` up to this is recorded (``None`` before the first log answer)."""
    row = conn.execute("SELECT watermark_id FROM unit_devices WHERE serial = ?", (serial,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def contiguous_watermark(start: int, recorded: Iterable[int]) -> int:
    """The highest id ``w >= start`` such that every id in ``start+1 .. w`` is in ``recorded`` (pure)."""
    ids = set(recorded)
    w = start
    while w + 1 in ids:
        w += 1
    return w


def set_watermark(conn: sqlite3.Connection, serial: str, start: int) -> int:
    """Advance the watermark of ``serial`` from ``start`` over the exposures recorded since; return it."""
    with transaction(conn):
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT exposure_id FROM unit_exposures WHERE unit_serial = ? AND exposure_id > ?", (serial, start)
            )
        ]
        w = contiguous_watermark(start, ids)
        conn.execute("UPDATE unit_devices SET watermark_id = ? WHERE serial = ?", (w, serial))
    return w


@dataclass(frozen=True)
class ExposureRecord:
    """One recorded exposure as the agent and the terminal UI show it."""

    exposure_key: int
    unit_serial: str
    exposure_id: int
    program: str
    kvp: float
    ma: float
    time_ms: int
    dap_mgy_cm2: float
    started_ms: int
    aborted: bool
    received_at: str
    image_state: str
    sop_instance_uid: str | None


def exposure_digest(serial: str, exposure: ExposureCompleted) -> str:
    """What an exposure receipt commits to: SHA-256 of the unit serial, a zero byte, and the exposure message as
    the unit encoded it (``messages.encode_message``), so an auditor holding the unit's log can tie a receipt to
    one exposure. No patient data is in either."""
    return "sha256:" + hashlib.sha256(serial.encode("utf-8") + b"\x00" + encode_message(exposure)).hexdigest()


def record_exposure(
    conn: sqlite3.Connection, serial: str, exposure: ExposureCompleted, book: ReceiptBook | None = None
) -> bool:
    """Record one exposure, once: True if it is new, False if this unit's exposure id was recorded already.

    One transaction: the exposure row, the unit's watermark when it closes the gap, and with a receipt
    ``book`` the use of kind ``exposure`` (:meth:`~edge.receipts.book.ReceiptBook.record` never raises: an
    exhausted or missing right is billed as overage, never refused).
    """
    with transaction(conn):
        cursor = conn.execute(
            "INSERT INTO unit_exposures (unit_serial, exposure_id, program, kvp, ma, time_ms, dap_mgy_cm2, "
            "started_ms, aborted, received_at, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (unit_serial, exposure_id) DO NOTHING",
            (
                serial,
                exposure.exposure_id,
                exposure.program,
                exposure.kvp,
                exposure.ma,
                exposure.time_ms,
                exposure.dap_mgy_cm2,
                exposure.started_ms,
                int(exposure.aborted),
                utc_now(),
                _now_ms(),
            ),
        )
        new = cursor.rowcount == 1
        if new:
            conn.execute(
                "UPDATE unit_devices SET watermark_id = watermark_id + 1 WHERE serial = ? AND watermark_id = ?",
                (serial, exposure.exposure_id - 1),
            )
            if book is not None:
                book.record(conn, Use(kind=USE_KIND, units=1, output_digest=exposure_digest(serial, exposure)))
    return new


def list_exposures(conn: sqlite3.Connection, serial: str | None = None) -> list[ExposureRecord]:
    """Recorded exposures (of one unit, if given), in the order of their ids."""
    sql = (
        "SELECT exposure_key, unit_serial, exposure_id, program, kvp, ma, time_ms, dap_mgy_cm2, started_ms, "
        "aborted, received_at, image_state, sop_instance_uid FROM unit_exposures"
    )
    rows = (
        conn.execute(sql + " ORDER BY unit_serial, exposure_id")
        if serial is None
        else conn.execute(sql + " WHERE unit_serial = ? ORDER BY exposure_id", (serial,))
    )
    return [ExposureRecord(**{**dict(r), "aborted": bool(r["aborted"])}) for r in rows]


# --- status and faults --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultChange:
    """Faults that appeared and disappeared with one status report."""

    raised: tuple[int, ...]
    cleared: tuple[int, ...]


def record_status(conn: sqlite3.Connection, serial: str, status: Status) -> FaultChange:
    """Save the unit's latest status and open or close its fault rows; return what changed."""
    now = utc_now()
    with transaction(conn):
        open_faults = {
            r[0]
            for r in conn.execute(
                "SELECT code FROM unit_faults WHERE unit_serial = ? AND cleared_at IS NULL", (serial,)
            )
        }
        current = set(status.faults)
        raised = tuple(sorted(current - open_faults))
        cleared = tuple(sorted(open_faults - current))
        conn.executemany(
            "INSERT INTO unit_faults (unit_serial, code, raised_at) VALUES (?, ?, ?)",
            [(serial, c, now) for c in raised],
        )
        conn.executemany(
            "UPDATE unit_faults SET cleared_at = ? WHERE unit_serial = ? AND code = ? AND cleared_at IS NULL",
            [(now, serial, c) for c in cleared],
        )
        conn.execute(
            "INSERT OR REPLACE INTO unit_status (serial, state, heat_pct, tube_temp_c, faults, unit_time_ms, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                serial,
                status.state,
                status.heat_pct,
                status.tube_temp_c,
                ",".join(f"0x{c:04x}" for c in status.faults),
                status.unit_time_ms,
                now,
            ),
        )
    return FaultChange(raised, cleared)


def record_link(conn: sqlite3.Connection, port: str, link: DriverStatus) -> None:
    """Save the link's state and counters (garbled frames, retransmits, ...) for the agent's status views."""
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO unit_link (id, port, state, version, error, counters, updated_at, "
            "clock_offset_ms, last_heard_s) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                port,
                link.state,
                link.version,
                link.error,
                json.dumps(link.counters, sort_keys=True),
                utc_now(),
                link.clock_offset_ms,
                link.last_heard_s,
            ),
        )


# --- images -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    """What matching needs from an image's header."""

    sop_instance_uid: str
    device_serial: str
    acquired_ms: int | None


def nearest_exposure(acquired_ms: int, candidates: Sequence[tuple[int, int]], window_ms: int) -> int | None:
    """The key of the candidate ``(key, started_ms)`` nearest ``acquired_ms`` within ``window_ms`` (pure)."""
    best: tuple[int, int] | None = None
    for key, started in candidates:
        distance = abs(started - acquired_ms)
        if distance <= window_ms and (best is None or distance < best[0]):
            best = (distance, key)
    return None if best is None else best[1]


def record_image(conn: sqlite3.Connection, facts: ImageFacts) -> None:
    """Note an image the index received (once); it waits for matching as ``pending``."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO unit_images (sop_instance_uid, device_serial, acquired_ms, seen_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (sop_instance_uid) DO NOTHING",
            (facts.sop_instance_uid, facts.device_serial, facts.acquired_ms, _now_ms()),
        )


def pending_images(conn: sqlite3.Connection, limit: int = 200) -> list[ImageFacts]:
    """Images not yet matched that have a device serial and an acquisition time."""
    rows = conn.execute(
        "SELECT sop_instance_uid, device_serial, acquired_ms FROM unit_images WHERE state IN "
        "('pending', 'no_exposure') AND device_serial != '' AND acquired_ms IS NOT NULL ORDER BY seen_ms LIMIT ?",
        (limit,),
    )
    return [ImageFacts(*r) for r in rows]


def match_image(conn: sqlite3.Connection, facts: ImageFacts, window_ms: int) -> int | None:
    """Match one image to the nearest unmatched exposure of its unit, in one transaction; the exposure key."""
    if facts.acquired_ms is None or not facts.device_serial:
        return None
    with transaction(conn):
        candidates = conn.execute(
            "SELECT exposure_key, started_ms FROM unit_exposures WHERE unit_serial = ? AND image_state != 'matched' "
            "AND started_ms BETWEEN ? AND ?",
            (facts.device_serial, facts.acquired_ms - window_ms, facts.acquired_ms + window_ms),
        ).fetchall()
        key = nearest_exposure(facts.acquired_ms, [(r[0], r[1]) for r in candidates], window_ms)
        if key is not None:
            conn.execute(
                "UPDATE unit_exposures SET image_state = 'matched', sop_instance_uid = ? WHERE exposure_key = ?",
                (facts.sop_instance_uid, key),
            )
            conn.execute(
                "UPDATE unit_images SET state = 'matched', exposure_key = ? WHERE sop_instance_uid = ?",
                (key, facts.sop_instance_uid),
            )
    return key


def expire_unmatched(conn: sqlite3.Connection, grace_ms: int, now_ms: int | None = None) -> tuple[int, int]:
    """Record exposures without an image and images without an exposure after ``grace_ms``; the two counts."""
    cutoff = (_now_ms() if now_ms is None else now_ms) - grace_ms
    with transaction(conn):
        exposures = conn.execute(
            "UPDATE unit_exposures SET image_state = 'no_image' WHERE image_state = 'pending' AND received_ms < ?",
            (cutoff,),
        ).rowcount
        images = conn.execute(
            "UPDATE unit_images SET state = 'no_exposure' WHERE state = 'pending' AND seen_ms < ?", (cutoff,)
        ).rowcount
    return exposures, images


@dataclass(frozen=True)
class UnitState:
    """The latest status a unit reported (``unit_status``)."""

    serial: str
    state: str
    heat_pct: int
    tube_temp_c: float
    faults: str
    unit_time_ms: int
    updated_at: str


@dataclass(frozen=True)
class OpenFault:
    """A fault a unit raised and has not cleared."""

    unit_serial: str
    code: int
    raised_at: str


@dataclass(frozen=True)
class UnitLink:
    """The serial link to the unit, as the bridge last recorded it (``unit_link``)."""

    port: str
    state: str
    version: int | None
    error: str | None
    counters: dict[str, Any]
    clock_offset_ms: int | None
    last_heard_s: float | None
    updated_at: str


@dataclass(frozen=True)
class UnitSummary:
    """Counts and latest status per unit, for ``btt-edge`` status views and the terminal UI."""

    exposures: dict[str, int]
    """Image state -> exposures in it."""
    images: dict[str, int]
    """Match state -> images in it."""
    units: list[UnitState]
    open_faults: list[OpenFault]
    link: UnitLink | None


def summary(conn: sqlite3.Connection) -> UnitSummary:
    """Counts and latest status per unit, for ``btt-edge`` status views and the terminal UI."""
    exposures = dict(conn.execute("SELECT image_state, COUNT(*) FROM unit_exposures GROUP BY image_state").fetchall())
    images = dict(conn.execute("SELECT state, COUNT(*) FROM unit_images GROUP BY state").fetchall())
    units = [
        UnitState(*row)
        for row in conn.execute(
            "SELECT serial, state, heat_pct, tube_temp_c, faults, unit_time_ms, updated_at FROM unit_status "
            "ORDER BY serial"
        )
    ]
    faults = [
        OpenFault(*row)
        for row in conn.execute(
            "SELECT unit_serial, code, raised_at FROM unit_faults WHERE cleared_at IS NULL ORDER BY raised_at"
        )
    ]
    row = conn.execute(
        "SELECT port, state, version, error, counters, clock_offset_ms, last_heard_s, updated_at FROM unit_link"
    ).fetchone()
    link = None
    if row is not None:
        port, state, version, error, counters, offset, heard, updated = tuple(row)
        link = UnitLink(port, state, version, error, json.loads(counters), offset, heard, updated)
    return UnitSummary(exposures=exposures, images=images, units=units, open_faults=faults, link=link)


# --- reads for the technician (the control socket) ------------------------------------------------------------


@dataclass(frozen=True)
class UnitDevice:
    """A unit the bridge has identified (``unit_devices``)."""

    serial: str
    model: str
    manufacturer: str
    firmware: str
    first_seen_at: str
    last_seen_at: str
    watermark_id: int | None


@dataclass(frozen=True)
class FaultLine:
    """A fault a unit raised, cleared or not (``unit_faults``)."""

    fault_key: int
    unit_serial: str
    code: int
    raised_at: str
    cleared_at: str | None


@dataclass(frozen=True)
class ExposureLine:
    """One exposure of the exposure log."""

    unit_serial: str
    exposure_id: int
    program: str
    kvp: float
    ma: float
    duration_ms: int
    """Beam-on time (the unit's ``time_ms``), a length of time."""
    started_ms: int
    """When the exposure began: Unix milliseconds, UTC, on the unit's clock."""
    aborted: bool
    dap_mgy_cm2: float
    image_state: str


def unit_present(conn: sqlite3.Connection) -> bool:
    """Whether the unit bridge has created its tables on this box (it has run)."""
    return has_table(conn, "unit_link")


def devices(conn: sqlite3.Connection) -> list[UnitDevice]:
    """Every unit identified."""
    rows = conn.execute(
        "SELECT serial, model, manufacturer, firmware, first_seen_at, last_seen_at, watermark_id FROM unit_devices"
    )
    return [UnitDevice(*row) for row in rows]


def faults(conn: sqlite3.Connection, limit: int = 100) -> list[FaultLine]:
    """The last ``limit`` faults raised, newest first."""
    rows = conn.execute(
        "SELECT fault_key, unit_serial, code, raised_at, cleared_at FROM unit_faults ORDER BY raised_at DESC LIMIT ?",
        (limit,),
    )
    return [FaultLine(*row) for row in rows]


def recent_exposures(conn: sqlite3.Connection, limit: int = 100) -> list[ExposureLine]:
    """The last ``limit`` exposures recorded, newest first."""
    rows = conn.execute(
        "SELECT unit_serial, exposure_id, program, kvp, ma, time_ms, started_ms, aborted, dap_mgy_cm2, image_state "
        "FROM unit_exposures ORDER BY exposure_key DESC LIMIT ?",
        (limit,),
    )
    out = []
    for serial, exposure_id, program, kvp, ma, time_ms, started_ms, aborted, dap, image_state in rows:
        out.append(
            ExposureLine(serial, exposure_id, program, kvp, ma, time_ms, started_ms, bool(aborted), dap, image_state)
        )
    return out
