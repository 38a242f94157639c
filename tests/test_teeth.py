"""Tooth numbering round-trips and matches the published charts at the corners."""

from __future__ import annotations

import pytest

from dental.findings import Finding
from dental.teeth import PERMANENT_FDI, fdi_to_universal, is_upper, universal_to_fdi


@pytest.mark.parametrize(
    ("fdi", "universal"),
    [
        ("18", "1"),
        ("11", "8"),
        ("21", "9"),
        ("28", "16"),
        ("38", "17"),
        ("31", "24"),
        ("41", "25"),
        ("48", "32"),
        ("36", "19"),
        ("55", "A"),
        ("65", "J"),
        ("75", "K"),
        ("85", "T"),
    ],
)
def test_known_pairs(fdi: str, universal: str) -> None:
    assert fdi_to_universal(fdi) == universal
    assert universal_to_fdi(universal) == fdi


def test_every_permanent_tooth_round_trips() -> None:
    assert len(set(PERMANENT_FDI)) == 32
    for i, fdi in enumerate(PERMANENT_FDI):
        assert fdi_to_universal(fdi) == str(i + 1)
    assert sum(is_upper(f) for f in PERMANENT_FDI) == 16


@pytest.mark.parametrize("bad", ["19", "00", "99", "", "x"])
def test_bad_numbers_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not an FDI tooth number"):
        fdi_to_universal(bad)


def test_finding_json_round_trip() -> None:
    finding = Finding(
        kind="caries",
        tooth_fdi="36",
        confidence=0.9,
        bbox=(1, 2, 30, 40),
        polygon=((1.0, 2.0), (30.0, 2.0), (30.0, 40.0)),
        area_px=500,
        area_mm2=5.0,
    )
    doc = finding.to_json()
    assert doc["tooth_universal"] == "19"
    assert Finding.from_json(doc) == finding
    with pytest.raises(ValueError, match="confidence"):
        Finding(kind="caries", tooth_fdi=None, confidence=1.5, bbox=(0, 0, 1, 1))
