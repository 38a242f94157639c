"""HTTP(S) transport for the updater: python-tuf's fetcher interface, plus ranged requests to resume a download.

Built on the standard library's ``urllib`` (system CAs, or ``ca_file``). Errors are python-tuf's download
errors (``DownloadHTTPError`` with the status, ``DownloadError`` otherwise), which :mod:`ota.client` translates.
"""

from __future__ import annotations

import contextlib
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from http.client import HTTPResponse
from typing import IO

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

import edge

__all__ = ["HttpFetcher"]

_CHUNK = 64 * 1024


class HttpFetcher(FetcherInterface):
    """Downloads over HTTP or HTTPS; each read waits at most ``timeout_s``."""

    def __init__(self, *, timeout_s: float = 30.0, ca_file: str = "") -> None:
        self._timeout = timeout_s
        self._context = ssl.create_default_context(cafile=ca_file or None)

    def _open(self, url: str, start: int = 0) -> HTTPResponse:
        headers = {"User-Agent": f"btt-edge/{edge.__version__}"}
        if start:
            headers["Range"] = f"bytes={start}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response: HTTPResponse = urllib.request.urlopen(request, timeout=self._timeout, context=self._context)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {exc.code}", exc.code) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        return response

    @staticmethod
    def _chunks(response: HTTPResponse, url: str) -> Generator[bytes, None, None]:
        try:
            with response:
                while chunk := response.read(_CHUNK):
                    yield chunk
        except (OSError, ValueError) as exc:
            raise exceptions.DownloadError(f"{url}: connection lost: {exc}") from exc

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._chunks(self._open(url), url)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """python-tuf's bounded download, closing the connection at once when the server sends too much (the base
        class leaves that to the garbage collector)."""
        received = 0
        with tempfile.TemporaryFile() as temp, contextlib.closing(self._chunks(self._open(url), url)) as chunks:
            for chunk in chunks:
                received += len(chunk)
                if received > max_length:
                    raise exceptions.DownloadLengthMismatchError(f"{url}: more than the maximum {max_length} bytes")
                temp.write(chunk)
            temp.seek(0)
            yield temp

    def fetch_from(self, url: str, start: int) -> tuple[bool, Generator[bytes, None, None]]:
        """The bytes of ``url`` from offset ``start``: ``(True, rest)`` when the server honoured the range,
        ``(False, whole file)`` when it sent everything again."""
        response = self._open(url, start)
        return (start > 0 and response.status == 206), self._chunks(response, url)
