"""The overlay's layout: every tooth numbered once at the tooth, no mark over another mark or over an outline, each
marker's leader ending on its own outline; on the generator's panoramics as the reference bundle analyses them, on
a dense hand-made case and on generated outlines."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dental.findings import Finding
from dental.teeth import PERMANENT_FDI
from edge.config import PipelineConfig
from edge.pipeline.analyzer import open_analyzer
from edge.results.analysis import Analysis
from edge.results.layout import Box, Layout, layout, outline_points, upper_arch
from edge.results.overlay import _main as overlay_main
from edge.results.overlay import build_overlay, plan
from edge.results.uids import UidFactory
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.results_helpers import ALGORITHM, dciodvfy_errors, file_bytes, findings

REFERENCE_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "bundles" / "reference-dental"
KINDS = ("caries", "periapical_lesion", "bone_loss", "restoration", "crown", "root_canal_filling", "implant")


def fixed_size(text: str) -> tuple[float, float]:
    """Text sizes of a monospaced font: 8 px a character, 12 px high."""
    return (8.0 * len(text), 12.0)


@functools.cache
def analysed(seed: int) -> tuple[Finding, ...]:
    """The findings the reference bundle makes on the generator's panoramic of ``seed``."""
    analyzer = open_analyzer(PipelineConfig(bundle_path=REFERENCE_BUNDLE, backend="onnxruntime-cpu"))
    return analyzer.analyse(synthetic_dataset(generate(seed), seed)).findings


def _distance_to_outline(point: tuple[float, float], outline: Sequence[tuple[float, float]]) -> float:
    best = math.inf
    for (ax, ay), (bx, by) in zip(outline, [*outline[1:], outline[0]], strict=True):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((point[0] - ax) * dx + (point[1] - ay) * dy) / length2))
        best = min(best, math.dist(point, (ax + t * dx, ay + t * dy)))
    return best


def _on_border(point: tuple[float, float], box: Box) -> bool:
    x, y = point
    inside = box.x0 - 1 <= x <= box.x1 + 1 and box.y0 - 1 <= y <= box.y1 + 1
    return inside and min(abs(x - box.x0), abs(x - box.x1), abs(y - box.y0), abs(y - box.y1)) <= 1


def _bounds(outline: Sequence[tuple[float, float]]) -> Box:
    xs, ys = [p[0] for p in outline], [p[1] for p in outline]
    return Box(min(xs), min(ys), max(xs), max(ys))


def check(laid: Layout, found: Sequence[Finding], rows: int, *, top: float = 0) -> None:
    """The geometric promises of :func:`edge.results.layout.layout`."""
    labels = laid.label_boxes()
    for a, b in itertools.combinations(labels, 2):
        assert not a.overlaps(b), f"labels {a} and {b} overlap"
    outlines = [_bounds(o) for o in laid.outlines]
    for label in labels:
        for i, outline in enumerate(outlines):
            assert not label.overlaps(outline), f"label {label} covers the outline of {found[i]}"
        assert label.x0 >= 0
        assert label.x1 <= laid.width
        assert label.y0 >= top  # never over the banner
        assert label.y1 <= laid.panel.y0  # nor over the legend and table
    assert sorted(t.fdi for t in laid.teeth) == sorted({f.tooth_fdi for f in found if f.tooth_fdi})  # once each
    dy = laid.image_at[1]
    for tooth in laid.teeth:  # above the tooth's findings (upper arch) or below them (lower)
        group = [f for f in found if f.tooth_fdi == tooth.fdi]
        if tooth.fdi[0] in "1256":
            assert tooth.box.y1 <= min(f.bbox[1] for f in group) + dy, tooth
        else:
            assert tooth.box.y0 >= max(f.bbox[3] - 1 for f in group) + dy, tooth
    assert [m.number for m in laid.markers] == list(range(1, len(found) + 1))
    assert sorted(m.finding for m in laid.markers) == list(range(len(found)))
    image_top, image_bottom = laid.image_at[1], laid.image_at[1] + rows
    for marker, up in zip(sorted(laid.markers, key=lambda m: m.finding), upper_arch(found, rows), strict=True):
        start, end = marker.leader
        assert _distance_to_outline(end, laid.outlines[marker.finding]) <= 1.0, marker
        assert _on_border(start, marker.box), marker
        own = outlines[marker.finding]
        if up:  # upper-arch marks above their outline, lower-arch ones below
            assert marker.box.y1 <= own.y0 or marker.box.y1 <= image_top, marker
        else:
            assert marker.box.y0 >= own.y1 or marker.box.y0 >= image_bottom, marker
    for a, b in itertools.combinations([t.box for t in laid.table] + [s for s, _ in laid.legend] + [*laid.keys], 2):
        assert not a.overlaps(b), f"table texts {a} and {b} overlap"


def test_generator_panoramics_through_the_reference_bundle() -> None:
    """The real findings (25-35 on each: caries, crowns, restorations, fillings, implants, bone loss), as the overlay
    lays them out with its own font."""
    for seed in (3, 1000019):
        found = analysed(seed)
        assert len(found) > 20
        rows, columns = generate(seed).pixels.shape
        for numbering in ("fdi", "fdi+universal"):
            laid = plan((rows, columns), found, numbering=numbering)
            check(laid, found, rows, top=1)
            assert laid.image_at[1] > 0  # the banner stays above
            assert laid.width == columns
        inside = [m for m in laid.markers if laid.image_at[1] <= m.box.y0 and m.box.y1 <= laid.image_at[1] + rows]
        assert len(inside) == len(found)  # the panoramic has room for every marker: no band needed
        for tooth in laid.teeth:  # and every tooth number near its tooth
            group = [f for f in found if f.tooth_fdi == tooth.fdi]
            width, reach, y = tooth.box.x1 - tooth.box.x0, rows / 8, tooth.box.centre[1] - laid.image_at[1]
            assert min(f.bbox[0] for f in group) - width <= tooth.box.centre[0] <= max(f.bbox[2] for f in group) + width
            assert min(f.bbox[1] for f in group) - reach <= y <= max(f.bbox[3] for f in group) + reach
        table = [t.text for t in laid.table]
        assert any(" (U" in text for text in table)  # Universal in the table when asked


@pytest.mark.integration
def test_overlay_of_real_findings_passes_dciodvfy(tmp_path: Path) -> None:
    seed = 3
    source = synthetic_dataset(generate(seed), seed)
    analysis = Analysis(sop_instance_uid=source.SOPInstanceUID, algorithm=ALGORITHM, findings=analysed(seed))
    ds = build_overlay(source, analysis, UidFactory("1.2.3.4"))
    path = tmp_path / "overlay.dcm"
    path.write_bytes(file_bytes(ds))
    assert dciodvfy_errors(path) == []
    assert ds.BurnedInAnnotation == "YES"
    assert int(ds.Columns) == int(source.Columns)
    assert int(ds.Rows) == plan((int(source.Rows), int(source.Columns)), analysis.findings).height


def _dense(count: int = 40, columns: int = 1200, rows: int = 600) -> list[Finding]:
    """``count`` findings on ten teeth of each arch, several on one tooth, outlines overlapping, a few without a
    tooth."""
    out = []
    teeth = [t for t in PERMANENT_FDI if t[1] in "34567"]  # 20 teeth, both arches
    for n in range(count):
        fdi = teeth[n % len(teeth)] if n % 9 else None
        quadrant = int(fdi[0]) if fdi else 1 + n % 4
        side = -1 if quadrant in (1, 4) else 1
        x = columns / 2 + side * (int(fdi[1]) if fdi else 2) * columns / 18 + (n % 3) * 9
        y = rows * (0.38 if quadrant in (1, 2) else 0.62) + (n % 4) * 7
        w, h = 30 + (n % 5) * 8, 24 + (n % 3) * 10
        out.append(
            Finding(kind=KINDS[n % len(KINDS)], tooth_fdi=fdi, confidence=0.5 + (n % 5) / 10,
                    bbox=(int(x), int(y), int(x + w), int(y + h)),
                    polygon=((x, y + h / 2), (x + w / 2, y), (x + w, y + h / 2), (x + w / 2, y + h)),
                    area_px=w * h, bone_loss_mm=2.5 if KINDS[n % len(KINDS)] == "bone_loss" else None)
        )  # fmt: skip
    return out


def test_a_dense_case_of_forty_findings() -> None:
    found = _dense()
    laid = layout((1200, 600), found, fixed_size, top=40)
    check(laid, found, 600, top=40)
    assert len(laid.teeth) == 20
    assert laid.panel.y0 >= laid.image_at[1] + 600
    drawn = plan((600, 1200), found)  # the overlay's own font, larger than 12 px
    check(drawn, found, 600, top=1)


def test_markers_read_upper_arch_left_to_right_then_lower() -> None:
    found = _dense(12)
    laid = layout((1200, 600), found, fixed_size)
    ups = upper_arch(found, 600)
    numbered = sorted(laid.markers, key=lambda m: m.number)
    arches = [ups[m.finding] for m in numbered]
    assert arches == sorted(arches, reverse=True)  # all upper-arch numbers first
    for arch in (True, False):
        xs = [_bounds(laid.outlines[m.finding]).centre[0] for m in numbered if ups[m.finding] == arch]
        assert xs == sorted(xs)


def test_a_radiograph_without_free_space_puts_marks_in_bands_outside_it() -> None:
    """One outline covers the whole image: every mark goes to the band above (upper arch) or below it."""
    whole = Finding(kind="bone_loss", tooth_fdi="16", confidence=0.9, bbox=(0, 0, 400, 200), area_px=80000)
    small = [Finding(kind="caries", tooth_fdi=t, confidence=0.7, bbox=(x, 90, x + 20, 110), area_px=400)
             for t, x in (("16", 50), ("46", 100), ("36", 300))]  # fmt: skip
    found = [whole, *small]
    laid = layout((400, 200), found, fixed_size, top=30)
    check(laid, found, 200, top=30)
    image_top, image_bottom = laid.image_at[1], laid.image_at[1] + 200
    assert image_top > 30  # a top band opened under the banner
    for box in laid.label_boxes():
        assert box.y1 <= image_top or box.y0 >= image_bottom
    assert laid.panel.y0 >= image_bottom


def test_no_findings_give_an_empty_table_that_says_so() -> None:
    laid = layout((600, 300), [], fixed_size, top=20)
    assert laid.teeth == ()
    assert laid.markers == ()
    assert "No AI findings" in [t.text for t in laid.table]
    assert laid.height > 320


def test_table_has_a_row_per_marker_with_tooth_kind_measure_and_confidence() -> None:
    found = findings(1200, 600)
    laid = layout((1200, 600), found, fixed_size, numbering="fdi+universal")
    texts = [t.text for t in laid.table]
    assert "36 (U19)" in texts
    assert "3.2 mm (24%)" in texts  # bone loss: mm and % of root length
    assert "12.0 mm2" in texts
    assert "91%" in texts
    assert [name.text for _, name in laid.legend] == ["caries", "bone loss", "periapical lesion"]
    assert any("% of root length" in t for t in texts)
    numbers = [t for t in laid.table if t.kind is not None]
    assert sorted(int(t.text) for t in numbers) == [1, 2, 3]  # the number column, in its kind's colour


def test_outline_of_a_finding_without_polygon_is_its_box() -> None:
    box_only = Finding(kind="caries", tooth_fdi="11", confidence=0.5, bbox=(10, 20, 30, 50))
    assert outline_points(box_only) == ((10, 20), (29, 20), (29, 49), (10, 49))


@st.composite
def _outlines(draw: st.DrawFn) -> list[Finding]:
    columns, rows = draw(st.integers(200, 1600)), draw(st.integers(120, 800))
    out = []
    for _ in range(draw(st.integers(0, 45))):
        x0, y0 = draw(st.integers(0, columns - 2)), draw(st.integers(0, rows - 2))
        x1, y1 = draw(st.integers(x0 + 1, min(columns, x0 + 300))), draw(st.integers(y0 + 1, min(rows, y0 + 200)))
        corners = draw(st.integers(0, 7))
        polygon = tuple(
            (float(draw(st.integers(x0, x1 - 1))), float(draw(st.integers(y0, y1 - 1)))) for _ in range(corners)
        )
        out.append(
            Finding(kind=draw(st.sampled_from(KINDS)), tooth_fdi=draw(st.none() | st.sampled_from(PERMANENT_FDI)),
                    confidence=draw(st.floats(0, 1)), bbox=(x0, y0, x1, y1), polygon=polygon,
                    area_px=(x1 - x0) * (y1 - y0))
        )  # fmt: skip
    out.append(Finding(kind="caries", tooth_fdi=None, confidence=0.5, bbox=(0, 0, columns, rows)))  # size marker
    return out


@settings(max_examples=80, deadline=None)
@given(_outlines())
def test_generated_outlines_keep_every_promise(generated: list[Finding]) -> None:
    *found, frame = generated
    columns, rows = frame.bbox[2], frame.bbox[3]
    laid = layout((columns, rows), found, fixed_size, top=25, line=2)
    check(laid, found, rows, top=25)


@pytest.mark.slow
def test_demo_writes_a_small_png_of_a_generator_panoramic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m edge.results.overlay --demo OUT.png``, as the README's picture is made."""
    out = tmp_path / "overlay.png"
    assert overlay_main(["--demo", str(out), "--width", "600"]) == 0
    assert "findings of seed 3" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        assert picture.width == 600
    assert out.stat().st_size < 200_000


def test_teeth_of_a_tooth_map_are_numbered_at_their_place_with_or_without_findings() -> None:
    found = findings(1200, 600)  # on 36 and 11, and one without a tooth
    known = {"11": Box(780, 40, 830, 250), "21": Box(840, 40, 890, 250), "46": Box(300, 350, 360, 560)}
    laid = layout((1200, 600), found, fixed_size, teeth=known)
    check_boxes = {t.fdi: t.box for t in laid.teeth}
    assert sorted(check_boxes) == ["11", "21", "36", "46"]  # each once: the map's and the findings'
    for fdi in ("21", "46"):
        box, tooth = check_boxes[fdi], known[fdi].shifted(0, laid.image_at[1])  # canvas pixels
        assert tooth.x0 - 30 <= box.centre[0] <= tooth.x1 + 30
        assert box.y1 <= tooth.y0 if fdi == "21" else box.y0 >= tooth.y1
