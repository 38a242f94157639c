"""A/B model slots under ``<data_dir>/ota`` and the durable pointer that says which one runs.

::

    <data_dir>/ota/state.json      the pointer and the install state (atomic, fsync'd: edge.durable)
    <data_dir>/ota/slots/a/, b/    unpacked bundles; the factory bundle ([pipeline] bundle_path) is slot "factory"
    <data_dir>/ota/downloads/      partial and complete archives (resumed after a restart)
    <data_dir>/ota/metadata/       python-tuf's trusted metadata (versions seen, for rollback protection)

A slot is listed in ``state.json`` only after its files are written and fsync'd and it verified; it is unlisted
(durably) before it is overwritten. ``active`` only ever names a listed slot or the factory bundle, and is changed
by one atomic write. So a power cut at any moment leaves ``active`` pointing at a complete, verified bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge.errors import BundleError
from models.bundle import load_bundle, pack_bundle, write_bundle
from ota.errors import BundleTampered, InstallError
from runtime.durable import atomic_write_bytes, fsync_dir

__all__ = ["FACTORY", "SLOTS", "OtaState", "SlotInfo", "SlotStore", "file_lock"]

FACTORY = "factory"
SLOTS = ("a", "b")


@dataclass(frozen=True)
class SlotInfo:
    """What a listed slot holds."""

    model_id: str
    version: str
    sha256: str
    """sha256 of the archive it was unpacked from (the signed target hash)."""


@dataclass(frozen=True)
class OtaState:
    """The content of ``state.json``."""

    active: str = FACTORY
    previous: str | None = None
    """The model to return to while the active one is under observation."""
    slots: Mapping[str, SlotInfo] = field(default_factory=lambda: MappingProxyType({}))
    staged: str | None = None
    """A slot that passed its health check and waits for an idle moment to become active."""
    watch_left: int = 0
    """Studies still observed after a switch (0: the active model is confirmed)."""
    failures: int = 0
    """Consecutive failed studies since the switch."""
    refused: tuple[str, ...] = ()
    """Archive hashes never to install again (failed their health check or were rolled back)."""
    last_event: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "previous": self.previous,
            "slots": {name: dataclasses.asdict(info) for name, info in sorted(self.slots.items())},
            "staged": self.staged,
            "watch_left": self.watch_left,
            "failures": self.failures,
            "refused": list(self.refused),
            "last_event": dict(self.last_event) if self.last_event is not None else None,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> OtaState:
        try:
            slots = {name: SlotInfo(**info) for name, info in doc.get("slots", {}).items()}
            return cls(
                active=str(doc["active"]),
                previous=doc.get("previous"),
                slots=MappingProxyType(slots),
                staged=doc.get("staged"),
                watch_left=int(doc.get("watch_left", 0)),
                failures=int(doc.get("failures", 0)),
                refused=tuple(doc.get("refused", ())),
                last_event=doc.get("last_event"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InstallError(f"ota state is malformed: {exc}") from exc

    def without_slot(self, name: str) -> OtaState:
        """The state with slot ``name`` unlisted (not staged, and no longer a model to roll back to)."""
        slots = {k: v for k, v in self.slots.items() if k != name}
        return dataclasses.replace(
            self,
            slots=MappingProxyType(slots),
            staged=None if self.staged == name else self.staged,
            previous=None if self.previous == name else self.previous,
        )

    def with_slot(self, name: str, info: SlotInfo) -> OtaState:
        return dataclasses.replace(self, slots=MappingProxyType({**self.slots, name: info}))


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path``; yields False (lock not taken) when ``wait`` is off and it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class SlotStore:
    """The slot directories and ``state.json`` below ``root`` (``<data_dir>/ota``)."""

    def __init__(self, root: Path, factory: Path) -> None:
        self.root = root
        self.factory = factory

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def read(self) -> OtaState:
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return OtaState()
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InstallError(f"{self.state_path} is not JSON: {exc}") from exc
        return OtaState.from_json(doc)

    def write(self, state: OtaState) -> None:
        atomic_write_bytes(self.state_path, (json.dumps(state.to_json(), indent=1, sort_keys=True) + "\n").encode())

    def path(self, name: str) -> Path:
        """The bundle directory of slot ``name`` (the factory bundle for ``factory``)."""
        return self.factory if name == FACTORY else self.root / "slots" / name

    @staticmethod
    def inactive(state: OtaState) -> str:
        """The slot a new bundle goes into: never the active one, and the previous one only if it must."""
        free = [s for s in SLOTS if s != state.active]
        return next((s for s in free if s != state.previous), free[0])

    def unpack(  # noqa: PLR0917 - the slot, the archive and what the signed metadata says it holds
        self, state: OtaState, name: str, archive: Path, model_id: str, version: str, sha256: str
    ) -> OtaState:
        """Verify ``archive`` and write it into slot ``name``; return (and save) the state listing it."""
        if name in (state.active, FACTORY):
            raise InstallError(f"slot {name} is running; it cannot be overwritten")
        state = state.without_slot(name)
        self.write(state)
        try:
            bundle = load_bundle(archive)
        except BundleError as exc:
            raise BundleTampered(f"the signed archive is not a valid bundle: {exc}") from exc
        manifest = bundle.manifest
        if (manifest.id, manifest.version) != (model_id, version):
            raise BundleTampered(
                f"the archive holds {manifest.id} {manifest.version}, the signed metadata names {model_id} {version}"
            )
        directory = self.path(name)
        try:
            if directory.exists():
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
            write_bundle(directory, pack_bundle(manifest, dict(bundle.files)))
            fsync_dir(directory.parent)
            load_bundle(directory)
        except (OSError, BundleError) as exc:
            raise InstallError(f"cannot write slot {name}: {exc}") from exc
        state = state.with_slot(name, SlotInfo(model_id, version, sha256))
        self.write(state)
        return state
