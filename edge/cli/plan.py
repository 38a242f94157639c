"""``btt-edge plan UID [--json | --fhir]``: the draft treatment plan of a study (or of one analysed image) on this
box, an AI draft for the dentist to review (docs/planning.md). ``--json`` prints :meth:`Plan.to_json
<edge.plan.planner.Plan.to_json>`; ``--fhir`` a FHIR R4 Bundle of the CarePlan and its ServiceRequests."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``plan`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("plan", help="draft treatment plan of a study (AI draft)")
    add_config_args(parser)
    parser.add_argument("uid", metavar="UID", help="a study's Study Instance UID, or an analysed image's SOP UID")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="the plan as one JSON document")
    form.add_argument("--fhir", action="store_true", help="FHIR R4 Bundle: CarePlan and ServiceRequests")
    parser.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    from edge.db import DB_FILENAME, connect
    from edge.plan.errors import PlanError
    from edge.plan.render import plan_lines
    from edge.plan.study import stored_headers, study_plan

    config = config_from_args(args)
    path = config.agent.data_dir / DB_FILENAME
    if not path.exists():
        raise PlanError(f"no agent database at {path}")
    conn = connect(path, readonly=True)
    try:
        plan = study_plan(conn, config.plan, args.uid, now_ms=int(time.time() * 1000))
        headers = stored_headers(conn, config.agent.data_dir, plan.instances) if args.fhir else {}
    finally:
        conn.close()
    if args.fhir:
        from edge.plan.fhir import analysed_images, plan_bundle
        from edge.results.uids import UidFactory

        bundle = plan_bundle(plan, analysed_images(plan, headers), UidFactory(config.results.org_root))
        print(json.dumps(bundle, indent=2, ensure_ascii=False))
    elif args.json:
        print(json.dumps(plan.to_json(), indent=2, ensure_ascii=False))
    else:
        print("\n".join(plan_lines(plan.to_json())))
    return 0
