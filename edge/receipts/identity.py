"""The device identity: its key, its certificate from the manufacturer, and the secret study salt.

Verifiers trust manufacturer keys, never device keys directly: a device key counts only through a
certificate (type ``device-certificate``) the manufacturer signed. The flow:

1. ``provision`` generates the device key on the box (``keys/device.key``, 0600) and the per-device study
   salt (``keys/study.salt``, 0600, never leaves the box), and writes a certificate request
   (``keys/device.request.json``) signed by the new key itself (proof of possession).
2. The manufacturer signs the request with :func:`issue_certificate`; on a factory line or in development the
   manufacturer key is at hand and this happens on the spot.
3. :func:`install_certificate` checks the certificate is for our key and stores ``keys/device.cert.json``.

Rotation: a new key gets a new certificate whose ``replaces`` names the old key id; the receipt chain
continues across keys (every receipt names its ``keyid``) and a verifier holds every certificate of the
device. Revocation: the manufacturer signs a ``revocation-list`` of key ids; a verifier given it rejects
everything signed by those keys (:class:`~edge.errors.RevokedKey`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import CertificateInvalid, EncodingError, IdentityError, MalformedRecord, VerificationError
from edge.receipts.encoding import canonical_bytes, decode
from edge.receipts.keys import (
    PrivateKey,
    PublicKey,
    check_signature,
    generate_key,
    load_private_key,
    save_private_key,
    save_public_key,
    seal,
    signed_part,
)
from runtime.durable import atomic_write_bytes, fsync_dir

__all__ = [
    "CERTIFICATE",
    "REQUEST",
    "REVOCATIONS",
    "DeviceCertificate",
    "DeviceIdentity",
    "KeyFiles",
    "dev_manufacturer_key",
    "install_certificate",
    "issue_certificate",
    "issue_revocations",
    "load_identity",
    "now_ms",
    "parse_certificate",
    "provision",
    "rotate",
]

CERTIFICATE = "device-certificate"
REQUEST = "device-certificate-request"
REVOCATIONS = "revocation-list"
_PRIVATE = 0o600
"""Mode of every file under ``keys/`` (the data directory's files are private; doctor checks)."""
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def _field(signed: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = signed.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedRecord(f"{what}: field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


@dataclass(frozen=True)
class DeviceCertificate:
    """A parsed device certificate (its signature is checked by :mod:`edge.receipts.verify`).

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


def parse_certificate(envelope: Any) -> DeviceCertificate:
    """Parse a certificate envelope's fields; :class:`MalformedRecord` when malformed (no signature check)."""
    signed = signed_part(envelope, CERTIFICATE)
    what = "device certificate"
    if signed.get("format") != 1:
        raise MalformedRecord(f"{what}: unsupported format {signed.get('format')!r}")
    key = PublicKey.from_json(signed.get("key"))
    if _field(signed, "keyid", str, what) != key.keyid:
        raise MalformedRecord(f"{what}: keyid does not match the key")
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
    )


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
    check_signature(REQUEST, request, key)
    device = _field(signed, "device", str, "certificate request")
    if not _ID_RE.match(device):
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


@dataclass(frozen=True)
class KeyFiles:
    """Where the identity lives under ``<data_dir>/keys``."""

    directory: Path

    @property
    def device_key(self) -> Path:
        return self.directory / "device.key"

    @property
    def certificate(self) -> Path:
        return self.directory / "device.cert.json"

    @property
    def request(self) -> Path:
        return self.directory / "device.request.json"

    @property
    def salt(self) -> Path:
        return self.directory / "study.salt"

    @property
    def next_key(self) -> Path:
        return self.directory / "device.next.key"

    @property
    def next_certificate(self) -> Path:
        return self.directory / "device.next.cert.json"

    @property
    def retired(self) -> Path:
        """Certificates of replaced keys: verifiers still need them for the receipts those keys signed."""
        return self.directory / "retired"

    @property
    def dev_manufacturer_key(self) -> Path:
        return self.directory / "dev-manufacturer.key"

    @property
    def dev_manufacturer_public(self) -> Path:
        return self.directory / "dev-manufacturer.pub"


@dataclass(frozen=True)
class DeviceIdentity:
    """What the receipt book signs with: the key, its certificate, and the study salt."""

    key: PrivateKey
    certificate: dict[str, Any]
    parsed: DeviceCertificate
    salt: bytes
    history: tuple[dict[str, Any], ...] = ()
    """Certificates of the keys this one replaced, oldest first."""
    _mac: hmac.HMAC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_mac", hmac.new(self.salt, digestmod=hashlib.sha256))  # keyed once

    @property
    def device_id(self) -> str:
        return self.parsed.device_id

    def study_digest(self, study_uid: str) -> str:
        """``hmac-sha256:<hex>`` of the study identifier under the secret salt: stable on this box, opaque off it."""
        mac = self._mac.copy()
        mac.update(study_uid.encode("utf-8"))
        return "hmac-sha256:" + mac.hexdigest()


def _read_envelope(path: Path, what: str) -> Any:
    try:
        return decode(path.read_bytes())
    except OSError as exc:
        raise IdentityError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except EncodingError as exc:
        raise IdentityError(f"{what} {path}: {exc}") from exc


def load_identity(files: KeyFiles) -> DeviceIdentity | None:
    """The device identity, or None when the box has no certificate yet; :class:`IdentityError` if broken."""
    if files.next_certificate.exists():
        _finish_rotation(files)
    if not files.certificate.exists():
        return None
    key = load_private_key(files.device_key)
    envelope = _read_envelope(files.certificate, "device certificate")
    try:
        parsed = parse_certificate(envelope)
    except VerificationError as exc:
        raise IdentityError(f"device certificate {files.certificate}: {exc}") from exc
    if parsed.key != key.public:
        raise IdentityError(f"device certificate {files.certificate} is for another key than {files.device_key}")
    try:
        salt = files.salt.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read study salt {files.salt}: {exc.strerror}") from exc
    if len(salt) < 32:
        raise IdentityError(f"study salt {files.salt} is shorter than 32 bytes")
    retired = sorted(files.retired.glob("*.json")) if files.retired.exists() else []
    history = [_read_envelope(path, "retired certificate") for path in retired]
    history.sort(key=lambda cert: parse_certificate(cert).serial)
    return DeviceIdentity(key, envelope, parsed, salt, tuple(history))


def provision(
    files: KeyFiles,
    *,
    device_id: str | None = None,
    manufacturer: PrivateKey | None = None,
    serial: int | None = None,
    valid_days: int | None = None,
) -> dict[str, Any] | None:
    """Create the device key, salt and certificate request if absent; certify at once when ``manufacturer``.

    Idempotent: an existing key and salt are kept. Returns the installed certificate envelope, or None when
    the request waits for the manufacturer (``files.request``).
    """
    files.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(files.directory, 0o700)
    if files.device_key.exists():
        key = load_private_key(files.device_key)
    else:
        key = generate_key()
        save_private_key(files.device_key, key)
    if not files.salt.exists():
        atomic_write_bytes(files.salt, os.urandom(32), mode=0o600)
    device = device_id or f"btt-{key.keyid[:16]}"
    if not _ID_RE.match(device):
        raise IdentityError(f"device id {device!r} must be 1-64 letters, digits or ._:- characters")
    request = seal(REQUEST, {"type": REQUEST, "format": 1, "device": device, "key": key.public.to_json()}, key)
    atomic_write_bytes(files.request, canonical_bytes(request) + b"\n", mode=_PRIVATE)
    if manufacturer is None:
        return None
    issued = now_ms()
    certificate = issue_certificate(
        request, manufacturer, serial=issued if serial is None else serial, issued_ms=issued, valid_days=valid_days
    )
    install_certificate(files, certificate, manufacturer.public)
    return certificate


def install_certificate(files: KeyFiles, certificate: Any, manufacturer: PublicKey) -> DeviceCertificate:
    """Check ``certificate`` is signed by ``manufacturer`` and is for this box's key, then store it."""
    parsed = parse_certificate(certificate)
    if parsed.issuer_keyid != manufacturer.keyid:
        raise IdentityError("the certificate was not issued by the given manufacturer key")
    check_signature(CERTIFICATE, certificate, manufacturer)
    key = load_private_key(files.device_key)
    if parsed.key != key.public:
        raise CertificateInvalid("the certificate is for another device key")
    atomic_write_bytes(files.certificate, canonical_bytes(certificate) + b"\n", mode=_PRIVATE)
    return parsed


def dev_manufacturer_key(files: KeyFiles) -> PrivateKey:
    """The DEVELOPMENT manufacturer key under ``files`` (created on first use). Never for production."""
    if files.dev_manufacturer_key.exists():
        return load_private_key(files.dev_manufacturer_key)
    files.directory.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    save_private_key(files.dev_manufacturer_key, key)
    save_public_key(files.dev_manufacturer_public, key.public)
    os.chmod(files.dev_manufacturer_public, _PRIVATE)
    return key


def rotate(files: KeyFiles, manufacturer: PrivateKey, *, valid_days: int | None = None) -> dict[str, Any]:
    """Replace the device key: a new key and certificate (``replaces`` the old key id), the old certificate kept
    under ``retired/`` for verifiers, the old private key gone. Crash-safe: the new key and certificate are staged
    (``device.next.*``) and :func:`load_identity` finishes an interrupted rotation.

    A running agent signs with the new key from its next identity check (``[receipts] check_interval_s``,
    :class:`edge.receipts.service.IdentityWatch`); the old key stays valid unless the manufacturer revokes it.
    """
    current = load_identity(files)
    if current is None:
        raise IdentityError("nothing to rotate: this box has no device identity yet")
    new = generate_key()
    body = {
        "type": REQUEST,
        "format": 1,
        "device": current.device_id,
        "key": new.public.to_json(),
        "replaces": current.key.keyid,
    }
    issued = now_ms()
    certificate = issue_certificate(
        seal(REQUEST, body, new), manufacturer, serial=issued, issued_ms=issued, valid_days=valid_days
    )
    files.retired.mkdir(mode=0o700, exist_ok=True)
    atomic_write_bytes(
        files.retired / f"{current.key.keyid}.json", canonical_bytes(current.certificate) + b"\n", mode=_PRIVATE
    )
    save_private_key(files.next_key, new)
    atomic_write_bytes(files.next_certificate, canonical_bytes(certificate) + b"\n", mode=_PRIVATE)
    _finish_rotation(files)
    return certificate


def _finish_rotation(files: KeyFiles) -> None:
    """Move the staged key, then the staged certificate, into place. Another process (the agent and the CLI)
    may be finishing the same rotation: a staged file already moved is not an error."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(files.next_key, files.device_key)
    with contextlib.suppress(FileNotFoundError):
        os.replace(files.next_certificate, files.certificate)
    fsync_dir(files.directory)
