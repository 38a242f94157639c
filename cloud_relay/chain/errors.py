"""Errors of the relay's chain module (`cloud_relay.chain`), all under :class:`cloud_relay.errors.RelayError`.

web3, eth-account and JSON-RPC errors are translated where the node is called (:mod:`cloud_relay.chain.client`):
a node that cannot be reached or answers with a transport error is :class:`ChainUnavailable` (transient: the
service backs off and retries); a call the chain refuses (a revert while estimating gas or calling a view) is
:class:`ChainRefused` with the revert reason. The tree::

    RelayError
    └── ChainError                anything the chain module raises on purpose
        ├── ChainConfigError      a bad --chain option, keystore or password (names it; never prints the secret)
        ├── ChainUnavailable      the node cannot be reached or failed to answer (transient: retry with backoff)
        ├── ChainRefused          the chain refuses a call or a transaction (a revert, with its reason)
        │   └── NonceTooLow       a broadcast whose nonce the chain has already used
        ├── NotDeployed           no contract addresses in the relay database (`btt-relay chain deploy`)
        └── NotAnchored           `btt-relay chain verify`: the receipt does not hold against the chain (the reason)
"""

from __future__ import annotations

from cloud_relay.errors import RelayError

__all__ = [
    "ChainConfigError",
    "ChainError",
    "ChainRefused",
    "ChainUnavailable",
    "NonceTooLow",
    "NotAnchored",
    "NotDeployed",
]


class ChainError(RelayError):
    """Base of the chain module's errors."""


class ChainConfigError(ChainError):
    """A chain option, the keystore or its password is wrong; the message names which (never the secret)."""


class ChainUnavailable(ChainError):
    """The node is unreachable or failed mid-request; nothing is known to have happened, try again later."""


class ChainRefused(ChainError):
    """The chain refused a call or a transaction (``str(exc)`` carries the revert reason)."""


class NonceTooLow(ChainRefused):
    """A signed transaction's nonce is already used on chain (by it, or by another transaction)."""


class NotDeployed(ChainError):
    """The relay database holds no contract addresses yet."""


class NotAnchored(ChainError):
    """A receipt's inclusion does not hold against the anchored root (or is not confirmed yet)."""
