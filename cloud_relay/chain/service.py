"""The chain service ``btt-relay run --chain URL --chain-key FILE`` runs beside the consumer.

Each pass (every ``poll_s``): journal the anchor and burns of settlements verified since the last pass
(:func:`~cloud_relay.chain.anchor.plan_settlements`), then move every open journal entry on (sign, send, wait for
the receipt and the confirmations; :class:`~cloud_relay.chain.journal.Journal`). Mints, publications and claims
are journalled by ``btt-relay chain mint|disburse|claim`` and sent here like the rest. A node that does not answer
(:class:`~cloud_relay.chain.errors.ChainUnavailable`) is retried with exponential backoff and jitter
(:mod:`runtime.backoff`): billing never blocks ingest, and nothing is lost meanwhile (settlements wait in the
database, intents in the journal). Anything else that escapes is a bug: ``on_failure`` ends the worker.

:func:`open_chain` is the one place the relay's key is opened and the node connected; run the service in ONE
worker of a relay (the journal is safe to share, but one sender keeps nonces in order).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cloud_relay.chain.anchor import plan_settlements
from cloud_relay.chain.client import ChainClient, Contracts, connect
from cloud_relay.chain.config import ChainConfig
from cloud_relay.chain.errors import ChainConfigError, ChainUnavailable
from cloud_relay.chain.journal import Journal
from cloud_relay.chain.keys import load_account, read_password
from cloud_relay.chain.store import ChainStore, migrate
from cloud_relay.errors import StorageUnavailable
from cloud_relay.storage import Database
from runtime.backoff import Backoff
from runtime.logs import event

__all__ = ["Chain", "ChainService", "open_chain"]

log = logging.getLogger("cloud_relay.chain.service")


@dataclass(frozen=True)
class Chain:
    """An open chain: the node client with the relay's key, and the deployed contracts (None before deploy)."""

    client: ChainClient
    store: ChainStore
    contracts: Contracts | None


def open_chain(db: Database, config: ChainConfig, *, deployed: bool = True, signing: bool = True) -> Chain:
    """Migrate the chain tables, open the key (password from the environment), connect, check the chain id.

    ``signing=False``: no key (read-only commands).
    """
    migrate(db)
    if signing and config.key_file is None:
        raise ChainConfigError("--chain-key FILE is needed to send transactions")
    account = load_account(config.key_file, read_password()) if signing and config.key_file else None
    client = connect(config.url, account, config.timeout_s)
    store = ChainStore(db)
    contracts = None
    if deployed:
        addresses = store.contracts()
        stored, actual = store.chain_id(), client.chain_id()
        if stored is not None and stored != actual:
            raise ChainConfigError(f"--chain {config.url}: chain id {actual}, the contracts were deployed on {stored}")
        contracts = Contracts(addresses)
    return Chain(client, store, contracts)


class ChainService:
    """The background thread (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        config: ChainConfig,
        client: ChainClient,
        contracts: Contracts,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._db = db
        self._config = config
        self._contracts = contracts
        self.journal = Journal(db, client, contracts, config)
        self._on_failure = on_failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(config.retry_initial_s, config.retry_cap_s)

    def run_once(self) -> int:
        """One pass: plan, then advance the journal; returns the entries that changed."""
        plan_settlements(self._db, self._contracts)
        return self.journal.advance()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.run_once()
                except (ChainUnavailable, StorageUnavailable) as exc:
                    delay = self._backoff.next_delay()
                    event(log, "chain retry", level=logging.WARNING, reason=str(exc)[:200], delay_s=round(delay, 2))
                    self._stop.wait(delay)
                    continue
                self._backoff.reset()
                self._stop.wait(self._config.poll_s)
        except BaseException as exc:
            log.exception("chain service failed")
            if self._on_failure is not None:
                self._on_failure(exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="chain-service", daemon=True)
        self._thread.start()
        event(
            log,
            "chain service started",
            node=urlsplit(self._config.url).hostname,
            confirmations=self._config.confirmations,
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
