"""The ledger contracts (issue 19): the committed artefacts match their sources, and the contracts behave.

Behaviour runs on eth-tester with py-evm in process (web3's ``EthereumTesterProvider``), the contracts deployed
once per module from the committed artefacts. Each test uses its own identifiers (assets, request and settlement
ids, periods) so the tests do not depend on each other's order. Reverts are checked by their custom error's
selector, not just "it reverted". The disbursement's Merkle tree is the relay's own
(:mod:`cloud_relay.chain.claims`), so these tests also check that it matches OpenZeppelin's ``MerkleProof``.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from eth_tester.exceptions import TransactionFailed
from eth_utils.crypto import keccak
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from cloud_relay.chain import compile as chain_compile
from cloud_relay.chain.artifacts import CONTRACTS, load
from cloud_relay.chain.claims import Claim, ClaimTree

ISSUER_ROLE = keccak(text="ISSUER_ROLE")
SETTLER_ROLE = keccak(text="SETTLER_ROLE")


# --- the artefacts ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_committed_artifacts_match_a_fresh_compile() -> None:
    tools = chain_compile.default_tools()
    if shutil.which("node") is None or not (tools / "node_modules" / "solc").is_dir():
        pytest.fail(f"node and {tools}/node_modules/solc are needed to recompile the contracts (run scripts/setup)")
    built = chain_compile.compile_contracts(tools)
    assert sorted(built) == sorted(CONTRACTS)
    assert chain_compile.stale_artifacts(built) == [], "run: python -m cloud_relay.chain.compile"
    for name in CONTRACTS:
        assert load(name).bytecode == built[name]["bytecode"]
        assert built[name]["compiler"]["version"].startswith(chain_compile.SOLC_VERSION + "+")


def test_load_refuses_an_unknown_contract() -> None:
    with pytest.raises(KeyError, match="NoSuchContract"):
        load("NoSuchContract")


# --- a chain with the contracts deployed -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    w3: Web3
    admin: str  # deployer: DEFAULT_ADMIN_ROLE and ISSUER_ROLE
    relay: str  # SETTLER_ROLE
    clinic_a: str
    clinic_b: str
    owners: tuple[str, str, str]
    rights: Contract
    shares: Contract
    anchor: Contract
    distributor: Contract
    coin: Contract

    def send(self, call: Any, sender: str) -> dict[str, Any]:
        """Send ``call`` (a bound contract function) from ``sender``; its mined receipt (status 1)."""
        receipt = self.w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
        assert receipt["status"] == 1
        return dict(receipt)

    def time_travel(self, timestamp: int) -> None:
        """The next block's timestamp is ``timestamp``."""
        tester = self.w3.provider.ethereum_tester  # type: ignore[attr-defined]
        tester.time_travel(timestamp)

    def latest_timestamp(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])


def _deploy(w3: Web3, name: str, sender: str, *args: object) -> Contract:
    artifact = load(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": sender}))
    contract = w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)
    assert isinstance(contract, Contract)
    return contract


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    w3 = Web3(EthereumTesterProvider())
    admin, relay, clinic_a, clinic_b, o1, o2, o3 = list(w3.eth.accounts)[:7]
    rights = _deploy(w3, "ServiceRights", admin)
    shares = _deploy(w3, "AssetShares", admin)
    anchor = _deploy(w3, "SettlementAnchor", admin)
    distributor = _deploy(w3, "PayoutDistributor", admin)
    coin = _deploy(w3, "TestStablecoin", admin, "Test CNY", "tCNY", 2)
    out = Ledger(w3, admin, relay, clinic_a, clinic_b, (o1, o2, o3), rights, shares, anchor, distributor, coin)
    out.send(rights.functions.grantRole(ISSUER_ROLE, admin), admin)
    out.send(rights.functions.grantRole(SETTLER_ROLE, relay), admin)
    out.send(shares.functions.grantRole(ISSUER_ROLE, admin), admin)
    out.send(anchor.functions.grantRole(SETTLER_ROLE, relay), admin)
    out.send(distributor.functions.grantRole(SETTLER_ROLE, relay), admin)
    return out


def _selector(contract: Contract, error: str) -> str:
    """The 4-byte selector (0x hex) of custom error ``error`` in ``contract``'s ABI."""
    for item in contract.abi:
        if item["type"] == "error" and item["name"] == error:
            signature = f"{error}({','.join(i['type'] for i in item['inputs'])})"
            return "0x" + keccak(text=signature)[:4].hex()
    raise AssertionError(f"{error} is not in the ABI")


def _revert_data(exc: BaseException) -> str:
    """The revert data (0x hex) of a refused call: web3's ``data``, or the bytes eth-tester writes in its message."""
    if isinstance(exc, ContractLogicError) and isinstance(exc.data, str):
        return exc.data
    message = str(exc.args[0]) if exc.args else ""
    prefix = "execution reverted: "
    assert message.startswith(prefix), f"not a revert: {exc!r}"
    raw = ast.literal_eval(message[len(prefix) :])
    assert isinstance(raw, bytes), f"no revert data: {exc!r}"
    return "0x" + raw.hex()


def _reverts(contract: Contract, error: str, action: Callable[[], object]) -> None:
    """``action`` reverts with ``contract``'s custom error ``error`` (checked by its selector)."""
    with pytest.raises((ContractLogicError, TransactionFailed)) as info:
        action()
    data = _revert_data(info.value)
    assert data.startswith(_selector(contract, error)), f"expected {error}, got {data[:10]} ({info.value})"


def _b32(text: str) -> bytes:
    return keccak(text=text)


# --- ServiceRights ------------------------------------------------------------------------------------------------


def _define(ledger: Ledger, asset: str, kind: str = "analysis", terms: str = "{}") -> int:
    rights = ledger.rights
    args = (_b32(asset), kind, _b32(terms), f"https://relay.example/terms/{asset}")
    ledger.send(rights.functions.defineRight(*args), ledger.admin)
    right_id = int(rights.functions.rightId(_b32(asset), kind, _b32(terms)).call())
    assert right_id == int.from_bytes(
        keccak(Web3().codec.encode(["bytes32", "string", "bytes32"], [_b32(asset), kind, _b32(terms)])), "big"
    )
    return right_id


def test_rights_roles_are_enforced(ledger: Ledger) -> None:
    rights = ledger.rights
    right = _define(ledger, "asset-roles")
    stranger = ledger.clinic_a
    _reverts(
        rights,
        "AccessControlUnauthorizedAccount",
        lambda: rights.functions.defineRight(_b32("x"), "analysis", _b32("t"), "").transact({"from": stranger}),
    )
    _reverts(
        rights,
        "AccessControlUnauthorizedAccount",
        lambda: rights.functions.mint(stranger, right, 5, _b32("req-roles")).transact({"from": stranger}),
    )
    # the issuer is not the settler: it cannot burn a clinic's units
    ledger.send(rights.functions.mint(stranger, right, 5, _b32("req-roles")), ledger.admin)
    _reverts(
        rights,
        "AccessControlUnauthorizedAccount",
        lambda: rights.functions.burnConsumed(stranger, right, 1, _b32("s")).transact({"from": ledger.admin}),
    )


def test_define_is_idempotent_and_keeps_the_terms(ledger: Ledger) -> None:
    rights = ledger.rights
    first = _define(ledger, "asset-define", terms='{"uses":10}')
    receipt = ledger.send(
        rights.functions.defineRight(_b32("asset-define"), "analysis", _b32('{"uses":10}'), "other-uri"), ledger.admin
    )
    assert rights.events.RightDefined().process_receipt(receipt, errors=DISCARD) == ()
    asset, kind, terms_hash, uri = rights.functions.terms(first).call()
    assert (asset, kind, terms_hash) == (_b32("asset-define"), "analysis", _b32('{"uses":10}'))
    assert uri == "https://relay.example/terms/asset-define" == rights.functions.uri(first).call()


def test_mint_refuses_a_replayed_request_and_an_undefined_right(ledger: Ledger) -> None:
    rights = ledger.rights
    right = _define(ledger, "asset-mint")
    request = _b32("req-mint-1")
    receipt = ledger.send(rights.functions.mint(ledger.clinic_a, right, 10, request), ledger.admin)
    (minted,) = rights.events.Minted().process_receipt(receipt, errors=DISCARD)
    assert (minted.args.requestId, minted.args.to, minted.args.id, minted.args.amount) == (
        request,
        ledger.clinic_a,
        right,
        10,
    )
    assert rights.functions.usedRequest(request).call() is True
    _reverts(
        rights,
        "RequestAlreadyUsed",
        lambda: rights.functions.mint(ledger.clinic_a, right, 10, request).transact({"from": ledger.admin}),
    )
    assert rights.functions.balanceOf(ledger.clinic_a, right).call() == 10
    _reverts(
        rights,
        "UndefinedRight",
        lambda: rights.functions.mint(ledger.clinic_a, right + 1, 1, _b32("req-mint-2")).transact(
            {"from": ledger.admin}
        ),
    )


def test_a_clinic_sells_units_to_another_and_burns_are_once_per_settlement(ledger: Ledger) -> None:
    rights = ledger.rights
    right = _define(ledger, "asset-trade")
    a, b = ledger.clinic_a, ledger.clinic_b
    ledger.send(rights.functions.mint(a, right, 20, _b32("req-trade")), ledger.admin)
    ledger.send(rights.functions.safeTransferFrom(a, b, right, 7, b""), a)
    assert rights.functions.balanceOfBatch([a, b], [right, right]).call() == [13, 7]
    # only the holder (or its approved operator) moves its units
    _reverts(
        rights,
        "ERC1155MissingApprovalForAll",
        lambda: rights.functions.safeTransferFrom(a, b, right, 1, b"").transact({"from": b}),
    )

    settlement = _b32("settlement-trade-1")
    receipt = ledger.send(rights.functions.burnConsumed(b, right, 3, settlement), ledger.relay)
    (consumed,) = rights.events.Consumed().process_receipt(receipt, errors=DISCARD)
    assert (consumed.args.settlementId, consumed.args["from"], consumed.args.amount) == (settlement, b, 3)
    assert rights.functions.burned(settlement, right, b).call() is True
    assert rights.functions.burned(settlement, right, a).call() is False
    _reverts(
        rights,
        "AlreadyBurned",
        lambda: rights.functions.burnConsumed(b, right, 3, settlement).transact({"from": ledger.relay}),
    )
    # the same settlement may burn another holder's units, and a later settlement the same holder's again
    ledger.send(rights.functions.burnConsumed(a, right, 2, settlement), ledger.relay)
    ledger.send(rights.functions.burnConsumed(b, right, 4, _b32("settlement-trade-2")), ledger.relay)
    assert rights.functions.balanceOfBatch([a, b], [right, right]).call() == [11, 0]
    _reverts(
        rights,
        "ERC1155InsufficientBalance",
        lambda: rights.functions.burnConsumed(b, right, 1, _b32("settlement-trade-3")).transact({"from": ledger.relay}),
    )


# --- AssetShares ----------------------------------------------------------------------------------------------------


def test_shares_checkpoints_recover_the_table_in_force_at_any_time(ledger: Ledger) -> None:
    shares = ledger.shares
    asset = _b32("asset-shares")
    o1, o2, o3 = ledger.owners
    _reverts(
        shares,
        "AccessControlUnauthorizedAccount",
        lambda: shares.functions.mint(o1, asset, 1).transact({"from": o1}),
    )
    t0 = ledger.latest_timestamp() + 100
    ledger.time_travel(t0)
    ledger.send(shares.functions.mint(o1, asset, 600), ledger.admin)
    ledger.send(shares.functions.mint(o2, asset, 400), ledger.admin)
    t_mint = ledger.latest_timestamp()
    t1 = t_mint + 86_400 * 15  # mid-month
    ledger.time_travel(t1)
    ledger.send(shares.functions.safeTransferFrom(o1, o3, int.from_bytes(asset, "big"), 250, b""), o1)
    t_transfer = ledger.latest_timestamp()
    assert t_transfer >= t1

    def table(at: int) -> list[int]:
        return [shares.functions.balanceOfAt(o, asset, at).call() for o in (o1, o2, o3)]

    assert table(t0 - 1) == [0, 0, 0]
    assert table(t_mint) == [600, 400, 0]
    assert table(t_transfer - 1) == [600, 400, 0]
    assert table(t_transfer) == [350, 400, 250]
    assert table(t_transfer + 86_400 * 30) == [350, 400, 250]
    assert shares.functions.totalSupplyAt(asset, t0 - 1).call() == 0
    assert shares.functions.totalSupplyAt(asset, t_transfer).call() == 1000
    assert shares.functions.holders(asset).call() == [o1, o2, o3]
    assert shares.functions.balanceOf(o1, int.from_bytes(asset, "big")).call() == 350


def test_shares_checkpoint_is_the_state_at_the_end_of_a_block(ledger: Ledger) -> None:
    shares = ledger.shares
    asset = _b32("asset-one-block")
    o1, o2, _ = ledger.owners
    tester = ledger.w3.provider.ethereum_tester  # type: ignore[attr-defined]
    tester.disable_auto_mine_transactions()
    try:
        shares.functions.mint(o1, asset, 100).transact({"from": ledger.admin, "gas": 500_000})
        shares.functions.safeTransferFrom(o1, o2, int.from_bytes(asset, "big"), 30, b"").transact(
            {"from": o1, "gas": 500_000}
        )
        tester.mine_blocks(1)
    finally:
        tester.enable_auto_mine_transactions()
    now = ledger.latest_timestamp()
    assert shares.functions.balanceOfAt(o1, asset, now).call() == 70
    assert shares.functions.balanceOfAt(o2, asset, now).call() == 30
    assert shares.functions.totalSupplyAt(asset, now).call() == 100


# --- SettlementAnchor ---------------------------------------------------------------------------------------------


def test_anchor_once_and_read_back(ledger: Ledger) -> None:
    anchor = ledger.anchor
    sid, root, device = _b32("settlement-anchor-1"), _b32("root-1"), _b32("device-1")
    assert anchor.functions.anchored(sid).call() == [b"\0" * 32, 0]
    _reverts(
        anchor,
        "AccessControlUnauthorizedAccount",
        lambda: anchor.functions.anchor(sid, root, device, 1, 1, 100, 100).transact({"from": ledger.admin}),
    )
    receipt = ledger.send(anchor.functions.anchor(sid, root, device, 1, 1, 100, 100), ledger.relay)
    (event,) = anchor.events.Anchored().process_receipt(receipt, errors=DISCARD)
    assert (event.args.settlementId, event.args.device, event.args.root) == (sid, device, root)
    assert (event.args.batch, event.args.firstSeq, event.args.lastSeq, event.args.units) == (1, 1, 100, 100)
    assert anchor.functions.anchored(sid).call() == [root, receipt["blockNumber"]]
    _reverts(
        anchor,
        "AlreadyAnchored",
        lambda: anchor.functions.anchor(sid, root, device, 1, 1, 100, 100).transact({"from": ledger.relay}),
    )
    _reverts(
        anchor,
        "BadRange",
        lambda: anchor.functions.anchor(_b32("s-range"), root, device, 1, 5, 4, 0).transact({"from": ledger.relay}),
    )
    _reverts(
        anchor,
        "ZeroIdentifier",
        lambda: anchor.functions.anchor(_b32("s-zero"), b"\0" * 32, device, 1, 1, 1, 1).transact(
            {"from": ledger.relay}
        ),
    )


def test_anchor_many_in_one_transaction(ledger: Ledger) -> None:
    anchor = ledger.anchor
    n = 5
    ids = [_b32(f"settlement-many-{i}") for i in range(n)]
    roots = [_b32(f"root-many-{i}") for i in range(n)]
    devices = [_b32(f"device-{i % 2}") for i in range(n)]
    columns = (ids, roots, devices, [1] * n, [i * 10 + 1 for i in range(n)], [i * 10 + 10 for i in range(n)], [10] * n)
    receipt = ledger.send(anchor.functions.anchorMany(*columns), ledger.relay)
    assert len(anchor.events.Anchored().process_receipt(receipt, errors=DISCARD)) == n
    for sid, root in zip(ids, roots, strict=True):
        assert anchor.functions.anchored(sid).call() == [root, receipt["blockNumber"]]
    _reverts(
        anchor,
        "LengthMismatch",
        lambda: anchor.functions.anchorMany(ids, roots[:-1], *columns[2:]).transact({"from": ledger.relay}),
    )
    # one already anchored settlement makes the whole batch revert: nothing of it is anchored
    fresh = _b32("settlement-many-fresh")
    batch = ([fresh, ids[0]], roots[:2], devices[:2], [1, 1], [1, 1], [1, 1], [1, 1])
    _reverts(anchor, "AlreadyAnchored", lambda: anchor.functions.anchorMany(*batch).transact({"from": ledger.relay}))
    assert anchor.functions.anchored(fresh).call()[0] == b"\0" * 32


# --- PayoutDistributor ----------------------------------------------------------------------------------------------


def _period(text: str) -> bytes:
    return text.encode("ascii").ljust(32, b"\0")


def _publish(ledger: Ledger, period: bytes, claims: list[Claim]) -> ClaimTree:
    tree = ClaimTree(claims)
    coin, distributor = ledger.coin, ledger.distributor
    ledger.send(coin.functions.mint(ledger.relay, tree.total), ledger.admin)
    ledger.send(coin.functions.approve(distributor.address, tree.total), ledger.relay)
    ledger.send(distributor.functions.publish(period, coin.address, tree.root, tree.total), ledger.relay)
    return tree


def test_publish_pulls_the_total_and_each_owner_claims_exactly_once(ledger: Ledger) -> None:
    distributor, coin = ledger.distributor, ledger.coin
    period = _period("2026-11")
    o1, o2, o3 = ledger.owners
    claims = [Claim(0, o1, 123_457), Claim(1, o2, 98_765), Claim(2, o3, 1)]
    before = [coin.functions.balanceOf(o).call() for o in (o1, o2, o3)]
    tree = _publish(ledger, period, claims)
    assert distributor.functions.published(period, coin.address).call() == [tree.root, tree.total, 0]
    assert coin.functions.balanceOf(distributor.address).call() >= tree.total
    _reverts(
        distributor,
        "AlreadyPublished",
        lambda: distributor.functions.publish(period, coin.address, tree.root, 0).transact({"from": ledger.relay}),
    )

    for claim in claims:
        proof = tree.proof(claim.index)
        call = distributor.functions.claim(period, coin.address, claim.index, claim.account, claim.amount, proof)
        # anyone may submit a claim; the amount goes to the leaf's account
        receipt = ledger.send(call, ledger.clinic_a)
        (event,) = distributor.events.Claimed().process_receipt(receipt, errors=DISCARD)
        assert (event.args.index, event.args.account, event.args.amount) == (claim.index, claim.account, claim.amount)
        assert distributor.functions.isClaimed(period, coin.address, claim.index).call() is True
        _reverts(distributor, "AlreadyClaimed", partial(call.transact, {"from": claim.account}))

    after = [coin.functions.balanceOf(o).call() for o in (o1, o2, o3)]
    assert [b - a for a, b in zip(before, after, strict=True)] == [c.amount for c in claims]
    assert distributor.functions.published(period, coin.address).call() == [tree.root, tree.total, tree.total]


def test_claims_with_a_wrong_amount_account_or_proof_are_refused(ledger: Ledger) -> None:
    distributor, coin = ledger.distributor, ledger.coin
    period = _period("2026-10")
    o1, o2, o3 = ledger.owners
    claims = [Claim(0, o1, 500), Claim(1, o2, 300), Claim(2, o3, 200), Claim(3, ledger.clinic_b, 7)]
    tree = _publish(ledger, period, claims)

    def attempt(index: int, account: str, amount: int, proof: list[bytes]) -> Callable[[], object]:
        call = distributor.functions.claim(period, coin.address, index, account, amount, proof)
        return lambda: call.transact({"from": account})

    _reverts(distributor, "InvalidProof", attempt(0, o1, 501, tree.proof(0)))  # more than owed
    _reverts(distributor, "InvalidProof", attempt(0, o1, 499, tree.proof(0)))  # not exactly what is owed
    _reverts(distributor, "InvalidProof", attempt(0, o2, 500, tree.proof(0)))  # someone else's leaf
    _reverts(distributor, "InvalidProof", attempt(1, o2, 300, tree.proof(0)))  # another leaf's proof
    _reverts(distributor, "InvalidProof", attempt(0, o1, 500, []))
    assert distributor.functions.isClaimed(period, coin.address, 0).call() is False
    # nothing published for another period or token
    _reverts(
        distributor,
        "NotPublished",
        lambda: distributor.functions.claim(_period("2026-09"), coin.address, 0, o1, 500, tree.proof(0)).transact(
            {"from": o1}
        ),
    )
    ledger.send(distributor.functions.claim(period, coin.address, 0, o1, 500, tree.proof(0)), o1)
    assert distributor.functions.published(period, coin.address).call()[2] == 500


def test_publish_needs_the_settler_and_the_funds(ledger: Ledger) -> None:
    distributor, coin = ledger.distributor, ledger.coin
    tree = ClaimTree([Claim(0, ledger.owners[0], 10**6)])
    _reverts(
        distributor,
        "AccessControlUnauthorizedAccount",
        lambda: distributor.functions.publish(_period("2026-08"), coin.address, tree.root, tree.total).transact(
            {"from": ledger.admin}
        ),
    )
    # the relay has not approved this much: SafeERC20 surfaces the token's refusal, nothing is recorded
    _reverts(
        coin,
        "ERC20InsufficientAllowance",
        lambda: distributor.functions.publish(_period("2026-08"), coin.address, tree.root, 10**12).transact(
            {"from": ledger.relay}
        ),
    )
    assert distributor.functions.published(_period("2026-08"), coin.address).call()[0] == b"\0" * 32


def test_stablecoin_has_minor_units_and_only_its_owner_mints(ledger: Ledger) -> None:
    coin = ledger.coin
    assert coin.functions.decimals().call() == 2
    assert coin.functions.symbol().call() == "tCNY"
    _reverts(
        coin,
        "OwnableUnauthorizedAccount",
        lambda: coin.functions.mint(ledger.clinic_a, 1).transact({"from": ledger.clinic_a}),
    )
