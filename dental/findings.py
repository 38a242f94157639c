"""A finding: one coded observation on one tooth (or none), located in source-image pixels.

This is the shape that ``btt-edge analyze --json`` prints per finding, that the synthetic generator writes as
ground truth, and that the results stage turns into DICOM. ``kind`` is a stable code name (``caries``,
``periapical_lesion``, ...); its coded meaning (SNOMED CT) comes from the model bundle's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dental.teeth import fdi_to_universal

__all__ = ["Finding", "box_iou"]


@dataclass(frozen=True)
class Finding:
    """One finding. Coordinates are in source-image pixels, ``(x, y)`` with x to the right, y down."""

    kind: str
    tooth_fdi: str | None
    confidence: float
    bbox: tuple[int, int, int, int]
    """``(x0, y0, x1, y1)``, end-exclusive."""
    polygon: tuple[tuple[float, float], ...] = ()
    """Outline of the region, closed implicitly (last point joins the first)."""
    area_px: int = 0
    area_mm2: float | None = None
    """Area in mm² at the detector (Imager Pixel Spacing) or the patient (Pixel Spacing), when known."""
    bone_loss_mm: float | None = None
    bone_loss_pct: float | None = None
    """Bone loss as a percentage of root length, where the model supports it and the region starts at the
    cemento-enamel junction (see :func:`edge.pipeline.postprocess.findings_from_outputs`)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} is outside [0, 1]")
        x0, y0, x1, y1 = self.bbox
        if x1 < x0 or y1 < y0:
            raise ValueError(f"bbox {self.bbox} is not (x0, y0, x1, y1) with x0 <= x1, y0 <= y1")
        if self.tooth_fdi is not None:
            fdi_to_universal(self.tooth_fdi)
        if self.bone_loss_mm is not None and self.bone_loss_mm < 0:
            raise ValueError(f"bone loss {self.bone_loss_mm} mm is negative")
        if self.bone_loss_pct is not None and not 0.0 <= self.bone_loss_pct <= 100.0:
            raise ValueError(f"bone loss {self.bone_loss_pct} % of root length is outside [0, 100]")

    @property
    def tooth_universal(self) -> str | None:
        """The tooth in Universal numbering."""
        return None if self.tooth_fdi is None else fdi_to_universal(self.tooth_fdi)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with both tooth numbers."""
        return {
            "kind": self.kind,
            "tooth_fdi": self.tooth_fdi,
            "tooth_universal": self.tooth_universal,
            "confidence": round(self.confidence, 4),
            "bbox": list(self.bbox),
            "polygon": [[round(x, 1), round(y, 1)] for x, y in self.polygon],
            "area_px": self.area_px,
            "area_mm2": None if self.area_mm2 is None else round(self.area_mm2, 3),
            "bone_loss_mm": None if self.bone_loss_mm is None else round(self.bone_loss_mm, 2),
            "bone_loss_pct": None if self.bone_loss_pct is None else round(self.bone_loss_pct, 1),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Finding:
        """The inverse of :meth:`to_json` (``tooth_universal`` is derived, so it is not read)."""
        return cls(
            kind=str(doc["kind"]),
            tooth_fdi=None if doc.get("tooth_fdi") is None else str(doc["tooth_fdi"]),
            confidence=float(doc["confidence"]),
            bbox=(int(doc["bbox"][0]), int(doc["bbox"][1]), int(doc["bbox"][2]), int(doc["bbox"][3])),
            polygon=tuple((float(x), float(y)) for x, y in doc.get("polygon", ())),
            area_px=int(doc.get("area_px", 0)),
            area_mm2=doc.get("area_mm2"),
            bone_loss_mm=doc.get("bone_loss_mm"),
            bone_loss_pct=doc.get("bone_loss_pct"),
        )


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two end-exclusive ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
