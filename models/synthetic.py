"""Synthetic panoramic radiographs with exact ground truth, for the reference model (not clinical data).

A scene is drawn in millimetres: an upper and a lower row of up to 32 teeth along a smile-curved occlusal plane
(patient's right on the image's left, as a panoramic is read), each tooth a crown with an enamel cap over dentine,
a pulp chamber and canal, and one or two tapering roots set in maxillary or mandibular bone with a trabecular
texture, sinuses and a cortical lower border. Findings are planted with their exact regions: ``caries`` (a
radiolucency in the crown), ``periapical_lesion`` (a radiolucency in the bone round an apex), ``restoration`` (a
radiopaque filling), ``crown`` (a radiopaque cap, also on implants), ``root_canal_filling`` (radiopaque canals),
``implant`` (a threaded fixture with abutment replacing a tooth) and ``bone_loss`` (the alveolar crest lowered by
a known number of millimetres over a tooth's zone). The healthy crest sits at the cemento-enamel junction (a
simplification), so a bone-loss region runs from the junction to the lowered crest and its height is the loss.

The image is attenuation summed along the beam, blurred anisotropically like a panoramic's focal trough, with
signal-dependent noise, scaled to unsigned 16-bit pixels (higher = denser, MONOCHROME2). :func:`render_labels`
draws the tooth labels and finding masks of the same scene on any axis-aligned grid (e.g. the model's grid through
the letterbox transform), so training targets are exact at the model's resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from dental.findings import Finding
from dental.outline import region_outline
from dental.teeth import PERMANENT_FDI, fdi_to_universal

__all__ = ["KINDS", "Scene", "SyntheticImage", "generate", "render_labels"]

KINDS: tuple[str, ...] = (
    "caries",
    "periapical_lesion",
    "restoration",
    "crown",
    "root_canal_filling",
    "implant",
    "bone_loss",
)
"""Finding kinds in the reference model's channel order."""

Bool = npt.NDArray[np.bool_]
Float = npt.NDArray[np.floating[Any]]
_MaskFn = Callable[[Float, Float], Bool]

# (crown width, crown height, root length, roots) in mm, by position 1-8 from the midline.
_UPPER = ((8.6, 10.5, 13.0, 1), (6.6, 9.0, 13.0, 1), (7.6, 10.0, 17.0, 1), (7.0, 8.5, 14.0, 1),
          (6.6, 8.0, 14.0, 1), (10.2, 7.5, 13.0, 2), (9.2, 7.0, 13.0, 2), (8.6, 6.5, 11.0, 2))  # fmt: skip
_LOWER = ((5.4, 9.0, 12.5, 1), (5.9, 9.5, 14.0, 1), (6.9, 11.0, 16.0, 1), (7.0, 8.5, 14.0, 1),
          (7.1, 8.0, 14.5, 1), (11.2, 7.5, 14.0, 2), (10.5, 7.0, 13.0, 2), (10.0, 7.0, 11.0, 2))  # fmt: skip

_DENTINE, _ENAMEL, _PULP, _BONE, _SOFT = 0.55, 0.85, 0.18, 0.36, 0.12
_AMALGAM, _COMPOSITE, _CROWN, _GUTTA, _TITANIUM = 1.6, 1.05, 1.5, 1.3, 1.55


@dataclass(frozen=True)
class _Tooth:
    fdi: str
    cx: float
    y0: float
    """Occlusal tip (mm)."""
    theta: float
    """Tilt of the long axis (radians)."""
    upper: bool
    wc: float
    hc: float
    root: float
    roots: int
    implant: bool

    def local(self, x: Float, y: Float) -> tuple[Float, Float]:
        """``(u, v)``: across the tooth, and along its axis from the occlusal tip towards the apex."""
        dx, dy = x - self.cx, y - self.y0
        s, c = math.sin(self.theta), math.cos(self.theta)
        if self.upper:
            return dx * c - dy * s, dx * s - dy * c
        return dx * c + dy * s, -dx * s + dy * c

    def at(self, u: float, v: float) -> tuple[float, float]:
        """The global ``(x, y)`` of local ``(u, v)``."""
        s, c = math.sin(self.theta), math.cos(self.theta)
        if self.upper:
            return self.cx + u * c + v * s, self.y0 + u * s - v * c
        return self.cx + u * c - v * s, self.y0 + u * s + v * c

    @property
    def neck(self) -> float:
        return 0.36 * self.wc

    def bbox(self, margin: float = 1.0) -> tuple[float, float, float, float]:
        corners = [self.at(u, v) for u in (-self.wc, self.wc) for v in (0.0, self.hc + self.root + 4.0)]
        xs, ys = [p[0] for p in corners], [p[1] for p in corners]
        return min(xs) - margin, min(ys) - margin, max(xs) + margin, max(ys) + margin

    def crown_hw(self, v: Float) -> Float:
        r = 0.3 * self.hc
        cusp = np.sqrt(np.clip(1.0 - ((r - v) / r) ** 2, 0.0, 1.0))
        neck = self.wc / 2 - (self.wc / 2 - self.neck) * np.clip((v - 0.65 * self.hc) / (0.35 * self.hc), 0.0, 1.0)
        return np.asarray(np.where(v < r, self.wc / 2 * cusp, neck), dtype=np.float64)

    def crown(self, u: Float, v: Float) -> Bool:
        return (v >= 0) & (v <= self.hc) & (np.abs(u) <= self.crown_hw(v))

    def _root_centres(self, t: Float) -> list[tuple[Float, Float]]:
        """``(centre u, half-width)`` of each root at fraction ``t`` of the root length."""
        taper = np.sqrt(np.clip((1.0 - t) / 0.18, 0.0, 1.0))
        if self.roots == 1:
            return [(np.zeros_like(t), self.neck * (1.0 - 0.72 * t) * taper)]
        spread = self.neck * 0.5 * (0.55 + 0.5 * t)
        half = self.neck * 0.52 * (1.0 - 0.55 * t) * taper
        return [(-spread, half), (spread, half)]

    def root_mask(self, u: Float, v: Float) -> Bool:
        t = (v - self.hc) / self.root
        inside = (t > 0) & (t <= 1.0)
        mask = (
            inside & (t < 0.25) & (np.abs(u) <= self.neck * (1.0 - 0.3 * t))
            if self.roots == 2
            else np.zeros_like(t, bool)
        )
        for centre, half in self._root_centres(t):
            mask |= inside & (np.abs(u - centre) <= half)
        return mask

    def canal(self, u: Float, v: Float, widen: float = 1.0) -> Bool:
        """The pulp canal(s) from the chamber to 0.6 mm short of the apex; ``widen`` scales the width."""
        t = (v - self.hc) / self.root
        inside = (v >= self.hc - 1.0) & (t <= 1.0 - 0.6 / self.root)
        mask = np.zeros_like(t, bool)
        for centre, _half in self._root_centres(np.clip(t, 0.0, 1.0)):
            width = widen * (0.45 - 0.25 * np.clip(t, 0.0, 1.0))
            mask |= inside & (np.abs(u - centre) <= width)
        return mask

    def pulp(self, u: Float, v: Float) -> Bool:
        chamber = (v >= 0.45 * self.hc) & (v <= self.hc + 1.0) & (np.abs(u) <= 0.42 * self.neck)
        return chamber | self.canal(u, v)

    def natural(self, u: Float, v: Float) -> Bool:
        return self.crown(u, v) | self.root_mask(u, v)

    def fixture(self, u: Float, v: Float) -> Bool:
        """An implant: abutment under the crown and a threaded fixture in the bone."""
        depth = v - self.hc
        length = 0.85 * self.root
        half = 2.0 - 0.4 * np.clip(depth / length, 0.0, 1.0) + 0.25 * np.abs(((depth / 0.8) % 1.0) - 0.5)
        body = (depth >= 0) & (depth <= length) & (np.abs(u) <= half)
        abutment = (v >= self.hc - 2.0) & (depth < 0) & (np.abs(u) <= 1.5)
        return np.asarray(body | abutment, dtype=bool)

    def apex(self) -> tuple[float, float]:
        return self.at(0.0, self.hc + self.root)

    def cej_y(self) -> float:
        return self.at(0.0, self.hc)[1]


@dataclass(frozen=True)
class _Planted:
    kind: str
    tooth: _Tooth
    region: _MaskFn
    """Exact region in global mm coordinates."""
    bone_loss_mm: float | None = None
    bone_loss_pct: float | None = None


@dataclass(frozen=True)
class Scene:
    """Geometry of one synthetic radiograph, in millimetres."""

    seed: int
    spacing_mm: float
    rows: int
    cols: int
    cx: float
    cy: float
    teeth: tuple[_Tooth, ...]
    planted: tuple[_Planted, ...]
    crest_upper: tuple[tuple[float, ...], tuple[float, ...]]
    crest_lower: tuple[tuple[float, ...], tuple[float, ...]]
    arch_half: float


@dataclass(frozen=True)
class SyntheticImage:
    """One synthetic panoramic: pixels (uint16, MONOCHROME2), spacing, ground-truth findings, scene."""

    pixels: npt.NDArray[np.uint16]
    spacing_mm: float
    """Square imager pixel spacing (mm per pixel at the detector)."""
    findings: tuple[Finding, ...]
    teeth_fdi: tuple[str, ...]
    """Teeth present (natural or implant), in Universal order."""
    scene: Scene


def _layout(rng: np.random.Generator, cx: float, cy: float) -> list[_Tooth]:
    mag = rng.uniform(1.12, 1.24)
    teeth: list[_Tooth] = []
    for upper, table, quads in ((True, _UPPER, ("1", "2")), (False, _LOWER, ("4", "3"))):
        for side, quad in ((-1, quads[0]), (1, quads[1])):
            edge = rng.uniform(0.1, 0.4)
            for pos, (wc, hc, root, roots) in enumerate(table, start=1):
                k = mag * rng.uniform(0.95, 1.05)
                width = wc * k
                centre = cx + side * (edge + width / 2)
                edge += width + rng.uniform(0.15, 0.5)
                occl = cy + 0.0009 * (centre - cx) ** 2
                y0 = occl - 0.9 if upper else occl + 0.9
                theta = math.radians(rng.uniform(-5, 5) + side * (2.0 if pos >= 6 else 0.0))
                teeth.append(
                    _Tooth(
                        fdi=f"{quad}{pos}",
                        cx=centre,
                        y0=y0 + rng.uniform(-0.4, 0.4),
                        theta=theta,
                        upper=upper,
                        wc=width,
                        hc=hc * k,
                        root=root * k,
                        roots=roots,
                        implant=False,
                    )
                )
    return teeth


def _ellipse(
    tooth: _Tooth, centre: tuple[float, float], radii: tuple[float, float], within: _MaskFn | None = None
) -> _MaskFn:
    (uc, vc), (ru, rv) = centre, radii

    def region(x: Float, y: Float) -> Bool:
        u, v = tooth.local(x, y)
        inside: Bool = ((u - uc) / ru) ** 2 + ((v - vc) / rv) ** 2 <= 1.0
        return inside & within(x, y) if within is not None else inside

    return region


def _crown_of(tooth: _Tooth) -> _MaskFn:
    def region(x: Float, y: Float) -> Bool:
        u, v = tooth.local(x, y)
        return tooth.crown(u, v)

    return region


def _cap(tooth: _Tooth) -> _MaskFn:
    """A prosthetic crown: the natural crown's outline grown by 0.35 mm."""

    def region(x: Float, y: Float) -> Bool:
        u, v = tooth.local(x, y)
        return (v >= -0.35) & (v <= tooth.hc) & (np.abs(u) <= tooth.crown_hw(np.clip(v, 0.0, None)) + 0.35)

    return region


def _filling(tooth: _Tooth, lo: float, hi: float, depth: float) -> _MaskFn:
    def region(x: Float, y: Float) -> Bool:
        u, v = tooth.local(x, y)
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        floor = depth * (1.0 - 0.35 * ((u - mid) / half) ** 2)
        return (u >= lo) & (u <= hi) & (v <= floor) & tooth.crown(u, v)

    return region


def _canals(tooth: _Tooth) -> _MaskFn:
    def region(x: Float, y: Float) -> Bool:
        u, v = tooth.local(x, y)
        return tooth.canal(u, v, widen=1.25) & tooth.natural(u, v)

    return region


def _fixture(tooth: _Tooth) -> _MaskFn:
    def region(x: Float, y: Float) -> Bool:
        u, v = tooth.local(x, y)
        return tooth.fixture(u, v)

    return region


def _crest_fn(points: tuple[tuple[float, ...], tuple[float, ...]]) -> Callable[[Float], Float]:
    xs, ys = np.asarray(points[0]), np.asarray(points[1])

    def crest(x: Float) -> Float:
        return np.asarray(np.interp(x, xs, ys), dtype=np.float64)

    return crest


def _band(crest: Callable[[Float], Float], upper: bool, x0: float, x1: float, depth: float) -> _MaskFn:
    def region(x: Float, y: Float) -> Bool:
        level = crest(x)
        vertical = (y <= level) & (y >= level - depth) if upper else (y >= level) & (y <= level + depth)
        return vertical & (x >= x0) & (x < x1)

    return region


def _plant(
    rng: np.random.Generator, teeth: list[_Tooth], scene_crest: dict[bool, Callable[[Float], Float]]
) -> list[_Planted]:
    planted: list[_Planted] = []
    for tooth in teeth:
        m = tooth.wc / 8.0
        if tooth.implant:
            planted.append(_Planted("implant", tooth, _fixture(tooth)))
            planted.append(_Planted("crown", tooth, _cap(tooth)))
            continue
        state = rng.choice(3, p=[0.78, 0.15, 0.07])
        sides = [-1.0, 1.0]
        rng.shuffle(sides)
        if state == 2:
            planted.append(_Planted("crown", tooth, _cap(tooth)))
        elif state == 1:
            hw = tooth.wc / 2
            kind = rng.choice(3)
            if kind == 0:
                lo, hi = -hw * rng.uniform(0.25, 0.4), hw * rng.uniform(0.25, 0.4)
            else:
                lo, hi = sorted((sides[0] * hw * 1.1, sides[0] * hw * rng.uniform(-0.2, 0.25)))
            depth = tooth.hc * rng.uniform(0.3, 0.55)
            planted.append(_Planted("restoration", tooth, _filling(tooth, lo, hi, depth)))
        if (state == 0 and rng.random() < 0.1) or (state == 1 and rng.random() < 0.08):
            side = sides[1]
            ru, rv = rng.uniform(1.0, 1.8) * m, rng.uniform(1.0, 1.7) * m
            uc = side * (tooth.wc / 2 - 0.4 * ru)
            vc = tooth.hc * rng.uniform(0.25, 0.6)
            planted.append(_Planted("caries", tooth, _ellipse(tooth, (uc, vc), (ru, rv), _crown_of(tooth))))
        rct = state > 0 and rng.random() < 0.35
        if rct:
            planted.append(_Planted("root_canal_filling", tooth, _canals(tooth)))
        if rng.random() < (0.15 if rct else 0.025):
            r = rng.uniform(1.6, 3.4) * max(m, 0.9)
            planted.append(
                _Planted("periapical_lesion", tooth, _ellipse(tooth, (0.0, tooth.hc + tooth.root + 0.3 * r), (r, r)))
            )
    for upper in (True, False):
        row = sorted((t for t in teeth if t.upper == upper), key=lambda t: t.cx)
        if not row or rng.random() > 0.55:
            continue
        count = int(rng.integers(2, 7))
        start = int(rng.integers(0, max(1, len(row) - count + 1)))
        base = rng.uniform(2.0, 5.5)
        for i in range(start, min(len(row), start + count)):
            tooth = row[i]
            if tooth.implant:
                continue
            x0 = (row[i - 1].cx + tooth.cx) / 2 if i > 0 else tooth.cx - tooth.wc / 2 - 1.0
            x1 = (row[i + 1].cx + tooth.cx) / 2 if i + 1 < len(row) else tooth.cx + tooth.wc / 2 + 1.0
            depth = float(np.clip(base + rng.uniform(-1.0, 1.0), 1.5, 0.6 * tooth.root))
            crest = scene_crest[upper]
            apex_y = tooth.apex()[1]
            root_len = abs(apex_y - float(crest(np.asarray([tooth.cx]))[0]))
            planted.append(
                _Planted(
                    "bone_loss",
                    tooth,
                    _band(crest, upper, x0, x1, depth),
                    bone_loss_mm=depth,
                    bone_loss_pct=100.0 * depth / root_len,
                )
            )
    return planted


def _scene(seed: int) -> Scene:
    rng = np.random.default_rng(seed)
    spacing = float(rng.uniform(0.13, 0.15))
    width_mm, height_mm = rng.uniform(270, 290), rng.uniform(135, 148)
    rows, cols = round(height_mm / spacing), round(width_mm / spacing)
    cx, cy = width_mm / 2 + rng.uniform(-6, 6), height_mm / 2 + rng.uniform(-5, 5)
    teeth = _layout(rng, cx, cy)
    kept: list[_Tooth] = []
    for tooth in teeth:
        pos = int(tooth.fdi[1])
        missing = rng.random() < (0.3 if pos == 8 else 0.04)
        if missing and 3 <= pos <= 7 and rng.random() < 0.5:
            kept.append(_Tooth(**{**tooth.__dict__, "implant": True, "theta": 0.0}))
        elif not missing:
            kept.append(tooth)
    arch_half = max(abs(t.cx - cx) + t.wc / 2 for t in teeth)
    crests: dict[bool, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    present = {t.fdi for t in kept}
    for upper in (True, False):
        pts = []
        for tooth in sorted((t for t in teeth if t.upper == upper), key=lambda t: t.cx):
            level = tooth.cej_y() if tooth.fdi in present else tooth.cej_y() + (-2.0 if upper else 2.0)
            pts.append((tooth.cx, level))
        crests[upper] = (tuple(p[0] for p in pts), tuple(p[1] for p in pts))
    planted = _plant(rng, kept, {u: _crest_fn(c) for u, c in crests.items()})
    return Scene(
        seed=seed,
        spacing_mm=spacing,
        rows=rows,
        cols=cols,
        cx=cx,
        cy=cy,
        teeth=tuple(kept),
        planted=tuple(planted),
        crest_upper=crests[True],
        crest_lower=crests[False],
        arch_half=arch_half,
    )


def _window(xs: Float, ys: Float, box: tuple[float, float, float, float]) -> tuple[slice, slice]:
    """Row and column slices of the grid ``(ys, xs)`` (ascending) that cover ``box``."""
    x0, y0, x1, y1 = box
    cols = slice(int(np.searchsorted(xs, x0)), int(np.searchsorted(xs, x1, side="right")))
    rows = slice(int(np.searchsorted(ys, y0)), int(np.searchsorted(ys, y1, side="right")))
    return rows, cols


def _planted_box(p: _Planted, scene: Scene) -> tuple[float, float, float, float]:
    if p.kind == "bone_loss":
        return p.tooth.cx - 12.0, 0.0, p.tooth.cx + 12.0, scene.rows * scene.spacing_mm
    if p.kind == "periapical_lesion":
        ax, ay = p.tooth.apex()
        return ax - 8.0, ay - 8.0, ax + 8.0, ay + 8.0
    return p.tooth.bbox()


def render_labels(scene: Scene, xs: Float, ys: Float) -> tuple[npt.NDArray[np.uint8], Bool]:
    """Tooth labels (Universal number, 0 = none) and finding masks ``[len(KINDS), rows, cols]`` on a grid.

    ``xs`` and ``ys`` are the ascending mm coordinates of the grid's pixel centres; points outside the image
    (e.g. letterbox padding) are labelled nothing.
    """
    labels = np.zeros((ys.size, xs.size), np.uint8)
    masks = np.zeros((len(KINDS), ys.size, xs.size), bool)
    for tooth in scene.teeth:
        rows, cols = _window(xs, ys, tooth.bbox())
        gx, gy = np.meshgrid(xs[cols], ys[rows])
        u, v = tooth.local(gx, gy)
        body = (tooth.fixture(u, v) | _cap(tooth)(gx, gy)) if tooth.implant else tooth.natural(u, v)
        labels[rows, cols][body] = int(fdi_to_universal(tooth.fdi))
    for p in scene.planted:
        rows, cols = _window(xs, ys, _planted_box(p, scene))
        gx, gy = np.meshgrid(xs[cols], ys[rows])
        masks[KINDS.index(p.kind), rows, cols] |= p.region(gx, gy)
    outside = (xs < 0) | (xs > scene.cols * scene.spacing_mm)
    outside_rows = (ys < 0) | (ys > scene.rows * scene.spacing_mm)
    labels[:, outside] = 0
    labels[outside_rows, :] = 0
    masks[:, :, outside] = False
    masks[:, outside_rows, :] = False
    return labels, masks


def _attenuation(scene: Scene, rng: np.random.Generator) -> Float:
    sp = scene.spacing_mm
    xs = (np.arange(scene.cols) + 0.5) * sp
    ys = (np.arange(scene.rows) + 0.5) * sp
    gx, gy = np.meshgrid(xs, ys, sparse=True)
    dx = gx - scene.cx
    crest_u, crest_l = _crest_fn(scene.crest_upper)(gx), _crest_fn(scene.crest_lower)(gx)
    lower_border = scene.cy + 44.0 - 0.0016 * dx**2
    reach = scene.arch_half + 14.0
    across = np.abs(dx) <= reach
    maxilla = across & (gy <= crest_u) & (gy >= scene.cy - 42.0 + 0.001 * dx**2)
    mandible = across & (gy >= crest_l) & (gy <= lower_border)
    ramus = (np.abs(dx) > reach - 10.0) & (np.abs(dx) < reach + 22.0) & (gy >= scene.cy - 30.0) & (gy <= lower_border)
    bone = (maxilla | mandible | ramus).astype(np.float64)
    for p in scene.planted:
        if p.kind == "bone_loss":
            rows, cols = _window(xs, ys, _planted_box(p, scene))
            sx, sy = np.meshgrid(xs[cols], ys[rows])
            bone[rows, cols][p.region(sx, sy)] = 0.0
    texture = ndimage.gaussian_filter(rng.normal(size=(scene.rows // 4 + 1, scene.cols // 4 + 1)), 1.2)
    texture = np.kron(texture, np.ones((4, 4)))[: scene.rows, : scene.cols]
    image = _SOFT + bone * _BONE * (1.0 + 0.9 * texture / (texture.std() + 1e-9) * 0.3)
    cortex = mandible & (gy >= lower_border - 3.0)
    image = image + 0.25 * cortex
    for side in (-1, 1):
        sinus = ((dx - side * 36.0) / 20.0) ** 2 + ((gy - (scene.cy - 30.0)) / 9.0) ** 2 <= 1.0
        image = image - 0.16 * sinus
        spine = np.exp(-(((gx - (scene.cx + side * (reach + 32.0))) / 7.0) ** 2)) * (gy < lower_border + 10)
        image = image + 0.22 * spine
    lesion_bone = np.zeros_like(image, dtype=bool)
    for p in scene.planted:
        if p.kind == "periapical_lesion":
            rows, cols = _window(xs, ys, _planted_box(p, scene))
            sx, sy = np.meshgrid(xs[cols], ys[rows])
            lesion_bone[rows, cols] |= p.region(sx, sy)
    image = image - lesion_bone * bone * _BONE * 0.75
    for tooth in scene.teeth:
        _draw_tooth(scene, tooth, image, bone, (xs, ys))
    return np.asarray(image, dtype=np.float64)


def _draw_tooth(scene: Scene, tooth: _Tooth, image: Float, bone: Float, grid: tuple[Float, Float]) -> None:
    xs, ys = grid
    rows, cols = _window(xs, ys, tooth.bbox())
    gx, gy = np.meshgrid(xs[cols], ys[rows])
    u, v = tooth.local(gx, gy)
    patch = image[rows, cols]
    in_bone = bone[rows, cols]
    own = [p for p in scene.planted if p.tooth is tooth]
    if tooth.implant:
        fixture = tooth.fixture(u, v)
        cap = _cap(tooth)(gx, gy)
        patch[fixture] = _SOFT + in_bone[fixture] * _BONE * 0.2 + _TITANIUM
        patch[cap & ~fixture] = _SOFT + _CROWN
        return
    body = tooth.natural(u, v)
    crown = tooth.crown(u, v)
    te = 1.1 * tooth.wc / 9.0 * np.clip((tooth.hc - v) / (0.3 * tooth.hc), 0.0, 1.0)
    enamel = crown & ((np.abs(u) > tooth.crown_hw(v) - te) | (v < te))
    value = np.where(enamel, _ENAMEL, _DENTINE)
    value = np.where(tooth.pulp(u, v), _PULP, value)
    for p in own:
        region = p.region(gx, gy)
        if p.kind == "caries":
            value = np.where(region, value * 0.3, value)
        elif p.kind == "restoration":
            value = np.where(region, _AMALGAM if tooth.wc > 7.5 else _COMPOSITE, value)
        elif p.kind == "root_canal_filling":
            value = np.where(region, _GUTTA, value)
    prosthesis = next((p for p in own if p.kind == "crown"), None)
    patch[body] = patch[body] - in_bone[body] * _BONE * 0.6 + value[body]
    if prosthesis is not None:
        region = prosthesis.region(gx, gy)
        patch[region] = _SOFT + _CROWN


def _to_pixels(image: Float, spacing: float, rng: np.random.Generator) -> npt.NDArray[np.uint16]:
    blurred = ndimage.gaussian_filter(image, (0.22 / spacing, 0.45 / spacing))
    quantum = rng.normal(size=image.shape) * 0.018 * np.sqrt(np.clip(blurred, 0.0, None) + 0.05)
    electronic = ndimage.gaussian_filter(rng.normal(size=image.shape), 0.7) * 0.02
    shading = 1.0 + 0.08 * np.linspace(-1, 1, image.shape[1])[np.newaxis, :] ** 2
    signal = (blurred + quantum + electronic) * shading
    gain, pedestal = rng.uniform(16000, 24000), rng.uniform(800, 2500)
    return np.asarray(np.clip(pedestal + signal * gain, 0, 65535), dtype=np.uint16)


def _truth(scene: Scene) -> tuple[Finding, ...]:
    sp = scene.spacing_mm
    xs = (np.arange(scene.cols) + 0.5) * sp
    ys = (np.arange(scene.rows) + 0.5) * sp
    found: list[Finding] = []
    for p in scene.planted:
        rows, cols = _window(xs, ys, _planted_box(p, scene))
        gx, gy = np.meshgrid(xs[cols], ys[rows])
        mask = p.region(gx, gy)
        if not mask.any():
            continue
        outline = region_outline(mask)
        r0, c0 = rows.start, cols.start
        yy, xx = np.nonzero(mask)
        found.append(
            Finding(
                kind=p.kind,
                tooth_fdi=p.tooth.fdi,
                confidence=1.0,
                bbox=(int(xx.min() + c0), int(yy.min() + r0), int(xx.max() + c0 + 1), int(yy.max() + r0 + 1)),
                polygon=tuple((x + c0, y + r0) for x, y in outline),
                area_px=int(mask.sum()),
                area_mm2=float(mask.sum()) * sp * sp,
                bone_loss_mm=p.bone_loss_mm,
                bone_loss_pct=p.bone_loss_pct,
            )
        )
    order = {kind: i for i, kind in enumerate(KINDS)}
    return tuple(sorted(found, key=lambda f: (order[f.kind], int(fdi_to_universal(f.tooth_fdi or "11")))))


def generate(seed: int) -> SyntheticImage:
    """The synthetic panoramic for ``seed`` (the same seed always gives the same image and truth)."""
    scene = _scene(seed)
    rng = np.random.default_rng([seed, 1])
    pixels = _to_pixels(_attenuation(scene, rng), scene.spacing_mm, rng)
    present = {t.fdi for t in scene.teeth}
    return SyntheticImage(
        pixels=pixels,
        spacing_mm=scene.spacing_mm,
        findings=_truth(scene),
        teeth_fdi=tuple(f for f in PERMANENT_FDI if f in present),
        scene=scene,
    )
