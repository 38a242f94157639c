"""``btt-relay chain deploy``: the ledger contracts deployed by the relay's key, roles granted, addresses stored.

Deployments and role grants go through the journal like every other transaction (one nonce each, at most once,
confirmed ``confirmations`` deep). The deployer (the relay's key) is each contract's admin and gets
``SETTLER_ROLE`` (anchors, burns, publications); ``ISSUER_ROLE`` (definitions and mints of rights, mints of
shares) goes to ``issuer`` (default: the relay's key too, as in the demo: the relay then mints from the issuer's
signed requests). With ``test_token`` (``CNY:2``) a :sol:`TestStablecoin` standing for the currency is deployed,
``test_supply`` minor units minted to the relay's key (which funds the disbursements) and registered as the
currency's token.
"""

from __future__ import annotations

from collections.abc import Callable

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from cloud_relay.chain import artifacts
from cloud_relay.chain.client import ChainClient, Contracts
from cloud_relay.chain.config import ChainConfig
from cloud_relay.chain.errors import ChainError
from cloud_relay.chain.journal import Journal, add_intent
from cloud_relay.chain.store import ChainStore
from protocol.clock import now_ms

__all__ = ["LEDGER_CONTRACTS", "deploy"]

LEDGER_CONTRACTS = ("ServiceRights", "AssetShares", "SettlementAnchor", "PayoutDistributor")
SETTLER, ISSUER = keccak(b"SETTLER_ROLE"), keccak(b"ISSUER_ROLE")
_ROLES = {
    "ServiceRights": (SETTLER, ISSUER),
    "AssetShares": (ISSUER,),
    "SettlementAnchor": (SETTLER,),
    "PayoutDistributor": (SETTLER,),
}


def _creation(name: str, types: list[str] | None = None, args: list[object] | None = None) -> bytes:
    code = bytes.fromhex(artifacts.load(name).bytecode.removeprefix("0x"))
    return code + (encode(types, args or []) if types else b"")


def _settled(journal: Journal, tick: Callable[[], None], what: str) -> None:
    left = journal.settle(max_passes=100_000, tick=tick)
    if left:
        raise ChainError(f"{what}: {len(left)} transaction(s) not confirmed: {[e.to_json() for e in left][:3]}")


def deploy(
    store: ChainStore,
    client: ChainClient,
    config: ChainConfig,
    tick: Callable[[], None],
    *,
    issuer: str | None = None,
    test_token: tuple[str, int] | None = None,
    test_supply: int = 10**15,
) -> dict[str, str]:
    """Deploy, grant the roles, store and return the addresses (``tick`` runs between journal passes)."""
    chain_id = client.chain_id()
    names = list(LEDGER_CONTRACTS)
    now = now_ms()
    with store.db.transaction() as tx:
        for name in names:
            add_intent(tx, f"deploy:{chain_id}:{name}", "deploy", (None, _creation(name)), {"name": name}, now=now)
        if test_token is not None:
            symbol, decimals = test_token
            data = _creation("TestStablecoin", ["string", "string", "uint8"], [f"Test {symbol}", symbol, decimals])
            add_intent(
                tx, f"deploy:{chain_id}:TestStablecoin:{symbol}", "deploy", (None, data), {"name": symbol}, now=now
            )
    empty = Contracts({})
    journal = Journal(store.db, client, empty, config)
    _settled(journal, tick, "deploying")
    addresses: dict[str, str] = {}
    for name in names + ([f"TestStablecoin:{test_token[0]}"] if test_token else []):
        entry = journal.entry(f"deploy:{chain_id}:{name}")
        receipt = None if entry is None or entry.tx_hash is None else client.receipt(entry.tx_hash)
        if receipt is None or receipt.contract_address is None:
            raise ChainError(f"deploying {name}: no contract address ({entry.to_json() if entry else 'no entry'})")
        addresses[name] = receipt.contract_address
    token = addresses.pop(f"TestStablecoin:{test_token[0]}") if test_token else None
    block = client.head()
    store.save_contracts(addresses, chain_id, block)
    contracts = Contracts(addresses)
    now = now_ms()
    with store.db.transaction() as tx:
        for name, roles in _ROLES.items():
            for role in roles:
                account = issuer if role == ISSUER and issuer else client.address
                call = contracts.encode(name, "grantRole", role, account)
                args = {"contract": name, "role": "0x" + role.hex(), "account": account}
                add_intent(tx, f"role:{addresses[name]}:{role.hex()}:{account}", "role", call, args, now=now)
        if token is not None:
            call = contracts.encode_token(token, "mint", client.address, test_supply)
            add_intent(tx, f"fund:{token}", "fund", call, {"amount": test_supply}, now=now)
    _settled(Journal(store.db, client, contracts, config), tick, "granting roles")
    if token is not None and test_token is not None:
        store.set_token(test_token[0], token)
        addresses[f"token:{test_token[0]}"] = token
    return addresses
