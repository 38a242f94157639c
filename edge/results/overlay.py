"""The overlay: a Secondary Capture image with the findings drawn and labelled, for viewers that ignore SRs.

Why Secondary Capture and not a derived DX "for presentation": a DX instance in the study looks to a PACS and a
reading workstation like another acquisition of the patient (it would sit in hanging protocols, be counted for
dose, and could be read as the original). A Secondary Capture is by definition a derived picture, every PACS and
viewer stores and shows it, and its Burned In Annotation = YES tells anonymisers and archives that text is in the
pixels. Above the radiograph, never over it, a banner reads "AI RESULT — NOT A DIAGNOSIS" with the algorithm and
version. On the radiograph (windowed to 8 bits as it would be displayed) each finding is outlined in the colour
of its kind; each tooth with a finding carries its FDI number once, in a box at the tooth; each finding has a
numbered marker in its kind's colour, in free space above (upper arch) or below (lower arch) it, with a leader to
its outline. Below the radiograph, the legend (the kinds' colours) and the table of findings by marker number:
tooth (FDI, and Universal when asked), kind, measure, AI confidence. Where everything goes is
:mod:`edge.results.layout`; no mark covers another or any outline.

:func:`plan` (the layout for an image size), :func:`render` (pure: pixels and findings in, an RGB array out) and
:func:`build_overlay` (the DICOM object). ``python -m edge.results.overlay --demo OUT.png`` draws the overlay of a
generator panoramic as the reference bundle analyses it (the README's picture, docs/images/overlay.png).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from dental.findings import Finding
from edge.errors import PipelineError, ResultBuildError
from edge.pipeline.preprocess import pixels_from_dataset
from edge.results.analysis import Analysis
from edge.results.header import AI_LABEL, DEFAULT_EQUIPMENT, Equipment, finish
from edge.results.layout import MARKER_KEY, TOOTH_KEY, Box, Layout, Numbering, layout
from edge.results.uids import UidFactory

__all__ = ["BANNER", "OVERLAY_SERIES_NUMBER", "build_overlay", "colour", "label", "plan", "render"]

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
_PANEL_BG = (24, 24, 24)
_TOOTH_BG = (0, 0, 0)
_TEXT = (255, 255, 255)
_WINDOW_SAMPLES = 250_000
"""The display window (0.5 and 99.5 percentiles) is taken over about this many pixels, evenly spread."""
_README_GREYS = 48
"""Grey levels of the README's picture (the generator's noise makes a PNG of every grey ~1 MB)."""


def _to_grey8(pixels: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    step = max(1, math.isqrt(pixels.size // _WINDOW_SAMPLES))  # percentiles of every pixel: ~25 ms a panoramic
    lo, hi = (float(v) for v in np.percentile(pixels[::step, ::step], (0.5, 99.5)))
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


@dataclass(frozen=True)
class _Scale:
    """Font sizes and line widths for an image of one size."""

    font_px: int
    line: int
    banner_h: int
    big: ImageFont.FreeTypeFont | ImageFont.ImageFont
    small: ImageFont.FreeTypeFont | ImageFont.ImageFont

    def text_size(self, text: str) -> tuple[float, float]:
        left, top, right, bottom = _text_box(self.small, text)
        return (float(right - left), float(bottom - top))


@functools.lru_cache(maxsize=4096)
def _text_box(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> tuple[float, float, float, float]:
    left, top, right, bottom = font.getbbox(text)
    return (float(left), float(top), float(right), float(bottom))


@functools.lru_cache(maxsize=8)
def _scale(rows: int, columns: int) -> _Scale:
    font_px = max(14, max(rows, columns) // 50)
    return _Scale(
        font_px=font_px,
        line=max(2, max(rows, columns) // 600),
        banner_h=font_px * 2 + font_px // 2,
        big=ImageFont.load_default(size=font_px),
        small=ImageFont.load_default(size=max(10, font_px * 2 // 3)),
    )


def plan(shape: tuple[int, int], findings: Sequence[Finding], *, numbering: Numbering = "fdi") -> Layout:
    """Where :func:`render` puts everything for an image of ``shape`` (rows, columns), in canvas pixels."""
    rows, columns = shape
    scale = _scale(rows, columns)
    return layout((columns, rows), findings, scale.text_size, top=scale.banner_h, line=scale.line, numbering=numbering)


def render(
    pixels: npt.NDArray[np.floating],
    findings: Sequence[Finding],
    algorithm: str,
    *,
    numbering: Numbering = "fdi",
) -> npt.NDArray[np.uint8]:
    """The annotated picture, ``uint8`` RGB: the banner, the radiograph with the findings' outlines, tooth numbers
    and numbered markers, then the legend and the findings table (as :func:`plan` lays them out)."""
    rows, columns = pixels.shape
    scale = _scale(rows, columns)
    font_px, line, banner_h, big, small = scale.font_px, scale.line, scale.banner_h, scale.big, scale.small
    laid = plan((rows, columns), findings, numbering=numbering)
    canvas = Image.new("RGB", (laid.width, laid.height), _PANEL_BG)
    canvas.paste(Image.fromarray(_to_grey8(pixels), mode="L").convert("RGB"), laid.image_at)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, laid.width - 1, banner_h - 1), fill=_BANNER_BG)
    _banner_text(draw, (font_px // 2, font_px // 4), big, font_px)
    draw.text((font_px // 2, font_px + font_px // 2), algorithm, fill=_TEXT, font=small)
    for finding, outline in zip(findings, laid.outlines, strict=True):
        draw.line([*outline, outline[0]], fill=colour(finding.kind), width=line, joint="curve")
    for marker in laid.markers:
        start, end = marker.leader
        draw.line([start, end], fill=colour(marker.kind), width=max(1, line * 2 // 3))
        r = line + 1
        draw.ellipse((end[0] - r, end[1] - r, end[0] + r, end[1] + r), fill=colour(marker.kind))
    tooth_key, marker_key = laid.keys
    for box, number in [(t.box, t.text) for t in laid.teeth] + [(tooth_key, TOOTH_KEY)]:
        draw.rectangle(_xy(box), fill=_TOOTH_BG, outline=_TEXT, width=1)
        _centred(draw, box, number, small, _TEXT)
    for box, number, fill in [(m.box, str(m.number), colour(m.kind)) for m in laid.markers] + [
        (marker_key, MARKER_KEY, _TEXT)
    ]:
        xy = _xy(box)
        draw.rounded_rectangle(xy, radius=(xy[3] - xy[1]) // 2, fill=fill, outline=(0, 0, 0))
        _centred(draw, box, number, small, (0, 0, 0))
    for swatch, name in laid.legend:
        draw.rectangle(_xy(swatch), fill=colour(name.kind or ""))
        _centred(draw, name.box, name.text, small, _TEXT)
    for cell in laid.table:
        _centred(draw, cell.box, cell.text, small, colour(cell.kind) if cell.kind else _TEXT)
    return np.asarray(canvas, dtype=np.uint8)


def colour(kind: str) -> tuple[int, int, int]:
    """The colour a kind's outlines, markers and legend swatch are drawn in."""
    return _COLOURS.get(kind, _DEFAULT_COLOUR)


def _xy(box: Box) -> tuple[int, int, int, int]:
    return (round(box.x0), round(box.y0), max(round(box.x0), round(box.x1) - 1), max(round(box.y0), round(box.y1) - 1))


def _centred(
    draw: ImageDraw.ImageDraw,
    box: Box,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    fill: tuple[int, int, int],
) -> None:
    left, top, right, bottom = _text_box(font, text)
    cx, cy = box.centre
    draw.text((cx - (left + right) / 2, cy - (top + bottom) / 2), text, fill=fill, font=font)


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
    numbering: Numbering = "fdi",
) -> Dataset:
    """The Secondary Capture overlay of ``analysis`` on ``source`` (which must carry its pixel data); the table
    names teeth in FDI, or FDI and Universal (``numbering``)."""
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
    picture = render(pixels, analysis.findings, caption, numbering=numbering)
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


def _readme_picture(picture: npt.NDArray[np.uint8], width: int) -> Image.Image:
    """``picture`` at ``width`` px on a palette of greys and the overlay's own colours (a small PNG for docs)."""
    image = Image.fromarray(picture)
    image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    colours = [*_COLOURS.values(), _DEFAULT_COLOUR, _BANNER_BG, _PANEL_BG, _TEXT, (0, 0, 0)]
    greys = [(v, v, v) for v in (round(i * 255 / (_README_GREYS - 1)) for i in range(_README_GREYS))]
    palette = Image.new("P", (1, 1))
    palette.putpalette([c for rgb in colours + greys for c in rgb])
    return image.quantize(palette=palette, dither=Image.Dither.NONE)


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge.results.overlay --demo OUT.png``: the overlay of a generator panoramic as the reference
    bundle analyses it, downscaled for the README (docs/images/overlay.png)."""
    import argparse
    from pathlib import Path

    from edge.config import PipelineConfig
    from edge.pipeline.analyzer import open_analyzer
    from models.synthetic import generate
    from models.synthetic_dicom import synthetic_dataset

    parser = argparse.ArgumentParser(prog="python -m edge.results.overlay", description=_main.__doc__)
    parser.add_argument("--demo", type=Path, required=True, metavar="OUT.png", help="where to write the picture")
    parser.add_argument("--seed", type=int, default=3, help="the generator's seed (default 3)")
    parser.add_argument("--width", type=int, default=1200, help="width of the picture in pixels (default 1200)")
    parser.add_argument("--numbering", choices=["fdi", "fdi+universal"], default="fdi")
    args = parser.parse_args(argv)
    bundle = Path(__file__).resolve().parents[2] / "models" / "bundles" / "reference-dental"
    analyzer = open_analyzer(PipelineConfig(bundle_path=bundle, backend="onnxruntime-cpu"))
    source = synthetic_dataset(generate(args.seed), args.seed)
    result = analyzer.analyse(source)
    caption = f"{result.model_id} {result.model_version} - research model, not cleared for clinical use"
    picture = render(pixels_from_dataset(source), result.findings, caption, numbering=args.numbering)
    _readme_picture(picture, args.width).save(args.demo, optimize=True)
    print(f"{args.demo}: {len(result.findings)} findings of seed {args.seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
