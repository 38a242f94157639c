"""``btt-edge capacity status|enable|disable``: sharing the idle accelerator with the network.

``enable``/``disable`` write the run-time switch into the agent database; a running agent picks it up within a
second (``disable`` also withdraws the offer and stops a running job), and it survives restarts.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``capacity`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("capacity", help="share the idle accelerator: status, on, off")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="switch, policy decision, accelerator, score, offer, jobs")
    add_config_args(status)
    status.add_argument("--json", action="store_true", help="one JSON object instead of text")
    status.set_defaults(func=_status)
    for name, value, text in (("enable", True, "offer spare capacity"), ("disable", False, "stop sharing")):
        action = actions.add_parser(name, help=text)
        add_config_args(action)
        action.set_defaults(func=_switch, value=value)


def _open(args: argparse.Namespace) -> sqlite3.Connection:
    from edge.capacity.state import migrate_capacity
    from edge.db import DB_FILENAME, connect

    config = config_from_args(args)
    config.agent.data_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(config.agent.data_dir / DB_FILENAME)
    migrate_capacity(conn)
    return conn


def _switch(args: argparse.Namespace) -> int:
    from edge.capacity.state import set_value

    conn = _open(args)
    try:
        set_value(conn, "enabled", bool(args.value))
    finally:
        conn.close()
    print(f"capacity sharing {'enabled' if args.value else 'disabled'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from edge.capacity.state import status

    conn = _open(args)
    try:
        doc = status(conn, config_from_args(args).capacity.enabled)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(doc.to_json()))
        return 0
    print(f"sharing: {'enabled' if doc.enabled else 'disabled'} (set by {doc.switch})")
    decision = doc.decision
    if decision is not None:
        print(f"policy: {'offering' if decision['offer'] else 'not offering'}: {decision['reason']}")
    accelerator = doc.accelerator
    if accelerator is not None:
        print(f"accelerator: {accelerator['kind']} {accelerator['name']}, {accelerator['memory_mb']} MB")
    if doc.score_mflops is not None:
        print(f"throughput score: {doc.score_mflops} MFLOP/s (standard workload)")
    offer = doc.offer
    print("offer: none" if offer is None else f"offer: {offer['offer_id']} until {offer['expires_ms']} ms")
    totals = doc.totals
    print(f"jobs done: {totals.jobs_done} ({totals.items} items, {totals.device_s:.1f} device-s)")
    for job in doc.jobs[:5]:
        print(f"  {job.job_id}  {job.state}  {job.items} items  {job.reason}")
    return 0
