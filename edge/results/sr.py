"""The structured report: a Comprehensive 3D SR following TID 1500 (Measurement Report), built with highdicom.

In the spirit of IHE AI Results (AIR): the algorithm is the observer device (TID 1004: its name, manufacturer and
the bundle id as model name, with the serial number of the box it ran on, never its version) and every finding
group names it again as Algorithm Identification (TID 4019: name, version, manufacturer, bundle id as a
parameter). The Image Library (TID 1600) lists the source image, so every region resolves to its image from the
report alone. One TID 1410 group per finding: tracking identifier and UID, the finding type (the
bundle's SNOMED CT code for the kind), the tooth as finding site (SNOMED CT, FDI / ISO 3950 and Universal codes),
the region as a closed SCOORD polyline on the source image, and the measurements: area (mm² when the image is
calibrated, else pixels), bone loss in mm and in percent of root length where the model gives them, and the
model's confidence. The document is marked complete but *unverified*: no human has signed it.

:func:`build_sr` is pure (datasets and findings in, a dataset out or :class:`~edge.errors.ResultBuildError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    ImageContentItem,
    ImageLibrary,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dental.findings import Finding
from edge.errors import ResultBuildError
from edge.results import codes as rc
from edge.results.analysis import Algorithm, Analysis
from edge.results.header import DEFAULT_EQUIPMENT, Equipment, finish
from edge.results.uids import UidFactory

__all__ = ["SR_SERIES_NUMBER", "SR_SOP_CLASS_UID", "SrUids", "build_sr", "outline", "sr_uids"]

SR_SERIES_NUMBER = 9901
SR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.34"
"""Comprehensive 3D SR Storage."""


@dataclass(frozen=True)
class SrUids:
    """The UIDs the SR of one analysis carries, derived from the source, the bundle and its version: the same for
    the same analysis, so other results (the FHIR Bundle) can name the report and its findings without it."""

    sop_instance_uid: str
    series_instance_uid: str
    tracking_uids: tuple[str, ...]
    """The Tracking Unique Identifier of each finding's group, in the order of the analysis's findings."""


def _tracking_uid(uids: UidFactory, source_uid: str, algorithm: Algorithm, *parts: str) -> str:
    return uids.derived(source_uid, algorithm.bundle_id, algorithm.version, *parts)


def sr_uids(source: Dataset, analysis: Analysis, uids: UidFactory) -> SrUids:
    """The UIDs of the SR :func:`build_sr` makes of ``analysis`` on ``source`` (only the header is read)."""
    a, sop = analysis.algorithm, str(source.SOPInstanceUID)
    return SrUids(
        sop_instance_uid=uids.derived(sop, a.bundle_id, a.version, "sr"),
        series_instance_uid=uids.derived(str(source.SeriesInstanceUID), a.bundle_id, "sr-series"),
        tracking_uids=tuple(_tracking_uid(uids, sop, a, "finding", str(i)) for i in range(len(analysis.findings))),
    )


def outline(finding: Finding, rows: int, columns: int) -> np.ndarray:
    """The finding's region as a closed polyline (first point repeated last), clipped to the image."""
    if len(finding.polygon) >= 3:
        points = [*finding.polygon, finding.polygon[0]]
    else:
        x0, y0, x1, y1 = finding.bbox
        points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    outline = np.array(points, dtype=np.float32)
    outline[:, 0] = outline[:, 0].clip(0, columns)
    outline[:, 1] = outline[:, 1].clip(0, rows)
    return outline


def _measurements(finding: Finding) -> list[Measurement]:
    """The group's measurements (its Algorithm Identification covers them: not repeated per measurement)."""
    values: list[tuple[CodedConcept, float, CodedConcept]] = []
    if finding.area_mm2 is not None:
        values.append((rc.AREA, finding.area_mm2, rc.UNIT_MM2))
    else:
        values.append((rc.AREA, float(finding.area_px), rc.UNIT_PIXELS))
    if finding.bone_loss_mm is not None:
        values.append((rc.BONE_LOSS_LENGTH, finding.bone_loss_mm, rc.UNIT_MM))
    if finding.bone_loss_pct is not None:
        values.append((rc.BONE_LOSS_PERCENT, finding.bone_loss_pct, rc.UNIT_PERCENT))
    values.append((rc.CONFIDENCE, finding.confidence, rc.UNIT_RATIO))
    return [Measurement(name=name, value=round(float(value), 4), unit=unit) for name, value, unit in values]


class _Shared:
    """Content items every finding group of one report repeats, made once (a group takes about half the time
    otherwise): the algorithm identification, the source image reference, finding types and tooth sites."""

    def __init__(self, source: Dataset, algorithm: Algorithm, uids: UidFactory) -> None:
        self.source, self.algorithm, self.uids = source, algorithm, uids
        self.rows, self.columns = int(source.Rows), int(source.Columns)
        self.algorithm_id = AlgorithmIdentification(
            name=algorithm.name[:64],
            version=algorithm.version,
            manufacturer=algorithm.manufacturer,
            parameters=[
                f"bundle_id={algorithm.bundle_id}",
                f"cleared_for_clinical_use={str(algorithm.clinical).lower()}",
                f"precision={algorithm.precision}",
            ],
        )
        self.source_image = SourceImageForRegion.from_source_image(source)
        self._types: dict[str, CodedConcept] = {}
        self._sites: dict[str, list[FindingSite]] = {}

    def finding_type(self, kind: str) -> CodedConcept:
        if kind not in self._types:
            try:
                code = self.algorithm.codes[kind]
            except KeyError:
                raise ResultBuildError(
                    f"bundle {self.algorithm.bundle_id} has no code for finding kind {kind!r}"
                ) from None
            self._types[kind] = CodedConcept(code.value, code.scheme, code.meaning)
        return self._types[kind]

    def sites(self, fdi: str | None) -> list[FindingSite]:
        if fdi is None:
            return []
        if fdi not in self._sites:
            self._sites[fdi] = [FindingSite(code) for code in rc.tooth_codes(fdi)]
        return self._sites[fdi]

    def tracking(self, identifier: str, *parts: str) -> TrackingIdentifier:
        """A tracking identifier whose UID derives from the source, the bundle and ``parts``."""
        uid = _tracking_uid(self.uids, self.source.SOPInstanceUID, self.algorithm, *parts)
        return TrackingIdentifier(uid=uid, identifier=identifier)


def _group(shared: _Shared, finding: Finding, index: int) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    tooth = f" tooth {finding.tooth_fdi}" if finding.tooth_fdi else ""
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=shared.tracking(f"{finding.kind}{tooth} #{index + 1}", "finding", str(index)),
        referenced_region=ImageRegion(
            graphic_type="POLYLINE",
            graphic_data=outline(finding, shared.rows, shared.columns),
            source_image=shared.source_image,
        ),
        finding_type=shared.finding_type(finding.kind),
        algorithm_id=shared.algorithm_id,
        finding_sites=shared.sites(finding.tooth_fdi),
        measurements=_measurements(finding),
    )


def _empty_group(shared: _Shared) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 for an image without findings: the algorithm looked and found none of the kinds it knows."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=shared.tracking("no findings", "no-findings"),
        algorithm_id=shared.algorithm_id,
    )


def _image_library(source: Dataset) -> ContentSequence:
    """TID 1600 naming ``source`` (the image every region of the report is on), so a reader can resolve each
    measurement's image from the report alone. highdicom's descriptors (TID 1603/1604) need the source's
    orientation and pixel spacing; a source without them gets an entry with modality, rows and columns only."""
    try:
        return ImageLibrary([source])
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    modality = next((c for c in codes.cid29.concepts.values() if c.value == source.get("Modality")), None)
    acquisition = RelationshipTypeValues.HAS_ACQ_CONTEXT
    descriptors: list[ContentItem] = []
    if modality is not None:
        descriptors.append(CodeContentItem(name=codes.DCM.Modality, value=modality, relationship_type=acquisition))
    for name, value in ((codes.DCM.PixelDataRows, source.Rows), (codes.DCM.PixelDataColumns, source.Columns)):
        descriptors.append(
            NumContentItem(name=name, value=int(value), unit=rc.UNIT_PIXELS, relationship_type=acquisition)
        )
    image = ImageContentItem(
        name=rc.SOURCE,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    image.ContentSequence = ContentSequence(descriptors)
    group = ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=RelationshipTypeValues.CONTAINS)
    group.ContentSequence = ContentSequence([image])
    library = ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=RelationshipTypeValues.CONTAINS)
    library.ContentSequence = ContentSequence([group])
    return ContentSequence([library])


def _observer(algorithm: Algorithm, equipment: Equipment, uids: UidFactory) -> ObserverContext:
    """TID 1004: the algorithm as the observing device (its name, manufacturer and model, IHE AIR), running on
    the box whose own serial number it carries (absent when the box has none); the version is in TID 4019."""
    return ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=uids.derived("device", equipment.serial_number, algorithm.bundle_id, algorithm.version),
            name=algorithm.name[:64],
            manufacturer_name=algorithm.manufacturer[:64],
            model_name=algorithm.bundle_id[:64],
            serial_number=equipment.serial_number[:64] or None,
        ),
    )


def build_sr(
    source: Dataset,
    analysis: Analysis,
    uids: UidFactory,
    *,
    series_number: int = SR_SERIES_NUMBER,
    equipment: Equipment = DEFAULT_EQUIPMENT,
) -> Dataset:
    """The TID 1500 report of ``analysis`` on ``source`` (the analysed image, pixel data not needed)."""
    algorithm = analysis.algorithm
    try:
        context = ObservationContext(observer_device_context=_observer(algorithm, equipment, uids))
        shared = _Shared(source, algorithm, uids)
        groups: Sequence[PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations] = [
            _group(shared, finding, i) for i, finding in enumerate(analysis.findings)
        ] or [_empty_group(shared)]
        report = MeasurementReport(context, rc.PROCEDURE, imaging_measurements=groups)
        content = report[0].ContentSequence
        at = next(i for i, item in enumerate(content) if item.name == codes.DCM.ImagingMeasurements)
        content[at:at] = _image_library(source)  # TID 1500 row 4, before the measurements
        # highdicom's document constructor deep-copies and walks the whole content tree (two thirds of the SR's
        # time for a dozen findings); build the document around a one-group report, then give it the full
        # content exactly as that constructor copies it (every item references only ``source``, the evidence).
        stub = MeasurementReport(context, rc.PROCEDURE, imaging_measurements=[_empty_group(shared)])
        identity = sr_uids(source, analysis, uids)
        sr = Comprehensive3DSR(
            evidence=[source],
            content=stub,
            series_instance_uid=identity.series_instance_uid,
            series_number=series_number,
            sop_instance_uid=identity.sop_instance_uid,
            instance_number=int(source.get("InstanceNumber") or 1),
            manufacturer=equipment.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
        )
        for tag, value in report[0].items():
            sr[tag] = value
    except (AttributeError, KeyError, TypeError, ValueError, StopIteration) as exc:
        raise ResultBuildError(f"cannot build the SR for {analysis.sop_instance_uid}: {exc}") from exc
    sr.CodingSchemeIdentificationSequence = rc.coding_scheme_identification()
    finish(source, sr, equipment)
    return sr
