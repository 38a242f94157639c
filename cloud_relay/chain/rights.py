"""Service rights on chain: the right id of a grant's terms, mints from the issuer's requests, and the signed grants
the relay makes from a clinic's on-chain balance (so the box keeps checking grants offline).

* A right is one ERC-1155 id per (asset, service kind, terms): ``rightId(keccak256(asset), kind, termsHash)`` with
  ``termsHash = keccak256(canonical JSON of {asset, kind, not_before_ms, not_after_ms, unit_price, overage_price})``.
  The holder, the units and the grant id are not terms: every grant with the same terms is the same token, which is
  what lets a clinic sell unused prepaid uses to another.
* **Mint** (:func:`request_mint`): the issuer's request is the signed grant itself (verified against the trusted
  issuer keys, and added to the ledger like ``btt-relay grant add``). The relay journals ``define`` (once per right)
  and ``mint(holder's address, id, units, requestId = keccak256("grant:" + grant id))``; the contract refuses a
  request id twice, the journal sends it once. The same grant file goes to the clinic's boxes, as today.
* **Grants from balances** (:func:`issue_grants`): units a clinic received on chain (bought from another clinic)
  reach its boxes as a grant signed with an issuer key the boxes and the relay trust (``--issuer-key``): for each
  right, ``confirmed balance - (units granted to the clinic - units burned from it)``, when positive, becomes a new
  grant with the same terms. Units already granted to a box are the box's: an offline box cannot give them back, so
  a clinic can sell only what its boxes were not granted (a sale beyond that makes the later burns fail, visibly, in
  ``btt-relay chain status``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from cloud_relay.chain.client import ChainClient, Contracts
from cloud_relay.chain.journal import add_intent
from cloud_relay.chain.store import ChainStore, RightRow
from cloud_relay.errors import RegistryError
from cloud_relay.ledger import Ledger
from protocol.clock import now_ms
from protocol.encoding import canonical_bytes
from protocol.grants import GRANT, Grant
from protocol.keys import PrivateKey, seal
from runtime.durable import atomic_write_bytes

__all__ = [
    "asset_key",
    "burned_units",
    "grant_terms",
    "issue_grants",
    "request_id",
    "request_mint",
    "request_shares",
    "right_id",
    "terms_hash",
]


def asset_key(asset: str) -> bytes:
    """The bytes32 an asset id is known by on chain."""
    return keccak(asset.encode("utf-8"))


def grant_terms(grant: Grant) -> dict[str, Any]:
    """The terms of a right (everything of a grant but its id, issuer, holder and units)."""
    return {
        "asset": grant.asset,
        "kind": grant.kind,
        "not_before_ms": grant.not_before_ms,
        "not_after_ms": grant.not_after_ms,
        "unit_price": grant.unit_price.to_json(),
        "overage_price": grant.overage_price.to_json(),
    }


def terms_hash(terms: Mapping[str, Any]) -> bytes:
    return keccak(canonical_bytes(dict(terms)))


def right_id(terms: Mapping[str, Any]) -> int:
    """``ServiceRights.rightId`` of ``terms``, computed here."""
    data = encode(["bytes32", "string", "bytes32"], [asset_key(terms["asset"]), terms["kind"], terms_hash(terms)])
    return int.from_bytes(keccak(data), "big")


def request_id(grant_id: str) -> bytes:
    return keccak(f"grant:{grant_id}".encode())


def _hex_id(value: int) -> str:
    return f"0x{value:064x}"


def _define(tx: Any, contracts: Contracts, terms: Mapping[str, Any], now: int) -> int:
    rid = right_id(terms)
    uri = "data:application/json," + canonical_bytes(dict(terms)).decode("utf-8")
    call = contracts.encode(
        "ServiceRights", "defineRight", asset_key(terms["asset"]), terms["kind"], terms_hash(terms), uri
    )
    add_intent(tx, f"define:{_hex_id(rid)}", "define", call, {"id": _hex_id(rid)}, now=now)
    return rid


def request_mint(store: ChainStore, contracts: Contracts, ledger: Ledger, envelope: Any) -> RightRow:
    """Verify the issuer's signed grant, add it to the ledger, and journal its right's definition and mint."""
    grant = ledger.add_grant(envelope)
    to = store.address_of(grant.holder)
    terms = grant_terms(grant)
    now = now_ms()
    with store.db.transaction() as tx:
        rid = _define(tx, contracts, terms, now)
        row = RightRow(grant.id, _hex_id(rid), grant.holder, grant.units, terms, True)
        if not ChainStore.add_right(tx, row, now):
            known = [r for r in ChainStore.rights(tx) if r.grant_id == grant.id]
            if not known or not known[0].minted:
                raise RegistryError(f"grant {grant.id} is on chain already as a grant made from a balance")
        rq = request_id(grant.id)
        call = contracts.encode("ServiceRights", "mint", to, rid, grant.units, rq)
        args = {"request": "0x" + rq.hex(), "to": to, "id": _hex_id(rid), "amount": grant.units}
        add_intent(tx, f"mint:0x{rq.hex()}", "mint", call, args, now=now)
    return row


def request_shares(store: ChainStore, contracts: Contracts, ledger: Ledger, envelope: Any) -> dict[str, Any]:
    """Verify a signed share table, add it to the ledger, and journal its owners' shares (one per basis point).

    For an asset's first table: later changes are transfers between the owners' own addresses (with the next
    signed version effective at that block's time, :mod:`cloud_relay.chain.disburse`).
    """
    table = ledger.add_share_table(envelope)
    key = asset_key(table.asset)
    now = now_ms()
    out = {}
    with store.db.transaction() as tx:
        addresses = ChainStore.addresses(tx)
        missing = [s.owner for s in table.owners if s.owner not in addresses]
        if missing:
            raise RegistryError(f"no chain address for owner(s) {', '.join(missing)}")
        for share in table.owners:
            to = addresses[share.owner]
            call = contracts.encode("AssetShares", "mint", to, key, share.bps)
            args = {"to": to, "asset": "0x" + key.hex(), "amount": share.bps}
            add_intent(tx, f"shares:{table.asset}:v{table.version}:{share.owner}", "shares", call, args, now=now)
            out[share.owner] = share.bps
    return {"asset": table.asset, "version": table.version, "shares": out}


def burned_units(tx: Any, holder_address: str, rid: str) -> int:
    """Units of right ``rid`` whose burn from ``holder_address`` the journal has confirmed."""
    total = 0
    for (args,) in tx.all("SELECT args FROM chain_journal WHERE kind = 'burn' AND status = 'confirmed'"):
        a = json.loads(args)
        if a["from"] == holder_address and a["id"] == rid:
            total += int(a["amount"])
    return total


def issue_grants(
    store: ChainStore,
    contracts: Contracts,
    client: ChainClient,
    ledger: Ledger,
    clinic: str,
    *,
    issuer: PrivateKey,
    confirmations: int,
    out_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Signed grants for the units ``clinic`` holds on chain beyond what its grants already cover (see above)."""
    address = store.address_of(clinic)
    block = max(0, client.head() - confirmations + 1)
    with store.db.transaction() as tx:
        rights = ChainStore.rights(tx)
    terms_by_id = {r.right_id: r.terms for r in rights}
    made: list[dict[str, Any]] = []
    now = now_ms()
    for rid, terms in sorted(terms_by_id.items()):
        balance = int(contracts.view(client, "ServiceRights", "balanceOf", address, int(rid, 16), block=block))
        with store.db.transaction() as tx:
            mine = [r for r in ChainStore.rights(tx, clinic) if r.right_id == rid]
            outstanding = sum(r.units for r in mine) - burned_units(tx, address, rid)
        extra = balance - outstanding
        if extra <= 0:
            continue
        grant_id = "chain-" + hashlib.sha256(f"{clinic}\n{rid}\n{len(mine)}".encode()).hexdigest()[:24]
        body = {"type": GRANT, "format": 1, "id": grant_id, "issuer": issuer.keyid, "holder": clinic, **terms}
        body["units"] = extra
        envelope = seal(GRANT, body, issuer)
        ledger.add_grant(envelope)
        with store.db.transaction() as tx:
            ChainStore.add_right(tx, RightRow(grant_id, rid, clinic, extra, terms, False), now)
        if out_dir is not None:
            atomic_write_bytes(out_dir / f"{grant_id}.json", canonical_bytes(envelope))
        made.append(envelope)
    return made
