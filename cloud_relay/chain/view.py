"""The portal's view of the chain ledger (:class:`cloud_relay.portal.ChainView`): what the journal says of a right
and of an owner's payout of a month.

It reads the relay's own chain tables (``chain_rights``, ``chain_disbursements``, ``chain_journal``) and never the
node, so a page does not wait on the chain: the journal holds what the chain service sent and saw confirmed
(:mod:`cloud_relay.chain.journal`). ``btt-relay run --chain`` passes one to the portal.

States are the portal's ``chain.*`` messages (:class:`~cloud_relay.portal.chain.ChainState`, shown in the reader's
language): a right "minted in block N, K burned" (or "mint queued / signed / sent", "mint failed: why", "from an
on-chain balance, K burned"); a payout "claimed in block N", "claimable (root in block N)", "root sent", "not
disbursed" when the month has a disbursement in that currency without this owner. None when the chain knows
nothing of it (a grant not put on chain, a month not disbursed).
"""

from __future__ import annotations

from cloud_relay.chain.rights import burned_units, request_id
from cloud_relay.chain.store import ChainStore
from cloud_relay.portal.chain import ChainKind, ChainState
from cloud_relay.storage import Database, Tx

__all__ = ["JournalView"]


class JournalView:
    """Read-only answers from the chain journal for the portal's "On chain" column."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._store = ChainStore(db)

    def state(self, kind: ChainKind, ref: str) -> ChainState | None:
        if kind == "grant":
            with self._db.transaction() as tx:
                return self._right(tx, ref)
        period, _, rest = ref.partition("/")
        owner, _, currency = rest.rpartition("/")
        if not (period and owner and currency):
            return None
        return self._payout(period, owner, currency)

    @staticmethod
    def _entry(tx: Tx, key: str, what: str) -> int | ChainState:
        """The block of the journal entry ``key`` once confirmed, else how far it got."""
        row = tx.one("SELECT status, block_number, error FROM chain_journal WHERE key = ?", (key,))
        step = ChainState(f"chain.what.{what}")
        if row is None:
            return ChainState("chain.step", {"what": step, "status": ChainState("chain.status.missing")})
        status, block, error = str(row[0]), row[1], row[2]
        if status == "confirmed":
            return int(block) if block is not None else 0
        if status == "failed":
            return ChainState("chain.failed", {"what": step, "error": str(error or "")[:80]})
        return ChainState("chain.step", {"what": step, "status": ChainState(f"chain.status.{status}")})

    def _right(self, tx: Tx, grant_id: str) -> ChainState | None:
        row = next((r for r in ChainStore.rights(tx) if r.grant_id == grant_id), None)
        if row is None:
            return None
        holder = ChainStore.addresses(tx).get(row.holder)
        burned = burned_units(tx, holder, row.right_id) if holder is not None else 0
        if not row.minted:
            return ChainState("chain.from_balance", {"burned": burned})
        minted = self._entry(tx, f"mint:0x{request_id(grant_id).hex()}", "mint")
        if isinstance(minted, ChainState):
            return minted
        return ChainState("chain.minted", {"block": minted, "burned": burned})

    def _payout(self, period: str, owner: str, currency: str) -> ChainState | None:
        d = self._store.disbursement(period, currency)
        if d is None:
            return None
        claim = next((c for c in d.claims if c["owner"] == owner), None)
        if claim is None:
            return ChainState("chain.not_disbursed")
        with self._db.transaction() as tx:
            root = self._entry(tx, f"publish:{period}:{d.token}", "root")
            if isinstance(root, ChainState):
                return root
            key = f"claim:{period}:{d.token}:{claim['index']}"
            if tx.one("SELECT 1 FROM chain_journal WHERE key = ?", (key,)) is None:
                return ChainState("chain.claimable", {"block": root})
            block = self._entry(tx, key, "claim")
            return block if isinstance(block, ChainState) else ChainState("chain.claimed", {"block": block})
