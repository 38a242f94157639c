"""The box's side of a capacity job: which jobs it takes (the messages themselves are :mod:`protocol.capacity`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edge.errors import JobRejected
from protocol.capacity import JOB, verify
from protocol.errors import VerificationError
from protocol.keys import PublicKey, signed_part

__all__ = ["check_job", "job_fields"]

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
