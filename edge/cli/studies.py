"""``btt-edge studies list [--json]``: the received studies and their instances, from the index."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``studies`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("studies", help="list received studies")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every study, newest first, with its instances")
    add_config_args(listing)
    listing.add_argument("--json", action="store_true", help="one JSON document with every instance")
    listing.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    from edge.db import DB_FILENAME, connect
    from edge.errors import StoreError
    from edge.store.index import list_instances, list_studies

    config = config_from_args(args)
    path = config.agent.data_dir / DB_FILENAME
    if not path.exists():
        raise StoreError(f"no agent database at {path}")
    conn = connect(path, readonly=True)
    try:
        indexed = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'instances'").fetchone() is not None
        studies = list_studies(conn) if indexed else []
        instances = list_instances(conn) if indexed else []
    finally:
        conn.close()
    by_study: dict[str, list[dict[str, Any]]] = {}
    for instance in instances:
        by_study.setdefault(instance.study_uid, []).append(dataclasses.asdict(instance))
    if args.json:
        doc = [{**dataclasses.asdict(s), "instances": by_study.get(s.study_uid, [])} for s in studies]
        print(json.dumps({"studies": doc}, indent=2))
        return 0
    print(f"{'last received (UTC)':<24} {'patient':<24} {'date':<8} {'n':>4} {'MB':>8}  states  study")
    for s in studies:
        states = ",".join(f"{k}:{v}" for k, v in sorted(s.states.items()))
        name = f"{s.patient_id} {s.patient_name}".strip()[:24]
        print(
            f"{s.last_received_at:<24} {name:<24} {s.study_date:<8} {s.instance_count:>4} "
            f"{s.size_bytes / 1e6:>8.1f}  {states}  {s.study_uid}"
        )
    return 0
