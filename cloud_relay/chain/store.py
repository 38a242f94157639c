"""The chain module's tables in the relay database (SQLite or PostgreSQL), and the typed queries over them.

The package owns its tables and their migrations (applied by :func:`migrate`, serialised across workers like
:func:`cloud_relay.storage.migrate`):

* ``chain_journal``: every transaction the relay means to send, and how far it got (:mod:`cloud_relay.chain.journal`);
* ``chain_contracts``: the deployed contracts' addresses (``btt-relay chain deploy``), with the chain id;
* ``chain_addresses``: the chain address of each clinic and owner (``btt-relay chain address PARTY 0x...``);
* ``chain_rights``: grants the relay put on chain (minted, or signed from on-chain balances) and their right id;
* ``chain_tokens``: the ERC-20 token standing for each currency (``btt-relay chain token CNY 0x...``);
* ``chain_disbursements``: each published disbursement's claims (period, currency), to serve their proofs;
* ``chain_settings``: the node URL the contracts were deployed through (``btt-relay chain verify``'s default).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_utils.address import is_address, to_checksum_address

from cloud_relay.chain.errors import ChainConfigError, NotDeployed
from cloud_relay.errors import RegistryError
from cloud_relay.storage import Database, Tx
from protocol.clock import now_ms
from protocol.records import ID_RE

__all__ = ["ChainStore", "Disbursement", "RightRow", "checked_address", "migrate"]

_SERIAL = {
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgresql": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}

MIGRATIONS = [
    """
    CREATE TABLE chain_journal (
        id {serial}, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, to_addr TEXT, data TEXT NOT NULL,
        args TEXT NOT NULL, status TEXT NOT NULL, nonce BIGINT, tx_hash TEXT, raw_tx TEXT, block_number BIGINT,
        block_hash TEXT, sent_ms BIGINT, attempts BIGINT NOT NULL, error TEXT, created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
    );
    CREATE INDEX chain_journal_status ON chain_journal (status, id);
    CREATE TABLE chain_contracts (
        name TEXT PRIMARY KEY, address TEXT NOT NULL, chain_id BIGINT NOT NULL, block BIGINT NOT NULL,
        deployed_ms BIGINT NOT NULL
    );
    CREATE TABLE chain_addresses (party TEXT PRIMARY KEY, address TEXT NOT NULL UNIQUE, added_ms BIGINT NOT NULL);
    CREATE TABLE chain_rights (
        grant_id TEXT PRIMARY KEY, right_id TEXT NOT NULL, holder TEXT NOT NULL, units BIGINT NOT NULL,
        terms TEXT NOT NULL, minted BIGINT NOT NULL, added_ms BIGINT NOT NULL
    );
    CREATE INDEX chain_rights_right ON chain_rights (right_id, holder);
    CREATE TABLE chain_tokens (currency TEXT PRIMARY KEY, address TEXT NOT NULL, added_ms BIGINT NOT NULL);
    CREATE TABLE chain_disbursements (
        period TEXT NOT NULL, currency TEXT NOT NULL, token TEXT NOT NULL, root TEXT NOT NULL, total BIGINT NOT NULL,
        claims TEXT NOT NULL, created_ms BIGINT NOT NULL, PRIMARY KEY (period, currency)
    );
    CREATE TABLE chain_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)
    """,
]


def migrate(db: Database) -> None:
    """Apply the chain module's migrations not yet applied (one transaction, serialised across workers)."""
    with db.transaction() as tx:
        tx.lock_devices(["chain-schema"])
        tx.execute("CREATE TABLE IF NOT EXISTS chain_schema (version BIGINT NOT NULL)")
        row = tx.one("SELECT max(version) FROM chain_schema")
        current = 0 if row is None or row[0] is None else int(row[0])
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in script.replace("{serial}", _SERIAL[db.dialect]).split(";"):
                if statement.strip():
                    tx.execute(statement.strip())
            tx.execute("INSERT INTO chain_schema (version) VALUES (?)", (version,))


def checked_address(value: str, what: str = "address") -> str:
    """``value`` as a checksummed address; :class:`ChainConfigError` when it is not one."""
    if not isinstance(value, str) or not is_address(value):
        raise ChainConfigError(f"{what} {value!r:.50} is not a 20-byte hex address")
    return str(to_checksum_address(value))


@dataclass(frozen=True)
class RightRow:
    """A grant the relay put on chain: its right id (0x hex), holder, units and terms (canonical JSON)."""

    grant_id: str
    right_id: str
    holder: str
    units: int
    terms: dict[str, Any]
    minted: bool
    """True: minted from the issuer's request; False: signed by the relay from the holder's on-chain balance."""


@dataclass(frozen=True)
class Disbursement:
    period: str
    currency: str
    token: str
    root: str
    total: int
    claims: list[dict[str, Any]]
    """``{"index", "owner", "account", "amount"}`` in index order."""


class ChainStore:
    """Typed reads and writes of the chain tables (each method its own transaction, or inside ``tx``)."""

    def __init__(self, db: Database, clock: Callable[[], int] = now_ms) -> None:
        self.db = db
        self._clock = clock

    # contracts
    def save_contracts(self, addresses: dict[str, str], chain_id: int, block: int) -> None:
        with self.db.transaction() as tx:
            for name, address in sorted(addresses.items()):
                tx.execute(
                    "INSERT INTO chain_contracts (name, address, chain_id, block, deployed_ms) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET address = excluded.address, chain_id = excluded.chain_id,"
                    " block = excluded.block, deployed_ms = excluded.deployed_ms",
                    (name, checked_address(address), chain_id, block, self._clock()),
                )

    def contracts(self, *, required: bool = True) -> dict[str, str]:
        with self.db.transaction() as tx:
            rows = tx.all("SELECT name, address FROM chain_contracts ORDER BY name")
        if required and not rows:
            raise NotDeployed("no contracts in the relay database: run `btt-relay chain deploy` first")
        return {str(n): str(a) for n, a in rows}

    def chain_id(self) -> int | None:
        with self.db.transaction() as tx:
            row = tx.one("SELECT max(chain_id) FROM chain_contracts")
        return None if row is None or row[0] is None else int(row[0])

    def set_setting(self, name: str, value: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO chain_settings (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def setting(self, name: str) -> str | None:
        with self.db.transaction() as tx:
            row = tx.one("SELECT value FROM chain_settings WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    # addresses
    def set_address(self, party: str, address: str) -> str:
        if not ID_RE.match(party):
            raise RegistryError(f"party {party!r:.40} must be 1-128 letters, digits or ._:/- characters")
        checked = checked_address(address)
        with self.db.transaction() as tx:
            other = tx.one("SELECT party FROM chain_addresses WHERE address = ? AND party <> ?", (checked, party))
            if other is not None:
                raise RegistryError(f"address {checked} belongs to {other[0]} already")
            tx.execute(
                "INSERT INTO chain_addresses (party, address, added_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (party) DO UPDATE SET address = excluded.address",
                (party, checked, self._clock()),
            )
        return checked

    @staticmethod
    def addresses(tx: Tx) -> dict[str, str]:
        """Every party's address."""
        return {str(p): str(a) for p, a in tx.all("SELECT party, address FROM chain_addresses")}

    def address_of(self, party: str) -> str:
        with self.db.transaction() as tx:
            row = tx.one("SELECT address FROM chain_addresses WHERE party = ?", (party,))
        if row is None:
            raise RegistryError(f"no chain address for {party!r}: `btt-relay chain address {party} 0x...`")
        return str(row[0])

    # rights
    @staticmethod
    def add_right(tx: Tx, row: RightRow, now: int) -> bool:
        return bool(
            tx.execute(
                "INSERT INTO chain_rights (grant_id, right_id, holder, units, terms, minted, added_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (row.grant_id, row.right_id, row.holder, row.units, json.dumps(row.terms), int(row.minted), now),
            )
        )

    @staticmethod
    def rights(tx: Tx, holder: str | None = None) -> list[RightRow]:
        where, params = ("WHERE holder = ?", (holder,)) if holder else ("", ())
        return [
            RightRow(str(g), str(r), str(h), int(u), json.loads(t), bool(m))
            for g, r, h, u, t, m in tx.all(
                f"SELECT grant_id, right_id, holder, units, terms, minted FROM chain_rights {where} ORDER BY grant_id",
                params,
            )
        ]

    # tokens
    def set_token(self, currency: str, address: str) -> str:
        checked = checked_address(address)
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO chain_tokens (currency, address, added_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (currency) DO UPDATE SET address = excluded.address",
                (currency, checked, self._clock()),
            )
        return checked

    def token(self, currency: str) -> str:
        with self.db.transaction() as tx:
            row = tx.one("SELECT address FROM chain_tokens WHERE currency = ?", (currency,))
        if row is None:
            raise RegistryError(f"no token for {currency}: `btt-relay chain token {currency} 0x...`")
        return str(row[0])

    # disbursements
    @staticmethod
    def add_disbursement(tx: Tx, d: Disbursement, now: int) -> None:
        tx.execute(
            "INSERT INTO chain_disbursements (period, currency, token, root, total, claims, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (d.period, d.currency, d.token, d.root, d.total, json.dumps(d.claims), now),
        )

    def disbursement(self, period: str, currency: str) -> Disbursement | None:
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT token, root, total, claims FROM chain_disbursements WHERE period = ? AND currency = ?",
                (period, currency),
            )
        if row is None:
            return None
        return Disbursement(period, currency, str(row[0]), str(row[1]), int(row[2]), json.loads(row[3]))
