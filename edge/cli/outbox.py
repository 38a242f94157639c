"""``btt-edge outbox status|requeue``: what the box still owes the relay, and sending rejected items again."""

from __future__ import annotations

import argparse
import json
import sqlite3
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``outbox`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("outbox", help="what is queued for the relay; resend rejects")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="pending items per kind, drop counters, rejected items and reasons")
    add_config_args(status)
    status.add_argument("--json", action="store_true", help="one JSON object instead of text")
    status.set_defaults(func=_status)
    requeue = actions.add_parser("requeue", help="send rejected items again (after the relay was fixed)")
    add_config_args(requeue)
    requeue.add_argument("items", nargs="*", metavar="ITEM", help="item ids as `status` lists them")
    requeue.add_argument("--all", action="store_true", help="every rejected item")
    requeue.set_defaults(func=_requeue)


def _open(args: argparse.Namespace) -> sqlite3.Connection:
    from edge.db import DB_FILENAME, connect
    from edge.errors import OutboxError
    from edge.outbox import Outbox

    config = config_from_args(args)
    path = config.agent.data_dir / DB_FILENAME
    if not path.exists():
        raise OutboxError(f"no agent database at {path}")
    conn = connect(path)
    Outbox.migrate(conn)
    return conn


def _status(args: argparse.Namespace) -> int:
    from edge.outbox import Outbox

    conn = _open(args)
    try:
        stats = Outbox(config_from_args(args).outbox).stats(conn)
        rejected = Outbox.rejected(conn)
    finally:
        conn.close()
    if args.json:
        print(json.dumps({**stats, "rejected_items": [{"id": i, "kind": k, "reason": r} for i, k, r in rejected]}))
        return 0
    pending = ", ".join(f"{kind} {n}" for kind, n in sorted(stats["pending"].items())) or "nothing"
    print(f"pending: {pending} (oldest {stats['oldest_pending_age_s']} s)")
    dropped = ", ".join(f"{kind} {n}" for kind, n in sorted(stats["dropped"].items())) or "none"
    print(f"telemetry dropped: {dropped}")
    print(f"rejected by the relay: {stats['rejected']}")
    for item, kind, reason in rejected:
        print(f"  {item}  {kind}  {reason}")
    return 0


def _requeue(args: argparse.Namespace) -> int:
    from edge.errors import OutboxError
    from edge.outbox import Outbox

    if bool(args.items) == args.all:
        raise OutboxError("requeue: give item ids or --all (not both)")
    conn = _open(args)
    try:
        count = Outbox.requeue(conn, None if args.all else args.items)
    finally:
        conn.close()
    print(f"requeued {count} item(s)")
    return 0 if count or args.all else 1
