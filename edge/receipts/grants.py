"""The box's service rights: grants (verified by :func:`protocol.grants.verify_grant`) installed, and their
balances kept in the agent database (tables from :mod:`edge.receipts.book`), always inside the caller's
transaction.

Safety rule: :meth:`Balances.take` never refuses. When no right covers a use, the uncovered units come back as
``overage`` and the use is recorded and billed at settlement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from protocol.encoding import canonical_bytes
from protocol.errors import RightsError
from protocol.grants import Grant, verify_grant
from protocol.keys import PublicKey

__all__ = ["Balances", "Consumption", "install_grant", "list_grants"]


def install_grant(conn: sqlite3.Connection, envelope: Any, issuers: Mapping[str, PublicKey], asset: str) -> Grant:
    """Verify a grant and add it to the local balances (idempotent for the same grant)."""
    grant = verify_grant(envelope, issuers)
    if grant.asset != asset:
        raise RightsError(f"grant {grant.id} is for asset {grant.asset!r}, this device is {asset!r}")
    body = canonical_bytes(envelope["signed"])
    row = conn.execute("SELECT body FROM receipt_grants WHERE id = ?", (grant.id,)).fetchone()
    if row is not None:
        if bytes(row[0]) != body:
            raise RightsError(f"grant {grant.id} is installed already with different content")
        return grant
    conn.execute(
        "INSERT INTO receipt_grants (id, kind, holder, units, used, not_before_ms, not_after_ms, body, envelope)"
        " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
        (
            grant.id,
            grant.kind,
            grant.holder,
            grant.units,
            grant.not_before_ms,
            grant.not_after_ms,
            body,
            canonical_bytes(envelope).decode("utf-8"),
        ),
    )
    return grant


class Consumption(NamedTuple):
    """What one use consumed: the right (if any), and units beyond rights."""

    right_id: str | None
    overage_units: int


@dataclass
class _Balance:
    id: str
    units: int
    used: int
    not_before_ms: int
    not_after_ms: int

    def valid(self, at_ms: int) -> bool:
        return self.not_before_ms <= at_ms < self.not_after_ms


class Balances:
    """The balances of the rights for some service kinds, loaded once for a batch of uses.

    Load it inside the write transaction that records the uses and write :meth:`changes` back in it, so no
    other writer sees stale balances.
    """

    def __init__(self, conn: sqlite3.Connection, kinds: Iterable[str] | None) -> None:
        """Load the rights of ``kinds`` (None: of every kind)."""
        self._by_kind: dict[str, list[_Balance]] = {}
        self._dirty: set[str] = set()
        query = "SELECT id, kind, units, used, not_before_ms, not_after_ms FROM receipt_grants"
        if kinds is None:
            rows = conn.execute(query).fetchall()
        else:
            wanted = sorted(set(kinds))
            rows = conn.execute(f"{query} WHERE kind IN ({','.join('?' * len(wanted))})", wanted).fetchall()
        for row in rows:
            balance = _Balance(str(row[0]), int(row[2]), int(row[3]), int(row[4]), int(row[5]))
            self._by_kind.setdefault(str(row[1]), []).append(balance)

    def take(self, kind: str, units: int, right_id: str | None, at_ms: int) -> Consumption:
        """Take ``units`` of ``kind`` from a right; never refuses (uncovered units are overage).

        With ``right_id``, that right is used if it is of this kind and valid at ``at_ms``; otherwise the valid
        right of this kind that expires first and still has units. With no usable right, the first valid right
        of the kind (even if exhausted) is named so overage is billed at its price; with none, no right.
        """
        rights = self._by_kind.get(kind)
        if rights is None:  # the common case on a box without grants for this kind
            return Consumption(None, units)
        candidates = [b for b in rights if b.valid(at_ms)]
        if not candidates:
            return Consumption(None, units)
        chosen = next((b for b in candidates if b.id == right_id), None)
        if chosen is None:
            chosen = min(candidates, key=lambda b: (b.used >= b.units, b.not_after_ms, b.id))
        covered = max(0, min(units, chosen.units - chosen.used))
        if covered:
            chosen.used += covered
            self._dirty.add(chosen.id)
        return Consumption(chosen.id, units - covered)

    def changes(self) -> list[tuple[int, str]]:
        """``(used, id)`` of the rights changed since the last call, for ``UPDATE receipt_grants``."""
        changed = [(b.used, b.id) for bs in self._by_kind.values() for b in bs if b.id in self._dirty]
        self._dirty.clear()
        return changed

    def used(self) -> dict[str, int]:
        """Units used per right id, as now in memory."""
        return {b.id: b.used for bs in self._by_kind.values() for b in bs}


def list_grants(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Installed grants with their balances, for the CLI."""
    rows = conn.execute(
        "SELECT id, kind, holder, units, used, not_before_ms, not_after_ms FROM receipt_grants"
        " ORDER BY not_after_ms, id"
    ).fetchall()
    return [dict(row) | {"remaining": max(0, int(row["units"]) - int(row["used"]))} for row in rows]
