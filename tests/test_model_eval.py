"""Evaluation's matching rule: same kind, box IoU over the threshold, most confident prediction first."""

from __future__ import annotations

import pytest

from dental.findings import Finding, box_iou
from models.reference.evaluate import match_findings, tooth_level


def _f(kind: str, box: tuple[int, int, int, int], confidence: float = 1.0, tooth: str | None = "11") -> Finding:
    return Finding(kind=kind, tooth_fdi=tooth, confidence=confidence, bbox=box)


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_match_findings() -> None:
    truth = [_f("caries", (0, 0, 10, 10)), _f("crown", (20, 0, 40, 20)), _f("caries", (50, 50, 60, 60))]
    predicted = [
        _f("caries", (1, 1, 10, 10), 0.9),
        _f("caries", (0, 0, 9, 9), 0.5),  # same lesion again: a false positive
        _f("restoration", (20, 0, 40, 20), 0.8),  # right place, wrong kind
        _f("crown", (22, 2, 40, 20), 0.7, tooth="21"),
    ]
    pairs, false_pos, false_neg = match_findings(predicted, truth, iou=0.3)
    assert [(p.kind, p.confidence) for p, _ in pairs] == [("caries", 0.9), ("crown", 0.7)]
    assert sorted(p.kind for p in false_pos) == ["caries", "restoration"]
    assert [t.bbox for t in false_neg] == [(50, 50, 60, 60)]


def test_tooth_level_counts_a_kind_once_per_tooth() -> None:
    truth = [_f("caries", (0, 0, 10, 10), tooth="36"), _f("caries", (20, 0, 30, 10), tooth="37")]
    predicted = [
        _f("caries", (0, 0, 5, 5), tooth="36"),
        _f("caries", (5, 5, 10, 10), tooth="36"),  # the same tooth again: counted once
        _f("caries", (40, 0, 50, 10), tooth="46"),  # a tooth without caries: a false positive
        _f("crown", (0, 0, 10, 10), tooth=None),  # no tooth: not counted
    ]
    assert tooth_level(predicted, truth) == {"caries": (2, 2, 1), "crown": (0, 0, 0)}
