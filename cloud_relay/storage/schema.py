"""The relay schema, identical on SQLite and PostgreSQL, as append-only migrations.

Tables: ``clinics``, ``api_tokens`` (SHA-256 of each clinic token), ``devices`` (clinic, asset, revocation),
``trust_keys`` (manufacturer and grant-issuer public keys), ``certificates`` (verified device certificates),
``receipts`` (one row per (device, seq), unique hash), ``settlements`` (one per (device, batch)), ``reports``
(capacity offers, health and result summaries by (device, item id)), ``rejects`` (what was refused and why),
``grants``, ``share_tables`` and ``tariffs`` (what the ledger prices with); ``revoked_keys`` (from
manufacturer revocation lists); ``admin_tokens`` (SHA-256 of each operator token).
"""

from __future__ import annotations

from cloud_relay.storage.base import Database, split_statements

__all__ = ["MIGRATIONS", "migrate"]

_SERIAL = {
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgresql": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}

MIGRATIONS = [
    """
    CREATE TABLE clinics (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_ms BIGINT NOT NULL);
    CREATE TABLE api_tokens (
        token_hash TEXT PRIMARY KEY, clinic TEXT NOT NULL REFERENCES clinics (id), label TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE devices (
        id TEXT PRIMARY KEY, clinic TEXT REFERENCES clinics (id), asset TEXT NOT NULL,
        registered_ms BIGINT NOT NULL, revoked_ms BIGINT, revoked_reason TEXT
    );
    CREATE TABLE trust_keys (
        keyid TEXT PRIMARY KEY, role TEXT NOT NULL, key_json TEXT NOT NULL, added_ms BIGINT NOT NULL
    );
    CREATE TABLE certificates (
        keyid TEXT PRIMARY KEY, device TEXT NOT NULL REFERENCES devices (id), issuer TEXT NOT NULL,
        serial BIGINT NOT NULL, not_after_ms BIGINT, envelope TEXT NOT NULL, received_ms BIGINT NOT NULL
    );
    CREATE INDEX certificates_device ON certificates (device);
    CREATE TABLE receipts (
        device TEXT NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL, prev TEXT NOT NULL, keyid TEXT NOT NULL,
        time_ms BIGINT NOT NULL, kind TEXT NOT NULL, right_id TEXT, units BIGINT NOT NULL,
        overage_units BIGINT NOT NULL, body TEXT NOT NULL, signatures TEXT NOT NULL, item_id TEXT NOT NULL,
        received_ms BIGINT NOT NULL,
        PRIMARY KEY (device, seq), UNIQUE (device, hash)
    );
    CREATE INDEX receipts_time ON receipts (time_ms);
    CREATE TABLE settlements (
        device TEXT NOT NULL, batch BIGINT NOT NULL, hash TEXT NOT NULL, first_seq BIGINT NOT NULL,
        last_seq BIGINT NOT NULL, count BIGINT NOT NULL, root TEXT NOT NULL, closed_ms BIGINT NOT NULL,
        envelope TEXT NOT NULL, item_id TEXT NOT NULL, received_ms BIGINT NOT NULL,
        PRIMARY KEY (device, batch), UNIQUE (device, hash)
    );
    CREATE TABLE reports (
        device TEXT NOT NULL, item_id TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
        received_ms BIGINT NOT NULL, PRIMARY KEY (device, item_id)
    );
    CREATE INDEX reports_kind ON reports (device, kind, received_ms);
    CREATE TABLE rejects (
        id {serial}, device TEXT NOT NULL, item_id TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
        received_ms BIGINT NOT NULL
    );
    CREATE TABLE grants (
        id TEXT PRIMARY KEY, holder TEXT NOT NULL, kind TEXT NOT NULL, asset TEXT NOT NULL,
        envelope TEXT NOT NULL, added_ms BIGINT NOT NULL
    );
    CREATE TABLE share_tables (
        asset TEXT NOT NULL, version BIGINT NOT NULL, envelope TEXT NOT NULL, added_ms BIGINT NOT NULL,
        PRIMARY KEY (asset, version)
    );
    CREATE TABLE tariffs (kind TEXT PRIMARY KEY, currency TEXT NOT NULL, amount BIGINT NOT NULL)
    """,
    """
    CREATE TABLE revoked_keys (keyid TEXT PRIMARY KEY, added_ms BIGINT NOT NULL)
    """,
    """
    CREATE TABLE admin_tokens (token_hash TEXT PRIMARY KEY, label TEXT NOT NULL, created_ms BIGINT NOT NULL)
    """,
]


def migrate(db: Database) -> None:
    """Apply the migrations not yet applied, in one transaction serialised across workers."""
    with db.transaction() as tx:
        tx.lock_devices(["relay-schema"])
        tx.execute("CREATE TABLE IF NOT EXISTS relay_schema (version BIGINT NOT NULL)")
        row = tx.one("SELECT max(version) FROM relay_schema")
        current = 0 if row is None or row[0] is None else int(row[0])
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in split_statements(script.replace("{serial}", _SERIAL[db.dialect])):
                tx.execute(statement)
            tx.execute("INSERT INTO relay_schema (version) VALUES (?)", (version,))
