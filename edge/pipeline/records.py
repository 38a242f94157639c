"""What the pipeline recorded, read back: typed reads of its own tables (``pipeline_results``,
``pipeline_findings``, written by :mod:`edge.pipeline.worker`), for the results stage and the control socket.

Every read returns frozen values (or nothing) and is empty where the pipeline has never run on this box.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields

from edge.db import has_table

__all__ = [
    "AnalysisRecord",
    "AnalysisSummary",
    "ModelRun",
    "ToothFinding",
    "analysed_count",
    "analysis_record",
    "findings_in_study",
    "last_model_run",
    "recorded_timings",
    "tooth_findings",
]


@dataclass(frozen=True)
class AnalysisSummary:
    """How one instance was analysed (``pipeline_results`` without the findings; the control socket's ``study``
    view shows it)."""

    status: str
    """``analysed``, ``skipped`` or ``failed``."""
    reason: str
    model_id: str
    model_version: str
    backend: str
    precision: str
    clinical: int
    """1 when the model is cleared for clinical use, else 0 (as recorded)."""
    timings_ms: dict[str, float]
    """Stage -> latency (:data:`edge.control.state.STAGES`)."""


@dataclass(frozen=True, kw_only=True)
class AnalysisRecord(AnalysisSummary):
    """The recorded analysis of one instance (``pipeline_results``): its summary, the instance and the findings."""

    sop_instance_uid: str
    findings_json: str = "[]"
    """The findings as recorded: a JSON list of :meth:`dental.findings.Finding.to_json` objects."""
    view: str | None = None
    """The view the image was routed as (``panoramic``, ``bitewing``, ...); None when not recorded."""
    teeth_fdi: tuple[str, ...] | None = None
    """The FDI numbers of the teeth the model numbered on the image; None when not known (a model without a tooth
    output, a skipped image, or an analysis recorded before the pipeline kept them): not assessed, which is not
    "no teeth"."""

    def summary(self) -> AnalysisSummary:
        """The record without the instance and the findings."""
        return AnalysisSummary(*(getattr(self, f.name) for f in fields(AnalysisSummary)))


@dataclass(frozen=True)
class ToothFinding:
    """One finding of an instance, by kind and tooth (``pipeline_findings``)."""

    kind: str
    tooth_fdi: str | None
    confidence: float


@dataclass(frozen=True)
class ModelRun:
    """The model and backend of the latest analysis."""

    model_id: str
    model_version: str
    backend: str
    precision: str
    recorded_at: str


_RESULT_COLUMNS = (
    "sop_instance_uid, status, reason, model_id, model_version, backend, precision, clinical, timings_json, "
    "findings_json"
)
_TEETH_COLUMNS = ("image_view", "teeth_json")
"""Added by a later migration: a table the agent has not upgraded yet reads as if every row predates them."""


def _teeth_columns(conn: sqlite3.Connection) -> str:
    have = {str(row[1]) for row in conn.execute("PRAGMA table_info(pipeline_results)")}
    return ", ".join(c if c in have else f"NULL AS {c}" for c in _TEETH_COLUMNS)


def analysis_record(
    conn: sqlite3.Connection, sop_instance_uid: str, *, analysed_only: bool = False
) -> AnalysisRecord | None:
    """The recorded analysis of ``sop_instance_uid`` (only one whose status is ``analysed``, if asked), or None."""
    if not has_table(conn, "pipeline_results"):
        return None
    where = " AND status = 'analysed'" if analysed_only else ""
    row = conn.execute(
        f"SELECT {_RESULT_COLUMNS}, {_teeth_columns(conn)} FROM pipeline_results WHERE sop_instance_uid = ?{where}",
        (sop_instance_uid,),
    ).fetchone()
    if row is None:
        return None
    uid, status, reason, model_id, version, backend, precision, clinical, timings, findings, view, teeth = tuple(row)
    return AnalysisRecord(
        sop_instance_uid=uid,
        status=status,
        reason=reason,
        model_id=model_id,
        model_version=version,
        backend=backend,
        precision=precision,
        clinical=clinical,
        timings_ms=json.loads(timings or "{}"),
        findings_json=findings,
        view=view,
        teeth_fdi=None if teeth is None else tuple(str(t) for t in json.loads(teeth)),
    )


def tooth_findings(conn: sqlite3.Connection, sop_instance_uid: str) -> list[ToothFinding]:
    """The findings of one instance by tooth, then kind."""
    if not has_table(conn, "pipeline_findings"):
        return []
    rows = conn.execute(
        "SELECT kind, tooth_fdi, confidence FROM pipeline_findings WHERE sop_instance_uid = ? ORDER BY tooth_fdi, kind",
        (sop_instance_uid,),
    )
    return [ToothFinding(*row) for row in rows]


def findings_in_study(conn: sqlite3.Connection, study_uid: str) -> int:
    """How many findings the instances of one study have."""
    if not has_table(conn, "pipeline_findings"):
        return 0
    row = conn.execute(
        "SELECT COUNT(*) FROM pipeline_findings f JOIN instances i ON i.sop_instance_uid = f.sop_instance_uid "
        "JOIN series se ON se.series_uid = i.series_uid WHERE se.study_uid = ?",
        (study_uid,),
    ).fetchone()
    return int(row[0])


def last_model_run(conn: sqlite3.Connection, *, analysed_only: bool = False) -> ModelRun | None:
    """The model of the latest recorded analysis (of the latest with status ``analysed``, if asked), or None."""
    if not has_table(conn, "pipeline_results"):
        return None
    where = " WHERE status = 'analysed'" if analysed_only else ""
    row = conn.execute(
        "SELECT model_id, model_version, backend, precision, recorded_at FROM pipeline_results"
        f"{where} ORDER BY recorded_at DESC"
    ).fetchone()
    return None if row is None else ModelRun(*row)


def analysed_count(conn: sqlite3.Connection) -> int:
    """How many instances the model has analysed."""
    if not has_table(conn, "pipeline_results"):
        return 0
    return int(conn.execute("SELECT COUNT(*) FROM pipeline_results WHERE status = 'analysed'").fetchone()[0])


def recorded_timings(conn: sqlite3.Connection) -> list[dict[str, float]]:
    """The stage latencies (ms) recorded with every analysis."""
    if not has_table(conn, "pipeline_results"):
        return []
    rows = conn.execute("SELECT timings_json FROM pipeline_results WHERE timings_json IS NOT NULL").fetchall()
    return [json.loads(text) for (text,) in rows]
