"""Settlements on chain: each verified settlement anchored, the prepaid units it consumed burned, and a stored
receipt's inclusion checked against the anchored root.

:func:`plan_settlements` journals, for every verified settlement not journalled yet (``settlements`` rows, stored
by :mod:`cloud_relay.ingest` only once verified):

* ``anchor(settlementId = the settlement's SHA-256 digest, root = its RFC 9162 root, device = keccak256(device id),
  batch, first_seq, last_seq, units = the sum of its totals' units)``;
* for each of its totals on a right the relay put on chain (:mod:`cloud_relay.chain.rights`), ``burnConsumed(the
  right's holder, right id, units - overage_units, settlementId)``. Overage units were never prepaid: nothing burns.

:func:`verify_receipt` is ``btt-relay chain verify``: the stored receipt's stand-alone proof (the document
``btt-edge receipts verify-proof`` checks, from :meth:`cloud_relay.clinic.ClinicView.proof`), verified against
the trusted manufacturer keys, then its settlement's root compared with the one anchored on chain, at least
``confirmations`` blocks deep.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from eth_utils.crypto import keccak

from cloud_relay.chain.client import ChainClient, Contracts
from cloud_relay.chain.errors import NotAnchored
from cloud_relay.chain.journal import add_intent
from cloud_relay.chain.store import ChainStore
from cloud_relay.clinic import ClinicView
from cloud_relay.errors import RegistryError
from cloud_relay.registry import Registry, load_trust
from cloud_relay.storage import Database
from protocol.clock import now_ms
from protocol.errors import ProtocolError
from protocol.verify import verify_proof
from runtime.logs import event

__all__ = ["Verified", "plan_settlements", "verify_receipt"]

log = logging.getLogger("cloud_relay.chain.anchor")


def plan_settlements(db: Database, contracts: Contracts, limit: int = 500) -> int:
    """Journal the anchor and the burns of up to ``limit`` settlements not journalled yet; returns how many."""
    now = now_ms()
    with db.transaction() as tx:
        rows = tx.all(
            "SELECT s.device, s.batch, s.hash, s.first_seq, s.last_seq, s.root, s.envelope FROM settlements s"
            " WHERE NOT EXISTS (SELECT 1 FROM chain_journal j WHERE j.key = 'anchor:' || s.hash)"
            " ORDER BY s.received_ms, s.device, s.batch LIMIT ?",
            (limit,),
        )
        if not rows:
            return 0
        rights = {r.grant_id: r for r in ChainStore.rights(tx)}
        addresses = ChainStore.addresses(tx)
        for device, batch, digest, first, last, root, envelope in rows:
            totals = json.loads(envelope)["signed"]["totals"]
            sid = bytes.fromhex(str(digest))
            units = sum(int(t["units"]) for t in totals)
            call = contracts.encode(
                "SettlementAnchor", "anchor", sid, bytes.fromhex(str(root)), keccak(str(device).encode()),
                int(batch), int(first), int(last), units,
            )  # fmt: skip
            args = {"settlement": "0x" + str(digest), "device": device, "batch": int(batch), "units": units}
            add_intent(tx, f"anchor:{digest}", "anchor", call, args, now=now)
            for total in totals:
                covered = int(total["units"]) - int(total["overage_units"])
                right = rights.get(str(total.get("right")))
                if covered <= 0 or right is None:
                    continue
                holder = addresses.get(right.holder)
                if holder is None:
                    event(log, "burn skipped", level=logging.WARNING, settlement=digest, reason="holder has no address")
                    continue
                call = contracts.encode("ServiceRights", "burnConsumed", holder, int(right.right_id, 16), covered, sid)
                args = {"settlement": "0x" + str(digest), "id": right.right_id, "from": holder, "amount": covered}
                add_intent(tx, f"burn:{digest}:{right.right_id}:{holder}", "burn", call, args, now=now)
    return len(rows)


@dataclass(frozen=True)
class Verified:
    device: str
    seq: int
    settlement: str
    root: str
    block: int
    confirmations: int

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "seq": self.seq,
            "settlement": self.settlement,
            "root": self.root,
            "anchored_in_block": self.block,
            "confirmations": self.confirmations,
            "holds": True,
        }


def verify_receipt(
    db: Database, contracts: Contracts, client: ChainClient, device: str, seq: int, *, confirmations: int
) -> Verified:
    """Check receipt ``seq`` of ``device`` against the chain; :class:`NotAnchored` with the reason otherwise."""
    info = next((d for d in Registry(db).devices() if d.id == device), None)
    if info is None or info.clinic is None:
        raise NotAnchored(f"device {device!r} is unknown to the relay or has no clinic")
    try:
        doc = ClinicView(db).proof(info.clinic, device, seq)
        with db.transaction() as tx:
            trust = load_trust(tx)
        receipt, settlement = verify_proof(doc, trust)
    except RegistryError as exc:
        raise NotAnchored(str(exc)) from exc
    except ProtocolError as exc:
        raise NotAnchored(f"the stored proof does not verify: {type(exc).__name__}: {exc}") from exc
    root, block = contracts.view(client, "SettlementAnchor", "anchored", bytes.fromhex(settlement.hash))
    if root == b"\x00" * 32:
        raise NotAnchored(f"settlement {settlement.batch} of {device} ({settlement.hash[:16]}) is not anchored")
    if root.hex() != settlement.root:
        raise NotAnchored(f"the anchored root {root.hex()[:16]} is not the settlement's root {settlement.root[:16]}")
    depth = client.head() - int(block) + 1
    if depth < confirmations:
        raise NotAnchored(f"anchored in block {block}, {depth} of {confirmations} confirmations so far")
    return Verified(device, receipt.seq, settlement.hash, settlement.root, int(block), depth)
