"""The overlay: a Secondary Capture image with the findings drawn and labelled, for viewers that ignore SRs.

Why Secondary Capture and not a derived DX "for presentation": a DX instance in the study looks to a PACS and a
reading workstation like another acquisition of the patient (it would sit in hanging protocols, be counted for
dose, and could be read as the original). A Secondary Capture is by definition a derived picture, every PACS and
viewer stores and shows it, and its Burned In Annotation = YES tells anonymisers and archives that text is in the
pixels. Above the radiograph, never over it, a banner reads "AI RESULT — NOT A DIAGNOSIS" with the algorithm and
version; each finding is outlined in the colour of its kind and labelled with the kind, the tooth in FDI and
Universal numbering and the confidence. The radiograph itself is windowed to 8 bits as it would be displayed.

:func:`render` (pure: pixels and findings in, an RGB array out) and :func:`build_overlay` (the DICOM object).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from edge.errors import PipelineError, ResultBuildError
from edge.pipeline.findings import Finding
from edge.pipeline.preprocess import pixels_from_dataset
from edge.results.analysis import Analysis
from edge.results.header import AI_LABEL, DEFAULT_EQUIPMENT, Equipment, finish
from edge.results.uids import UidFactory

__all__ = ["BANNER", "OVERLAY_SERIES_NUMBER", "build_overlay", "label", "render"]

BANNER = "AI RESULT — NOT A DIAGNOSIS"
OVERLAY_SERIES_NUMBER = 9902
_COLOURS = {
    "caries": (255, 64, 64),
    "periapical_lesion": (255, 160, 0),
    "bone_loss": (255, 0, 255),
    "restoration": (0, 200, 255),
    "crown": (0, 255, 160),
    "root_canal_filling": (120, 160, 255),
    "implant": (200, 255, 0),
}
_DEFAULT_COLOUR = (255, 255, 0)
_BANNER_BG = (200, 0, 0)
_TEXT = (255, 255, 255)


def _to_grey8(pixels: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    lo, hi = (float(v) for v in np.percentile(pixels, (0.5, 99.5)))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    # in the image's own precision and in place: float64 scalars would make three float64 copies of a panoramic
    work = pixels - pixels.dtype.type(lo)
    work *= pixels.dtype.type(scale)
    np.clip(work, 0, 255, out=work)
    grey: npt.NDArray[np.uint8] = work.astype(np.uint8)
    return grey


def label(finding: Finding) -> str:
    """``caries 36/U19 91%``: kind, tooth (FDI/Universal), confidence."""
    tooth = f" {finding.tooth_fdi}/U{finding.tooth_universal}" if finding.tooth_fdi else ""
    return f"{finding.kind.replace('_', ' ')}{tooth} {finding.confidence:.0%}"


def _banner_text(
    draw: ImageDraw.ImageDraw, at: tuple[int, int], font: ImageFont.FreeTypeFont | ImageFont.ImageFont, size: int
) -> None:
    """:data:`BANNER`, with the long dash drawn as a bar (Pillow's built-in font has no glyph for it)."""
    x, y = at
    head, tail = (part.strip() for part in BANNER.split("—"))
    draw.text((x, y), head, fill=_TEXT, font=font)
    x += int(draw.textlength(head + " ", font=font))
    mid = y + int(draw.textbbox((0, 0), "N", font=font)[3] * 0.6)
    draw.rectangle((x, mid - max(1, size // 16), x + size, mid + max(1, size // 16)), fill=_TEXT)
    draw.text((x + size + int(draw.textlength(" ", font=font)), y), tail, fill=_TEXT, font=font)


def render(pixels: npt.NDArray[np.floating], findings: Sequence[Finding], algorithm: str) -> npt.NDArray[np.uint8]:
    """The annotated picture: rows x columns (plus the banner above) x 3, ``uint8`` RGB."""
    rows, columns = pixels.shape
    unit = max(rows, columns)
    font_px = max(14, unit // 50)
    line = max(2, unit // 600)
    banner_h = font_px * 2 + font_px // 2
    canvas = Image.new("RGB", (columns, rows + banner_h), _BANNER_BG)
    canvas.paste(Image.fromarray(_to_grey8(pixels), mode="L").convert("RGB"), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    big = ImageFont.load_default(size=font_px)
    small = ImageFont.load_default(size=max(10, font_px * 2 // 3))
    _banner_text(draw, (font_px // 2, font_px // 4), big, font_px)
    draw.text((font_px // 2, font_px + font_px // 2), algorithm, fill=_TEXT, font=small)
    for finding in findings:
        colour = _COLOURS.get(finding.kind, _DEFAULT_COLOUR)
        if len(finding.polygon) >= 3:
            points = [(x, y + banner_h) for x, y in finding.polygon]
            draw.line([*points, points[0]], fill=colour, width=line, joint="curve")
        else:
            x0, y0, x1, y1 = finding.bbox
            draw.rectangle((x0, y0 + banner_h, max(x0, x1 - 1), max(y0, y1 - 1) + banner_h), outline=colour, width=line)
    placed: list[tuple[int, ...]] = []
    for finding in findings:
        text = label(finding)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=small)
        width, height = right - left + line, bottom - top + 2 * line
        tx, ty = _label_at(finding.bbox, (width, height), (banner_h, columns, rows + banner_h), placed)
        placed.append((tx, ty, tx + width, ty + height))
        draw.rectangle((tx, ty, tx + width, ty + height), fill=(0, 0, 0))
        draw.text((tx, ty + line - top), text, fill=_COLOURS.get(finding.kind, _DEFAULT_COLOUR), font=small)
    return np.asarray(canvas, dtype=np.uint8)


def _label_at(
    bbox: tuple[int, int, int, int], size: tuple[int, int], frame: tuple[int, int, int], placed: list[tuple[int, ...]]
) -> tuple[int, int]:
    """Where a label goes: just above the finding, else just below, else further out or beside, where it covers no
    label placed before (``frame`` = banner height, columns, total height)."""
    (width, height), (banner_h, columns, total_h) = size, frame
    x0, y0, _, y1 = bbox
    above, below = y0 + banner_h - height - 2, y1 + banner_h + 2
    spots = [
        (min(max(0, x0 + dx), max(0, columns - width)), y)
        for step in range(12)
        for dx in (0, -width // 2, width // 2)
        for y in (above - step * height, below + step * height)
        if banner_h <= y <= total_h - height
    ]
    for tx, ty in spots:
        if not any(tx < p[2] and p[0] < tx + width and ty < p[3] and p[1] < ty + height for p in placed):
            return tx, ty
    return spots[0] if spots else (min(max(0, x0), max(0, columns - width)), banner_h)


def _orientation(source: Dataset) -> list[str]:
    value = source.get("PatientOrientation")
    return [str(v) for v in value] if value and len(value) == 2 else []


def build_overlay(
    source: Dataset,
    analysis: Analysis,
    uids: UidFactory,
    *,
    series_number: int = OVERLAY_SERIES_NUMBER,
    equipment: Equipment = DEFAULT_EQUIPMENT,
) -> Dataset:
    """The Secondary Capture overlay of ``analysis`` on ``source`` (which must carry its pixel data)."""
    algorithm = analysis.algorithm
    try:
        pixels = pixels_from_dataset(source)
    except PipelineError as exc:
        raise ResultBuildError(f"cannot draw the overlay for {analysis.sop_instance_uid}: {exc}") from exc
    caption = f"{algorithm.bundle_id} {algorithm.version}"
    if algorithm.name != algorithm.bundle_id:
        caption = f"{algorithm.name} ({caption})"
    if not algorithm.clinical:
        caption += " - research model, not cleared for clinical use"
    picture = render(pixels, analysis.findings, caption)
    try:
        sc = SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=picture,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=uids.derived(source.SeriesInstanceUID, algorithm.bundle_id, "overlay-series"),
            series_number=series_number,
            sop_instance_uid=uids.derived(source.SOPInstanceUID, algorithm.bundle_id, algorithm.version, "overlay"),
            instance_number=int(source.get("InstanceNumber") or 1),
            manufacturer=equipment.manufacturer,
            patient_orientation=("A", "F"),  # required by highdicom; replaced by the source's own below
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ResultBuildError(f"cannot build the overlay for {analysis.sop_instance_uid}: {exc}") from exc
    sc.PatientOrientation = _orientation(source)
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"{AI_LABEL}: findings of {algorithm.bundle_id} {algorithm.version} drawn on the source"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    finish(source, sc, equipment)
    return sc
