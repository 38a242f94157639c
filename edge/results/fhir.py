"""The FHIR R4 view of an analysis: a transaction Bundle for the clinic's EHR, linked to the DICOM SR.

Per analysed image (:class:`AnalysedImage`: the source's header and its :class:`~edge.results.analysis.Analysis`):

- **ImagingStudy** (the source): identifier ``urn:dicom:uid`` / ``urn:oid:<Study Instance UID>`` (and the
  accession number), the source's series and instance, and the SR's series and instance (the report is part of
  the study); modality in DICOM's DCM code system.
- **DiagnosticReport**: identifier the SR's SOP Instance UID, status ``preliminary``, category ``RAD`` (v2-0074),
  code LOINC 18748-4 "Diagnostic imaging study", ``conclusionCode`` one per finding kind (the code the SR uses:
  the bundle manifest's), ``conclusion`` saying it is AI output, ``imagingStudy``, ``result`` the Observations.
  R4 allows no Device as a report's performer (Practitioner, PractitionerRole, Organization, CareTeam only), so
  the algorithm is named by the extension :data:`AI_DEVICE_EXTENSION` and by each Observation's ``device``.
- **Observation** per finding: identifier the finding's Tracking Unique Identifier in the SR, status
  ``preliminary``, category ``imaging``, code the finding kind's, ``bodySite`` the tooth (SNOMED CT as in the
  SR, FDI as ``urn:iso:std:iso:3950``, Universal), ``component`` for the model's confidence, the area and bone
  loss (mm, % of root length), ``derivedFrom`` the ImagingStudy, ``device`` the Device.
- **Device**: the model at its version (``deviceName`` the algorithm's name and the bundle id, ``version``,
  ``manufacturer``, type "AI algorithm", the SR's algorithm parameters as ``property``).

The patient is a logical reference by the DICOM header's Patient ID (and issuer): nothing else of the patient is
sent, and no Patient resource is created or matched by name. Every DiagnosticReport and Observation carries the
security label ``AIAST`` (HL7 v3 ObservationValue, "artificial intelligence asserted") and a note.

Idempotence: every ``fullUrl`` is a ``urn:uuid`` derived from the resource's identifier, and every entry is
conditional on it: ``PUT DiagnosticReport?identifier=...`` (and Observation) replaces what an earlier send
made; ``POST`` with ``ifNoneExist`` creates the ImagingStudy and the Device only once. Sending the same Bundle
twice leaves one copy of each resource.

Other parts of the box add their own entries (a draft treatment plan's CarePlan and ServiceRequests) with
``extra`` of :func:`build_bundle`, made with :func:`entry` and pointing at :func:`patient_reference`,
:func:`report_url` and :func:`finding_urls` (see ``/work/notes/fhir-plan-interface.md``).

Everything here is pure: headers and findings in, JSON-ready dicts out.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dental.findings import Finding
from edge.errors import ResultBuildError
from edge.results import codes as rc
from edge.results.analysis import Algorithm, Analysis
from edge.results.header import DEFAULT_EQUIPMENT, Equipment
from edge.results.kinds import Document
from edge.results.sr import SR_SOP_CLASS_UID, sr_uids
from edge.results.uids import UidFactory

__all__ = [
    "AI_DEVICE_EXTENSION",
    "AI_NOTE",
    "CODE_SYSTEM",
    "DICOM_UID_SYSTEM",
    "FDI_SYSTEM",
    "FHIR_MEDIA_TYPE",
    "REPORT_CODE",
    "UNIVERSAL_SYSTEM",
    "AnalysedImage",
    "Json",
    "build_bundle",
    "build_fhir",
    "bundle_uid",
    "entry",
    "finding_urls",
    "full_url",
    "patient_reference",
    "report_url",
    "to_bytes",
]

Json = dict[str, Any]

FHIR_MEDIA_TYPE = "application/fhir+json"
DICOM_UID_SYSTEM = "urn:dicom:uid"
"""The identifier system of DICOM UIDs (values ``urn:oid:<uid>``), as the FHIR ImagingStudy page uses it."""
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
_BASE = "http://btt-edge.example/fhir"
"""Where our own code system and extension live: a placeholder domain (RFC 2606) until the manufacturer has one."""
CODE_SYSTEM = f"{_BASE}/CodeSystem/btt"
"""The SR's private ``99BTT`` concepts (confidence, bone loss, the kinds without a SNOMED CT code)."""
FDI_SYSTEM = "urn:iso:std:iso:3950"
"""FDI / ISO 3950 two-digit tooth numbers (permanent and deciduous). HL7's ``ex-tooth`` is an example code
system without the deciduous teeth, so it is not used."""
UNIVERSAL_SYSTEM = f"{_BASE}/CodeSystem/ada-universal"
"""ADA Universal tooth numbers (1-32, A-T): no FHIR code system for them is published that we know of."""
AI_DEVICE_EXTENSION = f"{_BASE}/StructureDefinition/ai-device"
"""On a DiagnosticReport: ``valueReference`` to the Device (the algorithm) that made it."""
REPORT_CODE: Json = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
AI_NOTE = "AI result - not a diagnosis. Preliminary findings of an AI algorithm, for review by a dentist."
_AI_ASSERTED: Json = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
_IMAGING: Json = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
                  "display": "Imaging"}  # fmt: skip
_RADIOLOGY: Json = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
_SYSTEMS = {"SCT": SNOMED, "LN": LOINC, "UCUM": UCUM, "DCM": DCM, rc.PRIVATE_SCHEME: CODE_SYSTEM,
            rc.FDI_SCHEME: FDI_SYSTEM, rc.UNIVERSAL_SCHEME: UNIVERSAL_SYSTEM}  # fmt: skip
"""DICOM coding scheme designator -> FHIR code system."""
_NAMESPACE = uuid.UUID("0b7d3a52-5f1c-4a8e-9d36-2f0c6f1e8b11")
"""Of the ``urn:uuid`` full URLs (uuid5 of the resource type and its identifier)."""


@dataclass(frozen=True)
class AnalysedImage:
    """One analysed source image: its header (pixel data not needed) and the analysis of it."""

    source: Dataset
    analysis: Analysis


def _coding(scheme: str, value: str, meaning: str) -> Json:
    system = _SYSTEMS.get(scheme)
    if system is None:
        raise ResultBuildError(f"coding scheme {scheme!r} has no FHIR code system here")
    return {"system": system, "code": value, "display": meaning}


def _uid_identifier(uid: str) -> Json:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}


def full_url(resource_type: str, identifier: Json) -> str:
    """The ``urn:uuid`` of the resource with this identifier (the same identifier, the same URL)."""
    key = f"{resource_type}|{identifier.get('system', '')}|{identifier['value']}"
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, key)}"


def entry(resource: Json, identifier: Json, *, create_only: bool = False) -> Json:
    """A transaction entry for ``resource`` keyed by ``identifier`` (one of its own): ``PUT type?identifier=``
    (create or replace), or with ``create_only`` ``POST`` with ``ifNoneExist`` (create once, never replace)."""
    kind = str(resource["resourceType"])
    query = f"identifier={identifier.get('system', '')}|{identifier['value']}"
    request: Json = {"method": "POST", "url": kind, "ifNoneExist": query} if create_only else {
        "method": "PUT", "url": f"{kind}?{query}"}  # fmt: skip
    return {"fullUrl": full_url(kind, identifier), "resource": resource, "request": request}


def patient_reference(source: Dataset) -> Json:
    """The patient of ``source`` as a logical reference: the header's Patient ID, with its issuer (an ISO OID of
    the Issuer of Patient ID Qualifiers as the system, else the issuer's name as the assigner)."""
    patient_id = str(source.get("PatientID") or "").strip()
    if not patient_id:
        return {"display": "patient without a Patient ID in the DICOM header"}
    identifier: Json = {"value": patient_id}
    qualifiers = source.get("IssuerOfPatientIDQualifiersSequence") or []
    oid = next((str(q.get("UniversalEntityID")) for q in qualifiers if q.get("UniversalEntityIDType") == "ISO"), "")
    issuer = str(source.get("IssuerOfPatientID") or "").strip()
    if oid:
        identifier["system"] = f"urn:oid:{oid}"
    elif issuer:
        identifier["assigner"] = {"display": issuer}
    return {"identifier": identifier}


def _when(source: Dataset) -> str | None:
    """The study's date (and time, when the header gives its offset from UTC: FHIR wants a zone with a time)."""
    date = str(source.get("StudyDate") or "").strip()
    if len(date) != 8 or not date.isdigit():
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    time = str(source.get("StudyTime") or "").strip().split(".")[0]
    offset = str(source.get("TimezoneOffsetFromUTC") or "").strip()
    if len(time) >= 4 and time.isdigit() and len(offset) == 5 and offset[0] in "+-":
        seconds = time[4:6] or "00"
        return f"{day}T{time[:2]}:{time[2:4]}:{seconds}{offset[:3]}:{offset[3:]}"
    return day


def _device_identifier(algorithm: Algorithm, uids: UidFactory) -> Json:
    return _uid_identifier(uids.derived("fhir-device", algorithm.bundle_id, algorithm.version))


def _study_identifier(source: Dataset) -> Json:
    return _uid_identifier(str(source.StudyInstanceUID))


def report_url(image: AnalysedImage, uids: UidFactory) -> str:
    """The full URL of the image's DiagnosticReport (identified by its SR's SOP Instance UID)."""
    return full_url("DiagnosticReport", _uid_identifier(sr_uids(image.source, image.analysis, uids).sop_instance_uid))


def finding_urls(image: AnalysedImage, uids: UidFactory) -> tuple[str, ...]:
    """The full URL of each finding's Observation, in the order of the analysis's findings."""
    tracking = sr_uids(image.source, image.analysis, uids).tracking_uids
    return tuple(full_url("Observation", _uid_identifier(uid)) for uid in tracking)


def bundle_uid(image: AnalysedImage, uids: UidFactory) -> str:
    """The UID of the image's Bundle (its identifier, and its key in the delivery queue)."""
    a = image.analysis.algorithm
    return uids.derived(str(image.source.SOPInstanceUID), a.bundle_id, a.version, "fhir")


def _device(algorithm: Algorithm, uids: UidFactory) -> Json:
    return {
        "resourceType": "Device",
        "identifier": [_device_identifier(algorithm, uids)],
        "status": "active",
        "manufacturer": algorithm.manufacturer,
        "deviceName": [
            {"name": algorithm.name, "type": "user-friendly-name"},
            {"name": algorithm.bundle_id, "type": "model-name"},
        ],
        "modelNumber": algorithm.bundle_id,
        "type": {"text": "AI algorithm"},
        "version": [{"value": algorithm.version}],
        "property": [
            {"type": {"text": "cleared_for_clinical_use"}, "valueCode": [{"text": str(algorithm.clinical).lower()}]},
            {"type": {"text": "precision"}, "valueCode": [{"text": algorithm.precision}]},
        ],
    }


def _modality(code: str) -> Json:
    return {"system": DCM, "code": code}


def _instance(uid: str, sop_class: str, number: object) -> Json:
    out: Json = {"uid": uid, "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{sop_class}"}}
    if isinstance(number, int) or (isinstance(number, str) and number.strip().isdigit()):
        out["number"] = int(number)
    return out


def _imaging_study(images: Sequence[AnalysedImage], uids: UidFactory) -> Json:
    """One study's ImagingStudy: each source's series and instance, and each SR's."""
    first = images[0].source
    series: dict[str, Json] = {}
    for image in images:
        source, sr = image.source, sr_uids(image.source, image.analysis, uids)
        modality = str(source.get("Modality") or "OT")
        item = series.setdefault(str(source.SeriesInstanceUID), {"uid": str(source.SeriesInstanceUID),
                                 "modality": _modality(modality), "instance": []})  # fmt: skip
        if source.get("SeriesNumber") is not None:
            item["number"] = int(source.SeriesNumber)
        item["instance"].append(_instance(str(source.SOPInstanceUID), str(source.SOPClassUID),
                                          source.get("InstanceNumber")))  # fmt: skip
        report = series.setdefault(sr.series_instance_uid, {"uid": sr.series_instance_uid, "modality": _modality("SR"),
                                   "description": "AI result - not a diagnosis", "instance": []})  # fmt: skip
        report["instance"].append(_instance(sr.sop_instance_uid, SR_SOP_CLASS_UID, 1))
    identifiers = [_study_identifier(first)]
    accession = str(first.get("AccessionNumber") or "").strip()
    if accession:
        identifiers.append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "ACSN"}]}, "value": accession})  # fmt: skip
    study: Json = {
        "resourceType": "ImagingStudy",
        "identifier": identifiers,
        "status": "available",
        "modality": list({json.dumps(s["modality"]): s["modality"] for s in series.values()}.values()),
        "subject": patient_reference(first),
        "numberOfSeries": len(series),
        "numberOfInstances": sum(len(s["instance"]) for s in series.values()),
        "series": list(series.values()),
    }
    if (when := _when(first)) is not None:
        study["started"] = when
    if description := str(first.get("StudyDescription") or "").strip():
        study["description"] = description
    return study


def _finding_code(algorithm: Algorithm, kind: str) -> Json:
    code = algorithm.codes.get(kind)
    if code is None:
        raise ResultBuildError(f"bundle {algorithm.bundle_id} has no code for finding kind {kind!r}")
    return _coding(code.scheme, code.value, code.meaning)


def _tooth(fdi: str) -> Json:
    """The tooth as SNOMED CT (DICOM CID 4018/4019, as in the SR), FDI and Universal codings."""
    return {"coding": [_coding(c.scheme_designator, c.value, c.meaning) for c in rc.tooth_codes(fdi)],
            "text": f"tooth {fdi} (FDI)"}  # fmt: skip


def _quantity(concept: Any, value: float, unit: Any) -> Json:
    return {
        "code": {"coding": [_coding(concept.scheme_designator, concept.value, concept.meaning)]},
        "valueQuantity": {"value": round(float(value), 4), "unit": unit.meaning, "system": UCUM, "code": unit.value},
    }


def _components(finding: Finding) -> list[Json]:
    """The model's confidence and the finding's measurements (the SR's, with the same codes and units)."""
    out = [_quantity(rc.CONFIDENCE, finding.confidence, rc.UNIT_RATIO)]
    if finding.area_mm2 is not None:
        out.append(_quantity(rc.AREA, finding.area_mm2, rc.UNIT_MM2))
    else:
        out.append(_quantity(rc.AREA, float(finding.area_px), rc.UNIT_PIXELS))
    if finding.bone_loss_mm is not None:
        out.append(_quantity(rc.BONE_LOSS_LENGTH, finding.bone_loss_mm, rc.UNIT_MM))
    if finding.bone_loss_pct is not None:
        out.append(_quantity(rc.BONE_LOSS_PERCENT, finding.bone_loss_pct, rc.UNIT_PERCENT))
    return out


def _ai_meta() -> Json:
    return {"security": [dict(_AI_ASSERTED)]}


def _observation(
    image: AnalysedImage, finding: Finding, tracking_uid: str, refs: Mapping[str, Json], when: str | None
) -> Json:
    obs: Json = {
        "resourceType": "Observation",
        "meta": _ai_meta(),
        "identifier": [_uid_identifier(tracking_uid)],
        "status": "preliminary",
        "category": [{"coding": [dict(_IMAGING)]}],
        "code": {"coding": [_finding_code(image.analysis.algorithm, finding.kind)]},
        "subject": patient_reference(image.source),
        "device": refs["device"],
        "derivedFrom": [refs["study"]],
        "note": [{"text": AI_NOTE}],
        "component": _components(finding),
    }
    if when is not None:
        obs["effectiveDateTime"] = when
    if finding.tooth_fdi is not None:
        obs["bodySite"] = _tooth(finding.tooth_fdi)
    return obs


def _conclusion(analysis: Analysis) -> str:
    if not analysis.findings:
        return f"{AI_NOTE} The algorithm found none of the findings it looks for."
    parts = [f"{f.kind.replace('_', ' ')}" + (f" on tooth {f.tooth_fdi} (FDI)" if f.tooth_fdi else "")
             + f" (confidence {f.confidence:.2f})" for f in analysis.findings]  # fmt: skip
    return f"{AI_NOTE} Findings: {'; '.join(parts)}."


def _image_entries(image: AnalysedImage, uids: UidFactory, refs: Mapping[str, Json]) -> list[Json]:
    """The DiagnosticReport of one image and its Observations."""
    analysis, sr = image.analysis, sr_uids(image.source, image.analysis, uids)
    when = _when(image.source)
    observations = [
        entry(_observation(image, finding, uid, refs, when), _uid_identifier(uid))
        for finding, uid in zip(analysis.findings, sr.tracking_uids, strict=True)
    ]
    kinds = dict.fromkeys(f.kind for f in analysis.findings)
    report: Json = {
        "resourceType": "DiagnosticReport",
        "meta": _ai_meta(),
        "extension": [{"url": AI_DEVICE_EXTENSION, "valueReference": refs["device"]}],
        "identifier": [_uid_identifier(sr.sop_instance_uid)],
        "status": "preliminary",
        "category": [{"coding": [dict(_RADIOLOGY)]}],
        "code": {"coding": [dict(REPORT_CODE)], "text": "AI analysis of a dental radiograph"},
        "subject": patient_reference(image.source),
        "imagingStudy": [refs["study"]],
        "conclusion": _conclusion(analysis),
    }
    if when is not None:
        report["effectiveDateTime"] = when
    if observations:
        report["result"] = [{"reference": o["fullUrl"]} for o in observations]
    if kinds:
        report["conclusionCode"] = [{"coding": [_finding_code(analysis.algorithm, k)]} for k in kinds]
    return [entry(report, _uid_identifier(sr.sop_instance_uid)), *observations]


def build_bundle(images: Sequence[AnalysedImage], uids: UidFactory, *, extra: Iterable[Json] = ()) -> Json:
    """The transaction Bundle of ``images`` (any number of studies): one ImagingStudy per study and one Device per
    model, then per image its DiagnosticReport and Observations, then the ``extra`` entries as given (each made with
    :func:`entry`). Raises :class:`~edge.errors.ResultBuildError` for an analysis it cannot express."""
    if not images:
        raise ResultBuildError("a FHIR Bundle needs at least one analysed image")
    entries: list[Json] = []
    refs_by_image: list[Json] = []
    studies: dict[str, list[AnalysedImage]] = {}
    devices: dict[str, Json] = {}
    try:
        for image in images:
            studies.setdefault(str(image.source.StudyInstanceUID), []).append(image)
            device_id = _device_identifier(image.analysis.algorithm, uids)
            if device_id["value"] not in devices:
                devices[device_id["value"]] = entry(_device(image.analysis.algorithm, uids), device_id,
                                                    create_only=True)  # fmt: skip
            refs_by_image.append({
                "device": {"reference": full_url("Device", device_id)},
                "study": {"reference": full_url("ImagingStudy", _study_identifier(image.source))},
            })  # fmt: skip
        for group in studies.values():
            entries.append(entry(_imaging_study(group, uids), _study_identifier(group[0].source), create_only=True))
        entries.extend(devices.values())
        for image, refs in zip(images, refs_by_image, strict=True):
            entries.extend(_image_entries(image, uids, refs))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ResultBuildError(f"cannot build the FHIR Bundle: {exc}") from exc
    entries.extend(extra)
    identifier = _uid_identifier(bundle_uid(images[0], uids)) if len(images) == 1 else None
    bundle: Json = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    if identifier is not None:
        bundle["identifier"] = identifier
    return bundle


def to_bytes(bundle: Json) -> bytes:
    """The Bundle as sent: compact JSON, keys in order, UTF-8 (the same Bundle, the same bytes)."""
    return json.dumps(bundle, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build_fhir(
    source: Dataset, analysis: Analysis, uids: UidFactory, *, equipment: Equipment = DEFAULT_EQUIPMENT
) -> Document:
    """The ``fhir`` result kind: the Bundle of one analysed image (its Device is the model, not this box, so
    ``equipment`` is not used)."""
    image = AnalysedImage(source, analysis)
    return Document(uid=bundle_uid(image, uids), content=to_bytes(build_bundle([image], uids)))
