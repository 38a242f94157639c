"""Errors of the treatment planner (``edge.plan``). The tree::

    EdgeError                       (edge.errors)
    └── PlanError                   a draft plan cannot be made (no such study or instance on this box)
        └── PlanTableError          a rules table, code set or fee schedule is unreadable or malformed: names
                                    the file and the key

The CLI maps :class:`PlanError` like every :class:`~edge.errors.EdgeError` (one message, exit code 2).
"""

from __future__ import annotations

from edge.errors import EdgeError

__all__ = ["PlanError", "PlanTableError"]


class PlanError(EdgeError):
    """A draft plan cannot be made."""


class PlanTableError(PlanError):
    """A planning table (rules, code set, fee schedule) is unreadable or malformed; the message names the key."""
