"""The draft plan of a study stored on this box: the I/O around :func:`edge.plan.planner.make_plan`.

It reads the tables ``[plan]`` names (rules, code set, fee schedule), the study's analysed images, their
recorded findings and the teeth the model numbered on its panoramics through the pipeline's own reads
(:mod:`edge.pipeline.records`), and the prepaid rights
through the receipt book's (:func:`edge.receipts.grants.list_grants`), and hands them to the pure planner.
``btt-edge plan``, the control socket's ``plan`` view (the terminal UI) and the FHIR export call
:func:`study_plan`. It only reads.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dental.findings import Finding
from edge.config import PlanConfig
from edge.pipeline.records import analysis_record
from edge.plan.codes import CodeSet, load_code_set
from edge.plan.coverage import Prepaid, prepaid_from_grants
from edge.plan.errors import PlanError, PlanTableError
from edge.plan.fees import FeeSchedule, load_fee_schedule
from edge.plan.planner import Evidence, ModelRef, Plan, make_plan
from edge.plan.rules import Rules, load_rules
from edge.receipts.book import book_present
from edge.receipts.grants import list_grants
from edge.results.fhir import AnalysedImage, Json
from edge.results.uids import UidFactory
from edge.store.index import get_instance, has_study, index_present, instance_path, list_instances

__all__ = [
    "FULL_ARCH_VIEWS",
    "Tables",
    "load_tables",
    "plan_entries_for",
    "prepaid_on_box",
    "recorded_evidence",
    "recorded_teeth",
    "stored_headers",
    "study_plan",
]


FULL_ARCH_VIEWS = frozenset({"panoramic"})
"""Views that show the whole dentition, so that a tooth the model did not number on one is missing. An intra-oral
image (bitewing, periapical, occlusal) shows a few teeth: absence there means nothing, and nothing is inferred."""


@dataclass(frozen=True)
class Tables:
    """The tables a plan is made with."""

    rules: Rules
    codes: CodeSet
    fees: FeeSchedule | None


def load_tables(config: PlanConfig) -> Tables:
    """The rules, code set and fee schedule ``[plan]`` names, checked (the schedule against ``currency``)."""
    rules = load_rules(Path(config.rules) if config.rules else None)
    codes = load_code_set(config.code_set)
    fees = load_fee_schedule(Path(config.fee_schedule)) if config.fee_schedule else None
    if fees is not None and config.currency and fees.currency != config.currency:
        raise PlanTableError(f"{config.fee_schedule}: currency {fees.currency} is not plan.currency {config.currency}")
    return Tables(rules, codes, fees)


def prepaid_on_box(conn: sqlite3.Connection, now_ms: int) -> Prepaid:
    """The prepaid rights valid at ``now_ms`` (none where the receipt book never ran)."""
    return prepaid_from_grants(list_grants(conn) if book_present(conn) else [], now_ms)


def recorded_evidence(conn: sqlite3.Connection, sop_instance_uids: list[str]) -> tuple[list[Evidence], list[ModelRef]]:
    """The recorded findings of the analysed instances among ``sop_instance_uids``, and their models."""
    evidence: list[Evidence] = []
    models: dict[tuple[str, str], ModelRef] = {}
    for uid in sop_instance_uids:
        record = analysis_record(conn, uid, analysed_only=True)
        if record is None:
            continue
        models.setdefault((record.model_id, record.model_version),
                          ModelRef(record.model_id, record.model_version, bool(record.clinical)))  # fmt: skip
        for index, doc in enumerate(json.loads(record.findings_json)):
            evidence.append(Evidence(uid, index, Finding.from_json(doc), record.model_id, record.model_version))
    return evidence, list(models.values())


def recorded_teeth(conn: sqlite3.Connection, sop_instance_uids: Sequence[str]) -> frozenset[str] | None:
    """The teeth the model numbered on the analysed full-arch images (:data:`FULL_ARCH_VIEWS`) among
    ``sop_instance_uids``, together; None when none of them says (only intra-oral images, or analyses recorded
    before the pipeline kept the teeth): missing teeth are then not assessed."""
    found: set[str] | None = None
    for uid in sop_instance_uids:
        record = analysis_record(conn, uid, analysed_only=True)
        if record is None or record.view not in FULL_ARCH_VIEWS or record.teeth_fdi is None:
            continue
        found = (found or set()) | set(record.teeth_fdi)
    return None if found is None else frozenset(found)


def stored_headers(conn: sqlite3.Connection, data_dir: Path, sop_instance_uids: Sequence[str]) -> dict[str, Dataset]:
    """The stored DICOM headers (no pixel data) of these images, for the FHIR form of a plan."""
    headers: dict[str, Dataset] = {}
    for uid in sop_instance_uids:
        instance = get_instance(conn, uid)
        if instance is None:
            raise PlanError(f"image {uid} is not in the index")
        try:
            headers[uid] = dcmread(instance_path(data_dir, instance), stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise PlanError(f"cannot read the stored header of image {uid}: {exc}") from exc
    return headers


def study_plan(conn: sqlite3.Connection, config: PlanConfig, uid: str, *, now_ms: int) -> Plan:
    """The draft plan of the study ``uid`` (every analysed image of it), or of the one image ``uid``."""
    if not config.enabled:
        raise PlanError("draft plans are off on this box ([plan] enabled = false)")
    tables = load_tables(config)
    if index_present(conn) and has_study(conn, uid):
        study_uid, instances = uid, [i.sop_instance_uid for i in list_instances(conn, uid)]
    else:
        instance = get_instance(conn, uid) if index_present(conn) else None
        if instance is None:
            raise PlanError(f"no study or image {uid!r} on this box")
        study_uid, instances = instance.study_uid, [uid]
    evidence, models = recorded_evidence(conn, instances)
    notes = [] if models else ["no analysed image in this study: nothing to plan"]
    return make_plan(
        study_uid,
        evidence,
        rules=tables.rules,
        codes=tables.codes,
        fees=tables.fees,
        prepaid=prepaid_on_box(conn, now_ms),
        models=models,
        teeth_present=recorded_teeth(conn, instances),
        notes=notes,
        uid=uid,
    )


def plan_entries_for(
    conn: sqlite3.Connection, config: PlanConfig, uid: str, images: Sequence[AnalysedImage], uids: UidFactory
) -> list[Json]:
    """The draft plan of ``uid`` as entries of the FHIR export's Bundle of ``images`` (``btt-edge results fhir``):
    none when plans are off or nothing was analysed."""
    if not config.enabled or not images:
        return []
    from edge.plan.fhir import plan_entries

    return plan_entries(study_plan(conn, config, uid, now_ms=int(time.time() * 1000)), images, uids)
