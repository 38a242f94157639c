"""``btt-edge results list|resend``: the result objects, their delivery to each destination, and resending.

``fhir UID`` prints the FHIR R4 transaction Bundle of an analysed instance, or of every analysed instance of a
study (:mod:`edge.results.fhir`), from the box's records, as a FHIR destination would receive it; it needs no
destination. ``list --json`` prints one JSON object per result object (and forwarded original) with its deliveries:
destination (``AE@host:port``), state (``pending``, ``sent``, ``rejected``, ``dead``), attempts, when it is next
due, the last DIMSE status and error. ``resend`` puts rejected and dead deliveries (or, with ``--all``, every
matching one) back in the queue; a running agent picks them up at its next poll. ``list --failed`` shows the
images whose results could not be built, with the reason.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``results`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("results", help="AI result objects and their delivery to PACS")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="each result object and its delivery state per destination")
    add_config_args(listing)
    listing.add_argument("--json", action="store_true", help="one JSON array (for scripts)")
    listing.add_argument("--source", metavar="SOP_UID", help="only the results of this received instance")
    listing.add_argument("--failed", action="store_true", help="instead: images whose results could not be built")
    listing.set_defaults(func=_list)
    resend = actions.add_parser("resend", help="queue rejected and dead deliveries again")
    add_config_args(resend)
    resend.add_argument("--destination", metavar="AE@HOST:PORT", help="only to this destination")
    resend.add_argument("--object", metavar="SOP_UID", help="only this object")
    resend.add_argument("--all", action="store_true", help="also deliveries already sent (the PACS lost them)")
    resend.set_defaults(func=_resend)
    fhir = actions.add_parser("fhir", help="print the FHIR Bundle of an analysed instance or study")
    add_config_args(fhir)
    fhir.add_argument("uid", metavar="UID", help="SOP Instance UID, or Study Instance UID for the whole study")
    fhir.set_defaults(func=_fhir)


def _open(args: argparse.Namespace, *, write: bool) -> Any:
    from edge.db import DB_FILENAME, connect
    from edge.errors import ResultsError
    from edge.results.queue import migrate_results

    config = config_from_args(args)
    path = config.agent.data_dir / DB_FILENAME
    if not path.exists():
        raise ResultsError(f"no agent database at {path}")
    conn = connect(path, readonly=not write)
    if write:
        migrate_results(conn)
    elif not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'results_objects'").fetchone():
        return None
    return conn


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _status(destination: str, status: int | None) -> str | None:
    """A DIMSE status in hex; an HTTP status (a ``dicomweb:`` or ``fhir:`` destination) as it is."""
    if status is None:
        return None
    return str(status) if destination.startswith(("dicomweb:", "fhir:")) else f"0x{status:04X}"


def _doc(status: Any) -> dict[str, Any]:
    obj = status.object
    return {
        "object_uid": obj.object_uid,
        "kind": obj.kind,
        "source_sop_uid": obj.source_sop_uid,
        "study_uid": obj.study_uid,
        "sop_class_uid": obj.sop_class_uid,
        "path": obj.path,
        "size_bytes": obj.size_bytes,
        "sha256": obj.sha256,
        "created_at": status.created_at,
        "deliveries": [
            {
                "destination": d.destination,
                "state": d.state,
                "attempts": d.attempts,
                "next_attempt_at": _iso(d.next_attempt_at) if d.state == "pending" else None,
                "last_status": _status(d.destination, d.last_status),
                "last_error": d.last_error,
                "sent_at": d.sent_at,
            }
            for d in status.deliveries
        ],
    }


def _list(args: argparse.Namespace) -> int:
    from edge.results.queue import failed_sources, list_objects

    conn = _open(args, write=False)
    if args.failed:
        failed = [] if conn is None else failed_sources(conn)
        if args.json:
            print(json.dumps([{"sop_instance_uid": u, "reason": r, "at": a} for u, r, a in failed], indent=2))
        else:
            for uid, reason, at in failed:
                print(f"{at}  {uid}  {reason}")
        return 0
    docs = [] if conn is None else [_doc(s) for s in list_objects(conn, source_sop_uid=args.source)]
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    for doc in docs:
        print(f"{doc['created_at']}  {doc['kind']:<8} {doc['object_uid']}  (source {doc['source_sop_uid']})")
        for d in doc["deliveries"]:
            extra = f" status {d['last_status']}" if d["last_status"] else ""
            extra += f" next {d['next_attempt_at']}" if d["next_attempt_at"] else ""
            extra += f" error: {d['last_error']}" if d["last_error"] else ""
            print(f"    {d['destination']:<32} {d['state']:<9} attempts {d['attempts']}{extra}")
    if not docs:
        print("no result objects")
    return 0


def _resend(args: argparse.Namespace) -> int:
    from edge.results.queue import DELIVERY_STATES, resend

    conn = _open(args, write=True)
    states = DELIVERY_STATES if args.all else ("rejected", "dead")
    count = resend(conn, now=time.time(), object_uid=args.object, destination=args.destination, states=states)
    print(f"{count} deliveries queued again")
    return 0


def _fhir(args: argparse.Namespace) -> int:
    from edge.agent import updater_for
    from edge.db import DB_FILENAME, connect
    from edge.errors import ResultsError
    from edge.results.analysis import RecordedAnalyses, recorded_images
    from edge.results.fhir import AnalysedImage, build_bundle
    from edge.results.uids import UidFactory
    from models.bundle import load_bundle

    config = config_from_args(args)
    path = config.agent.data_dir / DB_FILENAME
    if not path.exists():
        raise ResultsError(f"no agent database at {path}")
    paths = (updater_for(config).active_path(), *config.pipeline.extra_bundles)
    analyses = RecordedAnalyses(lambda: tuple(load_bundle(p).manifest for p in paths))
    conn = connect(path, readonly=True)
    images = [AnalysedImage(h, a) for h, a in recorded_images(conn, config.agent.data_dir, args.uid, analyses)]
    uids = UidFactory(config.results.org_root)
    from edge.plan.study import plan_entries_for  # the draft plan's CarePlan and ServiceRequests (docs/planning.md)

    extra = plan_entries_for(conn, config.plan, args.uid, images, uids)
    print(json.dumps(build_bundle(images, uids, extra=extra), indent=2, ensure_ascii=False))
    return 0
