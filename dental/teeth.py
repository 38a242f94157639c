"""Tooth numbering: FDI (ISO 3950) two-digit notation and the Universal (ADA) system.

Permanent teeth: FDI quadrants 1 (upper right), 2 (upper left), 3 (lower left), 4 (lower right), each numbered
1-8 from the midline; Universal 1-32 runs from the upper right third molar (FDI 18) round to the lower right
third molar (FDI 48). Primary teeth: FDI quadrants 5-8, Universal letters A-T in the same order.
The reference model labels teeth by their Universal position (channel ``k`` = Universal ``k``).
"""

from __future__ import annotations

__all__ = ["PERMANENT_FDI", "fdi_to_universal", "is_upper", "universal_to_fdi"]

_PERMANENT_QUADRANT_ORDER = ((1, range(8, 0, -1)), (2, range(1, 9)), (3, range(8, 0, -1)), (4, range(1, 9)))
_PRIMARY_QUADRANT_ORDER = ((5, range(5, 0, -1)), (6, range(1, 6)), (7, range(5, 0, -1)), (8, range(1, 6)))

PERMANENT_FDI: tuple[str, ...] = tuple(f"{q}{t}" for q, teeth in _PERMANENT_QUADRANT_ORDER for t in teeth)
"""FDI numbers in Universal order: ``PERMANENT_FDI[0]`` is "18" (Universal 1), ``[31]`` is "48" (Universal 32)."""

_PRIMARY_FDI: tuple[str, ...] = tuple(f"{q}{t}" for q, teeth in _PRIMARY_QUADRANT_ORDER for t in teeth)
_PRIMARY_UNIVERSAL = tuple(chr(ord("A") + i) for i in range(20))

_FDI_TO_UNIVERSAL = {
    **{fdi: str(i + 1) for i, fdi in enumerate(PERMANENT_FDI)},
    **dict(zip(_PRIMARY_FDI, _PRIMARY_UNIVERSAL, strict=True)),
}
_UNIVERSAL_TO_FDI = {u: f for f, u in _FDI_TO_UNIVERSAL.items()}


def fdi_to_universal(fdi: str) -> str:
    """``"36"`` -> ``"19"``; ``"55"`` -> ``"A"``. Raises ``ValueError`` for a number that is not a tooth."""
    try:
        return _FDI_TO_UNIVERSAL[fdi]
    except KeyError:
        raise ValueError(f"not an FDI tooth number: {fdi!r}") from None


def universal_to_fdi(universal: str) -> str:
    """``"19"`` -> ``"36"``; ``"A"`` -> ``"55"``. Raises ``ValueError`` for a number that is not a tooth."""
    try:
        return _UNIVERSAL_TO_FDI[universal.upper()]
    except KeyError:
        raise ValueError(f"not a Universal tooth number: {universal!r}") from None


def is_upper(fdi: str) -> bool:
    """True for a maxillary tooth."""
    fdi_to_universal(fdi)
    return fdi[0] in "1256"
