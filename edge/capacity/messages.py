"""The capacity protocol's signed messages, as pure functions (values in, envelopes or a specific error out).

Four structures, each a signed envelope of :mod:`edge.receipts.keys` (canonical JSON, domain-separated Ed25519)::

    capacity-offer     device -> relay   what the box offers until ``expires_ms``
    capacity-withdraw  device -> relay   the offer ``offer_id`` no longer holds (clinical work, policy, switch off)
    capacity-job       relay  -> device  run bundle ``bundle`` on batch ``batch`` (sha256 of each) within an offer
    capacity-result    device -> relay   per-item outputs of a job, with the compute receipts' sequence numbers

Devices sign with their receipt key (the relay knows it from the device certificate); the relay signs jobs with
its own key, which the box trusts through ``[capacity] relay_key``. Outputs are integers (micro-units): canonical
JSON has no floats, and two devices' results are compared within a tolerance (:func:`outputs_agree`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from edge.errors import EncodingError, JobRejected, MalformedRecord, VerificationError
from edge.receipts.encoding import canonical_bytes, sha256_hex
from edge.receipts.keys import PrivateKey, PublicKey, check_signature, seal, signed_part

__all__ = [
    "JOB",
    "OFFER",
    "RESULT",
    "WITHDRAW",
    "check_job",
    "job_fields",
    "outputs_agree",
    "outputs_digest",
    "sign",
    "verify",
]

OFFER, WITHDRAW, JOB, RESULT = "capacity-offer", "capacity-withdraw", "capacity-job", "capacity-result"
OUTPUT_TOLERANCE = 1000
"""Largest difference (micro-units, i.e. 1e-3) between two devices' outputs for the same item that still agrees."""

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_JOB_FIELDS = {
    "job_id": str,
    "device": str,
    "offer_id": str,
    "bundle": str,
    "batch": str,
    "items": int,
    "price_per_item_micro": int,
    "issued_ms": int,
    "expires_ms": int,
}


def sign(kind: str, fields: Mapping[str, Any], key: PrivateKey) -> dict[str, Any]:
    """The envelope of ``{"type": kind, **fields}`` signed by ``key``."""
    return seal(kind, {"type": kind, **fields}, key)


def verify(kind: str, envelope: Any, key: PublicKey) -> Mapping[str, Any]:
    """The ``signed`` part of ``envelope`` after checking ``key``'s signature; a :class:`VerificationError`
    subclass (``MalformedRecord``, ``BadSignature``) otherwise."""
    signed = signed_part(envelope, kind)
    try:
        data = canonical_bytes(signed)
    except EncodingError as exc:  # a NaN, a lone surrogate, an unsafe integer: nothing was signed over it
        raise MalformedRecord(f"{kind}: {exc}") from exc
    check_signature(kind, envelope, key, data)
    return signed


def job_fields(envelope: Any) -> Mapping[str, Any]:
    """The unverified fields of a job, type-checked; :class:`JobRejected` when one is missing or mistyped."""
    try:
        signed = signed_part(envelope, JOB)
    except VerificationError as exc:
        raise JobRejected(str(exc)) from exc
    for name, kind in _JOB_FIELDS.items():
        if type(signed.get(name)) is not kind:
            raise JobRejected(f"job: field {name!r} missing or not {kind.__name__}")
    if not _JOB_ID.match(signed["job_id"]):
        raise JobRejected(f"job: id {signed['job_id'][:80]!r} is not 1-64 letters, digits, '_' or '-'")
    for name in ("bundle", "batch"):
        if not _SHA256.match(signed[name]):
            raise JobRejected(f"job {signed['job_id']}: {name} is not a sha256 hex digest")
    return signed


def check_job(
    envelope: Any,
    relay_key: PublicKey,
    *,
    device: str,
    offer: Mapping[str, Any] | None,
    now_ms: int,
) -> Mapping[str, Any]:
    """Accept a job only when the relay signed it, it is for this device and the current offer, not expired, and
    within the offer's limits (items, price); :class:`JobRejected` saying why otherwise."""
    job = job_fields(envelope)
    try:
        verify(JOB, envelope, relay_key)
    except VerificationError as exc:
        raise JobRejected(f"job {job['job_id']}: {exc}") from exc
    if job["device"] != device:
        raise JobRejected(f"job {job['job_id']}: for device {job['device']!r}, not {device!r}")
    if offer is None or job["offer_id"] != offer["offer_id"]:
        raise JobRejected(f"job {job['job_id']}: offer {job['offer_id']!r} is not the current offer")
    if job["expires_ms"] <= now_ms or offer["expires_ms"] <= now_ms:
        raise JobRejected(f"job {job['job_id']}: expired")
    if not 1 <= job["items"] <= offer["max_items"]:
        raise JobRejected(f"job {job['job_id']}: {job['items']} items outside 1..{offer['max_items']}")
    if job["price_per_item_micro"] < offer["price_per_item_micro"]:
        raise JobRejected(f"job {job['job_id']}: price below the offer's")
    return job


def outputs_digest(outputs: Sequence[Sequence[int]]) -> str:
    """``sha256:<hex>`` of the canonical outputs (the compute receipt's output digest)."""
    return "sha256:" + sha256_hex(canonical_bytes([list(item) for item in outputs]))


def outputs_agree(a: Sequence[int], b: Sequence[int], tolerance: int = OUTPUT_TOLERANCE) -> bool:
    """True when two devices' outputs for one item have the same shape and differ by at most ``tolerance``."""
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))
