"""The outbox-kind registry (``edge/outbox/kinds.py``) is the one source on the box: which kinds the outbox takes,
their send order and eviction, which are kept, and which the sync service sends as barriers all follow it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from edge.config import AgentConfig, OutboxConfig
from edge.db import DB_FILENAME, connect
from edge.errors import OutboxError
from edge.outbox import Outbox
from edge.outbox.kinds import ACCOUNTING, BARRIERS, KEPT, KINDS, NAMES, TELEMETRY, OutboxKind
from edge.sync import service as sync_service
from edge.sync.service import SyncService
from protocol.kinds import UP_KINDS


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


class Publishes:
    """A link that records the topic of every message it is given."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.topics.append(topic)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / DB_FILENAME)
    Outbox.migrate(conn)
    yield conn
    conn.close()


def test_the_names_are_the_registry_s() -> None:
    assert get_args(OutboxKind) == NAMES
    assert len(set(NAMES)) == len(NAMES)
    assert ACCOUNTING | set(TELEMETRY) == set(NAMES)
    assert not ACCOUNTING & set(TELEMETRY)
    assert all(k.feeder for k in KINDS)


def test_the_box_queues_exactly_the_kinds_the_relay_stores() -> None:
    assert sorted(NAMES) == sorted(UP_KINDS)  # the wire's names (protocol.kinds), each with its place on the box


def test_the_outbox_takes_the_registry_s_kinds_in_its_priority_order(conn: sqlite3.Connection) -> None:
    outbox = Outbox(OutboxConfig())
    with pytest.raises(OutboxError) as refused:
        outbox.enqueue(conn, "pdf", {})  # type: ignore[arg-type]
    assert str(refused.value).endswith("one of " + ", ".join(NAMES))
    for kind in reversed(NAMES):
        assert outbox.enqueue(conn, kind, {"k": kind})
    by_priority = sorted(reversed(KINDS), key=lambda k: k.priority)  # within a class, first queued first
    assert [i.kind for i in outbox.pending(conn, 100)] == [k.name for k in by_priority]


def test_only_telemetry_is_evicted_and_only_the_kept_kinds_outlive_pruning(conn: sqlite3.Connection) -> None:
    clock = Clock()
    outbox = Outbox(OutboxConfig(max_telemetry_items=1), clock=clock)
    for n in range(2):
        for kind in NAMES:
            outbox.enqueue(conn, kind, {"n": n}, item=f"{kind}:{n}")
    dropped = outbox.stats(conn)["dropped"]
    assert set(dropped) <= set(TELEMETRY)
    assert sum(dropped.values()) == 2 * len(TELEMETRY) - 1
    pending = [i.kind for i in outbox.pending(conn, 100)]
    assert sorted(k for k in pending if k in ACCOUNTING) == sorted([*ACCOUNTING, *ACCOUNTING])
    assert len([k for k in pending if k in TELEMETRY]) == 1
    outbox.settle(conn, [i.item for i in outbox.pending(conn, 100)])
    clock.now += int(OutboxConfig().keep_done_days * 86_400_000) + 1
    outbox.prune(conn)
    left = {r[0] for r in conn.execute("SELECT kind FROM outbox")}
    assert left == set(KEPT)


def test_the_sync_service_sends_the_registry_s_barriers_alone(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(OutboxConfig())

    def sent(kind: OutboxKind) -> list[str]:
        """The up kinds one send turn publishes with a receipt and then ``kind`` pending."""
        conn.execute("DELETE FROM outbox")
        outbox.enqueue(conn, "receipts", {"n": 1}, item="receipt:1")
        outbox.enqueue(conn, kind, {"n": 2}, item=f"{kind}:2")
        config = AgentConfig()
        service = SyncService(
            config.sync, config.agent.data_dir, outbox, None, feed_interval_s=config.outbox.feed_interval_s
        )
        service._device = "dev-1"  # as when connected
        link = Publishes()
        service._send(conn, link)  # type: ignore[arg-type]
        return [topic.rsplit("/", 1)[1] for topic in link.topics]

    for kind in NAMES:  # a barrier waits until the receipt before it is acknowledged
        assert sent(kind) == (["receipts"] if kind in BARRIERS or kind == "receipts" else ["receipts", kind]), kind
    monkeypatch.setattr(sync_service, "BARRIERS", frozenset({"results"}))
    assert sent("results") == ["receipts"]
    monkeypatch.setattr(sync_service, "BARRIERS", frozenset())
    assert sent("certificate") == ["receipts", "certificate"]
