"""The capacity protocol's signed messages, as pure functions (values in, envelopes or a specific error out).

Four structures, each a signed envelope of :mod:`protocol.keys` (canonical JSON, domain-separated Ed25519)::

    capacity-offer     device -> relay   what the box offers until ``expires_ms``
    capacity-withdraw  device -> relay   the offer ``offer_id`` no longer holds (clinical work, policy, switch off)
    capacity-job       relay  -> device  run bundle ``bundle`` on batch ``batch`` (sha256 of each) within an offer
    capacity-result    device -> relay   per-item outputs of a job, with the compute receipts' sequence numbers

Devices sign with their receipt key (the relay knows it from the device certificate); the relay signs jobs with
its own key, which the box trusts through ``[capacity] relay_key``. Outputs are integers (micro-units): canonical
JSON has no floats, and two devices' results are compared within a tolerance (:func:`outputs_agree`). The box
decides whether it takes a job in :mod:`edge.capacity.messages`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from protocol.encoding import canonical_bytes, sha256_hex
from protocol.errors import EncodingError, MalformedRecord
from protocol.keys import PrivateKey, PublicKey, check_signature, seal, signed_part

__all__ = [
    "JOB",
    "OFFER",
    "OUTPUT_TOLERANCE",
    "RESULT",
    "WITHDRAW",
    "outputs_agree",
    "outputs_digest",
    "sign",
    "verify",
]

OFFER, WITHDRAW, JOB, RESULT = "capacity-offer", "capacity-withdraw", "capacity-job", "capacity-result"
OUTPUT_TOLERANCE = 1000
"""Largest difference (micro-units, i.e. 1e-3) between two devices' outputs for the same item that still agrees."""


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


def outputs_digest(outputs: Sequence[Sequence[int]]) -> str:
    """``sha256:<hex>`` of the canonical outputs (the compute receipt's output digest)."""
    return "sha256:" + sha256_hex(canonical_bytes([list(item) for item in outputs]))


def outputs_agree(a: Sequence[int], b: Sequence[int], tolerance: int = OUTPUT_TOLERANCE) -> bool:
    """True when two devices' outputs for one item have the same shape and differ by at most ``tolerance``."""
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))
