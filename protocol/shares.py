"""Ownership of an asset: a signed, versioned table of owners and their shares in basis points.

A share table (type ``share-table``) names the ``asset``, a ``version`` that increases with every change, the
time it takes effect, and owners with shares in basis points (1/100 of a percent) summing to exactly 10 000.
Issuers sign tables as they sign grants; :func:`current_table` picks the one in force at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol.errors import MalformedRecord, RightsError
from protocol.keys import PublicKey, check_signature, issuer_key, signed_part
from protocol.records import get_id, get_int

__all__ = ["SHARE_TABLE", "TOTAL_BPS", "Share", "ShareTable", "current_table", "verify_share_table"]

SHARE_TABLE = "share-table"
TOTAL_BPS = 10_000


@dataclass(frozen=True)
class Share:
    """One owner's share in basis points."""

    owner: str
    bps: int


@dataclass(frozen=True)
class ShareTable:
    """A verified share table."""

    asset: str
    version: int
    effective_from_ms: int
    owners: tuple[Share, ...]
    issuer_keyid: str


def verify_share_table(envelope: Any, issuers: Mapping[str, PublicKey]) -> ShareTable:
    """Check the signature against trusted ``issuers`` and the shares (positive, unique, summing to 10 000)."""
    signed = signed_part(envelope, SHARE_TABLE)
    what = "share table"
    key = issuer_key(signed, issuers, what)
    check_signature(SHARE_TABLE, envelope, key)
    owners_raw = signed.get("owners")
    if not isinstance(owners_raw, list) or not owners_raw:
        raise MalformedRecord(f"{what}: owners must be a non-empty list")
    owners = tuple(
        Share(get_id(o, "owner", what), get_int(o, "bps", what, lo=1)) if isinstance(o, Mapping) else _bad(what)
        for o in owners_raw
    )
    if len({s.owner for s in owners}) != len(owners):
        raise RightsError(f"{what}: an owner appears twice")
    total = sum(s.bps for s in owners)
    if total != TOTAL_BPS:
        raise RightsError(f"{what}: shares sum to {total} basis points, not {TOTAL_BPS}")
    return ShareTable(
        asset=get_id(signed, "asset", what),
        version=get_int(signed, "version", what, lo=1),
        effective_from_ms=get_int(signed, "effective_from_ms", what),
        owners=owners,
        issuer_keyid=key.keyid,
    )


def _bad(what: str) -> Share:
    raise MalformedRecord(f"{what}: each owner must be an object {{owner, bps}}")


def current_table(tables: Iterable[ShareTable], asset: str, at_ms: int) -> ShareTable:
    """The table of ``asset`` in force at ``at_ms``: the highest version already effective."""
    candidates = [t for t in tables if t.asset == asset and t.effective_from_ms <= at_ms]
    if not candidates:
        raise RightsError(f"no share table for asset {asset!r} in force at {at_ms}")
    return max(candidates, key=lambda t: t.version)
