"""The install sequence and the model gate the pipeline worker consults.

``apply``: verified offer (:mod:`ota.client`) -> rollout and version checks -> resumable verified download ->
unpack into the inactive slot -> health check on the device's backend -> ``staged``. The switch happens in
:meth:`OtaUpdater.idle`, which the pipeline worker calls from its own thread when no study is in the pipeline,
so a study never sees two models; the command line switches itself only when no agent holds the agent lock.
After a switch the next ``watch_studies`` studies are observed (:meth:`OtaUpdater.outcome`);
``failure_threshold`` consecutive failures bring the previous model back. Every refusal, failed health check and
rollback is reported (``report``: the outbox, kind ``health``, to the relay).

Each step logs an ``ota step`` event (:func:`_checkpoint`); a kill at any of them leaves ``state.json`` naming a
complete, verified model, and the next ``apply`` resumes (the download from its last byte).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import EdgeError, ModelError
from models.bundle import load_bundle
from ota.client import Offer, UpdateClient
from ota.errors import HealthCheckFailed, InstallError, RollbackRefused, UpdateRefused
from ota.health import AnalyzerLoader, health_check
from ota.rollout import in_rollout
from ota.slots import OtaState, SlotStore, file_lock
from runtime.logs import event

if TYPE_CHECKING:
    from edge.pipeline.analyzer import Analyzer

__all__ = ["ApplyResult", "OtaUpdater", "Reporter"]

log = logging.getLogger("edge.ota")

Reporter = Callable[[Mapping[str, Any]], None]
"""Sends an OTA event to the relay (the agent queues it in the outbox as kind ``health``)."""

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def _version_key(version: str) -> tuple[int, int, int]:
    match = _VERSION_RE.match(version)
    if match is None:
        raise InstallError(f"not a bundle version: {version!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def _checkpoint(step: str, **fields: Any) -> None:
    """One step of an install is done (tests stop the process here to simulate a power cut)."""
    event(log, "ota step", level=logging.DEBUG if step == "downloading" else logging.INFO, step=step, **fields)


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply`` did: ``up-to-date``, ``not-in-rollout``, ``no-bundle``, ``refused-before`` (failed here
    before), ``waiting`` (the last update is still observed), ``staged`` or ``switched``."""

    outcome: str
    model_id: str
    version: str
    detail: str = ""


class OtaUpdater:
    """Installs, switches and rolls back models for one data directory."""

    def __init__(
        self,
        store: SlotStore,
        client: UpdateClient | None,
        load_analyzer: AnalyzerLoader,
        *,
        device_id: str,
        groups: tuple[str, ...] = (),
        failure_threshold: int = 3,
        watch_studies: int = 50,
        report: Reporter = lambda _: None,
    ) -> None:
        self.store = store
        self._client = client
        self._load = load_analyzer
        self._device = device_id
        self._groups = groups
        self._threshold = failure_threshold
        self._watch = watch_studies
        self._report = report
        self._mutex = threading.Lock()
        self._loaded: str | None = None
        self._watching = False

    # --- state --------------------------------------------------------------------------------------------

    @contextmanager
    def _state(self) -> Iterator[list[OtaState]]:
        """Read-modify-write ``state.json`` under the state lock (this process and others); assign ``box[0]``."""
        with self._mutex, file_lock(self.store.root / "state.lock"):
            box = [self.store.read()]
            before = box[0]
            yield box
            if box[0] != before:
                self.store.write(box[0])

    def status(self) -> dict[str, Any]:
        """The state, with what each slot holds."""
        state = self.store.read()
        doc = state.to_json()
        doc["active_path"] = str(self.store.path(state.active))
        try:
            manifest = load_bundle(self.store.path(state.active)).manifest
            doc["active_model"] = {"id": manifest.id, "version": manifest.version}
        except (EdgeError, ModelError) as exc:
            doc["active_model"] = {"error": str(exc)}
        return doc

    def _emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        body = {"event": kind, "time_ms": int(time.time() * 1000), **fields}
        try:
            self._report({"ota": body})
        except EdgeError as exc:
            event(log, "ota report not queued", level=logging.WARNING, error=str(exc))
        return body

    # --- install ------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Read the trusted root now (the agent's OTA service, at start: an unreadable ``[ota] trusted_root`` stops
        the agent there, naming the key); without a repository, nothing."""
        if self._client is not None:
            self._client.load_root()

    def _require_client(self) -> UpdateClient:
        if self._client is None:
            raise InstallError("no update repository is configured ([ota] repository_url and trusted_root)")
        return self._client

    def check(self) -> tuple[Offer | None, str]:
        """The repository's verified offer for the running model and whether it would be installed (no install)."""
        client = self._require_client()
        manifest = load_bundle(self.store.path(self.store.read().active)).manifest
        offer = client.offer(manifest.id)
        if offer is None:
            return None, "no-bundle"
        return offer, self._verdict(offer, manifest.version)

    def _verdict(self, offer: Offer, running: str) -> str:
        if not in_rollout(self._device, self._groups, offer.rollout):
            return "not-in-rollout"
        if _version_key(offer.version) == _version_key(running):
            return "up-to-date"
        if _version_key(offer.version) < _version_key(running):
            raise RollbackRefused(
                f"the repository offers {offer.model_id} {offer.version}, older than the running {running}"
            )
        return "newer"

    def apply(self, *, switch_now: bool = False) -> ApplyResult:
        """Install the offered bundle up to ``staged`` (``switch_now``: and switch); one installer at a time."""
        with file_lock(self.store.root / "install.lock", wait=False) as mine:
            if not mine:
                raise InstallError("another install is running")
            try:
                result = self._apply()
            except UpdateRefused as exc:
                self._remember(self._emit("refused", reason=exc.reason, error=str(exc)))
                raise
            except HealthCheckFailed as exc:
                self._remember(self._emit("health_check_failed", error=str(exc)))
                raise
        if switch_now and result.outcome == "staged":
            self._switch()
            return dataclasses.replace(result, outcome="switched")
        return result

    def _remember(self, body: Mapping[str, Any]) -> None:
        with self._state() as box:
            box[0] = dataclasses.replace(box[0], last_event=dict(body))

    def _apply(self) -> ApplyResult:
        client = self._require_client()
        state = self.store.read()
        running = load_bundle(self.store.path(state.active)).manifest
        offer = client.offer(running.id)
        if offer is None:
            return ApplyResult("no-bundle", running.id, running.version)
        verdict = self._verdict(offer, running.version)
        if verdict != "newer":
            return ApplyResult(verdict, offer.model_id, offer.version)
        if state.watch_left:
            detail = f"the last update is still observed ({state.watch_left} studies left)"
            return ApplyResult("waiting", offer.model_id, offer.version, detail)
        if offer.sha256 in state.refused:
            return ApplyResult("refused-before", offer.model_id, offer.version, "failed here before; not retried")
        if state.staged is not None and state.slots[state.staged].sha256 == offer.sha256:
            return ApplyResult("staged", offer.model_id, offer.version)
        event(log, "installing model", model=offer.model_id, version=offer.version, bytes=offer.length)
        part = self.store.root / "downloads" / f"{offer.sha256}.tar"
        client.download(offer, part, lambda n: _checkpoint("downloading", bytes=n))
        _checkpoint("downloaded", bytes=offer.length)
        slot = self.store.inactive(state)
        with self._state() as box:
            box[0] = self.store.unpack(box[0], slot, part, offer.model_id, offer.version, offer.sha256)
        part.unlink()
        _checkpoint("unpacked", slot=slot)
        try:
            backend = health_check(self._load, self.store.path(slot))
        except HealthCheckFailed:
            with self._state() as box:
                box[0] = dataclasses.replace(box[0].without_slot(slot), refused=(*box[0].refused, offer.sha256))
            raise
        _checkpoint("healthy", slot=slot, backend=backend)
        with self._state() as box:
            box[0] = dataclasses.replace(box[0], staged=slot)
        _checkpoint("staged", slot=slot)
        return ApplyResult("staged", offer.model_id, offer.version, f"health check passed on {backend}")

    # --- switching --------------------------------------------------------------------------------------------

    def _switch(self) -> bool:
        with self._state() as box:
            state = box[0]
            if state.staged is None:
                return False
            info = state.slots[state.staged]
            _checkpoint("switching", slot=state.staged)
            box[0] = dataclasses.replace(
                state, active=state.staged, previous=state.active, staged=None, watch_left=self._watch, failures=0
            )
        _checkpoint("switched", slot=box[0].active)
        event(log, "model switched", model=info.model_id, version=info.version, slot=box[0].active)
        return True

    def rollback(self, reason: str) -> OtaState:
        """Make the previous model active again; the rolled-back bundle is never installed again."""
        with self._state() as box:
            state = box[0]
            if state.previous is None:
                raise InstallError("there is no previous model to roll back to")
            bad = state.slots.get(state.active)
            body = self._emit(
                "rollback",
                reason=reason,
                model_id=bad.model_id if bad else "",
                version=bad.version if bad else "",
            )
            box[0] = dataclasses.replace(
                state,
                active=state.previous,
                previous=None,
                watch_left=0,
                failures=0,
                refused=(*state.refused, bad.sha256) if bad else state.refused,
                last_event=body,
            )
        event(log, "model rolled back", level=logging.ERROR, reason=reason, slot=box[0].active)
        return box[0]

    # --- the pipeline's model gate ----------------------------------------------------------------------------

    def load_active(self) -> Analyzer:
        """The analyzer of the active model; an active slot that no longer loads is rolled back first."""
        state = self.store.read()
        try:
            analyzer = self._load(self.store.path(state.active))
        except (EdgeError, ModelError) as exc:
            if state.previous is None:
                raise
            state = self.rollback(f"the active model does not load: {exc}")
            analyzer = self._load(self.store.path(state.active))
        self._loaded = state.active
        self._watching = state.watch_left > 0
        return analyzer

    def active_path(self) -> Path:
        """The bundle directory of the active model."""
        return self.store.path(self.store.read().active)

    def idle(self, current: Analyzer) -> Analyzer | None:
        """Called by the worker when no study is in the pipeline: switch a staged model, follow a switch or
        rollback made elsewhere; returns the analyzer to use from now on, or None to keep the current one.
        Never raises: a failure is logged and the current analyzer stays."""
        try:
            return self._idle()
        except (EdgeError, ModelError) as exc:
            event(log, "model switch failed; keeping the current model", level=logging.ERROR, error=str(exc))
            return None

    def _idle(self) -> Analyzer | None:
        state = self.store.read()
        if state.staged is not None:
            self._switch()
            state = self.store.read()
        if state.active == self._loaded:
            self._watching = state.watch_left > 0
            return None
        return self.load_active()

    def outcome(self, ok: bool, error: str = "") -> None:
        """The worker finished a study (``ok``) or failed one; counts towards confirming or rolling back.
        Never raises (it runs inside the worker's loop): a failure is logged."""
        if not self._watching:
            return
        try:
            self._outcome(ok, error)
        except (EdgeError, ModelError) as exc:
            event(log, "cannot record the study outcome", level=logging.ERROR, error=str(exc))

    def _outcome(self, ok: bool, error: str) -> None:
        rollback = False
        with self._state() as box:
            state = box[0]
            if state.watch_left == 0 or state.active != self._loaded:
                self._watching = False
                return
            if ok:
                box[0] = dataclasses.replace(state, watch_left=state.watch_left - 1, failures=0)
                if box[0].watch_left == 0:
                    event(log, "model confirmed", slot=state.active)
            else:
                box[0] = dataclasses.replace(state, failures=state.failures + 1)
                rollback = box[0].failures >= self._threshold
        if rollback:
            self.rollback(f"{self._threshold} consecutive studies failed after the switch; last: {error}")
