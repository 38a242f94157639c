"""Signing keys with an algorithm identifier and a key id, and the signed envelope every structure uses.

A key is ``(alg, public bytes)``; its key id is the SHA-256 of the canonical JSON ``{"alg": ..., "public":
hex}``, so ids never collide across algorithms. Two algorithms are registered in ``_ALGORITHMS``: ``ed25519``
(PyNaCl; 32-byte keys, 64-byte signatures) and ``ML-DSA-65`` (FIPS 204, through ``cryptography``; a 32-byte seed,
1,952-byte public keys, 3,309-byte signatures), the post-quantum half of a hybrid device identity.

An envelope is ``{"signed": {...}, "signatures": [{"alg", "keyid", "sig"}, ...]}``; each signature covers
:func:`~protocol.encoding.signing_message` of the structure's ``type`` and the canonical bytes of ``signed``, so
a hybrid record carries two entries over the same bytes (ed25519 first) and nothing else changes on the wire.
:func:`check_signatures` requires one valid signature per key given. Pure: key files are read and written by
:mod:`protocol.keyfiles`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from protocol.encoding import canonical_bytes, encode_unchecked, sha256_hex, signing_message
from protocol.errors import BadSignature, EncodingError, HybridSignatureInvalid, MalformedRecord, UntrustedIssuer

__all__ = [
    "ED25519",
    "MLDSA65",
    "PrivateKey",
    "PublicKey",
    "check_signature",
    "check_signatures",
    "generate_key",
    "issuer_key",
    "parse_secret",
    "seal",
    "signature_for",
    "signed_part",
]

ED25519 = "ed25519"
MLDSA65 = "ML-DSA-65"


def _ed25519_verifier(public: bytes, prefix: bytes) -> Callable[[bytes, bytes], bool]:
    open_signed, bad, join = nacl.bindings.crypto_sign_open, nacl.exceptions.BadSignatureError, b"".join

    def check(message: bytes, signature: bytes) -> bool:
        try:
            open_signed(join((signature, prefix, message)), public)  # libsodium takes signature || message
        except bad:
            return False
        return True

    return check


def _ed25519_signer(seed: bytes) -> Callable[[bytes], bytes]:
    secret = nacl.bindings.crypto_sign_seed_keypair(seed)[1]
    return lambda message: nacl.bindings.crypto_sign(message, secret)[:64]


def _ed25519_public(seed: bytes) -> bytes:
    return nacl.bindings.crypto_sign_seed_keypair(seed)[0]


def _mldsa65_verifier(public: bytes, prefix: bytes) -> Callable[[bytes, bytes], bool]:
    try:
        verify = mldsa.MLDSA65PublicKey.from_public_bytes(public).verify
    except ValueError:  # not an encodable key: nothing verifies under it
        return lambda message, signature: False

    def check(message: bytes, signature: bytes) -> bool:
        try:
            verify(signature, prefix + message)
        except InvalidSignature:
            return False
        return True

    return check


def _mldsa65_signer(seed: bytes) -> Callable[[bytes], bytes]:
    return mldsa.MLDSA65PrivateKey.from_seed_bytes(seed).sign


def _mldsa65_public(seed: bytes) -> bytes:
    return mldsa.MLDSA65PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()


@dataclass(frozen=True)
class _Algorithm:
    public_len: int
    signature_len: int
    verifier: Callable[[bytes, bytes], Callable[[bytes, bytes], bool]]
    signer: Callable[[bytes], Callable[[bytes], bytes]]
    public_from_secret: Callable[[bytes], bytes]
    generate_secret: Callable[[], bytes]


_ALGORITHMS: dict[str, _Algorithm] = {
    ED25519: _Algorithm(32, 64, _ed25519_verifier, _ed25519_signer, _ed25519_public, lambda: os.urandom(32)),
    MLDSA65: _Algorithm(1952, 3309, _mldsa65_verifier, _mldsa65_signer, _mldsa65_public, lambda: os.urandom(32)),
}
_SECRET_LEN = 32
"""Every registered algorithm's secret is a 32-byte seed (an Ed25519 seed, an ML-DSA seed xi)."""


def _algorithm(alg: Any) -> _Algorithm:
    found = _ALGORITHMS.get(alg) if isinstance(alg, str) else None
    if found is None:
        raise MalformedRecord(f"unsupported signature algorithm {alg!r} (known: {', '.join(_ALGORITHMS)})")
    return found


def _unhex(value: Any, what: str, length: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or (length is not None and len(raw) != length):
        raise MalformedRecord(f"{what}: expected {length or 'some'} bytes as hex, got {value!r:.80}")
    return raw


@dataclass(frozen=True)
class PublicKey:
    """A public key: algorithm identifier and raw bytes."""

    alg: str
    key: bytes
    keyid: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.key) != _algorithm(self.alg).public_len:
            raise MalformedRecord(f"{self.alg} public key must be {_algorithm(self.alg).public_len} bytes")
        object.__setattr__(self, "keyid", sha256_hex(canonical_bytes(self.to_json())))

    def to_json(self) -> dict[str, str]:
        """``{"alg": ..., "public": hex}``: the form embedded in certificates and key files."""
        return {"alg": self.alg, "public": self.key.hex()}

    @classmethod
    def from_json(cls, doc: Any) -> PublicKey:
        """Parse ``{"alg", "public"}``; :class:`MalformedRecord` when malformed."""
        if not isinstance(doc, Mapping):
            raise MalformedRecord("public key: expected an object")
        alg = _algorithm(doc.get("alg"))
        return cls(str(doc["alg"]), _unhex(doc.get("public"), "public key", alg.public_len))

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``message``."""
        return self.verifier()(message, signature)

    def verifier(self, prefix: bytes = b"") -> Callable[[bytes, bytes], bool]:
        """``verify`` bound to this key, for hot loops: ``check(message, signature)`` verifies ``signature``
        over ``prefix + message`` (a domain-separation prefix joined without an extra copy)."""
        return _ALGORITHMS[self.alg].verifier(self.key, prefix)


@dataclass(frozen=True)
class PrivateKey:
    """A private key (the secret never leaves this object except to its 0600 key file)."""

    alg: str
    secret: bytes = field(repr=False)
    public: PublicKey = field(init=False)
    _sign: Callable[[bytes], bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alg = _algorithm(self.alg)
        object.__setattr__(self, "public", PublicKey(self.alg, alg.public_from_secret(self.secret)))
        object.__setattr__(self, "_sign", alg.signer(self.secret))  # expanded once, not per signature

    @property
    def keyid(self) -> str:
        """The key id of the public half."""
        return self.public.keyid

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``."""
        return self._sign(message)


def generate_key(alg: str = ED25519) -> PrivateKey:
    """A fresh private key from the OS random source."""
    return PrivateKey(alg, _algorithm(alg).generate_secret())


def parse_secret(alg: Any, secret: Any) -> PrivateKey:
    """A private key from its algorithm and hex secret (a key file's fields); :class:`MalformedRecord` otherwise."""
    _algorithm(alg)
    return PrivateKey(str(alg), _unhex(secret, "secret", _SECRET_LEN))


def seal(kind: str, signed: Mapping[str, Any], key: PrivateKey, *others: PrivateKey) -> dict[str, Any]:
    """Sign ``signed`` (whose ``type`` is ``kind``) with ``key`` (and each of ``others``, in that order: a hybrid
    identity's ML-DSA-65 key) and return the envelope."""
    if signed.get("type") != kind:
        raise EncodingError(f"structure type {signed.get('type')!r} is not {kind!r}")
    message = signing_message(kind, canonical_bytes(signed))
    signatures = [{"alg": k.alg, "keyid": k.keyid, "sig": k.sign(message).hex()} for k in (key, *others)]
    return {"signed": dict(signed), "signatures": signatures}


def signed_part(envelope: Any, kind: str) -> Mapping[str, Any]:
    """The ``signed`` object of an envelope of type ``kind``, unverified; :class:`MalformedRecord` otherwise."""
    signed = envelope.get("signed") if isinstance(envelope, Mapping) else None
    if not isinstance(signed, Mapping):
        raise MalformedRecord(f"{kind}: not an envelope with a 'signed' object")
    if signed.get("type") != kind:
        raise MalformedRecord(f"{kind}: type is {signed.get('type')!r}")
    return signed


def issuer_key(signed: Mapping[str, Any], issuers: Mapping[str, PublicKey], what: str) -> PublicKey:
    """The trusted key (of ``issuers``, by key id) that ``signed`` names as its ``issuer``;
    :class:`~protocol.errors.UntrustedIssuer` when it names none of them."""
    issuer = signed.get("issuer")
    key = issuers.get(issuer) if isinstance(issuer, str) else None
    if key is None:
        raise UntrustedIssuer(f"{what}: issuer {issuer!r:.24} is not trusted")
    return key


def signature_for(envelope: Mapping[str, Any], keyid: str) -> tuple[str, bytes]:
    """The ``(alg, signature)`` by ``keyid`` in ``envelope``; :class:`BadSignature` when there is none."""
    sigs = envelope.get("signatures")
    if isinstance(sigs, list):
        for entry in sigs:
            if isinstance(entry, Mapping) and entry.get("keyid") == keyid:
                return str(entry.get("alg")), _unhex(entry.get("sig"), "signature")
    raise BadSignature(f"no signature by key {keyid[:16]}")


def check_signature(kind: str, envelope: Mapping[str, Any], key: PublicKey, body: bytes | None = None) -> bytes:
    """Verify ``key``'s signature on the envelope; return the canonical bytes of ``signed``.

    :class:`BadSignature` when the signature is missing, of another algorithm, or does not verify.
    """
    alg, sig = signature_for(envelope, key.keyid)
    if body is None:
        body = encode_unchecked(envelope["signed"])
    if alg != key.alg or not key.verify(signing_message(kind, body), sig):
        raise BadSignature(f"{kind}: signature by key {key.keyid[:16]} does not verify")
    return body


def check_signatures(
    kind: str, envelope: Mapping[str, Any], keys: Sequence[PublicKey], body: bytes | None = None
) -> bytes:
    """Verify a signature by every one of ``keys`` on the envelope; return the canonical bytes of ``signed``.

    One key: exactly :func:`check_signature`. Several (a hybrid identity: ed25519 and ML-DSA-65): each must have
    a valid signature, else :class:`~protocol.errors.HybridSignatureInvalid` naming the algorithm whose signature
    is missing or does not verify (one valid signature never stands in for the other).
    """
    if len(keys) == 1:
        return check_signature(kind, envelope, keys[0], body)
    if body is None:
        body = encode_unchecked(envelope["signed"])
    message = signing_message(kind, body)
    for key in keys:
        try:
            alg, sig = signature_for(envelope, key.keyid)
        except BadSignature:
            raise HybridSignatureInvalid(
                f"{kind}: the {key.alg} signature (key {key.keyid[:16]}) is missing; a hybrid identity signs with "
                f"{' and '.join(k.alg for k in keys)}"
            ) from None
        if alg != key.alg or not key.verify(message, sig):
            raise HybridSignatureInvalid(f"{kind}: the {key.alg} signature (key {key.keyid[:16]}) does not verify")
    return body
