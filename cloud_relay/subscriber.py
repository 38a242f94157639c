"""The relay worker's MQTT v5 connection: one shared subscription in, acknowledgements out, in batches.

A relay worker only ever does three things on MQTT: hold a persistent session with one subscription, take the
PUBLISH packets the broker delivers, and answer each batch with its PUBACKs and the application acks. paho-mqtt
spends ~60 us of Python per message on that (a system call per header byte, a property object, a callback, a
queue hand-off and a socket-pair wake-up per PUBACK), more than verifying the receipt's signature
(bench/RESULTS.md). This client parses every packet a ``recv`` brought in one pass and sends a batch's
acknowledgements with one ``sendall``. It speaks exactly the subset the worker needs:

* CONNECT with clean start off, a session expiry and a receive maximum (username/password, TLS with an optional
  client certificate); SUBSCRIBE to one filter at QoS 1; PINGREQ within the keep-alive;
* PUBLISH in at QoS 0 or 1 (properties skipped: no topic aliases are allowed); PUBACK out;
* PUBLISH out at QoS 0 only (application acks are idempotent and the device resends what it has no ack for);
* anything else from the broker (a DISCONNECT, QoS 2, a malformed packet) ends the connection with
  :class:`~cloud_relay.errors.BrokerError`; the caller reconnects and the broker redelivers what was not PUBACKed.

Packet encoders are pure functions (the relay benchmark's load generator speaks through them too); I/O is in
:class:`Subscription`.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud_relay.config import MqttConfig
from cloud_relay.errors import BrokerError

__all__ = [
    "DISCONNECT",
    "PINGREQ",
    "PUBACK",
    "PUBLISH",
    "Delivery",
    "PacketReader",
    "Subscription",
    "connect_packet",
    "parse_publish",
    "puback_packet",
    "publish_packet",
    "subscribe_packet",
]

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGRESP_TYPE, DISCONNECT_TYPE = 13, 14
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
_MAX_PACKET = 16 * 1024 * 1024
_PROP_SESSION_EXPIRY, _PROP_RECEIVE_MAXIMUM, _PROP_MAXIMUM_PACKET = 0x11, 0x21, 0x27
_RECV_BYTES = 1 << 18
_OPEN_SLICE_S = 0.5
"""While opening, how long one wait lasts before ``cancel`` is looked at again (a stop is seen within this)."""


# --- packets (pure) -------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    keepalive_s: int = 60,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
) -> bytes:
    """CONNECT (MQTT v5)."""
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0) | (0x02 * clean_start)
    props = b""
    if session_expiry_s:
        props += bytes([_PROP_SESSION_EXPIRY]) + struct.pack("!I", session_expiry_s)
    if receive_maximum is not None:
        props += bytes([_PROP_RECEIVE_MAXIMUM]) + struct.pack("!H", receive_maximum)
    props += bytes([_PROP_MAXIMUM_PACKET]) + struct.pack("!I", _MAX_PACKET)
    body = _string("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive_s) + _varint(len(props)) + props
    body += _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    """SUBSCRIBE to one filter (no properties)."""
    return _packet(SUBSCRIBE << 4 | 0x02, struct.pack("!H", packet_id) + b"\x00" + _string(topic_filter) + bytes([qos]))


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0) -> bytes:
    """PUBLISH at QoS 0 or 1 (no properties)."""
    head = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + b"\x00"
    return _packet(PUBLISH << 4 | qos << 1, head + payload)


def puback_packet(packet_id: int) -> bytes:
    """PUBACK, success (the short form MQTT v5 allows)."""
    return b"\x40\x02" + struct.pack("!H", packet_id)


@dataclass(frozen=True)
class Delivery:
    """One PUBLISH from the broker."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int


def parse_publish(flags: int, body: bytes) -> Delivery:
    """A PUBLISH's fields from its fixed-header flags and body; :class:`BrokerError` when it is malformed."""
    qos = (flags >> 1) & 0x03
    if qos > 1:
        raise BrokerError(f"the broker sent a QoS {qos} message on a QoS 1 subscription")
    try:
        (length,) = struct.unpack_from("!H", body, 0)
        topic = body[2 : 2 + length].decode("utf-8")
        pos = 2 + length
        packet_id = 0
        if qos:
            (packet_id,) = struct.unpack_from("!H", body, pos)
            pos += 2
        props, pos = _read_varint(body, pos)
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise BrokerError(f"malformed PUBLISH from the broker: {exc}") from exc
    if pos + props > len(body) or not topic:
        raise BrokerError("malformed PUBLISH from the broker (topic alias or truncated properties)")
    return Delivery(topic, body[pos + props :], qos, packet_id)


def _read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """``(value, next position)``; IndexError when ``data`` ends first."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise BrokerError("malformed packet length from the broker")


class PacketReader:
    """Splits a byte stream into ``(type, flags, body)`` packets, keeping a partial packet for the next feed."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buffer = self._buffer
        buffer += data
        packets: list[tuple[int, int, bytes]] = []
        pos, end = 0, len(buffer)
        while pos + 2 <= end:
            try:
                length, start = _read_varint(buffer, pos + 1)
            except IndexError:
                break
            if length > _MAX_PACKET:
                raise BrokerError(f"a {length}-byte packet from the broker exceeds {_MAX_PACKET}")
            if start + length > end:
                break
            first = buffer[pos]
            packets.append((first >> 4, first & 0x0F, bytes(buffer[start : start + length])))
            pos = start + length
        del buffer[:pos]
        return packets


# --- the connection ---------------------------------------------------------------------------------------------


class Subscription:
    """One connection holding one subscription (see the module docstring); every failure is a BrokerError."""

    def __init__(
        self,
        config: MqttConfig,
        topic_filter: str,
        clock: Callable[[], float] = time.monotonic,
        cancel: threading.Event | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._cancel = cancel or threading.Event()
        """Set from another thread to give up opening (a broker that drops SYNs or never answers)."""
        self._filter = topic_filter
        self._sock: socket.socket | None = None
        self._reader = PacketReader()
        self._held: list[tuple[int, int, bytes]] = []
        self._last_sent = 0.0
        self._ping_at: float | None = None
        self.session_present = False

    def open(self, timeout: float = 10.0) -> None:
        """Connect, wait for CONNACK, subscribe, wait for SUBACK (closed again when any of it fails)."""
        try:
            self._open(timeout)
        except BrokerError:
            self.close()
            raise

    def _open(self, timeout: float) -> None:
        c = self._config
        raw = self._connect(timeout)
        try:
            raw.settimeout(timeout)  # the TLS handshake and CONNECT; reads set their own
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = self._tls().wrap_socket(raw, server_hostname=c.host) if c.tls else raw
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise BrokerError(f"cannot connect to {c.host}:{c.port}: {exc}") from exc
        self.send(
            connect_packet(
                c.client_id,
                username=c.username,
                password=c.password,
                keepalive_s=c.keepalive_s,
                clean_start=False,
                session_expiry_s=c.session_expiry_s,
                receive_maximum=c.receive_maximum,
            )
        )
        _, _, body = self._expect(CONNACK, timeout)
        if len(body) < 2:
            raise BrokerError("malformed CONNACK from the broker")
        if body[1] != 0:
            raise BrokerError(f"the broker refused the connection (reason code 0x{body[1]:02x})")
        self.session_present = bool(body[0] & 0x01)
        self.send(subscribe_packet(1, self._filter))
        _, _, body = self._expect(SUBACK, timeout)
        if len(body) < 4 or body[-1] >= 0x80:
            raise BrokerError(f"the broker refused the subscription to {self._filter} (SUBACK {body[-1:].hex()})")

    def _connect(self, timeout: float) -> socket.socket:
        """A TCP connection, tried in slices of :data:`_OPEN_SLICE_S` until ``timeout`` or ``cancel``."""
        c = self._config
        deadline = self._clock() + timeout
        while True:
            try:
                return socket.create_connection((c.host, c.port), timeout=min(_OPEN_SLICE_S, timeout))
            except TimeoutError as exc:
                if self._cancel.is_set():
                    raise BrokerError("cancelled while connecting") from exc
                if self._clock() >= deadline:
                    raise BrokerError(f"cannot connect to {c.host}:{c.port}: no answer within {timeout:g} s") from exc
            except OSError as exc:
                raise BrokerError(f"cannot connect to {c.host}:{c.port}: {exc}") from exc

    def _tls(self) -> ssl.SSLContext:
        c = self._config
        context = ssl.create_default_context(cafile=None if c.ca_file is None else str(c.ca_file))
        if c.cert_file is not None:
            context.load_cert_chain(str(c.cert_file), None if c.key_file is None else str(c.key_file))
        return context

    def _expect(self, packet_type: int, timeout: float) -> tuple[int, int, bytes]:
        """The next packet of ``packet_type``; packets before and after it are kept for :meth:`receive`.

        A resumed session's messages may arrive before the SUBACK (even in the CONNACK's segment).
        """
        deadline = self._clock() + timeout
        while True:
            for i, packet in enumerate(self._held):
                if packet[0] == packet_type:
                    del self._held[i]
                    return packet
                if packet[0] == DISCONNECT_TYPE:
                    raise _disconnected(packet[2])
            if self._clock() > deadline:
                raise BrokerError(f"no answer from the broker within {timeout:g} s")
            if self._cancel.is_set():
                raise BrokerError("cancelled while waiting for the broker")
            self._held += self._read(max(0.01, min(_OPEN_SLICE_S, deadline - self._clock())))

    def _read(self, wait_s: float) -> list[tuple[int, int, bytes]]:
        sock = self._require()
        try:
            sock.settimeout(wait_s)
            data = sock.recv(_RECV_BYTES)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return []
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"connection to the broker lost: {exc}") from exc
        if not data:
            raise BrokerError("the broker closed the connection")
        self._ping_at = None
        return self._reader.feed(data)

    def receive(self, wait_s: float) -> list[Delivery]:
        """The messages that have arrived, waiting up to ``wait_s`` for some; keeps the connection alive."""
        self.keep_alive()
        packets, self._held = self._held + self._read(0.0 if self._held else wait_s), []
        if not packets and self._ping_at is not None and self._clock() - self._ping_at > self._config.keepalive_s:
            raise BrokerError(f"the broker did not answer a ping within {self._config.keepalive_s} s")
        deliveries = []
        for packet_type, flags, body in packets:
            if packet_type == PUBLISH:
                deliveries.append(parse_publish(flags, body))
            elif packet_type == DISCONNECT_TYPE:
                raise _disconnected(body)
            elif packet_type != PINGRESP_TYPE:
                raise BrokerError(f"unexpected MQTT packet type {packet_type} from the broker")
        return deliveries

    def keep_alive(self) -> None:
        """PINGREQ when nothing was sent for half the keep-alive (also while not receiving, e.g. between retries)."""
        now = self._clock()
        if now - self._last_sent > self._config.keepalive_s / 2:
            self.send(PINGREQ)
            if self._ping_at is None:
                self._ping_at = now

    def send(self, data: bytes) -> None:
        """Send ``data`` (whole packets) now."""
        try:
            self._require().sendall(data)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"connection to the broker lost: {exc}") from exc
        self._last_sent = self._clock()

    def close(self, linger_s: float = 1.0) -> None:
        """DISCONNECT (the session stays with the broker for ``session_expiry_s``) and close; never raises.

        The broker closes its end after a DISCONNECT; waiting for that (up to ``linger_s``) before closing ours
        matters: closing a socket with unread data resets the connection, and the broker may drop the last PUBACKs
        unread (the messages would come again: harmless, but a batch's worth of duplicates).
        """
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.settimeout(linger_s)
            sock.sendall(DISCONNECT)
            sock.shutdown(socket.SHUT_WR)
            deadline = self._clock() + linger_s
            while sock.recv(_RECV_BYTES) and self._clock() < deadline:
                pass
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise BrokerError("not connected")
        return self._sock


def _disconnected(body: bytes) -> BrokerError:
    return BrokerError(f"the broker disconnected (reason 0x{body[0] if body else 0:02x})")
