"""Errors raised by the wire contract (`protocol`).

Everything here is refused with a :class:`ProtocolError`: bytes that are not canonical JSON, a signed structure
that does not verify, a right or share table that does not apply, a payout that cannot be computed exactly, a key
file that cannot be read. Both ends catch these: the agent (:mod:`edge.errors` derives its own receipt errors from
:class:`ProtocolError` too, so one ``except ProtocolError`` catches every receipt failure) and the relay (a
:class:`VerificationError` becomes a rejected item with the message as its reason). The tree::

    ProtocolError
    ├── EncodingError          a value outside the canonical-JSON subset, or bytes that are not strict JSON
    ├── KeyFileError           a key file is missing, unreadable, malformed, or a private one is readable by others
    ├── RightsError            a grant or share table is malformed or does not apply to this asset
    ├── PayoutError            a payout cannot be computed exactly (no price, unknown grant)
    └── VerificationError      signed data failed verification; one subclass per failure:
        ├── MalformedRecord        a signed structure lacks a field or has one of the wrong type
        ├── BadSignature           a signature does not verify (a signed field was altered)
        │   └── HybridSignatureInvalid  a hybrid device's record lacks a valid ed25519 or ML-DSA-65 signature
        ├── UnknownSigningKey      signed by a key no certificate vouches for (forged device key)
        ├── UntrustedIssuer        a certificate or grant signed by a key outside the trust set
        ├── RevokedKey             signed by a revoked device key
        ├── CertificateInvalid     a receipt outside its certificate's validity or device
        ├── SequenceGap            a sequence number is missing (dropped receipt)
        ├── ReorderedReceipt       receipts out of sequence order
        ├── DuplicateReceipt       the same receipt twice in a row
        ├── ReplayedReceipt        an already accepted receipt sent again later
        ├── ConflictingReceipt     two different receipts with one sequence number (forked chain)
        ├── BrokenChain            a receipt's previous-hash link does not match
        ├── SettlementMismatch     a settlement's batch number, range, count or chain does not match
        ├── MerkleRootMismatch     a settlement's Merkle root does not match its receipts
        ├── TotalsMismatch         a settlement's totals do not match its receipts
        └── InclusionProofInvalid  an inclusion proof does not lead to the settlement root
"""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "BrokenChain",
    "CertificateInvalid",
    "ConflictingReceipt",
    "DuplicateReceipt",
    "EncodingError",
    "HybridSignatureInvalid",
    "InclusionProofInvalid",
    "KeyFileError",
    "MalformedRecord",
    "MerkleRootMismatch",
    "PayoutError",
    "ProtocolError",
    "ReorderedReceipt",
    "ReplayedReceipt",
    "RevokedKey",
    "RightsError",
    "SequenceGap",
    "SettlementMismatch",
    "TotalsMismatch",
    "UnknownSigningKey",
    "UntrustedIssuer",
    "VerificationError",
]


class ProtocolError(Exception):
    """Base of every error the wire contract raises."""


class EncodingError(ProtocolError):
    """A value has no canonical encoding, or bytes are not strict canonical-JSON input."""


class KeyFileError(ProtocolError):
    """A key file is missing, unreadable or malformed, or a private key file is readable by others."""


class RightsError(ProtocolError):
    """A grant or share table is malformed or does not apply here."""


class PayoutError(ProtocolError):
    """A payout cannot be computed exactly from what was given."""


class VerificationError(ProtocolError):
    """Signed data failed verification; the subclass names the failure."""


class MalformedRecord(VerificationError):
    """A signed structure lacks a field or has one of the wrong type."""


class BadSignature(VerificationError):
    """A signature does not verify over the canonical bytes."""


class HybridSignatureInvalid(BadSignature):
    """A receipt or settlement of a hybrid device (its certificate names an ed25519 and an ML-DSA-65 key) lacks
    a valid signature by one of the two keys: both are required, neither alone counts."""


class UnknownSigningKey(VerificationError):
    """Signed by a key that no trusted certificate vouches for."""


class UntrustedIssuer(VerificationError):
    """A certificate, grant or share table signed by a key outside the trust set."""


class RevokedKey(VerificationError):
    """Signed by a device key the manufacturer revoked."""


class CertificateInvalid(VerificationError):
    """A receipt outside its certificate's validity window, or for another device."""


class SequenceGap(VerificationError):
    """A sequence number is missing: a receipt was dropped."""


class ReorderedReceipt(VerificationError):
    """Receipts are out of sequence order."""


class DuplicateReceipt(VerificationError):
    """The same receipt appears twice in a row."""


class ReplayedReceipt(VerificationError):
    """A receipt already accepted (earlier in the stream or before the checkpoint) is sent again."""


class ConflictingReceipt(VerificationError):
    """Two different receipts carry the same sequence number: the chain forked."""


class BrokenChain(VerificationError):
    """A receipt's link to the previous receipt's hash does not match."""


class SettlementMismatch(VerificationError):
    """A settlement's batch number, sequence range, count or chain link does not match."""


class MerkleRootMismatch(VerificationError):
    """A settlement's Merkle root does not match the receipts it covers."""


class TotalsMismatch(VerificationError):
    """A settlement's totals do not match the receipts it covers."""


class InclusionProofInvalid(VerificationError):
    """An inclusion proof does not lead from the receipt to the settlement root."""
