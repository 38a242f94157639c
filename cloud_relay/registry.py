"""The device registry: clinics, their API tokens, devices, certificates, trusted keys and revocations.

Operators change it with ``btt-relay`` admin commands; the ingest path reads it inside its own transaction
(:func:`load_trust`, :func:`device_certificates`, :func:`store_certificate`). A device belongs to at most one
clinic (none until the operator assigns it) and names the ``asset`` its revenue shares are kept for.
Revoking a device revokes every key its certificates vouch for: from then on its receipts are rejected; a
manufacturer's signed revocation list (``btt-relay trust revocations FILE``) revokes the key ids it names.
Clinic tokens are random, shown once, and stored only as their SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cloud_relay.errors import RegistryError, Unauthorized
from cloud_relay.storage import Database, Tx
from protocol.certificates import DeviceCertificate, parse_certificate
from protocol.clock import now_ms
from protocol.encoding import canonical_bytes, decode
from protocol.errors import VerificationError
from protocol.keys import PublicKey
from protocol.records import ID_RE
from protocol.verify import Trust, verify_certificates, verify_revocations

__all__ = [
    "ISSUER",
    "MANUFACTURER",
    "DeviceInfo",
    "Registry",
    "device_certificates",
    "load_trust",
    "store_certificate",
    "token_hash",
]

MANUFACTURER = "manufacturer"
_LOOKUP_CHUNK = 500
ISSUER = "issuer"
_ROLES = (MANUFACTURER, ISSUER)


def token_hash(token: str) -> str:
    """What the database keeps of a clinic token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def trusted_keys(tx: Tx, role: str) -> list[PublicKey]:
    """The public keys of ``role`` the operator trusts."""
    return [
        PublicKey.from_json(json.loads(r[0])) for r in tx.all("SELECT key_json FROM trust_keys WHERE role = ?", (role,))
    ]


def load_trust(tx: Tx) -> Trust:
    """Manufacturer keys, and the keys of revoked devices and of manufacturer revocation lists, as a :class:`Trust`."""
    revoked = tx.all(
        "SELECT c.keyid FROM certificates c JOIN devices d ON d.id = c.device WHERE d.revoked_ms IS NOT NULL"
        " UNION SELECT keyid FROM revoked_keys"
    )
    return Trust({k.keyid: k for k in trusted_keys(tx, MANUFACTURER)}, frozenset(str(r[0]) for r in revoked))


def device_certificates(tx: Tx, devices: Sequence[str]) -> dict[str, dict[str, DeviceCertificate]]:
    """The stored (already verified) certificates of ``devices``, by device and key id (every device a key)."""
    out: dict[str, dict[str, DeviceCertificate]] = {d: {} for d in devices}
    for start in range(0, len(devices), _LOOKUP_CHUNK):
        chunk = devices[start : start + _LOOKUP_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        for device, envelope in tx.all(f"SELECT device, envelope FROM certificates WHERE device IN ({marks})", chunk):
            cert = parse_certificate(decode(envelope))
            out[str(device)][cert.key.keyid] = cert
    return out


def store_certificate(tx: Tx, envelope: Any, trust: Trust, received_ms: int) -> DeviceCertificate:
    """Verify a certificate against the manufacturer keys and store it (and its device, unassigned if new)."""
    cert = verify_certificates([envelope], trust)
    parsed = next(iter(cert.values()))
    tx.execute(
        "INSERT INTO devices (id, clinic, asset, registered_ms) VALUES (?, NULL, ?, ?) ON CONFLICT DO NOTHING",
        (parsed.device_id, parsed.device_id, received_ms),
    )
    tx.execute(
        "INSERT INTO certificates (keyid, device, issuer, serial, not_after_ms, envelope, received_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (
            parsed.key.keyid,
            parsed.device_id,
            parsed.issuer_keyid,
            parsed.serial,
            parsed.not_after_ms,
            canonical_bytes(envelope).decode("utf-8"),
            received_ms,
        ),
    )
    return parsed


@dataclass(frozen=True)
class DeviceInfo:
    """A registered device as the API and the CLI show it."""

    id: str
    clinic: str | None
    asset: str
    registered_ms: int
    revoked_ms: int | None
    revoked_reason: str | None
    keyids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "clinic": self.clinic,
            "asset": self.asset,
            "registered_ms": self.registered_ms,
            "revoked_ms": self.revoked_ms,
            "revoked_reason": self.revoked_reason,
            "keyids": list(self.keyids),
        }


def _check_id(value: str, what: str) -> str:
    if not ID_RE.match(value):
        raise RegistryError(f"{what} {value!r} must be 1-128 letters, digits or ._:/- characters")
    return value


class Registry:
    """Admin operations on the registry (each in its own transaction)."""

    def __init__(self, db: Database, clock: Callable[[], int] = now_ms) -> None:
        self._db = db
        self._clock = clock

    def add_trust_key(self, role: str, key: PublicKey) -> None:
        """Trust ``key`` as a device manufacturer or as a grant/share-table issuer."""
        if role not in _ROLES:
            raise RegistryError(f"key role {role!r} must be one of {', '.join(_ROLES)}")
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO trust_keys (keyid, role, key_json, added_ms) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (key.keyid, role, json.dumps(key.to_json()), self._clock()),
            )

    def add_clinic(self, clinic: str, name: str) -> None:
        """Register a clinic (idempotent; the name is updated)."""
        _check_id(clinic, "clinic id")
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO clinics (id, name, created_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                (clinic, name, self._clock()),
            )

    def add_token(self, clinic: str, label: str = "") -> str:
        """A new API token for ``clinic``: returned once, stored as its hash."""
        token = "btt_" + secrets.token_urlsafe(32)
        with self._db.transaction() as tx:
            if tx.one("SELECT 1 FROM clinics WHERE id = ?", (clinic,)) is None:
                raise RegistryError(f"unknown clinic {clinic!r}")
            tx.execute(
                "INSERT INTO api_tokens (token_hash, clinic, label, created_ms) VALUES (?, ?, ?, ?)",
                (token_hash(token), clinic, label, self._clock()),
            )
        return token

    def add_admin_token(self, label: str = "") -> str:
        """A new operator token (``btt-relay token add --admin``): returned once, stored as its hash.

        It signs in to the clinic portal's operator view of every clinic (:mod:`cloud_relay.portal`) and opens no
        clinic API route: :meth:`clinic_for_token` does not know it.
        """
        token = "btt_admin_" + secrets.token_urlsafe(32)
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO admin_tokens (token_hash, label, created_ms) VALUES (?, ?, ?)",
                (token_hash(token), label, self._clock()),
            )
        return token

    def is_admin_token(self, token: str) -> bool:
        """Whether ``token`` is an operator token."""
        with self._db.transaction() as tx:
            return tx.one("SELECT 1 FROM admin_tokens WHERE token_hash = ?", (token_hash(token),)) is not None

    def clinic_for_token(self, token: str) -> str:
        """The clinic a token belongs to; :class:`Unauthorized` for an unknown token."""
        with self._db.transaction() as tx:
            row = tx.one("SELECT clinic FROM api_tokens WHERE token_hash = ?", (token_hash(token),))
        if row is None:
            raise Unauthorized("unknown API token")
        return str(row[0])

    def add_device(
        self, device: str, *, clinic: str | None = None, asset: str | None = None, certificate: Any = None
    ) -> None:
        """Register ``device``, or re-assign it to ``clinic`` / ``asset`` (None keeps what it has).

        With ``certificate``, verify that against the manufacturer keys and store it too.
        """
        _check_id(device, "device id")
        with self._db.transaction() as tx:
            if clinic is not None and tx.one("SELECT 1 FROM clinics WHERE id = ?", (clinic,)) is None:
                raise RegistryError(f"unknown clinic {clinic!r}")
            if asset is not None:
                _check_id(asset, "asset id")
            tx.execute(
                "INSERT INTO devices (id, clinic, asset, registered_ms) VALUES (?, ?, ?, ?) ON CONFLICT (id)"
                " DO UPDATE SET clinic = COALESCE(?, devices.clinic), asset = COALESCE(?, devices.asset)",
                (device, clinic, asset or device, self._clock(), clinic, asset),
            )
            if certificate is not None:
                try:
                    cert = store_certificate(tx, certificate, load_trust(tx), self._clock())
                except VerificationError as exc:
                    raise RegistryError(f"certificate of {device}: {exc}") from exc
                if cert.device_id != device:
                    raise RegistryError(f"the certificate is for device {cert.device_id}, not {device}")

    def revoke_device(self, device: str, reason: str) -> None:
        """Revoke ``device``: everything signed by its keys is rejected from now on."""
        with self._db.transaction() as tx:
            changed = tx.execute(
                "UPDATE devices SET revoked_ms = ?, revoked_reason = ? WHERE id = ? AND revoked_ms IS NULL",
                (self._clock(), reason, device),
            )
            if not changed and tx.one("SELECT 1 FROM devices WHERE id = ?", (device,)) is None:
                raise RegistryError(f"unknown device {device!r}")

    def add_revocations(self, envelope: Any) -> int:
        """Apply a revocation list signed by a trusted manufacturer key; returns how many key ids it names."""
        with self._db.transaction() as tx:
            try:
                revoked = verify_revocations(envelope, {k.keyid: k for k in trusted_keys(tx, MANUFACTURER)})
            except VerificationError as exc:
                raise RegistryError(f"revocation list: {exc}") from exc
            tx.execute_many(
                "INSERT INTO revoked_keys (keyid, added_ms) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(keyid, self._clock()) for keyid in sorted(revoked)],
            )
        return len(revoked)

    def devices(self, clinic: str | None = None) -> list[DeviceInfo]:
        """Devices (of ``clinic``, or all), with their certificate key ids."""
        with self._db.transaction() as tx:
            where, params = ("WHERE d.clinic = ?", (clinic,)) if clinic is not None else ("", ())
            rows = tx.all(
                "SELECT d.id, d.clinic, d.asset, d.registered_ms, d.revoked_ms, d.revoked_reason, c.keyid"
                f" FROM devices d LEFT JOIN certificates c ON c.device = d.id {where} ORDER BY d.id, c.keyid",
                params,
            )
        out: dict[str, DeviceInfo] = {}
        for r in rows:
            info = out.get(r[0]) or DeviceInfo(r[0], r[1], r[2], int(r[3]), r[4], r[5], ())
            out[r[0]] = info if r[6] is None else _with_key(info, str(r[6]))
        return list(out.values())

    def device_of_clinic(self, clinic: str, device: str) -> bool:
        """Whether ``device`` belongs to ``clinic``."""
        with self._db.transaction() as tx:
            return tx.one("SELECT 1 FROM devices WHERE id = ? AND clinic = ?", (device, clinic)) is not None


def _with_key(info: DeviceInfo, keyid: str) -> DeviceInfo:
    return DeviceInfo(
        info.id,
        info.clinic,
        info.asset,
        info.registered_ms,
        info.revoked_ms,
        info.revoked_reason,
        (*info.keyids, keyid),
    )
