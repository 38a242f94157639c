"""Service rights (grants): signed by an issuer the device trusts, verified offline (pure).

A grant (type ``grant``) gives a clinic (``holder``) ``units`` uses of one service ``kind`` on one ``asset``
within ``[not_before_ms, not_after_ms)``, at ``unit_price`` per unit prepaid and ``overage_price`` per unit
used beyond it. The box keeps the balances (:mod:`edge.receipts.grants`); the relay bills with them
(:mod:`protocol.payout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.errors import MalformedRecord
from protocol.keys import PublicKey, check_signature, issuer_key, signed_part
from protocol.money import Money
from protocol.records import KIND_RE, get_id, get_int

__all__ = ["GRANT", "Grant", "verify_grant"]

GRANT = "grant"


@dataclass(frozen=True)
class Grant:
    """A verified right."""

    id: str
    issuer_keyid: str
    holder: str
    asset: str
    kind: str
    units: int
    not_before_ms: int
    not_after_ms: int
    unit_price: Money
    overage_price: Money


def verify_grant(envelope: Any, issuers: Mapping[str, PublicKey]) -> Grant:
    """Check a grant's signature against trusted ``issuers`` (by key id) and parse it."""
    signed = signed_part(envelope, GRANT)
    what = "grant"
    key = issuer_key(signed, issuers, f"grant {signed.get('id')!r}")
    check_signature(GRANT, envelope, key)
    if signed.get("format") != 1:
        raise MalformedRecord(f"{what}: unsupported format {signed.get('format')!r}")
    grant = Grant(
        id=get_id(signed, "id", what),
        issuer_keyid=key.keyid,
        holder=get_id(signed, "holder", what),
        asset=get_id(signed, "asset", what),
        kind=get_id(signed, "kind", what, KIND_RE),
        units=get_int(signed, "units", what, lo=1),
        not_before_ms=get_int(signed, "not_before_ms", what),
        not_after_ms=get_int(signed, "not_after_ms", what),
        unit_price=Money.from_json(signed.get("unit_price")),
        overage_price=Money.from_json(signed.get("overage_price")),
    )
    if grant.not_after_ms <= grant.not_before_ms:
        raise MalformedRecord(f"grant {grant.id}: empty validity window")
    return grant
