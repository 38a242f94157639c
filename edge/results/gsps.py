"""The presentation state: a Grayscale Softcopy Presentation State (GSPS) with the findings as annotations.

A viewer that understands GSPS shows the *original* radiograph (its own window from the source's VOI) with the
findings drawn over it in a layer the reader can switch off: each finding's outline (a closed polyline in image
pixels) and a label (kind, tooth in FDI and Universal numbering, confidence), plus the banner "AI RESULT - NOT A
DIAGNOSIS" in its own layer at the top of the display. Built with highdicom; pure like the other builders.
"""

from __future__ import annotations

from highdicom.pr import (
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GrayscaleSoftcopyPresentationState,
    TextObject,
)
from pydicom.dataset import Dataset

from edge.errors import ResultBuildError
from edge.results.analysis import Analysis
from edge.results.header import AI_LABEL, DEFAULT_EQUIPMENT, Equipment, finish
from edge.results.overlay import label
from edge.results.sr import outline
from edge.results.uids import UidFactory

__all__ = ["GSPS_SERIES_NUMBER", "build_gsps"]

GSPS_SERIES_NUMBER = 9903
_BANNER = "AI RESULT - NOT A DIAGNOSIS"


def build_gsps(
    source: Dataset,
    analysis: Analysis,
    uids: UidFactory,
    *,
    series_number: int = GSPS_SERIES_NUMBER,
    equipment: Equipment = DEFAULT_EQUIPMENT,
) -> Dataset:
    """The GSPS of ``analysis`` over ``source`` (pixel data not needed)."""
    algorithm = analysis.algorithm
    rows, columns = int(source.Rows), int(source.Columns)
    findings_layer = GraphicLayer("AI_FINDINGS", order=1, description=f"{AI_LABEL}: {algorithm.bundle_id}")
    banner_layer = GraphicLayer("AI_BANNER", order=2, description=AI_LABEL)
    try:
        annotations = [
            GraphicAnnotation(
                referenced_images=[source],
                graphic_layer=banner_layer,
                text_objects=[
                    TextObject(
                        f"{_BANNER} ({algorithm.bundle_id} {algorithm.version})",
                        units="DISPLAY",
                        bounding_box=(0.01, 0.01, 0.99, 0.06),
                        text_justification="LEFT",
                    )
                ],
            )
        ]
        if analysis.findings:
            annotations.append(
                GraphicAnnotation(
                    referenced_images=[source],
                    graphic_layer=findings_layer,
                    graphic_objects=[
                        GraphicObject("POLYLINE", outline(f, rows, columns), units="PIXEL") for f in analysis.findings
                    ],
                    text_objects=[
                        TextObject(
                            label(f),
                            units="PIXEL",
                            anchor_point=(float(min(f.bbox[0], columns)), float(min(f.bbox[1], rows))),
                            anchor_point_visible=False,
                        )
                        for f in analysis.findings
                    ],
                )
            )
        gsps = GrayscaleSoftcopyPresentationState(
            referenced_images=[source],
            series_instance_uid=uids.derived(source.SeriesInstanceUID, algorithm.bundle_id, "gsps-series"),
            series_number=series_number,
            sop_instance_uid=uids.derived(source.SOPInstanceUID, algorithm.bundle_id, algorithm.version, "gsps"),
            instance_number=int(source.get("InstanceNumber") or 1),
            manufacturer=equipment.manufacturer,
            manufacturer_model_name=equipment.model_name,
            software_versions=equipment.software_versions,
            device_serial_number=equipment.serial_number,  # absent when empty (``finish``)
            content_label="AI_RESULT",
            content_description=AI_LABEL,
            graphic_annotations=annotations,
            graphic_layers=[findings_layer, banner_layer],
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ResultBuildError(f"cannot build the presentation state for {analysis.sop_instance_uid}: {exc}") from exc
    finish(source, gsps, equipment)
    return gsps
