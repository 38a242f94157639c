"""``btt-edge receipts list|export|verify|prove|verify-proof|settle|grant|balances``: for technicians and auditors.

``verify`` is the pure verifier (:mod:`protocol.verify`) over an export: exit 0 when everything is valid,
1 naming the first failure (its error class and what failed).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``receipts`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("receipts", help="list, export, verify and settle receipts")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the latest receipts, one line each")
    add_config_args(listing)
    listing.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    listing.set_defaults(func=_list)
    export = actions.add_parser("export", help="write receipts, settlements and the certificate as JSON")
    add_config_args(export)
    export.add_argument("--out", type=Path, required=True, metavar="FILE")
    export.set_defaults(func=_export)
    verify = actions.add_parser("verify", help="verify an export; exit 1 naming the first failure")
    verify.add_argument("file", type=Path, metavar="FILE")
    verify.add_argument("--trust", type=Path, action="append", required=True, metavar="PUBKEY_FILE")
    verify.add_argument("--revocations", type=Path, metavar="FILE", help="manufacturer's signed revocation list")
    verify.set_defaults(func=_verify)
    prove = actions.add_parser("prove", help="write an inclusion proof of one settled receipt as JSON")
    add_config_args(prove)
    prove.add_argument("seq", type=int, metavar="SEQ")
    prove.add_argument("--out", type=Path, required=True, metavar="FILE")
    prove.set_defaults(func=_prove)
    check = actions.add_parser("verify-proof", help="verify an inclusion proof; exit 1 naming the failure")
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--trust", type=Path, action="append", required=True, metavar="PUBKEY_FILE")
    check.add_argument("--revocations", type=Path, metavar="FILE", help="manufacturer's signed revocation list")
    check.set_defaults(func=_verify_proof)
    settle = actions.add_parser("settle", help="close settlements over every unsettled receipt now")
    add_config_args(settle)
    settle.set_defaults(func=_settle)
    grant = actions.add_parser("grant", help="install a signed grant (checked against receipts.issuer_keys)")
    add_config_args(grant)
    grant.add_argument("file", type=Path, metavar="GRANT_FILE")
    grant.set_defaults(func=_grant)
    balances = actions.add_parser("balances", help="installed grants and their remaining units")
    add_config_args(balances)
    balances.set_defaults(func=_balances)


def _open(args: argparse.Namespace, *, write: bool = False) -> Any:
    from edge.db import DB_FILENAME, connect
    from edge.errors import ReceiptError
    from edge.receipts.book import ReceiptBook
    from edge.receipts.identity import load_identity
    from edge.receipts.service import key_files

    config = config_from_args(args)
    path = config.agent.data_dir / DB_FILENAME
    if not path.exists():
        raise ReceiptError(f"no agent database at {path}")
    conn = connect(path, readonly=not write)
    if write:
        ReceiptBook.migrate(conn)
    elif conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'receipts'").fetchone() is None:
        raise ReceiptError(f"{path} has no receipts yet (the agent creates the tables on its first run)")
    return config, conn, ReceiptBook(load_identity(key_files(config)))


def _list(args: argparse.Namespace) -> int:
    _, conn, _ = _open(args)
    rows = conn.execute(
        "SELECT seq, time_ms, kind, units, overage_units, right_id,"
        " seq <= coalesce((SELECT max(last_seq) FROM receipt_settlements), 0) AS settled"
        " FROM receipts ORDER BY seq DESC LIMIT ?",
        (args.limit,),
    ).fetchall()
    print(f"{'seq':>8}  {'time (UTC)':<20} {'kind':<10} {'units':>5} {'over':>5}  {'right':<24} settled")
    for row in reversed(rows):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["time_ms"] / 1000))
        print(
            f"{row['seq']:>8}  {stamp:<20} {row['kind']:<10} {row['units']:>5} {row['overage_units']:>5}  "
            f"{row['right_id'] or '-':<24} {'yes' if row['settled'] else 'no'}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    import json

    from runtime.durable import atomic_write_bytes

    _, conn, book = _open(args)
    doc = book.export(conn)
    atomic_write_bytes(args.out, json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    print(f"exported {len(doc['receipts'])} receipts and {len(doc['settlements'])} settlements to {args.out}")
    return 0


def _checked(args: argparse.Namespace, check: Callable[[Any, Any], str]) -> int:
    """Run a pure verifier over the file in ``args``; print ``ok: ...`` (0) or ``FAIL <error>: ...`` (1)."""
    from protocol.encoding import decode
    from protocol.errors import EncodingError, VerificationError
    from protocol.keyfiles import load_public_key
    from protocol.verify import Trust

    keys = [load_public_key(p) for p in args.trust]
    try:
        revocations = decode(args.revocations.read_bytes()) if args.revocations else None
        summary = check(decode(args.file.read_bytes()), Trust.of(keys, revocations))
    except OSError as exc:
        print(f"FAIL cannot read {exc.filename}: {exc.strerror}")
        return 1
    except (VerificationError, EncodingError) as exc:
        print(f"FAIL {type(exc).__name__}: {exc}")
        return 1
    print(f"ok: {summary}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from protocol.verify import verify_export

    def check(doc: Any, trust: Any) -> str:
        result = verify_export(doc, trust)
        return (
            f"device {result.device}, {len(result.receipts)} receipts, {len(result.settlements)} settlements, "
            f"{result.unsettled} unsettled"
        )

    return _checked(args, check)


def _verify_proof(args: argparse.Namespace) -> int:
    from protocol.verify import verify_proof

    def check(doc: Any, trust: Any) -> str:
        receipt, settlement = verify_proof(doc, trust)
        return f"receipt {receipt.seq} of {receipt.device} is in settlement {settlement.batch}"

    return _checked(args, check)


def _prove(args: argparse.Namespace) -> int:
    from protocol.encoding import canonical_bytes
    from runtime.durable import atomic_write_bytes

    _, conn, book = _open(args)
    atomic_write_bytes(args.out, canonical_bytes(book.prove(conn, args.seq)) + b"\n")
    print(f"inclusion proof of receipt {args.seq} written to {args.out}")
    return 0


def _settle(args: argparse.Namespace) -> int:
    config, conn, book = _open(args, write=True)
    closed = 0
    while book.close_batch(conn, config.receipts.settle_max_receipts) is not None:
        closed += 1
    print(f"closed {closed} settlement(s)")
    return 0


def _grant(args: argparse.Namespace) -> int:
    from edge.db import transaction
    from edge.errors import IdentityError
    from edge.receipts.grants import install_grant
    from protocol.encoding import decode
    from protocol.keyfiles import load_public_key

    config, conn, book = _open(args, write=True)
    if book.identity is None:
        raise IdentityError("this box has no device identity yet: run `btt-edge provision`")
    issuers = {k.keyid: k for k in (load_public_key(Path(p)) for p in config.receipts.issuer_keys)}
    with transaction(conn):
        grant = install_grant(
            conn, decode(args.file.read_bytes()), issuers, config.receipts.asset_id or book.identity.device_id
        )
    print(f"grant {grant.id} installed: {grant.units} x {grant.kind} for {grant.holder}")
    return 0


def _balances(args: argparse.Namespace) -> int:
    from edge.receipts.grants import list_grants

    _, conn, _ = _open(args)
    for g in list_grants(conn):
        print(f"{g['id']:<24} {g['kind']:<10} {g['holder']:<20} {g['remaining']:>8} of {g['units']:<8}")
    return 0
