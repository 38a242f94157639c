"""Fetching a job's bundle and input batch by hash, into a local cache.

A :class:`Fetcher` returns the bytes named by a sha256 digest; :class:`BlobCache` keeps verified blobs under
``<data_dir>/capacity/blobs/<sha256>`` (written atomically) and refuses anything whose hash differs from the
name the signed job gave (:class:`~edge.errors.JobRejected`). :class:`HttpFetcher` reads ``<base>/<sha256>`` from
the relay; :class:`DirectoryFetcher` reads ``<dir>/<sha256>`` (tests, and boxes given jobs on removable media).
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from edge.durable import atomic_write_bytes
from edge.errors import JobRejected

__all__ = ["BlobCache", "DirectoryFetcher", "Fetcher", "HttpFetcher"]


class Fetcher(Protocol):
    """Where job blobs come from."""

    def fetch(self, digest: str, max_bytes: int) -> bytes:
        """The blob named ``digest`` (unverified); :class:`JobRejected` when it cannot be had or is too large."""
        ...


class HttpFetcher:
    """``GET <base_url>/<digest>`` from the relay."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def fetch(self, digest: str, max_bytes: int) -> bytes:
        try:
            with urllib.request.urlopen(f"{self.base_url}/{digest}", timeout=self.timeout_s) as response:
                data: bytes = response.read(max_bytes + 1)
        except (urllib.error.URLError, OSError) as exc:
            raise JobRejected(f"cannot fetch blob {digest[:16]}: {exc}") from exc
        if len(data) > max_bytes:
            raise JobRejected(f"blob {digest[:16]} is larger than {max_bytes} bytes")
        return data


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
                raise JobRejected(f"blob {digest[:16]} is larger than {max_bytes} bytes")
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
