"""The measurements on anvil: gas and latency of ``anchorMany``, ``anchor`` and the naive ``post``."""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils.crypto import keccak
from web3 import Web3

from cloud_relay.chain.artifacts import load
from protocol import merkle
from tests.anvil import Anvil

__all__ = ["TX_GAS_CAP", "Measured", "measure"]

TX_GAS_CAP = 1 << 24
"""EIP-7825 (Osaka): no transaction may use more than 2^24 = 16,777,216 gas, whatever the block's limit."""

BATCH_SIZES = (100, 1_000, 10_000)


@dataclass(frozen=True)
class Measured:
    """What one run measured (gas is ``gasUsed`` of the mined transactions, intrinsic 21,000 and calldata included)."""

    client: str
    """The node's ``web3_clientVersion`` (``anvil/v1.7.1``)."""
    hardfork: str
    block_gas_limit: int
    settlements_per_tx: int
    many_gas: dict[int, int]
    """N receipts per settlement -> gas of one anchorMany of ``settlements_per_tx`` settlements."""
    single_gas: dict[int, float]
    """N -> mean gas of one anchor() (one settlement per transaction)."""
    many_one_gas: int
    """anchorMany of a single settlement (the intercept of the linear fit)."""
    max_settlements_per_tx: int
    max_tx_gas: int
    naive_gas: float
    naive_sample: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Median wall time from send to mined receipt, per kind of transaction."""
    throughput_tps: dict[str, float] = field(default_factory=dict)
    """Transactions a second, sent one after another (anvil mines each on arrival)."""
    root_s: dict[int, float] = field(default_factory=dict)
    """N -> seconds to build one settlement's Merkle root over N receipts (Python, protocol.merkle)."""

    @property
    def per_settlement_gas(self) -> float:
        """The marginal gas of one more settlement in an anchorMany."""
        k = self.settlements_per_tx
        return (self.many_gas[BATCH_SIZES[0]] - self.many_one_gas) / (k - 1)

    @property
    def many_fixed_gas(self) -> float:
        """The gas of an anchorMany beyond its settlements (intrinsic 21,000, dispatch, role check)."""
        return self.many_one_gas - self.per_settlement_gas


def _h(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@dataclass(frozen=True)
class _Settlement:
    device_name: str
    settlement_id: bytes
    root: bytes
    device: bytes
    batch: int
    first_seq: int
    last_seq: int
    units: int

    def args(self) -> tuple[bytes, bytes, bytes, int, int, int, int]:
        return (self.settlement_id, self.root, self.device, self.batch, self.first_seq, self.last_seq, self.units)


def _leaves(device: str, n: int) -> list[bytes]:
    return [merkle.leaf_hash(_h(f"{device}:{seq}")) for seq in range(1, n + 1)]


def _settlement(tag: str, n: int) -> _Settlement:
    device = f"bench-{tag}"
    root = merkle.root(_leaves(device, n))
    return _Settlement(device, _h(f"settlement:{tag}"), root, keccak(text=device), 1, 1, n, n)


def _columns(settlements: Sequence[_Settlement]) -> list[list[Any]]:
    return [list(column) for column in zip(*(s.args() for s in settlements), strict=True)]


class _Chain:
    def __init__(self, url: str) -> None:
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 120}))
        self.sender = self.w3.eth.accounts[0]

    def deploy(self, name: str) -> Any:
        artifact = load(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.mined(factory.constructor(), 3_000_000)
        contract = self.w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)
        role = contract.functions.SETTLER_ROLE().call()
        self.mined(contract.functions.grantRole(role, self.sender), 200_000)
        return contract

    def mined(self, call: Any, gas: int) -> Any:
        tx_hash = call.transact({"from": self.sender, "gas": min(gas, TX_GAS_CAP)})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.005)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction {tx_hash.hex()} reverted ({receipt['gasUsed']} gas used)")
        return receipt


def _timed(chain: _Chain, call: Any, gas: int) -> tuple[Any, float]:
    """The mined receipt of ``call`` and the seconds from sending it to holding its receipt."""
    start = time.perf_counter()
    receipt = chain.mined(call, gas)
    return receipt, time.perf_counter() - start


def measure(settlements_per_tx: int = 100, naive_sample: int = 200, singles: int = 20) -> Measured:
    """Run every measurement on a fresh anvil."""
    with Anvil(extra_args=("--enable-tx-gas-limit",)) as node:
        chain = _Chain(node.url)
        info = chain.w3.provider.make_request("anvil_nodeInfo", [])["result"]  # type: ignore[arg-type]
        client = str(chain.w3.client_version)
        block_gas_limit = int(chain.w3.eth.get_block("latest")["gasLimit"])
        anchor = chain.deploy("SettlementAnchor")
        naive = chain.deploy("NaiveReceiptLog")
        latencies: dict[str, list[float]] = {"anchor": [], "anchorMany": [], "post": []}
        many_gas: dict[int, int] = {}
        single_gas: dict[int, float] = {}
        root_s: dict[int, float] = {}

        for n in BATCH_SIZES:
            start = time.perf_counter()
            _settlement(f"root-{n}", n)
            root_s[n] = time.perf_counter() - start
            batch = [_settlement(f"many-{n}-{k}", n) for k in range(settlements_per_tx)]
            call = anchor.functions.anchorMany(*_columns(batch))
            receipt, elapsed = _timed(chain, call, 80_000 * len(batch) + 200_000)
            latencies["anchorMany"].append(elapsed)
            many_gas[n] = int(receipt["gasUsed"])
            gas: list[int] = []
            for k in range(singles):
                one = _settlement(f"single-{n}-{k}", n)
                receipt, elapsed = _timed(chain, anchor.functions.anchor(*one.args()), 200_000)
                latencies["anchor"].append(elapsed)
                gas.append(int(receipt["gasUsed"]))
            single_gas[n] = statistics.fmean(gas)
            _check_inclusion(anchor, batch[-1])

        one = _settlement("many-one", BATCH_SIZES[0])
        many_one_gas = int(chain.mined(anchor.functions.anchorMany(*_columns([one])), 300_000)["gasUsed"])
        per_settlement = (many_gas[BATCH_SIZES[0]] - many_one_gas) / (settlements_per_tx - 1)
        fixed = many_one_gas - per_settlement
        most = int((TX_GAS_CAP - fixed) / (per_settlement * 1.01))  # 1 % below the cap: the fit is linear
        full = [_settlement(f"full-{k}", BATCH_SIZES[0]) for k in range(most)]
        receipt, elapsed = _timed(chain, anchor.functions.anchorMany(*_columns(full)), TX_GAS_CAP)
        latencies["anchorMany full"] = [elapsed]
        max_tx_gas = int(receipt["gasUsed"])

        device = keccak(text="bench-naive")
        gas = []
        start = time.perf_counter()
        for seq in range(1, naive_sample + 1):
            call = naive.functions.post(device, seq, merkle.leaf_hash(_h(f"bench-naive:{seq}")))
            receipt, elapsed = _timed(chain, call, 200_000)
            latencies["post"].append(elapsed)
            gas.append(int(receipt["gasUsed"]))
        naive_tps = naive_sample / (time.perf_counter() - start)
        pipelined_tps = _pipelined(chain, naive, device, range(naive_sample + 1, 2 * naive_sample + 1))
        if naive.functions.receipt(device, 2 * naive_sample).call() == b"\x00" * 32:
            raise RuntimeError("the naive log did not keep the last receipt")

    anchor_tps = 1 / statistics.fmean(latencies["anchor"])
    return Measured(
        client=client,
        hardfork=str(info.get("hardFork", "?")),
        block_gas_limit=block_gas_limit,
        settlements_per_tx=settlements_per_tx,
        many_gas=many_gas,
        single_gas=single_gas,
        many_one_gas=many_one_gas,
        max_settlements_per_tx=most,
        max_tx_gas=max_tx_gas,
        naive_gas=statistics.fmean(gas),
        naive_sample=naive_sample,
        latency_ms={kind: 1000 * statistics.median(values) for kind, values in latencies.items()},
        throughput_tps={"post": naive_tps, "anchor": anchor_tps, "post pipelined": pipelined_tps},
        root_s=root_s,
    )


def _pipelined(chain: _Chain, naive: Any, device: bytes, seqs: range) -> float:
    """Posts a second, all sent before any receipt is awaited (consecutive nonces), then every receipt checked."""
    start = time.perf_counter()
    hashes = [
        naive.functions.post(device, seq, merkle.leaf_hash(_h(f"bench-naive:{seq}"))).transact(
            {"from": chain.sender, "gas": 200_000}
        )
        for seq in seqs
    ]
    for tx_hash in hashes:
        if chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.005)["status"] != 1:
            raise RuntimeError(f"transaction {tx_hash.hex()} reverted")
    return len(seqs) / (time.perf_counter() - start)


def _check_inclusion(anchor: Any, settlement: _Settlement) -> None:
    """A receipt of an anchored settlement checks against the root read back from the chain (the verifier's path)."""
    root, block = anchor.functions.anchored(settlement.settlement_id).call()
    n = settlement.last_seq
    leaves = _leaves(settlement.device_name, n)
    index = n // 3
    merkle.verify_inclusion(index, n, leaves[index], merkle.inclusion_proof(index, leaves), bytes(root))
    if block == 0:
        raise RuntimeError("anchored() returned no block")
