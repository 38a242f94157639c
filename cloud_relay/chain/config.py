"""The chain module's configuration: a frozen dataclass with documented, bounded defaults.

Built by ``btt-relay run --chain URL --chain-key FILE`` (and the ``btt-relay chain`` commands) from their flags; a
bad value raises :class:`~cloud_relay.chain.errors.ChainConfigError` naming the option. The keystore's password is
never part of it: :func:`cloud_relay.chain.keys.read_password` reads it from ``$BTT_CHAIN_KEY_PASSWORD_FILE`` (a
file) or ``$BTT_CHAIN_KEY_PASSWORD`` when the key is opened, and nothing logs it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from cloud_relay.chain.errors import ChainConfigError

__all__ = ["DEFAULT_CONFIRMATIONS", "ChainConfig"]

DEFAULT_CONFIRMATIONS = 2
"""Blocks (the one including the transaction counts as the first) before a transaction counts as confirmed. 2 suits
anvil and test chains; use 12 or more on a public chain (``--chain-confirmations``)."""


@dataclass(frozen=True)
class ChainConfig:
    """How the relay talks to its chain."""

    url: str
    """JSON-RPC endpoint, ``http://`` or ``https://``."""
    key_file: Path | None = None
    """The relay's chain key: an eth-account (Web3 Secret Storage) keystore file (None: read-only commands)."""
    confirmations: int = DEFAULT_CONFIRMATIONS
    """Blocks before a transaction (an anchor, a burn, a mint, a publication) counts as final, 1-1000."""
    poll_s: float = 1.0
    """Pause between passes of the service over the journal, 0.01-600 s."""
    resend_s: float = 30.0
    """A sent transaction not mined after this long is broadcast again (the same signed bytes), 0-86400 s."""
    gas_margin: float = 1.25
    """Gas limit = the node's estimate times this, 1-5."""
    retry_initial_s: float = 0.5
    """First pause after the node failed (exponential backoff with jitter, :mod:`runtime.backoff`), 0.01-60 s."""
    retry_cap_s: float = 30.0
    """Longest pause between retries, 0.1-3600 s."""
    timeout_s: float = 30.0
    """JSON-RPC request timeout, 1-600 s."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ChainConfigError(f"--chain {self.url!r:.80} must be an http:// or https:// JSON-RPC URL")
        bounds = {
            "confirmations": (1, 1000),
            "poll_s": (0.01, 600),
            "resend_s": (0, 86_400),
            "gas_margin": (1, 5),
            "retry_initial_s": (0.01, 60),
            "retry_cap_s": (0.1, 3600),
            "timeout_s": (1, 600),
        }
        for f in fields(self):
            if f.name in bounds:
                lo, hi = bounds[f.name]
                value = getattr(self, f.name)
                if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
                    raise ChainConfigError(f"{f.name} must be a number from {lo:g} to {hi:g}, got {value!r}")
