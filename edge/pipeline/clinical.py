"""The clinical rules a dentist applies to a model's raw findings: one finding per kind per tooth, and the
exclusions between kinds that cannot be found together.

Pure: findings in, findings out, in their order, the same for every bundle's output kind (the last step of
:func:`edge.pipeline.postprocess.findings_from_outputs`). A model reports regions; a dentist charts teeth:

* **One finding per kind per tooth.** Of several regions of one kind on one tooth the most confident is kept (for
  bone loss the deepest, then the most confident: the worst site is what a periodontal chart records). Its
  outline, box and area stay its own, so every measurement still belongs to the region drawn.
* **Exclusions** (:data:`EXCLUSIVE`): an implant is not also a root-canal filling (an implant has no root canal),
  and a crown is not also a restoration (a crowned tooth's restoration is its crown). Of two such findings on one
  tooth, or in one place (boxes overlapping with IoU >= :data:`EXCLUSIVE_IOU`, for findings without a tooth), the
  more confident is kept.

The crown/restoration rule was left out while the reference model was a single network that was surer of "crown"
on every metal surface (it took restorations' tooth-level recall from 0.58 to 0.01); the two-stage model (bundle
0.4.0) never puts both on one held-out tooth, and the rule changes none of its figures (bench/RESULTS.md).
Findings without a tooth are never merged: there is no tooth to reason about.
"""

from __future__ import annotations

from collections.abc import Sequence

from dental.findings import Finding, box_iou

__all__ = ["EXCLUSIVE", "EXCLUSIVE_IOU", "apply_clinical_rules"]

EXCLUSIVE: tuple[frozenset[str], ...] = (
    frozenset({"implant", "root_canal_filling"}),
    frozenset({"crown", "restoration"}),
)
"""Pairs of kinds that are never found together on one tooth or in one place."""
EXCLUSIVE_IOU = 0.3
"""Two findings whose boxes overlap at least this much are in one place."""


def _rank(finding: Finding) -> tuple[float, float, int]:
    """Which of two findings of one kind on one tooth to keep: the higher rank."""
    depth = finding.bone_loss_mm if finding.kind == "bone_loss" and finding.bone_loss_mm is not None else 0.0
    return (depth, finding.confidence, finding.area_px)


def _together(a: Finding, b: Finding) -> bool:
    if a.tooth_fdi is not None and a.tooth_fdi == b.tooth_fdi:
        return True
    return box_iou(a.bbox, b.bbox) >= EXCLUSIVE_IOU


def apply_clinical_rules(findings: Sequence[Finding]) -> list[Finding]:
    """``findings`` with one per kind per tooth and no excluded pair together, in their original order."""
    best: dict[tuple[str, str], int] = {}
    for i, finding in enumerate(findings):
        if finding.tooth_fdi is None:
            continue
        key = (finding.tooth_fdi, finding.kind)
        if key not in best or _rank(finding) > _rank(findings[best[key]]):
            best[key] = i
    kept = [i for i, f in enumerate(findings) if f.tooth_fdi is None or best[(f.tooth_fdi, f.kind)] == i]
    dropped: set[int] = set()
    for pair in EXCLUSIVE:
        first, second = sorted(pair)
        for i in (i for i in kept if findings[i].kind == first):
            for j in (j for j in kept if findings[j].kind == second):
                if i in dropped or j in dropped or not _together(findings[i], findings[j]):
                    continue
                # the more confident stays; on a tie the kind first by name
                dropped.add(j if findings[i].confidence >= findings[j].confidence else i)
    return [findings[i] for i in kept if i not in dropped]
