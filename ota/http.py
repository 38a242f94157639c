"""HTTP(S) transport for the updater: python-tuf's fetcher interface, plus ranged requests to resume a download.

Built on the standard library's ``urllib`` (system CAs, or ``ca_file``). Errors are python-tuf's download
errors (``DownloadHTTPError`` with the status, ``SlowRetrievalError`` past the deadline, ``DownloadError``
otherwise), which :mod:`ota.client` translates.

Every download has an overall deadline as well as the per-read ``timeout_s``: ``timeout_s`` plus its expected
length at ``min_rate`` bytes/s, and never more than ``max_s`` (:meth:`HttpFetcher.deadline_s`). A server that
trickles a byte now and then (TUF's slow retrieval attack) would otherwise hold a check for as long as it likes,
since each byte restarts the per-read timeout. :class:`_Deadline` enforces it: a timer shuts the connection
down when the time is up, watched from the moment the TCP connection exists, so a slow TLS handshake, status line,
header or body all end there.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from http.client import HTTPResponse
from typing import IO, Any

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

import edge

__all__ = ["HttpFetcher"]

_CHUNK = 64 * 1024


class _Deadline:
    """Shuts down every connection of one download when ``seconds`` have passed since it started.

    It holds a duplicate of each socket's descriptor (``shutdown`` acts on the connection, whichever descriptor
    names it), so a socket that TLS has since wrapped into a new object is reached as well.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._done = False
        self._watched: list[socket.socket] = []
        self._mutex = threading.Lock()
        self._timer = threading.Timer(seconds, self._end, args=(True,))
        self._timer.daemon = True
        self._timer.start()

    def create_connection(self, *args: Any, **kwargs: Any) -> socket.socket:
        """``socket.create_connection``, the new connection watched (what the connections below connect with)."""
        sock = socket.create_connection(*args, **kwargs)
        with self._mutex:
            if self.expired:
                sock.shutdown(socket.SHUT_RDWR)
            elif not self._done:
                self._watched.append(sock.dup())
        return sock

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
        self._timer.cancel()
        self._end(False)

    def error(self, url: str) -> exceptions.SlowRetrievalError:
        return exceptions.SlowRetrievalError(f"{url}: not complete within its deadline of {self.seconds:.0f} s")


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = deadline.create_connection


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = deadline.create_connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, deadline: _Deadline) -> None:
        super().__init__(context=context)
        self._tls = context
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._deadline), req, context=self._tls)


class HttpFetcher(FetcherInterface):
    """Downloads over HTTP or HTTPS; each read waits at most ``timeout_s``, each download at most
    :meth:`deadline_s` of its expected length."""

    def __init__(
        self, *, timeout_s: float = 30.0, ca_file: str = "", min_rate: int = 16384, max_s: float = 3600.0
    ) -> None:
        self._timeout = timeout_s
        self._min_rate = min_rate
        self._max_s = max_s
        self._context = ssl.create_default_context(cafile=ca_file or None)

    def deadline_s(self, expected: int) -> float:
        """The longest a download of ``expected`` bytes may take: ``timeout_s`` plus the bytes at ``min_rate``,
        at most ``max_s``."""
        return min(self._max_s, self._timeout + expected / self._min_rate)

    def _open(self, url: str, expected: int, start: int = 0) -> tuple[HTTPResponse, _Deadline]:
        headers = {"User-Agent": f"btt-edge/{edge.__version__}"}
        if start:
            headers["Range"] = f"bytes={start}-"
        request = urllib.request.Request(url, headers=headers)
        deadline = _Deadline(self.deadline_s(expected))
        opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(self._context, deadline))
        try:
            response: HTTPResponse = opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            deadline.cancel()
            exc.close()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {exc.code}", exc.code) from exc
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            deadline.cancel()
            if deadline.expired:
                raise deadline.error(url) from exc
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        return response, deadline

    @staticmethod
    def _chunks(response: HTTPResponse, deadline: _Deadline, url: str) -> Generator[bytes, None, None]:
        """The body as it arrives (each chunk what one read returned), ending with the deadline's error when the
        deadline cut it short."""
        try:
            with response:
                while chunk := response.read1(_CHUNK):
                    yield chunk
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise (
                deadline.error(url) if deadline.expired else exceptions.DownloadError(f"{url}: connection lost: {exc}")
            ) from exc
        finally:
            deadline.cancel()
        if deadline.expired:
            raise deadline.error(url)

    def _fetch(self, url: str) -> Iterator[bytes]:  # pragma: no cover - download_file and fetch_from are used
        return self._chunks(*self._open(url, 0), url)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """python-tuf's bounded download (its deadline that of ``max_length`` bytes), closing the connection at
        once when the server sends too much (the base class leaves that to the garbage collector)."""
        received = 0
        with (
            tempfile.TemporaryFile() as temp,
            contextlib.closing(self._chunks(*self._open(url, max_length), url)) as chunks,
        ):
            for chunk in chunks:
                received += len(chunk)
                if received > max_length:
                    raise exceptions.DownloadLengthMismatchError(f"{url}: more than the maximum {max_length} bytes")
                temp.write(chunk)
            temp.seek(0)
            yield temp

    def fetch_from(self, url: str, start: int, length: int) -> tuple[bool, Generator[bytes, None, None]]:
        """The bytes of ``url`` (``length`` in all) from offset ``start``: ``(True, rest)`` when the server honoured
        the range, ``(False, whole file)`` when it sent everything again; within the deadline of ``length``."""
        response, deadline = self._open(url, length, start)
        return (start > 0 and response.status == 206), self._chunks(response, deadline, url)
