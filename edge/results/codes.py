"""Coded concepts the result objects use: teeth (SNOMED CT, FDI / ISO 3950, Universal), measurements, units.

Teeth: the SNOMED CT codes are DICOM's own (CID 4018 permanent, CID 4019 deciduous dentition, from pydicom's
copy of PS3.16); the FDI and Universal numbers are coded in the schemes ``ISO3950`` and ``ADAUNIVERSAL``, which
every object that uses them declares in its Coding Scheme Identification Sequence. Concepts with no standard
code (confidence, bone loss as a percentage of root length) are in the private scheme ``99BTT`` (DICOM reserves
the ``99`` prefix for private schemes), declared the same way.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dental.teeth import fdi_to_universal

__all__ = [
    "AREA",
    "BONE_LOSS_LENGTH",
    "BONE_LOSS_PERCENT",
    "CONFIDENCE",
    "PROCEDURE",
    "SOURCE",
    "UNIT_MM",
    "UNIT_MM2",
    "UNIT_PERCENT",
    "UNIT_PIXELS",
    "UNIT_RATIO",
    "coding_scheme_identification",
    "tooth_codes",
]

PRIVATE_SCHEME = "99BTT"
FDI_SCHEME = "ISO3950"
UNIVERSAL_SCHEME = "ADAUNIVERSAL"

PROCEDURE = CodedConcept("1290849002", "SCT", "Dental radiography")
SOURCE = CodedConcept("260753009", "SCT", "Source")
"""An image of the Image Library (TID 1600), as highdicom names it."""
AREA = CodedConcept("42798000", "SCT", "Area")
BONE_LOSS_LENGTH = CodedConcept("BL-MM", PRIVATE_SCHEME, "Alveolar bone loss, length")
BONE_LOSS_PERCENT = CodedConcept("BL-PCT", PRIVATE_SCHEME, "Alveolar bone loss, percent of root length")
CONFIDENCE = CodedConcept("AI-CONF", PRIVATE_SCHEME, "AI model confidence")
UNIT_MM = CodedConcept("mm", "UCUM", "millimeter")
UNIT_MM2 = CodedConcept("mm2", "UCUM", "square millimeter")
UNIT_PERCENT = CodedConcept("%", "UCUM", "percent")
UNIT_PIXELS = CodedConcept("{pixels}", "UCUM", "pixels")
UNIT_RATIO = CodedConcept("1", "UCUM", "no units")

_PERMANENT_JAW = {"1": "PermanentMaxillaryRight", "2": "PermanentMaxillaryLeft", "3": "MandibularLeft",
                  "4": "MandibularRight"}  # fmt: skip
_PRIMARY_JAW = {"5": "DeciduousMaxillaryRight", "6": "DeciduousMaxillaryLeft", "7": "DeciduousMandibularLeft",
                "8": "DeciduousMandibularRight"}  # fmt: skip
_PERMANENT_TOOTH = ("CentralIncisor", "LateralIncisor", "Canine", "FirstPremolar", "SecondPremolar", "FirstMolar",
                    "SecondMolar", "ThirdMolar")  # fmt: skip
_PRIMARY_TOOTH = ("CentralIncisor", "LateralIncisor", "Canine", "FirstMolar", "SecondMolar")
_KEYWORD_FIXES = {"MandibularLeftLateralIncisorTooth": "MandibularLeftLateralTooth"}
"""pydicom names SCT 423331005 (CID 4018) without "Incisor"."""


def _sct_tooth(fdi: str) -> CodedConcept:
    quadrant, position = fdi[0], int(fdi[1])
    if quadrant in _PERMANENT_JAW:
        keyword, cid = _PERMANENT_JAW[quadrant] + _PERMANENT_TOOTH[position - 1] + "Tooth", codes.cid4018
    else:
        keyword, cid = _PRIMARY_JAW[quadrant] + _PRIMARY_TOOTH[position - 1] + "Tooth", codes.cid4019
    code = getattr(cid, _KEYWORD_FIXES.get(keyword, keyword))
    return CodedConcept(code.value, code.scheme_designator, code.meaning)


def tooth_codes(fdi: str) -> tuple[CodedConcept, CodedConcept, CodedConcept]:
    """The tooth ``fdi`` as (SNOMED CT, FDI / ISO 3950, Universal) codes; ``ValueError`` if it is no tooth."""
    universal = fdi_to_universal(fdi)
    return (
        _sct_tooth(fdi),
        CodedConcept(fdi, FDI_SCHEME, f"Tooth {fdi} (FDI)"),
        CodedConcept(universal, UNIVERSAL_SCHEME, f"Tooth {universal} (Universal)"),
    )


def coding_scheme_identification() -> list[Dataset]:
    """Items of the Coding Scheme Identification Sequence for the non-standard schemes used here."""
    items = []
    for designator, name, organisation in (
        (FDI_SCHEME, "ISO 3950 Dentistry - Designation system for teeth (FDI two-digit notation)", "ISO"),
        (UNIVERSAL_SCHEME, "ADA Universal tooth numbering system", "American Dental Association"),
        (PRIVATE_SCHEME, "BTT Edge private concepts", "BTT"),
    ):
        item = Dataset()
        item.CodingSchemeDesignator = designator
        item.CodingSchemeName = name
        item.CodingSchemeResponsibleOrganization = organisation
        items.append(item)
    return items
