"""Disbursements on chain: per period and currency, the owners' payouts exactly as ``btt-relay ledger export``
computes them, published as a Merkle root owners claim against (:mod:`cloud_relay.chain.claims`).

The amounts are the ledger's (:meth:`cloud_relay.ledger.Ledger.statement`: settled receipts priced with the grants
and tariff, each share table's revenue split by the largest-remainder rule of :func:`protocol.payout.split`), to the
minor unit; nothing is recomputed differently here. Ownership on chain must agree: before publishing,
:func:`check_shares` reads the share table in force from ``AssetShares`` checkpoints (``balanceOfAt`` /
``totalSupplyAt`` at the start of the period, at every signed table's ``effective_from_ms`` inside it, and at its
last millisecond) and refuses, naming the asset and the time, when it differs from the signed table the ledger
prices with. An owner's shares changing mid-month is then one transfer on chain and one signed table version
effective at that block's time; the payout splits exactly at the change on both sides.

:func:`plan_disbursement` journals ``approve(distributor, total)`` on the currency's token and ``publish(period,
token, root, total)`` (the distributor pulls the total from the relay's key), and keeps the claims (index, owner,
address, amount) in ``chain_disbursements``; :func:`plan_claim` journals one owner's claim (anyone may send it; the
tokens go to the owner's address).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from eth_utils.address import to_checksum_address

from cloud_relay.chain.claims import Claim, ClaimTree
from cloud_relay.chain.client import ChainClient, Contracts
from cloud_relay.chain.errors import ChainError
from cloud_relay.chain.journal import add_intent
from cloud_relay.chain.rights import asset_key
from cloud_relay.chain.store import ChainStore, Disbursement
from cloud_relay.errors import RegistryError
from cloud_relay.ledger import Ledger, period_bounds
from cloud_relay.registry import ISSUER, trusted_keys
from cloud_relay.storage import Database
from protocol.clock import now_ms
from protocol.errors import ProtocolError
from protocol.shares import TOTAL_BPS, ShareTable, current_table, verify_share_table

__all__ = ["chain_share_table", "check_shares", "period_key", "plan_claim", "plan_disbursement", "signed_tables"]


def period_key(period: str) -> bytes:
    """``bytes32`` of the ASCII ``YYYY-MM``, right-padded with zeros."""
    return period.encode("ascii").ljust(32, b"\x00")


def chain_share_table(
    contracts: Contracts, client: ChainClient, asset: str, at_s: int, parties: Mapping[str, str]
) -> dict[str, int]:
    """The owners of ``asset`` at Unix second ``at_s`` by party (``parties``: address -> party), in basis points.

    :class:`ChainError` when a holder has no party or a holding is not a whole number of basis points.
    """
    key = asset_key(asset)
    total = int(contracts.view(client, "AssetShares", "totalSupplyAt", key, at_s))
    if total == 0:
        raise ChainError(f"asset {asset}: no shares on chain at {at_s}")
    out: dict[str, int] = {}
    for raw in contracts.view(client, "AssetShares", "holders", key):
        holder = to_checksum_address(str(raw))  # the ABI decoder gives lower case; web3 and the store use checksums
        balance = int(contracts.view(client, "AssetShares", "balanceOfAt", holder, key, at_s))
        if balance == 0:
            continue
        party = parties.get(str(holder))
        if party is None:
            raise ChainError(f"asset {asset}: holder {holder} has no party (`btt-relay chain address OWNER {holder}`)")
        if balance * TOTAL_BPS % total:
            raise ChainError(f"asset {asset}: {party} holds {balance}/{total}, not whole basis points")
        out[party] = balance * TOTAL_BPS // total
    return out


def signed_tables(db: Database) -> list[ShareTable]:
    """The share tables the ledger prices with (verified against the trusted issuer keys)."""
    with db.transaction() as tx:
        issuers = {k.keyid: k for k in trusted_keys(tx, ISSUER)}
        envelopes = [json.loads(r[0]) for r in tx.all("SELECT envelope FROM share_tables")]
    return [verify_share_table(e, issuers) for e in envelopes]


def check_shares(
    tables: list[ShareTable], contracts: Contracts, client: ChainClient, period: str, parties: Mapping[str, str]
) -> int:
    """Check the chain's share tables against the signed ones through ``period`` (see above); returns the checks."""
    start, end = period_bounds(period)
    checks = 0
    for asset in sorted({t.asset for t in tables}):
        times = {start, end - 1} | {
            t.effective_from_ms for t in tables if t.asset == asset and start < t.effective_from_ms < end
        }
        for at in sorted(times):
            try:
                signed = current_table(tables, asset, at)
            except ProtocolError:
                continue
            want = {s.owner: s.bps for s in signed.owners}
            got = chain_share_table(contracts, client, asset, at // 1000, parties)
            if got != want:
                raise ChainError(
                    f"asset {asset} at {at} ms: the chain's shares {got} differ from"
                    f" share table v{signed.version} {want}"
                )
            checks += 1
    return checks


def plan_disbursement(
    store: ChainStore, contracts: Contracts, client: ChainClient, ledger: Ledger, period: str, *, currency: str
) -> Disbursement:
    """Journal the period's publication in ``currency`` (idempotent: the stored one is returned again)."""
    known = store.disbursement(period, currency)
    if known is not None:
        return known
    token = store.token(currency)
    statement = ledger.statement(period)
    with store.db.transaction() as tx:
        addresses = ChainStore.addresses(tx)
    parties = {a: p for p, a in addresses.items()}
    check_shares(signed_tables(store.db), contracts, client, period, parties)
    owners = sorted((o, a) for (o, c), a in statement.owners.items() if c == currency and a > 0)
    if not owners:
        raise RegistryError(f"nothing to disburse in {currency} for {period}")
    missing = [o for o, _ in owners if o not in addresses]
    if missing:
        raise RegistryError(f"no chain address for owner(s) {', '.join(missing)}")
    claims = [Claim(i, addresses[o], a) for i, (o, a) in enumerate(owners)]
    tree = ClaimTree(claims)
    distributor = contracts.addresses["PayoutDistributor"]
    d = Disbursement(
        period,
        currency,
        token,
        "0x" + tree.root.hex(),
        tree.total,
        [
            {"index": c.index, "owner": o, "account": c.account, "amount": c.amount}
            for c, (o, _) in zip(claims, owners, strict=True)
        ],
    )
    now = now_ms()
    pk = period_key(period)
    with store.db.transaction() as tx:
        ChainStore.add_disbursement(tx, d, now)
        approve = contracts.encode_token(token, "approve", distributor, tree.total)
        add_intent(tx, f"approve:{period}:{token}", "approve", approve, {"amount": tree.total}, now=now)
        publish = contracts.encode("PayoutDistributor", "publish", pk, token, tree.root, tree.total)
        args = {"period": "0x" + pk.hex(), "token": token, "total": tree.total}
        add_intent(tx, f"publish:{period}:{token}", "publish", publish, args, now=now)
    return d


def claim_proof(d: Disbursement, owner: str) -> dict[str, object]:
    """One owner's claim with its proof (what ``PayoutDistributor.claim`` takes)."""
    claims = [Claim(int(c["index"]), str(c["account"]), int(c["amount"])) for c in d.claims]
    tree = ClaimTree(claims)
    for c in d.claims:
        if c["owner"] == owner:
            return {
                "period": d.period,
                "currency": d.currency,
                "token": d.token,
                "index": c["index"],
                "owner": owner,
                "account": c["account"],
                "amount": c["amount"],
                "proof": ["0x" + p.hex() for p in tree.proof(int(c["index"]))],
                "root": d.root,
            }
    raise RegistryError(f"owner {owner!r} has no claim in {d.currency} for {d.period}")


def plan_claim(store: ChainStore, contracts: Contracts, period: str, currency: str, owner: str) -> dict[str, object]:
    """Journal ``owner``'s claim (sent by the relay's key; the tokens go to the owner's address)."""
    d = store.disbursement(period, currency)
    if d is None:
        raise RegistryError(f"no disbursement in {currency} for {period}: `btt-relay chain disburse` first")
    c = claim_proof(d, owner)
    proof = [bytes.fromhex(str(p)[2:]) for p in c["proof"]]  # type: ignore[attr-defined]
    call = contracts.encode(
        "PayoutDistributor", "claim", period_key(period), d.token, c["index"], c["account"], c["amount"], proof
    )
    args = {"period": "0x" + period_key(period).hex(), "token": d.token, "index": c["index"]}
    with store.db.transaction() as tx:
        add_intent(tx, f"claim:{period}:{d.token}:{c['index']}", "claim", call, args, now=now_ms())
    return c
