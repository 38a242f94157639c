"""What the agent knows about itself: the views the control socket and metrics serve.

:class:`AgentState` reads the agent's database (its own read-only connection per call, inside the agent's
process) through each package's own read functions (the store's index, the pipeline's records, the results
queue, the receipt book, the outbox, the unit's log, capacity sharing), never their tables, and asks the live
components it was given (the DICOM listener, the sync link, the OTA updater) for what only they know. A component
that is not configured shows as such; a component that never ran reads as empty. The views are frozen dataclasses
(:class:`StudyLine`, :class:`StudyDetail`, :class:`UnitView`, :class:`ReceiptsView`, :class:`ModelsView`); their
``to_json()`` is what the control socket sends (:class:`StudySummary` and :class:`UnitExposure` are the JSON
form a client reads). Nothing here writes: actions live in :mod:`edge.control.actions`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict, cast

from edge import __version__
from edge.capacity.state import capacity_present
from edge.capacity.state import status as capacity_status
from edge.config import AgentConfig
from edge.db import DB_FILENAME, connect
from edge.errors import EdgeError
from edge.outbox.outbox import Outbox
from edge.pipeline.records import (
    AnalysisSummary,
    ToothFinding,
    analysis_record,
    findings_in_study,
    last_model_run,
    tooth_findings,
)
from edge.plan.errors import PlanError
from edge.plan.study import study_plan
from edge.receipts.book import (
    BalanceLine,
    ReceiptLine,
    balances,
    book_present,
    last_settlement,
    parked_count,
    recent_receipts,
)
from edge.results.queue import SourceDelivery, delivery_counts, source_counts, source_deliveries
from edge.store.index import has_study, index_present, list_instances, list_studies, state_counts, utc_now
from edge.unit.exposures import (
    ExposureLine,
    FaultLine,
    OpenFault,
    UnitDevice,
    UnitLink,
    UnitState,
    UnitSummary,
    devices,
    faults,
    recent_exposures,
    unit_present,
)
from edge.unit.exposures import summary as unit_summary

__all__ = [
    "STAGES",
    "AgentInfo",
    "AgentState",
    "DicomStatus",
    "Disk",
    "ImageDetail",
    "LastAnalysis",
    "Listener",
    "ModelUpdater",
    "ModelsView",
    "Notice",
    "Overview",
    "PipelineStatus",
    "ReceiptsStatus",
    "ReceiptsView",
    "RelayLink",
    "ResultsStatus",
    "SettlementView",
    "StudyDetail",
    "StudyLine",
    "StudySummary",
    "SystemLoad",
    "UnitExposure",
    "UnitStatus",
    "UnitView",
    "study_state",
]

STAGES = ("decode", "preprocess", "infer", "postprocess", "total")
"""Pipeline stages whose latencies are recorded with every analysis (``pipeline_results.timings_json``, ms)."""


_OTA_STATUS_TTL_S = 3.0


class Listener(Protocol):
    """The DICOM listener (:class:`edge.ingest.scp.StorageSCP`)."""

    @property
    def active_associations(self) -> int: ...


class RelayLink(Protocol):
    """The sync service (:class:`edge.sync.SyncService`)."""

    def health(self, conn: sqlite3.Connection) -> dict[str, object]: ...


class ModelUpdater(Protocol):
    """The OTA updater (:class:`ota.updater.OtaUpdater`)."""

    def status(self) -> dict[str, Any]: ...


class StudySummary(TypedDict):
    """:class:`StudyLine` as the ``studies`` view sends it (what a client of the control socket reads)."""

    study_uid: str
    study_date: str
    """DICOM ``YYYYMMDD``, empty if the image did not say."""
    study_description: str
    last_received_at: str
    patient_id: str
    patient_name: str
    """DICOM person name (``Family^Given``), empty if the image did not say."""
    images: int
    states: dict[str, int]
    """Pipeline state -> number of the study's images in it."""
    state: str
    """:func:`study_state` of ``states``."""
    findings: int


class UnitExposure(TypedDict):
    """One exposure of the ``unit`` view's exposure log as the socket sends it
    (:class:`edge.unit.exposures.ExposureLine`)."""

    unit_serial: str
    exposure_id: int
    program: str
    kvp: float
    ma: float
    duration_ms: int
    """Beam-on time (the unit's ``time_ms``), a length of time."""
    started_ms: int
    """When the exposure began: Unix milliseconds, UTC, on the unit's clock."""
    aborted: bool
    dap_mgy_cm2: float
    image_state: str


class _View:
    """A view: ``to_json()`` is what the control socket sends."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = dataclasses.asdict(cast(Any, self))
        return doc


@dataclass(frozen=True)
class StudyLine(_View):
    """One study of the ``studies`` view: who and what it is (as a person recognises it) and how far it got."""

    study_uid: str
    study_date: str
    """DICOM ``YYYYMMDD``, empty if the image did not say."""
    study_description: str
    last_received_at: str
    patient_id: str
    patient_name: str
    """DICOM person name (``Family^Given``), empty if the image did not say."""
    images: int
    states: dict[str, int]
    """Pipeline state -> number of the study's images in it."""
    state: str
    """:func:`study_state` of ``states``."""
    findings: int


@dataclass(frozen=True)
class ImageDetail:
    """One image of the ``study`` view: its state, analysis, findings by tooth and result deliveries."""

    sop_instance_uid: str
    modality: str
    pipeline_state: str
    state_reason: str
    received_at: str
    analysis: AnalysisSummary | None
    findings: list[ToothFinding]
    deliveries: list[SourceDelivery]


@dataclass(frozen=True)
class StudyDetail(_View):
    """The ``study`` view."""

    study_uid: str
    images: list[ImageDetail]
    ai_label: str = "AI findings: for review by a clinician"


@dataclass(frozen=True)
class UnitView(_View):
    """The ``unit`` view: identity, status and link of the unit, its fault history and its exposure log."""

    configured: bool
    link: UnitLink | None
    units: list[UnitState]
    open_faults: list[OpenFault]
    devices: list[UnitDevice]
    faults: list[FaultLine]
    exposures: list[ExposureLine]


@dataclass(frozen=True)
class SettlementView:
    """The last settlement and the relay's answer to it."""

    batch: int
    first_seq: int
    last_seq: int
    closed_ms: int
    relay: str


@dataclass(frozen=True)
class ReceiptsView(_View):
    """The ``receipts`` view: balances of the installed rights, recent receipts, the last settlement."""

    enabled: bool
    balances: list[BalanceLine]
    receipts: list[ReceiptLine]
    pending: int
    settlement: SettlementView | None


@dataclass(frozen=True)
class LastAnalysis:
    """The model and backend of the latest analysis (the ``models`` view)."""

    model_id: str
    model_version: str
    backend: str
    recorded_at: str


@dataclass(frozen=True)
class ModelsView(_View):
    """The ``models`` view: the OTA state, the last repository check, the backend in use."""

    ota: dict[str, Any]
    repository: str
    last_check: dict[str, Any] | None
    backend_setting: str
    last_analysis: LastAnalysis | None


@dataclass(frozen=True)
class AgentInfo:
    """The agent process: version, uptime, pid, data directory."""

    version: str
    uptime_s: int
    pid: int
    data_dir: str


@dataclass(frozen=True)
class UnitStatus:
    """The unit on the overview: configured or not, its link, its units and their open faults."""

    configured: bool
    port: str
    link: UnitLink | None
    units: list[UnitState]
    open_faults: list[OpenFault]


@dataclass(frozen=True)
class DicomStatus:
    """The DICOM listener on the overview."""

    ae_title: str
    port: int
    associations: int | None
    """Open right now; None when the state has no listener (a state read outside the agent)."""
    max_associations: int


@dataclass(frozen=True)
class PipelineStatus:
    """Analysis on the overview: images by state, the queue, the model and the backend it last ran on."""

    enabled: bool
    states: dict[str, int]
    queue: int
    model: dict[str, Any]
    """The updater's active model (``id``, ``version``...), or ``error``."""
    backend: str | None
    precision: str | None
    backend_setting: str


@dataclass(frozen=True)
class ResultsStatus:
    """Result deliveries and builds by state."""

    deliveries: dict[str, int]
    sources: dict[str, int]


@dataclass(frozen=True)
class ReceiptsStatus:
    """Uses parked without a receipt."""

    parked: int


@dataclass(frozen=True)
class Disk(_View):
    """The data disk: free and total space, and the reserve the store keeps."""

    path: str
    free_mb: int
    total_mb: int
    reserve_mb: int


@dataclass(frozen=True)
class SystemLoad:
    """Load average, CPUs and GPU load."""

    load: list[float]
    cpus: int
    gpu: str


@dataclass(frozen=True)
class Notice:
    """Something a technician should look at besides what the health checks judge."""

    level: str
    """``error`` or ``warning``."""
    text: str


@dataclass(frozen=True)
class Overview(_View):
    """The ``overview`` view: everything on one screen. ``alerts`` are the health checks that are not ok
    (:func:`edge.ops.health.overview_checks` of this view's JSON), as ``/healthz`` has them."""

    time: str
    agent: AgentInfo
    unit: UnitStatus
    dicom: DicomStatus
    pipeline: PipelineStatus
    results: ResultsStatus
    relay: dict[str, Any]
    """Configured, connected, the outbox's counts and depth (the sync service's health when it runs)."""
    receipts: ReceiptsStatus
    ota_event: Any
    """The updater's last event (``event``, ``reason``...), or None."""
    disk: Disk
    system: SystemLoad
    notices: list[Notice]
    alerts: list[dict[str, str]]


def study_state(counts: dict[str, int]) -> str:
    """One word for a study from the pipeline states of its instances (``received``, ``analysing``, ``analysed``,
    ``results sent``, ``failed``, ``skipped``)."""
    if counts.get("failed"):
        return "failed"
    if counts.get("received") or counts.get("processing"):
        return "analysing" if counts.get("processing") else "received"
    if counts.get("analysed"):
        return "analysed"
    if counts.get("forwarded"):
        return "results sent"
    return "skipped" if counts.get("skipped") else "received"


class AgentState:
    """Read-only views of one agent."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        listener: Listener | None = None,
        relay: RelayLink | None = None,
        updater: ModelUpdater | None = None,
    ) -> None:
        self.config = config
        self.data_dir = config.agent.data_dir
        self._listener = listener
        self._relay = relay
        self._updater = updater
        self._started = time.monotonic()
        self._ota_cache: tuple[float, dict[str, Any]] | None = None
        self.last_offer: dict[str, Any] | None = None
        """The last ``ota.check`` answer (set by the actions), shown on the models view."""

    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection to the agent's database, closed afterwards."""
        conn = connect(self.data_dir / DB_FILENAME, readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def changed(self) -> None:
        """Forget cached component state (after an action changed it)."""
        self._ota_cache = None

    # --- views ------------------------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return {"version": __version__, "uptime_s": int(time.monotonic() - self._started), "pid": os.getpid()}

    def overview(self) -> Overview:
        """Everything on one screen: unit, DICOM listener, pipeline, model, relay, disk, system, alerts."""
        cfg = self.config
        with self.db() as conn:
            states = state_counts(conn)
            unit = self._unit_summary(conn)
            relay = self._relay_state(conn)
            last = last_model_run(conn, analysed_only=True)
            results = ResultsStatus(deliveries=delivery_counts(conn), sources=source_counts(conn))
            parked = parked_count(conn)
        ping = self.ping()
        overview = Overview(
            time=utc_now(),
            agent=AgentInfo(ping["version"], ping["uptime_s"], ping["pid"], str(self.data_dir)),
            unit=UnitStatus(
                configured=bool(cfg.unit.port),
                port=cfg.unit.port,
                link=unit.link,
                units=unit.units,
                open_faults=unit.open_faults,
            ),
            dicom=DicomStatus(
                ae_title=cfg.dicom.ae_title,
                port=cfg.dicom.port,
                associations=None if self._listener is None else self._listener.active_associations,
                max_associations=cfg.dicom.max_associations,
            ),
            pipeline=PipelineStatus(
                enabled=cfg.pipeline.enabled,
                states=states,
                queue=states.get("received", 0) + states.get("processing", 0),
                model=self._active_model(),
                backend=None if last is None else last.backend,
                precision=None if last is None else last.precision,
                backend_setting=cfg.pipeline.backend,
            ),
            results=results,
            relay=relay,
            receipts=ReceiptsStatus(parked=parked),
            ota_event=self._ota_status().get("last_event"),
            disk=self.disk(),
            system=_system(),
            notices=[],
            alerts=[],
        )
        from edge.ops.health import Health, overview_checks

        # The conditions a typed health check judges (disk, model, unit link) are judged there, once; the other
        # notices become checks of their own. The alerts are those checks that are not ok, as /healthz has them.
        overview = dataclasses.replace(overview, notices=_notices(overview))
        return dataclasses.replace(overview, alerts=Health(tuple(overview_checks(overview.to_json()))).alerts())

    def health(self) -> dict[str, Any]:
        """The agent's health as ``/healthz`` and doctor judge it (:func:`edge.ops.health.agent_health`)."""
        from edge.ops.health import agent_health

        return agent_health(self).to_json()

    def disk(self) -> Disk:
        usage = shutil.disk_usage(self.data_dir)
        return Disk(
            path=str(self.data_dir),
            free_mb=usage.free // 2**20,
            total_mb=usage.total // 2**20,
            reserve_mb=self.config.dicom.min_free_mb,
        )

    def studies(self, limit: int = 50) -> list[StudyLine]:
        """Recent studies, newest first, with their state and counts of images and findings."""
        with self.db() as conn:
            if not index_present(conn):
                return []
            return [
                StudyLine(
                    study_uid=study.study_uid,
                    study_date=study.study_date,
                    study_description=study.study_description,
                    last_received_at=study.last_received_at,
                    patient_id=study.patient_id,
                    patient_name=study.patient_name,
                    images=sum(study.states.values()),
                    states=study.states,
                    state=study_state(study.states),
                    findings=findings_in_study(conn, study.study_uid),
                )
                for study in list_studies(conn, max(1, min(int(limit), 1000)))
            ]

    def study(self, study_uid: str) -> StudyDetail:
        """One study: each image with its state, analysis, findings per tooth and result deliveries."""
        with self.db() as conn:
            if not has_study(conn, study_uid):
                raise EdgeError(f"no study {study_uid!r} on this box")
            images = [
                ImageDetail(
                    sop_instance_uid=inst.sop_instance_uid,
                    modality=inst.modality,
                    pipeline_state=inst.pipeline_state,
                    state_reason=inst.state_reason,
                    received_at=inst.received_at,
                    analysis=_analysis(conn, inst.sop_instance_uid),
                    findings=tooth_findings(conn, inst.sop_instance_uid),
                    deliveries=source_deliveries(conn, inst.sop_instance_uid),
                )
                for inst in list_instances(conn, study_uid)
            ]
        return StudyDetail(study_uid=study_uid, images=images)

    def plan(self, study_uid: str) -> dict[str, Any]:
        """The draft treatment plan of one study (:func:`edge.plan.study.study_plan`: an AI draft for the dentist
        to review), with ``available``; false (and why) when plans are off or none can be made."""
        if not self.config.plan.enabled:
            return {"available": False, "reason": "draft plans are off on this box ([plan] enabled = false)"}
        try:
            with self.db() as conn:
                plan = study_plan(conn, self.config.plan, study_uid, now_ms=int(time.time() * 1000))
        except PlanError as exc:  # a clinic's malformed table, a study gone: said in the view, not as a dead link
            return {"available": False, "reason": str(exc)}
        return {"available": True, **plan.to_json()}

    def unit(self) -> UnitView:
        """Identity, status and link of the unit, its fault history and its exposure log."""
        with self.db() as conn:
            summary = self._unit_summary(conn)
            present = unit_present(conn)
            return UnitView(
                configured=bool(self.config.unit.port),
                link=summary.link,
                units=summary.units,
                open_faults=summary.open_faults,
                devices=devices(conn) if present else [],
                faults=faults(conn) if present else [],
                exposures=recent_exposures(conn) if present else [],
            )

    def receipts(self) -> ReceiptsView:
        """Balances of the installed rights, recent receipts, and the last settlement with the relay's answer."""
        enabled = self.config.receipts.enabled
        with self.db() as conn:
            if not enabled or not book_present(conn):
                return ReceiptsView(enabled=enabled, balances=[], receipts=[], pending=0, settlement=None)
            last = last_settlement(conn)
            settlement = None
            if last is not None:
                settlement = SettlementView(
                    **dataclasses.asdict(last), relay=self._relay_answer(conn, f"settlement:{last.batch}:")
                )
            return ReceiptsView(
                enabled=True,
                balances=balances(conn),
                receipts=recent_receipts(conn),
                pending=parked_count(conn),
                settlement=settlement,
            )

    def models(self) -> ModelsView:
        """The OTA state (active model, slots, last event), the last repository check, the backend in use."""
        with self.db() as conn:
            last = last_model_run(conn)
        return ModelsView(
            ota=self._ota_status(),
            repository=self.config.ota.repository_url,
            last_check=self.last_offer,
            backend_setting=self.config.pipeline.backend,
            last_analysis=None
            if last is None
            else LastAnalysis(last.model_id, last.model_version, last.backend, last.recorded_at),
        )

    def capacity(self) -> dict[str, Any]:
        """Capacity sharing (:func:`edge.capacity.state.status`): the switch, the policy's last decision, the open
        offer, recent jobs and totals; ``available`` false (and why) when the agent has no capacity tables."""
        with self.db() as conn:
            if not capacity_present(conn):
                return {"available": False, "reason": "capacity sharing has not run on this agent yet"}
            return {"available": True, **capacity_status(conn, self.config.capacity.enabled).to_json()}

    # --- parts ------------------------------------------------------------------------------------------------

    @staticmethod
    def _unit_summary(conn: sqlite3.Connection) -> UnitSummary:
        if not unit_present(conn):
            return UnitSummary(exposures={}, images={}, units=[], open_faults=[], link=None)
        return unit_summary(conn)

    def _relay_state(self, conn: sqlite3.Connection) -> dict[str, Any]:
        doc: dict[str, Any] = {"configured": bool(self.config.sync.url), "connected": None}
        present = Outbox.present(conn)
        if self._relay is not None and present:
            health = self._relay.health(conn)
            link, outbox = health["link"], health["outbox"]
            assert isinstance(link, dict)
            assert isinstance(outbox, dict)
            doc["connected"] = bool(link["connected"])
            doc["outbox"] = outbox
        elif present:
            stats = Outbox(self.config.outbox).stats(conn)
            doc["outbox"] = {"pending": stats["pending"], "rejected": stats["rejected"]}
        else:
            doc["outbox"] = {"pending": {}, "rejected": 0}
        doc["outbox_depth"] = sum(doc["outbox"]["pending"].values())
        return doc

    @staticmethod
    def _relay_answer(conn: sqlite3.Connection, prefix: str) -> str:
        if not Outbox.present(conn):
            return "not queued"
        state = Outbox.state_of_prefix(conn, prefix)
        if state is None:
            return "not queued (or confirmed and pruned)"
        answers = {"done": "confirmed", "pending": "waiting for the relay", "rejected": "rejected"}
        return answers.get(state, state)

    def _ota_status(self) -> dict[str, Any]:
        """The updater's status, at most ``_OTA_STATUS_TTL_S`` old (it reads the active bundle's manifest)."""
        if self._updater is None:
            return {"error": "no model updater in this agent"}
        now = time.monotonic()
        if self._ota_cache is not None and now - self._ota_cache[0] < _OTA_STATUS_TTL_S:
            return self._ota_cache[1]
        try:
            status = self._updater.status()
        except EdgeError as exc:
            status = {"error": str(exc)}
        self._ota_cache = (now, status)
        return status

    def _active_model(self) -> dict[str, Any]:
        status = self._ota_status()
        model = status.get("active_model")
        return model if isinstance(model, dict) else {"error": status.get("error", "unknown")}


# --- helpers ------------------------------------------------------------------------------------------------------


def _analysis(conn: sqlite3.Connection, sop_instance_uid: str) -> AnalysisSummary | None:
    record = analysis_record(conn, sop_instance_uid)
    return None if record is None else record.summary()


def _gpu() -> str:
    for path in ("/sys/devices/gpu.0/load", "/sys/devices/platform/gpu.0/load"):
        with contextlib.suppress(OSError, ValueError):
            return f"{int(Path(path).read_text().strip()) / 10:.0f}% (Jetson GPU)"
    return "no GPU load reported"


def _system() -> SystemLoad:
    load = os.getloadavg()
    return SystemLoad(load=[round(x, 2) for x in load], cpus=os.cpu_count() or 1, gpu=_gpu())


def _notices(overview: Overview) -> list[Notice]:
    """What a technician should look at besides the disk, the model and the unit link (which
    :func:`edge.ops.health.overview_checks` judges from the overview itself), worst first."""
    alerts: list[Notice] = []

    def add(level: str, text: str) -> None:
        alerts.append(Notice(level, text))

    for fault in overview.unit.open_faults:
        add("warning", f"unit {fault.unit_serial} fault {fault.code} since {fault.raised_at}")
    failed = overview.pipeline.states.get("failed", 0)
    if failed:
        add("warning", f"{failed} image(s) failed analysis")
    unbuilt = overview.results.sources.get("failed", 0)
    if unbuilt:
        add("warning", f"results of {unbuilt} image(s) could not be built (see Logs)")
    stuck = sum(overview.results.deliveries.get(s, 0) for s in ("dead", "rejected"))
    if stuck:
        add("warning", f"{stuck} result deliveries dead or rejected (Studies: resend)")
    if overview.receipts.parked:
        add("warning", f"{overview.receipts.parked} use(s) parked without a receipt: btt-edge provision")
    last = overview.ota_event
    if isinstance(last, dict) and last.get("event") == "rollback":
        add("warning", f"model rolled back: {last.get('reason', '')}")
    relay = overview.relay
    if relay["configured"] and relay["connected"] is False:
        add("warning", "relay link down: the outbox is queuing")
    if relay["outbox"].get("rejected"):
        add("warning", f"{relay['outbox']['rejected']} outbox item(s) rejected by the relay (requeue)")
    alerts.sort(key=lambda a: a.level != "error")
    return alerts
