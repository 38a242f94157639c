"""The unit tables: exposures recorded once with their use, watermark, status and faults, image matching."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.db import DB_FILENAME, connect, transaction
from edge.receipts.book import ReceiptBook
from edge.receipts.grants import install_grant
from edge.store.index import migrate_index
from edge.unit.exposures import (
    USE_KIND,
    ImageFacts,
    contiguous_watermark,
    expire_unmatched,
    exposure_digest,
    list_exposures,
    match_image,
    migrate_unit,
    nearest_exposure,
    record_exposure,
    record_identity,
    record_image,
    record_status,
    set_watermark,
    summary,
    watermark,
)
from firmware_bridge.messages import ExposureCompleted, Identify, Status
from protocol.keys import generate_key
from tests.receipts_helpers import make_box, make_grant

UNIT = Identify("Pano X", "SN-1", "1.0", "Acme")


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / DB_FILENAME)
    migrate_index(conn)
    migrate_unit(conn)
    ReceiptBook.migrate(conn)
    yield conn
    conn.close()


def _exposure(i: int, started_ms: int = 1_000_000) -> ExposureCompleted:
    return ExposureCompleted(i, "panoramic", 70.0, 10.0, 14000, 1.5, started_ms + i * 60_000)


def _uses(conn: sqlite3.Connection) -> int:
    parked = conn.execute("SELECT COUNT(*) FROM receipt_pending").fetchone()[0]
    signed = conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
    return int(parked + signed)


def test_exposure_recorded_once_with_one_use(conn: sqlite3.Connection) -> None:
    book = ReceiptBook(None)  # no identity yet: the use is parked, to be signed once the box has one
    assert record_identity(conn, UNIT) is True
    assert record_exposure(conn, "SN-1", _exposure(1), book) is True
    assert record_exposure(conn, "SN-1", _exposure(1), book) is False
    assert record_exposure(conn, "SN-2", _exposure(1), book) is True  # another unit's id 1
    assert [(e.unit_serial, e.exposure_id) for e in list_exposures(conn)] == [("SN-1", 1), ("SN-2", 1)]
    assert _uses(conn) == 2
    assert all('"exposure"' in r[0] for r in conn.execute("SELECT use FROM receipt_pending"))


def test_watermark_advances_only_over_a_contiguous_run(conn: sqlite3.Connection) -> None:
    assert contiguous_watermark(3, [4, 5, 7]) == 5
    assert contiguous_watermark(3, []) == 3
    record_identity(conn, UNIT)
    assert watermark(conn, "SN-1") is None
    assert set_watermark(conn, "SN-1", 10) == 10  # first contact: the unit's newest id
    assert record_identity(conn, UNIT) is False
    for i in (11, 13):
        record_exposure(conn, "SN-1", _exposure(i))
    assert watermark(conn, "SN-1") == 11
    record_exposure(conn, "SN-1", _exposure(12))
    assert watermark(conn, "SN-1") == 12  # live recording advances by one
    assert set_watermark(conn, "SN-1", 12) == 13


def test_status_opens_and_closes_faults(conn: sqlite3.Connection) -> None:
    change = record_status(conn, "SN-1", Status("fault", 40, 49.0, (0x0101, 0x0301)))
    assert change.raised == (0x0101, 0x0301)
    change = record_status(conn, "SN-1", Status("fault", 40, 49.0, (0x0301,)))
    assert (change.raised, change.cleared) == ((), (0x0101,))
    record_status(conn, "SN-1", Status("ready"))
    view = dataclasses.asdict(summary(conn))
    assert view["open_faults"] == []
    assert view["units"] == [
        {
            "serial": "SN-1",
            "state": "ready",
            "heat_pct": 0,
            "tube_temp_c": 0.0,
            "faults": "",
            "unit_time_ms": 0,
            "updated_at": view["units"][0]["updated_at"],
        }
    ]
    assert conn.execute("SELECT COUNT(*) FROM unit_faults WHERE cleared_at IS NOT NULL").fetchone()[0] == 2


def test_nearest_exposure_rule() -> None:
    candidates = [(1, 1000), (2, 5000), (3, 9000)]
    assert nearest_exposure(5600, candidates, 1000) == 2
    assert nearest_exposure(7000, candidates, 1000) is None
    assert nearest_exposure(7000, candidates, 2000) == 2  # a tie keeps the first
    assert nearest_exposure(0, [], 10) is None


def test_matching_and_unmatched_after_grace(conn: sqlite3.Connection) -> None:
    for i in (1, 2, 3):
        record_exposure(conn, "SN-1", _exposure(i))
    started_2 = _exposure(2).started_ms
    image = ImageFacts("1.2.3.2", "SN-1", started_2 + 800)
    other_unit = ImageFacts("1.2.3.9", "SN-9", started_2)
    no_time = ImageFacts("1.2.3.10", "", None)
    for facts in (image, other_unit, no_time):
        record_image(conn, facts)
        record_image(conn, facts)  # noted once
    assert match_image(conn, image, 5000) is not None
    assert match_image(conn, other_unit, 5000) is None
    assert match_image(conn, no_time, 5000) is None
    states = {e.exposure_id: (e.image_state, e.sop_instance_uid) for e in list_exposures(conn)}
    assert states[2] == ("matched", "1.2.3.2")
    assert expire_unmatched(conn, grace_ms=0, now_ms=2**62) == (2, 2)
    view = dataclasses.asdict(summary(conn))
    assert view["exposures"] == {"matched": 1, "no_image": 2}
    assert view["images"] == {"matched": 1, "no_exposure": 2}
    late = ImageFacts("1.2.3.3", "SN-1", _exposure(3).started_ms)
    record_image(conn, late)
    assert match_image(conn, late, 5000) is not None  # a late image still matches a no_image exposure


def test_signed_exposure_receipts_and_exhausted_rights(tmp_path: Path) -> None:
    """Each new exposure gets one signed receipt of kind ``exposure``; past the grant it is overage, never refused."""
    box = make_box(tmp_path / "box")
    migrate_unit(box.conn)
    issuer = generate_key()
    with transaction(box.conn):
        grant = make_grant(issuer, kind=USE_KIND, units=2)
        install_grant(box.conn, grant, {issuer.keyid: issuer.public}, "asset-1")
    for i in (1, 2, 2, 3, 1):  # duplicates and a replay among them
        record_exposure(box.conn, "SN-1", _exposure(i), box.book)
    assert [e.exposure_id for e in list_exposures(box.conn)] == [1, 2, 3]
    rows = box.conn.execute("SELECT kind, right_id, overage_units FROM receipts ORDER BY seq").fetchall()
    assert [tuple(r) for r in rows] == [
        ("exposure", "grant-1", 0),
        ("exposure", "grant-1", 0),
        ("exposure", "grant-1", 1),
    ]
    digests = [json.loads(r[0])["output_digest"] for r in box.conn.execute("SELECT body FROM receipts ORDER BY seq")]
    assert digests == [exposure_digest("SN-1", _exposure(i)) for i in (1, 2, 3)]
    box.conn.close()
