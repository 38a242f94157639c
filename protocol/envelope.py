"""The signed envelope parsed once, into a typed object the code passes around instead of raw JSON.

As python-tuf's ``Metadata.from_bytes``: bytes or a parsed document in, an :class:`Envelope` out or a
:class:`~protocol.errors.MalformedRecord` saying what is missing. Only the shape is checked here (an object with a
``signed`` object that names its key, and a list of signatures); what the signature, the certificate and the
chain prove is :mod:`protocol.verify`'s, which reads :attr:`Envelope.document`, the envelope exactly as it came.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.encoding import decode
from protocol.errors import MalformedRecord

__all__ = ["MAX_KEYID", "Envelope"]

MAX_KEYID = 128
"""Longest key id an envelope may name (a SHA-256 key id is 64 hex characters)."""


@dataclass(frozen=True)
class Envelope:
    """A signed structure: ``signed`` (naming ``keyid``), its ``signatures``, and the whole ``document``."""

    signed: Mapping[str, Any]
    keyid: str
    signatures: tuple[Any, ...]
    document: Mapping[str, Any]

    @classmethod
    def from_json(cls, doc: Any, what: str) -> Envelope:
        """Parse a document (``what`` names it in the error: ``receipt``, ``settlement`` ...)."""
        signed = doc.get("signed") if type(doc) is dict else None
        if type(signed) is not dict:
            raise MalformedRecord(f"{what}: not a signed {what} envelope")
        keyid = signed.get("keyid")
        if type(keyid) is not str or not 0 < len(keyid) <= MAX_KEYID:
            raise MalformedRecord(f"{what}: not a signed {what} envelope with a key id")
        signatures = doc.get("signatures")
        if type(signatures) is not list:
            raise MalformedRecord(f"{what}: not a signed {what} envelope with a list of signatures")
        return cls(signed, keyid, tuple(signatures), doc)

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> Envelope:
        """Parse strict canonical-JSON input (:func:`protocol.encoding.decode`) into an envelope."""
        return cls.from_json(decode(data), what)
