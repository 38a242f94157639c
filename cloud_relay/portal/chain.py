"""The hook for on-chain state in the portal's rights-and-money page; off unless a chain view is given.

The relay's chain ledger (``cloud_relay.chain``, optional) is not imported here. Whoever wires the relay passes an
object with a ``state(kind, ref)`` method to :func:`cloud_relay.portal.mount_portal` (``chain=...``); the page then
shows an "On chain" column with what it returns: a :class:`ChainState` (a ``chain.*`` message of the portal's
catalogues and its values, shown in the reader's language) or plain text (shown as it is). ``kind`` is ``"grant"``
(``ref``: the grant id, for a prepaid right's balance) or ``"payout"`` (``ref``: ``"<period>/<owner>/<currency>"``,
for an owner's payout of a month). Without one, :func:`on_chain` returns None and the column is not shown.
``btt-relay run --chain`` passes :class:`cloud_relay.chain.view.JournalView` (the chain journal's states, read
without a call to the node).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from cloud_relay.portal.i18n import Translator

__all__ = ["ChainState", "ChainView", "describe", "on_chain"]

ChainKind = Literal["grant", "payout"]


@dataclass(frozen=True)
class ChainState:
    """A state in the catalogues' words: ``message`` (``chain.minted``, ...) and its values; a value that is itself
    a :class:`ChainState` is translated first (``chain.step`` of ``chain.what.mint`` and ``chain.status.sent``)."""

    message: str
    values: Mapping[str, object] = field(default_factory=dict)


class ChainView(Protocol):
    """A read-only view of the chain ledger for the portal."""

    def state(self, kind: ChainKind, ref: str) -> ChainState | str | None:
        """The state of ``ref`` on chain (e.g. minted in block 1234, 3 units burned), None if unknown."""


def on_chain(view: ChainView | None, kind: ChainKind, ref: str) -> ChainState | str | None:
    """What the chain says of ``ref``; None when no chain view is configured (the portal's default)."""
    return None if view is None else view.state(kind, ref)


def describe(t: Translator, state: ChainState | str | None) -> str | None:
    """``state`` as the page shows it in ``t``'s language."""
    if state is None or isinstance(state, str):
        return state
    values = {k: describe(t, v) if isinstance(v, ChainState) else v for k, v in state.values.items()}
    return t(state.message, **values)
