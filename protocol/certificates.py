"""Device certificates, their requests, and the manufacturer's revocation lists (pure: envelopes in and out).

Verifiers trust manufacturer keys, never device keys directly: a device key counts only through a certificate
(type ``device-certificate``) the manufacturer signed over a request (type ``device-certificate-request``) that
the new key signed itself (proof of possession). Rotation: a new key's certificate ``replaces`` the old key id.
Revocation: the manufacturer signs a ``revocation-list`` of key ids. The box keeps its key and certificate in
:mod:`edge.receipts.identity`; verifiers check certificates with :mod:`protocol.verify`.

Hybrid identities (post-quantum option): a request and a certificate of ``format`` 2 also carry ``pq_key``, an
``ML-DSA-65`` public key, and the certificate its ``pq_keyid``. The request is signed by both device keys (proof
of possession of each); every receipt and settlement of the device must then carry a valid signature by both
(:class:`DeviceCertificate.keys`). The device's key id (``keyid``, what receipts name and revocations list) stays
the ed25519 key's. An ed25519-only identity is ``format`` 1, exactly as before; a verifier that predates format 2
refuses a hybrid certificate rather than accept its device's records on one signature. The manufacturer's own key
stays ed25519.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.errors import MalformedRecord
from protocol.keys import ED25519, MLDSA65, PrivateKey, PublicKey, check_signatures, seal, signed_part

__all__ = [
    "CERTIFICATE",
    "DEVICE_ID_RE",
    "PQ_ALGORITHMS",
    "REQUEST",
    "REVOCATIONS",
    "DeviceCertificate",
    "certificate_request",
    "issue_certificate",
    "issue_revocations",
    "parse_certificate",
]

CERTIFICATE = "device-certificate"
REQUEST = "device-certificate-request"
REVOCATIONS = "revocation-list"
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
"""A device id a certificate may name: 1-64 letters, digits or ``._:-``."""
PQ_ALGORITHMS = frozenset({MLDSA65})
"""Algorithms a hybrid certificate's second key (``pq_key``) may use."""


def _field(signed: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = signed.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedRecord(f"{what}: field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


@dataclass(frozen=True)
class DeviceCertificate:
    """A parsed device certificate (its signature is checked by :mod:`protocol.verify`).

    Receipts must be dated before ``not_after_ms``. ``not_before_ms`` is not a lower bound for them: a box parks
    uses until it is provisioned and signs them afterwards with their original time.
    """

    device_id: str
    key: PublicKey
    issuer_keyid: str
    serial: int
    not_before_ms: int
    not_after_ms: int | None
    replaces: str | None
    pq_key: PublicKey | None = None
    """The ML-DSA-65 key of a hybrid identity (format 2), None for an ed25519-only one."""

    @property
    def keys(self) -> tuple[PublicKey, ...]:
        """The keys every receipt and settlement of this device must be signed by (ed25519 first)."""
        return (self.key,) if self.pq_key is None else (self.key, self.pq_key)


def _pq_key(signed: Mapping[str, Any], what: str, key: PublicKey) -> PublicKey | None:
    """The ``pq_key`` of a format-2 request or certificate (None in format 1, where it must be absent)."""
    version = signed.get("format")
    if version not in (1, 2):
        raise MalformedRecord(f"{what}: unsupported format {version!r}")
    if version == 1:
        if "pq_key" in signed:
            raise MalformedRecord(f"{what}: a pq_key needs format 2")
        return None
    pq_key = PublicKey.from_json(signed.get("pq_key"))
    if pq_key.alg not in PQ_ALGORITHMS or key.alg != ED25519:
        raise MalformedRecord(f"{what}: a hybrid identity is an ed25519 key and an {MLDSA65} pq_key")
    return pq_key


def parse_certificate(envelope: Any) -> DeviceCertificate:
    """Parse a certificate envelope's fields; :class:`MalformedRecord` when malformed (no signature check)."""
    signed = signed_part(envelope, CERTIFICATE)
    what = "device certificate"
    if signed.get("format") not in (1, 2):
        raise MalformedRecord(f"{what}: unsupported format {signed.get('format')!r}")
    key = PublicKey.from_json(signed.get("key"))
    if _field(signed, "keyid", str, what) != key.keyid:
        raise MalformedRecord(f"{what}: keyid does not match the key")
    pq_key = _pq_key(signed, what, key)
    if pq_key is not None and _field(signed, "pq_keyid", str, what) != pq_key.keyid:
        raise MalformedRecord(f"{what}: pq_keyid does not match the pq_key")
    not_after = signed.get("not_after_ms")
    replaces = signed.get("replaces")
    if not (not_after is None or (isinstance(not_after, int) and not isinstance(not_after, bool))):
        raise MalformedRecord(f"{what}: not_after_ms must be an integer or null")
    if not (replaces is None or isinstance(replaces, str)):
        raise MalformedRecord(f"{what}: replaces must be a key id or null")
    return DeviceCertificate(
        device_id=_field(signed, "device", str, what),
        key=key,
        issuer_keyid=_field(signed, "issuer", str, what),
        serial=_field(signed, "serial", int, what),
        not_before_ms=_field(signed, "not_before_ms", int, what),
        not_after_ms=not_after,
        replaces=replaces,
        pq_key=pq_key,
    )


def certificate_request(
    device: str, key: PrivateKey, replaces: str | None = None, *, pq_key: PrivateKey | None = None
) -> dict[str, Any]:
    """The request for a certificate of ``key`` for ``device``, signed by ``key`` itself (proof of possession);
    ``replaces`` is the key id a rotation retires. With ``pq_key`` (an ML-DSA-65 key) the request is for a hybrid
    identity (format 2), signed by both keys."""
    body: dict[str, Any] = {"type": REQUEST, "format": 1, "device": device, "key": key.public.to_json()}
    if replaces is not None:
        body["replaces"] = replaces
    if pq_key is None:
        return seal(REQUEST, body, key)
    body.update(format=2, pq_key=pq_key.public.to_json())
    _pq_key(body, "certificate request", key.public)
    return seal(REQUEST, body, key, pq_key)


def issue_certificate(
    request: Any,
    manufacturer: PrivateKey,
    *,
    serial: int,
    issued_ms: int,
    valid_days: int | None = None,
) -> dict[str, Any]:
    """The manufacturer's side: check a request's proof of possession and sign a certificate for it."""
    signed = signed_part(request, REQUEST)
    key = PublicKey.from_json(signed.get("key"))
    pq_key = _pq_key(signed, "certificate request", key)
    check_signatures(REQUEST, request, (key,) if pq_key is None else (key, pq_key))
    device = _field(signed, "device", str, "certificate request")
    if not DEVICE_ID_RE.match(device):
        raise MalformedRecord(f"certificate request: device id {device!r} is not a valid identifier")
    replaces = signed.get("replaces")
    body = {
        "type": CERTIFICATE,
        "format": 1,
        "device": device,
        "key": key.to_json(),
        "keyid": key.keyid,
        "issuer": manufacturer.keyid,
        "serial": serial,
        "not_before_ms": issued_ms,
        "not_after_ms": None if valid_days is None else issued_ms + valid_days * 86_400_000,
        "replaces": replaces if isinstance(replaces, str) else None,
    }
    if pq_key is not None:
        body.update(format=2, pq_key=pq_key.to_json(), pq_keyid=pq_key.keyid)
    return seal(CERTIFICATE, body, manufacturer)


def issue_revocations(manufacturer: PrivateKey, revoked: list[str], *, number: int, issued_ms: int) -> dict[str, Any]:
    """The manufacturer's signed list of revoked device key ids (``number`` increases with each list)."""
    body = {
        "type": REVOCATIONS,
        "format": 1,
        "issuer": manufacturer.keyid,
        "number": number,
        "issued_ms": issued_ms,
        "revoked": sorted(set(revoked)),
    }
    return seal(REVOCATIONS, body, manufacturer)
