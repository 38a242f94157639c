"""Errors raised by the agent (`edge`).

Every error the agent raises on purpose derives from :class:`EdgeError`; errors from pydicom, pynetdicom,
sqlite3, onnxruntime, paho and PyNaCl are translated to one of these at the boundary that calls the library
(``raise StoreError(...) from exc``). The tree::

    EdgeError
    ├── ConfigError            a bad key or value in the configuration (names the key)
    ├── IngestError            the DICOM listener cannot run (``edge.ingest``: the port cannot be bound)
    ├── StoreError             the image store or its index could not do what was asked
    │   ├── OutOfSpace         below the free-space reserve: refuse rather than fill the disk
    │   ├── InvalidDataset     a dataset we must not store (no SOP Instance UID, unreadable, ...)
    │   ├── DuplicateConflict  same SOP Instance UID, different content, policy says reject
    │   └── StateConflict      a pipeline state change found the instance missing or in another state
    ├── PipelineError          preprocessing, inference or post-processing failed for one instance
    │   ├── UnsupportedImage   the model cannot read this image (recorded as "skipped" with the reason)
    │   └── BackendError       an inference backend failed to load or run
    ├── BundleError            a model bundle is malformed, tampered with or incompatible
    ├── ResultsError           clinical result objects and their delivery (``edge.results``; what a destination
    │                          does with an object is an outcome recorded in the queue, not an exception)
    │   └── ResultBuildError       a result object cannot be built from this image and these findings
    ├── ControlError           the local control socket (``edge.control``): the agent cannot be reached, or it
    │                          refused a technician's request (the message says why)
    ├── SyncError              the outbox or the link to the relay (``edge.outbox``, ``edge.sync``)
    │   ├── OutboxError            an item the outbox cannot take (unknown kind, not JSON, too large)
    │   ├── AckError               a malformed application acknowledgement from the relay (ignored, logged)
    │   └── LinkError              the broker cannot be reached or the connection dropped (paho errors, OSError)
    │       └── LinkRefused        the broker refused the connection (bad credentials, not authorised)
    ├── OtaError               over-the-air model updates; its own tree is drawn in ``ota/errors.py``
    ├── CapacityError          sharing spare capacity (``edge.capacity``)
    │   ├── JobRejected            a job outside the offer, badly signed, expired, or a blob whose hash differs
    │   └── JobFailed              an accepted job's worker failed, ran out of its limits or was killed
    └── ReceiptError           service-right receipts, settlements and payouts (``edge.receipts``)
        ├── EncodingError          a value outside the canonical-JSON subset, or bytes that are not strict JSON
        ├── IdentityError          the device key, salt or certificate is missing, unreadable or inconsistent
        ├── RightsError            a grant or share table is malformed or does not apply to this asset
        ├── PayoutError            a payout cannot be computed exactly (no price, unknown grant)
        └── VerificationError      signed data failed verification; one subclass per failure:
            ├── MalformedRecord        a signed structure lacks a field or has one of the wrong type
            ├── BadSignature           a signature does not verify (a signed field was altered)
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
    "AckError",
    "BackendError",
    "BadSignature",
    "BrokenChain",
    "BundleError",
    "CapacityError",
    "CertificateInvalid",
    "ConfigError",
    "ConflictingReceipt",
    "ControlError",
    "DuplicateConflict",
    "DuplicateReceipt",
    "EdgeError",
    "EncodingError",
    "IdentityError",
    "InclusionProofInvalid",
    "IngestError",
    "InvalidDataset",
    "JobFailed",
    "JobRejected",
    "LinkError",
    "LinkRefused",
    "MalformedRecord",
    "MerkleRootMismatch",
    "OutOfSpace",
    "OutboxError",
    "PayoutError",
    "PipelineError",
    "ReceiptError",
    "ReorderedReceipt",
    "ReplayedReceipt",
    "ResultBuildError",
    "ResultsError",
    "RevokedKey",
    "RightsError",
    "SequenceGap",
    "SettlementMismatch",
    "StateConflict",
    "StoreError",
    "SyncError",
    "TotalsMismatch",
    "UnknownSigningKey",
    "UnsupportedImage",
    "UntrustedIssuer",
    "VerificationError",
]


class EdgeError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeError):
    """A configuration key or value is wrong; the message names the key."""


class IngestError(EdgeError):
    """The DICOM listener cannot run."""


class StoreError(EdgeError):
    """The image store or its index failed."""


class OutOfSpace(StoreError):
    """Free space is below the configured reserve."""


class InvalidDataset(StoreError):
    """The dataset cannot be stored: it is unreadable or lacks a required identifier."""


class DuplicateConflict(StoreError):
    """An instance with this SOP Instance UID is stored already, with different content."""


class StateConflict(StoreError):
    """A pipeline state change expected another state (or the instance is not indexed)."""


class PipelineError(EdgeError):
    """Analysis of one instance failed."""


class UnsupportedImage(PipelineError):
    """The model cannot read this image; the instance is skipped with this reason."""


class BackendError(PipelineError):
    """An inference backend could not load or run a model."""


class BundleError(EdgeError):
    """A model bundle is malformed, does not match its hashes, or needs another agent version."""


class CapacityError(EdgeError):
    """Sharing spare capacity failed."""


class JobRejected(CapacityError):
    """A job is not accepted: outside the offer, badly signed, expired, or a fetched blob does not match its hash."""


class JobFailed(CapacityError):
    """An accepted job's worker process failed, exceeded its limits, or was killed."""


class ControlError(EdgeError):
    """The agent's control socket cannot be reached, or the agent refused the request."""


class SyncError(EdgeError):
    """The outbox or the link to the relay failed."""


class OutboxError(SyncError):
    """An item the outbox cannot take: unknown kind, not JSON-serialisable, or too large."""


class AckError(SyncError):
    """An application acknowledgement from the relay that is not valid."""


class LinkError(SyncError):
    """The MQTT broker cannot be reached, or the connection dropped."""


class LinkRefused(LinkError):
    """The broker refused the connection (the reason code is in the message)."""


class ResultsError(EdgeError):
    """Building or delivering clinical result objects failed."""


class ResultBuildError(ResultsError):
    """A result object (SR, overlay) cannot be built from this image and these findings."""


class ReceiptError(EdgeError):
    """Receipts, settlements, rights or payouts failed."""


class EncodingError(ReceiptError):
    """A value has no canonical encoding, or bytes are not strict canonical-JSON input."""


class IdentityError(ReceiptError):
    """The device identity (key, salt, certificate) is missing, unreadable or inconsistent."""


class RightsError(ReceiptError):
    """A grant or share table is malformed or does not apply here."""


class PayoutError(ReceiptError):
    """A payout cannot be computed exactly from what was given."""


class VerificationError(ReceiptError):
    """Signed data failed verification; the subclass names the failure."""


class MalformedRecord(VerificationError):
    """A signed structure lacks a field or has one of the wrong type."""


class BadSignature(VerificationError):
    """A signature does not verify over the canonical bytes."""


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
