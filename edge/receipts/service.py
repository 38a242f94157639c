"""The agent side of receipts: open the book (provisioning a fresh box when configured), pick up an identity
that arrives while the agent runs, and settle periodically.

:func:`edge.agent.build_agent` makes the book (``ReceiptBook(None)``, no I/O) and hands it to every component where
a use happens; :meth:`SettlementService.start` opens it (:func:`open_book`) before the components that record
uses start. Opening never stops the agent for a billing problem: a missing, broken or untrusted identity is
logged as an error and the book parks uses until the box has one (safety first: receipts never block an exposure
or a clinical result). :class:`SettlementService` looks at the
identity's files every ``[receipts] check_interval_s`` (:class:`IdentityWatch`): ``btt-edge provision`` or a key
rotation while the agent runs takes effect there, without a restart, and the parked uses are signed then.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from edge.background import BackgroundLoop
from edge.config import AgentConfig, ReceiptsConfig
from edge.db import DB_FILENAME, connect
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import DeviceIdentity, KeyFiles, dev_manufacturer_key, load_identity, provision
from protocol.clock import now_ms
from protocol.errors import ProtocolError as ReceiptError  # the agent's receipt errors and the contract's
from protocol.keyfiles import load_private_key, load_public_key
from protocol.keys import PrivateKey
from protocol.verify import Trust, verify_certificates
from runtime.logs import event

__all__ = ["IdentityWatch", "SettlementService", "key_files", "open_book"]

log = logging.getLogger("edge.receipts")

DEV_WARNING = (
    "DEVELOPMENT MANUFACTURER KEY IN USE: this device's certificate is signed by a key made on this box; "
    "its receipts prove nothing to a real relay. Never ship a box provisioned like this."
)


def key_files(config: AgentConfig) -> KeyFiles:
    """Where the device identity lives: ``<data_dir>/keys``."""
    return _key_files(config.agent.data_dir)


def _key_files(data_dir: Path) -> KeyFiles:
    return KeyFiles(data_dir / "keys")


def _manufacturer(cfg: ReceiptsConfig, files: KeyFiles) -> PrivateKey | None:
    if cfg.manufacturer_key:
        return load_private_key(Path(cfg.manufacturer_key))
    if cfg.dev_mode:
        event(log, DEV_WARNING, level=logging.WARNING)
        return dev_manufacturer_key(files)
    return None


def _load(cfg: ReceiptsConfig, files: KeyFiles) -> DeviceIdentity | None:
    """The identity on disk, checked against ``[receipts] trust_keys``; None when the box has none yet."""
    identity = load_identity(files)
    if identity is not None and cfg.trust_keys:
        trust = Trust.of(load_public_key(Path(p)) for p in cfg.trust_keys)
        verify_certificates([identity.certificate], trust)
    return identity


def _identity(cfg: ReceiptsConfig, files: KeyFiles) -> DeviceIdentity | None:
    identity = _load(cfg, files)
    if identity is None:
        manufacturer = _manufacturer(cfg, files)
        if manufacturer is None:
            event(
                log,
                "no device identity: uses are parked until `btt-edge provision` (the running agent picks it up)",
                level=logging.WARNING,
            )
            return None
        provision(files, device_id=cfg.device_id or None, manufacturer=manufacturer, hybrid=cfg.hybrid)
        identity = _load(cfg, files)
        event(log, "device identity provisioned", device=identity.device_id if identity else None)
    return identity


def open_book(cfg: ReceiptsConfig, data_dir: Path, book: ReceiptBook | None = None) -> ReceiptBook:
    """Open ``book`` (a new one when None) in ``data_dir``: tables migrated, identity loaded or provisioned, parked
    uses signed."""
    try:
        identity = _identity(cfg, _key_files(data_dir))
    except ReceiptError as exc:
        event(log, "device identity unusable; uses are parked", level=logging.ERROR, error=str(exc))
        identity = None
    book = ReceiptBook(None) if book is None else book
    conn = connect(data_dir / DB_FILENAME)
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


class IdentityWatch:
    """Hands the book the identity on disk when it is not the one the book signs with.

    So ``btt-edge provision`` (a certificate installed) or ``provision --rotate`` (a new key) while the agent runs
    takes effect at the next :meth:`check`, and the uses parked meanwhile are signed then. The certificate file is
    the last one either writes, so the watch reads it and acts only when its bytes change. While a rotation is
    being written (``device.next.*`` present) it waits; staged files still there a whole check later belong to a
    rotation whose process died, and the watch finishes it, as a restart would. A new identity that cannot be
    used (broken files, untrusted) is logged once and the book keeps signing with what it has.
    """

    def __init__(self, cfg: ReceiptsConfig, data_dir: Path, book: ReceiptBook) -> None:
        self._cfg = cfg
        self._files = _key_files(data_dir)
        self._book = book
        self._seen: bytes | None = None
        """The certificate bytes last looked at (adopted, already in use, or refused)."""
        self._staged = False
        """Whether the last check found a rotation staged."""

    def check(self, conn: sqlite3.Connection) -> bool:
        """Adopt a changed identity (True when one was adopted); sign any uses left parked."""
        adopted = False
        raw = self._certificate()
        if raw is not None and raw != self._seen:
            self._seen = raw
            adopted = self._adopt(conn)
        self._book.sign_parked(conn)
        return adopted

    def _certificate(self) -> bytes | None:
        staged, self._staged = self._staged, self._files.next_certificate.exists()
        if self._staged and not staged:
            return None  # a rotation in progress: its last step replaces the certificate
        if self._staged:
            event(log, "finishing a key rotation left half done", level=logging.WARNING)
            try:
                load_identity(self._files)  # finishes it (crash-safe, and safe beside another process finishing it)
            except ReceiptError as exc:
                event(log, "the staged key rotation cannot be finished", level=logging.ERROR, error=str(exc))
                return None
            self._staged = False
        try:
            return self._files.certificate.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            event(log, "cannot read the device certificate", level=logging.ERROR, error=str(exc))
            return None

    def _adopt(self, conn: sqlite3.Connection) -> bool:
        try:
            identity = _load(self._cfg, self._files)
        except ReceiptError as exc:
            keeping = "signing with the identity in use" if self._book.identity is not None else "uses stay parked"
            event(log, f"device identity on disk unusable; {keeping}", level=logging.ERROR, error=str(exc))
            return False
        current = self._book.identity
        if identity is None or (current is not None and identity.certificate == current.certificate):
            return False
        signed = self._book.adopt_identity(conn, identity)
        event(log, "device identity picked up", device=identity.device_id, key=identity.key.keyid, parked=signed)
        return True


class SettlementService(BackgroundLoop):
    """Opens the book (:meth:`start`), then every ``check_interval_s``: picks up a new identity
    (:class:`IdentityWatch`), then closes a settlement when enough receipts are unsettled or the oldest is old
    enough."""

    name = "settlement"

    def __init__(self, cfg: ReceiptsConfig, data_dir: Path, book: ReceiptBook) -> None:
        self._cfg = cfg
        self._data_dir = data_dir
        self._db_path = data_dir / DB_FILENAME
        self._book = book
        self.watch = IdentityWatch(cfg, data_dir, book)
        super().__init__()

    def start(self) -> None:
        """Open the book (:func:`open_book`), then settle in the background."""
        open_book(self._cfg, self._data_dir, self._book)
        super().start()

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

    def check_identity(self) -> bool:
        """:meth:`IdentityWatch.check` on a connection of its own."""
        conn = connect(self._db_path)
        try:
            return self.watch.check(conn)
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self._cfg.check_interval_s):
            try:
                self.check_identity()
            except Exception:
                log.exception("picking up the device identity failed; will retry")
            try:
                self.settle_due()
            except Exception:
                log.exception("closing a settlement failed; will retry")
