"""The outbox kinds: what the box queues for the relay, each with its priority class, its barrier and its feeder.

:data:`KINDS` is the one table on the box; everything else reads it. :class:`~edge.outbox.outbox.Outbox` queues
only these kinds (another is refused with the list), sends them in priority order (lower first), evicts only
telemetry (priority above 0) when ``[outbox] max_telemetry_items`` is reached, and never prunes a ``kept`` kind;
the sync service (:mod:`edge.sync.service`) sends a ``barrier`` kind alone, after everything before it is
acknowledged, with nothing after it until it is. The names are the wire's (:mod:`protocol.kinds`: the last level of
the up topic, what the relay stores); ``feeder`` says where on the box each is queued.

To add a message type: name it in :mod:`protocol.kinds` (the relay's side), add it to :data:`OutboxKind` and its
:class:`OutboxKindSpec` to :data:`KINDS` below, and queue it from its feeder with ``Outbox.enqueue(conn, kind,
body)`` inside the transaction of the change that causes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ACCOUNTING", "BARRIERS", "KEPT", "KINDS", "NAMES", "TELEMETRY", "OutboxKind", "OutboxKindSpec", "spec"]

OutboxKind = Literal["certificate", "settlements", "receipts", "results", "offers", "health"]
"""Every kind's name (the same names as :data:`KINDS`, in its order)."""


@dataclass(frozen=True)
class OutboxKindSpec:
    """One kind of outbox item."""

    name: OutboxKind
    priority: int
    """Its class: lower is sent first; 0 is accounting (never evicted, never dropped), above 0 telemetry."""
    feeder: str
    """Where it is queued (and from what)."""
    barrier: bool = False
    """Sent only when nothing is in flight, alone, with nothing after it until it is acknowledged: the relay needs
    it before what follows (the certificate before the receipts it vouches for, a settlement's receipts before it)."""
    kept: bool = False
    """Its acknowledged rows are never pruned."""


KINDS: tuple[OutboxKindSpec, ...] = (
    OutboxKindSpec("certificate", 0, "edge.outbox.feed, from the receipt book's identity", barrier=True, kept=True),
    OutboxKindSpec("settlements", 0, "edge.outbox.feed, from receipt_settlements after its receipts", barrier=True),
    OutboxKindSpec("receipts", 0, "edge.outbox.feed, from the receipt book"),
    OutboxKindSpec("results", 1, "edge.pipeline.worker: an analysis summary (counts, timings; no patient data)"),
    OutboxKindSpec("offers", 2, "edge.capacity.service: capacity offers, withdrawals and job results"),
    OutboxKindSpec("health", 3, "edge.sync.service every health_interval_s; ota.service for update events"),
)
"""Every kind the outbox takes."""

NAMES: tuple[OutboxKind, ...] = tuple(k.name for k in KINDS)
ACCOUNTING: frozenset[OutboxKind] = frozenset(k.name for k in KINDS if k.priority == 0)
"""Never evicted, never dropped."""
TELEMETRY: tuple[OutboxKind, ...] = tuple(k.name for k in KINDS if k.priority > 0)
"""Bounded by ``[outbox] max_telemetry_items``: the oldest are dropped (and counted) first."""
BARRIERS: frozenset[OutboxKind] = frozenset(k.name for k in KINDS if k.barrier)
KEPT: frozenset[OutboxKind] = frozenset(k.name for k in KINDS if k.kept)


def spec(name: str) -> OutboxKindSpec | None:
    """The kind called ``name``, or None if the outbox has no such kind."""
    return next((k for k in KINDS if k.name == name), None)
