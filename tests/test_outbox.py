"""The durable outbox: queuing in the caller's transaction, send order, bounded telemetry, acks, feed from the book."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from edge.config import OutboxConfig
from edge.db import DB_FILENAME, connect, transaction
from edge.errors import OutboxError
from edge.outbox import Outbox, Rejection, certificate_item, feed
from edge.outbox.outbox import MAX_BODY_BYTES
from edge.receipts.book import ReceiptBook
from tests.receipts_helpers import Box, make_box


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    conn = connect(tmp_path / DB_FILENAME)
    Outbox.migrate(conn)
    return conn


def test_send_order_is_class_then_age(conn: sqlite3.Connection) -> None:
    outbox = Outbox(OutboxConfig())
    outbox.enqueue(conn, "health", {"n": 1})
    outbox.enqueue(conn, "offers", {"n": 2})
    outbox.enqueue(conn, "receipts", {"n": 3}, item="receipt:1")
    outbox.enqueue(conn, "results", {"n": 4})
    outbox.enqueue(conn, "settlements", {"n": 5}, item="settlement:1")
    kinds = [i.kind for i in outbox.pending(conn, 10)]
    assert kinds == ["receipts", "settlements", "results", "offers", "health"]
    first = outbox.pending(conn, 10)[0]
    assert outbox.pending(conn, 10, skip={first.row})[0].kind == "settlements"


def test_enqueue_is_idempotent_on_the_item_id(conn: sqlite3.Connection) -> None:
    outbox = Outbox(OutboxConfig())
    assert outbox.enqueue(conn, "receipts", {"a": 1}, item="receipt:7")
    assert not outbox.enqueue(conn, "receipts", {"a": 2}, item="receipt:7")
    assert [i.body for i in outbox.pending(conn, 10)] == ['{"a":1}']


@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        ("gossip", {}, "unknown outbox kind 'gossip'"),
        ("health", {"x": object()}, "not JSON"),
        ("health", {"x": float("nan")}, "not JSON"),
        ("health", ["not", "an", "object"], "must be a JSON object"),
        ("health", {"x": "y" * MAX_BODY_BYTES}, "larger than"),
    ],
)
def test_bad_items_are_refused_and_nothing_is_written(
    conn: sqlite3.Connection, kind: str, body: object, message: str
) -> None:
    with pytest.raises(OutboxError, match=message):
        Outbox(OutboxConfig()).enqueue(conn, kind, body)  # type: ignore[arg-type]
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def test_enqueue_commits_with_the_callers_transaction(conn: sqlite3.Connection) -> None:
    outbox = Outbox(OutboxConfig())
    conn.execute("CREATE TABLE work (x INTEGER)")

    def failing_state_change() -> None:
        with transaction(conn):
            conn.execute("INSERT INTO work VALUES (1)")
            outbox.enqueue(conn, "results", {"analysed": 1})
            raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        failing_state_change()
    assert outbox.pending(conn, 10) == []
    with transaction(conn):
        conn.execute("INSERT INTO work VALUES (2)")
        outbox.enqueue(conn, "results", {"analysed": 1})
    assert len(outbox.pending(conn, 10)) == 1


def test_telemetry_is_bounded_oldest_dropped_first_and_counted(conn: sqlite3.Connection) -> None:
    outbox = Outbox(OutboxConfig(max_telemetry_items=10))
    for n in range(25):
        outbox.enqueue(conn, "health" if n % 2 else "offers", {"n": n})
    for seq in range(1, 101):
        outbox.enqueue(conn, "receipts", {"seq": seq}, item=f"receipt:{seq}")
    pending = outbox.pending(conn, 1000)
    telemetry = sorted(json.loads(i.body)["n"] for i in pending if i.kind != "receipts")
    assert telemetry == list(range(15, 25))  # the 10 newest
    assert sum(i.kind == "receipts" for i in pending) == 100  # accounting is never evicted
    stats = outbox.stats(conn)
    assert stats["dropped"] == {"offers": 8, "health": 7}
    assert stats["pending"] == {"receipts": 100, "offers": 5, "health": 5}


def test_only_the_relays_ack_settles(conn: sqlite3.Connection) -> None:
    outbox = Outbox(OutboxConfig())
    for n in range(4):
        outbox.enqueue(conn, "receipts", {"n": n}, item=f"receipt:{n}")
    settled = outbox.settle(
        conn,
        ["receipt:0", "receipt:unknown"],
        [Rejection("receipt:1", "bad signature", permanent=True), Rejection("receipt:2", "db down", permanent=False)],
    )
    assert (settled.done, settled.rejected) == (1, 1)
    assert [outbox.state(conn, f"receipt:{n}") for n in range(4)] == ["done", "rejected", "pending", "pending"]
    assert conn.execute("SELECT reason FROM outbox WHERE item = 'receipt:1'").fetchone()[0] == "bad signature"
    again = outbox.settle(conn, ["receipt:0", "receipt:1"])
    assert (again.done, again.rejected) == (0, 0)  # a repeated ack changes nothing
    assert [i.item for i in outbox.pending(conn, 10)] == ["receipt:2", "receipt:3"]
    assert outbox.stats(conn)["rejected"] == 1


def test_prune_removes_old_done_items_but_keeps_the_certificate(conn: sqlite3.Connection) -> None:
    now = [1_000_000_000]
    outbox = Outbox(OutboxConfig(keep_done_days=1), clock=lambda: now[0])
    outbox.enqueue(conn, "certificate", {"c": 1}, item="certificate:x")
    outbox.enqueue(conn, "receipts", {"r": 1}, item="receipt:1")
    outbox.enqueue(conn, "receipts", {"r": 2}, item="receipt:2")
    outbox.settle(conn, ["certificate:x", "receipt:1"])
    now[0] += 86_400_000 + 1
    assert outbox.prune(conn) == 1
    assert [outbox.state(conn, i) for i in ("certificate:x", "receipt:1", "receipt:2")] == ["done", None, "pending"]


# --- feed from the receipt book -------------------------------------------------------------------------


@pytest.fixture
def box(tmp_path: Path) -> Box:
    box = make_box(tmp_path / "box")
    Outbox.migrate(box.conn)
    return box


def test_feed_copies_certificate_receipts_and_settlements_once(box: Box) -> None:
    outbox = Outbox(OutboxConfig())
    box.record(5)
    box.book.close_batch(box.conn, 3)
    assert feed(outbox, box.conn, box.book) == 1 + 5 + 1
    assert feed(outbox, box.conn, box.book) == 0
    box.record(2)
    box.book.close_batch(box.conn, 10)
    assert feed(outbox, box.conn, box.book) == 2 + 1
    items = outbox.pending(box.conn, 100)
    assert [i.kind for i in items] == ["certificate"] + ["receipts"] * 5 + ["settlements"] + ["receipts"] * 2 + [
        "settlements"
    ]
    assert items[0].item == certificate_item(box.identity.certificate)
    envelopes = box.book.receipts(box.conn)
    assert [i.item.split(":")[1] for i in items if i.kind == "receipts"] == [str(n) for n in range(1, 8)]
    assert [json.loads(i.body) for i in items if i.kind == "receipts"] == envelopes
    assert [json.loads(i.body) for i in items if i.kind == "settlements"] == box.book.settlements(box.conn)


def test_retired_certificates_are_queued_too_oldest_first(box: Box) -> None:
    retired = {"signed": {"type": "device-certificate", "n": 1}, "signatures": []}
    book = ReceiptBook(dataclasses.replace(box.identity, history=(retired,)))
    outbox = Outbox(OutboxConfig())
    assert feed(outbox, box.conn, book) == 2
    assert feed(outbox, box.conn, book) == 0
    items = outbox.pending(box.conn, 10)
    assert [i.item for i in items] == [certificate_item(retired), certificate_item(box.identity.certificate)]


def test_a_settlement_waits_for_all_its_receipts(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["edge.outbox.feed"], "FEED_BATCH", 4)
    outbox = Outbox(OutboxConfig())
    box.record(6)
    box.book.close_batch(box.conn, 6)
    feed(outbox, box.conn, box.book)
    assert [i.kind for i in outbox.pending(box.conn, 100)] == ["certificate"] + ["receipts"] * 4
    feed(outbox, box.conn, box.book)
    assert [i.kind for i in outbox.pending(box.conn, 100)][-3:] == ["receipts", "receipts", "settlements"]


def test_a_failed_feed_leaves_nothing_half_copied(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = Outbox(OutboxConfig())
    box.record(5)
    real = Outbox.enqueue
    calls = [0]

    def flaky(self: Outbox, *args: object, **kwargs: object) -> bool:
        calls[0] += 1
        if calls[0] == 4:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Outbox, "enqueue", flaky)
    with pytest.raises(sqlite3.OperationalError):
        feed(outbox, box.conn, box.book)
    assert outbox.pending(box.conn, 100) == []
    assert outbox.mark(box.conn, "receipts") == 0
    monkeypatch.setattr(Outbox, "enqueue", real)
    assert feed(outbox, box.conn, box.book) == 6
    assert outbox.mark(box.conn, "receipts") == 5


def test_unprovisioned_book_feeds_nothing(conn: sqlite3.Connection) -> None:
    book = ReceiptBook(None)
    book.migrate(conn)
    assert feed(Outbox(OutboxConfig()), conn, book) == 0
