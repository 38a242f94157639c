"""The agent side of receipts: open the book (provisioning a fresh box when configured) and settle periodically.

:func:`open_book` runs in :func:`edge.agent.build_agent`. It never stops the agent for a billing problem: a
missing, broken or untrusted identity is logged as an error and the book parks uses until the box has one
(safety first: receipts never block an exposure or a clinical result).
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.background import BackgroundLoop
from edge.config import AgentConfig, ReceiptsConfig
from edge.db import DB_FILENAME, connect
from edge.errors import ReceiptError
from edge.logs import event
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import (
    DeviceIdentity,
    KeyFiles,
    dev_manufacturer_key,
    load_identity,
    now_ms,
    provision,
)
from edge.receipts.keys import PrivateKey, load_private_key, load_public_key
from edge.receipts.verify import Trust, verify_certificates

__all__ = ["SettlementService", "key_files", "open_book"]

log = logging.getLogger("edge.receipts")

DEV_WARNING = (
    "DEVELOPMENT MANUFACTURER KEY IN USE: this device's certificate is signed by a key made on this box; "
    "its receipts prove nothing to a real relay. Never ship a box provisioned like this."
)


def key_files(config: AgentConfig) -> KeyFiles:
    """Where the device identity lives: ``<data_dir>/keys``."""
    return KeyFiles(config.agent.data_dir / "keys")


def _manufacturer(cfg: ReceiptsConfig, files: KeyFiles) -> PrivateKey | None:
    if cfg.manufacturer_key:
        return load_private_key(Path(cfg.manufacturer_key))
    if cfg.dev_mode:
        event(log, DEV_WARNING, level=logging.WARNING)
        return dev_manufacturer_key(files)
    return None


def _identity(config: AgentConfig) -> DeviceIdentity | None:
    cfg, files = config.receipts, key_files(config)
    identity = load_identity(files)
    if identity is None:
        manufacturer = _manufacturer(cfg, files)
        if manufacturer is None:
            event(log, "no device identity: uses are parked until `btt-edge provision`", level=logging.WARNING)
            return None
        provision(files, device_id=cfg.device_id or None, manufacturer=manufacturer)
        identity = load_identity(files)
        event(log, "device identity provisioned", device=identity.device_id if identity else None)
    if identity is not None and cfg.trust_keys:
        trust = Trust.of(load_public_key(Path(p)) for p in cfg.trust_keys)
        verify_certificates([identity.certificate], trust)
    return identity


def open_book(config: AgentConfig) -> ReceiptBook:
    """The receipt book for the agent: tables migrated, identity loaded or provisioned, parked uses signed."""
    try:
        identity = _identity(config)
    except ReceiptError as exc:
        event(log, "device identity unusable; uses are parked", level=logging.ERROR, error=str(exc))
        identity = None
    book = ReceiptBook(None)
    conn = connect(config.agent.data_dir / DB_FILENAME)
    try:
        book.migrate(conn)
        if identity is not None:
            try:
                book.adopt_identity(conn, identity)
            except ReceiptError as exc:  # parked uses stay parked; new uses are signed
                event(log, "parked uses not signed", level=logging.ERROR, error=str(exc))
    finally:
        conn.close()
    return book


class SettlementService(BackgroundLoop):
    """Closes a settlement when enough receipts are unsettled or the oldest is old enough."""

    name = "settlement"

    def __init__(self, config: AgentConfig, book: ReceiptBook) -> None:
        self._cfg = config.receipts
        self._db_path = config.agent.data_dir / DB_FILENAME
        self._book = book
        super().__init__()

    def settle_due(self) -> int:
        """Close every settlement that is due now; returns how many were closed."""
        if self._book.identity is None:
            return 0
        conn = connect(self._db_path)
        closed = 0
        try:
            while True:
                count, oldest = self._book.unsettled(conn)
                old_enough = oldest is not None and now_ms() - oldest >= self._cfg.settle_interval_s * 1000
                if count == 0 or not (count >= self._cfg.settle_max_receipts or old_enough):
                    return closed
                self._book.close_batch(conn, self._cfg.settle_max_receipts)
                closed += 1
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self._cfg.check_interval_s):
            try:
                self.settle_due()
            except Exception:
                log.exception("closing a settlement failed; will retry")
