"""The reliable link: sequence numbers, ACK/NAK, retransmission, duplicate suppression, version handshake.

One :class:`Link` runs each end of the serial line (the agent's and the unit's) over a
:class:`~firmware_bridge.transport.SerialTransport`, with two threads:

* the reader opens the port (again, with backoff, after an unplug), decodes frames, ACKs every DATA frame
  (duplicates too, since the first ACK may have been lost), delivers each message once, NAKs garbled
  frames so the sender retransmits at once, and sends :class:`~firmware_bridge.messages.Hello` until the
  peer answers (again if the peer falls silent for ``peer_timeout_s``);
* the writer sends queued messages stop-and-wait: one DATA frame outstanding, retransmitted after
  ``ack_timeout_s`` (or on a NAK) up to ``max_retries`` times; a message never acknowledged goes back to the
  head of the queue and the link re-handshakes.

Each opening of the port starts a new *session* (a random byte in every frame), so the peer knows our
sequence numbers started over. Duplicates are recognised by sequence number within the peer's session
(the last ``DEDUP_WINDOW`` numbers); frames out of order are still delivered once, and counted. Messages
are self-contained and exposure reports idempotent, so the application layer's resynchronisation
(``GetExposureLog``) closes any gap a crash leaves. Garbled frames, duplicates, unknown messages and the
rest are counted in :class:`LinkStats`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from firmware_bridge.errors import MessageError, SerialLinkError, TransportError, UnknownMessage, UnsupportedVersion
from firmware_bridge.framing import Frame, FrameDecoder, FrameKind, encode_frame
from firmware_bridge.messages import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Hello,
    Message,
    decode_message,
    encode_message,
    negotiate,
)
from firmware_bridge.transport import SerialTransport
from runtime.backoff import Backoff, no_jitter

__all__ = ["DEDUP_WINDOW", "Link", "LinkState", "LinkStats", "SerialLinkSettings"]

log = logging.getLogger("firmware_bridge.link")

DEDUP_WINDOW = 256
"""How many of the peer's recent sequence numbers are remembered to suppress duplicates."""

_M = TypeVar("_M", bound=Message)

LinkState = Literal["closed", "connecting", "connected", "incompatible"]


@dataclass(frozen=True)
class SerialLinkSettings:
    """Timing of one end of the serial link (the agent's come from ``[unit]`` in the agent configuration)."""

    ack_timeout_s: float = 0.25
    max_retries: int = 8
    hello_interval_s: float = 1.0
    peer_timeout_s: float = 0.0
    """No frame from the peer for this long: re-handshake. 0 = never (a unit reports whether heard or not)."""
    reopen_initial_s: float = 0.5
    reopen_max_s: float = 10.0
    max_queue: int = 10_000
    """Queued outgoing messages beyond this drop the oldest (counted in ``queue_overflows``)."""


@dataclass
class LinkStats:
    """Counters the agent reports (status and metrics)."""

    frames_sent: int = 0
    frames_received: int = 0
    retransmits: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    garbled: int = 0
    naks_sent: int = 0
    naks_received: int = 0
    send_failures: int = 0
    unknown_messages: int = 0
    bad_messages: int = 0
    queue_overflows: int = 0
    reconnects: int = 0
    handshakes: int = 0
    callback_errors: int = 0
    internal_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return dataclasses.asdict(self)


class Link:
    """One end of the reliable link. ``on_message`` and ``on_connected`` run on the reader thread."""

    def __init__(
        self,
        transport: SerialTransport,
        *,
        on_message: Callable[[Message], None],
        on_connected: Callable[[Hello], None] | None = None,
        capabilities: int = 0,
        settings: SerialLinkSettings | None = None,
        max_version: int = PROTOCOL_VERSION,
        min_version: int = MIN_PROTOCOL_VERSION,
        name: str = "link",
    ) -> None:
        self.transport = transport
        self.settings = settings or SerialLinkSettings()
        self.name = name
        self.stats = LinkStats()
        self.capabilities = capabilities
        self.max_version = max_version
        self.min_version = min_version
        self.state: LinkState = "closed"
        self.version: int | None = None
        self.peer: Hello | None = None
        self.error: str | None = None
        """Why the link is not connected (last transport or handshake error), for status displays."""
        self._on_message = on_message
        self._on_connected = on_connected
        self._decoder = FrameDecoder()
        self._rng = random.Random()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._queue: collections.deque[tuple[Message, Frame | None]] = collections.deque()
        """Messages to send; a message sent but never acknowledged keeps its frame (and sequence number)."""
        self._session = 0
        self._nonce = 0
        self._seq = 0
        self._outstanding: int | None = None
        self._acked = False
        self._nak_received = False
        self._peer_session: int | None = None
        self._recent: collections.deque[int] = collections.deque(maxlen=DEDUP_WINDOW)
        self._recent_set: set[int] = set()
        self._expected: int | None = None
        self._last_rx = 0.0
        self._last_hello = 0.0
        self._backoff = Backoff(self.settings.reopen_initial_s, self.settings.reopen_max_s, no_jitter)
        """Delay before reopening the port; reset by a successful handshake."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- public ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader and writer threads (the port is opened by the reader, with backoff)."""
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._reader, name=f"{self.name}-reader", daemon=True),
            threading.Thread(target=self._writer, name=f"{self.name}-writer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads and close the port. Queued messages are dropped."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        self.transport.close()
        self._set_state("closed")

    def send(self, message: Message) -> None:
        """Queue ``message`` for reliable delivery; returns at once."""
        if self._stop.is_set():
            raise SerialLinkError(f"{self.name} is stopped")
        encode_message(message)  # fail here, in the caller, on a message that cannot be encoded
        with self._cond:
            if len(self._queue) >= self.settings.max_queue:
                self._queue.popleft()
                self.stats.queue_overflows += 1
            self._queue.append((message, None))
            self._cond.notify_all()

    @property
    def garbled_by_reason(self) -> dict[str, int]:
        """Garbled frames dropped so far, by reason."""
        return dict(self._decoder.drops)

    def wait_connected(self, timeout: float) -> bool:
        """Block until the handshake completed (or ``timeout``); True if connected."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.state != "connected":
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(remaining)
            return True

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued message is acknowledged (or ``timeout``); True if idle."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._outstanding is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # --- state ----------------------------------------------------------------------------------------------

    def _set_state(self, state: LinkState) -> None:
        with self._cond:
            if self.state != state:
                log.debug("%s: %s -> %s", self.name, self.state, state)
            self.state = state
            self._cond.notify_all()

    def _hello(self, *, reply: bool) -> Hello:
        return Hello(self.max_version, self.min_version, self.capabilities, self._nonce, reply)

    def _write(self, frame: Frame) -> None:
        data = encode_frame(frame)
        with self._write_lock:
            self.transport.write(data)
        if frame.kind is FrameKind.DATA:
            self.stats.frames_sent += 1

    def _send_now(self, message: Message) -> None:
        """Send one DATA frame without waiting for its ACK (handshake messages, repeated until answered)."""
        with self._cond:
            seq = self._next_seq()
        self._write(Frame(FrameKind.DATA, self._session, seq, encode_message(message)))

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        return seq

    def _lost_port(self, exc: TransportError) -> None:
        # During a stop the port failing (the peer closed its end: pyserial's "device reports readiness to read
        # but returned no data") is the close that was asked for, not an error.
        if not self._stop.is_set():
            self.error = str(exc)
        self.transport.close()
        self._set_state("closed")

    # --- reader ---------------------------------------------------------------------------------------------

    def _open(self) -> bool:
        try:
            self.transport.open()
        except TransportError as exc:
            self.error = str(exc)
            self._stop.wait(self._backoff.next_delay())
            return False
        with self._cond:
            previous = self._session
            while self._session == previous:
                self._session = self._rng.randrange(256)
            self._nonce = self._rng.randrange(1, 2**31)
            self._seq = 0
            self._peer_session = None
            self._expected = None
        self._decoder.reset()
        self.stats.reconnects += 1
        self._set_state("connecting")
        self._last_rx = time.monotonic()
        self._last_hello = 0.0
        return True

    def _reader(self) -> None:
        while not self._stop.is_set():
            try:
                self._read_once()
            except TransportError as exc:
                self._lost_port(exc)
                self._stop.wait(self._backoff.next_delay())  # a port that opens but then fails must not spin
            except Exception:  # a bug here must not silence the unit: log it, count it, carry on
                self.stats.internal_errors += 1
                log.exception("%s: reader failed", self.name)
                self._stop.wait(0.1)

    def _read_once(self) -> None:
        if self.state == "closed" and not self._open():
            return
        self._housekeeping()
        data = self.transport.read()
        if not data:
            return
        before = self._decoder.dropped
        frames = self._decoder.feed(data)
        garbled = self._decoder.dropped - before
        if garbled:
            self.stats.garbled += garbled
            self._send_nak()
        for frame in frames:
            self._last_rx = time.monotonic()
            self._handle(frame)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        timeout = self.settings.peer_timeout_s
        if self.state == "connected" and timeout > 0 and now - self._last_rx > timeout:
            self.error = f"no frame from the peer for {timeout:g} s"
            self._set_state("connecting")
        if self.state != "connected" and now - self._last_hello >= self.settings.hello_interval_s:
            self._last_hello = now
            self._send_now(self._hello(reply=False))

    def _send_nak(self) -> None:
        if self._peer_session is None or self._expected is None:
            return
        self._write(Frame(FrameKind.NAK, self._peer_session, self._expected))
        self.stats.naks_sent += 1

    def _handle(self, frame: Frame) -> None:
        if frame.kind is FrameKind.ACK or frame.kind is FrameKind.NAK:
            with self._cond:
                if frame.session == self._session and frame.seq == self._outstanding:
                    if frame.kind is FrameKind.ACK:
                        self._acked = True
                    else:
                        self._nak_received = True
                        self.stats.naks_received += 1
                    self._cond.notify_all()
            return
        self.stats.frames_received += 1
        self._write(Frame(FrameKind.ACK, frame.session, frame.seq))
        if frame.session != self._peer_session:
            self._peer_session = frame.session
            self._recent.clear()
            self._recent_set.clear()
            self._expected = None
        if frame.seq in self._recent_set:
            self.stats.duplicates += 1
            return
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(frame.seq)
        self._recent_set.add(frame.seq)
        if self._expected is not None and frame.seq != self._expected:
            self.stats.out_of_order += 1
        self._expected = (frame.seq + 1) & 0xFFFF
        try:
            message = decode_message(frame.payload)
        except UnknownMessage as exc:
            self.stats.unknown_messages += 1
            log.debug("%s: skipped %s", self.name, exc)
            return
        except MessageError as exc:
            self.stats.bad_messages += 1
            log.warning("%s: bad message dropped: %s", self.name, exc)
            return
        if isinstance(message, Hello):
            self._handshake(message)
        elif self.state != "incompatible":
            self._call(self._on_message, message)

    def _call(self, callback: Callable[[_M], None], message: _M) -> None:
        """Run an application callback; its bug must not stop the link (the exposure log resync recovers)."""
        try:
            callback(message)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("%s: handling %s failed", self.name, type(message).__name__)

    def _handshake(self, peer: Hello) -> None:
        try:
            version = negotiate(self._hello(reply=False), peer)
        except UnsupportedVersion as exc:
            self.error = str(exc)
            self.peer = peer
            self._set_state("incompatible")
            log.warning("%s: %s", self.name, exc)
            return
        if not peer.reply:
            self._send_now(self._hello(reply=True))
        self.version, self.peer, self.error = version, peer, None
        self._backoff.reset()
        self.stats.handshakes += 1
        self._set_state("connected")
        if self._on_connected is not None:
            self._call(self._on_connected, peer)

    # --- writer ---------------------------------------------------------------------------------------------

    def _writer(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set() and not (self._queue and self.state == "connected"):
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    return
                message, frame = self._queue.popleft()
                if frame is None or frame.session != self._session:
                    frame = Frame(FrameKind.DATA, self._session, self._next_seq(), encode_message(message))
                self._outstanding = frame.seq
            delivered = self._deliver(frame)
            with self._cond:
                self._outstanding = None
                if not delivered:
                    # Same session: resend under the same number, so a peer that got it (and only its ACK was
                    # lost) recognises the duplicate. A new session resets the peer's window; exposure ids
                    # make the application idempotent across that.
                    self._queue.appendleft((message, frame))
                self._cond.notify_all()

    def _deliver(self, frame: Frame) -> bool:
        """Send ``frame`` until ACKed; False if it never was (the link then re-handshakes)."""
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                self.stats.retransmits += 1
            with self._cond:
                self._acked = self._nak_received = False
            try:
                self._write(frame)
            except TransportError as exc:
                self._lost_port(exc)
                return False
            deadline = time.monotonic() + self.settings.ack_timeout_s
            with self._cond:
                while not (self._acked or self._nak_received or self._stop.is_set()):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.state == "closed" or frame.session != self._session:
                        break
                    self._cond.wait(remaining)
                if self._acked:
                    return True
                if self._stop.is_set() or self.state == "closed" or frame.session != self._session:
                    return False
        self.stats.send_failures += 1
        self.error = f"frame {frame.seq} not acknowledged after {self.settings.max_retries} retries"
        self._set_state("connecting")
        return False
