"""The names of what travels: the kinds of up messages a device sends and the commands the relay sends back.

A kind is the last level of an up topic (``btt/v1/dev/{device}/up/{kind}``) and the outbox's name for an item;
a command is the last level of a command topic (``btt/v1/dev/{device}/cmd/{name}``). Adding a message type
starts here.
"""

from __future__ import annotations

__all__ = [
    "CAPACITY_JOB",
    "CERTIFICATE",
    "COMMANDS",
    "HEALTH",
    "OFFERS",
    "OTA_AVAILABLE",
    "RECEIPTS",
    "REPORT_KINDS",
    "RESULTS",
    "SETTLEMENTS",
    "UP_KINDS",
]

RECEIPTS = "receipts"
"""Signed receipt envelopes (:mod:`protocol.receipts`), verified and stored by the relay."""
SETTLEMENTS = "settlements"
"""Signed settlement envelopes (:mod:`protocol.settlement`)."""
CERTIFICATE = "certificate"
"""The device certificate envelope (:mod:`protocol.certificates`)."""
OFFERS = "offers"
"""Spare-capacity offers, withdrawals and results (:mod:`protocol.capacity`)."""
HEALTH = "health"
"""The box's health report (an object stored as it came)."""
RESULTS = "results"
"""Analysis summaries (an object stored as it came)."""

UP_KINDS = (RECEIPTS, SETTLEMENTS, CERTIFICATE, OFFERS, HEALTH, RESULTS)
"""Every kind the relay stores."""
REPORT_KINDS = (OFFERS, HEALTH, RESULTS)
"""The kinds stored as reports (a JSON object each, not a signed record the relay verifies)."""

OTA_AVAILABLE = "ota-available"
"""Command: a model update may be waiting (``{"v": 1, "model_id", "version"}``); the box asks its repository."""
CAPACITY_JOB = "capacity-job"
"""Command: a signed capacity job (:data:`protocol.capacity.JOB`) for the box to run."""
COMMANDS = (OTA_AVAILABLE, CAPACITY_JOB)
"""Every command the relay side sends."""
