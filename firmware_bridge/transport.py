"""Byte transports under the link: pyserial for the real port (or a ``loop://`` URL), and an in-memory fake.

:class:`SerialTransport` is the small interface the link needs. :class:`PySerialTransport` is the only code
that calls pyserial; it translates every pyserial and OS error to :class:`~firmware_bridge.errors.TransportError`
(:class:`~firmware_bridge.errors.PortUnavailable` when the port cannot be opened, e.g. unplugged). The link
closes a failed port and reopens it with a :class:`runtime.backoff.Backoff`, so a unit unplugged and plugged back
in is picked up again; name the port by a stable udev path (``/dev/serial/by-id/...``), which survives re-enumeration.
:class:`MemoryTransport` pairs (:func:`memory_pair`) are the fake for unit tests, with a hook that can garble,
drop or duplicate bytes in flight and an ``unplug`` switch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Literal, Protocol

import serial

from firmware_bridge.errors import PortUnavailable, TransportError

__all__ = ["MemoryTransport", "PySerialTransport", "SerialTransport", "memory_pair"]

Parity = Literal["none", "even", "odd"]
_PARITY = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD}


class SerialTransport(Protocol):
    """A byte pipe to the unit. ``read`` returns what arrived within the read timeout (``b""`` if nothing)."""

    @property
    def is_open(self) -> bool: ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    def read(self) -> bytes: ...

    def write(self, data: bytes) -> None: ...


class PySerialTransport:
    """A serial port (a device path such as ``/dev/serial/by-id/...`` or a pyserial URL such as ``loop://``)."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        parity: Parity = "none",
        read_timeout_s: float = 0.1,
        write_timeout_s: float = 1.0,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self._serial: serial.SerialBase | None = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port; :class:`PortUnavailable` if it is missing or busy."""
        if self._serial is not None:
            return
        try:
            port = serial.serial_for_url(
                self.port,
                baudrate=self.baudrate,
                parity=_PARITY[self.parity],
                bytesize=serial.EIGHTBITS,
                stopbits=serial.STOPBITS_ONE,
                timeout=self.read_timeout_s,
                write_timeout=self.write_timeout_s,
                do_not_open=True,
            )
            if "://" not in self.port:
                port.exclusive = True
            port.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortUnavailable(f"cannot open {self.port}: {exc}") from exc
        self._serial = port

    def close(self) -> None:
        """Close the port (idempotent; errors on close are moot)."""
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def _port(self) -> serial.SerialBase:
        if self._serial is None:
            raise TransportError(f"{self.port} is not open")
        return self._serial

    def read(self) -> bytes:
        """Wait up to the read timeout for bytes; return all that arrived."""
        port = self._port()
        try:
            data: bytes = port.read(1)
            if data:
                waiting = port.in_waiting
                if waiting:
                    data += port.read(waiting)
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"reading {self.port}: {exc}") from exc
        return data

    def write(self, data: bytes) -> None:
        """Write all of ``data``."""
        port = self._port()
        try:
            port.write(data)
            port.flush()
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"writing {self.port}: {exc}") from exc


class MemoryTransport:
    """One end of an in-memory serial line (see :func:`memory_pair`)."""

    def __init__(self, read_timeout_s: float = 0.02) -> None:
        self.read_timeout_s = read_timeout_s
        self.peer: MemoryTransport | None = None
        self.tamper: Callable[[bytes], bytes] | None = None
        """Applied to every write before delivery: garble, drop or duplicate bytes in tests."""
        self.max_read: int | None = None
        """At most this many bytes per read (split frames across reads in tests); None = all that arrived."""
        self.plugged = True
        self._open = False
        self._inbox = bytearray()
        self._cond = threading.Condition()

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        if not self.plugged:
            raise PortUnavailable("memory line unplugged")
        self._open = True

    def close(self) -> None:
        self._open = False

    def unplug(self) -> None:
        """Cut the line: reads and writes on both ends fail until :meth:`plug`."""
        for end in (self, self.peer):
            if end is not None:
                end.plugged = False
                with end._cond:
                    end._inbox.clear()
                    end._cond.notify_all()

    def plug(self) -> None:
        """Reconnect the line (each end must be opened again)."""
        for end in (self, self.peer):
            if end is not None:
                end.plugged = True

    def _check(self) -> None:
        if not self.plugged:
            raise TransportError("memory line unplugged")
        if not self._open:
            raise TransportError("memory line not open")

    def read(self) -> bytes:
        self._check()
        deadline = time.monotonic() + self.read_timeout_s
        with self._cond:
            while not self._inbox and self.plugged:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            take = len(self._inbox) if self.max_read is None else self.max_read
            data = bytes(self._inbox[:take])
            del self._inbox[:take]
        self._check()
        return data

    def write(self, data: bytes) -> None:
        self._check()
        if self.tamper is not None:
            data = self.tamper(data)
        peer = self.peer
        if peer is None or not data:
            return
        with peer._cond:
            peer._inbox += data
            peer._cond.notify_all()


def memory_pair(read_timeout_s: float = 0.02) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected ends of an in-memory serial line."""
    a, b = MemoryTransport(read_timeout_s), MemoryTransport(read_timeout_s)
    a.peer, b.peer = b, a
    return a, b
