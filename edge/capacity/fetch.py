"""Fetching a job's bundle and input batch by hash, into a local cache.

A :class:`Fetcher` returns the bytes named by a sha256 digest; :class:`BlobCache` keeps verified blobs under
``<data_dir>/capacity/blobs/<sha256>`` (written atomically) and refuses anything whose hash differs from the
name the signed job gave (:class:`~edge.errors.JobRejected`). :class:`HttpFetcher` reads ``<base>/<sha256>`` from
the relay; :class:`DirectoryFetcher` reads ``<dir>/<sha256>`` (tests, and boxes given jobs on removable media).

:class:`HttpFetcher` downloads within an overall deadline (:mod:`edge.http`, the one the OTA updater uses):
``timeout_s`` plus the most the blob may hold (or the length the server states, when less) at ``min_rate``
bytes/s, never more than ``max_s`` (``[capacity] min_download_rate``, ``max_download_s``). A server that trickles
bytes is cut off there and the job refused with that reason, instead of holding the job worker for as long as it
likes; the agent carries on with the next job.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
from http.client import HTTPResponse
from pathlib import Path
from typing import Protocol

from edge.errors import JobRejected
from edge.http import Deadline, DownloadLimits, open_url
from runtime.durable import atomic_write_bytes

__all__ = ["BlobCache", "DirectoryFetcher", "Fetcher", "HttpFetcher"]

_CHUNK = 64 * 1024


class Fetcher(Protocol):
    """Where job blobs come from."""

    def fetch(self, digest: str, max_bytes: int) -> bytes:
        """The blob named ``digest`` (unverified); :class:`JobRejected` when it cannot be had or is too large."""
        ...


class HttpFetcher:
    """``GET <base_url>/<digest>`` from the relay: each read waits at most ``timeout_s``, the whole download at most
    :meth:`~edge.http.DownloadLimits.deadline_s` of ``max_bytes`` (of the stated length, when less)."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, *, min_rate: int = 16384, max_s: float = 1800.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.limits = DownloadLimits(timeout_s=timeout_s, min_rate=min_rate, max_s=max_s)

    def fetch(self, digest: str, max_bytes: int) -> bytes:
        deadline = Deadline(self.limits.deadline_s(max_bytes))
        try:
            with deadline, open_url(f"{self.base_url}/{digest}", deadline, timeout_s=self.limits.timeout_s) as response:
                return self._body(response, deadline, digest, max_bytes)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()
            if deadline.expired:
                raise _slow(digest, deadline) from exc
            raise JobRejected(f"cannot fetch blob {digest[:16]}: {exc}") from exc

    def _body(self, response: HTTPResponse, deadline: Deadline, digest: str, max_bytes: int) -> bytes:
        """The body, at most ``max_bytes``; the deadline brought forward to the length the server states."""
        stated = response.headers.get("Content-Length", "")
        if stated.isascii() and stated.isdigit():
            if int(stated) > max_bytes:
                raise _too_large(digest, max_bytes)
            deadline.tighten(self.limits.deadline_s(int(stated)))
        chunks: list[bytes] = []
        received = 0
        while chunk := response.read1(_CHUNK):
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(digest, max_bytes)
            chunks.append(chunk)
        if deadline.expired:  # the connection was shut down: what ended the body was the deadline
            raise _slow(digest, deadline)
        return b"".join(chunks)


def _slow(digest: str, deadline: Deadline) -> JobRejected:
    return JobRejected(f"cannot fetch blob {digest[:16]}: {deadline.reason} (slow retrieval)")


def _too_large(digest: str, max_bytes: int) -> JobRejected:
    return JobRejected(f"blob {digest[:16]} is larger than {max_bytes} bytes")


class DirectoryFetcher:
    """Blobs as files named by their digest in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256 digest (preparing media or a test's blob store); return the digest."""
        digest = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(self.directory / digest, data)
        return digest

    def fetch(self, digest: str, max_bytes: int) -> bytes:
        path = self.directory / digest
        try:
            if path.stat().st_size > max_bytes:
                raise _too_large(digest, max_bytes)
            return path.read_bytes()
        except OSError as exc:
            raise JobRejected(f"cannot read blob {digest[:16]}: {exc.strerror}") from exc


class BlobCache:
    """Verified blobs by sha256 under one directory."""

    def __init__(self, directory: Path, fetcher: Fetcher) -> None:
        self.directory = directory
        self.fetcher = fetcher

    def get(self, digest: str, max_bytes: int) -> Path:
        """The path of the verified blob ``digest``, fetched first when not cached."""
        path = self.directory / digest
        if path.exists():
            return path
        data = self.fetcher.fetch(digest, max_bytes)
        if hashlib.sha256(data).hexdigest() != digest:
            raise JobRejected(f"blob {digest[:16]}: content does not match its sha256")
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return path
