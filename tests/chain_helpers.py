"""Builders for the chain tests: an in-process EVM (eth-tester, py-evm), the relay's keystore (the real anvil node is
:mod:`tests.anvil`), and :class:`LedgerWorld` (two clinics' boxes, an issuer, grants and share tables, receipts and
settlements ingested by the relay) shared by the fast tests and the end-to-end ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import get_default_account_keys
from web3.providers.eth_tester import EthereumTesterProvider

from cloud_relay.chain.client import Web3Client
from cloud_relay.chain.config import ChainConfig
from cloud_relay.chain.keys import PASSWORD_ENV, create_keystore
from cloud_relay.ingest import Ingestor
from cloud_relay.ledger import Ledger
from cloud_relay.registry import ISSUER, Registry
from cloud_relay.storage import Database
from edge.db import transaction
from edge.receipts.grants import install_grant
from protocol.keys import generate_key, seal
from protocol.money import Money
from protocol.shares import SHARE_TABLE
from tests.receipts_helpers import Box, make_grant
from tests.relay_helpers import provisioned, receipt_items, up

REPO = Path(__file__).resolve().parent.parent
ANVIL = REPO / ".tools" / "node_modules" / ".bin" / "anvil"
PASSWORD = "correct horse battery staple"
ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
"""anvil's first development account (public knowledge: the default mnemonic), the relay's key in the e2e tests."""
ASSET = "asset-1"


def fast_config(url: str = "http://127.0.0.1:1", confirmations: int = 2, **overrides: Any) -> ChainConfig:
    """A config for tests: short polls, no resend delay."""
    values: dict[str, Any] = {"poll_s": 0.05, "resend_s": 0, "confirmations": confirmations, "retry_initial_s": 0.05}
    values.update(overrides)
    return ChainConfig(url=url, **values)


@dataclass
class Evm:
    """An in-process chain (py-evm through eth-tester) and a client signing with its first account."""

    tester: EthereumTester
    client: Web3Client

    @property
    def accounts(self) -> list[str]:
        return [str(a) for a in self.tester.get_accounts()]

    def mine(self, n: int = 1) -> None:
        self.tester.mine_blocks(n)

    def send_from(self, sender: str, to: str, data: bytes) -> None:
        self.client.w3.eth.send_transaction({"from": sender, "to": to, "data": data})

    def timestamp(self) -> int:
        return int(self.client.w3.eth.get_block("latest")["timestamp"])


def evm() -> Evm:
    tester = EthereumTester(PyEVMBackend())
    account = Account.from_key(get_default_account_keys()[0].to_bytes())
    return Evm(tester, Web3Client(EthereumTesterProvider(tester), account))


def write_keystore(path: Path, private_key: str | None = None) -> str:
    """A keystore at ``path`` under :data:`PASSWORD` (a cheap scrypt); returns its address."""
    return create_keystore(path, PASSWORD, private_key, kdf_n=2**4)


def password_env() -> dict[str, str]:
    return {PASSWORD_ENV: PASSWORD}


def share_table(issuer: Any, owners: list[tuple[str, int]], version: int, effective_ms: int) -> dict[str, Any]:
    body = {
        "type": SHARE_TABLE, "format": 1, "issuer": issuer.keyid, "asset": ASSET, "version": version,
        "effective_from_ms": effective_ms, "owners": [{"owner": o, "bps": b} for o, b in owners],
    }  # fmt: skip
    return seal(SHARE_TABLE, body, issuer)


@dataclass
class LedgerWorld:
    """Two clinics (A and B), one box each on asset ``asset-1``, an issuer both trust, the relay's ledger."""

    db: Database
    tmp_path: Path
    a: Box = field(init=False)
    b: Box = field(init=False)

    def __post_init__(self) -> None:
        manufacturer = generate_key()
        self.issuer = generate_key()
        self.a = provisioned(self.db, self.tmp_path / "a", manufacturer, clinic="clinic-a")
        self.b = provisioned(self.db, self.tmp_path / "b", manufacturer, clinic="clinic-b")
        registry = Registry(self.db)
        registry.add_trust_key(ISSUER, self.issuer.public)
        for box in (self.a, self.b):
            registry.add_device(box.identity.device_id, asset=ASSET)
        self.ledger = Ledger(self.db, operator="btt-operator")
        self.ledger.set_tariff("analysis", Money("CNY", 500))
        self._ingest = Ingestor(self.db)
        self._sent: dict[str, int] = {}

    def grant(self, grant_id: str, holder: str, units: int) -> dict[str, Any]:
        return make_grant(self.issuer, id=grant_id, holder=holder, units=units, asset=ASSET)

    def install(self, box: Box, envelope: dict[str, Any]) -> None:
        with transaction(box.conn):
            install_grant(box.conn, envelope, {self.issuer.keyid: self.issuer.public}, ASSET)

    def use(self, box: Box, n: int, at_ms: int) -> dict[str, Any]:
        """``n`` analyses on ``box`` at ``at_ms``, settled, and everything sent to the relay; the settlement."""
        box.book._clock = lambda: at_ms
        box.record(n)
        settlement = box.book.close_batch(box.conn, 10_000)
        assert settlement is not None
        device = box.identity.device_id
        items = receipt_items(box, self._sent.get(device, 0))
        self._sent[device] = settlement["signed"]["last_seq"]
        self._ingest.handle([up(device, "receipts", items)])
        acks = self._ingest.handle([up(device, "settlements", [(f"s{settlement['signed']['batch']}", settlement)])])
        assert acks, settlement
        assert acks[0].stored, acks
        return settlement
