"""The verifier: pure functions (no I/O) shared by ``btt-edge receipts verify`` and the cloud relay.

Trust starts at manufacturer public keys (:class:`Trust`), optionally with the manufacturer's signed
revocation list. From there: certificates vouch for device keys, device keys sign receipts and settlements.
Each failure raises its own :class:`~protocol.errors.VerificationError` subclass:

========================  ===========================================================================
``MalformedRecord``       a field is missing or of the wrong type
``UntrustedIssuer``       a certificate not signed by a trusted manufacturer key (wrong manufacturer)
``UnknownSigningKey``     a receipt or settlement signed by a key no certificate vouches for (forged key)
``RevokedKey``            signed by a revoked key
``BadSignature``          a signature that does not verify (an altered field)
``HybridSignatureInvalid`` a hybrid device's record without a valid ed25519 *and* ML-DSA-65 signature
``CertificateInvalid``    a receipt outside its certificate's device or validity window
``ReorderedReceipt``      the next receipt in sequence comes later in the stream
``SequenceGap``           the next receipt in sequence is absent (dropped)
``DuplicateReceipt``      the receipt just seen, again
``ReplayedReceipt``       an older receipt, again (or one at or before the checkpoint)
``ConflictingReceipt``    another receipt with an already seen sequence number (fork)
``BrokenChain``           ``prev`` is not the hash of the previous receipt
``SettlementMismatch``    a settlement's batch, range, count, chain head or previous link is wrong
``MerkleRootMismatch``    the root is not the tree hash of the covered receipts
``TotalsMismatch``        the totals are not those of the covered receipts
========================  ===========================================================================

A device whose certificate is hybrid (:attr:`DeviceCertificate.pq_key`) must sign every receipt and settlement
with both its keys (:attr:`DeviceCertificate.keys`, :func:`~protocol.keys.check_signatures`); an ed25519-only
device, one signature, as before.

A :class:`Checkpoint` is where a verifier left off (the relay keeps one per device): verification continues
the chain from it, and anything at or before it is a replay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import merkle
from protocol.certificates import CERTIFICATE, REVOCATIONS, DeviceCertificate, parse_certificate
from protocol.encoding import encode_unchecked, sha256_hex, signing_message
from protocol.errors import (
    BrokenChain,
    CertificateInvalid,
    ConflictingReceipt,
    DuplicateReceipt,
    InclusionProofInvalid,
    MalformedRecord,
    MerkleRootMismatch,
    ReorderedReceipt,
    ReplayedReceipt,
    RevokedKey,
    SequenceGap,
    SettlementMismatch,
    TotalsMismatch,
    UnknownSigningKey,
    UntrustedIssuer,
)
from protocol.keys import PublicKey, check_signature, check_signatures, signed_part
from protocol.receipts import GENESIS, RECEIPT, Receipt, fast_receipt, parse_receipt
from protocol.records import get_int
from protocol.settlement import SETTLEMENT, Settlement, compute_totals, parse_settlement

__all__ = [
    "EXPORT",
    "PROOF",
    "Checkpoint",
    "Trust",
    "VerifiedExport",
    "verify_certificates",
    "verify_export",
    "verify_inclusion",
    "verify_proof",
    "verify_receipts",
    "verify_revocations",
    "verify_settlements",
]

EXPORT = "receipt-export"
PROOF = "inclusion-proof"
_RECEIPT_PREFIX = signing_message(RECEIPT, b"")


@dataclass(frozen=True)
class Trust:
    """Manufacturer keys by key id, and revoked device key ids."""

    manufacturers: Mapping[str, PublicKey]
    revoked: frozenset[str] = frozenset()

    @classmethod
    def of(cls, keys: Iterable[PublicKey], revocations: Any = None) -> Trust:
        """Trust ``keys``; apply a signed revocation list (checked against them) when given."""
        manufacturers = {k.keyid: k for k in keys}
        revoked = verify_revocations(revocations, manufacturers) if revocations is not None else frozenset()
        return cls(manufacturers, revoked)


@dataclass(frozen=True)
class Checkpoint:
    """The last receipt and settlement a verifier accepted for a device (zeros: nothing yet)."""

    seq: int = 0
    receipt_hash: str = GENESIS
    batch: int = 0
    settlement_hash: str = GENESIS


def verify_revocations(envelope: Any, manufacturers: Mapping[str, PublicKey]) -> frozenset[str]:
    """The revoked key ids of a revocation list signed by one of ``manufacturers``."""
    signed = signed_part(envelope, REVOCATIONS)
    key = manufacturers.get(signed.get("issuer"))  # type: ignore[arg-type]
    if key is None:
        raise UntrustedIssuer("revocation list: not issued by a trusted manufacturer key")
    check_signature(REVOCATIONS, envelope, key)
    revoked = signed.get("revoked")
    if not isinstance(revoked, list) or not all(isinstance(k, str) for k in revoked):
        raise MalformedRecord("revocation list: revoked must be a list of key ids")
    return frozenset(revoked)


def verify_certificates(envelopes: Iterable[Any], trust: Trust) -> dict[str, DeviceCertificate]:
    """Certificates signed by a trusted manufacturer, by device key id."""
    out: dict[str, DeviceCertificate] = {}
    for envelope in envelopes:
        cert = parse_certificate(envelope)
        key = trust.manufacturers.get(cert.issuer_keyid)
        if key is None:
            raise UntrustedIssuer(f"certificate of {cert.device_id}: issuer {cert.issuer_keyid[:16]} is not trusted")
        check_signature(CERTIFICATE, envelope, key)
        known = out.get(cert.key.keyid)
        if known is not None and known.pq_key != cert.pq_key:  # no downgrade to one signature by a second cert
            raise CertificateInvalid(f"certificates of key {cert.key.keyid[:16]} disagree on its ML-DSA-65 key")
        out[cert.key.keyid] = cert
    return out


def _signer(
    signed: Mapping[str, Any], what: str, certificates: Mapping[str, DeviceCertificate], trust: Trust
) -> DeviceCertificate:
    keyid = signed.get("keyid")
    cert = certificates.get(keyid) if isinstance(keyid, str) else None
    if cert is None:
        raise UnknownSigningKey(f"{what}: key {str(keyid)[:16]} has no certificate from a trusted manufacturer")
    if cert.key.keyid in trust.revoked:
        raise RevokedKey(f"{what}: key {cert.key.keyid[:16]} of {cert.device_id} is revoked")
    return cert


def _second(cert: DeviceCertificate) -> tuple[str, str, Callable[[bytes, bytes], bool]] | None:
    """The fast path's check of a hybrid certificate's ML-DSA-65 signature: ``(keyid, alg, check)``."""
    pq = cert.pq_key
    return None if pq is None else (pq.keyid, pq.alg, pq.verifier(_RECEIPT_PREFIX))


def verify_receipts(
    envelopes: Sequence[Any],
    certificates: Mapping[str, DeviceCertificate],
    trust: Trust,
    checkpoint: Checkpoint = Checkpoint(),
) -> list[tuple[Receipt, bytes]]:
    """Verify a device's receipts in stream order, continuing the chain from ``checkpoint``.

    Returns each receipt with its canonical bytes (the Merkle leaf data).
    """
    out: list[tuple[Receipt, bytes]] = []
    expected, prev = checkpoint.seq + 1, checkpoint.receipt_hash
    device: str | None = None
    current: DeviceCertificate | None = None
    replaced: set[str] = set()
    # Fast path per usable key: the first signature by the receipt's key, of the certificate's algorithm (and for
    # a hybrid certificate the second by its ML-DSA-65 key). Anything else (and any failure) goes through the
    # general checks below, which raise the specific error.
    usable = {k: (c, c.key.alg, c.key.verifier(_RECEIPT_PREFIX), _second(c)) for k, c in certificates.items()
              if k not in trust.revoked}  # fmt: skip
    for position, envelope in enumerate(envelopes):
        fast = None
        try:
            signed = envelope["signed"]
            keyid = signed["keyid"]
            cert, alg, check, second = usable[keyid]
            entry = envelope["signatures"][0]
            if entry["keyid"] == keyid and entry["alg"] == alg:
                fast = fast_receipt(signed)
                if fast is not None and not check(fast[0], bytes.fromhex(entry["sig"])):
                    fast = None
                if fast is not None and second is not None:
                    pq_entry = envelope["signatures"][1]
                    if (pq_entry["keyid"], pq_entry["alg"]) != second[:2] or not second[2](
                        fast[0], bytes.fromhex(pq_entry["sig"])
                    ):
                        fast = None
        except (KeyError, TypeError, IndexError, ValueError, AttributeError):
            fast = None
        if fast is None:
            signed = signed_part(envelope, RECEIPT)
            cert = _signer(signed, f"receipt {signed.get('seq')!r:.20}", certificates, trust)
            body = check_signatures(RECEIPT, envelope, cert.keys, encode_unchecked(signed))
            receipt = parse_receipt(signed, hashlib.sha256(body).hexdigest())
        else:
            body, receipt = fast
        seq = receipt.seq
        if cert is not current:  # a key change: the first receipt, or a rotation
            if cert.key.keyid in replaced:
                raise RevokedKey(f"receipt {seq}: key {cert.key.keyid[:16]} was replaced by a newer key")
            if cert.replaces is not None:
                replaced.add(cert.replaces)
            if device is not None and cert.device_id != device:
                raise CertificateInvalid(f"receipt {seq}: device {cert.device_id} in a stream of {device}")
            current, device = cert, cert.device_id
        if receipt.device != device or (cert.not_after_ms is not None and receipt.time_ms >= cert.not_after_ms):
            raise CertificateInvalid(f"receipt {seq}: outside the certificate of {cert.device_id}")
        if seq != expected:
            _sequence_error(envelopes, position, receipt=receipt, expected=expected, seen=out, checkpoint=checkpoint)
        if receipt.prev != prev:
            raise BrokenChain(f"receipt {seq}: prev does not match the hash of receipt {seq - 1}")
        prev = receipt.hash
        expected = seq + 1
        out.append((receipt, body))
    return out


def _sequence_error(
    envelopes: Sequence[Any],
    position: int,
    *,
    receipt: Receipt,
    expected: int,
    seen: Sequence[tuple[Receipt, bytes]],
    checkpoint: Checkpoint,
) -> None:
    seq = receipt.seq
    if seq <= checkpoint.seq:
        raise ReplayedReceipt(f"receipt {seq}: at or before the checkpoint (seq {checkpoint.seq})")
    if seq < expected:
        earlier = seen[seq - checkpoint.seq - 1][0]  # the verified stream so far is contiguous from the checkpoint
        if earlier.hash != receipt.hash:
            raise ConflictingReceipt(f"receipt {seq}: differs from the receipt {seq} seen before (forked chain)")
        if seq == expected - 1:
            raise DuplicateReceipt(f"receipt {seq}: the same receipt twice in a row")
        raise ReplayedReceipt(f"receipt {seq}: sent again after receipt {expected - 1}")
    later = (
        e["signed"].get("seq")
        for e in envelopes[position + 1 :]
        if isinstance(e, Mapping) and isinstance(e.get("signed"), Mapping)
    )
    if expected in later:
        raise ReorderedReceipt(f"receipt {seq}: arrives before receipt {expected}")
    raise SequenceGap(f"receipt {expected}: missing (next is {seq})")


def verify_settlements(
    envelopes: Sequence[Any],
    receipts: Sequence[tuple[Receipt, bytes]],
    certificates: Mapping[str, DeviceCertificate],
    trust: Trust,
    checkpoint: Checkpoint = Checkpoint(),
) -> list[Settlement]:
    """Verify settlements in batch order against the verified ``receipts`` (from :func:`verify_receipts`)."""
    by_seq = {r.seq: i for i, (r, _) in enumerate(receipts)}
    out: list[Settlement] = []
    batch, prev_hash, last_seq = checkpoint.batch, checkpoint.settlement_hash, checkpoint.seq
    for envelope in envelopes:
        signed = signed_part(envelope, SETTLEMENT)
        cert = _signer(signed, f"settlement {signed.get('batch')!r:.20}", certificates, trust)
        body = check_signatures(SETTLEMENT, envelope, cert.keys, encode_unchecked(signed))
        s = parse_settlement(signed, sha256_hex(body))
        what = f"settlement {s.batch}"
        if s.device != cert.device_id:
            raise CertificateInvalid(f"{what}: device {s.device} is not {cert.device_id}")
        if s.batch != batch + 1 or s.prev != prev_hash:
            raise SettlementMismatch(f"{what}: expected batch {batch + 1} linked to the previous settlement")
        if s.first_seq != last_seq + 1 or s.last_seq - s.first_seq + 1 != s.count:
            raise SettlementMismatch(f"{what}: range {s.first_seq}-{s.last_seq} ({s.count}) does not follow {last_seq}")
        start, end = by_seq.get(s.first_seq), by_seq.get(s.last_seq)
        if start is None or end is None or end - start + 1 != s.count:
            raise SettlementMismatch(f"{what}: receipts {s.first_seq}-{s.last_seq} are not all present")
        covered = receipts[start : end + 1]
        if covered[-1][0].hash != s.last_receipt:
            raise SettlementMismatch(f"{what}: last_receipt is not the hash of receipt {s.last_seq}")
        root = merkle.root([merkle.leaf_hash(b) for _, b in covered]).hex()
        if root != s.root:
            raise MerkleRootMismatch(f"{what}: root does not match receipts {s.first_seq}-{s.last_seq}")
        if compute_totals((r.kind, r.right, r.units, r.overage_units) for r, _ in covered) != s.totals:
            raise TotalsMismatch(f"{what}: totals do not match receipts {s.first_seq}-{s.last_seq}")
        batch, prev_hash, last_seq = s.batch, s.hash, s.last_seq
        out.append(s)
    return out


def verify_inclusion(receipt_body: bytes, index: int, proof: Sequence[str], settlement: Settlement) -> None:
    """Check that the receipt with canonical bytes ``receipt_body`` is leaf ``index`` of ``settlement``."""
    try:
        path = [bytes.fromhex(p) for p in proof]
        root = bytes.fromhex(settlement.root)
    except ValueError as exc:
        raise InclusionProofInvalid(f"proof or root is not hex: {exc}") from exc
    merkle.verify_inclusion(index, settlement.count, merkle.leaf_hash(receipt_body), path, root)


@dataclass(frozen=True)
class VerifiedExport:
    """What an export proved: the device, its receipts and settlements, and where the chain now stands."""

    device: str | None
    receipts: list[Receipt]
    settlements: list[Settlement]
    checkpoint: Checkpoint
    unsettled: int = field(default=0)


def verify_export(doc: Any, trust: Trust, checkpoint: Checkpoint = Checkpoint()) -> VerifiedExport:
    """Verify a whole export (``btt-edge receipts export``): certificates, receipts, settlements."""
    if not isinstance(doc, Mapping) or doc.get("type") != EXPORT:
        raise MalformedRecord(f"not a receipt export (type {EXPORT!r})")
    get_int(doc, "format", "export", lo=1)
    parts = {name: doc.get(name) for name in ("certificates", "receipts", "settlements")}
    for name, value in parts.items():
        if not isinstance(value, list):
            raise MalformedRecord(f"export: {name} must be a list")
    certificates = verify_certificates(parts["certificates"], trust)  # type: ignore[arg-type]
    receipts = verify_receipts(parts["receipts"], certificates, trust, checkpoint)  # type: ignore[arg-type]
    settlements = verify_settlements(parts["settlements"], receipts, certificates, trust, checkpoint)  # type: ignore[arg-type]
    last = receipts[-1][0] if receipts else None
    settled = settlements[-1].last_seq if settlements else checkpoint.seq
    return VerifiedExport(
        device=last.device if last else None,
        receipts=[r for r, _ in receipts],
        settlements=settlements,
        checkpoint=Checkpoint(
            seq=last.seq if last else checkpoint.seq,
            receipt_hash=last.hash if last else checkpoint.receipt_hash,
            batch=settlements[-1].batch if settlements else checkpoint.batch,
            settlement_hash=settlements[-1].hash if settlements else checkpoint.settlement_hash,
        ),
        unsettled=(last.seq if last else checkpoint.seq) - settled,
    )


def verify_proof(doc: Any, trust: Trust) -> tuple[Receipt, Settlement]:
    """Verify a stand-alone inclusion proof (``btt-edge receipts prove``): one receipt, the settlement that
    covers it, the audit path between them, and the certificates that vouch for the signing keys."""
    if not isinstance(doc, Mapping) or doc.get("type") != PROOF:
        raise MalformedRecord(f"not an inclusion proof (type {PROOF!r})")
    certificates = doc.get("certificates")
    proof = doc.get("proof")
    if not isinstance(certificates, list) or not isinstance(proof, list) or not all(isinstance(p, str) for p in proof):
        raise MalformedRecord("inclusion proof: certificates and proof must be lists")
    certs = verify_certificates(certificates, trust)
    signed = signed_part(doc.get("receipt"), RECEIPT)
    seq, prev = signed.get("seq"), signed.get("prev")
    if type(seq) is not int or not isinstance(prev, str):
        raise MalformedRecord("inclusion proof: the receipt has no seq or prev")
    [(receipt, body)] = verify_receipts([doc["receipt"]], certs, trust, Checkpoint(seq=seq - 1, receipt_hash=prev))
    settled = signed_part(doc.get("settlement"), SETTLEMENT)
    cert = _signer(settled, "settlement", certs, trust)
    settlement = parse_settlement(settled, sha256_hex(check_signatures(SETTLEMENT, doc["settlement"], cert.keys)))
    if settlement.device != receipt.device or not settlement.first_seq <= receipt.seq <= settlement.last_seq:
        raise InclusionProofInvalid(f"settlement {settlement.batch} does not cover receipt {receipt.seq}")
    verify_inclusion(body, receipt.seq - settlement.first_seq, proof, settlement)
    return receipt, settlement
