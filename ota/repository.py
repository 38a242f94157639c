"""The manufacturer's side: keys, bundles as TUF targets, and signed metadata published to a directory.

A repository directory is what any static web server (or the relay) serves::

    <repo>/metadata/1.root.json ...      every root version (devices walk the chain when keys rotate)
    <repo>/metadata/<N>.targets.json     targets: one entry per model, ``models/<model id>.tar``
    <repo>/metadata/<N>.snapshot.json    snapshot: the version, length and sha256 of targets.json
    <repo>/metadata/timestamp.json       timestamp: the version, length and sha256 of snapshot.json (short expiry)
    <repo>/targets/models/<sha256>.<model id>.tar   the bundle archives (consistent snapshots: never overwritten)

Unversioned ``root.json``, ``targets.json`` and ``snapshot.json`` copies are kept for this tool. Private keys
live in a separate key directory (``<keyid>.pem``, PKCS#8, mode 0600): root keys belong offline, the timestamp
key on the machine that re-signs the timestamp before it expires (``btt-ota publish``). Metadata is built and
signed with python-tuf's metadata API; every file is written atomically, the timestamp last, so a device never
sees a half-published repository.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edge.errors import BundleError
from models.bundle import MANIFEST_NAME, load_bundle
from ota.errors import PublishError
from ota.rollout import RolloutPolicy
from runtime.durable import atomic_write_bytes

__all__ = [
    "DEFAULT_EXPIRY",
    "ROLES",
    "KeyStore",
    "Repository",
    "bundle_archive",
    "check_name",
    "target_path",
]

ROLES = ("root", "targets", "snapshot", "timestamp")
DEFAULT_EXPIRY: Mapping[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
"""How long each role's metadata stays valid after signing. The short timestamp bounds a freeze attack."""

_SERIALIZER = JSONSerializer(compact=False)


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def check_name(what: str, value: object) -> str:
    """``value`` when it is safe as one file name and one URL path segment; ``ValueError`` naming ``what`` if not.

    Model ids and versions become parts of paths (the target name, the archive's file name in the repository, the
    device's download file): 1 to 64 letters, digits, ``.``, ``_``, ``+`` or ``-``, starting with a letter or a
    digit, and no ``..``. The one check for every such name, on the manufacturer's side and the device's.
    """
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a safe name (1-64 letters, digits, '.', '_', '+' or '-', starting with a "
            "letter or digit, no '..')"
        )
    return value


def target_path(model_id: str) -> str:
    """The TUF target name of a model's bundle archive (``ValueError`` for an id that is not a safe name)."""
    return f"models/{check_name('model id', model_id)}.tar"


class KeyStore:
    """A directory of Ed25519 private keys, one PEM file per key id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def create(self) -> CryptoSigner:
        """A new key, saved as ``<keyid>.pem`` (mode 0600)."""
        signer = CryptoSigner.generate_ed25519()
        atomic_write_bytes(self.directory / f"{signer.public_key.keyid}.pem", signer.private_bytes, mode=0o600)
        return signer

    def load(self, path: Path) -> CryptoSigner:
        """The signer of one PEM file."""
        try:
            return CryptoSigner(load_pem_private_key(path.read_bytes(), None))
        except (OSError, ValueError, TypeError) as exc:
            raise PublishError(f"{path}: not a readable private key: {exc}") from exc

    def signer(self, keyid: str) -> CryptoSigner | None:
        """The signer of ``keyid`` if its private key is in this directory."""
        path = self.directory / f"{keyid}.pem"
        return self.load(path) if path.exists() else None


def bundle_archive(path: Path) -> tuple[bytes, str, str]:
    """``(tar bytes, model id, version)`` of a bundle directory or archive, verified first.

    An archive is published as it is; a directory is packed deterministically (sorted names, zero times).
    """
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        raise PublishError(f"the bundle does not verify: {exc}") from exc
    manifest = bundle.manifest
    if path.is_file():
        return path.read_bytes(), manifest.id, manifest.version
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted([MANIFEST_NAME, *manifest.files]):
            data = (path / name).read_bytes() if name == MANIFEST_NAME else bundle.files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), manifest.id, manifest.version


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@dataclass
class Repository:
    """A TUF repository in a directory, signed with the keys of a :class:`KeyStore`."""

    directory: Path
    keys: KeyStore

    @property
    def metadata_dir(self) -> Path:
        return self.directory / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.directory / "targets"

    # --- creating -------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        keys: KeyStore,
        *,
        key_counts: Mapping[str, int] | None = None,
        thresholds: Mapping[str, int] | None = None,
    ) -> Repository:
        """A new repository: fresh keys per role (``key_counts``, default 1), root v1, empty targets."""
        repo = cls(directory, keys)
        if (repo.metadata_dir / "root.json").exists():
            raise PublishError(f"{directory} already holds a repository")
        root = Root(expires=_now() + DEFAULT_EXPIRY["root"], consistent_snapshot=True)
        for role in ROLES:
            count = (key_counts or {}).get(role, 1)
            threshold = (thresholds or {}).get(role, 1)
            if not 1 <= threshold <= count:
                raise PublishError(f"{role}: threshold {threshold} needs 1..{count} keys")
            for _ in range(count):
                root.add_key(keys.create().public_key, role)
            root.roles[role].threshold = threshold
        root_md = Metadata(root)
        repo._sign(root_md, [root])
        repo._write(root_md)
        targets = Metadata(Targets(expires=_now() + DEFAULT_EXPIRY["targets"]))
        repo._sign(targets, [root])
        repo._write(targets)
        repo._snapshot_and_timestamp(root, targets, None, None, DEFAULT_EXPIRY)
        return repo

    # --- reading --------------------------------------------------------------------------------------------

    def load(self, role: str) -> Metadata[Any]:
        """The current metadata of ``role``."""
        path = self.metadata_dir / f"{role}.json"
        try:
            return Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise PublishError(f"{self.directory} holds no repository (no {path.name})") from None

    def root_bytes(self) -> bytes:
        """The current root metadata (what a device is given as its trusted root)."""
        return (self.metadata_dir / "root.json").read_bytes()

    # --- changing -------------------------------------------------------------------------------------------

    def add_bundle(
        self,
        archive: bytes,
        model_id: str,
        version: str,
        *,
        rollout: RolloutPolicy | None = None,
        expiry: Mapping[str, timedelta] = DEFAULT_EXPIRY,
    ) -> TargetFile:
        """Publish ``archive`` as the current bundle of ``model_id`` (replacing the previous entry); an id or
        version that is not a safe name (:func:`check_name`) is refused before anything is written."""
        try:
            path = target_path(model_id)
            check_name("version", version)
        except ValueError as exc:
            raise PublishError(f"cannot publish: {exc}") from None
        info = TargetFile.from_data(path, archive, ["sha256"])
        custom = {"model_id": model_id, "version": version, "rollout": (rollout or RolloutPolicy()).to_json()}
        info.unrecognized_fields["custom"] = custom
        stored = self.targets_dir / "models" / f"{info.hashes['sha256']}.{model_id}.tar"
        atomic_write_bytes(stored, archive)
        root: Root = self.load("root").signed
        targets_md: Metadata[Targets] = self.load("targets")
        targets_md.signed.targets[path] = info
        self._bump(targets_md, expiry["targets"])
        self._sign(targets_md, [root])
        self._write(targets_md)
        self._snapshot_and_timestamp(root, targets_md, None, self.load("timestamp"), expiry)
        return info

    def publish(
        self, expiry: Mapping[str, timedelta] = DEFAULT_EXPIRY, *, roles: Iterable[str] = ("timestamp",)
    ) -> None:
        """Re-sign ``roles`` (and what pins them) with fresh expiry: run before the timestamp expires."""
        roles = set(roles)
        root: Root = self.load("root").signed
        targets_md: Metadata[Targets] = self.load("targets")
        if "targets" in roles:
            self._bump(targets_md, expiry["targets"])
            self._sign(targets_md, [root])
            self._write(targets_md)
        snapshot = None if roles & {"targets", "snapshot"} else self.load("snapshot")
        self._snapshot_and_timestamp(root, targets_md, snapshot, self.load("timestamp"), expiry)

    def rotate(
        self,
        role: str,
        *,
        add: Iterable[Key] = (),
        remove: Iterable[str] = (),
        threshold: int | None = None,
        expiry: Mapping[str, timedelta] = DEFAULT_EXPIRY,
    ) -> int:
        """A new root version with ``role``'s keys changed; signed by the old and the new root keys.

        The other roles are re-signed with their (possibly new) keys. Returns the new root version.
        """
        if role not in ROLES:
            raise PublishError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        old: Root = self.load("root").signed
        new_md: Metadata[Root] = self.load("root")
        new = new_md.signed
        for key in add:
            new.add_key(key, role)
        for keyid in remove:
            if keyid not in new.roles[role].keyids:
                raise PublishError(f"{keyid} is not a {role} key")
            new.revoke_key(keyid, role)
        if threshold is not None:
            new.roles[role].threshold = threshold
        if not 1 <= new.roles[role].threshold <= len(new.roles[role].keyids):
            raise PublishError(f"{role}: threshold {new.roles[role].threshold} needs as many keys")
        self._bump(new_md, expiry["root"])
        self._sign(new_md, [old, new])
        self._write(new_md)
        self.publish(expiry, roles=("targets",))
        return new.version

    # --- helpers --------------------------------------------------------------------------------------------

    @staticmethod
    def _bump(md: Metadata[Any], lifetime: timedelta) -> None:
        md.signed.version += 1
        md.signed.expires = _now() + lifetime

    def _sign(self, md: Metadata[Any], roots: list[Root]) -> None:
        """Sign ``md`` with every available key its role has in any of ``roots``; each root's threshold must be met."""
        role = md.signed.type
        md.signatures.clear()
        for root in roots:
            delegation: Role = root.roles[role]
            have = 0
            for keyid in delegation.keyids:
                signer = self.keys.signer(keyid)
                if signer is not None:
                    if keyid not in md.signatures:
                        md.sign(signer, append=True)
                    have += 1
            if have < delegation.threshold:
                raise PublishError(
                    f"{role}: {have} of the {delegation.threshold} keys needed are in {self.keys.directory}"
                )

    def _write(self, md: Metadata[Any]) -> bytes:
        data = md.to_bytes(_SERIALIZER)
        role = md.signed.type
        if role != "timestamp":
            atomic_write_bytes(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
        atomic_write_bytes(self.metadata_dir / f"{role}.json", data)
        return data

    def _snapshot_and_timestamp(
        self,
        root: Root,
        targets_md: Metadata[Targets],
        snapshot_md: Metadata[Snapshot] | None,
        timestamp_md: Metadata[Timestamp] | None,
        expiry: Mapping[str, timedelta],
    ) -> None:
        """Pin targets in a new snapshot (unless ``snapshot_md`` is kept), then the snapshot in a new timestamp."""
        if snapshot_md is None:
            snapshot_md = self.load("snapshot") if (self.metadata_dir / "snapshot.json").exists() else None
            if snapshot_md is None:
                snapshot_md = Metadata(Snapshot())
                snapshot_md.signed.version = 0
            snapshot_md.signed.meta["targets.json"] = MetaFile.from_data(
                targets_md.signed.version, targets_md.to_bytes(_SERIALIZER), ["sha256"]
            )
            self._bump(snapshot_md, expiry["snapshot"])
            self._sign(snapshot_md, [root])
            snapshot_bytes = self._write(snapshot_md)
        else:
            snapshot_bytes = (self.metadata_dir / "snapshot.json").read_bytes()
        if timestamp_md is None:
            timestamp_md = Metadata(Timestamp())
            timestamp_md.signed.version = 0
        timestamp_md.signed.snapshot_meta = MetaFile.from_data(snapshot_md.signed.version, snapshot_bytes, ["sha256"])
        self._bump(timestamp_md, expiry["timestamp"])
        self._sign(timestamp_md, [root])
        self._write(timestamp_md)
