"""A region's outline: the convex hull of a boolean mask's pixels, in pixel-edge coordinates (pure: array in).

The pipeline outlines each finding region with it and the synthetic generator outlines its ground truth with the
same function, so the two agree to the pixel.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["region_outline"]


def region_outline(mask: npt.NDArray[np.bool_]) -> list[tuple[float, float]]:
    """The convex hull of a region's pixels as ``(x, y)`` pixel-edge points, clockwise on screen (y down).

    Pixel ``(row, col)`` spans ``[col, col + 1) x [row, row + 1)``; an empty mask gives an empty outline.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    sub = mask[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    points = sorted(
        {
            (float(x), float(y))
            for r, lo, hi in zip(rows, first, last, strict=True)
            for x in (lo, hi + 1)
            for y in (r, r + 1)
        }
    )
    if len(points) <= 2:
        return points

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(points):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]
