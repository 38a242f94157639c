"""``btt-relay``: run a relay worker, and the operator's admin commands on the relay database.

::

    btt-relay run --db URL --mqtt URL --http-port N     # a worker (N = 0: no clinic API in this worker)
    btt-relay clinic add ID --name NAME
    btt-relay token add CLINIC [--label L]               # prints a new API token once
    btt-relay token add --admin [--label L]              # an operator token: the portal's view of every clinic
    btt-relay device add ID [--clinic C] [--asset A] [--certificate FILE]
    btt-relay device revoke ID --reason TEXT
    btt-relay device list [--clinic C]
    btt-relay trust add manufacturer|issuer PUBLIC_KEY_FILE
    btt-relay trust revocations FILE                     # a manufacturer-signed revocation list
    btt-relay grant add FILE | shares add FILE | tariff set KIND CURRENCY AMOUNT
    btt-relay ledger export --period YYYY-MM [--format csv|json] [--clinic C] [--out FILE]
    btt-relay rejects [--limit N]

``--db`` is a SQLite file path or a ``postgresql://`` URL (also ``$BTT_RELAY_DB``). Every command exits 0 on
success and 2 with one line on standard error for a bad argument, an unknown id or an unreachable peer; ``run``
exits 2 too when one of its threads fails (the traceback is in the log).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cloud_relay.chain.cli import register as register_chain
from cloud_relay.chain.config import DEFAULT_CONFIRMATIONS, ChainConfig
from cloud_relay.config import HttpConfig, IngestConfig, LedgerConfig, MqttConfig, RelayConfig
from cloud_relay.errors import RelayError, WorkerFailed
from cloud_relay.ledger import Ledger
from cloud_relay.registry import ISSUER, MANUFACTURER, Registry
from cloud_relay.storage import Database, open_database
from protocol.encoding import decode
from protocol.errors import ProtocolError
from protocol.keyfiles import load_public_key
from protocol.money import Money
from runtime.durable import atomic_write_bytes
from runtime.logs import configure_logging

__all__ = ["main", "run"]

Handler = Callable[[argparse.Namespace, Database], int]


def _read_json(path: str) -> Any:
    try:
        return decode(Path(path).read_bytes())
    except OSError as exc:
        raise RelayError(f"cannot read {path}: {exc.strerror}") from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="btt-relay", description="BTT Edge cloud relay.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, func: Handler, parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text)
        p.add_argument("--db", default=os.environ.get("BTT_RELAY_DB"), help="SQLite path or postgresql:// URL")
        p.set_defaults(func=func)
        return p

    run_p = command("run", "run a relay worker: consume, verify, store, ack; serve the clinic API", _run)
    run_p.add_argument("--mqtt", help="broker URL mqtt[s]://user:password@host:port (omit: API only)")
    run_p.add_argument("--http-port", type=int, default=0, help="clinic API port (0: none)")
    run_p.add_argument("--http-host", default="127.0.0.1")
    run_p.add_argument("--client-id", default="btt-relay-1", help="unique per worker")
    run_p.add_argument("--group", default="btt-relay", help="shared-subscription group of the workers")
    run_p.add_argument("--ca-file", type=Path)
    run_p.add_argument("--cert-file", type=Path)
    run_p.add_argument("--key-file", type=Path)
    run_p.add_argument("--batch-max", type=int, default=IngestConfig.batch_max)
    run_p.add_argument("--batch-wait-ms", type=int, default=IngestConfig.batch_wait_ms)
    run_p.add_argument(
        "--verify-threads",
        type=int,
        default=IngestConfig.verify_threads,
        help="threads checking signatures side by side (default %(default)s)",
    )
    run_p.add_argument("--operator", default=LedgerConfig.operator, help="billed for uses without a right")
    run_p.add_argument("--log-format", choices=("text", "json"), default="text")
    run_p.add_argument("--capacity-key", type=Path, help="private key file signing spare-capacity jobs (dispatch on)")
    run_p.add_argument("--chain", help="JSON-RPC URL of the ledger chain (omit: no chain; README 'Ledger')")
    run_p.add_argument("--chain-key", type=Path, help="the relay's chain keystore (password: $BTT_CHAIN_KEY_PASSWORD)")
    run_p.add_argument("--chain-confirmations", type=int, default=DEFAULT_CONFIRMATIONS, help="blocks deep")

    clinic = sub.add_parser("clinic", help="clinics").add_subparsers(dest="action", required=True)
    p = command("add", "register a clinic", _clinic_add, clinic)
    p.add_argument("id")
    p.add_argument("--name", required=True)

    token = sub.add_parser("token", help="clinic API tokens").add_subparsers(dest="action", required=True)
    p = command("add", "create an API token for a clinic (printed once)", _token_add, token)
    p.add_argument("clinic", nargs="?")
    p.add_argument("--admin", action="store_true", help="an operator token (portal only, every clinic) instead")
    p.add_argument("--label", default="")

    device = sub.add_parser("device", help="devices").add_subparsers(dest="action", required=True)
    p = command("add", "register or re-assign a device", _device_add, device)
    p.add_argument("id")
    p.add_argument("--clinic")
    p.add_argument("--asset", help="the asset its revenue shares are kept for (default: the device id)")
    p.add_argument("--certificate", help="the device certificate JSON (verified against the manufacturer keys)")
    p = command("revoke", "revoke a device: its receipts are rejected from now on", _device_revoke, device)
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p = command("list", "list devices", _device_list, device)
    p.add_argument("--clinic")

    trust = sub.add_parser("trust", help="trusted public keys").add_subparsers(dest="action", required=True)
    p = command(
        "add", "trust a manufacturer (device certificates) or issuer (grants, share tables) key", _trust_add, trust
    )
    p.add_argument("role", choices=(MANUFACTURER, ISSUER))
    p.add_argument("key_file")
    p = command("revocations", "apply a revocation list signed by a trusted manufacturer", _revocations, trust)
    p.add_argument("file")

    grant = sub.add_parser("grant", help="grants").add_subparsers(dest="action", required=True)
    command("add", "add a signed grant", _grant_add, grant).add_argument("file")
    shares = sub.add_parser("shares", help="share tables").add_subparsers(dest="action", required=True)
    command("add", "add a signed share table", _shares_add, shares).add_argument("file")
    tariff = sub.add_parser("tariff", help="prices of uses without a right").add_subparsers(
        dest="action", required=True
    )
    p = command("set", "set the price of one unit of a service kind", _tariff_set, tariff)
    p.add_argument("kind")
    p.add_argument("currency")
    p.add_argument("amount", type=int, help="minor units")

    ledger = sub.add_parser("ledger", help="the settlement ledger").add_subparsers(dest="action", required=True)
    p = command("export", "charges per clinic and payouts per owner for a month", _ledger_export, ledger)
    p.add_argument("--period", required=True, help="YYYY-MM (UTC)")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--clinic")
    p.add_argument("--out", type=Path)
    p.add_argument("--operator", default=LedgerConfig.operator)

    p = command("rejects", "the most recent rejected items and why", _rejects)
    p.add_argument("--limit", type=int, default=50)
    register_chain(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``btt-relay``."""
    args = _parser().parse_args(argv)
    if not args.db:
        print("btt-relay: --db (or BTT_RELAY_DB) is required", file=sys.stderr)
        return 2
    try:
        db = open_database(args.db)
    except RelayError as exc:
        print(f"btt-relay: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args, db))
    except (RelayError, ProtocolError) as exc:
        print(f"btt-relay: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()


def run(config: RelayConfig, db: Database, stop: threading.Event) -> None:
    """Run one worker until ``stop`` is set: the consumer (when ``config.mqtt``) and the API (when a port).

    A worker thread that dies of an unexpected error sets ``stop``; everything is shut down and
    :class:`WorkerFailed` raised (``btt-relay run`` exits 2), never a process whose API answers while its ingest
    is gone.
    """
    from cloud_relay.consumer import Consumer
    from cloud_relay.ingest import Ingestor

    failures: list[tuple[str, BaseException]] = []

    def failed(thread: str) -> Callable[[BaseException], None]:
        def record(exc: BaseException) -> None:  # from the failing thread: stop everything, then exit non-zero
            failures.append((thread, exc))
            stop.set()

        return record

    consumer = None
    ingestor = Ingestor(db, verify_threads=config.ingest.verify_threads)
    if config.mqtt is not None:
        consumer = Consumer(config.mqtt, ingestor, config.ingest, on_failure=failed("consumer"))
        consumer.start()
    capacity = None  # spare-capacity dispatch (cloud_relay.capacity), with --capacity-key
    if config.mqtt is not None and config.capacity_key is not None:
        from cloud_relay.capacity import CapacityLink, Coordinator
        from protocol.keyfiles import load_private_key

        capacity = CapacityLink(
            config.mqtt, Coordinator(db, load_private_key(config.capacity_key)), on_failure=failed("capacity link")
        )
        capacity.start()
    chain = None  # the ledger chain (cloud_relay.chain), with --chain
    if config.chain is not None:
        from cloud_relay.chain.service import ChainService, open_chain

        opened = open_chain(db, config.chain)
        assert opened.contracts is not None
        chain = ChainService(db, config.chain, opened.client, opened.contracts, on_failure=failed("chain service"))
        chain.start()
    try:
        if config.http.port:
            import uvicorn

            from cloud_relay.api import create_app

            view = None
            if chain is not None:
                from cloud_relay.chain.view import JournalView

                view = JournalView(db)
            app = create_app(db, Ledger(db, operator=config.ledger.operator), chain=view)
            server = uvicorn.Server(
                uvicorn.Config(app, host=config.http.host, port=config.http.port, log_level="warning")
            )

            def shut_down_on_stop() -> None:
                stop.wait()
                server.should_exit = True

            watcher = threading.Thread(target=shut_down_on_stop, daemon=True)
            watcher.start()
            server.run()
            stop.set()
        else:
            stop.wait()
    finally:
        if chain is not None:
            chain.stop()
        if capacity is not None:
            capacity.stop()
        if consumer is not None:
            consumer.stop()
        ingestor.close()
    if failures:
        thread, exc = failures[0]
        raise WorkerFailed(f"the {thread} failed ({type(exc).__name__}: {exc}); exiting") from exc


def _run(args: argparse.Namespace, db: Database) -> int:
    configure_logging(args.log_format)
    config = RelayConfig(
        db=args.db,
        mqtt=None
        if args.mqtt is None
        else MqttConfig.from_url(
            args.mqtt,
            group=args.group,
            client_id=args.client_id,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
        ),
        http=HttpConfig(host=args.http_host, port=args.http_port),
        ingest=IngestConfig(
            batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms, verify_threads=args.verify_threads
        ),
        ledger=LedgerConfig(operator=args.operator),
        capacity_key=args.capacity_key,
        chain=None
        if args.chain is None
        else ChainConfig(url=args.chain, key_file=args.chain_key, confirmations=args.chain_confirmations),
    )
    if config.mqtt is None and not config.http.port:
        raise RelayError("nothing to run: give --mqtt, --http-port, or both")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(config, db, stop)
    return 0


def _clinic_add(args: argparse.Namespace, db: Database) -> int:
    Registry(db).add_clinic(args.id, args.name)
    print(f"clinic {args.id} registered")
    return 0


def _token_add(args: argparse.Namespace, db: Database) -> int:
    if args.admin == (args.clinic is not None):
        raise RelayError("token add: give a CLINIC, or --admin for an operator token (not both)")
    registry = Registry(db)
    print(registry.add_admin_token(args.label) if args.admin else registry.add_token(args.clinic, args.label))
    return 0


def _device_add(args: argparse.Namespace, db: Database) -> int:
    cert = None if args.certificate is None else _read_json(args.certificate)
    Registry(db).add_device(args.id, clinic=args.clinic, asset=args.asset, certificate=cert)
    print(f"device {args.id} registered" + (f" to clinic {args.clinic}" if args.clinic else " (no clinic)"))
    return 0


def _device_revoke(args: argparse.Namespace, db: Database) -> int:
    Registry(db).revoke_device(args.id, args.reason)
    print(f"device {args.id} revoked")
    return 0


def _device_list(args: argparse.Namespace, db: Database) -> int:
    for info in Registry(db).devices(args.clinic):
        print(json.dumps(info.to_json()))
    return 0


def _trust_add(args: argparse.Namespace, db: Database) -> int:
    key = load_public_key(Path(args.key_file))
    Registry(db).add_trust_key(args.role, key)
    print(f"trusting {args.role} key {key.keyid[:16]}")
    return 0


def _revocations(args: argparse.Namespace, db: Database) -> int:
    count = Registry(db).add_revocations(_read_json(args.file))
    print(f"revocation list applied: {count} key(s) revoked")
    return 0


def _grant_add(args: argparse.Namespace, db: Database) -> int:
    grant = Ledger(db, operator=LedgerConfig.operator).add_grant(_read_json(args.file))
    print(f"grant {grant.id} for {grant.holder} added")
    return 0


def _shares_add(args: argparse.Namespace, db: Database) -> int:
    table = Ledger(db, operator=LedgerConfig.operator).add_share_table(_read_json(args.file))
    print(f"share table {table.asset} v{table.version} added")
    return 0


def _tariff_set(args: argparse.Namespace, db: Database) -> int:
    Ledger(db, operator=LedgerConfig.operator).set_tariff(args.kind, Money(args.currency, args.amount))
    print(f"tariff {args.kind}: {args.amount} {args.currency} per unit")
    return 0


def _ledger_export(args: argparse.Namespace, db: Database) -> int:
    statement = Ledger(db, operator=args.operator).statement(args.period, args.clinic)
    text = statement.to_csv() if args.format == "csv" else statement.to_json_text()
    if args.out is None:
        sys.stdout.write(text)
    else:
        atomic_write_bytes(args.out, text.encode("utf-8"))
    return 0


def _rejects(args: argparse.Namespace, db: Database) -> int:
    with db.transaction() as tx:
        rows = tx.all(
            "SELECT received_ms, device, kind, item_id, reason FROM rejects ORDER BY id DESC LIMIT ?", (args.limit,)
        )
    for received, device, kind, item, reason in rows:
        print(json.dumps({"received_ms": received, "device": device, "kind": kind, "id": item, "reason": reason}))
    return 0
