"""What the agent knows about itself, as plain JSON-able values: the views the control socket and metrics serve.

:class:`AgentState` reads the agent's database (its own read-only connection per call, inside the agent's
process) and asks the live components it was given (the DICOM listener, the sync link, the OTA updater) for what
only they know. A component that is not configured shows as such; a table a disabled component never created
reads as empty. Nothing here writes: actions live in :mod:`edge.control.actions`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypedDict

from edge import __version__
from edge.config import AgentConfig
from edge.db import DB_FILENAME, connect
from edge.errors import EdgeError
from edge.store.index import utc_now

__all__ = [
    "STAGES",
    "AgentState",
    "Listener",
    "ModelUpdater",
    "RelayLink",
    "StudySummary",
    "UnitExposure",
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


class UnitExposure(TypedDict):
    """One exposure of the ``unit`` view's exposure log."""

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

    def overview(self) -> dict[str, Any]:
        """Everything on one screen: unit, DICOM listener, pipeline, model, relay, disk, system, alerts."""
        cfg = self.config
        with self.db() as conn:
            states = _counts(conn, "SELECT pipeline_state, COUNT(*) FROM instances GROUP BY pipeline_state")
            unit = self._unit_summary(conn)
            relay = self._relay_state(conn)
            last = _one(
                conn,
                "SELECT model_id, model_version, backend, precision FROM pipeline_results WHERE status = 'analysed' "
                "ORDER BY recorded_at DESC",
            )
            deliveries = _counts(conn, "SELECT state, COUNT(*) FROM results_deliveries GROUP BY state")
            built = _counts(conn, "SELECT state, COUNT(*) FROM results_sources GROUP BY state")
            parked = _one(conn, "SELECT COUNT(*) FROM receipt_pending")
        doc: dict[str, Any] = {
            "time": utc_now(),
            "agent": {**self.ping(), "data_dir": str(self.data_dir)},
            "unit": {
                "configured": bool(cfg.unit.port),
                "port": cfg.unit.port,
                "link": unit["link"],
                "units": unit["units"],
                "open_faults": unit["open_faults"],
            },
            "dicom": {
                "ae_title": cfg.dicom.ae_title,
                "port": cfg.dicom.port,
                "associations": None if self._listener is None else self._listener.active_associations,
                "max_associations": cfg.dicom.max_associations,
            },
            "pipeline": {
                "enabled": cfg.pipeline.enabled,
                "states": states,
                "queue": states.get("received", 0) + states.get("processing", 0),
                "model": self._active_model(),
                "backend": None if last is None else last["backend"],
                "precision": None if last is None else last["precision"],
                "backend_setting": cfg.pipeline.backend,
            },
            "results": {"deliveries": deliveries, "sources": built},
            "relay": relay,
            "receipts": {"parked": 0 if parked is None else int(parked[0])},
            "ota_event": self._ota_status().get("last_event"),
            "disk": self.disk(),
            "system": _system(),
        }
        from edge.ops.health import Health, overview_checks

        # The conditions a typed health check judges (disk, model, unit link) are judged there, once; the other
        # notices become checks of their own. The alerts are those checks that are not ok, as /healthz has them.
        doc["notices"] = _notices(doc)
        doc["alerts"] = Health(tuple(overview_checks(doc))).alerts()
        return doc

    def health(self) -> dict[str, Any]:
        """The agent's health as ``/healthz`` and doctor judge it (:func:`edge.ops.health.agent_health`)."""
        from edge.ops.health import agent_health

        return agent_health(self).to_json()

    def disk(self) -> dict[str, Any]:
        usage = shutil.disk_usage(self.data_dir)
        return {
            "path": str(self.data_dir),
            "free_mb": usage.free // 2**20,
            "total_mb": usage.total // 2**20,
            "reserve_mb": self.config.dicom.min_free_mb,
        }

    def studies(self, limit: int = 50) -> list[StudySummary]:
        """Recent studies, newest first, with their state and counts of images and findings."""
        with self.db() as conn:
            if not _has(conn, "studies"):
                return []
            rows = conn.execute(
                "SELECT s.study_uid, s.study_date, s.study_description, s.last_received_at, p.patient_id, "
                "p.patient_name "
                "FROM studies s JOIN patients p ON p.patient_key = s.patient_key "
                "ORDER BY s.last_received_at DESC LIMIT ?",
                (max(1, min(int(limit), 1000)),),
            ).fetchall()
            out: list[StudySummary] = []
            for row in rows:
                counts = _counts(
                    conn,
                    "SELECT i.pipeline_state, COUNT(*) FROM instances i JOIN series se ON se.series_uid = i.series_uid "
                    "WHERE se.study_uid = ? GROUP BY i.pipeline_state",
                    (row["study_uid"],),
                )
                findings = 0
                if _has(conn, "pipeline_findings"):
                    findings = conn.execute(
                        "SELECT COUNT(*) FROM pipeline_findings f JOIN instances i ON i.sop_instance_uid = "
                        "f.sop_instance_uid JOIN series se ON se.series_uid = i.series_uid WHERE se.study_uid = ?",
                        (row["study_uid"],),
                    ).fetchone()[0]
                out.append(
                    StudySummary(
                        study_uid=row["study_uid"],
                        study_date=row["study_date"],
                        study_description=row["study_description"],
                        last_received_at=row["last_received_at"],
                        patient_id=row["patient_id"],
                        patient_name=row["patient_name"],
                        images=sum(counts.values()),
                        states=counts,
                        state=study_state(counts),
                        findings=int(findings),
                    )
                )
        return out

    def study(self, study_uid: str) -> dict[str, Any]:
        """One study: each image with its state, analysis, findings per tooth and result deliveries."""
        with self.db() as conn:
            if (
                not _has(conn, "studies")
                or _one(conn, "SELECT 1 FROM studies WHERE study_uid = ?", (study_uid,)) is None
            ):
                raise EdgeError(f"no study {study_uid!r} on this box")
            instances = conn.execute(
                "SELECT i.sop_instance_uid, se.modality, i.pipeline_state, i.state_reason, i.received_at "
                "FROM instances i JOIN series se ON se.series_uid = i.series_uid WHERE se.study_uid = ? "
                "ORDER BY i.received_at",
                (study_uid,),
            ).fetchall()
            images = []
            for inst in instances:
                uid = inst["sop_instance_uid"]
                analysis = None
                findings: list[dict[str, Any]] = []
                if _has(conn, "pipeline_results"):
                    r = _one(
                        conn,
                        "SELECT status, reason, model_id, model_version, backend, precision, clinical, timings_json "
                        "FROM pipeline_results WHERE sop_instance_uid = ?",
                        (uid,),
                    )
                    if r is not None:
                        analysis = {**dict(r), "timings_ms": json.loads(r["timings_json"] or "{}")}
                        del analysis["timings_json"]
                    findings = [
                        dict(f)
                        for f in conn.execute(
                            "SELECT kind, tooth_fdi, confidence FROM pipeline_findings WHERE sop_instance_uid = ? "
                            "ORDER BY tooth_fdi, kind",
                            (uid,),
                        )
                    ]
                deliveries = []
                if _has(conn, "results_objects"):
                    deliveries = [
                        dict(d)
                        for d in conn.execute(
                            "SELECT o.object_uid, o.kind, d.destination, d.state, d.attempts, d.last_error "
                            "FROM results_objects o JOIN results_deliveries d ON d.object_uid = o.object_uid "
                            "WHERE o.source_sop_uid = ? ORDER BY o.kind, d.destination",
                            (uid,),
                        )
                    ]
                images.append({**dict(inst), "analysis": analysis, "findings": findings, "deliveries": deliveries})
        return {"study_uid": study_uid, "images": images, "ai_label": "AI findings: for review by a clinician"}

    def unit(self) -> dict[str, Any]:
        """Identity, status and link of the unit, its fault history and its exposure log."""
        with self.db() as conn:
            doc: dict[str, Any] = {"configured": bool(self.config.unit.port), **self._unit_summary(conn)}
            has = _has(conn, "unit_devices")
            doc["devices"] = [dict(r) for r in conn.execute("SELECT * FROM unit_devices")] if has else []
            doc["faults"] = (
                [dict(r) for r in conn.execute("SELECT * FROM unit_faults ORDER BY raised_at DESC LIMIT 100")]
                if has
                else []
            )
            doc["exposures"] = _exposures(conn) if has else []
        return doc

    def receipts(self) -> dict[str, Any]:
        """Balances of the installed rights, recent receipts, and the last settlement with the relay's answer."""
        enabled = self.config.receipts.enabled
        with self.db() as conn:
            if not enabled or not _has(conn, "receipts"):
                return {"enabled": enabled, "balances": [], "receipts": [], "pending": 0, "settlement": None}
            balances = [
                dict(r)
                for r in conn.execute(
                    "SELECT id, kind, holder, units, used, units - used AS remaining, not_after_ms FROM receipt_grants "
                    "ORDER BY kind, id"
                )
            ]
            recent = [
                dict(r)
                for r in conn.execute(
                    "SELECT seq, time_ms, kind, right_id, units, overage_units FROM receipts ORDER BY seq DESC LIMIT 50"
                )
            ]
            pending = conn.execute("SELECT COUNT(*) FROM receipt_pending").fetchone()[0]
            last = _one(
                conn, "SELECT batch, first_seq, last_seq, closed_ms FROM receipt_settlements ORDER BY batch DESC"
            )
            settlement = None
            if last is not None:
                settlement = {**dict(last), "relay": self._relay_answer(conn, f"settlement:{last['batch']}:%")}
        return {
            "enabled": True,
            "balances": balances,
            "receipts": recent,
            "pending": int(pending),
            "settlement": settlement,
        }

    def models(self) -> dict[str, Any]:
        """The OTA state (active model, slots, last event), the last repository check, the backend in use."""
        with self.db() as conn:
            last = _one(
                conn,
                "SELECT model_id, model_version, backend, recorded_at FROM pipeline_results ORDER BY recorded_at DESC",
            )
        return {
            "ota": self._ota_status(),
            "repository": self.config.ota.repository_url,
            "last_check": self.last_offer,
            "backend_setting": self.config.pipeline.backend,
            "last_analysis": None if last is None else dict(last),
        }

    def capacity(self) -> dict[str, Any]:
        """Capacity sharing (:func:`edge.capacity.state.status`): the switch, the policy's last decision, the open
        offer, recent jobs and totals; ``available`` false (and why) when the agent has no capacity tables."""
        with self.db() as conn:
            if not _has(conn, "capacity_state"):
                return {"available": False, "reason": "capacity sharing has not run on this agent yet"}
            from edge.capacity.state import status

            return {"available": True, **status(conn, self.config.capacity.enabled)}

    # --- parts ------------------------------------------------------------------------------------------------

    def _unit_summary(self, conn: sqlite3.Connection) -> dict[str, Any]:
        if not _has(conn, "unit_link"):
            return {"link": None, "units": [], "open_faults": []}
        from edge.unit.exposures import summary

        doc = summary(conn)
        return {"link": doc["link"], "units": doc["units"], "open_faults": doc["open_faults"]}

    def _relay_state(self, conn: sqlite3.Connection) -> dict[str, Any]:
        doc: dict[str, Any] = {"configured": bool(self.config.sync.url), "connected": None}
        if self._relay is not None and _has(conn, "outbox"):
            health = self._relay.health(conn)
            link, outbox = health["link"], health["outbox"]
            assert isinstance(link, dict)
            assert isinstance(outbox, dict)
            doc["connected"] = bool(link["connected"])
            doc["outbox"] = outbox
        elif _has(conn, "outbox"):
            doc["outbox"] = {
                "pending": _counts(conn, "SELECT kind, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY kind"),
                "rejected": conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'rejected'").fetchone()[0],
            }
        else:
            doc["outbox"] = {"pending": {}, "rejected": 0}
        doc["outbox_depth"] = sum(doc["outbox"]["pending"].values())
        return doc

    @staticmethod
    def _relay_answer(conn: sqlite3.Connection, pattern: str) -> str:
        if not _has(conn, "outbox"):
            return "not queued"
        row = _one(conn, "SELECT state FROM outbox WHERE item LIKE ?", (pattern,))
        if row is None:
            return "not queued (or confirmed and pruned)"
        answers = {"done": "confirmed", "pending": "waiting for the relay", "rejected": "rejected"}
        return answers.get(str(row["state"]), str(row["state"]))

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


def _has(conn: sqlite3.Connection, table: str) -> bool:
    return _one(conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)) is not None


def _one(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
    try:
        row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
    except sqlite3.OperationalError:  # the component's table is not created (component off)
        return None
    return row


def _counts(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in conn.execute(sql, args).fetchall()}
    except sqlite3.OperationalError:
        return {}


def _exposures(conn: sqlite3.Connection, limit: int = 100) -> list[UnitExposure]:
    """The last ``limit`` exposures recorded, newest first."""
    rows = conn.execute(
        "SELECT unit_serial, exposure_id, program, kvp, ma, time_ms, started_ms, aborted, dap_mgy_cm2, image_state "
        "FROM unit_exposures ORDER BY exposure_key DESC LIMIT ?",
        (limit,),
    )
    return [
        UnitExposure(
            unit_serial=r["unit_serial"],
            exposure_id=r["exposure_id"],
            program=r["program"],
            kvp=r["kvp"],
            ma=r["ma"],
            duration_ms=r["time_ms"],
            started_ms=r["started_ms"],
            aborted=bool(r["aborted"]),
            dap_mgy_cm2=r["dap_mgy_cm2"],
            image_state=r["image_state"],
        )
        for r in rows
    ]


def _gpu() -> str:
    for path in ("/sys/devices/gpu.0/load", "/sys/devices/platform/gpu.0/load"):
        with contextlib.suppress(OSError, ValueError):
            return f"{int(Path(path).read_text().strip()) / 10:.0f}% (Jetson GPU)"
    return "no GPU load reported"


def _system() -> dict[str, Any]:
    load = os.getloadavg()
    return {"load": [round(x, 2) for x in load], "cpus": os.cpu_count() or 1, "gpu": _gpu()}


def _notices(doc: dict[str, Any]) -> list[dict[str, str]]:
    """What a technician should look at besides the disk, the model and the unit link (which
    :func:`edge.ops.health.overview_checks` judges from ``doc`` itself), worst first."""
    alerts: list[dict[str, str]] = []

    def add(level: str, text: str) -> None:
        alerts.append({"level": level, "text": text})

    unit = doc["unit"]
    for fault in unit["open_faults"]:
        add("warning", f"unit {fault['unit_serial']} fault {fault['code']} since {fault['raised_at']}")
    failed = doc["pipeline"]["states"].get("failed", 0)
    if failed:
        add("warning", f"{failed} image(s) failed analysis")
    unbuilt = doc["results"]["sources"].get("failed", 0)
    if unbuilt:
        add("warning", f"results of {unbuilt} image(s) could not be built (see Logs)")
    stuck = sum(doc["results"]["deliveries"].get(s, 0) for s in ("dead", "rejected"))
    if stuck:
        add("warning", f"{stuck} result deliveries dead or rejected (Studies: resend)")
    if doc["receipts"]["parked"]:
        add("warning", f"{doc['receipts']['parked']} use(s) parked without a receipt: btt-edge provision")
    last = doc["ota_event"]
    if isinstance(last, dict) and last.get("event") == "rollback":
        add("warning", f"model rolled back: {last.get('reason', '')}")
    relay = doc["relay"]
    if relay["configured"] and relay["connected"] is False:
        add("warning", "relay link down: the outbox is queuing")
    if relay["outbox"].get("rejected"):
        add("warning", f"{relay['outbox']['rejected']} outbox item(s) rejected by the relay (requeue)")
    alerts.sort(key=lambda a: a["level"] != "error")
    return alerts
