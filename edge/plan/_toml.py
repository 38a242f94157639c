"""Reading the planner's TOML tables: the one place a file is opened and a key is checked (pure helpers but
:func:`read_table`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge.plan.errors import PlanTableError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack)
    import tomli as tomllib

__all__ = ["check_format", "get_str", "get_table", "read_table", "unknown_keys"]


def read_table(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; :class:`PlanTableError` naming the file when unreadable or invalid."""
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanTableError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlanTableError(f"{path}: not valid TOML ({exc})") from exc
    return doc


def check_format(doc: Mapping[str, Any], where: str) -> None:
    if doc.get("format") != 1:
        raise PlanTableError(f"{where}: format: expected 1, got {doc.get('format')!r}")


def unknown_keys(doc: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(doc) - known)
    if extra:
        raise PlanTableError(f"{where}.{extra[0]}: unknown key (known: {', '.join(sorted(known))})")


def get_table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise PlanTableError(f"{where}.{key}: expected a table")
    return value


def get_str(doc: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise PlanTableError(f"{where}.{key}: expected a string, got {value!r}")
    return value
