"""The clinical rules on raw findings: one per kind per tooth, and the exclusions between kinds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dental.findings import Finding, box_iou
from edge.pipeline.clinical import EXCLUSIVE, EXCLUSIVE_IOU, apply_clinical_rules


def _f(kind: str, tooth: str | None, confidence: float, area: int = 10, mm: float | None = None) -> Finding:
    """A finding whose box is its tooth's place (one box per tooth, apart from the others)."""
    x = 0 if tooth is None else 10 * int(tooth)
    return Finding(kind, tooth, confidence, (x, 0, x + 5, 5), area_px=area, bone_loss_mm=mm)


def test_one_finding_per_kind_per_tooth_the_most_confident() -> None:
    raw = [
        _f("root_canal_filling", "47", 0.7),
        _f("root_canal_filling", "47", 0.9),
        _f("root_canal_filling", "46", 0.5),
    ]
    assert apply_clinical_rules(raw) == [raw[1], raw[2]]


def test_bone_loss_keeps_the_deepest_site() -> None:
    raw = [_f("bone_loss", "31", 0.9, mm=1.0), _f("bone_loss", "31", 0.6, mm=3.5)]
    assert apply_clinical_rules(raw) == [raw[1]]


def test_an_implant_is_not_also_a_root_canal_filling() -> None:
    raw = [_f("root_canal_filling", "36", 0.6), _f("implant", "36", 0.8), _f("root_canal_filling", "37", 0.6)]
    assert apply_clinical_rules(raw) == [raw[1], raw[2]]
    raw = [_f("root_canal_filling", "36", 0.9), _f("implant", "36", 0.8)]
    assert apply_clinical_rules(raw) == [raw[0]]


def test_a_crown_is_not_also_a_restoration() -> None:
    raw = [_f("restoration", "16", 0.8), _f("crown", "16", 0.9), _f("caries", "16", 0.4), _f("restoration", "17", 0.7)]
    assert apply_clinical_rules(raw) == [raw[1], raw[2], raw[3]]
    raw = [_f("restoration", "16", 0.95), _f("crown", "16", 0.9)]
    assert apply_clinical_rules(raw) == [raw[0]]


def test_excluded_kinds_in_one_place_without_a_tooth_keep_the_more_confident() -> None:
    implant = Finding("implant", None, 0.9, (0, 0, 10, 10))
    canal = Finding("root_canal_filling", None, 0.5, (1, 0, 10, 10))
    elsewhere = Finding("root_canal_filling", None, 0.5, (50, 50, 60, 60))
    assert apply_clinical_rules([canal, implant, elsewhere]) == [implant, elsewhere]


def test_findings_without_a_tooth_are_kept() -> None:
    raw = [_f("caries", None, 0.5), _f("caries", None, 0.6)]
    assert apply_clinical_rules(raw) == raw


KINDS = ("caries", "periapical_lesion", "bone_loss", "restoration", "crown", "root_canal_filling", "implant")
findings = st.lists(
    st.builds(
        _f,
        st.sampled_from(KINDS),
        st.sampled_from(("11", "16", "36", "47", None)),
        st.floats(0, 1),
        st.integers(0, 100),
        st.one_of(st.none(), st.floats(0, 10)),
    ),
    max_size=30,
)


@given(findings)
def test_rules_hold_for_any_findings(raw: list[Finding]) -> None:
    out = apply_clinical_rules(raw)
    kept = {id(f) for f in out}
    assert [f for f in raw if id(f) in kept] == out  # a subset, in order
    toothed = [(f.tooth_fdi, f.kind) for f in out if f.tooth_fdi is not None]
    assert len(toothed) == len(set(toothed))
    for pair in EXCLUSIVE:
        for tooth in {f.tooth_fdi for f in out if f.tooth_fdi is not None}:
            assert not pair <= {f.kind for f in out if f.tooth_fdi == tooth}
        for a in out:
            for b in out:
                assert not ({a.kind, b.kind} == pair and box_iou(a.bbox, b.bbox) >= EXCLUSIVE_IOU)
    # every (tooth, kind) the model saw is still reported unless an excluded partner was more confident
    for f in raw:
        if f.tooth_fdi is not None and not any((g.tooth_fdi, g.kind) == (f.tooth_fdi, f.kind) for g in out):
            partners = [
                g
                for g in raw
                if frozenset({f.kind, g.kind}) in EXCLUSIVE
                and (g.tooth_fdi == f.tooth_fdi or box_iou(f.bbox, g.bbox) >= EXCLUSIVE_IOU)
            ]
            assert partners
    assert apply_clinical_rules(out) == out  # applying them again changes nothing
