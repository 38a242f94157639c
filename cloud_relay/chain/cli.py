"""``btt-relay chain ...``: the operator's commands for the relay's ledger chain (registered by
:func:`register` from :mod:`cloud_relay.cli`; nothing here imports web3 until a chain command runs).

::

    btt-relay chain key new FILE [--private-key-env VAR]   # a keystore (password: $BTT_CHAIN_KEY_PASSWORD[_FILE])
    btt-relay chain deploy --chain URL --chain-key FILE [--issuer 0x..] [--test-token CNY:2]
    btt-relay chain address PARTY 0x...                 # a clinic's or an owner's chain address
    btt-relay chain token CURRENCY 0x...                # the ERC-20 standing for a currency
    btt-relay chain mint GRANT_FILE                     # the issuer's signed grant: define + mint on chain
    btt-relay chain shares SHARE_TABLE_FILE             # a signed share table's first version as shares on chain
    btt-relay chain grants --clinic C --issuer-key FILE [--out DIR]   # grants for rights bought on chain
    btt-relay chain disburse --period YYYY-MM --currency CNY          # publish the period's payouts
    btt-relay chain claim --period YYYY-MM --currency CNY --owner O [--proof-only]
    btt-relay chain verify --device ID --seq N          # exit 0: the receipt holds against the anchored root
    btt-relay chain status [--all]

Commands that journal transactions (mint, shares, disburse, claim) send them right away and wait for their
confirmations when given ``--chain URL --chain-key FILE``; without them the transactions wait in the journal for
the relay that runs with ``--chain``. ``--chain`` defaults to ``$BTT_CHAIN_URL``, then to the URL ``deploy`` used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_relay.chain.config import DEFAULT_CONFIRMATIONS, ChainConfig
from cloud_relay.chain.errors import ChainConfigError, NotAnchored
from cloud_relay.errors import RelayError
from cloud_relay.storage import Database

if TYPE_CHECKING:
    from cloud_relay.chain.service import Chain

__all__ = ["chain_config", "register"]

Handler = Callable[[argparse.Namespace, Database], int]
Command = Callable[..., argparse.ArgumentParser]


def _node_options(p: argparse.ArgumentParser, *, key_required: bool = False) -> None:
    p.add_argument("--chain", default=os.environ.get("BTT_CHAIN_URL"), help="JSON-RPC URL (default: $BTT_CHAIN_URL)")
    p.add_argument("--chain-key", type=Path, required=key_required, help="the relay's keystore file")
    p.add_argument("--confirmations", type=int, default=DEFAULT_CONFIRMATIONS, help="blocks deep (default %(default)s)")


def register(sub: Any, command: Command) -> None:
    """Add ``chain`` and its subcommands to the ``btt-relay`` parser (``command`` adds ``--db`` and the handler)."""
    chain = sub.add_parser("chain", help="the ledger on an Ethereum-compatible chain").add_subparsers(
        dest="action", required=True
    )
    key = chain.add_parser("key", help="the relay's chain key").add_subparsers(dest="key_action", required=True)
    p = command(
        "new", "write a keystore (a new key, or the hex key in --private-key-env); prints its address", _key_new, key
    )
    p.add_argument("file", type=Path)
    p.add_argument("--private-key-env", help="environment variable holding an existing private key (hex)")

    p = command("deploy", "deploy the contracts, grant roles, store and print their addresses", _deploy, chain)
    _node_options(p, key_required=True)
    p.add_argument("--issuer", help="address given ISSUER_ROLE (default: the relay's key)")
    p.add_argument("--test-token", help="also deploy a test stablecoin for CURRENCY:DECIMALS (e.g. CNY:2)")

    p = command("address", "set the chain address of a clinic or an owner", _address, chain)
    p.add_argument("party")
    p.add_argument("address")
    p = command("token", "set the ERC-20 token of a currency", _token, chain)
    p.add_argument("currency")
    p.add_argument("address")

    p = command("mint", "mint the rights of an issuer's signed grant to its holder", _mint, chain)
    p.add_argument("file")
    _node_options(p)
    p = command("shares", "issue a signed share table (its first version) as shares on chain", _shares, chain)
    p.add_argument("file")
    _node_options(p)
    p = command("grants", "sign grants for the rights a clinic holds on chain beyond its grants", _grants, chain)
    p.add_argument("--clinic", required=True)
    p.add_argument("--issuer-key", type=Path, required=True, help="an issuer private key file the boxes trust")
    p.add_argument("--out", type=Path, help="write each grant to DIR/<id>.json")
    _node_options(p)
    p = command("disburse", "publish a period's owner payouts in one currency", _disburse, chain)
    p.add_argument("--period", required=True)
    p.add_argument("--currency", required=True)
    p.add_argument("--operator", default="operator")
    _node_options(p)
    p = command("claim", "claim an owner's payout (or print its proof)", _claim, chain)
    p.add_argument("--period", required=True)
    p.add_argument("--currency", required=True)
    p.add_argument("--owner", required=True)
    p.add_argument("--proof-only", action="store_true")
    _node_options(p)
    p = command("verify", "check a stored receipt against the anchored root on chain", _verify, chain)
    p.add_argument("--device", required=True)
    p.add_argument("--seq", type=int, required=True)
    _node_options(p)
    p = command("status", "contracts and the journal", _status, chain)
    p.add_argument("--all", action="store_true", help="every journal entry, not only the open ones")


def chain_config(url: str | None, key: Path | None, confirmations: int = DEFAULT_CONFIRMATIONS) -> ChainConfig:
    if not url:
        raise ChainConfigError("--chain URL (or $BTT_CHAIN_URL) is required")
    return ChainConfig(url=url, key_file=key, confirmations=confirmations)


def _open(args: argparse.Namespace, db: Database, *, signing: bool, deployed: bool = True) -> Chain:
    from cloud_relay.chain.service import open_chain
    from cloud_relay.chain.store import ChainStore, migrate

    migrate(db)
    url = args.chain or ChainStore(db).setting("url")
    return open_chain(db, chain_config(url, args.chain_key, args.confirmations), deployed=deployed, signing=signing)


def _send_now(args: argparse.Namespace, db: Database, chain: Chain | None) -> None:
    """With a key: drive the journal until nothing is open; without: leave it to ``btt-relay run --chain``."""
    if chain is None:
        print("journalled: the relay running with --chain sends it", file=sys.stderr)
        return
    from cloud_relay.chain.journal import Journal

    assert chain.contracts is not None
    config = chain_config(args.chain, args.chain_key, args.confirmations)
    left = Journal(db, chain.client, chain.contracts, config).settle(max_passes=600, tick=lambda: time.sleep(0.5))
    if left:
        raise RelayError(f"{len(left)} transaction(s) still open: {json.dumps([e.to_json() for e in left][:3])}")


def _maybe_open(args: argparse.Namespace, db: Database) -> tuple[Chain | None, Any]:
    """The open chain when a key is given (else None), and the contracts (from the stored addresses)."""
    from cloud_relay.chain.client import Contracts
    from cloud_relay.chain.store import ChainStore, migrate

    if args.chain_key is not None:
        chain = _open(args, db, signing=True)
        return chain, chain.contracts
    migrate(db)
    return None, Contracts(ChainStore(db).contracts())


def _key_new(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.keys import create_keystore, read_password

    secret = os.environ.get(args.private_key_env) if args.private_key_env else None
    if args.private_key_env and not secret:
        raise ChainConfigError(f"${args.private_key_env} is empty")
    print(create_keystore(args.file, read_password(), secret))
    return 0


def _deploy(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.deploy import deploy
    from cloud_relay.chain.store import checked_address

    chain = _open(args, db, signing=True, deployed=False)
    token = None
    if args.test_token:
        symbol, _, decimals = args.test_token.partition(":")
        if not decimals.isdigit():
            raise ChainConfigError(f"--test-token {args.test_token!r} must be CURRENCY:DECIMALS")
        token = (symbol, int(decimals))
    issuer = None if args.issuer is None else checked_address(args.issuer, "--issuer")
    config = chain_config(args.chain, args.chain_key, args.confirmations)
    addresses = deploy(chain.store, chain.client, config, lambda: time.sleep(0.5), issuer=issuer, test_token=token)
    chain.store.set_setting("url", config.url)
    print(json.dumps({"chain_id": chain.client.chain_id(), "relay": chain.client.address, **addresses}, indent=2))
    return 0


def _address(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.store import ChainStore, migrate

    migrate(db)
    print(f"{args.party}: {ChainStore(db).set_address(args.party, args.address)}")
    return 0


def _token(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.store import ChainStore, migrate
    from protocol.money import Money

    migrate(db)
    Money(args.currency, 0)  # checks the code
    print(f"{args.currency}: {ChainStore(db).set_token(args.currency, args.address)}")
    return 0


def _read(path: str) -> Any:
    from protocol.encoding import decode

    try:
        return decode(Path(path).read_bytes())
    except OSError as exc:
        raise RelayError(f"cannot read {path}: {exc.strerror}") from exc


def _mint(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.rights import request_mint
    from cloud_relay.chain.store import ChainStore
    from cloud_relay.ledger import Ledger

    chain, contracts = _maybe_open(args, db)
    row = request_mint(ChainStore(db), contracts, Ledger(db, operator="operator"), _read(args.file))
    _send_now(args, db, chain)
    print(json.dumps({"grant": row.grant_id, "right_id": row.right_id, "holder": row.holder, "units": row.units}))
    return 0


def _shares(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.rights import request_shares
    from cloud_relay.chain.store import ChainStore
    from cloud_relay.ledger import Ledger

    chain, contracts = _maybe_open(args, db)
    issued = request_shares(ChainStore(db), contracts, Ledger(db, operator="operator"), _read(args.file))
    _send_now(args, db, chain)
    print(json.dumps(issued))
    return 0


def _grants(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.rights import issue_grants
    from cloud_relay.ledger import Ledger
    from protocol.keyfiles import load_private_key

    chain = _open(args, db, signing=False)
    assert chain.contracts is not None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    made = issue_grants(
        chain.store, chain.contracts, chain.client, Ledger(db, operator="operator"), args.clinic,
        issuer=load_private_key(args.issuer_key), confirmations=args.confirmations, out_dir=args.out,
    )  # fmt: skip
    for envelope in made:
        print(json.dumps({"grant": envelope["signed"]["id"], "units": envelope["signed"]["units"]}))
    return 0


def _disburse(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.disburse import plan_disbursement
    from cloud_relay.ledger import Ledger

    chain = _open(args, db, signing=args.chain_key is not None)
    assert chain.contracts is not None
    d = plan_disbursement(
        chain.store,
        chain.contracts,
        chain.client,
        Ledger(db, operator=args.operator),
        args.period,
        currency=args.currency,
    )
    _send_now(args, db, chain if args.chain_key is not None else None)
    print(json.dumps({"period": d.period, "currency": d.currency, "token": d.token, "root": d.root,
                      "total": d.total, "claims": d.claims}, indent=2))  # fmt: skip
    return 0


def _claim(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.disburse import claim_proof, plan_claim
    from cloud_relay.chain.store import ChainStore, migrate
    from cloud_relay.errors import RegistryError

    if args.proof_only:
        migrate(db)
        d = ChainStore(db).disbursement(args.period, args.currency)
        if d is None:
            raise RegistryError(f"no disbursement in {args.currency} for {args.period}")
        print(json.dumps(claim_proof(d, args.owner), indent=2))
        return 0
    chain, contracts = _maybe_open(args, db)
    claim = plan_claim(ChainStore(db), contracts, args.period, args.currency, args.owner)
    _send_now(args, db, chain)
    print(json.dumps(claim, indent=2))
    return 0


def _verify(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.anchor import verify_receipt

    chain = _open(args, db, signing=False)
    assert chain.contracts is not None
    try:
        verified = verify_receipt(
            db, chain.contracts, chain.client, args.device, args.seq, confirmations=args.confirmations
        )
    except NotAnchored as exc:
        print(f"btt-relay: receipt {args.seq} of {args.device} does not hold: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(verified.to_json()))
    return 0


def _status(args: argparse.Namespace, db: Database) -> int:
    from cloud_relay.chain.journal import FINAL, OPEN, Entry
    from cloud_relay.chain.store import ChainStore, migrate

    migrate(db)
    store = ChainStore(db)
    with db.transaction() as tx:
        counts = tx.all("SELECT kind, status, count(*) FROM chain_journal GROUP BY kind, status ORDER BY kind, status")
        statuses = OPEN + FINAL if args.all else (*OPEN, "failed")
        marks = ", ".join("?" for _ in statuses)
        rows = tx.all(
            "SELECT id, key, kind, to_addr, data, args, status, nonce, tx_hash, raw_tx, block_number, block_hash,"
            f" sent_ms, attempts, error FROM chain_journal WHERE status IN ({marks}) ORDER BY id",
            statuses,
        )
    doc = {
        "contracts": store.contracts(required=False),
        "journal": {f"{k}:{s}": int(n) for k, s, n in counts},
        "entries": [Entry.from_row(r).to_json() for r in rows],
    }
    print(json.dumps(doc, indent=2))
    return 0
