"""What "covered by the clinic's prepaid service rights" means for a draft plan's item.

The box's rights (grants, :mod:`protocol.grants`, kept by :mod:`edge.receipts.grants`) are prepaid *uses of the
box*: an ``exposure`` of the X-ray unit, an ``analysis`` by the AI model. They are not dental treatment and pay
for none. So an item is covered only when its procedure is a use of the box: the rules table names the service
kinds a procedure uses (``[procedures.<key>] service``: a periapical image is an exposure and an analysis), and
such an item is covered while the clinic's valid rights of every one of those kinds have units left, taken in
the plan's order. Every other procedure (an evaluation, a filling, an implant) is never covered. Pure: a
:class:`Prepaid` view of the balances in, a :class:`Cover` decision out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Cover", "Prepaid", "prepaid_from_grants"]


@dataclass(frozen=True)
class Cover:
    """Whether one item is covered, and why (or why not)."""

    covered: bool
    reason: str


@dataclass(frozen=True)
class Prepaid:
    """Units left per service kind in the clinic's rights valid now."""

    remaining: Mapping[str, int]

    def cover(self, services: tuple[str, ...], taken: dict[str, int]) -> Cover:
        """The decision for an item using one unit of each of ``services``, after ``taken`` units (updated when
        covered)."""
        if not services:
            return Cover(False, "a dental procedure: the prepaid rights cover uses of the box, not treatment")
        short = [s for s in services if self.remaining.get(s, 0) - taken.get(s, 0) < 1]
        if short:
            return Cover(False, "no prepaid " + " or ".join(short) + " right left on this box")
        for s in services:
            taken[s] = taken.get(s, 0) + 1
        return Cover(True, "prepaid " + " and ".join(services) + " right")


def prepaid_from_grants(grants: Iterable[Mapping[str, Any]], at_ms: int) -> Prepaid:
    """The view of the installed rights (:func:`edge.receipts.grants.list_grants` rows) valid at ``at_ms``."""
    remaining: dict[str, int] = {}
    for g in grants:
        if int(g["not_before_ms"]) <= at_ms < int(g["not_after_ms"]):
            remaining[str(g["kind"])] = remaining.get(str(g["kind"]), 0) + max(0, int(g["remaining"]))
    return Prepaid(remaining)
