"""The hook for on-chain state in the portal's rights-and-money page; off unless a chain view is given.

The relay's chain ledger (``cloud_relay.chain``, optional) is not imported here. Whoever wires the relay passes an
object with a ``state(kind, ref)`` method to :func:`cloud_relay.portal.mount_portal` (``chain=...``); the page then
shows an "On chain" column with what it returns. ``kind`` is ``"grant"`` (``ref``: the grant id, for a prepaid
right's balance) or ``"payout"`` (``ref``: ``"<period>/<owner>/<currency>"``, for an owner's payout of a month).
Without one, :func:`on_chain` returns None and the column is not shown. ``btt-relay run --chain`` passes
:class:`cloud_relay.chain.view.JournalView` (the chain journal's states, read without a call to the node).
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["ChainView", "on_chain"]

ChainKind = Literal["grant", "payout"]


class ChainView(Protocol):
    """A read-only view of the chain ledger for the portal."""

    def state(self, kind: ChainKind, ref: str) -> str | None:
        """A short human-readable state (e.g. ``"minted, 3 left"``, ``"paid in block 1234"``), None if unknown."""


def on_chain(view: ChainView | None, kind: ChainKind, ref: str) -> str | None:
    """What the chain says of ``ref``; None when no chain view is configured (the portal's default)."""
    return None if view is None else view.state(kind, ref)
