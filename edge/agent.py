"""The composition root: builds every component from one :class:`AgentConfig` and runs them.

No module reaches for a global: :func:`build_agent` creates the store, the SCP, the pipeline, the outbox and
the links from their sections of the configuration, hands each what it needs, and lists them in their start
order; nothing touches the disk, the network or a thread until :meth:`Agent.run` starts them in that order (each
does its I/O in ``start``) and stops them in reverse. The library globals pydicom and pynetdicom force are held in
:mod:`edge.dicomlib` by the services that need them, and put back when they stop.

The data directory holds patient data. ``btt-edge run`` sets the process umask from :func:`data_modes` before
anything is created, and the first step of the start order creates the data directory private, or takes the bits
beyond :func:`data_modes` off it and off what is directly in it (:func:`protect_data_dir`), whatever the umask was.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edge.config import AgentConfig
from edge.errors import ConfigError
from edge.systemd import Notifier, notifier_from_env, watchdog_interval_s
from runtime.durable import DataModes, make_dirs, tighten
from runtime.logs import event

if TYPE_CHECKING:
    from ota.updater import OtaUpdater, Reporter

__all__ = ["Agent", "Service", "build_agent", "data_entries", "data_modes", "protect_data_dir", "updater_for"]

log = logging.getLogger("edge.agent")

_MAIN_WAKE_S = 0.5
"""The main thread wakes at least this often, so that signal handlers run promptly."""

_SLOW_STOP_S = 20.0
"""A service still stopping after this long has every thread's stack written to stderr, to show what holds it."""


class Service(Protocol):
    """A long-running component. ``start`` returns once it is serving; ``stop`` returns once it has stopped."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Agent:
    """Runs services until :meth:`shutdown` is called or SIGTERM/SIGINT arrives."""

    def __init__(
        self,
        config: AgentConfig,
        services: Sequence[Service],
        notifier: Notifier | None = None,
        *,
        stop_requested: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.services = tuple(services)
        # systemd (Type=notify, WatchdogSec=): READY=1, WATCHDOG=1 while running, STOPPING=1; no-op elsewhere.
        self.notifier = notifier_from_env() if notifier is None else notifier
        self._stop = threading.Event() if stop_requested is None else stop_requested
        """Set by :meth:`shutdown`; services given the same event know a stop is coming before theirs is called
        (the unit service: a unit that goes away meanwhile, e.g. a simulator stopped by the same Ctrl-C, is a
        normal close)."""

    def shutdown(self) -> None:
        """Ask :meth:`run` to stop (safe from any thread or a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Start every service, wait for a stop request, stop them in reverse order."""
        started: list[Service] = []
        try:
            for service in self.services:
                service.start()
                started.append(service)
                event(log, "started", service=service.name)
            event(log, "agent ready", data_dir=self.config.agent.data_dir)
            self.notifier.ready(f"{len(started)} services running")
            # Never block the main thread without a timeout: a SIGTERM delivered to one of the services' threads is
            # handled (by CPython, in the main thread) only when the main thread next runs Python code.
            watchdog = watchdog_interval_s()
            next_watchdog = time.monotonic()
            while not self._stop.wait(_MAIN_WAKE_S if watchdog is None else min(_MAIN_WAKE_S, watchdog)):
                if watchdog is not None and time.monotonic() >= next_watchdog:
                    self.notifier.watchdog()
                    next_watchdog = time.monotonic() + watchdog
        finally:
            self.notifier.stopping()
            for service in reversed(started):
                _stop_service(service)
            event(log, "agent stopped")

    def run_until_signal(self) -> None:
        """:meth:`run`, stopping cleanly on SIGTERM or SIGINT (main thread only); SIGUSR1 writes every thread's
        stack to stderr (``kill -USR1``: what is a stuck agent doing?)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.shutdown())
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        self.run()


def _stop_service(service: Service) -> None:
    """Stop one service; if it takes longer than :data:`_SLOW_STOP_S`, log it and dump every thread's stack."""

    def slow() -> None:
        event(log, "service slow to stop; thread stacks follow", level=logging.WARNING, service=service.name)
        with contextlib.suppress(OSError, ValueError):  # stderr without a file descriptor (captured)
            faulthandler.dump_traceback(sys.stderr, all_threads=True)

    timer = threading.Timer(_SLOW_STOP_S, slow)
    timer.daemon = True
    timer.start()
    try:
        service.stop()
    except Exception:
        log.exception("stopping %s failed", service.name)
    finally:
        timer.cancel()


def data_modes(config: AgentConfig) -> DataModes:
    """The modes of the data directory and what is in it: private to the agent's user, or readable by its group
    (``[agent] group_access``); the directory lets the group through to a control socket in it
    (``[control] group_access``)."""
    data_dir, control = config.agent.data_dir, config.control
    socket_inside = control.enabled and control.group_access and control.path(data_dir).parent == data_dir
    return DataModes.for_group(config.agent.group_access, group_search=socket_inside)


def data_entries(data_dir: Path) -> Iterator[Path]:
    """What :func:`protect_data_dir` tightens and doctor looks at: the directories and files directly in the data
    directory and the files in its ``keys/`` (not links, nor sockets: a socket's mode is its server's)."""
    for entry in sorted(data_dir.iterdir()):
        if entry.is_symlink() or entry.is_socket():
            continue
        yield entry
        if entry.name == "keys" and entry.is_dir():
            yield from (key for key in sorted(entry.iterdir()) if key.is_file() and not key.is_symlink())


def protect_data_dir(config: AgentConfig) -> list[Path]:
    """Create the data directory at :func:`data_modes`, or take the bits beyond them off it and off
    :func:`data_entries` (what is deeper is out of reach through them); the paths changed.

    :class:`~edge.errors.ConfigError` when the data directory's mode cannot be set (another user owns it): the
    privacy of everything in it rests on that. An entry in it that cannot be tightened is logged as a warning."""
    modes, data_dir = data_modes(config), config.agent.data_dir
    changed: list[Path] = []
    try:
        make_dirs(data_dir, modes.root)
        if stat.S_IMODE(data_dir.stat().st_mode) != modes.root:  # exactly: the group may need its search bit
            os.chmod(data_dir, modes.root)
            changed.append(data_dir)
    except OSError as exc:
        raise ConfigError(
            f"agent.data_dir: cannot make {data_dir} private ({exc.strerror}); it must belong to the agent's user"
        ) from exc
    stuck: list[str] = []
    for entry in data_entries(data_dir):
        try:
            if tighten(entry, modes.directory if entry.is_dir() else modes.file):
                changed.append(entry)
        except OSError as exc:
            stuck.append(f"{entry.relative_to(data_dir)} ({exc.strerror})")
    if changed:
        names = " ".join("." if p == data_dir else str(p.relative_to(data_dir)) for p in changed)
        event(log, "data directory permissions tightened", paths=names)
    if stuck:
        event(log, "data directory entries left too open", level=logging.WARNING, paths=" ".join(stuck))
    return changed


def updater_for(config: AgentConfig, report: Reporter | None = None) -> OtaUpdater:
    """The OTA updater of ``config`` (:func:`ota.service.build_updater` from ``[ota]``, given the pipeline's model
    loader, the factory bundle and the device id): the agent's, and that of ``btt-edge ota`` and doctor. Reads
    nothing."""
    import dataclasses
    import socket

    from edge.pipeline.analyzer import Analyzer, open_analyzer, resolve_bundle_path
    from ota.service import build_updater

    data_dir = config.agent.data_dir

    def load(path: Path) -> Analyzer:
        return open_analyzer(dataclasses.replace(config.pipeline, bundle_path=path), data_dir)

    return build_updater(
        config.ota,
        data_dir,
        factory=resolve_bundle_path(config.pipeline.bundle_path),
        load=load,
        device_id=config.receipts.device_id or socket.gethostname(),
        report=report,
    )


def build_agent(config: AgentConfig) -> Agent:
    """Wire every component from ``config``'s sections; nothing is read or written until :meth:`Agent.run`.

    The services start in the order of the list at the end (and stop in reverse); each does its I/O (tables,
    keys, sockets, threads) in its ``start``."""
    from edge.capacity import CapacityService, IndexActivity
    from edge.control import AgentState, ControlServer
    from edge.ingest.activity import IngestYield
    from edge.ingest.scp import StorageSCP
    from edge.outbox import Outbox
    from edge.receipts.book import ReceiptBook
    from edge.receipts.service import SettlementService
    from edge.store.image_store import ImageStore
    from edge.store.retention import Pruner
    from edge.sync import SyncService
    from ota.service import OtaService, outbox_reporter

    data_dir = config.agent.data_dir
    store = ImageStore(data_dir, min_free_mb=config.dicom.min_free_mb, duplicate_policy=config.dicom.duplicate_policy)
    # The receipt book: pass it to every component where a use happens (pipeline, unit bridge); they call
    # book.record(conn, Use(...)) inside their own transaction. The settlement service opens it (identity, tables,
    # parked uses signed) before any of them starts. None when [receipts] enabled = false.
    book = ReceiptBook(None) if config.receipts.enabled else None
    settlement = None if book is None else SettlementService(config.receipts, data_dir, book)
    # The outbox: components queue telemetry (kinds "results", "offers") with outbox.enqueue(conn, kind, body)
    # inside their own transaction; receipts and settlements reach it from the book (edge.outbox.feed). The
    # sync service sends it to the relay when [sync] url (btt-edge run --mqtt) is set, else it queues offline.
    outbox = Outbox(config.outbox)
    scp = StorageSCP(config.dicom, store)
    # STOW-RS uploads ([dicomweb], off by default) go into the same store; its listeners wake the pipeline as well.
    stow = None
    if config.dicomweb.enabled:
        from edge.ingest.stow import StowReceiver

        stow = StowReceiver(config.dicomweb, store)
    # Model updates (ota, docs/ota.md): the pipeline runs the active A/B slot (else [pipeline] bundle_path); the
    # updater is its model gate, switching or rolling back only while nothing is in flight. Failures are
    # reported to the relay through the outbox (kind "health").
    updater = updater_for(config, outbox_reporter(outbox, data_dir))
    ota_service = (
        OtaService(updater, check_interval_s=config.ota.check_interval_s) if config.ota.repository_url else None
    )
    # One image-sized job at a time: the pipeline (decode, model, findings) and the results builder (overlay, GSPS)
    # each peak at a few hundred MB while they work on an image, so they take turns and the agent's peak is the
    # larger of the two, not their sum (bench/inference: agent peak RSS).
    image_lock = threading.Lock()
    # Analysis and drawing results yield to ingest: they wait while the SCP is receiving (bounded by max_defer_s).
    ingest_yield = IngestYield(quiet_s=config.pipeline.ingest_quiet_s, max_defer_s=config.pipeline.max_defer_s)
    pipeline_service = None
    if config.pipeline.enabled:
        from edge.pipeline.worker import PipelineService

        pipeline = config.pipeline
        pipeline_service = PipelineService(
            data_dir,
            updater.load_active,
            queue_size=pipeline.queue_size,
            poll_interval_s=pipeline.poll_interval_s,
            book=book,
            outbox=outbox,
            model_gate=updater,
            image_lock=image_lock,
            ingest_activity=scp.receiving_at,
            ingest_yield=ingest_yield,
        )
        # A new image wakes the worker at once; polling stays as the fallback (e.g. after a restart). So does the
        # end of an association: analysis waiting for ingest to go quiet starts then.
        store.add_listener(pipeline_service.notify)
        scp.add_close_listener(pipeline_service.notify)
    results_service = None
    if config.results.enabled:
        # Results: the SR and overlay of every analysed instance, queued and sent to [results] destinations
        # (btt-edge run --forward AE@HOST:PORT); the finding codes come from the active bundle's manifest.
        from edge.results.analysis import RecordedAnalyses
        from edge.results.header import Equipment
        from edge.results.service import ResultsService
        from models.bundle import Manifest, load_bundle

        def equipment() -> Equipment:
            # The box's own serial number in every object: its device id, once provisioned (even while running).
            identity = None if book is None else book.identity
            return Equipment(serial_number="" if identity is None else identity.device_id)

        def manifests() -> tuple[Manifest, ...]:
            # every active bundle's: the finding codes of an analysis come from the model that made it
            paths = (updater.active_path(), *config.pipeline.extra_bundles)
            return tuple(load_bundle(path).manifest for path in paths)

        results_service = ResultsService(
            config.results,
            data_dir,
            RecordedAnalyses(manifests),
            calling_ae=config.dicom.ae_title,
            image_lock=image_lock,
            equipment=equipment,
            ingest_activity=scp.receiving_at,
            ingest_yield=ingest_yield,
        )
    stop_requested = threading.Event()
    unit_service = None
    if config.unit.port:
        from edge.unit.service import UnitService

        unit_service = UnitService(config.unit, data_dir, book=book, stop_requested=stop_requested)
    # Spare capacity (edge.capacity, README "Sharing spare capacity"): offers through the outbox, jobs from the
    # relay's "capacity-job" command; clinical work (an open association, an image not yet analysed) pre-empts.
    activity = IndexActivity(data_dir, lambda: scp.active_associations, pipeline=config.pipeline.enabled)
    capacity = CapacityService(config.capacity, data_dir, book, outbox, activity)
    # The relay's "ota-available" command asks the repository at once (no-op while [ota] is off).
    commands: dict[str, Callable[[bytes], None]] = {"capacity-job": capacity.submit}
    commands["ota-available"] = ota_service.notify if ota_service is not None else lambda _payload: None
    sync = SyncService(
        config.sync,
        data_dir,
        outbox,
        book,
        feed_interval_s=config.outbox.feed_interval_s,
        device_id=config.receipts.device_id,
        commands=commands,
    )
    # Technician tools (edge.control, edge.ops): the control socket (btt-edge tui, doctor) and /metrics, /healthz.
    state = AgentState(config, listener=scp, relay=sync, updater=updater)
    control = None
    if config.control.enabled:
        control = ControlServer(config.control, state, updater=updater, results=results_service)
    metrics = None
    if config.metrics.port:
        from edge.ops.metrics import MetricsService

        metrics = MetricsService(config.metrics, state)

    # The start order (each stops in reverse). The data directory is made private before anything is in it; the
    # store's index and the outbox's and book's tables exist before anything that writes to them starts. The
    # control socket starts right after them, so a technician can attach while the rest start (a TensorRT engine
    # build takes minutes) and the live log has their start-up lines; it stops last but for them.
    services: list[Service | None] = [
        _Step("data-dir", lambda: protect_data_dir(config)),
        store,
        _Step("outbox", lambda: _migrate(data_dir, Outbox.migrate)),
        settlement,
        control,
        scp,
        stow,
        Pruner(config.retention, data_dir),
        pipeline_service,
        ota_service,
        results_service,
        unit_service,
        capacity,
        sync,
        metrics,
    ]
    return Agent(config, [s for s in services if s is not None], stop_requested=stop_requested)


class _Step:
    """A start-up step with nothing to stop: a :class:`Service` whose ``start`` runs ``run``."""

    def __init__(self, name: str, run: Callable[[], object]) -> None:
        self.name = name
        self._run = run

    def start(self) -> None:
        self._run()

    def stop(self) -> None:
        pass


def _migrate(data_dir: Path, migrate: Callable[[sqlite3.Connection], None]) -> None:
    """Create or upgrade one package's tables in ``<data_dir>/edge.db``."""
    from edge.db import DB_FILENAME, connect

    conn = connect(data_dir / DB_FILENAME)
    try:
        migrate(conn)
    finally:
        conn.close()
