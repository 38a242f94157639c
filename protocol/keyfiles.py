"""Key files: the JSON form keys travel in between the manufacturer's tools, the box and the relay.

A public key file is ``{"alg", "public", "keyid"}``; a private one ``{"alg", "secret", "keyid"}``, written
atomically with mode 0600 and refused when group or world may read it. The one module of :mod:`protocol` that
touches the disk (through :mod:`runtime.durable`); every failure is a :class:`~protocol.errors.KeyFileError`
naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protocol.encoding import canonical_bytes, decode
from protocol.errors import EncodingError, KeyFileError, MalformedRecord
from protocol.keys import PrivateKey, PublicKey, parse_secret
from runtime.durable import atomic_write_bytes

__all__ = ["load_private_key", "load_public_key", "read_document", "save_private_key", "save_public_key"]


def save_private_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` to ``path`` atomically, readable by the owner only (0600)."""
    doc = {"alg": key.alg, "secret": key.secret.hex(), "keyid": key.keyid}
    atomic_write_bytes(path, canonical_bytes(doc) + b"\n", mode=0o600)


def save_public_key(path: Path, key: PublicKey) -> None:
    """Write the public key file ``{"alg", "public", "keyid"}`` atomically."""
    atomic_write_bytes(path, canonical_bytes({**key.to_json(), "keyid": key.keyid}) + b"\n")


def read_document(path: Path, what: str) -> Any:
    """The strict JSON document in ``path`` (a key file, a certificate next to it); :class:`KeyFileError` naming
    ``what`` and the file when it cannot be read or is not JSON."""
    try:
        return decode(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except EncodingError as exc:
        raise KeyFileError(f"{what} {path}: {exc}") from exc


def load_private_key(path: Path) -> PrivateKey:
    """Read a private key file; :class:`KeyFileError` when unreadable, malformed or group/world readable."""
    doc = read_document(path, "private key")
    try:
        if path.stat().st_mode & 0o077:
            raise KeyFileError(f"private key {path} is readable by others; chmod 600 it")
        return parse_secret(doc.get("alg"), doc.get("secret"))
    except (MalformedRecord, AttributeError) as exc:
        raise KeyFileError(f"private key {path} is malformed: {exc}") from exc


def load_public_key(path: Path) -> PublicKey:
    """Read a public key file (a private key file is refused, so a secret is never passed as trust)."""
    doc = read_document(path, "public key")
    if isinstance(doc, Mapping) and "secret" in doc:
        raise KeyFileError(f"{path} is a private key; give the public key file")
    try:
        return PublicKey.from_json(doc)
    except MalformedRecord as exc:
        raise KeyFileError(f"public key {path} is malformed: {exc}") from exc
