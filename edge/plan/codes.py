"""Code sets per market: procedure key -> code and descriptor, as data (``edge/plan/data/codes/<name>.toml``).

``ada-cdt`` (ADA CDT, system ``http://www.ada.org/cdt``) and ``cn`` (China: Chinese descriptors, every code the
clinic's own local code, empty until the clinic fills it in) are shipped; ``[plan] code_set`` names one of them
or a file. An entry is one code, or one code per *variant* (:data:`VARIANTS`: the tooth type, the number of teeth
in a quadrant, first or additional in the plan), the planner naming the variants that apply and the first the
entry defines winning. :func:`parse_code_set` is pure; :func:`load_code_set` reads the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.plan._toml import check_format, get_str, get_table, read_table, unknown_keys
from edge.plan.errors import PlanTableError

__all__ = ["BUILTIN_CODE_SETS", "VARIANTS", "CodeSet", "Coding", "load_code_set", "parse_code_set"]

_DIR = Path(__file__).resolve().parent / "data" / "codes"
BUILTIN_CODE_SETS = {"ada-cdt": _DIR / "ada-cdt.toml", "cn": _DIR / "cn.toml"}
"""The shipped code sets by name."""
VARIANTS = ("anterior", "premolar", "molar", "one_to_three", "four_or_more", "first", "additional")
"""The variant names an entry (and a fee) may be split by."""


@dataclass(frozen=True)
class Coding:
    """One procedure's code in a code set."""

    code: str
    """Empty where the set leaves it to the clinic (a local code not filled in)."""
    descriptor: str


@dataclass(frozen=True)
class CodeSet:
    """A market's codes for the procedure keys."""

    name: str
    system: str
    """The coding system's URI (FHIR ``Coding.system``)."""
    local: bool
    """Codes are the clinic's own (not a published standard)."""
    source: str
    entries: Mapping[str, Mapping[str, Coding]]
    """Procedure key -> variant (``""`` for the one code) -> coding."""

    def lookup(self, procedure: str, variants: Sequence[str]) -> Coding | None:
        """The coding of ``procedure`` for the first of ``variants`` the entry defines, else its one code; None
        when the set has no entry for it."""
        entry = self.entries.get(procedure)
        if entry is None:
            return None
        for variant in (*variants, ""):
            if variant in entry:
                return entry[variant]
        return None


def load_code_set(name_or_path: str) -> CodeSet:
    """A shipped code set by name (``ada-cdt``, ``cn``) or the code set file at a path."""
    path = BUILTIN_CODE_SETS.get(name_or_path) or Path(name_or_path)
    return parse_code_set(read_table(path), str(path))


def _coding(spec: Any, where: str) -> Coding:
    if not isinstance(spec, Mapping):
        raise PlanTableError(f"{where}: expected a table with code and descriptor")
    unknown_keys(spec, {"code", "descriptor"}, where)
    return Coding(code=get_str(spec, "code", where), descriptor=get_str(spec, "descriptor", where))


def parse_code_set(doc: Mapping[str, Any], source: str) -> CodeSet:
    """Check a code set (its TOML document); :class:`PlanTableError` names the bad key."""
    where = Path(source).name
    unknown_keys(doc, {"format", "name", "system", "local", "procedures"}, where)
    check_format(doc, where)
    local = doc.get("local", False)
    if not isinstance(local, bool):
        raise PlanTableError(f"{where}.local: expected true or false")
    entries: dict[str, dict[str, Coding]] = {}
    for key, spec in get_table(doc, "procedures", where).items():
        at = f"{where}.procedures.{key}"
        if not isinstance(spec, Mapping):
            raise PlanTableError(f"{at}: expected a table")
        if "code" in spec or "descriptor" in spec:
            entries[key] = {"": _coding(spec, at)}
            continue
        unknown_keys(spec, set(VARIANTS), at)
        if not spec:
            raise PlanTableError(f"{at}: expected code and descriptor, or variants ({', '.join(VARIANTS)})")
        entries[key] = {variant: _coding(v, f"{at}.{variant}") for variant, v in spec.items()}
    system = get_str(doc, "system", where)
    if not system:
        raise PlanTableError(f"{where}.system: empty (a URI naming the coding system)")
    return CodeSet(name=get_str(doc, "name", where), system=system, local=local, source=source, entries=entries)
