"""The unit service: runs a :mod:`firmware_bridge` driver from ``[unit]`` and records what the unit reports.

Exposures are recorded exactly once (idempotent on the unit's exposure id), each with its receipt (service
kind ``exposure``) in the same transaction when the agent has a receipt book, whether they arrive live, again
after a retransmission, or replayed from the unit's log: after every handshake, and every
``resync_interval_s``, the service asks for the log since the last exposure it holds without a gap. On first
contact with a unit the watermark starts at the unit's newest exposure (earlier ones predate the agent).
Status and faults are saved for the agent's status views; the link's state and counters every
``match_interval_s``, when received images are also matched to exposures. Nothing here can command or delay
an exposure; a failure to record is logged and healed by the next resync.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sqlite3
import threading
import time
from pathlib import Path

from edge.config import UnitConfig
from edge.db import DB_FILENAME, connect
from edge.errors import ConfigError
from edge.receipts.book import ReceiptBook
from edge.store.index import migrate_index
from edge.unit.exposures import (
    ImageFacts,
    expire_unmatched,
    match_image,
    migrate_unit,
    pending_images,
    record_exposure,
    record_identity,
    record_image,
    record_link,
    record_status,
    set_watermark,
    watermark,
)
from firmware_bridge.driver import DriverStatus, UnitDriver, load_driver
from firmware_bridge.errors import BridgeError
from firmware_bridge.link import SerialLinkSettings
from firmware_bridge.messages import ExposureCompleted, ExposureLogEnd, ExposureStarted, Identify, Status
from firmware_bridge.transport import PySerialTransport
from runtime.logs import event

__all__ = ["UnitService", "image_facts", "serial_link_settings"]

log = logging.getLogger("edge.unit")

_FIRST_CONTACT = 2**62
"""``GetExposureLog`` since this returns no exposures, only the unit's newest id."""


def serial_link_settings(config: UnitConfig) -> SerialLinkSettings:
    """The link timing from ``[unit]``."""
    return SerialLinkSettings(
        ack_timeout_s=config.ack_timeout_s,
        max_retries=config.max_retries,
        hello_interval_s=config.hello_interval_s,
        peer_timeout_s=config.peer_timeout_s,
        reopen_initial_s=config.reopen_initial_s,
        reopen_max_s=config.reopen_max_s,
    )


class UnitService:
    """The agent's :class:`~edge.agent.Service` for the unit link (also the driver's listener)."""

    name = "unit"

    def __init__(
        self,
        config: UnitConfig,
        data_dir: Path,
        *,
        book: ReceiptBook | None = None,
        stop_requested: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.book = book
        self.stop_requested = stop_requested
        """The agent's stop request (:class:`~edge.agent.Agent`): once set, a link that goes down is a normal close,
        not a warning (a simulator on the same terminal gets the same Ctrl-C and closes its pty first)."""
        self.driver: UnitDriver | None = None
        self.identity: Identify | None = None
        self.status: Status | None = None
        self._conn: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_resync = 0.0
        self._last_link: tuple[str, str | None] = ("closed", None)

    # --- Service --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the database, start the driver (it opens the port, with backoff) and the housekeeping thread."""
        try:
            factory = load_driver(self.config.driver)
        except BridgeError as exc:
            raise ConfigError(f"unit.driver: {exc}") from exc
        conn = connect(self.data_dir / DB_FILENAME)
        migrate_index(conn)
        migrate_unit(conn)
        self._conn = conn
        transport = PySerialTransport(
            self.config.port,
            baudrate=self.config.baudrate,
            parity=self.config.parity,
            read_timeout_s=self.config.read_timeout_s,
        )
        self.driver = factory(transport, serial_link_settings(self.config))
        self._stop.clear()
        self.driver.start(self)
        self._thread = threading.Thread(target=self._housekeeping, name="unit-housekeeping", daemon=True)
        self._thread.start()
        event(log, "unit link started", port=self.config.port, driver=self.config.driver)

    def stop(self) -> None:
        """Stop the driver and the housekeeping; save the link's last state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.driver is not None:
            self.driver.stop()
            self._save_link()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def link_status(self) -> DriverStatus:
        """The link now (state, version, error, counters such as garbled frames)."""
        return DriverStatus("closed") if self.driver is None else self.driver.status()

    # --- UnitListener ---------------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("unit service is not started")
        return self._conn

    def on_identity(self, identity: Identify) -> None:
        """Record the unit, then ask for its exposure log since the last exposure recorded without a gap."""
        with self._db_lock:
            first = record_identity(self._db(), identity)
            since = watermark(self._db(), identity.serial)
        self.identity = identity
        event(log, "unit identified", serial=identity.serial, model=identity.model, firmware=identity.firmware)
        self._request_log(_FIRST_CONTACT if first or since is None else since)

    def on_status(self, status: Status) -> None:
        """Save the status; log faults raised and cleared."""
        self.status = status
        if self.identity is None:
            return
        with self._db_lock:
            change = record_status(self._db(), self.identity.serial, status)
        for code in change.raised:
            event(log, "unit fault", level=logging.WARNING, serial=self.identity.serial, code=f"0x{code:04x}")
        for code in change.cleared:
            event(log, "unit fault cleared", serial=self.identity.serial, code=f"0x{code:04x}")

    def on_exposure_started(self, serial: str, started: ExposureStarted) -> None:
        """Informational only."""
        event(log, "exposure started", serial=serial, exposure=started.exposure_id, program=started.program)

    def on_exposure(self, serial: str, exposure: ExposureCompleted) -> None:
        """Record the exposure once (a replay or duplicate is a no-op)."""
        with self._db_lock:
            new = record_exposure(self._db(), serial, exposure, self.book)
        if new:
            event(
                log,
                "exposure recorded",
                serial=serial,
                exposure=exposure.exposure_id,
                program=exposure.program,
                kvp=exposure.kvp,
                dap_mgy_cm2=exposure.dap_mgy_cm2,
            )

    def on_log_end(self, serial: str, end: ExposureLogEnd) -> None:
        """Set the watermark on first contact; otherwise advance it over what the replay filled in."""
        with self._db_lock:
            current = watermark(self._db(), serial)
            new = set_watermark(self._db(), serial, end.last_id if current is None else current)
        if end.last_id < new:
            # exposure ids must never repeat; a reset counter (a replaced controller) needs a technician
            event(
                log,
                "unit exposure counter went back",
                level=logging.ERROR,
                serial=serial,
                last=end.last_id,
                watermark=new,
            )
        elif new < end.last_id:
            event(log, "unit log has a gap", level=logging.WARNING, serial=serial, watermark=new, last=end.last_id)

    # --- housekeeping ---------------------------------------------------------------------------------------

    def _request_log(self, since: int) -> None:
        if self.driver is not None:
            self._last_resync = time.monotonic()
            self.driver.request_exposures_since(since)

    def _housekeeping(self) -> None:
        while not self._stop.wait(self.config.match_interval_s):
            try:
                self._save_link()
                self._match_images()
                if (
                    self.identity is not None
                    and self.link_status().state == "connected"
                    and time.monotonic() - self._last_resync >= self.config.resync_interval_s
                ):
                    with self._db_lock:
                        since = watermark(self._db(), self.identity.serial)
                    self._request_log(_FIRST_CONTACT if since is None else since)
            except Exception:
                log.exception("unit housekeeping failed")

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self.stop_requested is not None and self.stop_requested.is_set())

    def _save_link(self) -> None:
        """Save the link's state and counters; log when its state changes (e.g. the port cannot be opened).

        While the agent stops, the port failing (the peer closed its end) is the close that was asked for: logged
        as such, without a warning."""
        link = self.link_status()
        if self._stopping() and link.state != "connected":
            link = dataclasses.replace(link, error=None)
        if (link.state, link.error) != self._last_link:
            self._last_link = (link.state, link.error)
            level = logging.INFO if link.state == "connected" or not link.error else logging.WARNING
            event(log, "unit link", level=level, state=link.state, port=self.config.port, error=link.error or "")
        with self._db_lock:
            if self._conn is not None:
                record_link(self._conn, self.config.port, link)

    def _match_images(self) -> None:
        """Note newly indexed images, match pending ones to exposures, expire what stayed unmatched."""
        with self._db_lock:
            conn = self._db()
            new = conn.execute(
                "SELECT i.sop_instance_uid, i.path FROM instances i LEFT JOIN unit_images u "
                "ON u.sop_instance_uid = i.sop_instance_uid WHERE u.sop_instance_uid IS NULL AND i.rows IS NOT NULL "
                "ORDER BY i.received_at LIMIT 200"
            ).fetchall()
        for sop_uid, path in new:
            facts = image_facts(sop_uid, self.data_dir / path)
            with self._db_lock:
                record_image(self._db(), facts)
        window_ms = int(self.config.match_window_s * 1000)
        with self._db_lock:
            for facts in pending_images(self._db()):
                key = match_image(self._db(), facts, window_ms)
                if key is not None:
                    event(log, "image matched to exposure", sop=facts.sop_instance_uid, serial=facts.device_serial)
            no_image, no_exposure = expire_unmatched(self._db(), int(self.config.match_grace_s * 1000))
        if no_image or no_exposure:
            event(log, "unmatched after grace", exposures_without_image=no_image, images_without_exposure=no_exposure)


def image_facts(sop_instance_uid: str, path: Path) -> ImageFacts:
    """Device serial and acquisition time from an image's header; unknown fields are empty (never raises)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    tags = [
        "DeviceSerialNumber",
        "AcquisitionDateTime",
        "AcquisitionDate",
        "AcquisitionTime",
        "ContentDate",
        "ContentTime",
    ]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except (OSError, InvalidDicomError, ValueError) as exc:
        log.warning("cannot read the header of %s: %s", path, exc)
        return ImageFacts(sop_instance_uid, "", None)
    serial = str(ds.get("DeviceSerialNumber", "") or "").strip()
    text = str(ds.get("AcquisitionDateTime", "") or "").strip()
    if not text:
        for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime")):
            date, clock = str(ds.get(date_kw, "") or ""), str(ds.get(time_kw, "") or "")
            if date and clock:
                text = date + clock
                break
    return ImageFacts(sop_instance_uid, serial, _dicom_datetime_ms(text))


def _dicom_datetime_ms(text: str) -> int | None:
    """A DICOM DT value (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``, right parts optional) in Unix ms, or ``None``.

    A value without an offset is the box's local time, which is also the unit's clock at the chairside.
    """
    offset: dt.timezone | None = None
    if len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        minutes = int(text[-4:-2]) * 60 + int(text[-2:])
        offset = dt.timezone(dt.timedelta(minutes=minutes if text[-5] == "+" else -minutes))
        text = text[:-5]
    main, _, fraction = text.partition(".")
    if len(main) < 8 or not main.isdigit() or (fraction and not fraction.isdigit()):
        return None
    try:
        when = dt.datetime.strptime(main[:8] + main[8:14].ljust(6, "0"), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    when = when.replace(microsecond=int(fraction[:6].ljust(6, "0")) if fraction else 0)
    when = when.replace(tzinfo=offset) if offset is not None else when.astimezone()
    return int(when.timestamp() * 1000)
