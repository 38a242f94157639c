"""The ledger on a real chain node (anvil, from npm): the acceptance interface end to end.

``btt-relay chain deploy`` deploys the contracts; ``chain address`` names the clinics' accounts; ``chain mint``
puts an issuer's signed grant on chain as ERC-1155 rights of clinic A, which sells some to clinic B on chain; the
box uses its rights, the relay verifies the settlement, and the chain service (what ``btt-relay run --chain``
runs) anchors it and burns the units it consumed; ``chain verify`` then holds for a receipt of it. A relay that
stops after sending, before the confirmations (a kill -9 there loses only the process), and starts again sends
nothing twice: the journal finds its transaction, and the contract refuses a second anchor of a settlement anyway.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from cloud_relay.chain.client import Contracts, connect
from cloud_relay.chain.errors import ChainError
from cloud_relay.chain.keys import load_account
from cloud_relay.chain.service import ChainService
from cloud_relay.chain.store import ChainStore
from cloud_relay.chain.view import JournalView
from cloud_relay.cli import main
from cloud_relay.portal import describe
from cloud_relay.portal.i18n import Translator
from cloud_relay.storage import Database, open_database
from tests.anvil import ANVIL_KEYS, Anvil
from tests.chain_helpers import PASSWORD, LedgerWorld, fast_config, password_env, write_keystore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOV_2 = 1_793_577_600_000  # 2026-11-02 00:00 UTC


@pytest.fixture
def node() -> Iterator[Anvil]:
    with Anvil() as anvil:
        yield anvil


@pytest.fixture
def relay_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Database]]:
    for key, value in password_env().items():
        monkeypatch.setenv(key, value)
    url = str(tmp_path / "relay.db")
    db = open_database(url)
    try:
        yield url, db
    finally:
        db.close()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


def _settle(node: Anvil, service: ChainService, what: str, timeout_s: float = 60) -> None:
    """Run the service's passes, mining a block each, until its journal has nothing open."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        service.run_once()
        if not service.journal.entries():
            return
        node.mine()
    raise AssertionError(f"{what}: still open {[e.to_json() for e in service.journal.entries()]}")


def _balance(node: Anvil, contracts: Contracts, client: Any, holder: str, right_id: str) -> int:
    return int(contracts.view(client, "ServiceRights", "balanceOf", holder, int(right_id, 16)))


def test_rights_minted_traded_used_anchored_and_verified(
    node: Anvil, relay_db: tuple[str, Database], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, db = relay_db
    world = LedgerWorld(db, tmp_path / "world")
    key = tmp_path / "relay.keystore"
    relay_address = write_keystore(key, ANVIL_KEYS[0])
    chain = ("--db", url, "--chain", node.url, "--chain-key", str(key))

    code, out = _cli(capsys, "chain", "deploy", *chain, "--confirmations", "1", "--test-token", "CNY:2")
    assert code == 0, out
    deployed = json.loads(out)
    assert {"ServiceRights", "AssetShares", "SettlementAnchor", "PayoutDistributor"} <= set(deployed)
    assert deployed["relay"] == relay_address

    accounts = node.rpc("eth_accounts")
    assert isinstance(accounts, list)
    clinic_a, clinic_b = (to_checksum_address(str(a)) for a in accounts[1:3])
    for clinic, address in (("clinic-a", clinic_a), ("clinic-b", clinic_b)):
        assert _cli(capsys, "chain", "address", "--db", url, clinic, address)[0] == 0

    grant = world.grant("grant-1", "clinic-a", 10)
    grant_file = tmp_path / "grant-1.json"
    grant_file.write_text(json.dumps(grant))
    code, out = _cli(capsys, "chain", "mint", str(grant_file), *chain, "--confirmations", "1")
    assert code == 0, out
    right_id = json.loads(out.splitlines()[-1])["right_id"]

    config = fast_config(node.url, key_file=key)
    client = connect(node.url, load_account(key, PASSWORD))
    contracts = Contracts(ChainStore(db).contracts())
    assert _balance(node, contracts, client, clinic_a, right_id) == 10

    # clinic A sells 3 unused prepaid uses to clinic B: a plain ERC-1155 transfer from A's own account
    to, data = contracts.encode("ServiceRights", "safeTransferFrom", clinic_a, clinic_b, int(right_id, 16), 3, b"")
    node.rpc("eth_sendTransaction", {"from": clinic_a, "to": to, "data": "0x" + data.hex()})
    assert _balance(node, contracts, client, clinic_b, right_id) == 3

    # the box uses 4 of A's rights; the relay verifies the settlement; the chain service anchors it and burns 4
    world.install(world.a, grant)
    world.use(world.a, 4, NOV_2)
    service = ChainService(db, config, client, contracts)
    _settle(node, service, "anchor and burn")
    assert _balance(node, contracts, client, clinic_a, right_id) == 10 - 3 - 4
    assert _balance(node, contracts, client, clinic_b, right_id) == 3
    # the portal's "On chain" column reads the journal: minted, and the 4 burned units of A's account
    on_chain = describe(Translator("en"), JournalView(db).state("grant", "grant-1"))
    assert re.fullmatch(r"minted in block \d+, 4 burned", on_chain or "")
    assert JournalView(db).state("payout", "2026-11/owner-x/CNY") is None  # the month is not disbursed
    node.mine(2)

    device = world.a.identity.device_id
    code, out = _cli(capsys, "chain", "verify", "--db", url, "--chain", node.url, "--device", device, "--seq", "2")
    assert code == 0, out
    assert json.loads(out)["holds"] is True
    code, _ = _cli(capsys, "chain", "verify", "--db", url, "--chain", node.url, "--device", device, "--seq", "99")
    assert code == 1


def test_a_relay_stopped_between_send_and_confirmation_sends_nothing_twice(
    node: Anvil, relay_db: tuple[str, Database], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, db = relay_db
    world = LedgerWorld(db, tmp_path / "world")
    key = tmp_path / "relay.keystore"
    write_keystore(key, ANVIL_KEYS[0])
    assert (
        _cli(
            capsys, "chain", "deploy", "--db", url, "--chain", node.url, "--chain-key", str(key), "--confirmations", "1"
        )[0]
        == 0
    )
    world.use(world.a, 2, NOV_2)
    config = fast_config(node.url, key_file=key)
    contracts = Contracts(ChainStore(db).contracts())

    node.rpc("evm_setAutomine", False)  # what was sent stays pending: the relay goes before it is mined
    first = ChainService(db, config, connect(node.url, load_account(key, PASSWORD)), contracts)
    for _ in range(5):
        first.run_once()
    open_entries = first.journal.entries()
    assert len(open_entries) == 1, [e.to_json() for e in open_entries]
    (entry,) = open_entries
    assert entry.kind == "anchor"
    assert entry.status == "sent", entry.to_json()
    sent_hash = entry.tx_hash
    relay = load_account(key, PASSWORD).address
    pending = int(str(node.rpc("eth_getTransactionCount", relay, "pending")), 16)
    del first  # the process is gone; its journal row is what is left

    node.rpc("evm_setAutomine", True)
    node.mine()
    client = connect(node.url, load_account(key, PASSWORD))
    again = ChainService(db, config, client, contracts)
    _settle(node, again, "after the restart")
    (done,) = again.journal.entries(statuses=("confirmed",), kind="anchor")
    assert done.tx_hash == sent_hash  # the same transaction, found by its hash: nothing re-signed or re-sent
    assert int(str(node.rpc("eth_getTransactionCount", relay, "latest")), 16) == pending
    # and a second anchor of the same settlement is refused by the contract itself
    to, data = contracts.encode("SettlementAnchor", "anchor", *_anchor_args(db))
    with pytest.raises(ChainError):
        client.estimate_gas(to, data)


def _anchor_args(db: Database) -> tuple[Any, ...]:
    with db.transaction() as tx:
        ((digest, root, device, batch, first, last, envelope),) = tx.all(
            "SELECT hash, root, device, batch, first_seq, last_seq, envelope FROM settlements"
        )
    units = sum(int(t["units"]) for t in json.loads(envelope)["signed"]["totals"])
    sid, root_b = bytes.fromhex(str(digest)), bytes.fromhex(str(root))
    return sid, root_b, keccak(str(device).encode()), int(batch), int(first), int(last), units
