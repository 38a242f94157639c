"""The one interface the chain module talks to a node through (:class:`ChainClient`), and its web3 peer.

:class:`Web3Client` works over any web3 provider: ``HTTPProvider`` for anvil or a real node, and
``EthereumTesterProvider`` (py-evm, in process) as the fast working fake the unit tests use. Every web3,
eth-tester and transport error is translated here (:func:`_mapped`) into the tree of
:mod:`cloud_relay.chain.errors`; nothing above this module sees a foreign exception.

:class:`Contracts` encodes calls to the deployed contracts (their ABIs from :mod:`cloud_relay.chain.artifacts`)
and decodes what their views return; it reads addresses from the relay database (:mod:`cloud_relay.chain.store`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eth_abi.abi import decode
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception
from web3.providers.base import BaseProvider

from cloud_relay.chain.errors import ChainConfigError, ChainRefused, ChainUnavailable, NonceTooLow

__all__ = ["BlockInfo", "ChainClient", "Contracts", "SignedTx", "TxReceipt", "Web3Client", "connect"]

CONTRACTS = ("ServiceRights", "AssetShares", "SettlementAnchor", "PayoutDistributor", "TestStablecoin")


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    tx_hash: str
    """0x-prefixed hex."""


@dataclass(frozen=True)
class TxReceipt:
    block_number: int
    block_hash: str
    ok: bool
    contract_address: str | None = None


@dataclass(frozen=True)
class BlockInfo:
    number: int
    hash: str
    timestamp: int


class ChainClient(Protocol):
    """What the journal, the planners and the commands need from a node."""

    address: str
    """The relay key's address (checksummed)."""

    def chain_id(self) -> int: ...
    def head(self) -> int: ...
    def block(self, number: int) -> BlockInfo | None: ...
    def pending_nonce(self) -> int: ...
    def estimate_gas(self, to: str | None, data: bytes) -> int: ...
    def fees(self) -> dict[str, int]: ...
    def sign(self, to: str | None, data: bytes, nonce: int, gas: int, fees: Mapping[str, int]) -> SignedTx: ...
    def broadcast(self, raw: bytes) -> None: ...
    def receipt(self, tx_hash: str) -> TxReceipt | None: ...
    def call(self, to: str, data: bytes, block: int | str = "latest") -> bytes: ...


_UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, TimeExhausted)
with contextlib.suppress(ImportError):  # the HTTP provider's transport
    import requests

    _UNAVAILABLE += (requests.RequestException,)


def _message(exc: BaseException) -> str:
    text = str(exc)
    if exc.args and isinstance(exc.args[0], Mapping):
        text = str(exc.args[0].get("message", text))
    return text[:300]


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Foreign exceptions of one node request, translated (see the module docstring)."""
    try:
        yield
    except ContractLogicError as exc:
        raise ChainRefused(f"{what}: reverted: {_message(exc)}") from exc
    except _UNAVAILABLE as exc:
        raise ChainUnavailable(f"{what}: the node did not answer: {type(exc).__name__}: {exc}"[:400]) from exc
    except (Web3Exception, ValueError) as exc:
        text = _message(exc)
        low = text.lower()
        if "nonce too low" in low or "nonce is too low" in low or "already been used" in low:
            raise NonceTooLow(f"{what}: {text}") from exc
        raise ChainRefused(f"{what}: {text}") from exc
    except Exception as exc:  # eth-tester's own errors (TransactionFailed, ValidationError)
        if type(exc).__module__.startswith("eth_tester"):
            raise ChainRefused(f"{what}: {type(exc).__name__}: {_message(exc)}") from exc
        raise


def _hex(value: Any) -> str:
    return value.to_0x_hex() if hasattr(value, "to_0x_hex") else Web3.to_hex(value)


class Web3Client:
    """A :class:`ChainClient` over a web3 provider, signing with the relay's key."""

    def __init__(self, provider: BaseProvider, account: LocalAccount | None) -> None:
        self.w3 = Web3(provider)
        self._account = account
        self.address: str = to_checksum_address(account.address if account else "0x" + "00" * 20)
        """None: a read-only client (``btt-relay chain verify``, ``status``): it cannot sign."""

    def chain_id(self) -> int:
        with _mapped("eth_chainId"):
            return int(self.w3.eth.chain_id)

    def head(self) -> int:
        with _mapped("eth_blockNumber"):
            return int(self.w3.eth.block_number)

    def block(self, number: int) -> BlockInfo | None:
        with _mapped("eth_getBlockByNumber"):
            try:
                b = self.w3.eth.get_block(number)
            except Web3Exception as exc:
                if "not found" in str(exc).lower():
                    return None
                raise
        return BlockInfo(int(b["number"]), _hex(b["hash"]), int(b["timestamp"]))

    def pending_nonce(self) -> int:
        with _mapped("eth_getTransactionCount"):
            return int(self.w3.eth.get_transaction_count(to_checksum_address(self.address), "pending"))

    def estimate_gas(self, to: str | None, data: bytes) -> int:
        tx: dict[str, Any] = {"from": self.address, "data": data}
        if to is not None:
            tx["to"] = to
        with _mapped("eth_estimateGas"):
            return int(self.w3.eth.estimate_gas(tx))  # type: ignore[arg-type]

    def fees(self) -> dict[str, int]:
        """EIP-1559 fees (twice the base fee plus the node's tip) where the chain has a base fee, else gasPrice."""
        with _mapped("fees"):
            base = self.w3.eth.get_block("latest").get("baseFeePerGas")
            if base is None:
                return {"gasPrice": int(self.w3.eth.gas_price)}
            tip = int(self.w3.eth.max_priority_fee)
            return {"maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip}

    def sign(self, to: str | None, data: bytes, nonce: int, gas: int, fees: Mapping[str, int]) -> SignedTx:
        tx: dict[str, Any] = {"nonce": nonce, "gas": gas, "data": data, "value": 0, "chainId": self.chain_id()}
        tx.update(fees)
        if to is not None:
            tx["to"] = to_checksum_address(to)
        if self._account is None:
            raise ChainConfigError("this command needs the relay's chain key (--chain-key)")
        signed = self._account.sign_transaction(tx)
        return SignedTx(bytes(signed.raw_transaction), _hex(signed.hash))

    def broadcast(self, raw: bytes) -> None:
        """Send signed bytes; a node that already has them is not an error (a resend)."""
        try:
            with _mapped("eth_sendRawTransaction"):
                self.w3.eth.send_raw_transaction(raw)
        except ChainRefused as exc:
            low = str(exc).lower()
            if "already known" in low or "known transaction" in low or "already imported" in low:
                return
            if "nonce too low" in low and not isinstance(exc, NonceTooLow):
                raise NonceTooLow(str(exc)) from exc
            raise

    def receipt(self, tx_hash: str) -> TxReceipt | None:
        with _mapped("eth_getTransactionReceipt"):
            try:
                r = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except Web3Exception as exc:
                if "not found" in str(exc).lower():
                    return None
                raise
        if r is None or r.get("blockNumber") is None:
            return None
        address = r.get("contractAddress")
        return TxReceipt(
            int(r["blockNumber"]),
            _hex(r["blockHash"]),
            int(r["status"]) == 1,
            None if address is None else to_checksum_address(address),
        )

    def call(self, to: str, data: bytes, block: int | str = "latest") -> bytes:
        with _mapped("eth_call"):
            return bytes(self.w3.eth.call({"to": to_checksum_address(to), "data": data}, block))  # type: ignore[arg-type]


def connect(url: str, account: LocalAccount | None, timeout_s: float = 30.0) -> Web3Client:
    """A client of the JSON-RPC node at ``url``."""
    from web3 import HTTPProvider

    return Web3Client(HTTPProvider(url, request_kwargs={"timeout": timeout_s}), account)


class Contracts:
    """Calls to the deployed contracts: encode a function call, decode a view's result."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        from cloud_relay.chain import artifacts

        self.addresses = {name: to_checksum_address(a) for name, a in addresses.items()}
        self._codec = Web3()
        self._abis = {name: artifacts.load(name).abi for name in self.addresses}
        self._contracts = {name: self._codec.eth.contract(abi=abi) for name, abi in self._abis.items()}

    def has(self, name: str) -> bool:
        return name in self.addresses

    def encode(self, name: str, fn: str, *args: Any) -> tuple[str, bytes]:
        """``(contract address, call data)`` of ``name.fn(*args)``."""
        data = self._contracts[name].encode_abi(fn, args=list(args))
        return self.addresses[name], bytes.fromhex(data.removeprefix("0x"))

    def encode_token(self, token: str, fn: str, *args: Any) -> tuple[str, bytes]:
        """A call to an ERC-20 ``token`` (the standard functions, from the TestStablecoin ABI)."""
        data = self._erc20().encode_abi(fn, args=list(args))
        return to_checksum_address(token), bytes.fromhex(data.removeprefix("0x"))

    def token_view(self, client: ChainClient, token: str, fn: str, *args: Any) -> Any:
        to, data = self.encode_token(token, fn, *args)
        entry = next(e for e in self._erc20().abi if e.get("name") == fn and len(e["inputs"]) == len(args))
        (value,) = decode([o["type"] for o in entry["outputs"]], client.call(to, data))
        return value

    def _erc20(self) -> Any:
        if "TestStablecoin" not in self._contracts:
            from cloud_relay.chain import artifacts

            self._abis["TestStablecoin"] = artifacts.load("TestStablecoin").abi
            self._contracts["TestStablecoin"] = self._codec.eth.contract(abi=self._abis["TestStablecoin"])
        return self._contracts["TestStablecoin"]

    def view(self, client: ChainClient, name: str, fn: str, *args: Any, block: int | str = "latest") -> Any:
        """The result of the view ``name.fn(*args)`` (one value, or a tuple for several outputs)."""
        to, data = self.encode(name, fn, *args)
        outputs = self._outputs(name, fn, len(args))
        values = decode(outputs, client.call(to, data, block))
        return values[0] if len(values) == 1 else tuple(values)

    def _outputs(self, name: str, fn: str, arity: int) -> Sequence[str]:
        for entry in self._abis[name]:
            if entry.get("type") == "function" and entry["name"] == fn and len(entry["inputs"]) == arity:
                return [o["type"] for o in entry["outputs"]]
        raise KeyError(f"{name}.{fn}/{arity}")
