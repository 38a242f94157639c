"""Up messages at the relay's edge: bytes in, typed items out, and a refusal with its reason for the rest (pure).

Everything a device publishes passes through :func:`parse_up` once, before the ingest looks at it, the way
``firmware_bridge.framing`` decodes serial frames: what is malformed is refused with its reason (and a short
``code`` to count it by), never raised, and the rest of the message goes on. Nothing here reads a database, a
clock or a socket; :func:`parse_up` returns for every input (tests/test_relay_boundary.py feeds it arbitrary
JSON and bytes).

A whole message is refused (recorded; nothing in it can be acknowledged, no id in it can be trusted) when

* its topic is not ``btt/v1/dev/<device>/up/<kind>`` with a device id of the registry's form
  (:data:`protocol.topics.DEVICE_ID`) and a kind of 1-32 lower-case letters;
* its payload is larger than :data:`MAX_PAYLOAD_BYTES`, not UTF-8, or not JSON (nesting so deep that the parser
  gives up, or an integer of more digits than Python converts, is "not JSON" too);
* it is not ``{"v": 1, "device": <the topic's>, "kind": <the topic's>, "items": [...]}`` with at most
  :data:`MAX_ITEMS` items.

One item alone is refused (acknowledged as rejected, permanent; its neighbours go on) when

* it is not an object with an ``id`` of 1-128 visible ASCII characters and a ``body`` (an item without a
  usable id is recorded under the id ``*``: there is no id to acknowledge);
* its body leaves the relay's JSON subset: nested deeper than :data:`MAX_DEPTH`, NaN or Infinity (also a
  number literal that overflows to one), an integer outside ±(2**53 - 1) (I-JSON; the canonical encoding's
  range), a string that is not valid Unicode (a lone surrogate escape);
* its body is not the kind's shape: ``receipts`` and ``settlements`` a signed envelope whose fields the ingest
  looks up (``seq``, ``prev``, ``batch``, ``first_seq``, ``last_seq``, ``keyid``) have their types and
  ranges; ``certificate`` a signed envelope naming its key; ``offers``, ``health``, ``results`` an object;
* its kind is not one the relay stores (every item of an ``up/<unknown>`` message).

What passes is a :class:`ReceiptIn`, :class:`SettlementIn` or :class:`CertificateIn` (each with its
:class:`~protocol.envelope.Envelope`, parsed once here), or a :class:`ReportIn`; the signatures and everything
else they claim are checked by the ingest (:mod:`protocol.verify`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard

from protocol.encoding import MAX_NESTING, MAX_SAFE_INTEGER, nests_deeper_than
from protocol.envelope import Envelope
from protocol.errors import MalformedRecord
from protocol.kinds import CERTIFICATE, RECEIPTS, SETTLEMENTS, UP_KINDS
from protocol.topics import parse_up_topic

__all__ = [
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_PAYLOAD_BYTES",
    "CertificateIn",
    "ParsedUp",
    "ReceiptIn",
    "Refusal",
    "ReportIn",
    "SettlementIn",
    "UpItem",
    "clean_reason",
    "parse_up",
]

MAX_PAYLOAD_BYTES = 2 * 2**20
"""Largest up payload: a device sends at most ``sync.batch_max_bytes`` (<= 1 MB) or one item of <= 512 KiB."""
MAX_ITEMS = 10_000
"""Most items in one message (the device's ``sync.batch_max_items`` is at most 10 000)."""
MAX_DEPTH = 32
"""Deepest nesting of objects and arrays in an item's body (a receipt envelope is 3 deep)."""
MAX_REASON = 500
"""Longest reason recorded or sent back (characters)."""
_ITEM_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")


class _Marker:
    """What a number outside the subset parses to (NaN, Infinity, an overflowing literal, an integer beyond
    ±(2**53 - 1)): a value the subset check refuses with ``fault``, so that only its item is refused."""

    def __init__(self, fault: str) -> None:
        self.fault = fault

    def __repr__(self) -> str:
        return f"<{self.fault}>"


_NON_FINITE = _Marker("NaN or Infinity is not a number the relay takes")
_BIG_INTEGER = _Marker("an integer outside ±(2**53 - 1)")
_CONTAINERS = frozenset({dict, list})


def _decode(text: str) -> tuple[Any, bool]:
    """The parsed document, and whether a :class:`_Marker` is somewhere in it; ValueError when not JSON."""
    marked = False

    def number(literal: str) -> float | _Marker:
        nonlocal marked
        value = float(literal)
        if math.isfinite(value):
            return value
        marked = True
        return _NON_FINITE

    def integer(literal: str) -> int | _Marker:
        nonlocal marked
        value = int(literal)
        if len(literal) < 16 or -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
        marked = True
        return _BIG_INTEGER

    def constant(_literal: str) -> _Marker:
        nonlocal marked
        marked = True
        return _NON_FINITE

    doc = json.loads(text, parse_float=number, parse_int=integer, parse_constant=constant)
    return doc, marked


@dataclass(frozen=True)
class Refusal:
    """One thing the relay will never store: an item (``item`` its id) or a whole message (``item`` = ``*``)."""

    code: str
    """What kind of fault, for counting: topic, size, encoding, json, message, item, subset, shape, kind."""
    reason: str
    item: str = "*"


@dataclass(frozen=True)
class ReceiptIn:
    """A receipt envelope with the fields the ingest looks up before verifying it."""

    kind: ClassVar[str] = RECEIPTS
    id: str
    envelope: Envelope
    seq: int
    prev: str

    @property
    def keyid(self) -> str:
        return self.envelope.keyid


@dataclass(frozen=True)
class SettlementIn:
    """A settlement envelope with the fields the ingest looks up before verifying it."""

    kind: ClassVar[str] = SETTLEMENTS
    id: str
    envelope: Envelope
    batch: int
    first_seq: int
    last_seq: int

    @property
    def keyid(self) -> str:
        return self.envelope.keyid


@dataclass(frozen=True)
class CertificateIn:
    """A device certificate envelope (verified by the registry against the manufacturer keys)."""

    kind: ClassVar[str] = CERTIFICATE
    id: str
    envelope: Envelope


@dataclass(frozen=True)
class ReportIn:
    """An ``offers``, ``health`` or ``results`` item: a JSON object stored as it came."""

    kind: str
    id: str
    body: Mapping[str, Any]


UpItem = ReceiptIn | SettlementIn | CertificateIn | ReportIn


@dataclass(frozen=True)
class ParsedUp:
    """What one message holds: its device and kind (``?`` / ``*`` when the topic names none), the items that
    passed, and what was refused."""

    device: str
    kind: str
    items: tuple[UpItem, ...] = ()
    refused: tuple[Refusal, ...] = ()


def clean_reason(text: str) -> str:
    """``text`` safe to store and send: non-printable characters escaped, at most :data:`MAX_REASON` long."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def parse_up(topic: str, payload: bytes) -> ParsedUp:
    """The items of one up message, and the refusals (module docstring); never raises."""
    names = parse_up_topic(topic)
    if names is None:
        return _whole("?", "*", "topic", f"topic {topic!r:.80} is not btt/v1/dev/<device>/up/<kind>")
    device, kind = names
    if len(payload) > MAX_PAYLOAD_BYTES:
        return _whole(device, kind, "size", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _whole(device, kind, "encoding", f"payload is not UTF-8: {exc}")
    if nests_deeper_than(payload, MAX_NESTING):
        return _whole(device, kind, "json", "payload is not JSON: nested too deeply")
    try:
        doc, marked = _decode(text)
    except RecursionError:
        return _whole(device, kind, "json", "payload is not JSON: nested too deeply")
    except ValueError as exc:
        return _whole(device, kind, "json", f"payload is not JSON: {exc}")
    if type(doc) is not dict or doc.get("v") != 1 or type(doc.get("v")) is not int:
        return _whole(device, kind, "message", "payload must be an object with v = 1")
    if doc.get("device") != device or doc.get("kind") != kind:
        return _whole(
            device,
            kind,
            "message",
            f"payload names device {doc.get('device')!r:.40} / kind {doc.get('kind')!r:.20}, topic {device}/{kind}",
        )
    raw = doc.get("items")
    if type(raw) is not list or len(raw) > MAX_ITEMS:
        return _whole(device, kind, "message", f"payload items must be a list of at most {MAX_ITEMS}")
    # Strings can only hold a lone surrogate through a \uXXXX escape (the text is valid UTF-8), and numbers outside
    # the subset are marked while parsing: without either, only the nesting depth is left to check.
    full_check = marked or "\\u" in text
    items: list[UpItem] = []
    refused: list[Refusal] = []
    for position, entry in enumerate(raw):
        item_id = entry.get("id") if type(entry) is dict else None
        if type(item_id) is not str or not _ITEM_ID_RE.match(item_id):
            refused.append(Refusal("item", f"item {position}: no id of 1-128 visible ASCII characters"))
            continue
        outcome = _item(kind, item_id, entry.get("body"), full_check)
        if isinstance(outcome, Refusal):
            refused.append(outcome)
        else:
            items.append(outcome)
    return ParsedUp(device, kind, tuple(items), tuple(refused))


def _whole(device: str, kind: str, code: str, reason: str) -> ParsedUp:
    return ParsedUp(device, kind, refused=(Refusal(code, clean_reason(reason)),))


def _item(kind: str, item_id: str, body: Any, full_check: bool) -> UpItem | Refusal:
    if kind not in UP_KINDS:
        return Refusal("kind", f"unknown kind {kind!r}", item_id)
    if full_check:
        fault = _subset_fault(body, 1)
    else:
        fault = f"nested deeper than {MAX_DEPTH}" if type(body) in _CONTAINERS and _too_deep(body, 1) else None
    if fault is not None:
        return Refusal("subset", f"{kind}: {fault}", item_id)
    if type(body) is not dict:
        return Refusal("shape", f"{kind}: body must be a JSON object", item_id)
    try:
        if kind == RECEIPTS:
            return _receipt(item_id, body)
        if kind == SETTLEMENTS:
            return _settlement(item_id, body)
        if kind == CERTIFICATE:
            return CertificateIn(item_id, Envelope.from_json(body, "certificate"))
    except MalformedRecord as exc:
        return Refusal("shape", str(exc), item_id)
    return ReportIn(kind, item_id, body)


def _counter(value: Any) -> TypeGuard[int]:
    """A sequence or batch number: an integer from 1 (the subset check bounds it above)."""
    return type(value) is int and value >= 1


def _receipt(item_id: str, body: dict[str, Any]) -> ReceiptIn:
    envelope = Envelope.from_json(body, "receipt")
    seq, prev = envelope.signed.get("seq"), envelope.signed.get("prev")
    if not _counter(seq) or type(prev) is not str:
        raise MalformedRecord("receipt: not a signed receipt envelope with an integer seq and a prev hash")
    return ReceiptIn(item_id, envelope, seq, prev)


def _settlement(item_id: str, body: dict[str, Any]) -> SettlementIn:
    envelope = Envelope.from_json(body, "settlement")
    signed = envelope.signed
    batch, first, last = signed.get("batch"), signed.get("first_seq"), signed.get("last_seq")
    if not (_counter(batch) and _counter(first) and _counter(last)):
        raise MalformedRecord("settlement: not a signed settlement envelope with integer batch, first_seq, last_seq")
    return SettlementIn(item_id, envelope, batch, first, last)


def _subset_fault(value: Any, depth: int) -> str | None:
    """Why ``value`` (parsed JSON, ``depth`` levels in) is outside the relay's JSON subset, or None."""
    kind = type(value)
    if kind is str:
        return None if value.isascii() or _is_unicode(value) else "a string that is not valid Unicode"
    if kind is dict or kind is list:
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH}"
        if kind is dict:
            for key in value:
                if not (key.isascii() or _is_unicode(key)):
                    return "an object key that is not valid Unicode"
            value = value.values()
        for child in value:
            fault = _subset_fault(child, depth + 1)
            if fault is not None:
                return fault
        return None
    if kind is _Marker:
        return str(value.fault)
    return None  # a number in range, a boolean, null


def _too_deep(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """Whether ``value`` nests deeper than :data:`MAX_DEPTH` (the fast path: containers of scalars skipped in C)."""
    if depth > MAX_DEPTH:
        return True
    children: Iterable[Any] = value.values() if isinstance(value, dict) else value
    if _CONTAINERS.isdisjoint(map(type, children)):
        return False
    return any(type(c) in _CONTAINERS and _too_deep(c, depth + 1) for c in children)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
