"""Strict field access for parsed signed structures (shared by receipts, grants, shares and settlements)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from protocol.errors import MalformedRecord

__all__ = ["ID_RE", "KIND_RE", "get_id", "get_int", "get_opt_str", "get_str"]

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
"""Identifiers (grants, clinics, assets, owners, devices): opaque, market-neutral, 1-128 characters."""
KIND_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
"""Service kinds: ``analysis``, ``exposure``, ``compute`` ... (open-ended)."""


def get_int(doc: Mapping[str, Any], name: str, what: str, lo: int = 0) -> int:
    """An integer field ``>= lo``."""
    value = doc.get(name)
    if type(value) is not int or value < lo:
        raise MalformedRecord(f"{what}: {name} must be an integer >= {lo}, got {value!r:.40}")
    return value


def get_str(doc: Mapping[str, Any], name: str, what: str, max_len: int = 256) -> str:
    """A non-empty string field of at most ``max_len`` characters."""
    value = doc.get(name)
    if type(value) is not str or not 0 < len(value) <= max_len:
        raise MalformedRecord(f"{what}: {name} must be a string of 1-{max_len} characters, got {value!r:.40}")
    return value


def get_opt_str(doc: Mapping[str, Any], name: str, what: str, max_len: int = 256) -> str | None:
    """A string field or null."""
    return None if doc.get(name) is None else get_str(doc, name, what, max_len)


def get_id(doc: Mapping[str, Any], name: str, what: str, pattern: re.Pattern[str] = ID_RE) -> str:
    """A string field matching ``pattern``."""
    value = get_str(doc, name, what)
    if not pattern.match(value):
        raise MalformedRecord(f"{what}: {name} {value!r:.40} is not a valid identifier")
    return value
