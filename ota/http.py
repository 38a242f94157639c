"""HTTP(S) transport for the updater: python-tuf's fetcher interface, plus ranged requests to resume a download.

Built on the standard library's ``urllib`` (system CAs, or ``ca_file``). Errors are python-tuf's download
errors (``DownloadHTTPError`` with the status, ``SlowRetrievalError`` past the deadline, ``DownloadError``
otherwise), which :mod:`ota.client` translates.

Every download opens through :func:`edge.http.open_url` with an overall deadline as well as the per-read
``timeout_s``: ``timeout_s`` plus its expected length at ``min_rate`` bytes/s, and never more than ``max_s``
(:meth:`TufFetcher.deadline_s`), so a mirror that trickles bytes (TUF's slow retrieval attack) cannot hold a
check; what it cut short is a ``SlowRetrievalError``.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import tempfile
import urllib.error
from collections.abc import Generator, Iterator
from http.client import HTTPResponse
from typing import IO

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

from edge.http import Deadline, DownloadLimits, open_url

__all__ = ["TufFetcher"]

_CHUNK = 64 * 1024


def _slow(url: str, deadline: Deadline) -> exceptions.SlowRetrievalError:
    return exceptions.SlowRetrievalError(f"{url}: {deadline.reason}")


class TufFetcher(FetcherInterface):
    """python-tuf's fetcher for the updater (not the capacity blob fetcher, :class:`edge.capacity.fetch.HttpFetcher`):
    downloads over HTTP or HTTPS; each read waits at most ``timeout_s``, each download at most
    :meth:`deadline_s` of its expected length."""

    def __init__(
        self, *, timeout_s: float = 30.0, ca_file: str = "", min_rate: int = 16384, max_s: float = 3600.0
    ) -> None:
        self._limits = DownloadLimits(timeout_s=timeout_s, min_rate=min_rate, max_s=max_s)
        self._context = ssl.create_default_context(cafile=ca_file or None)

    def deadline_s(self, expected: int) -> float:
        """The longest a download of ``expected`` bytes may take: ``timeout_s`` plus the bytes at ``min_rate``,
        at most ``max_s``."""
        return self._limits.deadline_s(expected)

    def _open(self, url: str, expected: int, start: int = 0) -> tuple[HTTPResponse, Deadline]:
        headers = {"Range": f"bytes={start}-"} if start else {}
        deadline = Deadline(self.deadline_s(expected))
        try:
            response = open_url(url, deadline, timeout_s=self._limits.timeout_s, context=self._context, headers=headers)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {exc.code}", exc.code) from exc
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise _slow(url, deadline) from exc
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        return response, deadline

    @staticmethod
    def _chunks(response: HTTPResponse, deadline: Deadline, url: str) -> Generator[bytes, None, None]:
        """The body as it arrives (each chunk what one read returned), ending with the deadline's error when the
        deadline cut it short."""
        try:
            with response:
                while chunk := response.read1(_CHUNK):
                    yield chunk
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise (
                _slow(url, deadline) if deadline.expired else exceptions.DownloadError(f"{url}: connection lost: {exc}")
            ) from exc
        finally:
            deadline.cancel()
        if deadline.expired:
            raise _slow(url, deadline)

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
