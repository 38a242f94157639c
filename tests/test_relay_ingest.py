"""The relay's verify-and-store path against SQLite and PostgreSQL (the same tests on both)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_relay.errors import RegistryError
from cloud_relay.ingest import Ack, Ingestor, UpMessage
from cloud_relay.registry import Registry
from cloud_relay.storage import Database
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import KeyFiles, load_identity, rotate
from protocol.certificates import issue_revocations
from protocol.keys import generate_key, seal
from protocol.receipts import RECEIPT, Use
from tests.receipts_helpers import Box, make_box
from tests.relay_helpers import provisioned, receipt_items, throwaway_db, up

BACKEND_PARAMS = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with throwaway_db(request.param, tmp_path) as database:
        yield database


@pytest.fixture
def box(db: Database, tmp_path: Path) -> Box:
    return provisioned(db, tmp_path / "box", generate_key())


def _count(db: Database, table: str) -> int:
    with db.transaction() as tx:
        row = tx.one(f"SELECT count(*) FROM {table}")
    assert row is not None
    return int(row[0])


def _one_ack(acks: list[Ack]) -> Ack:
    assert len(acks) == 1
    return acks[0]


def test_receipts_and_settlement_stored_once_and_acked(db: Database, box: Box) -> None:
    box.record(5)
    settlement = box.book.close_batch(box.conn, 100)
    device = box.identity.device_id
    ingest = Ingestor(db)
    ack = _one_ack(
        ingest.handle([up(device, "receipts", receipt_items(box)), up(device, "settlements", [("s1", settlement)])])
    )
    assert ack.stored == ["r1", "r2", "r3", "r4", "r5", "s1"]
    assert ack.rejected == []
    # a resend (reconnect, lost ack) is acked again and stored nothing new
    again = _one_ack(
        ingest.handle([up(device, "receipts", receipt_items(box)), up(device, "settlements", [("s1", settlement)])])
    )
    assert again.stored == ack.stored
    assert _count(db, "receipts") == 5
    assert _count(db, "settlements") == 1
    assert json.loads(ack.payload()) == {"v": 1, "stored": ack.stored, "rejected": []}


def test_out_of_order_receipts_are_linked_when_neighbours_arrive(db: Database, box: Box) -> None:
    box.record(6)
    items = receipt_items(box)
    device = box.identity.device_id
    ingest = Ingestor(db)
    assert _one_ack(ingest.handle([up(device, "receipts", items[3:])])).stored == ["r4", "r5", "r6"]
    assert _one_ack(ingest.handle([up(device, "receipts", items[:3])])).stored == ["r1", "r2", "r3"]
    assert _count(db, "receipts") == 6


def test_settlement_before_its_receipts_is_deferred_not_acked(db: Database, box: Box) -> None:
    box.record(3)
    settlement = box.book.close_batch(box.conn, 100)
    device = box.identity.device_id
    ingest = Ingestor(db)
    assert ingest.handle([up(device, "settlements", [("s1", settlement)])]) == []
    assert _count(db, "settlements") == 0
    ingest.handle([up(device, "receipts", receipt_items(box))])
    assert _one_ack(ingest.handle([up(device, "settlements", [("s1", settlement)])])).stored == ["s1"]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda e: e["signed"].__setitem__("units", 99), "BadSignature"),
        (lambda e: e["signatures"][0].__setitem__("keyid", "f" * 64), "BadSignature"),
        (lambda e: e["signed"].__setitem__("keyid", "e" * 64), "UnknownSigningKey"),
        (lambda e: e["signed"].pop("kind"), "BadSignature"),
    ],
)
def test_forged_receipts_are_rejected_with_reasons(
    db: Database, box: Box, tamper: Callable[[dict[str, Any]], object], reason: str
) -> None:
    box.record(1)
    (item,) = receipt_items(box)
    forged = copy.deepcopy(item[1])
    tamper(forged)
    ack = _one_ack(Ingestor(db).handle([up(box.identity.device_id, "receipts", [("r1", forged)])]))
    assert ack.stored == []
    assert ack.rejected[0]["id"] == "r1"
    assert ack.rejected[0]["permanent"] is True
    assert ack.rejected[0]["reason"].startswith(reason)
    assert _count(db, "receipts") == 0
    with db.transaction() as tx:
        assert tx.all("SELECT item_id FROM rejects") == [("r1",)]


@pytest.mark.parametrize("threads", [1, 3])
def test_verify_threads_give_the_same_outcome_in_the_same_order(db: Database, box: Box, threads: int) -> None:
    box.record(12)
    items = receipt_items(box)
    for index in (4, 9):  # forged in the first and in a later chunk
        items[index][1]["signed"]["units"] = 99
    ingest = Ingestor(db, verify_threads=threads)
    try:
        ack = _one_ack(ingest.handle([up(box.identity.device_id, "receipts", items)]))
    finally:
        ingest.close()
    assert ack.stored == [f"r{i}" for i in range(1, 13) if i not in (5, 10)]
    assert [r["id"] for r in ack.rejected] == ["r5", "r10"]
    assert all(r["reason"].startswith("BadSignature") for r in ack.rejected)
    with db.transaction() as tx:  # each receipt is checked against its own prev: r6 and r11 are stored
        assert [int(r[0]) for r in tx.all("SELECT seq FROM receipts ORDER BY seq")] == [1, 2, 3, 4, 6, 7, 8, 9, 11, 12]


def test_conflicting_receipt_with_a_stored_sequence_number_is_rejected(db: Database, box: Box, tmp_path: Path) -> None:
    box.record(2)
    device = box.identity.device_id
    ingest = Ingestor(db)
    ingest.handle([up(device, "receipts", receipt_items(box))])
    # the same key signs a different receipt 2 (a forked chain, e.g. a restored backup)
    box.conn.execute("DELETE FROM receipts WHERE seq = 2")
    box.record(1, kind="exposure")
    ack = _one_ack(ingest.handle([up(device, "receipts", receipt_items(box, 1))]))
    assert ack.rejected[0]["reason"].startswith("ConflictingReceipt")


def test_receipt_published_under_another_device_is_rejected(db: Database, box: Box, tmp_path: Path) -> None:
    other = provisioned(db, tmp_path / "other", box.manufacturer)
    box.record(1)
    ack = _one_ack(Ingestor(db).handle([up(other.identity.device_id, "receipts", receipt_items(box))]))
    assert ack.rejected
    assert "UnknownSigningKey" in ack.rejected[0]["reason"]
    assert _count(db, "receipts") == 0


def test_revoked_device_is_rejected(db: Database, box: Box) -> None:
    box.record(2)
    device = box.identity.device_id
    items = receipt_items(box)
    ingest = Ingestor(db)
    ingest.handle([up(device, "receipts", items[:1])])
    Registry(db).revoke_device(device, "stolen")
    ack = _one_ack(ingest.handle([up(device, "receipts", items[1:])]))
    assert ack.rejected[0]["reason"].startswith("RevokedKey")
    assert _count(db, "receipts") == 1


def test_certificate_from_untrusted_manufacturer_is_rejected(db: Database, tmp_path: Path) -> None:
    rogue = provisioned(db, tmp_path / "rogue", generate_key(), clinic=None)
    stranger = make_box(tmp_path / "stranger")  # its manufacturer is not trusted
    device = stranger.identity.device_id
    ack = _one_ack(Ingestor(db).handle([up(device, "certificate", [("c1", stranger.identity.certificate)])]))
    assert ack.rejected[0]["reason"].startswith("UntrustedIssuer")
    # a trusted one registers its (unassigned) device
    ack = _one_ack(
        Ingestor(db).handle([up(rogue.identity.device_id, "certificate", [("c1", rogue.identity.certificate)])])
    )
    assert ack.stored == ["c1"]
    with pytest.raises(RegistryError, match="not trusted"):
        Registry(db).add_device(device, certificate=stranger.identity.certificate)


def test_receipts_without_any_certificate_are_deferred(db: Database, tmp_path: Path) -> None:
    stranger = make_box(tmp_path / "stranger")
    stranger.record(1)
    assert Ingestor(db).handle([up(stranger.identity.device_id, "receipts", receipt_items(stranger))]) == []


def test_malformed_messages_are_recorded_and_other_messages_still_processed(db: Database, box: Box) -> None:
    device = box.identity.device_id
    box.record(1)
    bad = [
        UpMessage(f"btt/v1/dev/{device}/up/receipts", b"{not json"),
        UpMessage(
            f"btt/v1/dev/{device}/up/receipts",
            json.dumps({"v": 1, "device": "x", "kind": "receipts", "items": []}).encode(),
        ),
        UpMessage("some/other/topic", b"{}"),
        up(device, "telemetry", [("t1", {"a": 1})]),
        up(device, "offers", [("o1", [1, 2])]),
    ]
    ingest = Ingestor(db)
    acks = ingest.handle([*bad, up(device, "receipts", receipt_items(box)), up(device, "offers", [("o2", {"gpu": 1})])])
    ack = _one_ack(acks)
    assert ack.stored == ["r1", "o2"]
    assert [r["id"] for r in ack.rejected] == ["t1", "o1"]
    assert _count(db, "rejects") == 5
    assert ingest.refusals == {"json": 1, "message": 1, "topic": 1, "kind": 1, "shape": 1}  # counted by fault


def test_reports_are_stored_once(db: Database, box: Box) -> None:
    device = box.identity.device_id
    ingest = Ingestor(db)
    for _ in range(2):
        ack = _one_ack(
            ingest.handle(
                [up(device, "health", [("h1", {"disk_free": 10})]), up(device, "offers", [("o1", {"gpu_ms": 5})])]
            )
        )
        assert ack.stored == ["h1", "o1"]
    assert _count(db, "reports") == 2


def test_a_receipt_that_does_not_link_to_its_stored_neighbours_is_rejected(db: Database, box: Box) -> None:
    box.record(3)
    device = box.identity.device_id
    items = receipt_items(box)
    ingest = Ingestor(db)
    ingest.handle([up(device, "receipts", [items[0], items[2]])])
    # receipt 2 signed by the device's own key but linked to the wrong predecessor (a rewritten history)
    signed = dict(items[1][1]["signed"], prev="ab" * 32)
    rewritten = seal(RECEIPT, signed, box.identity.key)
    ack = _one_ack(ingest.handle([up(device, "receipts", [("r2-bad", rewritten), items[1]])]))
    assert ack.rejected[0]["id"] == "r2-bad"
    assert ack.rejected[0]["reason"].startswith("BrokenChain")
    assert ack.stored == ["r2"]
    assert _count(db, "receipts") == 3


def test_manufacturer_revocation_list_revokes_keys(db: Database, box: Box) -> None:
    box.record(1)
    registry = Registry(db)
    with pytest.raises(RegistryError, match="revocation list"):
        registry.add_revocations(issue_revocations(generate_key(), [box.identity.key.keyid], number=1, issued_ms=0))
    assert (
        registry.add_revocations(issue_revocations(box.manufacturer, [box.identity.key.keyid], number=1, issued_ms=0))
        == 1
    )
    ack = _one_ack(Ingestor(db).handle([up(box.identity.device_id, "receipts", receipt_items(box))]))
    assert ack.rejected[0]["reason"].startswith("RevokedKey")


def test_rotated_keys_both_verify_and_the_replaced_key_cannot_sign_later(
    db: Database, box: Box, tmp_path: Path
) -> None:
    box.record(3)
    old = box.identity
    rotate(KeyFiles(box.data_dir / "keys"), box.manufacturer)
    new = load_identity(KeyFiles(box.data_dir / "keys"))
    assert new is not None
    book = ReceiptBook(new)
    book.record_batch(box.conn, [Use(kind="analysis")] * 2)
    device = old.device_id
    ingest = Ingestor(db)
    ack = _one_ack(ingest.handle([up(device, "certificate", [("c2", new.certificate)])]))
    assert ack.stored == ["c2"]
    ack = _one_ack(ingest.handle([up(device, "receipts", receipt_items(box))]))
    assert ack.stored == ["r1", "r2", "r3", "r4", "r5"]
    last = box.book.receipts(box.conn)[-1]["signed"]
    stolen = seal(RECEIPT, dict(last) | {"keyid": old.key.keyid, "seq": 6, "prev": "00" * 32}, old.key)
    ack = _one_ack(ingest.handle([up(device, "receipts", [("r6-stolen", stolen)])]))
    assert ack.rejected[0]["reason"].startswith("RevokedKey")
