"""A draft plan as FHIR R4: one CarePlan and one ServiceRequest per item, all ``status`` draft and ``intent``
proposal, labelled AI-asserted (docs/planning.md "FHIR").

- **ServiceRequest** per item: ``code`` the item's code in the code set's system (ADA CDT
  ``http://www.ada.org/cdt``, or the market's) when it has one, and always the procedure key in
  :data:`PROCEDURE_SYSTEM`, ``text`` the descriptor; ``priority`` ``urgent`` for urgency 1, else ``routine``;
  ``bodySite`` the tooth (FDI and Universal, the systems of :mod:`edge.results.fhir`), or each tooth of a
  quadrant's or the visit's item; ``reasonReference`` the Observations of the findings it rests on; the estimate
  and the prepaid coverage as extensions (:data:`ESTIMATE_EXTENSION`, :data:`COVERAGE_EXTENSION`: R4 has no
  element for a price on a request); ``note`` the label and the rule's rationale.
- **CarePlan**: ``activity.reference`` each ServiceRequest in the plan's order, ``supportingInfo`` the
  DiagnosticReports of the images, ``description`` and ``note`` the label.

The Observations are the FHIR export's own (:mod:`edge.results.fhir`, one per recorded finding, identified by the
SR's tracking UID of the finding): :func:`plan_entries` points at their ``fullUrl`` for the export's transaction
Bundle (its ``extra``); :func:`plan_bundle` stands alone (``btt-edge plan UID --fhir``) and points at them by
identifier (logical references, resolved by a server that has the export). Identifiers derive from the plan's
UID and the item's procedure and site, so a resend replaces rather than duplicates. Pure: the plan, the images'
headers and a UID factory in, JSON-ready dicts out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from dental.teeth import fdi_to_universal
from edge.plan.planner import LABEL, Evidence, Plan, PlanItem
from edge.plan.render import format_money
from edge.results.analysis import Algorithm, Analysis
from edge.results.fhir import (
    DICOM_UID_SYSTEM,
    FDI_SYSTEM,
    UNIVERSAL_SYSTEM,
    AnalysedImage,
    Json,
    entry,
    finding_urls,
    patient_reference,
    report_url,
)
from edge.results.sr import sr_uids
from edge.results.uids import UidFactory
from protocol.money import Money

__all__ = [
    "COVERAGE_EXTENSION",
    "ESTIMATE_EXTENSION",
    "PROCEDURE_SYSTEM",
    "analysed_images",
    "plan_bundle",
    "plan_entries",
]

_BASE = "http://btt-edge.example/fhir"
"""The FHIR export's placeholder domain (RFC 2606) for our own systems and extensions."""
PROCEDURE_SYSTEM = f"{_BASE}/CodeSystem/plan-procedure"
"""The planner's procedure keys (``edge/plan/data/rules.toml``)."""
ESTIMATE_EXTENSION = f"{_BASE}/StructureDefinition/plan-estimate"
"""On a ServiceRequest: ``valueMoney``, the estimate from the clinic's fee schedule."""
COVERAGE_EXTENSION = f"{_BASE}/StructureDefinition/plan-prepaid-coverage"
"""On a ServiceRequest: ``valueBoolean``, covered by the clinic's prepaid service rights on the box."""
_AI_META: Json = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                                "code": "AIAST", "display": "Artificial Intelligence asserted"}]}  # fmt: skip
_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}


def analysed_images(plan: Plan, headers: Mapping[str, Dataset]) -> list[AnalysedImage]:
    """The plan's images as the FHIR export sees them: each header with its recorded findings in their order
    (``headers``: SOP Instance UID -> the stored header)."""
    by_image: dict[str, list[Evidence]] = {}
    for e in _all_evidence(plan):
        by_image.setdefault(e.sop_instance_uid, []).append(e)
    images = []
    for uid in plan.instances:
        found = sorted(by_image.get(uid, []), key=lambda e: e.index)  # every image of a plan has findings
        algorithm = Algorithm(found[0].model_id, found[0].model_version, found[0].model_id)
        images.append(AnalysedImage(headers[uid], Analysis(uid, algorithm, tuple(e.finding for e in found))))
    return images


def _all_evidence(plan: Plan) -> list[Evidence]:
    lines = [*(f for t in plan.teeth for f in t.findings), *plan.unassigned]
    return list(dict.fromkeys(e for line in lines for e in line.evidence))


@dataclass(frozen=True)
class _Targets:
    subject: Json
    observation: Callable[[Evidence], Json | None]
    """The Observation of a finding; None for one of an image the plan was not given."""
    reports: tuple[Json, ...]


def _subject(plan: Plan, images: Sequence[AnalysedImage]) -> Json:
    return patient_reference(images[0].source) if images else {"display": f"patient of study {plan.study_uid}"}


def _in_bundle(plan: Plan, images: Sequence[AnalysedImage], uids: UidFactory) -> _Targets:
    urls = {str(i.source.SOPInstanceUID): finding_urls(i, uids) for i in images}
    return _Targets(
        subject=_subject(plan, images),
        observation=lambda e: {"reference": urls[e.sop_instance_uid][e.index]} if e.sop_instance_uid in urls else None,
        reports=tuple({"reference": report_url(i, uids)} for i in images),
    )


def _by_identifier(plan: Plan, images: Sequence[AnalysedImage], uids: UidFactory) -> _Targets:
    srs = {str(i.source.SOPInstanceUID): sr_uids(i.source, i.analysis, uids) for i in images}

    def ref(kind: str, uid: str) -> Json:
        return {"type": kind, "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}}

    def observation(e: Evidence) -> Json | None:
        sr = srs.get(e.sop_instance_uid)
        return None if sr is None else ref("Observation", sr.tracking_uids[e.index])

    return _Targets(
        subject=_subject(plan, images),
        observation=observation,
        reports=tuple(ref("DiagnosticReport", s.sop_instance_uid) for s in srs.values()),
    )


def _identifier(uids: UidFactory, *parts: str) -> Json:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uids.derived(*parts)}"}


def _value(money: Money) -> int | float:
    exponent = _EXPONENTS.get(money.currency, 2)
    whole, part = divmod(money.amount, 10**exponent)
    return whole if part == 0 else float(round(money.amount / 10**exponent, exponent))


def _tooth_site(fdi: str) -> Json:
    universal = fdi_to_universal(fdi)
    return {
        "coding": [
            {"system": FDI_SYSTEM, "code": fdi, "display": f"tooth {fdi} (FDI)"},
            {"system": UNIVERSAL_SYSTEM, "code": universal, "display": f"tooth {universal} (Universal)"},
        ],
        "text": f"tooth {fdi}",
    }


def _service_request(plan: Plan, item: PlanItem, targets: _Targets) -> Json:
    coding = [{"system": PROCEDURE_SYSTEM, "code": item.procedure, "display": item.name}]
    if item.code:
        coding.insert(0, {"system": item.code_system, "code": item.code, "display": item.descriptor})
    resource: Json = {
        "resourceType": "ServiceRequest",
        "meta": _AI_META,
        "status": "draft",
        "intent": "proposal",
        "priority": "urgent" if item.urgency == 1 else "routine",
        "code": {"coding": coding, "text": item.descriptor},
        "subject": targets.subject,
        "bodySite": [_tooth_site(t) for t in item.teeth_fdi],
        "note": [{"text": f"{LABEL}. Urgency {item.urgency}. {item.rationale}".strip()}],
        "extension": [{"url": COVERAGE_EXTENSION, "valueBoolean": item.covered}],
    }
    if item.estimate is not None:
        resource["extension"].insert(0, {"url": ESTIMATE_EXTENSION, "valueMoney": {
            "value": _value(item.estimate), "currency": item.estimate.currency}})  # fmt: skip
        resource["note"].append({"text": f"Estimate {format_money(item.estimate.to_json())} (clinic fee schedule); "
                                         f"{item.coverage}."})  # fmt: skip
    reasons = [r for r in map(targets.observation, item.evidence) if r is not None]
    if reasons:
        resource["reasonReference"] = reasons
    if targets.reports:
        resource["supportingInfo"] = list(targets.reports)
    return resource


def _entries(plan: Plan, uids: UidFactory, targets: _Targets) -> list[Json]:
    requests = []
    for item in plan.items:
        site = item.tooth_fdi or (f"quadrant-{item.quadrant}" if item.quadrant else "visit")
        identifier = _identifier(uids, plan.uid, "plan-item", item.procedure, site)
        resource = {**_service_request(plan, item, targets), "identifier": [identifier]}
        requests.append(entry(resource, identifier))
    identifier = _identifier(uids, plan.uid, "careplan")
    care_plan: Json = {
        "resourceType": "CarePlan",
        "meta": _AI_META,
        "identifier": [identifier],
        "status": "draft",
        "intent": "proposal",
        "title": "Draft treatment plan (AI)",
        "description": f"{LABEL}: proposed procedures from the AI findings of the study, for the dentist to review.",
        "subject": targets.subject,
        "note": [{"text": LABEL}, *({"text": n} for n in plan.notes)],
    }
    if targets.reports:
        care_plan["supportingInfo"] = list(targets.reports)
    if requests:
        care_plan["activity"] = [{"reference": {"reference": r["fullUrl"]}} for r in requests]
    return [entry(care_plan, identifier), *requests]


def plan_entries(plan: Plan, images: Sequence[AnalysedImage], uids: UidFactory) -> list[Json]:
    """The plan's CarePlan and ServiceRequests as entries of the FHIR export's transaction Bundle of ``images``
    (``extra`` of :func:`edge.results.fhir.build_bundle`): they point at its Observations and reports by fullUrl."""
    return _entries(plan, uids, _in_bundle(plan, images, uids))


def plan_bundle(plan: Plan, images: Sequence[AnalysedImage], uids: UidFactory) -> Json:
    """The plan alone as a transaction Bundle (``btt-edge plan UID --fhir``): the Observations and reports it
    rests on are referenced by identifier."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": _entries(plan, uids, _by_identifier(plan, images, uids)),
    }
