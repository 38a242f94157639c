"""Hybrid device identities (the post-quantum option): ed25519 + ML-DSA-65, both signatures required.

A hybrid certificate (format 2) names both device keys; every receipt and settlement of that device must carry a
valid signature by each, at the pure verifier (:mod:`protocol.verify`) and at the relay's ingest. One missing or
forged signature is refused as :class:`~protocol.errors.HybridSignatureInvalid`; an ed25519-only device is
format 1 and one signature, exactly as before.
"""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_relay.ingest import Ack, Ingestor
from cloud_relay.storage import Database
from edge.cli import main
from edge.errors import IdentityError
from edge.receipts.identity import KeyFiles, install_certificate, load_identity, provision, rotate
from protocol.certificates import certificate_request, issue_certificate, parse_certificate
from protocol.encoding import canonical_bytes, decode
from protocol.errors import BadSignature, CertificateInvalid, HybridSignatureInvalid, MalformedRecord
from protocol.keyfiles import load_private_key
from protocol.keys import ED25519, MLDSA65, PrivateKey, generate_key, seal
from protocol.receipts import RECEIPT
from protocol.verify import Trust, verify_certificates, verify_export, verify_proof, verify_receipts
from tests.receipts_helpers import make_box
from tests.relay_helpers import provisioned, receipt_items, throwaway_db, up

Tamper = Callable[[dict[str, Any]], object]


@pytest.fixture(scope="module")
def manufacturer() -> PrivateKey:
    return generate_key()


@pytest.fixture(scope="module")
def hybrid_export(tmp_path_factory: pytest.TempPathFactory, manufacturer: PrivateKey) -> dict[str, Any]:
    """A hybrid box's export: 6 receipts, one settlement over the first 4 (signed once per module: ML-DSA keys)."""
    box = make_box(tmp_path_factory.mktemp("hybrid"), manufacturer, hybrid=True)
    box.record(4)
    box.book.close_batch(box.conn, 100)
    box.record(2)
    return box.export()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with throwaway_db("sqlite", tmp_path) as database:
        yield database


def _trust(manufacturer: PrivateKey) -> Trust:
    return Trust.of([manufacturer.public])


def _one_ack(acks: list[Ack]) -> Ack:
    assert len(acks) == 1
    return acks[0]


def _flip(hex_sig: str) -> str:
    raw = bytearray(bytes.fromhex(hex_sig))
    raw[len(raw) // 2] ^= 0x01
    return raw.hex()


# --- the identity -----------------------------------------------------------------------------------------------


def test_a_hybrid_identity_has_both_keys_certified_and_private(tmp_path: Path, manufacturer: PrivateKey) -> None:
    files = KeyFiles(tmp_path / "keys")
    cert = provision(files, manufacturer=manufacturer, hybrid=True)
    assert cert is not None
    identity = load_identity(files)
    assert identity is not None
    assert identity.pq_key is not None
    signed = cert["signed"]
    assert signed["format"] == 2
    assert signed["key"]["alg"] == ED25519
    assert signed["pq_key"]["alg"] == MLDSA65
    assert signed["keyid"] == identity.key.keyid
    assert signed["pq_keyid"] == identity.pq_key.keyid
    assert len(bytes.fromhex(signed["pq_key"]["public"])) == 1952
    for path in (files.device_key, files.pq_key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert decode(path.read_bytes())["alg"] in (ED25519, MLDSA65)
    request = decode(files.request.read_bytes())  # proof of possession of both keys
    assert [s["alg"] for s in request["signatures"]] == [ED25519, MLDSA65]
    parsed = verify_certificates([cert], _trust(manufacturer))[identity.key.keyid]
    assert parsed.keys == (identity.key.public, identity.pq_key.public)
    # idempotent: run again, the same keys and a hybrid identity still
    assert provision(files, manufacturer=manufacturer) is not None
    again = load_identity(files)
    assert again is not None
    assert again.pq_key == identity.pq_key
    assert again.key == identity.key


def test_a_request_without_its_ml_dsa_proof_of_possession_is_not_certified(manufacturer: PrivateKey) -> None:
    request = certificate_request("box-1", generate_key(), pq_key=generate_key(MLDSA65))
    request["signatures"].pop()
    with pytest.raises(HybridSignatureInvalid, match=r"ML-DSA-65 signature .* is missing"):
        issue_certificate(request, manufacturer, serial=1, issued_ms=0)


def test_a_format_1_certificate_with_a_pq_key_is_malformed(manufacturer: PrivateKey) -> None:
    cert = issue_certificate(
        certificate_request("box-1", generate_key(), pq_key=generate_key(MLDSA65)), manufacturer, serial=1, issued_ms=0
    )
    body = {**cert["signed"], "format": 1}
    with pytest.raises(MalformedRecord, match="needs format 2"):
        parse_certificate(seal("device-certificate", body, manufacturer))


def test_an_ed25519_key_is_never_certified_both_ways(tmp_path: Path, manufacturer: PrivateKey) -> None:
    """Two certificates of one ed25519 key, hybrid and not, would let the ed25519 signature stand alone."""
    key, pq = generate_key(), generate_key(MLDSA65)
    hybrid = issue_certificate(certificate_request("box-1", key, pq_key=pq), manufacturer, serial=1, issued_ms=0)
    single = issue_certificate(certificate_request("box-1", key), manufacturer, serial=2, issued_ms=0)
    for order in ([hybrid, single], [single, hybrid]):
        with pytest.raises(CertificateInvalid, match="disagree"):
            verify_certificates(order, _trust(manufacturer))
    # and the box never asks: an existing ed25519-only key does not become half of a hybrid identity
    files = KeyFiles(tmp_path / "keys")
    provision(files)
    with pytest.raises(IdentityError, match="fresh key pair"):
        provision(files, manufacturer=manufacturer, hybrid=True)


# --- the pure verifier ------------------------------------------------------------------------------------------


def test_hybrid_receipts_settlements_and_proofs_verify(
    hybrid_export: dict[str, Any], manufacturer: PrivateKey, tmp_path: Path
) -> None:
    verified = verify_export(hybrid_export, _trust(manufacturer))
    assert [r.seq for r in verified.receipts] == [1, 2, 3, 4, 5, 6]
    assert [s.batch for s in verified.settlements] == [1]
    for envelope in [*hybrid_export["receipts"], *hybrid_export["settlements"]]:
        assert [s["alg"] for s in envelope["signatures"]] == [ED25519, MLDSA65]
        assert len(bytes.fromhex(envelope["signatures"][1]["sig"])) == 3309
    # the general path too: signatures in the other order are still both there
    swapped = copy.deepcopy(hybrid_export)
    for envelope in [*swapped["receipts"], *swapped["settlements"]]:
        envelope["signatures"].reverse()
    assert verify_export(swapped, _trust(manufacturer)).checkpoint == verified.checkpoint


def test_a_hybrid_inclusion_proof_verifies(tmp_path: Path, manufacturer: PrivateKey) -> None:
    box = make_box(tmp_path, manufacturer, hybrid=True)
    box.record(3)
    box.book.close_batch(box.conn, 100)
    proof = box.book.prove(box.conn, 2)
    receipt, settlement = verify_proof(proof, _trust(manufacturer))
    assert (receipt.seq, settlement.batch) == (2, 1)
    proof["settlement"]["signatures"].pop()
    with pytest.raises(HybridSignatureInvalid):
        verify_proof(proof, _trust(manufacturer))


_TAMPERS: list[tuple[str, Tamper, str]] = [
    ("ml-dsa missing (ed25519 alone)", lambda e: e["signatures"].pop(), "ML-DSA-65 signature .* is missing"),
    ("ml-dsa forged", lambda e: e["signatures"][1].update(sig=_flip(e["signatures"][1]["sig"])), "does not verify"),
    ("ml-dsa truncated", lambda e: e["signatures"][1].update(sig=e["signatures"][1]["sig"][:-2]), "does not verify"),
    ("ml-dsa labelled ed25519", lambda e: e["signatures"][1].update(alg=ED25519), "does not verify"),
    ("ed25519 missing (ml-dsa alone)", lambda e: e["signatures"].pop(0), "ed25519 signature .* is missing"),
    ("ed25519 forged", lambda e: e["signatures"][0].update(sig=_flip(e["signatures"][0]["sig"])), "does not verify"),
]


@pytest.mark.parametrize(("tamper", "message"), [pytest.param(t, m, id=name) for name, t, m in _TAMPERS])
def test_a_hybrid_receipt_or_settlement_with_one_bad_signature_is_refused(
    hybrid_export: dict[str, Any], manufacturer: PrivateKey, tamper: Tamper, message: str
) -> None:
    for part in ("receipts", "settlements"):
        doc = copy.deepcopy(hybrid_export)
        tamper(doc[part][0])
        with pytest.raises(HybridSignatureInvalid, match=message) as caught:
            verify_export(doc, _trust(manufacturer))
        assert isinstance(caught.value, BadSignature)  # callers that catch BadSignature still catch it
        assert caught.value.args[0].startswith("receipt:" if part == "receipts" else "settlement:")


def test_an_ml_dsa_signature_of_another_receipt_does_not_count(
    hybrid_export: dict[str, Any], manufacturer: PrivateKey
) -> None:
    doc = copy.deepcopy(hybrid_export)
    doc["receipts"][0]["signatures"][1] = doc["receipts"][1]["signatures"][1]
    with pytest.raises(HybridSignatureInvalid, match=r"ML-DSA-65 signature .* does not verify"):
        verify_export(doc, _trust(manufacturer))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_a_hybrid_receipt_counts_only_with_both_valid_signatures(
    hybrid_export: dict[str, Any], manufacturer: PrivateKey, data: st.DataObject
) -> None:
    """Any arrangement of signature entries (the two real ones, corrupted ones, one of the next receipt's,
    duplicates, in any order) is accepted exactly when both real signatures are among them."""
    envelope = hybrid_export["receipts"][0]
    ed, pq = envelope["signatures"]
    other_pq = hybrid_export["receipts"][1]["signatures"][1]
    pool = [ed, pq, {**ed, "sig": _flip(ed["sig"])}, {**pq, "sig": _flip(pq["sig"])}, other_pq]
    chosen = data.draw(st.lists(st.sampled_from(range(len(pool))), max_size=4), label="entries")
    # a verifier reads the first entry by a key id: a corrupted entry before the real one hides it (refused too)
    first_by_key: dict[str, int] = {}
    for i in chosen:
        first_by_key.setdefault(pool[i]["keyid"], i)
    valid = first_by_key.get(ed["keyid"]) == 0 and first_by_key.get(pq["keyid"]) == 1
    candidate = {"signed": envelope["signed"], "signatures": [copy.deepcopy(pool[i]) for i in chosen]}
    certs = verify_certificates(hybrid_export["certificates"], _trust(manufacturer))
    if valid:
        [(receipt, _)] = verify_receipts([candidate], certs, _trust(manufacturer))
        assert receipt.seq == 1
    else:
        with pytest.raises(BadSignature):
            verify_receipts([candidate], certs, _trust(manufacturer))


# --- ed25519-only devices: unchanged ----------------------------------------------------------------------------


def test_an_ed25519_only_device_is_as_before(tmp_path: Path, manufacturer: PrivateKey) -> None:
    box = make_box(tmp_path, manufacturer)
    assert box.identity.pq_key is None
    assert box.identity.cosigners == ()
    assert not KeyFiles(tmp_path / "keys").pq_key.exists()
    signed = box.identity.certificate["signed"]
    assert signed["format"] == 1
    assert sorted(signed) == sorted(
        ["type", "format", "device", "key", "keyid", "issuer", "serial", "not_before_ms", "not_after_ms", "replaces"]
    )
    assert parse_certificate(box.identity.certificate).keys == (box.identity.key.public,)
    box.record(3)
    settlement = box.book.close_batch(box.conn, 100)
    assert settlement is not None
    assert len(settlement["signatures"]) == 1
    doc = box.export()
    assert all(len(e["signatures"]) == 1 for e in doc["receipts"])
    assert [r.seq for r in verify_export(doc, _trust(manufacturer)).receipts] == [1, 2, 3]
    doc["receipts"][0]["signatures"][0]["sig"] = _flip(doc["receipts"][0]["signatures"][0]["sig"])
    with pytest.raises(BadSignature) as caught:
        verify_export(doc, _trust(manufacturer))
    assert type(caught.value) is BadSignature  # not the hybrid error: this device has one key


# --- rotation ---------------------------------------------------------------------------------------------------


def test_rotation_makes_an_ed25519_box_hybrid_and_a_hybrid_box_stays_hybrid(
    tmp_path: Path, manufacturer: PrivateKey
) -> None:
    box = make_box(tmp_path, manufacturer)
    files = KeyFiles(tmp_path / "keys")
    box.record(2)
    rotate(files, manufacturer, hybrid=True)
    upgraded = load_identity(files)
    assert upgraded is not None
    assert upgraded.pq_key is not None
    box.book.adopt_identity(box.conn, upgraded)
    box.record(2)
    rotate(files, manufacturer)  # hybrid stays hybrid, with a new ML-DSA-65 key
    again = load_identity(files)
    assert again is not None
    assert again.pq_key is not None
    assert again.pq_key != upgraded.pq_key
    assert not files.next_pq_key.exists()
    box.book.adopt_identity(box.conn, again)
    box.record(2)
    box.book.close_batch(box.conn, 100)
    doc = box.book.export(box.conn)
    assert [len(e["signatures"]) for e in doc["receipts"]] == [1, 1, 2, 2, 2, 2]
    assert [r.seq for r in verify_export(doc, _trust(manufacturer)).receipts] == [1, 2, 3, 4, 5, 6]


# --- the relay's ingest -----------------------------------------------------------------------------------------


def test_the_relay_stores_a_hybrid_devices_receipts_and_settlements(db: Database, tmp_path: Path) -> None:
    box = provisioned(db, tmp_path / "box", generate_key(), hybrid=True)
    box.record(3)
    settlement = box.book.close_batch(box.conn, 100)
    device = box.identity.device_id
    ack = _one_ack(
        Ingestor(db).handle(
            [up(device, "receipts", receipt_items(box)), up(device, "settlements", [("s1", settlement)])]
        )
    )
    assert (ack.stored, ack.rejected) == (["r1", "r2", "r3", "s1"], [])
    with db.transaction() as tx:
        row = tx.one("SELECT signatures FROM receipts WHERE device = ? AND seq = 1", (device,))
    assert row is not None
    assert [s["alg"] for s in decode(row[0])] == [ED25519, MLDSA65]


def _strip_pq(envelope: dict[str, Any]) -> None:
    envelope["signatures"].pop()


def _forge_pq(envelope: dict[str, Any]) -> None:
    envelope["signatures"][1]["sig"] = _flip(envelope["signatures"][1]["sig"])


@pytest.mark.parametrize("tamper", [_strip_pq, _forge_pq], ids=["ed25519 alone", "ml-dsa forged"])
def test_the_relay_refuses_a_hybrid_devices_records_without_both_signatures(
    db: Database, tmp_path: Path, tamper: Tamper
) -> None:
    box = provisioned(db, tmp_path / "box", generate_key(), hybrid=True)
    box.record(2)
    settlement = box.book.close_batch(box.conn, 100)
    assert settlement is not None
    device = box.identity.device_id
    ingest = Ingestor(db)
    receipts = receipt_items(box)
    bad = copy.deepcopy(receipts[1][1])
    tamper(bad)
    ack = _one_ack(ingest.handle([up(device, "receipts", [receipts[0], ("r2", bad)])]))
    assert ack.stored == ["r1"]
    assert [r["id"] for r in ack.rejected] == ["r2"]
    assert ack.rejected[0]["reason"].startswith("HybridSignatureInvalid: receipt: the ML-DSA-65 signature")
    ack = _one_ack(ingest.handle([up(device, "receipts", [receipts[1]])]))  # the genuine one is still welcome
    assert ack.stored == ["r2"]
    bad_settlement = copy.deepcopy(settlement)
    tamper(bad_settlement)
    ack = _one_ack(ingest.handle([up(device, "settlements", [("s1", bad_settlement)])]))
    assert ack.stored == []
    assert ack.rejected[0]["reason"].startswith("HybridSignatureInvalid: settlement:")
    assert _one_ack(ingest.handle([up(device, "settlements", [("s1", settlement)])])).stored == ["s1"]


def test_the_relay_takes_a_hybrid_certificate_published_by_the_device(db: Database, tmp_path: Path) -> None:
    manufacturer = generate_key()
    provisioned(db, tmp_path / "first", manufacturer)  # the relay trusts the manufacturer
    box = make_box(tmp_path / "box", manufacturer, hybrid=True)
    device = box.identity.device_id
    ingest = Ingestor(db)
    ack = _one_ack(ingest.handle([up(device, "certificate", [("c1", box.identity.certificate)])]))
    assert ack.stored == ["c1"]
    box.record(1)
    stripped = receipt_items(box)
    _strip_pq(stripped[0][1])
    assert _one_ack(ingest.handle([up(device, "receipts", stripped)])).rejected[0]["id"] == "r1"
    assert _one_ack(ingest.handle([up(device, "receipts", receipt_items(box))])).stored == ["r1"]


# --- the command line -------------------------------------------------------------------------------------------


def test_provision_hybrid_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["provision", "--data-dir", str(data), "--dev", "--hybrid"]) == 0
    assert "ML-DSA-65 key" in capsys.readouterr().out
    identity = load_identity(KeyFiles(data / "keys"))
    assert identity is not None
    assert identity.pq_key is not None
    assert main(["provision", "--data-dir", str(data), "--dev", "--hybrid"]) == 0
    assert "already provisioned" in capsys.readouterr().out
    # an ed25519 box asked for --hybrid says how, and --rotate --hybrid does it
    plain = tmp_path / "plain"
    assert main(["provision", "--data-dir", str(plain), "--dev"]) == 0
    assert main(["provision", "--data-dir", str(plain), "--dev", "--hybrid"]) == 1
    assert "--rotate --hybrid" in capsys.readouterr().out
    assert main(["provision", "--data-dir", str(plain), "--dev", "--rotate", "--hybrid"]) == 0
    rotated = load_identity(KeyFiles(plain / "keys"))
    assert rotated is not None
    assert rotated.pq_key is not None


def test_the_manufacturer_certifies_a_hybrid_request_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, mkey, cert = tmp_path / "data", tmp_path / "m.key", tmp_path / "cert.json"
    assert main(["provision", "--new-manufacturer-key", str(mkey)]) == 0
    assert main(["provision", "--data-dir", str(data), "--hybrid"]) == 0
    assert "ed25519 + ML-DSA-65" in capsys.readouterr().out
    request = data / "keys" / "device.request.json"
    assert main(["provision", "--sign-request", str(request), "--manufacturer-key", str(mkey), "--out", str(cert)]) == 0
    args = ["provision", "--data-dir", str(data), "--install-certificate", str(cert), "--trust", f"{mkey}.pub"]
    assert main(args) == 0
    identity = load_identity(KeyFiles(data / "keys"))
    assert identity is not None
    assert identity.pq_key is not None
    assert canonical_bytes(identity.certificate) == canonical_bytes(decode(cert.read_bytes()))


def test_a_hybrid_request_answered_with_an_ed25519_only_certificate_is_not_installed(
    tmp_path: Path, manufacturer: PrivateKey
) -> None:
    files = KeyFiles(tmp_path / "keys")
    provision(files, hybrid=True)
    request = decode(files.request.read_bytes())
    plain = {k: v for k, v in request["signed"].items() if k != "pq_key"} | {"format": 1}
    downgraded = issue_certificate(
        seal("device-certificate-request", plain, load_private_key(files.device_key)),
        manufacturer,
        serial=1,
        issued_ms=0,
    )
    with pytest.raises(CertificateInvalid, match="ML-DSA-65"):
        install_certificate(files, downgraded, manufacturer.public)
    assert load_identity(files) is None


def test_the_receipt_message_both_keys_sign_is_the_same_canonical_body(hybrid_export: dict[str, Any]) -> None:
    """One body, two signatures over it: the ML-DSA-65 entry adds nothing to ``signed``."""
    envelope = hybrid_export["receipts"][0]
    assert set(envelope) == {"signed", "signatures"}
    assert "pq_keyid" not in envelope["signed"]
    assert envelope["signed"]["type"] == RECEIPT
