"""The device's view of the update repository: verified offers and verified, resumable bundle downloads.

Trust is python-tuf's ``ngclient.Updater``: it walks the root chain from the device's trusted root (so root
keys can rotate), then loads timestamp, snapshot and targets, checking signatures against each role's keys and
threshold, expiry, version numbers against what the device trusted before (kept in ``metadata_dir``), and the
lengths and hashes that each role pins for the next. Each of its errors is translated here, in one place, to
the :mod:`ota.errors` class that names the attack it stopped. The bundle itself is downloaded by this module (so
it can resume with an HTTP ``Range`` request) and then checked with the signed ``TargetFile`` (length and sha256)
before anything else reads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from edge.errors import ConfigError
from ota.errors import (
    BundleTampered,
    FreezeRefused,
    InstallError,
    MixAndMatchRefused,
    OtaError,
    OversizedDownload,
    RepositoryUnavailable,
    RollbackRefused,
    SlowRetrieval,
    UntrustedMetadata,
    UpdateRefused,
)
from ota.http import TufFetcher
from ota.repository import check_name, target_path
from ota.rollout import RolloutPolicy
from runtime.logs import event

__all__ = ["Offer", "UpdateClient", "translate"]

log = logging.getLogger("edge.ota")

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Offer:
    """The bundle the signed targets metadata names for a model."""

    model_id: str
    version: str
    target: str
    length: int
    sha256: str
    rollout: RolloutPolicy
    info: TargetFile

    def to_json(self) -> dict[str, object]:
        return {"model_id": self.model_id, "version": self.version, "length": self.length, "sha256": self.sha256}


def translate(exc: Exception) -> OtaError:
    """The :mod:`ota.errors` class for an error of python-tuf or of the transport."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, exceptions.DownloadLengthMismatchError):
        return OversizedDownload(f"download longer than allowed: {text}")
    if isinstance(exc, exceptions.SlowRetrievalError):
        return SlowRetrieval(f"download too slow (slow retrieval): {text}")
    if isinstance(exc, exceptions.DownloadError):
        return RepositoryUnavailable(f"repository unavailable: {text}")
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return UntrustedMetadata(f"metadata not signed by a threshold of trusted keys: {text}")
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return FreezeRefused(f"stale metadata (freeze attack or a repository not re-signed): {text}")
    if isinstance(exc, exceptions.BadVersionNumberError):
        return RollbackRefused(f"metadata older than the trusted metadata: {text}")
    if isinstance(exc, exceptions.LengthOrHashMismatchError):
        return MixAndMatchRefused(f"metadata does not match what the snapshot or timestamp pins: {text}")
    if isinstance(exc, exceptions.RepositoryError):
        return UpdateRefused(f"metadata refused: {text}")
    if isinstance(exc, OSError):
        return InstallError(f"cannot write the metadata cache: {text}")
    return UpdateRefused(f"metadata refused: {type(exc).__name__}: {text}")  # pragma: no cover - tuf raises the above


def _refuse(exc: Exception) -> NoReturn:
    raise translate(exc) from exc


def _offer(model_id: str, path: str, info: TargetFile) -> Offer:
    """The offer of the signed entry ``info`` for ``model_id``; refused unless everything in it that becomes part of
    a path or a URL on the device (the target name, the version, the sha256) is a safe name."""
    custom = info.custom if isinstance(info.custom, dict) else {}
    version, named, sha256 = custom.get("version"), custom.get("model_id"), info.hashes.get("sha256")
    if not isinstance(version, str) or named != model_id or sha256 is None:
        raise UpdateRefused(f"the signed entry for {path} lacks model_id, version or sha256")
    try:
        check_name("version", version)
    except ValueError as exc:
        raise UpdateRefused(f"the signed entry for {path}: {exc}") from None
    if info.path != path or not _SHA256_RE.fullmatch(sha256):
        raise UpdateRefused(f"the signed entry for {path} names target {info.path!r}, sha256 {sha256!r}")
    try:
        rollout = RolloutPolicy.from_json(custom.get("rollout"))
    except ValueError as exc:
        raise UpdateRefused(f"the signed entry for {path} has a bad rollout policy: {exc}") from None
    return Offer(model_id, version, path, info.length, sha256, rollout, info)


class UpdateClient:
    """Checks the repository at ``repository_url`` (``metadata/`` and ``targets/`` below it).

    Building one reads nothing: the trusted root at ``trusted_root`` is read once, by :meth:`load_root` (the agent's
    OTA service calls it at start) or at the first check."""

    def __init__(
        self,
        *,
        repository_url: str,
        metadata_dir: Path,
        trusted_root: Path,
        fetcher: TufFetcher,
        max_bundle_bytes: int,
    ) -> None:
        self._base = repository_url.rstrip("/")
        self._metadata_dir = metadata_dir
        self._root_path = trusted_root
        self._root: bytes | None = None
        self._fetcher = fetcher
        self._max = max_bundle_bytes

    def load_root(self) -> bytes:
        """The trusted root's bytes (read on the first call; unreadable: :class:`~edge.errors.ConfigError`)."""
        if self._root is None:
            try:
                self._root = self._root_path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"ota.trusted_root: cannot read {self._root_path}: {exc.strerror}") from exc
        return self._root

    def _updater(self) -> Updater:
        root = self.load_root()
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            return Updater(
                str(self._metadata_dir),
                f"{self._base}/metadata/",
                target_base_url=f"{self._base}/targets/",
                fetcher=self._fetcher,
                config=UpdaterConfig(timestamp_max_length=16 * 1024, snapshot_max_length=1 << 20),
                bootstrap=root,
            )
        except (exceptions.RepositoryError, OSError, ValueError) as exc:
            raise InstallError(f"the trusted root is not usable: {exc}") from exc

    def offer(self, model_id: str) -> Offer | None:
        """Refresh the metadata and return the bundle it names for ``model_id`` (None: the repository has none)."""
        try:
            path = target_path(model_id)
        except ValueError as exc:
            raise InstallError(f"the running model cannot be updated: {exc}") from None
        updater = self._updater()
        try:
            updater.refresh()
            info = updater.get_targetinfo(path)
        except (exceptions.RepositoryError, exceptions.DownloadError, OSError) as exc:
            _refuse(exc)
        return None if info is None else _offer(model_id, path, info)

    def url(self, offer: Offer) -> str:
        """Where the archive is (consistent snapshots: the sha256 prefixes the file name)."""
        directory, _, name = offer.target.rpartition("/")
        return f"{self._base}/targets/{directory}/{offer.sha256}.{name}"

    def download(self, offer: Offer, part: Path, progress: Callable[[int], None] = lambda _: None) -> Path:
        """Download the archive to ``part`` (resuming what an earlier attempt left), verify it, return ``part``.

        Refuses before any byte when the signed length exceeds the configured maximum, and stops as soon as the
        server sends more than the signed length.
        """
        if offer.length > self._max:
            raise OversizedDownload(f"{offer.target} is {offer.length} bytes; the maximum is {self._max}")
        resumed = self._fetch(offer, part, progress)
        try:
            self._verify(offer, part)
        except BundleTampered:
            if not resumed:
                raise
            event(log, "resumed download does not verify; downloading again", level=logging.WARNING)
            part.unlink()
            self._fetch(offer, part, progress)
            self._verify(offer, part)
        return part

    def _fetch(self, offer: Offer, part: Path, progress: Callable[[int], None]) -> bool:
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > offer.length:
            part.unlink()
            have = 0
        if have == offer.length:
            return False
        url = self.url(offer)
        try:
            resumed, chunks = self._fetcher.fetch_from(url, have, offer.length)
            if have:
                event(
                    log, "download resumed" if resumed else "server ignored the range; downloading again", offset=have
                )
            if not resumed:
                have = 0
            with contextlib.closing(chunks), part.open("ab" if resumed else "wb") as fh:
                for chunk in chunks:
                    have += len(chunk)
                    if have > offer.length:
                        raise OversizedDownload(f"{url} sent more than the signed {offer.length} bytes")
                    fh.write(chunk)
                    progress(have)
                fh.flush()
                os.fsync(fh.fileno())
        except exceptions.DownloadError as exc:
            _refuse(exc)
        if have < offer.length:
            raise RepositoryUnavailable(f"{url}: connection closed at {have} of {offer.length} bytes (resumes)")
        return resumed

    @staticmethod
    def _verify(offer: Offer, part: Path) -> None:
        try:
            with part.open("rb") as fh:
                offer.info.verify_length_and_hashes(fh)
        except exceptions.LengthOrHashMismatchError as exc:
            part.unlink()
            raise BundleTampered(f"{offer.target}: {exc} (not the bundle the signed metadata names)") from exc
