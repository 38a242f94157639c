"""A faster receive path for pynetdicom associations: fewer copies of the data, fewer system calls.

Profiling the SCP receiving panoramic images from ``storescu`` (128 KiB PDUs, about 63 per 8 MB image) showed
pynetdicom reading each PDU with 4 KiB ``recv`` calls and then copying every P-DATA-TF five times in Python
(joining the reads, ``bytes()`` for ``EVT_DATA_RECV``, slicing off the PDU header, slicing each PDV item, and
slicing off each fragment's control byte) before the data reached the spool file. :func:`tune` makes an accepted
association:

* read each PDU with ``recv_into`` into one buffer (:class:`ReceiveIntoSocket`);
* poll faster while data flows (:class:`ZeroCopyDUL`);
* decode P-DATA-TF PDUs into PDV items that are ``memoryview`` slices of that buffer
  (:class:`ZeroCopyDUL`), so the control byte is dropped and the fragment written to the spool file without
  any copy (pynetdicom's DIMSE decoder only indexes and slices the fragment, which a view supports). Every other
  PDU type is decoded by pynetdicom as before.

It changes one thing visible to handlers: ``EVT_DATA_RECV`` (the raw bytes of each PDU) is triggered for a
P-DATA-TF only when a handler is bound to it, since building those bytes is one of the copies. Both classes
subclass pynetdicom 3.0's ``AssociationSocket`` and ``DULServiceProvider``; :func:`tune` swaps the classes of
the association's objects before its threads start (on ``EVT_CONN_OPEN``).
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.transport import AssociationSocket

__all__ = ["BUSY_DELAY_S", "BUSY_WINDOW_S", "ReceiveIntoSocket", "ZeroCopyDUL", "pdv_items", "tune"]

log = logging.getLogger("edge.ingest")

BUSY_WINDOW_S = 0.05
BUSY_DELAY_S = 0.0001
_P_DATA_TF = 0x04
_KNOWN_PDU_TYPES = range(0x01, 0x08)


class ReceiveIntoSocket(AssociationSocket):
    """pynetdicom's socket, reading what is asked with ``recv_into`` one buffer instead of 4 KiB reads."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only if the peer closes the connection), as pynetdicom's ``recv`` does."""
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            n = sock.recv_into(view[received:], nr_bytes - received)
            if not n:
                break
            received += n
        view.release()
        if received < nr_bytes:
            del buffer[received:]
        return buffer


def pdv_items(body: bytearray) -> list[PresentationDataValueItem]:
    """The PDV items of a P-DATA-TF PDU's body (after its 6-byte header), as views of ``body``."""
    view = memoryview(body)
    items = []
    offset = 0
    while offset + 5 <= len(body):
        (length,) = struct.unpack_from(">L", body, offset)
        item = PresentationDataValueItem()
        item.presentation_context_id = body[offset + 4]
        # declared bytes; pynetdicom's DIMSE decoder only indexes and slices it, which a view supports
        item.presentation_data_value = cast(bytes, view[offset + 5 : offset + 4 + length])
        items.append(item)
        offset += 4 + length
    return items


class ZeroCopyDUL(DULServiceProvider):
    """pynetdicom's DUL, decoding P-DATA-TF PDUs without copying their data, and polling faster while busy.

    pynetdicom's DUL thread sleeps ``_run_loop_delay`` (1 ms) whenever it finds nothing to do, which adds up to a
    millisecond to every hand-over (the dataset complete, our response queued, the sender's next request). For
    :data:`BUSY_WINDOW_S` after a PDU arrives it sleeps :data:`BUSY_DELAY_S` instead; an idle association goes
    back to pynetdicom's delay and costs no more CPU than before.
    """

    @property
    def _run_loop_delay(self) -> float:
        if time.monotonic() - self.__dict__.get("_last_pdu_at", 0.0) < BUSY_WINDOW_S:
            return BUSY_DELAY_S
        return float(self.__dict__.get("_idle_delay", 0.001))

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        self.__dict__["_idle_delay"] = value

    def _read_pdu_data(self) -> None:
        self.__dict__["_last_pdu_at"] = time.monotonic()
        sock = cast(AssociationSocket, self.socket)
        try:
            header = sock.recv(6)
            if len(header) != 6:
                self.event_queue.put("Evt17")  # transport connection closed
                return
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in _KNOWN_PDU_TYPES:
                log.error("unknown PDU type 0x%02X received", pdu_type)
                self.event_queue.put("Evt19")  # unrecognised PDU
                return
            body = sock.recv(length)
        except OSError:  # includes TimeoutError
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            self.event_queue.put("Evt17")
            return
        if pdu_type != _P_DATA_TF:
            self._decode_other(header + body)
            return
        if self.assoc.get_handlers(evt.EVT_DATA_RECV):
            evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": bytes(header + body)})
        pdu = P_DATA_TF()
        pdu.presentation_data_value_items = pdv_items(body)
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        self.event_queue.put("Evt10")  # P-DATA-TF received
        self._recv_pdu.put(pdu)

    def _decode_other(self, bytestream: bytearray) -> None:
        try:
            pdu, event = self._decode_pdu(bytestream)
        except Exception:  # what pynetdicom does with an undecodable PDU: Evt19, logged
            log.exception("unable to decode a received PDU")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)


def tune(assoc: Any) -> None:
    """Give a just-accepted association (``EVT_CONN_OPEN``) the faster receive path and ``TCP_NODELAY``.

    The receive buffer is left to Linux's autotuning (up to ``net.ipv4.tcp_rmem``), which grows past what a
    fixed ``SO_RCVBUF`` may (``net.core.rmem_max``); setting one would switch autotuning off.
    """
    assoc.dul.socket.__class__ = ReceiveIntoSocket
    assoc.dul.__class__ = ZeroCopyDUL
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
