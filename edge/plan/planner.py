"""The draft treatment plan of one study: findings in, a frozen :class:`Plan` out (pure).

For each tooth, the findings of the study's analysed images (one per kind: the most confident, for bone loss the
deepest) go through the rules table (:mod:`edge.plan.rules`, first match per finding); each proposes procedures
at an urgency, with alternatives. Items are counted as their procedure says (per tooth, per quadrant, once per
visit), ordered by urgency then along the arch, coded with the market's code set (:mod:`edge.plan.codes`, the
variant by tooth type, teeth per quadrant, first or additional), priced from the clinic's fee schedule
(:mod:`edge.plan.fees`, exact minor units) and marked covered or not by the prepaid rights
(:mod:`edge.plan.coverage`). A missing tooth is a finding only when the caller knows which teeth the analysis
found (``teeth_present``: for a stored study, those the model numbered on its panoramics,
:func:`edge.plan.study.recorded_teeth`); without it the plan proposes no replacement and its notes say so.

Every plan carries :data:`LABEL`: it is an AI draft for the dentist to review, never a decision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dental.findings import Finding
from dental.teeth import PERMANENT_FDI, fdi_to_universal
from edge.plan.codes import CodeSet
from edge.plan.coverage import Prepaid
from edge.plan.fees import FeeSchedule
from edge.plan.rules import MISSING_TOOTH, Rule, Rules, Step, tooth_type
from protocol.money import Money

__all__ = [
    "LABEL",
    "Evidence",
    "FindingLine",
    "ModelRef",
    "Option",
    "OptionStep",
    "Plan",
    "PlanItem",
    "ToothPlan",
    "Totals",
    "make_plan",
]

LABEL = "AI draft for review, not a decision"
"""On every plan, in every form it is shown."""


@dataclass(frozen=True)
class Evidence:
    """A recorded finding a plan item rests on: the image and its position in the image's recorded findings
    (``findings_json``; the FHIR export derives the finding's Observation from these)."""

    sop_instance_uid: str
    index: int
    finding: Finding
    model_id: str = ""
    """The model that made it (with ``model_version``: the SR's and the FHIR Observation's UIDs derive from it)."""
    model_version: str = ""


@dataclass(frozen=True)
class ModelRef:
    """A model that produced findings of the study."""

    id: str
    version: str
    clinical: bool


@dataclass(frozen=True)
class OptionStep:
    """One procedure of an alternative, on its teeth."""

    procedure: str
    code: str
    descriptor: str
    teeth_fdi: tuple[str, ...]


@dataclass(frozen=True)
class Option:
    """An alternative to the proposal for one finding, with its estimate (None when a fee is missing)."""

    name: str
    rationale: str
    steps: tuple[OptionStep, ...]
    estimate: Money | None


@dataclass(frozen=True)
class FindingLine:
    """One finding of a tooth and what the rules made of it."""

    kind: str
    confidence: float
    bone_loss_mm: float | None
    evidence: tuple[Evidence, ...]
    """Empty for a derived finding (a missing tooth)."""
    rule: str | None
    """The rule that matched, or None."""
    outcome: str
    """``proposed``, ``nothing proposed`` (the rule proposes no procedure), ``no rule`` or ``below confidence``."""
    rationale: str
    items: tuple[str, ...]
    """Ids of the plan items proposed for it."""
    alternatives: tuple[Option, ...]


@dataclass(frozen=True)
class PlanItem:
    """One proposed procedure."""

    id: str
    procedure: str
    name: str
    code: str
    """Empty when the code set leaves it to the clinic or has no entry (see ``descriptor``)."""
    code_system: str
    descriptor: str
    urgency: int
    tooth_fdi: str | None
    """The tooth of a per-tooth item; None for a quadrant's or the visit's."""
    quadrant: int | None
    teeth_fdi: tuple[str, ...]
    """The teeth it concerns (a quadrant's, or all the visit's)."""
    rules: tuple[str, ...]
    rationale: str
    evidence: tuple[Evidence, ...]
    estimate: Money | None
    covered: bool
    coverage: str
    """Why it is covered or not (:mod:`edge.plan.coverage`)."""


@dataclass(frozen=True)
class ToothPlan:
    """One tooth: its findings and the items on it (per-tooth items only; quadrant and visit items are listed
    once in :attr:`Plan.items`)."""

    tooth_fdi: str
    findings: tuple[FindingLine, ...]
    items: tuple[str, ...]

    @property
    def tooth_universal(self) -> str:
        return fdi_to_universal(self.tooth_fdi)


@dataclass(frozen=True)
class Totals:
    """Sums over the proposed items (alternatives are not added in), each in the fee schedule's currency."""

    items: int
    priced: int
    """Items with a fee (an item without one adds nothing to ``estimate``)."""
    estimate: Money | None
    covered: Money | None
    """Of ``estimate``: the items covered by the prepaid rights."""
    not_covered: Money | None


@dataclass(frozen=True)
class Plan:
    """The draft plan of one study."""

    uid: str
    """What it was made for: the study's UID, or the one image's."""
    study_uid: str
    instances: tuple[str, ...]
    models: tuple[ModelRef, ...]
    rules_source: str
    code_set: str
    code_system: str
    code_set_local: bool
    currency: str | None
    teeth: tuple[ToothPlan, ...]
    items: tuple[PlanItem, ...]
    unassigned: tuple[FindingLine, ...]
    """Findings without a tooth (nothing is proposed for them)."""
    totals: Totals
    notes: tuple[str, ...]
    label: str = LABEL

    def item(self, item_id: str) -> PlanItem:
        return next(i for i in self.items if i.id == item_id)

    def to_json(self) -> dict[str, Any]:
        """What ``btt-edge plan UID --json`` prints."""
        return {
            "label": self.label,
            "uid": self.uid,
            "study_uid": self.study_uid,
            "instances": list(self.instances),
            "models": [{"id": m.id, "version": m.version, "clinical": m.clinical} for m in self.models],
            "rules": self.rules_source,
            "code_set": {"name": self.code_set, "system": self.code_system, "local": self.code_set_local},
            "currency": self.currency,
            "teeth": [
                {
                    "tooth_fdi": t.tooth_fdi,
                    "tooth_universal": t.tooth_universal,
                    "findings": [_finding_json(f) for f in t.findings],
                    "items": [_item_json(self.item(i)) for i in t.items],
                }
                for t in self.teeth
            ],
            "items": [_item_json(i) for i in self.items],
            "unassigned_findings": [_finding_json(f) for f in self.unassigned],
            "totals": {
                "items": self.totals.items,
                "priced": self.totals.priced,
                "estimate": _money(self.totals.estimate),
                "covered": _money(self.totals.covered),
                "not_covered": _money(self.totals.not_covered),
            },
            "notes": list(self.notes),
        }


def _money(m: Money | None) -> dict[str, Any] | None:
    return None if m is None else m.to_json()


def _evidence_json(e: Evidence) -> dict[str, Any]:
    return {"sop_instance_uid": e.sop_instance_uid, "index": e.index, "kind": e.finding.kind,
            "tooth_fdi": e.finding.tooth_fdi, "confidence": round(e.finding.confidence, 4)}  # fmt: skip


def _finding_json(f: FindingLine) -> dict[str, Any]:
    return {
        "kind": f.kind,
        "confidence": round(f.confidence, 4),
        "bone_loss_mm": None if f.bone_loss_mm is None else round(f.bone_loss_mm, 2),
        "rule": f.rule,
        "outcome": f.outcome,
        "rationale": f.rationale,
        "items": list(f.items),
        "alternatives": [
            {
                "name": o.name,
                "rationale": o.rationale,
                "procedures": [
                    {
                        "procedure": s.procedure,
                        "code": s.code,
                        "descriptor": s.descriptor,
                        "teeth_fdi": list(s.teeth_fdi),
                    }
                    for s in o.steps
                ],
                "estimate": _money(o.estimate),
            }
            for o in f.alternatives
        ],
        "evidence": [_evidence_json(e) for e in f.evidence],
    }


def _item_json(i: PlanItem) -> dict[str, Any]:
    return {
        "id": i.id,
        "procedure": i.procedure,
        "name": i.name,
        "code": i.code,
        "code_system": i.code_system,
        "descriptor": i.descriptor,
        "urgency": i.urgency,
        "tooth_fdi": i.tooth_fdi,
        "tooth_universal": None if i.tooth_fdi is None else fdi_to_universal(i.tooth_fdi),
        "quadrant": i.quadrant,
        "teeth_fdi": list(i.teeth_fdi),
        "rules": list(i.rules),
        "rationale": i.rationale,
        "estimate": _money(i.estimate),
        "covered": i.covered,
        "coverage": i.coverage,
        "evidence": [_evidence_json(e) for e in i.evidence],
    }


# --- planning -----------------------------------------------------------------------------------------------------

_ARCH = {fdi: i for i, fdi in enumerate(PERMANENT_FDI)}


def _arch_index(fdi: str) -> int:
    return _ARCH.get(fdi, 100 + int(fdi_to_universal(fdi), 36))


def _rank(f: Finding) -> tuple[float, float]:
    depth = f.bone_loss_mm if f.kind == "bone_loss" and f.bone_loss_mm is not None else 0.0
    return (depth, f.confidence)


@dataclass
class _Draft:
    """An item being gathered: one procedure at one site, from one or more findings."""

    procedure: str
    site: tuple[str, ...]
    urgency: int
    order: tuple[int, int]
    teeth: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    rationales: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)


def _neighbours(fdi: str, present: set[str]) -> list[str]:
    """The nearest present tooth on each side of ``fdi`` in its jaw (Universal order runs along the arch)."""
    jaw = [t for t in PERMANENT_FDI if (t[0] in "12") == (fdi[0] in "12")]
    at = jaw.index(fdi)
    left = next((t for t in reversed(jaw[:at]) if t in present), None)
    right = next((t for t in jaw[at + 1 :] if t in present), None)
    return [t for t in (left, right) if t is not None]


def make_plan(
    study_uid: str,
    evidence: Sequence[Evidence],
    *,
    rules: Rules,
    codes: CodeSet,
    fees: FeeSchedule | None,
    prepaid: Prepaid,
    models: Iterable[ModelRef] = (),
    teeth_present: Iterable[str] | None = None,
    notes: Sequence[str] = (),
    uid: str | None = None,
) -> Plan:
    """The draft plan of a study from its recorded findings (``evidence``: each with its image and index);
    ``uid`` is what it is made for when that is one image of the study."""
    by_tooth: dict[str, dict[str, list[Evidence]]] = {}
    loose: list[Evidence] = []
    for e in evidence:
        if e.finding.tooth_fdi is None:
            loose.append(e)
        else:
            by_tooth.setdefault(e.finding.tooth_fdi, {}).setdefault(e.finding.kind, []).append(e)
    primary = {t: {k: max(es, key=lambda e: _rank(e.finding)).finding for k, es in kinds.items()}
               for t, kinds in by_tooth.items()}  # fmt: skip
    all_notes = list(notes)
    present: set[str] = set(by_tooth)
    if teeth_present is None:
        all_notes.append("missing teeth not assessed: no analysed panoramic records which teeth the model found")
    else:
        present |= set(teeth_present)
        for fdi in PERMANENT_FDI:
            if fdi not in present:
                primary[fdi] = {MISSING_TOOTH: Finding(MISSING_TOOTH, fdi, 1.0, (0, 0, 0, 0))}
                by_tooth[fdi] = {MISSING_TOOTH: []}

    drafts: dict[tuple[str, tuple[str, ...]], _Draft] = {}
    lines: dict[str, list[tuple[FindingLine, list[tuple[str, tuple[str, ...]]]]]] = {}
    for tooth in sorted(primary, key=_arch_index):
        for kind in sorted(primary[tooth]):
            finding = primary[tooth][kind]
            refs = tuple(by_tooth[tooth][kind])
            rule = None if finding.confidence < rules.min_confidence else rules.first_match(finding, primary[tooth])
            keys: list[tuple[str, tuple[str, ...]]] = []
            if rule is not None:
                for n, step in enumerate(rule.steps):
                    for site_tooth in _step_teeth(step, tooth, present):
                        keys.append(_gather(drafts, rules, rule, step, n=n, tooth=site_tooth, refs=refs))
            outcome = ("below confidence" if finding.confidence < rules.min_confidence else
                       "no rule" if rule is None else "proposed" if keys else "nothing proposed")  # fmt: skip
            options = () if rule is None else _options(rule, tooth, present, tables=(rules, codes, fees))
            line = FindingLine(
                kind=kind,
                confidence=finding.confidence,
                bone_loss_mm=finding.bone_loss_mm,
                evidence=refs,
                rule=None if rule is None else rule.id,
                outcome=outcome,
                rationale="" if rule is None else rule.rationale,
                items=(),
                alternatives=options,
            )
            lines.setdefault(tooth, []).append((line, keys))

    ordered = sorted(drafts.values(), key=lambda d: (d.urgency, d.order))
    items: list[PlanItem] = []
    ids: dict[tuple[str, tuple[str, ...]], str] = {}
    seen: dict[str, int] = {}
    taken: dict[str, int] = {}
    for n, d in enumerate(ordered, start=1):
        procedure = rules.procedures[d.procedure]
        variants = [*_variants(d, seen.get(d.procedure, 0))]
        seen[d.procedure] = seen.get(d.procedure, 0) + 1
        coding = codes.lookup(d.procedure, variants)
        cover = prepaid.cover(procedure.services, taken)
        item = PlanItem(
            id=f"item-{n}",
            procedure=d.procedure,
            name=procedure.name,
            code="" if coding is None else coding.code,
            code_system=codes.system,
            descriptor=procedure.name if coding is None else coding.descriptor,
            urgency=d.urgency,
            tooth_fdi=d.site[1] if d.site[0] == "tooth" else None,
            quadrant=int(d.site[1]) if d.site[0] == "quadrant" else None,
            teeth_fdi=tuple(sorted(set(d.teeth), key=_arch_index)),
            rules=tuple(dict.fromkeys(d.rules)),
            rationale=" ".join(dict.fromkeys(d.rationales)),
            evidence=tuple(dict.fromkeys(d.evidence)),
            estimate=None if fees is None else fees.fee(d.procedure, variants),
            covered=cover.covered,
            coverage=cover.reason,
        )
        items.append(item)
        ids[(d.procedure, d.site)] = item.id
        if coding is None:
            all_notes.append(f"{d.procedure}: not in the code set {codes.name}")
    teeth = tuple(
        ToothPlan(
            tooth_fdi=tooth,
            findings=tuple(
                dataclasses.replace(line, items=tuple(dict.fromkeys(ids[k] for k in keys))) for line, keys in entries
            ),
            items=tuple(i.id for i in items if i.tooth_fdi == tooth),
        )
        for tooth, entries in lines.items()
    )
    unassigned = tuple(FindingLine(kind=e.finding.kind, confidence=e.finding.confidence,
                                   bone_loss_mm=e.finding.bone_loss_mm, evidence=(e,), rule=None, outcome="no tooth",
                                   rationale="", items=(), alternatives=()) for e in loose)  # fmt: skip
    if fees is None:
        all_notes.append("no fee schedule configured ([plan] fee_schedule): no estimates")
    for m in models:
        if not m.clinical:
            all_notes.append(f"model {m.id} {m.version} is not cleared for clinical use")
    return Plan(
        uid=uid or study_uid,
        study_uid=study_uid,
        instances=tuple(dict.fromkeys(e.sop_instance_uid for e in evidence)),
        models=tuple(models),
        rules_source=rules.source,
        code_set=codes.name,
        code_system=codes.system,
        code_set_local=codes.local,
        currency=None if fees is None else fees.currency,
        teeth=teeth,
        items=tuple(items),
        unassigned=unassigned,
        totals=_totals(items, fees),
        notes=tuple(dict.fromkeys(all_notes)),
    )


def _step_teeth(step: Step, tooth: str, present: set[str]) -> list[str]:
    return _neighbours(tooth, present) if step.on == "neighbours" else [tooth]


def _gather(
    drafts: dict[tuple[str, tuple[str, ...]], _Draft],
    rules: Rules,
    rule: Rule,
    step: Step,
    *,
    n: int,
    tooth: str,
    refs: tuple[Evidence, ...],
) -> tuple[str, tuple[str, ...]]:
    per = rules.procedures[step.procedure].per
    site = ("tooth", tooth) if per == "tooth" else ("quadrant", tooth[0]) if per == "quadrant" else ("visit",)
    urgency = step.urgency or rule.urgency
    key = (step.procedure, site)
    draft = drafts.get(key)
    if draft is None:
        draft = drafts[key] = _Draft(step.procedure, site, urgency, (_arch_index(tooth), n))
    draft.urgency = min(draft.urgency, urgency)
    draft.order = min(draft.order, (_arch_index(tooth), n))
    draft.teeth.append(tooth)
    draft.rules.append(rule.id)
    draft.rationales.append(rule.rationale)
    draft.evidence.extend(refs)
    return key


def _variants(d: _Draft, earlier: int) -> list[str]:
    sequence = "first" if earlier == 0 else "additional"
    if d.site[0] == "tooth":
        return [sequence, tooth_type(d.site[1])]
    if d.site[0] == "quadrant":
        return ["one_to_three" if len(set(d.teeth)) <= 3 else "four_or_more"]
    return [sequence]


def _options(
    rule: Rule, tooth: str, present: set[str], *, tables: tuple[Rules, CodeSet, FeeSchedule | None]
) -> tuple[Option, ...]:
    rules, codes, fees = tables
    options = []
    for alt in rule.alternatives:
        steps = []
        total: int | None = 0
        for step in alt.steps:
            teeth = tuple(_step_teeth(step, tooth, present))
            coding = codes.lookup(step.procedure, [tooth_type(tooth)])
            for t in teeth:
                fee = None if fees is None else fees.fee(step.procedure, [tooth_type(t)])
                total = None if fee is None or total is None else total + fee.amount
            steps.append(OptionStep(step.procedure, "" if coding is None else coding.code,
                                    rules.procedures[step.procedure].name if coding is None else coding.descriptor,
                                    teeth))  # fmt: skip
        estimate = None if fees is None or total is None else Money(fees.currency, total)
        options.append(Option(alt.name, alt.rationale, tuple(steps), estimate))
    return tuple(options)


def _totals(items: Sequence[PlanItem], fees: FeeSchedule | None) -> Totals:
    priced = [i for i in items if i.estimate is not None]
    if fees is None:
        return Totals(items=len(items), priced=0, estimate=None, covered=None, not_covered=None)

    def total(chosen: Iterable[PlanItem]) -> Money:
        return Money(fees.currency, sum(i.estimate.amount for i in chosen if i.estimate is not None))

    return Totals(
        items=len(items),
        priced=len(priced),
        estimate=total(priced),
        covered=total(i for i in priced if i.covered),
        not_covered=total(i for i in priced if not i.covered),
    )
