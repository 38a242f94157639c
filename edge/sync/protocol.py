"""The box's side of the up and ack payloads (pure functions, no I/O); the topics are :mod:`protocol.topics`.

Up payload (UTF-8 JSON): ``{"v": 1, "device": id, "kind": kind, "items": [{"id": item id, "body": {...}}]}``;
one message carries consecutive outbox items of one kind. Ack payload: ``{"v": 1, "stored": [id, ...],
"rejected": [{"id": id, "reason": text, "permanent": bool}]}``: ``stored`` lists ids the relay has durably
stored (or already had), so the device marks them done.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edge.errors import AckError
from edge.outbox.outbox import Item, Rejection

__all__ = ["Ack", "batches", "decode_ack", "encode_up"]

_ITEM_OVERHEAD = 16  # '{"id":,"body":}' and the comma between items


def _envelope_size(device: str, kind: str) -> int:
    return len(encode_up(device, kind, []))


def _item_size(item: Item) -> int:
    return len(json.dumps(item.item)) + len(item.body.encode("utf-8")) + _ITEM_OVERHEAD


def batches(device: str, items: Iterable[Item], max_items: int, max_bytes: int) -> list[list[Item]]:
    """Split ``items`` (in send order) into messages: consecutive items of one kind, at most ``max_items`` and
    ``max_bytes`` per message (an item larger than ``max_bytes`` travels alone)."""
    out: list[list[Item]] = []
    size = 0
    for item in items:
        current = out[-1] if out else None
        grow = _item_size(item)
        if current is None or current[0].kind != item.kind or len(current) >= max_items or size + grow > max_bytes:
            out.append([item])
            size = _envelope_size(device, item.kind) + grow
        else:
            current.append(item)
            size += grow
    return out


def encode_up(device: str, kind: str, items: Sequence[Item]) -> bytes:
    """The up payload for ``items`` (their bodies are already JSON text and go in unchanged)."""
    parts = ",".join(f'{{"id":{json.dumps(i.item)},"body":{i.body}}}' for i in items)
    return f'{{"v":1,"device":{json.dumps(device)},"kind":{json.dumps(kind)},"items":[{parts}]}}'.encode()


@dataclass(frozen=True)
class Ack:
    """One application acknowledgement."""

    stored: tuple[str, ...]
    rejected: tuple[Rejection, ...]


def _fail(why: str) -> AckError:
    return AckError(f"malformed ack: {why}")


def decode_ack(payload: bytes) -> Ack:
    """Parse an ack payload; :class:`AckError` names what is wrong."""
    try:
        doc: Any = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(f"not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise _fail('not an object with "v": 1')
    stored, rejected = doc.get("stored", []), doc.get("rejected", [])
    if not isinstance(stored, list) or not all(isinstance(s, str) for s in stored):
        raise _fail('"stored" is not a list of ids')
    if not isinstance(rejected, list):
        raise _fail('"rejected" is not a list')
    out: list[Rejection] = []
    for entry in rejected:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("id"), str)
            and isinstance(entry.get("reason", ""), str)
            and isinstance(entry.get("permanent", False), bool)
        ):
            raise _fail('a "rejected" entry is not {"id": str, "reason": str, "permanent": bool}')
        out.append(Rejection(entry["id"], entry.get("reason", ""), entry.get("permanent", False)))
    return Ack(tuple(stored), tuple(out))
