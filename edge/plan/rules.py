"""The rules table: which procedures a finding suggests, as data a reader can check and a clinic can change.

``edge/plan/data/rules.toml`` is the shipped table; ``[plan] rules`` names a clinic's own copy. It holds the
procedures the rules may name (``[procedures.<key>]``: a readable name, how it is counted, the box services it
uses) and the rules (``[[rules]]``), tried in their order for each finding of their kind: the first whose
``when`` holds proposes its steps. :func:`parse_rules` checks the whole table (pure: a TOML document in, frozen
:class:`Rules` out, or :class:`~edge.plan.errors.PlanTableError` naming the key); :func:`load_rules` reads a file.
docs/planning.md describes the format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dental.findings import Finding
from edge.plan._toml import check_format, get_str, get_table, read_table, unknown_keys
from edge.plan.errors import PlanTableError

__all__ = [
    "DEFAULT_RULES",
    "FIELDS",
    "MISSING_TOOTH",
    "TOOTH_TYPES",
    "Alternative",
    "Comparison",
    "Condition",
    "Procedure",
    "Rule",
    "Rules",
    "Step",
    "load_rules",
    "parse_rules",
    "tooth_type",
]

DEFAULT_RULES = Path(__file__).resolve().parent / "data" / "rules.toml"
"""The shipped rules table."""
MISSING_TOOTH = "missing_tooth"
"""The kind of the finding the planner derives for a permanent tooth the analysis did not find (when it knows
which teeth it found); the rules treat it like any other kind."""
FIELDS = ("confidence", "area_mm2", "bone_loss_mm", "bone_loss_pct")
"""Measurements of a finding a rule may compare."""
TOOTH_TYPES = ("anterior", "premolar", "molar")
Per = Literal["tooth", "quadrant", "visit"]
_PER: tuple[Per, ...] = ("tooth", "quadrant", "visit")
_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_COMPARE_RE = re.compile(r"^\s*(>=|<=|>|<|==)\s*(-?\d+(?:\.\d+)?)\s*$")


def tooth_type(fdi: str) -> str:
    """``anterior`` (incisors, canines), ``premolar`` or ``molar`` (a primary tooth's 4 and 5 are molars)."""
    position = int(fdi[1])
    if position <= 3:
        return "anterior"
    return "premolar" if position <= 5 and fdi[0] in "1234" else "molar"


@dataclass(frozen=True)
class Procedure:
    """A procedure the rules may propose: its key (the code sets' and fee schedules' key too)."""

    key: str
    name: str
    per: Per
    """``tooth``: one item per tooth; ``quadrant``: one per quadrant, listing its teeth; ``visit``: one per plan."""
    services: tuple[str, ...] = ()
    """The box's service kinds (prepaid rights) one item uses; none: a dental procedure the rights never cover."""


@dataclass(frozen=True)
class Step:
    """One proposed procedure of a rule: where, and at which urgency (the rule's unless given)."""

    procedure: str
    on: Literal["tooth", "neighbours"] = "tooth"
    """``neighbours``: on the nearest present tooth on each side in the same jaw (a bridge's retainers)."""
    urgency: int | None = None


@dataclass(frozen=True)
class Comparison:
    """``<field> <op> <value>`` on the finding (``kind`` None) or on the finding of ``kind`` on the same tooth."""

    kind: str | None
    field: str
    op: str
    value: float

    def holds(self, finding: Finding | None) -> bool:
        """False when there is no such finding or it has no such measurement."""
        measured = None if finding is None else getattr(finding, self.field)
        if measured is None:
            return False
        x = float(measured)
        return {
            ">": x > self.value,
            ">=": x >= self.value,
            "<": x < self.value,
            "<=": x <= self.value,
            "==": x == self.value,
        }[self.op]


@dataclass(frozen=True)
class Condition:
    """A rule's ``when``: every part given must hold."""

    tooth_has: tuple[str, ...] = ()
    tooth_lacks: tuple[str, ...] = ()
    tooth_type: tuple[str, ...] = ()
    position: tuple[int, ...] = ()
    comparisons: tuple[Comparison, ...] = ()

    def holds(self, finding: Finding, tooth: Mapping[str, Finding]) -> bool:
        """Whether it holds for ``finding``, with ``tooth`` the findings of its tooth by kind."""
        fdi = finding.tooth_fdi
        if (self.tooth_type or self.position) and fdi is None:
            return False
        if self.tooth_type and fdi is not None and tooth_type(fdi) not in self.tooth_type:
            return False
        if self.position and fdi is not None and int(fdi[1]) not in self.position:
            return False
        if any(kind not in tooth for kind in self.tooth_has) or any(kind in tooth for kind in self.tooth_lacks):
            return False
        return all(c.holds(finding if c.kind is None else tooth.get(c.kind)) for c in self.comparisons)


@dataclass(frozen=True)
class Alternative:
    """Another option for the same finding (a bridge instead of an implant)."""

    name: str
    steps: tuple[Step, ...]
    rationale: str


@dataclass(frozen=True)
class Rule:
    """Findings of ``kind`` for which ``when`` holds: propose ``steps`` at ``urgency``, with ``alternatives``."""

    id: str
    kind: str
    when: Condition
    urgency: int
    """1 first, 2 soon, 3 planned, 4 elective."""
    steps: tuple[Step, ...]
    rationale: str
    alternatives: tuple[Alternative, ...] = ()


@dataclass(frozen=True)
class Rules:
    """A whole rules table."""

    source: str
    """The file it came from (shown with every plan)."""
    min_confidence: float
    procedures: Mapping[str, Procedure]
    rules: tuple[Rule, ...]

    def first_match(self, finding: Finding, tooth: Mapping[str, Finding]) -> Rule | None:
        """The first rule of the finding's kind whose condition holds, or None."""
        return next((r for r in self.rules if r.kind == finding.kind and r.when.holds(finding, tooth)), None)


def load_rules(path: Path | None = None) -> Rules:
    """The rules table at ``path`` (the shipped one if None)."""
    path = path or DEFAULT_RULES
    return parse_rules(read_table(path), str(path))


def parse_rules(doc: Mapping[str, Any], source: str) -> Rules:
    """Check a rules table (its TOML document) and return it; :class:`PlanTableError` names the bad key."""
    where = Path(source).name
    unknown_keys(doc, {"format", "min_confidence", "procedures", "rules"}, where)
    check_format(doc, where)
    min_confidence = _number(doc.get("min_confidence", 0.5), f"{where}.min_confidence", 0.0, 1.0)
    procedures = {
        key: _procedure(key, spec, f"{where}.procedures.{key}")
        for key, spec in get_table(doc, "procedures", where).items()
    }
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise PlanTableError(f"{where}.rules: expected an array of tables ([[rules]])")
    rules = tuple(_rule(raw, f"{where}.rules[{i}]", procedures) for i, raw in enumerate(raw_rules))
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.id in seen:
            raise PlanTableError(f"{where}.rules[{i}].id: {rule.id!r} is used twice")
        seen.add(rule.id)
    return Rules(source=source, min_confidence=min_confidence, procedures=procedures, rules=rules)


def _key(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _KEY_RE.match(value):
        raise PlanTableError(f"{where}: {value!r} is not a key (lower case letters, digits and _)")
    return value


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise PlanTableError(f"{where}: expected a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PlanTableError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def _procedure(key: str, spec: Any, where: str) -> Procedure:
    _key(key, where)
    if not isinstance(spec, Mapping):
        raise PlanTableError(f"{where}: expected a table")
    unknown_keys(spec, {"name", "per", "service"}, where)
    per = spec.get("per", "tooth")
    if per not in _PER:
        raise PlanTableError(f"{where}.per: {per!r} is not one of {', '.join(_PER)}")
    services = tuple(_key(s, f"{where}.service") for s in _strings(spec.get("service", []), f"{where}.service"))
    return Procedure(key=key, name=get_str(spec, "name", where, key), per=per, services=services)


def _steps(value: Any, where: str, procedures: Mapping[str, Procedure]) -> tuple[Step, ...]:
    if not isinstance(value, list):
        raise PlanTableError(f"{where}: expected a list of procedure keys or tables")
    steps = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"procedure": item}  # noqa: PLW2901 - the short form of the table
        if not isinstance(item, Mapping):
            raise PlanTableError(f"{at}: expected a procedure key or a table")
        unknown_keys(item, {"procedure", "on", "urgency"}, at)
        procedure = _key(item.get("procedure"), f"{at}.procedure")
        if procedure not in procedures:
            raise PlanTableError(f"{at}.procedure: {procedure!r} is not in [procedures]")
        on = item.get("on", "tooth")
        if on not in ("tooth", "neighbours"):
            raise PlanTableError(f"{at}.on: {on!r} is not 'tooth' or 'neighbours'")
        urgency = item.get("urgency")
        if urgency is not None:
            urgency = int(_number(urgency, f"{at}.urgency", 1, 9))
        steps.append(Step(procedure=procedure, on=on, urgency=urgency))
    return tuple(steps)


def _comparison(key: str, value: Any, where: str) -> Comparison:
    field = next((f for f in FIELDS if key == f or key.endswith("_" + f)), None)
    if field is None:
        raise PlanTableError(
            f"{where}: unknown condition (known: tooth_has, tooth_lacks, tooth_type, position, "
            f"or a comparison on {', '.join(FIELDS)}, optionally of another kind: <kind>_<field>)"
        )
    kind = None if key == field else _key(key[: -len(field) - 1], where)
    match = _COMPARE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise PlanTableError(f'{where}: expected a comparison like "> 4", got {value!r}')
    return Comparison(kind=kind, field=field, op=match.group(1), value=float(match.group(2)))


def _condition(value: Any, where: str) -> Condition:
    if not isinstance(value, Mapping):
        raise PlanTableError(f"{where}: expected a table")
    types = _strings(value.get("tooth_type", []), f"{where}.tooth_type")
    for t in types:
        if t not in TOOTH_TYPES:
            raise PlanTableError(f"{where}.tooth_type: {t!r} is not one of {', '.join(TOOTH_TYPES)}")
    positions = value.get("position", [])
    if not isinstance(positions, list) or not all(isinstance(p, int) and 1 <= p <= 8 for p in positions):
        raise PlanTableError(f"{where}.position: expected a list of positions 1-8, got {positions!r}")
    fixed = {"tooth_has", "tooth_lacks", "tooth_type", "position"}
    return Condition(
        tooth_has=_strings(value.get("tooth_has", []), f"{where}.tooth_has"),
        tooth_lacks=_strings(value.get("tooth_lacks", []), f"{where}.tooth_lacks"),
        tooth_type=types,
        position=tuple(positions),
        comparisons=tuple(_comparison(k, v, f"{where}.{k}") for k, v in value.items() if k not in fixed),
    )


def _rule(raw: Any, where: str, procedures: Mapping[str, Procedure]) -> Rule:
    if not isinstance(raw, Mapping):
        raise PlanTableError(f"{where}: expected a table")
    unknown_keys(raw, {"id", "kind", "when", "urgency", "procedures", "rationale", "alternatives"}, where)
    alternatives: Sequence[Any] = raw.get("alternatives", [])
    if not isinstance(alternatives, list):
        raise PlanTableError(f"{where}.alternatives: expected an array of tables ([[rules.alternatives]])")
    options = []
    for i, alt in enumerate(alternatives):
        at = f"{where}.alternatives[{i}]"
        if not isinstance(alt, Mapping):
            raise PlanTableError(f"{at}: expected a table")
        unknown_keys(alt, {"name", "procedures", "rationale"}, at)
        steps = _steps(alt.get("procedures"), f"{at}.procedures", procedures)
        options.append(
            Alternative(name=get_str(alt, "name", at), steps=steps, rationale=get_str(alt, "rationale", at, ""))
        )
    return Rule(
        id=get_str(raw, "id", where),
        kind=_key(raw.get("kind"), f"{where}.kind"),
        when=_condition(raw.get("when", {}), f"{where}.when"),
        urgency=int(_number(raw.get("urgency", 3), f"{where}.urgency", 1, 9)),
        steps=_steps(raw.get("procedures"), f"{where}.procedures", procedures),
        rationale=get_str(raw, "rationale", where, ""),
        alternatives=tuple(options),
    )
