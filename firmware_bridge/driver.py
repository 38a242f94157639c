"""The driver interface between the agent and a unit, and the reference driver for this bridge's protocol.

A manufacturer whose unit speaks another protocol implements :class:`UnitDriver` (and names its factory in
the agent's ``[unit] driver`` key as ``package.module:factory``); the agent only ever sees the messages of
``messages.py`` through :class:`UnitListener`. The interface has no way to command or hold an exposure:
a driver reports what the unit did and answers the agent's requests for status and the exposure log.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from firmware_bridge.errors import BridgeError
from firmware_bridge.link import Link, SerialLinkSettings
from firmware_bridge.messages import (
    Capability,
    ClockSync,
    ExposureCompleted,
    ExposureLogEnd,
    ExposureStarted,
    GetExposureLog,
    GetIdentity,
    GetStatus,
    Heartbeat,
    Hello,
    Identify,
    Message,
    Status,
)
from firmware_bridge.transport import SerialTransport

__all__ = [
    "AGENT_CAPABILITIES",
    "DriverFactory",
    "DriverStatus",
    "ReferenceDriver",
    "UnitDriver",
    "UnitListener",
    "load_driver",
]

log = logging.getLogger("firmware_bridge.driver")

_MAX_PENDING = 10_000
"""Reports held until the unit identifies itself; beyond this they wait for the exposure log resync."""

AGENT_CAPABILITIES = Capability.EXPOSURE_LOG | Capability.CLOCK_SYNC
"""What the agent's side of the reference protocol supports."""


class UnitListener(Protocol):
    """What a driver reports to the agent. Called from the driver's thread; keep each call short."""

    def on_identity(self, identity: Identify) -> None:
        """The unit identified itself (after every handshake)."""

    def on_status(self, status: Status) -> None:
        """The unit's state, heat or faults changed, or the agent asked."""

    def on_exposure_started(self, serial: str, started: ExposureStarted) -> None:
        """An exposure began (informational)."""

    def on_exposure(self, serial: str, exposure: ExposureCompleted) -> None:
        """An exposure completed, or was replayed from the log: record it idempotently by its id."""

    def on_log_end(self, serial: str, end: ExposureLogEnd) -> None:
        """The unit finished answering a :meth:`UnitDriver.request_exposures_since`."""


@dataclass(frozen=True)
class DriverStatus:
    """The link as the agent shows it: state, negotiated version, last error, counters."""

    state: str
    version: int | None = None
    error: str | None = None
    clock_offset_ms: int | None = None
    """Unit clock minus agent clock, from the last clock sync."""
    last_heard_s: float | None = None
    """Seconds since the last heartbeat or message from the unit."""
    counters: dict[str, int] = field(default_factory=dict)


class UnitDriver(Protocol):
    """A unit's protocol. ``start`` returns at once; the driver reconnects by itself until ``stop``."""

    def start(self, listener: UnitListener) -> None: ...

    def stop(self) -> None: ...

    def request_status(self) -> None: ...

    def request_exposures_since(self, exposure_id: int) -> None: ...

    def status(self) -> DriverStatus: ...


DriverFactory = Callable[[SerialTransport, SerialLinkSettings], UnitDriver]


class ReferenceDriver:
    """This bridge's own protocol (``docs/serial-protocol.md``) over a :class:`~firmware_bridge.link.Link`."""

    def __init__(self, transport: SerialTransport, settings: SerialLinkSettings | None = None) -> None:
        self._link = Link(
            transport,
            on_message=self._dispatch,
            on_connected=self._connected,
            capabilities=AGENT_CAPABILITIES,
            settings=settings,
            name="unit-link",
        )
        self._listener: UnitListener | None = None
        self._lock = threading.Lock()
        self.identity: Identify | None = None
        self._pending: list[Message] = []
        self._clock_offset_ms: int | None = None
        self._last_heard: float | None = None

    def start(self, listener: UnitListener) -> None:
        """Start the link; the listener hears from the unit from now on."""
        self._listener = listener
        self._link.start()

    def stop(self) -> None:
        """Stop the link and close the port."""
        self._link.stop()

    def request_status(self) -> None:
        """Ask the unit for a :class:`Status`."""
        self._link.send(GetStatus())

    def request_exposures_since(self, exposure_id: int) -> None:
        """Ask the unit to replay every exposure after ``exposure_id``, then :class:`ExposureLogEnd`."""
        self._link.send(GetExposureLog(exposure_id))

    def status(self) -> DriverStatus:
        """The link's state and counters now."""
        link = self._link
        counters = link.stats.as_dict()
        counters.update({f"garbled_{k}": v for k, v in link.garbled_by_reason.items()})
        heard = None if self._last_heard is None else round(time.monotonic() - self._last_heard, 3)
        return DriverStatus(link.state, link.version, link.error, self._clock_offset_ms, heard, counters)

    def _connected(self, peer: Hello) -> None:
        log.info("unit handshake version=%s capabilities=%#x", self._link.version, peer.capabilities)
        self._link.send(GetIdentity())
        self._link.send(GetStatus())
        if peer.capabilities & Capability.CLOCK_SYNC:
            self._link.send(ClockSync(host_time_ms=_now_ms()))

    def _dispatch(self, message: Message) -> None:
        listener = self._listener
        if listener is None:
            return
        self._last_heard = time.monotonic()
        if isinstance(message, Identify):
            with self._lock:
                self.identity = message
                pending, self._pending = self._pending, []
            listener.on_identity(message)
            for held in pending:
                self._dispatch(held)
            return
        if isinstance(message, Status):
            listener.on_status(message)
        elif isinstance(message, ClockSync):
            self._clock_offset_ms = message.unit_time_ms - (message.host_time_ms + _now_ms()) // 2
        elif isinstance(message, ExposureStarted | ExposureCompleted | ExposureLogEnd):
            with self._lock:
                serial = None if self.identity is None else self.identity.serial
                if serial is None:
                    if len(self._pending) < _MAX_PENDING:
                        self._pending.append(message)
                    return
            if isinstance(message, ExposureStarted):
                listener.on_exposure_started(serial, message)
            elif isinstance(message, ExposureCompleted):
                listener.on_exposure(serial, message)
            else:
                listener.on_log_end(serial, message)
        elif not isinstance(message, Heartbeat):
            log.debug("ignored %s from the unit", type(message).__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


def load_driver(spec: str) -> DriverFactory:
    """The driver factory named by ``spec``: ``reference``, or ``package.module:factory`` for a third party."""
    if spec == "reference":
        return ReferenceDriver
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BridgeError(f"driver {spec!r}: expected 'reference' or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BridgeError(f"driver {spec!r}: {exc}") from exc
    if not callable(factory):
        raise BridgeError(f"driver {spec!r}: not callable")
    return factory  # type: ignore[no-any-return]
