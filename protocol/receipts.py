"""The receipt: one signed record per use of the equipment, linked into a per-device hash chain.

A receipt (type ``receipt``, ``format`` 1) holds: ``device`` and ``keyid`` (who signed), ``seq`` (1, 2, 3 ...
per device, never reused), ``prev`` (the hash of the previous receipt, 64 zeros for the first), ``time_ms``,
the service ``kind`` and ``units``, ``overage_units`` (the part beyond granted rights, billed at settlement),
``right`` (the grant consumed, or null), the model ``bundle_id`` and ``bundle_version`` (null for an exposure),
``output_digest`` (``<alg>:<hex>`` of the result) and ``study_digest`` (a keyed hash of the study identifier
under the box's secret salt: never a patient identifier or UID in clear).

A receipt's hash is the SHA-256 of its canonical bytes (the ``signed`` part); it is what ``prev`` links to and,
as RFC 9162 leaf data, what a settlement's Merkle tree covers. :func:`receipt_body` is the ``signed`` part as an
object; its canonical bytes come from one encoder, ``_encode``, which the signer (:func:`encode_receipt`) and the
verifier's fast path (:func:`fast_receipt`) share (a property test holds both to ``canonical_bytes``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, NamedTuple

from protocol.encoding import quote_string as _quote
from protocol.errors import EncodingError, MalformedRecord
from protocol.records import ID_RE, KIND_RE

__all__ = [
    "GENESIS",
    "RECEIPT",
    "Receipt",
    "ReceiptDraft",
    "Use",
    "encode_receipt",
    "fast_receipt",
    "parse_receipt",
    "receipt_body",
]

RECEIPT = "receipt"
GENESIS = "0" * 64
"""``prev`` of the first receipt of a device."""
_DIGEST_RE = re.compile(r"^[a-z0-9-]{1,32}:[0-9a-f]{32,128}$")
_MAX_UNITS = 1_000_000_000
_KNOWN_KINDS = frozenset({"analysis", "exposure", "compute"})
"""Kinds in use today (checked without the pattern); any other matching ``KIND_RE`` is accepted too."""


@dataclass(frozen=True)
class Use:
    """One use of the equipment, as a component reports it to :meth:`ReceiptBook.record`.

    ``study_uid`` is hashed with the box's secret salt before anything is stored or signed.
    """

    kind: str
    units: int = 1
    right_id: str | None = None
    bundle_id: str | None = None
    bundle_version: str | None = None
    output_digest: str | None = None
    study_uid: str | None = None

    def validate(self) -> None:
        """Raise :class:`MalformedRecord` naming the first bad field."""
        if not isinstance(self.kind, str) or (self.kind not in _KNOWN_KINDS and not KIND_RE.match(self.kind)):
            raise MalformedRecord(f"use: kind {self.kind!r} must match {KIND_RE.pattern}")
        if type(self.units) is not int or not 1 <= self.units <= _MAX_UNITS:
            raise MalformedRecord(f"use: units {self.units!r} must be an integer from 1 to {_MAX_UNITS}")
        if self.right_id is not None and not (isinstance(self.right_id, str) and ID_RE.match(self.right_id)):
            raise MalformedRecord(f"use: right_id {self.right_id!r} is not a valid identifier")
        for value in (self.bundle_id, self.bundle_version, self.study_uid):
            if value is not None and not (isinstance(value, str) and 0 < len(value) <= 256):
                raise MalformedRecord("use: bundle_id, bundle_version and study_uid must be 1-256 characters")
        if self.output_digest is not None and not (
            isinstance(self.output_digest, str) and _DIGEST_RE.match(self.output_digest)
        ):
            raise MalformedRecord(f"use: output_digest {self.output_digest!r:.40} must look like 'sha256:<hex>'")


class ReceiptDraft(NamedTuple):
    """What the signer knows of a receipt before it is encoded: :func:`receipt_body` and :func:`encode_receipt`
    take it (a tuple: cheap to build in the signer's loop)."""

    device: str
    keyid: str
    seq: int
    prev: str
    time_ms: int
    use: Use
    overage_units: int
    right_id: str | None
    study_digest: str | None


def receipt_body(draft: ReceiptDraft) -> dict[str, Any]:
    """The ``signed`` part of a receipt."""
    device, keyid, seq, prev, time_ms, use, overage_units, right_id, study_digest = draft
    return {
        "type": RECEIPT,
        "format": 1,
        "device": device,
        "keyid": keyid,
        "seq": seq,
        "prev": prev,
        "time_ms": time_ms,
        "kind": use.kind,
        "units": use.units,
        "overage_units": overage_units,
        "right": right_id,
        "bundle_id": use.bundle_id,
        "bundle_version": use.bundle_version,
        "output_digest": use.output_digest,
        "study_digest": study_digest,
    }


class Receipt(NamedTuple):
    """The fields a verifier and the payout need from a receipt (a tuple: cheap to build in hot loops)."""

    device: str
    keyid: str
    seq: int
    prev: str
    time_ms: int
    kind: str
    units: int
    overage_units: int
    right: str | None
    hash: str


def parse_receipt(signed: Mapping[str, Any], digest: str) -> Receipt:
    """Check a receipt's fields (types and ranges) and return them with its hash ``digest``.

    ``prev`` is not pattern-checked here: the verifier compares it with the previous receipt's hash.
    """
    try:
        seq, prev, time_ms = signed["seq"], signed["prev"], signed["time_ms"]
        units, overage, right = signed["units"], signed["overage_units"], signed["right"]
        device, keyid, kind = signed["device"], signed["keyid"], signed["kind"]
        optional = (signed["bundle_id"], signed["bundle_version"], signed["output_digest"], signed["study_digest"])
        version = signed["format"]
    except KeyError as exc:
        raise MalformedRecord(f"receipt: field {exc.args[0]!r} is missing") from None
    if version != 1:
        raise MalformedRecord(f"receipt: unsupported format {version!r}")
    if type(seq) is not int or type(time_ms) is not int or type(units) is not int or type(overage) is not int:
        raise MalformedRecord(f"receipt {seq!r:.20}: seq, time_ms, units and overage_units must be integers")
    if seq < 1 or units < 1 or not 0 <= overage <= units:
        raise MalformedRecord(f"receipt {seq}: seq and units must be >= 1 and overage_units within 0..units")
    if type(device) is not str or type(keyid) is not str or type(kind) is not str or type(prev) is not str:
        raise MalformedRecord(f"receipt {seq}: device, keyid, kind and prev must be strings")
    for value in (right, *optional):
        if value is not None and type(value) is not str:
            raise MalformedRecord(f"receipt {seq}: right and the digests must be strings or null")
    return Receipt(device, keyid, seq, prev, time_ms, kind, units, overage, right, digest)


_FIELDS = tuple(
    sorted(
        receipt_body(
            ReceiptDraft(device="", keyid="", seq=0, prev="", time_ms=0, use=Use("x"), overage_units=0,
                         right_id=None, study_digest=None)
        )
    )
)  # fmt: skip
"""The field names in canonical (sorted) order: the template below and the verifier's field lookup follow it."""
_get_fields = operator.itemgetter(*_FIELDS)
_new_receipt = tuple.__new__  # Receipt from a ready tuple, without the generated __new__'s argument handling
_TEMPLATE = "{" + ",".join(f'"{name}":%s' for name in _FIELDS) + "}"


def _encode(fields: tuple[Any, ...]) -> bytes:
    """The one receipt encoder: the canonical bytes of a format-1 receipt (``canonical_bytes(receipt_body(...))``)
    from its field values in :data:`_FIELDS` order.

    The signer (:func:`encode_receipt`) and the verifier (:func:`fast_receipt`) both build their bytes here; the
    caller has checked the integers, ``format`` (1) and ``type`` (receipt). ``_quote`` takes only ``str``, so a
    string field of another type raises TypeError, and a lone surrogate UnicodeEncodeError.
    """
    (bundle_id, bundle_version, device, _, keyid, kind, output_digest, overage, prev, right, seq, study_digest,
     time_ms, _, units) = fields  # fmt: skip
    return (
        _TEMPLATE
        % (
            "null" if bundle_id is None else _quote(bundle_id),
            "null" if bundle_version is None else _quote(bundle_version),
            _quote(device),
            "1",
            _quote(keyid),
            _quote(kind),
            "null" if output_digest is None else _quote(output_digest),
            overage,
            _quote(prev),
            "null" if right is None else _quote(right),
            seq,
            "null" if study_digest is None else _quote(study_digest),
            time_ms,
            '"receipt"',
            units,
        )
    ).encode("utf-8")


def fast_receipt(signed: Mapping[str, Any]) -> tuple[bytes, Receipt] | None:
    """Canonical bytes and fields (with the hash) of a receipt in one pass, for verifiers' hot loops.

    Returns None unless ``signed`` has exactly the format-1 fields with the expected types (``type`` receipt);
    the caller then takes the general path (:func:`~protocol.encoding.encode_unchecked` and
    :func:`parse_receipt`), which raises the specific error. When it returns, the bytes equal
    ``encode_unchecked(signed)`` (a property test checks this).
    """
    try:
        if len(signed) != len(_FIELDS):
            return None
        fields = _get_fields(signed)
        (_, _, device, version, keyid, kind, _, overage, prev, right, seq, _, time_ms, kind_of, units) = fields
        if (
            version != 1
            or kind_of != RECEIPT
            or type(seq) is not int
            or type(time_ms) is not int
            or type(units) is not int
            or type(overage) is not int
            or type(version) is not int
            or seq < 1
            or units < 1
            or not 0 <= overage <= units
        ):
            return None
        data = _encode(fields)
    except (KeyError, TypeError, UnicodeEncodeError):
        return None
    digest = sha256(data).hexdigest()
    return data, _new_receipt(Receipt, (device, keyid, seq, prev, time_ms, kind, units, overage, right, digest))


def encode_receipt(draft: ReceiptDraft) -> tuple[bytes, Receipt]:
    """The signer's one pass: ``canonical_bytes(receipt_body(...))`` and the receipt's fields and hash.

    ``use`` must be validated (:meth:`Use.validate`); a string that is not valid Unicode raises
    :class:`EncodingError`.
    """
    device, keyid, seq, prev, time_ms, use, overage_units, right_id, study_digest = draft
    try:
        data = _encode(
            (use.bundle_id, use.bundle_version, device, 1, keyid, use.kind, use.output_digest, overage_units, prev,
             right_id, seq, study_digest, time_ms, RECEIPT, use.units)
        )  # fmt: skip
    except (TypeError, UnicodeEncodeError) as exc:
        raise EncodingError(f"use: a {use.kind!r} receipt has a string that is not valid Unicode") from exc
    digest = sha256(data).hexdigest()
    return data, Receipt(device, keyid, seq, prev, time_ms, use.kind, use.units, overage_units, right_id, digest)
