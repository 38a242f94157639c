"""HTTP(S) downloads with an overall deadline: every download the product makes opens through :func:`open_url`.

A per-read timeout alone does not bound a download: a server that trickles a byte now and then (TUF's slow
retrieval attack) restarts it with each byte and holds the download for as long as it likes. So each download
also has a :class:`Deadline`, ``timeout_s`` plus its expected length at ``min_rate`` bytes/s and never more than
``max_s`` (:meth:`DownloadLimits.deadline_s`). A timer shuts the connection down when the time is up, watched from
the moment the TCP connection exists, so a slow TLS handshake, status line, header or body all end there: the
read in progress fails or sees the end of the stream, and the caller, finding :attr:`Deadline.expired`, raises
its own package's error with :attr:`Deadline.reason` (``ota.http``: ``SlowRetrievalError``;
``edge.capacity.fetch``: ``JobRejected``).

This module raises no error of its own: what ``urllib`` raises passes through, for the caller to translate at its
boundary. URLs other than ``http``/``https`` (``file:``, tests and removable media) open as ``urllib`` opens them.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.client import HTTPResponse
from types import TracebackType
from typing import Any

import edge

__all__ = ["Deadline", "DownloadLimits", "open_url"]


@dataclass(frozen=True)
class DownloadLimits:
    """How long a download may take: each read at most ``timeout_s``, the whole at least ``min_rate`` bytes/s of
    its expected length and at most ``max_s``."""

    timeout_s: float = 30.0
    min_rate: int = 16384
    max_s: float = 3600.0

    def deadline_s(self, expected: int) -> float:
        """The longest a download of ``expected`` bytes may take: ``timeout_s`` plus the bytes at ``min_rate``, at
        most ``max_s``."""
        return min(self.max_s, self.timeout_s + expected / self.min_rate)


class Deadline:
    """Shuts down every connection of one download when ``seconds`` have passed since it started (a context
    manager: leaving it is :meth:`cancel`).

    It holds a duplicate of each socket's descriptor (``shutdown`` acts on the connection, whichever descriptor
    names it), so a socket that TLS has since wrapped into a new object is reached as well.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._started = time.monotonic()
        self._done = False
        self._watched: list[socket.socket] = []
        self._mutex = threading.Lock()
        self._timer = self._start_timer(seconds)

    def _start_timer(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self._end, args=(True,))
        timer.daemon = True
        timer.start()
        return timer

    @property
    def reason(self) -> str:
        """What to say when it expired."""
        return f"not complete within its deadline of {self.seconds:g} s"

    def create_connection(self, *args: Any, **kwargs: Any) -> socket.socket:
        """``socket.create_connection``, the new connection watched (what the connections below connect with)."""
        sock = socket.create_connection(*args, **kwargs)
        with self._mutex:
            if self.expired:
                sock.shutdown(socket.SHUT_RDWR)
            elif not self._done:
                self._watched.append(sock.dup())
        return sock

    def tighten(self, seconds: float) -> None:
        """Bring the deadline forward to ``seconds`` after the start, once the length is known (a ``Content-Length``
        below the most the caller allowed for); never later than it was."""
        with self._mutex:
            if self._done or seconds >= self.seconds:
                return
            self._timer.cancel()
            self.seconds = seconds
            self._timer = self._start_timer(max(0.0, seconds - (time.monotonic() - self._started)))

    def _end(self, expired: bool) -> None:
        with self._mutex:
            if self._done:
                return
            self._done, self.expired = True, expired
            for sock in self._watched:
                if expired:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._watched.clear()

    def cancel(self) -> None:
        """The download is over (whatever became of it): stop the timer, let go of the connections."""
        with self._mutex:
            timer = self._timer
        timer.cancel()
        self._end(False)

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.cancel()


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = deadline.create_connection


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = deadline.create_connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext | None, deadline: Deadline) -> None:
        super().__init__(context=context)
        self._tls = context
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._deadline), req, context=self._tls)


def open_url(
    url: str,
    deadline: Deadline,
    *,
    timeout_s: float,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> HTTPResponse:
    """``GET url`` (as ``btt-edge/<version>``), its connections watched by ``deadline``, each read waiting at most
    ``timeout_s``; ``context`` for ``https`` (None: the system's CAs). What ``urllib`` raises passes through, the
    deadline cancelled: a caller that finds ``deadline.expired`` reports :attr:`Deadline.reason` instead."""
    request = urllib.request.Request(url, headers={"User-Agent": f"btt-edge/{edge.__version__}", **(headers or {})})
    opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(context, deadline))
    try:
        response: HTTPResponse = opener.open(request, timeout=timeout_s)
    except BaseException:
        deadline.cancel()
        raise
    return response
