"""Settlements: a signed batch closing a contiguous run of a device's receipts.

A settlement (type ``settlement``, ``format`` 1) holds the ``batch`` number (1, 2, ...), ``prev`` (hash of the
previous settlement's canonical bytes, 64 zeros for the first), the sequence range ``first_seq``..``last_seq``
and ``count``, ``last_receipt`` (hash of the last receipt: the chain head it closes), ``root`` (RFC 9162 Merkle
tree hash over the receipts' canonical bytes, in sequence order) and ``totals`` by service kind and right.
Pure functions; the device closes batches in :mod:`edge.receipts.book`, verifiers check them in
:mod:`protocol.verify`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol.errors import MalformedRecord
from protocol.receipts import Receipt
from protocol.records import get_int, get_str

__all__ = ["SETTLEMENT", "Settlement", "compute_totals", "parse_settlement", "settlement_body"]

SETTLEMENT = "settlement"


def compute_totals(receipts: Iterable[tuple[str, str | None, int, int]]) -> list[dict[str, Any]]:
    """Totals over ``(kind, right, units, overage_units)``: one entry per (kind, right), sorted."""
    sums: dict[tuple[str, str | None], list[int]] = {}
    for kind, right, units, overage in receipts:
        entry = sums.setdefault((kind, right), [0, 0, 0])
        entry[0] += 1
        entry[1] += units
        entry[2] += overage
    return [
        {"kind": kind, "right": right, "receipts": n, "units": units, "overage_units": overage}
        for (kind, right), (n, units, overage) in sorted(sums.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    ]


def settlement_body(
    *,
    device: str,
    keyid: str,
    batch: int,
    prev: str,
    receipts: list[Receipt],
    root: str,
    closed_ms: int,
) -> dict[str, Any]:
    """The ``signed`` part of a settlement over ``receipts`` (contiguous, in sequence order)."""
    return {
        "type": SETTLEMENT,
        "format": 1,
        "device": device,
        "keyid": keyid,
        "batch": batch,
        "prev": prev,
        "first_seq": receipts[0].seq,
        "last_seq": receipts[-1].seq,
        "count": len(receipts),
        "last_receipt": receipts[-1].hash,
        "root": root,
        "totals": compute_totals((r.kind, r.right, r.units, r.overage_units) for r in receipts),
        "closed_ms": closed_ms,
    }


@dataclass(frozen=True)
class Settlement:
    """A parsed settlement (``hash`` is the SHA-256 of its canonical bytes)."""

    device: str
    keyid: str
    batch: int
    prev: str
    first_seq: int
    last_seq: int
    count: int
    last_receipt: str
    root: str
    totals: list[dict[str, Any]]
    closed_ms: int
    hash: str


def parse_settlement(signed: Mapping[str, Any], digest: str) -> Settlement:
    """Check a settlement's field types and return them."""
    what = "settlement"
    if signed.get("format") != 1:
        raise MalformedRecord(f"{what}: unsupported format {signed.get('format')!r}")
    totals = signed.get("totals")
    if not isinstance(totals, list) or not all(isinstance(t, Mapping) for t in totals):
        raise MalformedRecord(f"{what}: totals must be a list of objects")
    return Settlement(
        device=get_str(signed, "device", what),
        keyid=get_str(signed, "keyid", what),
        batch=get_int(signed, "batch", what, lo=1),
        prev=get_str(signed, "prev", what),
        first_seq=get_int(signed, "first_seq", what, lo=1),
        last_seq=get_int(signed, "last_seq", what, lo=1),
        count=get_int(signed, "count", what, lo=1),
        last_receipt=get_str(signed, "last_receipt", what),
        root=get_str(signed, "root", what),
        totals=[dict(t) for t in totals],
        closed_ms=get_int(signed, "closed_ms", what),
        hash=digest,
    )
