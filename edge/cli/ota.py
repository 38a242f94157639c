"""``btt-edge ota status|check|apply|rollback``: model updates on the box (see docs/ota.md).

``apply`` installs up to a health-checked, staged slot; it switches at once when no agent runs on the data
directory, else the running agent's pipeline switches at its next idle moment. ``rollback`` makes the previous
model active again (the running agent follows at its next idle moment).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``ota`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("ota", help="signed model updates: status, check, apply, rollback")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("status", "the active model, the A/B slots and the last update event"),
        ("check", "ask the repository (verified metadata) without installing"),
        ("apply", "download, verify, unpack, health-check and switch (at the next idle moment if the agent runs)"),
        ("rollback", "return to the previous model"),
    ):
        action = actions.add_parser(name, help=text)
        add_config_args(action)
        action.set_defaults(func=_run, ota_action=name)


def _run(args: argparse.Namespace) -> int:
    from edge.agent import updater_for
    from edge.outbox import Outbox
    from ota.service import agent_running, outbox_reporter

    config = config_from_args(args)
    data_dir = config.agent.data_dir
    action: str = args.ota_action
    if action == "status":
        updater = updater_for(config)
        print(json.dumps(updater.status(), indent=1))
        return 0
    updater = updater_for(config, outbox_reporter(Outbox.open(config), data_dir))
    if action == "check":
        offer, verdict = updater.check()
        print(json.dumps({"offer": None if offer is None else offer.to_json(), "verdict": verdict}))
        return 0
    if action == "apply":
        result = updater.apply(switch_now=not agent_running(data_dir))
        print(
            json.dumps(
                {
                    "outcome": result.outcome,
                    "model_id": result.model_id,
                    "version": result.version,
                    "detail": result.detail,
                }
            )
        )
        return 0
    state = updater.rollback("operator: btt-edge ota rollback")
    print(json.dumps({"outcome": "rolled-back", "active": state.active, "path": str(updater.store.path(state.active))}))
    return 0
