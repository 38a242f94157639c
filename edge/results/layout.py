"""Where the overlay's marks go: tooth numbers, numbered finding markers with leader lines, a legend and a table.

A pure core (findings and text sizes in, typed boxes and lines out; no pixels, no fonts) that
:mod:`edge.results.overlay` draws from, and that a geometric test can check. The canvas, top to bottom: the
banner (``top`` px, drawn by the overlay), a top band (only when a mark found no free space in the radiograph),
the radiograph, a bottom band (likewise), the panel (legend, then the findings table).

- Each tooth that has a finding (or whose extent ``teeth`` gives) is numbered once, at the tooth: just above its
  highest outline for the upper arch, just below its lowest for the lower (FDI; the table adds Universal when
  asked). The tooth's extent comes from its findings unless ``teeth`` gives it (the analysis records no tooth map).
- Each finding gets a marker, numbered in reading order (the upper arch from the image's left to its right, then
  the lower). An upper-arch marker sits above its outline, a lower-arch one below, in free space: clear of every
  outline's bounding box, every tooth number and every other marker, and with a leader that crosses no other mark
  where such a place exists. It is the nearest free place found (a greedy search, finding by finding, over a
  bounded grid, checked against all placed boxes at once); where the radiograph has none near, it goes in the band
  outside the radiograph. The leader runs from the marker's edge to the point of its own outline nearest to it.
- The legend names the kinds present (the overlay gives each its colour); the table has a row per marker: number,
  tooth, kind, measure, AI confidence.

The cost is linear in the number of findings times the marks already placed (a few dozen), never in the pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from dental.findings import Finding

__all__ = [
    "MARKER_KEY",
    "TOOTH_KEY",
    "Box",
    "Layout",
    "Marker",
    "Numbering",
    "Text",
    "TextSize",
    "ToothMark",
    "kind_name",
    "layout",
    "measure",
    "outline_points",
    "upper_arch",
]

Point = tuple[float, float]
TextSize = Callable[[str], tuple[float, float]]
"""Width and height in pixels of a text as it will be drawn."""
Numbering = Literal["fdi", "fdi+universal"]
TOOTH_KEY = "11"
"""The sample tooth number the legend shows."""
MARKER_KEY = "1"
"""The sample marker the legend shows."""

_UPPER_QUADRANTS = frozenset("1256")
_REACH = 0.35
"""A marker is looked for in the radiograph up to this fraction of its height from its anchor, then in the band."""
_CLEAN_TRIES = 12
"""The nearest this many free places are tried for one whose leader crosses no label, then the nearest is taken."""
_SIDEWAYS = 1.5
"""Horizontal distance from the anchor costs this much more than vertical (leaders stand rather than lie)."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``(x0, y0)`` to ``(x1, y1)`` in canvas pixels."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box) -> bool:
        """The interiors intersect (boxes that only touch do not overlap)."""
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def shifted(self, dx: float, dy: float) -> Box:
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    @property
    def centre(self) -> Point:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)


@dataclass(frozen=True)
class ToothMark:
    """A tooth's number, at the tooth."""

    fdi: str
    text: str
    box: Box


@dataclass(frozen=True)
class Marker:
    """The numbered mark of finding ``finding`` (its index in the input), with its leader line."""

    number: int
    finding: int
    kind: str
    box: Box
    leader: tuple[Point, Point]
    """From the marker's edge to the nearest point of the finding's outline."""


@dataclass(frozen=True)
class Text:
    """A text to draw in ``box``; ``kind`` names its colour (``None``: plain)."""

    text: str
    box: Box
    kind: str | None = None


@dataclass(frozen=True)
class Layout:
    """Everything the overlay draws, in canvas pixels."""

    width: int
    height: int
    image_at: tuple[int, int]
    """Where the radiograph's top-left pixel goes."""
    outlines: tuple[tuple[Point, ...], ...]
    """Per finding (input order), its closed outline."""
    teeth: tuple[ToothMark, ...]
    markers: tuple[Marker, ...]
    """In number order, one per finding."""
    panel: Box
    keys: tuple[Box, Box]
    """Where the legend shows a sample tooth number (:data:`TOOTH_KEY`) and a sample marker (:data:`MARKER_KEY`),
    each followed by what it means (a text of ``table``)."""
    legend: tuple[tuple[Box, Text], ...]
    """Per kind present: its colour swatch and its name (the swatch's ``kind`` is the text's)."""
    table: tuple[Text, ...]

    def label_boxes(self) -> list[Box]:
        """The boxes of every tooth number and marker."""
        return [t.box for t in self.teeth] + [m.box for m in self.markers]


def kind_name(kind: str) -> str:
    return kind.replace("_", " ")


def measure(finding: Finding) -> str:
    """What the table says a finding measures: bone loss in mm (and in % of the root's length), else its area."""
    if finding.bone_loss_mm is not None:
        text = f"{finding.bone_loss_mm:.1f} mm"
        return text if finding.bone_loss_pct is None else f"{text} ({finding.bone_loss_pct:.0f}%)"
    if finding.area_mm2 is not None:
        return f"{finding.area_mm2:.1f} mm2"  # the built-in font has no superscript two
    return f"{finding.area_px} px" if finding.area_px else ""


def outline_points(finding: Finding) -> tuple[Point, ...]:
    """The finding's outline: its polygon, or its box (end-exclusive, so the last pixel is ``x1 - 1``)."""
    if len(finding.polygon) >= 3:
        return tuple((float(x), float(y)) for x, y in finding.polygon)
    x0, y0, x1, y1 = (float(v) for v in finding.bbox)
    x1, y1 = max(x0, x1 - 1), max(y0, y1 - 1)
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def upper_arch(findings: Sequence[Finding], rows: int) -> list[bool]:
    """Per finding: in the upper arch (by its tooth; without one, by which side of the arches' middle it lies)."""
    centres = [(f.bbox[1] + f.bbox[3]) / 2 for f in findings]
    ups = [c for f, c in zip(findings, centres, strict=True) if f.tooth_fdi and f.tooth_fdi[0] in _UPPER_QUADRANTS]
    downs = [
        c for f, c in zip(findings, centres, strict=True) if f.tooth_fdi and f.tooth_fdi[0] not in _UPPER_QUADRANTS
    ]
    split = (sum(ups) / len(ups) + sum(downs) / len(downs)) / 2 if ups and downs else rows / 2
    return [
        f.tooth_fdi[0] in _UPPER_QUADRANTS if f.tooth_fdi else c < split for f, c in zip(findings, centres, strict=True)
    ]


class _Outline:
    """A closed polygon as its segments, for the nearest point on it."""

    def __init__(self, points: npt.NDArray[np.float64]) -> None:
        self.start = points
        self.step = np.roll(points, -1, axis=0) - points
        length2 = (self.step * self.step).sum(axis=1)
        self.inverse = np.divide(1.0, length2, out=np.zeros_like(length2), where=length2 > 0)

    def nearest(self, to: Point) -> Point:
        """The point of the outline nearest to ``to``."""
        offset = np.asarray(to, dtype=np.float64) - self.start
        t = np.clip((offset * self.step).sum(axis=1) * self.inverse, 0.0, 1.0)
        apart = offset - self.step * t[:, None]
        i = int(np.argmin((apart * apart).sum(axis=1)))
        return (float(self.start[i, 0] + self.step[i, 0] * t[i]), float(self.start[i, 1] + self.step[i, 1] * t[i]))


def _edge_towards(box: Box, target: Point) -> Point:
    """Where the segment from the box's centre to ``target`` leaves the box."""
    (cx, cy), (tx, ty) = box.centre, target
    dx, dy = tx - cx, ty - cy
    half_w, half_h = (box.x1 - box.x0) / 2, (box.y1 - box.y0) / 2
    t = min(half_w / abs(dx) if dx else math.inf, half_h / abs(dy) if dy else math.inf, 1.0)
    return (cx + t * dx, cy + t * dy)


class _Placer:
    """Boxes placed so far, and the search for the nearest free box above or below an anchor."""

    def __init__(self, columns: int, rows: int, obstacles: Sequence[Box], gap: float) -> None:
        self.columns, self.rows, self.gap = columns, rows, gap
        self._obstacles = np.array([(b.x0, b.y0, b.x1, b.y1) for b in obstacles], dtype=np.float64).reshape(-1, 4)
        self.labels: list[Box] = []
        self._labels = np.empty((0, 4), dtype=np.float64)
        self._bands: dict[tuple[bool, int], list[Box]] = {}

    def _blocked(self, cand: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Per candidate box ``[x0, y0, x1, y1]``: it comes within ``gap`` of an outline's box or a placed label."""
        g = self.gap
        x0, y0 = cand[:, 0].min() - g, cand[:, 1].min() - g
        x1, y1 = cand[:, 2].max() + g, cand[:, 3].max() + g
        others = np.concatenate([self._obstacles, self._labels])
        others = others[(others[:, 0] < x1) & (x0 < others[:, 2]) & (others[:, 1] < y1) & (y0 < others[:, 3])]
        if not len(others):
            return np.zeros(len(cand), dtype=bool)
        hit = (
            (cand[:, None, 0] < others[None, :, 2] + g)
            & (others[None, :, 0] - g < cand[:, None, 2])
            & (cand[:, None, 1] < others[None, :, 3] + g)
            & (others[None, :, 1] - g < cand[:, None, 3])
        )
        blocked: npt.NDArray[np.bool_] = hit.any(axis=1)
        return blocked

    def _crosses(self, start: Point, end: Point) -> bool:
        """The segment passes through a placed label."""
        if not self.labels:
            return False
        steps = max(2, int(math.dist(start, end) / 3))
        t = np.linspace(0.0, 1.0, steps)[:, None]
        pts = np.asarray(start) + t * (np.asarray(end) - np.asarray(start))
        boxes = self._labels
        inside = (
            (pts[:, None, 0] > boxes[None, :, 0])
            & (pts[:, None, 0] < boxes[None, :, 2])
            & (pts[:, None, 1] > boxes[None, :, 1])
            & (pts[:, None, 1] < boxes[None, :, 3])
        )
        return bool(inside.any())

    def in_image(
        self,
        size: tuple[float, float],
        anchor: Point,
        upper: bool,
        target: Callable[[Box], Point] | None = None,
    ) -> Box | None:
        """The nearest free box of ``size`` above (``upper``) or below ``anchor`` in the radiograph; with
        ``target`` (the leader's end for a box), one whose leader crosses no label if there is one."""
        w, h = size
        ax, ay = anchor
        if w > self.columns or h > self.rows:
            return None
        step_x, step_y = w / 2 + self.gap, h / 2
        xs = np.unique(np.clip(ax - w / 2 + step_x * np.arange(-8, 9), 0, self.columns - w))
        reach = int(_REACH * self.rows / step_y) + 1
        if upper:
            y0s = ay - self.gap - h - step_y * np.arange(reach)
            y0s = y0s[y0s >= 0]
        else:
            y0s = ay + self.gap + step_y * np.arange(reach)
            y0s = y0s[y0s + h <= self.rows]
        if not len(xs) or not len(y0s):
            return None
        gx, gy = np.meshgrid(xs, y0s)
        cand = np.stack([gx.ravel(), gy.ravel(), gx.ravel() + w, gy.ravel() + h], axis=1)
        cost = np.abs(np.where(upper, cand[:, 3], cand[:, 1]) - ay) + _SIDEWAYS * np.abs(gx.ravel() + w / 2 - ax)
        free = np.flatnonzero(~self._blocked(cand))
        if not len(free):
            return None
        order = free[np.argsort(cost[free], kind="stable")]
        first = Box(*(float(v) for v in cand[order[0]]))
        if target is not None:
            for i in order[:_CLEAN_TRIES]:
                box = Box(*(float(v) for v in cand[i]))
                end = target(box)
                if not self._crosses(_edge_towards(box, end), end):
                    return box
        return first

    def in_band(self, size: tuple[float, float], x: float, upper: bool) -> Box:
        """The free box of ``size`` nearest to ``x`` in the band above (``upper``) or below the radiograph, in the
        row nearest to it that has room."""
        w, h = size
        w = min(w, float(self.columns))
        row = 0
        while True:
            y0 = -(row + 1) * (h + self.gap) if upper else self.rows + self.gap + row * (h + self.gap)
            placed = self._bands.setdefault((upper, row), [])
            spots = [x - w / 2] + [b.x1 + self.gap for b in placed] + [b.x0 - self.gap - w for b in placed]
            fits = [
                Box(s, y0, s + w, y0 + h)
                for s in (min(max(0.0, s), self.columns - w) for s in spots)
                if not any(s < b.x1 + self.gap and b.x0 - self.gap < s + w for b in placed)
            ]
            if fits:
                box = min(fits, key=lambda b: abs(b.centre[0] - x))
                placed.append(box)
                return box
            row += 1

    def place(self, box: Box) -> Box:
        self.labels.append(box)
        self._labels = np.vstack([self._labels, [(box.x0, box.y0, box.x1, box.y1)]])
        return box


def _tooth_extents(findings: Sequence[Finding]) -> dict[str, Box]:
    """Each tooth's extent as its findings show it: the median of their centres across, their union down."""
    by_tooth: dict[str, list[Finding]] = {}
    for f in findings:
        if f.tooth_fdi:
            by_tooth.setdefault(f.tooth_fdi, []).append(f)
    extents = {}
    for fdi, group in by_tooth.items():
        cx = float(np.median([(f.bbox[0] + f.bbox[2]) / 2 for f in group]))
        extents[fdi] = Box(cx, min(f.bbox[1] for f in group), cx, max(f.bbox[3] for f in group))
    return extents


def _padded(size: tuple[float, float], pad: float) -> tuple[float, float]:
    return (size[0] + 2 * pad, size[1] + 2 * pad)


def layout(
    image_size: tuple[int, int],
    findings: Sequence[Finding],
    text_size: TextSize,
    *,
    top: int = 0,
    line: int = 2,
    numbering: Numbering = "fdi",
    teeth: Mapping[str, Box] | None = None,
) -> Layout:
    """The layout of ``findings`` on a radiograph of ``image_size`` (columns, rows) under a ``top`` px banner.

    ``line`` is the outline width (marks keep clear of outlines by a little more). ``teeth`` maps FDI numbers to
    the tooth's extent in image pixels where the caller knows it (a tooth map): those teeth are numbered too, with
    or without findings; any other tooth with a finding takes its extent from its findings.
    """
    columns, rows = image_size
    pad = max(2.0, line * 1.5)
    gap = float(max(3, line * 2))
    outlines = [outline_points(f) for f in findings]
    arrays = [np.asarray(o, dtype=np.float64) for o in outlines]
    bounds = [Box(a[:, 0].min(), a[:, 1].min(), a[:, 0].max(), a[:, 1].max()) for a in arrays]
    upper = upper_arch(findings, rows)
    placer = _Placer(columns, rows, bounds, gap)

    tooth_marks: list[ToothMark] = []
    extents = dict(_tooth_extents(findings))
    extents.update(teeth or {})
    numbered = sorted(extents, key=lambda t: extents[t].centre[0])
    for fdi in numbered:
        ext, up = extents[fdi], fdi[0] in _UPPER_QUADRANTS
        size = _padded(text_size(fdi), pad)
        anchor = (ext.centre[0], ext.y0 if up else ext.y1)
        box = placer.in_image(size, anchor, up) or placer.in_band(size, anchor[0], up)
        tooth_marks.append(ToothMark(fdi, fdi, placer.place(box)))

    order = sorted(range(len(findings)), key=lambda i: (not upper[i], bounds[i].centre[0], bounds[i].y0))
    digits = max([text_size(str(n))[0] for n in range(1, len(findings) + 1)] or [0.0])
    marker_size = _padded((max(digits, text_size("8")[1]), text_size("8")[1]), pad)
    markers: list[Marker] = []
    shapes = [_Outline(a) for a in arrays]
    for number, i in enumerate(order, start=1):
        b = bounds[i]
        anchor = (b.centre[0], b.y0 if upper[i] else b.y1)

        def end_of(box: Box, outline: _Outline = shapes[i]) -> Point:
            return outline.nearest(box.centre)

        box = placer.in_image(marker_size, anchor, upper[i], end_of) or placer.in_band(marker_size, anchor[0], upper[i])
        end = end_of(placer.place(box))
        markers.append(Marker(number, i, findings[i].kind, box, (_edge_towards(box, end), end)))

    # the bands: shift everything so the top band starts under the banner and the radiograph under the top band
    placed = placer.labels
    top_band = max([0.0] + [-b.y0 + gap for b in placed if b.y0 < 0])
    bottom_band = max([0.0] + [b.y1 - rows + gap for b in placed if b.y1 > rows])
    dy = math.ceil(top + top_band)
    tooth_marks = [ToothMark(t.fdi, t.text, t.box.shifted(0, dy)) for t in tooth_marks]
    markers = [
        Marker(m.number, m.finding, m.kind, m.box.shifted(0, dy), ((m.leader[0][0], m.leader[0][1] + dy),
               (m.leader[1][0], m.leader[1][1] + dy)))
        for m in markers
    ]  # fmt: skip
    panel_y = dy + rows + math.ceil(bottom_band)
    keys, legend, table, panel_h = _panel(
        columns, panel_y, findings, markers, text_size=text_size, pad=pad, gap=gap, numbering=numbering
    )
    return Layout(
        width=columns,
        height=math.ceil(panel_y + panel_h),
        image_at=(0, dy),
        outlines=tuple(tuple((x, y + dy) for x, y in o) for o in outlines),
        teeth=tuple(tooth_marks),
        markers=tuple(markers),
        panel=Box(0, panel_y, columns, panel_y + panel_h),
        keys=keys,
        legend=legend,
        table=table,
    )


def _tooth_cell(finding: Finding, numbering: Numbering) -> str:
    if not finding.tooth_fdi:
        return "-"
    if numbering == "fdi+universal":
        return f"{finding.tooth_fdi} (U{finding.tooth_universal})"
    return finding.tooth_fdi


def _panel(
    columns: int,
    y: float,
    findings: Sequence[Finding],
    markers: Sequence[Marker],
    *,
    text_size: TextSize,
    pad: float,
    gap: float,
    numbering: Numbering,
) -> tuple[tuple[Box, Box], tuple[tuple[Box, Text], ...], tuple[Text, ...], float]:
    """The legend (the keys to tooth numbers and markers, then a swatch per kind; wrapped) and the table (in as
    many columns as fit) from ``y`` down; and the panel's height."""
    line_h = text_size("Hg")[1] + 2 * pad
    at = [gap, y + gap]

    def put(width: float) -> tuple[float, float]:
        """Where the next legend item of ``width`` goes (on the line, or the next one if it does not fit)."""
        if at[0] + width > columns - gap and at[0] > gap:
            at[0], at[1] = gap, at[1] + line_h + gap
        x, top = at
        at[0] += width + 3 * gap
        return x, top

    legend: list[tuple[Box, Text]] = []
    texts: list[Text] = []
    keys = []
    for sample, meaning in (
        (TOOTH_KEY, "tooth (FDI)" if numbering == "fdi" else "tooth (FDI; table: FDI and Universal)"),
        (MARKER_KEY, "AI finding, listed below"),
    ):
        sample_w = text_size(sample)[0] + 2 * pad
        x, top = put(sample_w + gap + text_size(meaning)[0])
        keys.append(Box(x, top, x + sample_w, top + line_h))
        texts.append(
            Text(meaning, Box(x + sample_w + gap, top, x + sample_w + gap + text_size(meaning)[0], top + line_h))
        )
    for kind in dict.fromkeys(f.kind for f in findings):
        name = kind_name(kind)
        x, top = put(line_h + gap + text_size(name)[0])
        swatch = Box(x, top + pad, x + line_h - 2 * pad, top + line_h - pad)
        legend.append(
            (swatch, Text(name, Box(swatch.x1 + gap, top, swatch.x1 + gap + text_size(name)[0], top + line_h), kind))
        )
    if any(f.bone_loss_pct is not None for f in findings):
        note = "bone loss: mm (% of root length)"
        x, top = put(text_size(note)[0])
        texts.append(Text(note, Box(x, top, x + text_size(note)[0], top + line_h)))
    cy = at[1] + line_h + gap

    header = ("#", "Tooth", "AI finding", "Measure", "AI conf.")
    rows = [
        (str(m.number), _tooth_cell(findings[m.finding], numbering), kind_name(m.kind),
         measure(findings[m.finding]), f"{findings[m.finding].confidence:.0%}")
        for m in markers
    ]  # fmt: skip
    if not rows:
        none = "No AI findings"
        texts.append(Text(none, Box(gap, cy, gap + text_size(none)[0], cy + line_h)))
        return (keys[0], keys[1]), tuple(legend), tuple(texts), cy + line_h + gap - y
    widths = [max(text_size(r[c])[0] for r in [header, *rows]) + 2 * gap for c in range(len(header))]
    column_w = sum(widths) + 3 * gap
    blocks = max(1, min(len(rows), int((columns - gap) // column_w)))
    height = math.ceil(len(rows) / blocks)
    for block in range(blocks):
        chunk = [header, *rows[block * height : (block + 1) * height]]
        for r, cells in enumerate(chunk):
            cx, ry = gap + block * column_w, cy + r * line_h
            for c, cell in enumerate(cells):
                tint = markers[block * height + r - 1].kind if r and c == 0 else None
                texts.append(Text(cell, Box(cx, ry, cx + text_size(cell)[0], ry + line_h), tint))
                cx += widths[c]
    cy += (height + 1) * line_h + gap
    return (keys[0], keys[1]), tuple(legend), tuple(texts), cy - y
