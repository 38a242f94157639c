"""A draft plan as readable lines (``btt-edge plan`` without ``--json``, the terminal UI's study view), from its
JSON form (:meth:`edge.plan.planner.Plan.to_json`, what the control socket sends). Pure."""

from __future__ import annotations

from typing import Any

__all__ = ["format_money", "plan_lines"]

_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}
"""ISO 4217 minor-unit exponents that are not 2 (the ones a clinic is likely to meet)."""


def format_money(doc: dict[str, Any] | None) -> str:
    """``{"currency": "USD", "amount": 216500}`` -> ``2,165.00 USD``; ``-`` for None."""
    if doc is None:
        return "-"
    exponent = _EXPONENTS.get(doc["currency"], 2)
    whole, part = divmod(int(doc["amount"]), 10**exponent)
    return f"{whole:,}" + (f".{part:0{exponent}d}" if exponent else "") + f" {doc['currency']}"


def plan_lines(doc: dict[str, Any]) -> list[str]:
    """The plan as lines of text: the label first, the items by urgency, the findings per tooth, the totals."""
    lines = [doc["label"], f"Study {doc['study_uid']}  code set {doc['code_set']['name']}  rules {doc['rules']}"]
    if doc["items"]:
        lines.append(f"{'#':>3} {'urg':>3} {'tooth':<5} {'code':<6} {'procedure':<44} {'estimate':>14}  prepaid")
    for item in doc["items"]:
        where = item["tooth_fdi"] or (f"Q{item['quadrant']}" if item["quadrant"] else "-")
        lines.append(
            f"{item['id'].removeprefix('item-'):>3} {item['urgency']:>3} {where:<5} {item['code'] or '-':<6} "
            f"{item['descriptor'][:44]:<44} {format_money(item['estimate']):>14}  {'yes' if item['covered'] else 'no'}"
        )
    for tooth in doc["teeth"]:
        for f in tooth["findings"]:
            if f["outcome"] in ("no rule",):
                continue
            items = ", ".join(i.removeprefix("item-") for i in f["items"])
            text = f"  tooth {tooth['tooth_fdi']}: {f['kind']} -> {f['outcome']}" + (
                f" (items {items})" if items else ""
            )
            if f["alternatives"]:
                text += "; alternatives: " + ", ".join(
                    f"{o['name']} ({format_money(o['estimate'])})" for o in f["alternatives"]
                )
            lines.append(text)
    totals = doc["totals"]
    lines.append(
        f"{totals['items']} items, estimate {format_money(totals['estimate'])} ({totals['priced']} priced), "
        f"covered by prepaid rights {format_money(totals['covered'])}"
    )
    lines.extend(f"note: {n}" for n in doc["notes"])
    return lines
