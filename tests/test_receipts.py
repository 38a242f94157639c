"""Receipts: the record hook, rights, settlements, and the tamper suite (each failure its own error)."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.db import transaction
from edge.errors import ReceiptError
from edge.receipts.book import ReceiptBook
from edge.receipts.grants import install_grant, list_grants
from edge.receipts.identity import KeyFiles, load_identity, provision
from protocol import errors, merkle
from protocol.certificates import issue_revocations
from protocol.encoding import canonical_bytes, encode_unchecked
from protocol.grants import verify_grant
from protocol.keys import generate_key, seal
from protocol.receipts import RECEIPT, Use
from protocol.settlement import SETTLEMENT
from protocol.verify import Checkpoint, Trust, verify_export, verify_inclusion, verify_settlements
from tests.receipts_helpers import Box, make_box, make_grant

# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture
def box(tmp_path: Path) -> Box:
    b = make_box(tmp_path)
    b.record(6)
    b.book.close_batch(b.conn, 4)
    b.record(3)
    b.book.close_batch(b.conn, 100)
    b.record(2)  # two unsettled receipts at the end
    return b


def trust(box: Box) -> Trust:
    return Trust.of([box.manufacturer.public])


def resign(box: Box, envelope: dict[str, Any], kind: str = RECEIPT, **changes: Any) -> dict[str, Any]:
    """The device key signs altered content: only structural checks can catch it."""
    signed = dict(envelope["signed"]) | changes
    return seal(kind, signed, box.identity.key)


# --- happy path -------------------------------------------------------------------------------------------


def test_valid_export_verifies(box: Box) -> None:
    result = verify_export(box.export(), trust(box))
    assert [r.seq for r in result.receipts] == list(range(1, 12))
    assert [(s.first_seq, s.last_seq) for s in result.settlements] == [(1, 4), (5, 9)]
    assert result.unsettled == 2
    assert result.device == box.identity.device_id


def test_checkpoint_continues_the_chain(box: Box) -> None:
    doc = box.export()
    first = verify_export(doc, trust(box))
    box.record(2)
    box.book.close_batch(box.conn, 100)
    later = box.export()
    later["receipts"] = later["receipts"][first.checkpoint.seq :]
    later["settlements"] = later["settlements"][first.checkpoint.batch :]
    # The checkpoint after the first export stands at receipt 11 but only settlement 2 (covering 5-9).
    cp = Checkpoint(
        seq=first.checkpoint.seq,
        receipt_hash=first.checkpoint.receipt_hash,
        batch=first.settlements[-1].batch,
        settlement_hash=first.settlements[-1].hash,
    )
    with pytest.raises(errors.SettlementMismatch):  # settlement 3 starts at 10, before the receipts we were given
        verify_export(later, trust(box), cp)


# --- tamper suite -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("units", 5), ("kind", "exposure"), ("time_ms", 1), ("seq", 99)])
def test_altered_field_is_a_bad_signature(box: Box, field: str, value: Any) -> None:
    doc = box.export()
    doc["receipts"][2]["signed"][field] = value
    with pytest.raises(errors.BadSignature):
        verify_export(doc, trust(box))


def test_reordered(box: Box) -> None:
    doc = box.export()
    r = doc["receipts"]
    r[3], r[4] = r[4], r[3]
    with pytest.raises(errors.ReorderedReceipt):
        verify_export(doc, trust(box))


def test_replayed_later_in_the_stream(box: Box) -> None:
    doc = box.export()
    doc["receipts"].insert(6, copy.deepcopy(doc["receipts"][1]))
    with pytest.raises(errors.ReplayedReceipt):
        verify_export(doc, trust(box))


def test_replayed_before_the_checkpoint(box: Box) -> None:
    doc = box.export()
    first = verify_export(doc, trust(box))
    again = box.export()
    again["settlements"] = []
    with pytest.raises(errors.ReplayedReceipt):
        verify_export(again, trust(box), first.checkpoint)


def test_dropped_is_a_gap(box: Box) -> None:
    doc = box.export()
    del doc["receipts"][5]
    with pytest.raises(errors.SequenceGap):
        verify_export(doc, trust(box))


def test_dropped_last_settled_receipt(box: Box) -> None:
    doc = box.export()
    doc["receipts"] = doc["receipts"][:8]  # settlement 2 covers 5-9
    with pytest.raises(errors.SettlementMismatch):
        verify_export(doc, trust(box))


def test_duplicated(box: Box) -> None:
    doc = box.export()
    doc["receipts"].insert(3, copy.deepcopy(doc["receipts"][2]))
    with pytest.raises(errors.DuplicateReceipt):
        verify_export(doc, trust(box))


def test_conflicting_receipt_is_a_fork(box: Box) -> None:
    doc = box.export()
    doc["receipts"].insert(3, resign(box, doc["receipts"][2], units=7))
    with pytest.raises(errors.ConflictingReceipt):
        verify_export(doc, trust(box))


def test_broken_chain(box: Box) -> None:
    doc = box.export()
    doc["receipts"][4] = resign(box, doc["receipts"][4], prev="ab" * 32)
    with pytest.raises(errors.BrokenChain):
        verify_export(doc, trust(box))


def test_forged_device_key(box: Box) -> None:
    doc = box.export()
    forger = generate_key()
    doc["receipts"][2] = seal(RECEIPT, dict(doc["receipts"][2]["signed"]) | {"keyid": forger.keyid}, forger)
    with pytest.raises(errors.UnknownSigningKey):
        verify_export(doc, trust(box))


def test_forged_signature_under_the_device_key_id(box: Box) -> None:
    doc = box.export()
    forged = seal(RECEIPT, doc["receipts"][2]["signed"], generate_key())
    doc["receipts"][2]["signatures"] = [forged["signatures"][0] | {"keyid": box.identity.key.keyid}]
    with pytest.raises(errors.BadSignature):
        verify_export(doc, trust(box))


def test_revoked_device(box: Box) -> None:
    revocations = issue_revocations(box.manufacturer, [box.identity.key.keyid], number=1, issued_ms=0)
    with pytest.raises(errors.RevokedKey):
        verify_export(box.export(), Trust.of([box.manufacturer.public], revocations))


def test_revocation_list_from_another_manufacturer_is_refused(box: Box) -> None:
    revocations = issue_revocations(generate_key(), [box.identity.key.keyid], number=1, issued_ms=0)
    with pytest.raises(errors.UntrustedIssuer):
        Trust.of([box.manufacturer.public], revocations)


def test_wrong_manufacturer(box: Box) -> None:
    with pytest.raises(errors.UntrustedIssuer):
        verify_export(box.export(), Trust.of([generate_key().public]))


def test_certificate_from_a_forger_claiming_the_manufacturer_id(box: Box) -> None:
    doc = box.export()
    cert = doc["certificates"][0]
    doc["certificates"][0] = seal("device-certificate", cert["signed"], generate_key()) | {}
    doc["certificates"][0]["signatures"][0]["keyid"] = box.manufacturer.keyid
    with pytest.raises(errors.BadSignature):
        verify_export(doc, trust(box))


def test_receipt_after_the_certificate_expired(tmp_path: Path) -> None:
    from protocol.clock import now_ms

    b = make_box(tmp_path, clock=lambda: now_ms() + 31 * 86_400_000, valid_days=30)
    b.record(1)
    with pytest.raises(errors.CertificateInvalid):
        verify_export(b.export(), Trust.of([b.manufacturer.public]))


def test_settlement_root_mismatch(box: Box) -> None:
    doc = box.export()
    doc["settlements"][1] = resign(box, doc["settlements"][1], SETTLEMENT, root="00" * 32)
    with pytest.raises(errors.MerkleRootMismatch):
        verify_export(doc, trust(box))


def test_settlement_totals_mismatch(box: Box) -> None:
    doc = box.export()
    totals = copy.deepcopy(doc["settlements"][0]["signed"]["totals"])
    totals[0]["units"] += 1
    doc["settlements"][0] = resign(box, doc["settlements"][0], SETTLEMENT, totals=totals)
    with pytest.raises(errors.TotalsMismatch):
        verify_export(doc, trust(box))


def test_settlement_altered_without_the_key(box: Box) -> None:
    doc = box.export()
    doc["settlements"][0]["signed"]["count"] = 3
    with pytest.raises(errors.BadSignature):
        verify_export(doc, trust(box))


def test_settlement_skipped_batch(box: Box) -> None:
    doc = box.export()
    del doc["settlements"][0]
    with pytest.raises(errors.SettlementMismatch):
        verify_export(doc, trust(box))


def test_malformed_receipt_field(box: Box) -> None:
    doc = box.export()
    doc["receipts"][0] = resign(box, doc["receipts"][0], units="1")
    with pytest.raises(errors.MalformedRecord):
        verify_export(doc, trust(box))


def test_signature_over_one_type_does_not_verify_as_another(box: Box) -> None:
    doc = box.export()
    settlement = doc["settlements"][0]
    forged = {"signed": settlement["signed"] | {"type": RECEIPT}, "signatures": settlement["signatures"]}
    doc["receipts"][0] = forged
    with pytest.raises(errors.VerificationError):
        verify_export(doc, trust(box))


# --- inclusion proofs -------------------------------------------------------------------------------------


def test_inclusion_proof_against_a_settlement(box: Box) -> None:
    doc = box.export()
    certs = {box.identity.key.keyid: box.identity.parsed}
    bodies = [encode_unchecked(e["signed"]) for e in doc["receipts"][4:9]]
    settlement = verify_export(doc, trust(box)).settlements[1]
    leaves = [merkle.leaf_hash(b) for b in bodies]
    for i, body in enumerate(bodies):
        verify_inclusion(body, i, [p.hex() for p in merkle.inclusion_proof(i, leaves)], settlement)
    with pytest.raises(errors.InclusionProofInvalid):
        verify_inclusion(bodies[0], 1, [p.hex() for p in merkle.inclusion_proof(0, leaves)], settlement)
    assert certs  # the certificate map is what the relay would keep per device


# --- the record hook --------------------------------------------------------------------------------------


def test_hook_commits_with_the_callers_transaction(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    b.conn.execute("CREATE TABLE work (id INTEGER PRIMARY KEY)")
    with transaction(b.conn):
        b.conn.execute("INSERT INTO work (id) VALUES (1)")
        assert b.book.record(b.conn, Use(kind="analysis")) is not None

    def failing_state_change() -> None:
        with transaction(b.conn):
            b.conn.execute("INSERT INTO work (id) VALUES (2)")
            b.book.record(b.conn, Use(kind="analysis"))
            raise RuntimeError("the caller's state change failed")

    with pytest.raises(RuntimeError):
        failing_state_change()
    assert b.conn.execute("SELECT count(*) FROM receipts").fetchone()[0] == 1
    assert b.conn.execute("SELECT count(*) FROM work").fetchone()[0] == 1


def test_hook_never_raises_on_bad_input(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    b.conn.execute("CREATE TABLE work (id INTEGER PRIMARY KEY)")
    with transaction(b.conn):
        b.conn.execute("INSERT INTO work (id) VALUES (1)")
        assert b.book.record(b.conn, Use(kind="Not A Kind", units=0)) is None
    assert b.conn.execute("SELECT count(*) FROM work").fetchone()[0] == 1
    row = b.conn.execute("SELECT use, error FROM receipt_pending").fetchone()
    assert "MalformedRecord" in row["error"]
    assert b.conn.execute("SELECT count(*) FROM receipts").fetchone()[0] == 0


def test_no_identity_parks_uses_then_signs_them_in_order(tmp_path: Path) -> None:
    from edge.db import DB_FILENAME, connect

    conn = connect(tmp_path / DB_FILENAME)
    book = ReceiptBook(None)
    book.migrate(conn)
    for i in range(3):
        with transaction(conn):
            assert book.record(conn, Use(kind="exposure", study_uid=f"1.2.{i}")) is None
            assert book.record(conn, Use(kind="exposure", units=-1)) is None  # parked with its error
    manufacturer = generate_key()
    files = KeyFiles(tmp_path / "keys")
    provision(files, manufacturer=manufacturer)
    identity = load_identity(files)
    assert identity is not None
    assert book.adopt_identity(conn, identity) == 3
    assert conn.execute("SELECT count(*) FROM receipt_pending WHERE error IS NOT NULL").fetchone()[0] == 3
    doc = book.export(conn)
    assert [r["signed"]["seq"] for r in doc["receipts"]] == [1, 2, 3]
    verify_export(doc, Trust.of([manufacturer.public]))


def test_study_uid_never_stored_in_clear(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890"
    with transaction(b.conn):
        r = b.book.record(b.conn, Use(kind="analysis", study_uid=uid))
    assert r is not None
    b.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert uid.encode() not in (tmp_path / "edge.db").read_bytes()
    assert uid not in str(b.export())
    again = b.book.record_batch(b.conn, [Use(kind="analysis", study_uid=uid)])
    digest = [e["signed"]["study_digest"] for e in b.export()["receipts"]]
    assert digest[0] == digest[1]
    assert digest[0].startswith("hmac-sha256:")
    assert again


# --- rights -----------------------------------------------------------------------------------------------


def test_rights_are_consumed_then_overage_is_recorded(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    issuer = generate_key()
    with transaction(b.conn):
        install_grant(b.conn, make_grant(issuer, units=3), {issuer.keyid: issuer.public}, "asset-1")
    uses = [Use(kind="analysis", units=2), Use(kind="analysis", units=2), Use(kind="analysis"), Use(kind="exposure")]
    receipts = b.book.record_batch(b.conn, uses)
    assert [(r.right, r.overage_units) for r in receipts] == [
        ("grant-1", 0),
        ("grant-1", 1),
        ("grant-1", 1),
        (None, 1),
    ]
    assert list_grants(b.conn)[0]["remaining"] == 0


def test_grant_checks(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    issuer = generate_key()
    issuers = {issuer.keyid: issuer.public}
    with pytest.raises(errors.UntrustedIssuer):
        verify_grant(make_grant(generate_key()), issuers)
    tampered = make_grant(issuer)
    tampered["signed"]["units"] = 1000
    with pytest.raises(errors.BadSignature):
        verify_grant(tampered, issuers)
    with pytest.raises(errors.RightsError), transaction(b.conn):
        install_grant(b.conn, make_grant(issuer), issuers, "another-asset")
    with transaction(b.conn):
        install_grant(b.conn, make_grant(issuer), issuers, "asset-1")
        install_grant(b.conn, make_grant(issuer), issuers, "asset-1")  # idempotent
    with pytest.raises(errors.RightsError), transaction(b.conn):
        install_grant(b.conn, make_grant(issuer, units=9), issuers, "asset-1")


def test_expired_right_is_not_consumed(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    issuer = generate_key()
    with transaction(b.conn):
        install_grant(b.conn, make_grant(issuer, not_after_ms=1), {issuer.keyid: issuer.public}, "asset-1")
    [r] = b.book.record_batch(b.conn, [Use(kind="analysis", right_id="grant-1")])
    assert (r.right, r.overage_units) == (None, 1)


# --- settlement ---------------------------------------------------------------------------------------------


def test_settlement_totals_and_chain(box: Box) -> None:
    s1, s2 = box.book.settlements(box.conn)
    assert s1["signed"]["count"] == 4
    assert s2["signed"]["first_seq"] == 5
    assert s1["signed"]["totals"] == [
        {"kind": "analysis", "right": None, "receipts": 4, "units": 4, "overage_units": 4}
    ]
    assert box.book.close_batch(box.conn, 100) is not None
    assert box.book.close_batch(box.conn, 100) is None
    assert box.book.unsettled(box.conn) == (0, None)


def test_settlements_verify_alone(box: Box) -> None:
    doc = box.export()
    certs = {box.identity.key.keyid: box.identity.parsed}
    from protocol.verify import verify_receipts

    receipts = verify_receipts(doc["receipts"], certs, trust(box))
    assert len(verify_settlements(doc["settlements"], receipts, certs, trust(box))) == 2


def test_settlement_service_closes_by_count(tmp_path: Path) -> None:
    from edge.config import AgentConfig, with_overrides
    from edge.receipts.service import SettlementService

    b = make_box(tmp_path)
    config = with_overrides(AgentConfig(), agent={"data_dir": str(tmp_path)}, receipts={"settle_max_receipts": 5})
    service = SettlementService(config.receipts, config.agent.data_dir, b.book)
    b.record(4)
    assert service.settle_due() == 0
    b.record(7)
    assert service.settle_due() == 2  # 5 + 5, one receipt left for later
    assert b.book.unsettled(b.conn)[0] == 1


def test_open_book_provisions_on_first_run_in_dev_mode(tmp_path: Path) -> None:
    from edge.config import AgentConfig, with_overrides
    from edge.receipts.service import open_book

    config = with_overrides(AgentConfig(), agent={"data_dir": str(tmp_path)}, receipts={"dev_mode": True})
    book = open_book(config.receipts, config.agent.data_dir)
    assert book.identity is not None
    assert (tmp_path / "keys" / "dev-manufacturer.pub").exists()
    assert oct((tmp_path / "keys" / "device.key").stat().st_mode & 0o777) == "0o600"
    again = open_book(config.receipts, config.agent.data_dir)
    assert again.identity is not None
    assert again.identity.device_id == book.identity.device_id


def test_open_book_with_an_untrusted_certificate_parks_instead_of_failing(tmp_path: Path) -> None:
    from edge.config import AgentConfig, with_overrides
    from edge.receipts.service import open_book
    from protocol.keyfiles import save_private_key, save_public_key

    manufacturer, other = generate_key(), generate_key()
    save_private_key(tmp_path / "m.key", manufacturer)
    save_public_key(tmp_path / "other.pub", other.public)
    config = with_overrides(
        AgentConfig(),
        agent={"data_dir": str(tmp_path / "data")},
        receipts={"manufacturer_key": str(tmp_path / "m.key"), "trust_keys": [str(tmp_path / "other.pub")]},
    )
    assert open_book(config.receipts, config.agent.data_dir).identity is None


def test_canonical_bytes_refuse_floats() -> None:
    with pytest.raises(errors.EncodingError):
        canonical_bytes({"amount": 1.5})


def test_database_rows_are_the_signed_bytes(box: Box) -> None:
    row = box.conn.execute("SELECT body FROM receipts WHERE seq = 1").fetchone()
    assert bytes(row[0]) == canonical_bytes(box.export()["receipts"][0]["signed"])
    assert isinstance(box.conn, sqlite3.Connection)


# --- pipelined group commit -------------------------------------------------------------------------------


def test_record_stream_is_a_valid_chain(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    issuer = generate_key()
    with transaction(b.conn):
        install_grant(b.conn, make_grant(issuer, units=5), {issuer.keyid: issuer.public}, "asset-1")
    batches = [[Use(kind="analysis", study_uid=f"1.2.{i}.{j}") for j in range(4)] for i in range(5)]
    acked = [r.seq for batch in b.book.record_stream(b.conn, batches) for r in batch]
    assert acked == list(range(1, 21))
    assert list_grants(b.conn)[0]["remaining"] == 0
    result = verify_export(b.export(), trust(b))
    assert sum(r.overage_units for r in result.receipts) == 15


def test_record_stream_resigns_when_another_writer_moved_the_chain(tmp_path: Path) -> None:
    from edge.db import DB_FILENAME, connect

    b = make_box(tmp_path)
    other = connect(tmp_path / DB_FILENAME)

    def batches() -> Any:
        for i in range(4):
            if i == 2:  # a clinical use lands through the hook while the stream is running
                with transaction(other):
                    b.book.record(other, Use(kind="exposure"))
            yield [Use(kind="analysis") for _ in range(3)]

    acked = [r.seq for batch in b.book.record_stream(b.conn, batches()) for r in batch]
    assert len(acked) == 12
    assert len(set(acked)) == 12
    result = verify_export(b.export(), trust(b))
    assert [r.seq for r in result.receipts] == list(range(1, 14))
    assert [r.kind for r in result.receipts].count("exposure") == 1
    other.close()


# --- key rotation -----------------------------------------------------------------------------------------


def test_rotation_continues_the_chain_and_retires_the_old_key(tmp_path: Path) -> None:
    from edge.receipts.identity import rotate

    b = make_box(tmp_path)
    b.record(3)
    b.book.close_batch(b.conn, 100)
    old = b.identity
    files = KeyFiles(tmp_path / "keys")
    rotate(files, b.manufacturer)
    new = load_identity(files)
    assert new is not None
    assert new.key.keyid != old.key.keyid
    assert new.parsed.replaces == old.key.keyid
    assert new.device_id == old.device_id
    assert new.history == (old.certificate,)
    book = ReceiptBook(new)
    book.record_batch(b.conn, [Use(kind="analysis")] * 2)
    book.close_batch(b.conn, 100)
    doc = book.export(b.conn)
    result = verify_export(doc, trust(b))
    assert [r.keyid for r in result.receipts] == [old.key.keyid] * 3 + [new.key.keyid] * 2
    assert len(result.settlements) == 2

    # the replaced key signing after the rotation (say it was stolen) is refused
    stolen = seal(RECEIPT, dict(doc["receipts"][-1]["signed"]) | {"keyid": old.key.keyid, "seq": 6}, old.key)
    doc["receipts"].append(stolen)
    doc["settlements"] = []
    with pytest.raises(errors.RevokedKey):
        verify_export(doc, trust(b))


def test_interrupted_rotation_is_finished_on_load(tmp_path: Path) -> None:
    from protocol.keyfiles import save_private_key

    b = make_box(tmp_path)
    files = KeyFiles(tmp_path / "keys")
    new = generate_key()
    from protocol.certificates import REQUEST, issue_certificate

    request = seal(
        REQUEST,
        {"type": REQUEST, "format": 1, "device": b.identity.device_id, "key": new.public.to_json()},
        new,
    )
    save_private_key(files.next_key, new)
    cert = issue_certificate(request, b.manufacturer, serial=2, issued_ms=0)
    files.next_certificate.write_bytes(canonical_bytes(cert))
    loaded = load_identity(files)  # as after a crash between staging and swapping
    assert loaded is not None
    assert loaded.key.keyid == new.keyid
    assert not files.next_certificate.exists()


def test_hook_survives_a_database_without_its_tables(tmp_path: Path) -> None:
    from edge.db import connect

    b = make_box(tmp_path)
    conn = connect(tmp_path / "other.db")  # never migrated: the receipt and the parking both fail
    conn.execute("CREATE TABLE work (id INTEGER PRIMARY KEY)")
    with transaction(conn):
        conn.execute("INSERT INTO work (id) VALUES (1)")
        assert b.book.record(conn, Use(kind="analysis")) is None
    assert conn.execute("SELECT count(*) FROM work").fetchone()[0] == 1
    conn.close()


def test_stand_alone_proofs(box: Box) -> None:
    from protocol.verify import verify_proof

    proof = box.book.prove(box.conn, 6)
    receipt, settlement = verify_proof(copy.deepcopy(proof), trust(box))
    assert (receipt.seq, settlement.batch) == (6, 2)
    other = box.book.prove(box.conn, 2)
    with pytest.raises(errors.InclusionProofInvalid):
        verify_proof(proof | {"settlement": other["settlement"]}, trust(box))
    altered = copy.deepcopy(proof)
    altered["receipt"]["signed"]["units"] = 9
    with pytest.raises(errors.BadSignature):
        verify_proof(altered, trust(box))
    with pytest.raises(errors.UntrustedIssuer):
        verify_proof(proof, Trust.of([generate_key().public]))
    with pytest.raises(ReceiptError):
        box.book.prove(box.conn, 11)  # not settled yet
