"""The device identity on the box: its key, its certificate from the manufacturer, and the secret study salt.

Verifiers trust manufacturer keys, never device keys directly: a device key counts only through a
certificate the manufacturer signed (the formats are in :mod:`protocol.certificates`). The flow:

1. ``provision`` generates the device key on the box (``keys/device.key``, 0600) and the per-device study
   salt (``keys/study.salt``, 0600, never leaves the box), and writes a certificate request
   (``keys/device.request.json``) signed by the new key itself (proof of possession).
2. The manufacturer signs the request with :func:`~protocol.certificates.issue_certificate`; on a factory line
   or in development the manufacturer key is at hand and this happens on the spot.
3. :func:`install_certificate` checks the certificate is for our key and stores ``keys/device.cert.json``.

Hybrid (post-quantum option): ``provision(..., hybrid=True)`` (``btt-edge provision --hybrid``) also generates an
ML-DSA-65 key (``keys/device.pq.key``, 0600, written like the ed25519 one) and requests a hybrid certificate for
both keys; the book then signs every receipt and settlement with both, and verifiers require both. A hybrid
identity always starts from a fresh key pair (an ed25519 key that may have been offered for an ed25519-only
certificate never becomes hybrid): an existing box becomes hybrid by ``rotate(..., hybrid=True)``, and a rotation
of a hybrid identity stays hybrid.

Rotation: a new key gets a new certificate whose ``replaces`` names the old key id; the receipt chain
continues across keys (every receipt names its ``keyid``) and a verifier holds every certificate of the
device. Revocation: the manufacturer signs a ``revocation-list`` of key ids; a verifier given it rejects
everything signed by those keys (:class:`~protocol.errors.RevokedKey`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import IdentityError
from protocol.certificates import (
    CERTIFICATE,
    DEVICE_ID_RE,
    DeviceCertificate,
    certificate_request,
    issue_certificate,
    parse_certificate,
)
from protocol.clock import now_ms
from protocol.encoding import canonical_bytes
from protocol.errors import CertificateInvalid, KeyFileError, VerificationError
from protocol.keyfiles import load_private_key, read_document, save_private_key, save_public_key
from protocol.keys import MLDSA65, PrivateKey, PublicKey, check_signature, generate_key
from runtime.durable import atomic_write_bytes, fsync_dir

__all__ = [
    "DeviceIdentity",
    "KeyFiles",
    "dev_manufacturer_key",
    "install_certificate",
    "load_identity",
    "provision",
    "rotate",
]

_PRIVATE = 0o600
"""Mode of every file under ``keys/`` (the data directory's files are private; doctor checks)."""


@dataclass(frozen=True)
class KeyFiles:
    """Where the identity lives under ``<data_dir>/keys``."""

    directory: Path

    @property
    def device_key(self) -> Path:
        return self.directory / "device.key"

    @property
    def pq_key(self) -> Path:
        """The ML-DSA-65 key of a hybrid identity."""
        return self.directory / "device.pq.key"

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
    def next_pq_key(self) -> Path:
        return self.directory / "device.next.pq.key"

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
    """What the receipt book signs with: the key (and a hybrid identity's ML-DSA-65 key), its certificate, and the
    study salt."""

    key: PrivateKey
    certificate: dict[str, Any]
    parsed: DeviceCertificate
    salt: bytes
    history: tuple[dict[str, Any], ...] = ()
    """Certificates of the keys this one replaced, oldest first."""
    pq_key: PrivateKey | None = None
    """The ML-DSA-65 key of a hybrid identity (its certificate names it), None for an ed25519-only one."""
    _mac: hmac.HMAC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_mac", hmac.new(self.salt, digestmod=hashlib.sha256))  # keyed once

    @property
    def device_id(self) -> str:
        return self.parsed.device_id

    @property
    def cosigners(self) -> tuple[PrivateKey, ...]:
        """The keys that sign beside :attr:`key` (the ML-DSA-65 key of a hybrid identity; none otherwise)."""
        return () if self.pq_key is None else (self.pq_key,)

    def study_digest(self, study_uid: str) -> str:
        """``hmac-sha256:<hex>`` of the study identifier under the secret salt: stable on this box, opaque off it."""
        mac = self._mac.copy()
        mac.update(study_uid.encode("utf-8"))
        return "hmac-sha256:" + mac.hexdigest()


def _private_key(path: Path) -> PrivateKey:
    """A key file of the box's (:class:`IdentityError` when it cannot be used, like the rest of the identity)."""
    try:
        return load_private_key(path)
    except KeyFileError as exc:
        raise IdentityError(str(exc)) from exc


def _read_envelope(path: Path, what: str) -> Any:
    try:
        return read_document(path, what)
    except KeyFileError as exc:
        raise IdentityError(str(exc)) from exc


def load_identity(files: KeyFiles) -> DeviceIdentity | None:
    """The device identity, or None when the box has no certificate yet; :class:`IdentityError` if broken."""
    if files.next_certificate.exists():
        _finish_rotation(files)
    if not files.certificate.exists():
        return None
    key = _private_key(files.device_key)
    envelope = _read_envelope(files.certificate, "device certificate")
    try:
        parsed = parse_certificate(envelope)
    except VerificationError as exc:
        raise IdentityError(f"device certificate {files.certificate}: {exc}") from exc
    if parsed.key != key.public:
        raise IdentityError(f"device certificate {files.certificate} is for another key than {files.device_key}")
    pq_key = None
    if parsed.pq_key is not None:
        pq_key = _private_key(files.pq_key)
        if parsed.pq_key != pq_key.public:
            raise IdentityError(
                f"device certificate {files.certificate} is for another ML-DSA-65 key than {files.pq_key}"
            )
    try:
        salt = files.salt.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read study salt {files.salt}: {exc.strerror}") from exc
    if len(salt) < 32:
        raise IdentityError(f"study salt {files.salt} is shorter than 32 bytes")
    retired = sorted(files.retired.glob("*.json")) if files.retired.exists() else []
    history = [_read_envelope(path, "retired certificate") for path in retired]
    history.sort(key=lambda cert: parse_certificate(cert).serial)
    return DeviceIdentity(key, envelope, parsed, salt, tuple(history), pq_key)


def provision(
    files: KeyFiles,
    *,
    device_id: str | None = None,
    manufacturer: PrivateKey | None = None,
    serial: int | None = None,
    valid_days: int | None = None,
    hybrid: bool = False,
) -> dict[str, Any] | None:
    """Create the device key, salt and certificate request if absent; certify at once when ``manufacturer``.

    ``hybrid``: an ML-DSA-65 key too, and a request for a hybrid certificate of both. Idempotent: an existing key,
    ML-DSA-65 key and salt are kept (a box whose ML-DSA-65 key exists stays hybrid). Returns the installed
    certificate envelope, or None when the request waits for the manufacturer (``files.request``).
    """
    files.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(files.directory, 0o700)
    pq_key = _pq_key(files, hybrid or files.pq_key.exists(), fresh=not files.device_key.exists())
    if files.device_key.exists():
        key = _private_key(files.device_key)
    else:
        key = generate_key()
        save_private_key(files.device_key, key)
    if not files.salt.exists():
        atomic_write_bytes(files.salt, os.urandom(32), mode=0o600)
    device = device_id or f"btt-{key.keyid[:16]}"
    if not DEVICE_ID_RE.match(device):
        raise IdentityError(f"device id {device!r} must be 1-64 letters, digits or ._:- characters")
    request = certificate_request(device, key, pq_key=pq_key)
    atomic_write_bytes(files.request, canonical_bytes(request) + b"\n", mode=_PRIVATE)
    if manufacturer is None:
        return None
    issued = now_ms()
    certificate = issue_certificate(
        request, manufacturer, serial=issued if serial is None else serial, issued_ms=issued, valid_days=valid_days
    )
    install_certificate(files, certificate, manufacturer.public)
    return certificate


def _pq_key(files: KeyFiles, hybrid: bool, *, fresh: bool) -> PrivateKey | None:
    """The box's ML-DSA-65 key when ``hybrid``: the one on disk, or a new one (written BEFORE a ``fresh``
    ed25519 key, so an ed25519 key without an ML-DSA-65 key beside it is one made ed25519-only)."""
    if not hybrid:
        return None
    if files.pq_key.exists():
        return _private_key(files.pq_key)
    if not fresh:
        raise IdentityError(
            f"{files.device_key} is an ed25519-only key: a hybrid identity starts from a fresh key pair "
            "(once certified, `btt-edge provision --rotate --hybrid` makes one)"
        )
    key = generate_key(MLDSA65)
    save_private_key(files.pq_key, key)
    return key


def install_certificate(files: KeyFiles, certificate: Any, manufacturer: PublicKey) -> DeviceCertificate:
    """Check ``certificate`` is signed by ``manufacturer`` and is for this box's key, then store it."""
    parsed = parse_certificate(certificate)
    if parsed.issuer_keyid != manufacturer.keyid:
        raise IdentityError("the certificate was not issued by the given manufacturer key")
    check_signature(CERTIFICATE, certificate, manufacturer)
    key = _private_key(files.device_key)
    if parsed.key != key.public:
        raise CertificateInvalid("the certificate is for another device key")
    pq_key = _private_key(files.pq_key) if files.pq_key.exists() else None
    if (parsed.pq_key is None) != (pq_key is None) or (pq_key is not None and parsed.pq_key != pq_key.public):
        raise CertificateInvalid(
            "the certificate does not certify this box's ML-DSA-65 key"
            if pq_key is not None
            else f"the certificate names an ML-DSA-65 key and this box has none ({files.pq_key})"
        )
    atomic_write_bytes(files.certificate, canonical_bytes(certificate) + b"\n", mode=_PRIVATE)
    return parsed


def dev_manufacturer_key(files: KeyFiles) -> PrivateKey:
    """The DEVELOPMENT manufacturer key under ``files`` (created on first use). Never for production."""
    if files.dev_manufacturer_key.exists():
        return _private_key(files.dev_manufacturer_key)
    files.directory.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    save_private_key(files.dev_manufacturer_key, key)
    save_public_key(files.dev_manufacturer_public, key.public)
    os.chmod(files.dev_manufacturer_public, _PRIVATE)
    return key


def rotate(
    files: KeyFiles, manufacturer: PrivateKey, *, valid_days: int | None = None, hybrid: bool = False
) -> dict[str, Any]:
    """Replace the device key: a new key and certificate (``replaces`` the old key id), the old certificate kept
    under ``retired/`` for verifiers, the old private key gone. Crash-safe: the new key and certificate are staged
    (``device.next.*``) and :func:`load_identity` finishes an interrupted rotation. The new identity is hybrid
    when ``hybrid`` or when the current one is (a rotation never drops the ML-DSA-65 key).

    A running agent signs with the new key from its next identity check (``[receipts] check_interval_s``,
    :class:`edge.receipts.service.IdentityWatch`); the old key stays valid unless the manufacturer revokes it.
    """
    current = load_identity(files)
    if current is None:
        raise IdentityError("nothing to rotate: this box has no device identity yet")
    new = generate_key()
    new_pq = generate_key(MLDSA65) if hybrid or current.pq_key is not None else None
    issued = now_ms()
    certificate = issue_certificate(
        certificate_request(current.device_id, new, replaces=current.key.keyid, pq_key=new_pq),
        manufacturer,
        serial=issued,
        issued_ms=issued,
        valid_days=valid_days,
    )
    files.retired.mkdir(mode=0o700, exist_ok=True)
    atomic_write_bytes(
        files.retired / f"{current.key.keyid}.json", canonical_bytes(current.certificate) + b"\n", mode=_PRIVATE
    )
    save_private_key(files.next_key, new)
    if new_pq is not None:
        save_private_key(files.next_pq_key, new_pq)
    else:
        files.next_pq_key.unlink(missing_ok=True)  # staged by a rotation that died before its certificate
    atomic_write_bytes(files.next_certificate, canonical_bytes(certificate) + b"\n", mode=_PRIVATE)
    _finish_rotation(files)
    return certificate


def _finish_rotation(files: KeyFiles) -> None:
    """Move the staged key (and ML-DSA-65 key), then the staged certificate, into place. Another process (the agent
    and the CLI) may be finishing the same rotation: a staged file already moved is not an error."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(files.next_key, files.device_key)
    with contextlib.suppress(FileNotFoundError):
        os.replace(files.next_pq_key, files.pq_key)
    with contextlib.suppress(FileNotFoundError):
        os.replace(files.next_certificate, files.certificate)
    fsync_dir(files.directory)
