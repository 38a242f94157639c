"""The header every result object carries, written in one place for the SR, the overlay and the GSPS.

- **Patient and study** (Patient, General Study, Patient Study and the clinical trial modules) are copied from the
  source as stored, every root attribute of those modules of the source's IOD, the way highdicom copies them into
  the objects it builds from evidence (the SR, the GSPS) and not only the subset its Secondary Capture takes.
  Absent Type 2 attributes are first made present and empty (:func:`with_empty_type2_identifiers`).
- **Series**: the description :data:`AI_LABEL`, the laterality or the body part examined. General Series
  Laterality takes only ``R`` or ``L``: it is the source's Laterality, or its Image Laterality, when that is ``R``
  or ``L``; otherwise (a panoramic's ``B``, an unknown ``U``, nothing) the attribute is absent, which DICOM
  allows only for a body part that is not paired, so Body Part Examined says which: the source's, else
  :data:`DEFAULT_BODY_PART` (the algorithms read dental radiographs: what their results examine is the jaw).
- **Equipment**: the box that made the object (:class:`Equipment`), not the unit that took the radiograph (the
  Secondary Capture names that one as Contributing Equipment) and not the algorithm (the SR names it as
  Algorithm Identification).

:func:`finish` applies all three; each builder calls it last.
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom import SOPClass
from pydicom.dataset import Dataset

import edge
from edge.errors import ResultBuildError

__all__ = [
    "AI_LABEL",
    "DEFAULT_BODY_PART",
    "DEFAULT_EQUIPMENT",
    "MANUFACTURER",
    "Equipment",
    "copy_study_modules",
    "finish",
    "series_laterality",
    "set_series_anatomy",
    "with_empty_type2_identifiers",
]

AI_LABEL = "AI result - not a diagnosis"
"""Series description of every object we write (ASCII: the banner on the overlay carries the long dash)."""
MANUFACTURER = "BTT Edge"
DEFAULT_BODY_PART = "JAW"
"""Body Part Examined of a result whose source names none (a defined term of PS3.16 Annex L, unpaired)."""

_TYPE2_IDENTIFIERS = (
    *("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    *("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"),
)
"""Patient and study attributes that are Type 2 (present, possibly empty) in every object we write."""
_PAIRED = ("R", "L")
"""The values General Series Laterality (0020,0060) takes."""


@dataclass(frozen=True)
class Equipment:
    """The box that makes the result objects (General Equipment of each)."""

    serial_number: str = ""
    """The box's own serial number (its device id); empty when it has none (then Device Serial Number is absent)."""
    manufacturer: str = MANUFACTURER
    model_name: str = MANUFACTURER
    software_versions: str = f"btt-edge {edge.__version__}"


DEFAULT_EQUIPMENT = Equipment()
"""A box without a serial number (tests, tools that build results outside the agent)."""


def with_empty_type2_identifiers(source: Dataset) -> Dataset:
    """``source`` with each absent Type 2 patient/study attribute present and empty, as DICOM allows.

    Units leave some of these out (no accession number, no study ID); the result objects still have to carry
    them. Present values are left exactly as received.
    """
    for keyword in _TYPE2_IDENTIFIERS:
        if keyword not in source:
            setattr(source, keyword, "")
    return source


def copy_study_modules(source: Dataset, target: SOPClass) -> None:
    """Copy the patient- and study-level modules of ``source`` into ``target``, element for element."""
    try:
        target.copy_patient_and_study_information(with_empty_type2_identifiers(source))
    except KeyError as exc:
        raise ResultBuildError(f"the source's SOP class {source.get('SOPClassUID')} is not an IOD known here") from exc


def series_laterality(source: Dataset) -> str | None:
    """The series Laterality for objects derived from ``source``: ``R`` or ``L``, else ``None`` (absent)."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword) or "").strip().upper()
        if value in _PAIRED:
            return value
    return None


def set_series_anatomy(source: Dataset, target: Dataset) -> None:
    """General Series Laterality and Body Part Examined of ``target`` from ``source``.

    DICOM allows a series Laterality only for a paired body part, and wants it absent for an unpaired one. With a
    side (:func:`series_laterality`) the Laterality is written and no body part, since the jaw is unpaired (the
    source says its side of the jaw with Image Laterality, which no result IOD has); without one the Laterality
    is absent and the body part is the source's, else :data:`DEFAULT_BODY_PART`.
    """
    laterality = series_laterality(source)
    if laterality is not None:
        target.Laterality = laterality
        if "BodyPartExamined" in target:
            del target.BodyPartExamined
        return
    if "Laterality" in target:
        del target.Laterality
    target.BodyPartExamined = str(source.get("BodyPartExamined") or "").strip() or DEFAULT_BODY_PART


def _set_equipment(target: Dataset, equipment: Equipment) -> None:
    target.Manufacturer = equipment.manufacturer
    target.ManufacturerModelName = equipment.model_name
    target.SoftwareVersions = equipment.software_versions
    if equipment.serial_number:
        target.DeviceSerialNumber = equipment.serial_number[:64]
    elif "DeviceSerialNumber" in target:
        del target.DeviceSerialNumber


def finish(source: Dataset, target: SOPClass, equipment: Equipment) -> None:
    """Give ``target`` the header every result object carries: patient and study from ``source``, the series
    description, body part and laterality, the box's equipment."""
    copy_study_modules(source, target)
    target.SeriesDescription = AI_LABEL
    if target.Modality != "SR":  # an SR Document Series has neither body part nor laterality
        set_series_anatomy(source, target)
    _set_equipment(target, equipment)
