"""The durable receipt book in the agent database, and the hook every component calls when a use happens.

The hook
--------
::

    from edge.db import transaction
    from protocol.receipts import Use

    with transaction(conn):                       # the caller's own transaction
        ...                                       # the state change (analysis done, exposure stored)
        book.record(conn, Use(kind="analysis", units=1, bundle_id=..., bundle_version=...,
                              output_digest="sha256:<hex>", study_uid=study_instance_uid))

:meth:`ReceiptBook.record` writes the receipt inside the caller's open transaction (under a SAVEPOINT), so the
receipt commits together with the state change that caused it, or neither does. It never raises:

* rights exhausted or none granted: the use is recorded with ``overage_units`` (billed at settlement);
* the box has no identity yet: the use is parked in ``receipt_pending`` and signed, in order, once it has one;
* bad input or an unexpected failure: the receipt part is rolled back to the savepoint, the use is parked with
  the error for a technician, and the error is logged; the caller's transaction is untouched.

``study_uid`` is hashed with the box's secret salt (HMAC-SHA256) before anything is stored or signed.
``output_digest`` is ``"<alg>:<hex>"``, e.g. ``"sha256:" + hashlib.sha256(result_bytes).hexdigest()``.

Group commit
------------
:meth:`ReceiptBook.record_batch` records many uses in one transaction and one fsync, and returns only after
the commit: acknowledged still means durable. :meth:`ReceiptBook.record_stream` pipelines batches: the next one
is signed while the previous one's transaction is being committed, and each is yielded once durable.

Tables (component ``receipts``): ``receipts`` (one row per receipt: its canonical bytes and signature, and a
hybrid identity's ML-DSA-65 signature in ``pq_alg``, ``pq_keyid``, ``pq_sig``; NULL for an ed25519-only one),
``receipt_settlements``, ``receipt_grants`` (rights and balances), ``receipt_pending``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from edge.db import has_table, migrate, transaction
from edge.errors import IdentityError, ReceiptError
from edge.receipts.grants import Balances
from edge.receipts.identity import DeviceIdentity
from protocol import merkle
from protocol.clock import now_ms
from protocol.encoding import canonical_bytes, decode, sha256_hex, signing_message
from protocol.errors import ProtocolError
from protocol.keys import seal
from protocol.receipts import GENESIS, RECEIPT, Receipt, ReceiptDraft, Use, encode_receipt, parse_receipt
from protocol.settlement import SETTLEMENT, settlement_body
from protocol.verify import EXPORT, PROOF
from runtime.logs import event

__all__ = [
    "COMPONENT",
    "MIGRATIONS",
    "BalanceLine",
    "BatchEnvelope",
    "ReceiptBook",
    "ReceiptLine",
    "SettlementLine",
    "balances",
    "book_present",
    "last_settlement",
    "parked_count",
    "recent_receipts",
]

log = logging.getLogger("edge.receipts")

COMPONENT = "receipts"
MIGRATIONS = [
    """
    CREATE TABLE receipts (
        seq INTEGER PRIMARY KEY,
        alg TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        right_id TEXT,
        units INTEGER NOT NULL,
        overage_units INTEGER NOT NULL,
        body BLOB NOT NULL,
        sig BLOB NOT NULL
    );
    CREATE TABLE receipt_settlements (
        batch INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        closed_ms INTEGER NOT NULL,
        envelope TEXT NOT NULL
    );
    CREATE TABLE receipt_grants (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        holder TEXT NOT NULL,
        units INTEGER NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        not_before_ms INTEGER NOT NULL,
        not_after_ms INTEGER NOT NULL,
        body BLOB NOT NULL,
        envelope TEXT NOT NULL
    );
    CREATE TABLE receipt_pending (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        use TEXT NOT NULL,
        error TEXT
    )
    """,
    """
    ALTER TABLE receipts ADD COLUMN pq_alg TEXT;
    ALTER TABLE receipts ADD COLUMN pq_keyid TEXT;
    ALTER TABLE receipts ADD COLUMN pq_sig BLOB
    """,
]

_RECEIPT_PREFIX = signing_message(RECEIPT, b"")


@dataclass(frozen=True)
class BatchEnvelope:
    """A settlement's batch number and its signed envelope."""

    batch: int
    envelope: dict[str, Any]


@dataclass(frozen=True)
class BalanceLine:
    """One installed right and what is left of it."""

    id: str
    kind: str
    holder: str
    units: int
    used: int
    remaining: int
    not_after_ms: int


@dataclass(frozen=True)
class ReceiptLine:
    """One receipt, as a technician reads it."""

    seq: int
    time_ms: int
    kind: str
    right_id: str | None
    units: int
    overage_units: int


@dataclass(frozen=True)
class SettlementLine:
    """One closed settlement: its batch and the receipts it covers."""

    batch: int
    first_seq: int
    last_seq: int
    closed_ms: int


@dataclass(frozen=True)
class _Signed:
    """A batch signed in memory, ready to insert: where it starts, its rows, receipts and balance updates."""

    uses: Sequence[tuple[Use, int]]
    head: tuple[int, str]
    rows: list[tuple[Any, ...]]
    receipts: list[Receipt]
    balance_changes: list[tuple[int, str]]


class ReceiptBook:
    """Signs uses into the receipt chain, closes settlements and exports, all in the agent database.

    Thread-safe: every method works on the connection it is given, and the chain head is read inside that
    connection's write transaction, so concurrent writers serialise on SQLite's write lock.
    """

    def __init__(self, identity: DeviceIdentity | None, *, clock: Callable[[], int] = now_ms) -> None:
        self._identity = identity
        self._clock = clock

    @property
    def identity(self) -> DeviceIdentity | None:
        return self._identity

    @staticmethod
    def migrate(conn: sqlite3.Connection) -> None:
        """Create or upgrade the tables."""
        migrate(conn, COMPONENT, MIGRATIONS)

    # --- the hook ----------------------------------------------------------------------------------------

    def record(self, conn: sqlite3.Connection, use: Use) -> Receipt | None:
        """Record ``use`` inside the caller's open transaction; never raises (see the module docstring).

        Returns the receipt, or None when the use was parked (no identity yet, or an error that is logged).
        """
        time_ms = self._clock()
        try:
            conn.execute("SAVEPOINT btt_receipt")
        except sqlite3.Error as exc:
            event(log, "receipt not recorded", level=logging.ERROR, kind=str(use.kind), error=str(exc))
            return None
        receipt: Receipt | None = None
        try:
            if self._identity is None:
                use.validate()  # park only what can be signed later; a bad use is parked with its error below
                self._park(conn, use, time_ms, None)
            else:
                [receipt] = self._append(conn, [(use, time_ms)])
        except Exception as exc:
            receipt = None
            event(log, "receipt failed; parking the use", level=logging.ERROR, kind=str(use.kind), error=str(exc))
            try:
                conn.execute("ROLLBACK TO btt_receipt")
                self._park(conn, use, time_ms, f"{type(exc).__name__}: {exc}")
            except Exception as park_exc:  # the database itself is failing: the caller's commit will say so
                event(log, "use not parked", level=logging.ERROR, error=str(park_exc))
        try:
            conn.execute("RELEASE btt_receipt")
        except sqlite3.Error as exc:
            event(log, "receipt savepoint not released", level=logging.ERROR, error=str(exc))
        return receipt

    def record_batch(self, conn: sqlite3.Connection, uses: Iterable[Use]) -> list[Receipt]:
        """Group commit: sign and store every use in one transaction; returns after it is durable.

        Unlike :meth:`record` this raises (and records nothing) when a use is invalid or the box has no identity.
        """
        self._require_identity()
        now = self._clock()
        with transaction(conn):
            return self._append(conn, [(use, now) for use in uses])

    # --- internals ---------------------------------------------------------------------------------------

    def _require_identity(self) -> DeviceIdentity:
        if self._identity is None:
            raise IdentityError("this box has no device identity yet: run `btt-edge provision`")
        return self._identity

    @staticmethod
    def _head(conn: sqlite3.Connection) -> tuple[int, str]:
        row = conn.execute("SELECT seq, body FROM receipts ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, GENESIS) if row is None else (int(row[0]), sha256_hex(bytes(row[1])))

    def _append(self, conn: sqlite3.Connection, uses: list[tuple[Use, int]]) -> list[Receipt]:
        """Sign ``uses`` onto the chain inside the open transaction (one read of the head, one insert)."""
        for use, _ in uses:
            use.validate()
        balances = Balances(conn, {use.kind for use, _ in uses})
        batch = self._sign(uses, self._head(conn), balances)
        self._insert(conn, batch)
        return batch.receipts

    def _sign(self, uses: list[tuple[Use, int]], head: tuple[int, str], balances: Balances) -> _Signed:
        """Sign validated ``uses`` after ``head``, taking rights from ``balances`` (CPU only, no database)."""
        identity = self._require_identity()
        key, device, keyid, pq = identity.key, identity.device_id, identity.key.keyid, identity.pq_key
        pq_alg, pq_keyid = (None, None) if pq is None else (pq.alg, pq.keyid)
        seq, prev = head
        rows: list[tuple[Any, ...]] = []
        out: list[Receipt] = []
        for use, time_ms in uses:
            taken = balances.take(use.kind, use.units, use.right_id, time_ms)
            seq += 1
            data, receipt = encode_receipt(
                ReceiptDraft(
                    device=device,
                    keyid=keyid,
                    seq=seq,
                    prev=prev,
                    time_ms=time_ms,
                    use=use,
                    overage_units=taken.overage_units,
                    right_id=taken.right_id,
                    study_digest=None if use.study_uid is None else identity.study_digest(use.study_uid),
                )
            )
            message = _RECEIPT_PREFIX + data
            rows.append(
                (seq, key.alg, time_ms, use.kind, taken.right_id, use.units, taken.overage_units, data,
                 key.sign(message), pq_alg, pq_keyid, None if pq is None else pq.sign(message))
            )  # fmt: skip
            out.append(receipt)
            prev = receipt.hash
            if taken.overage_units:
                event(log, "use beyond granted rights", seq=seq, kind=use.kind, overage_units=taken.overage_units)
        return _Signed(uses, head, rows, out, balances.changes())

    @staticmethod
    def _insert(conn: sqlite3.Connection, batch: _Signed) -> None:
        conn.executemany(
            "INSERT INTO receipts (seq, alg, time_ms, kind, right_id, units, overage_units, body, sig,"
            " pq_alg, pq_keyid, pq_sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            batch.rows,
        )
        if batch.balance_changes:
            conn.executemany("UPDATE receipt_grants SET used = ? WHERE id = ?", batch.balance_changes)

    def record_stream(self, conn: sqlite3.Connection, batches: Iterable[Sequence[Use]]) -> Iterator[list[Receipt]]:
        """Pipelined group commit: while one batch's transaction commits (the fsync), the next batch is signed.

        Yields each batch's receipts only after its transaction committed (acknowledged means durable). The
        batches are signed against the chain head and balances read once at the start; if another writer
        appended receipts or used rights meanwhile, the commit sees it inside its transaction and signs that
        batch again there, so the chain never forks. Raises like :meth:`record_batch`.
        """
        self._require_identity()
        head, balances = self._head(conn), Balances(conn, None)
        with ThreadPoolExecutor(1, thread_name_prefix="receipt-commit") as committer:
            pending: tuple[Future[list[Receipt]], _Signed] | None = None
            for uses in batches:
                now = self._clock()
                items = [(use, now) for use in uses]
                for use, _ in items:
                    use.validate()
                before = balances.used()
                batch = self._sign(items, head, balances)
                if pending is not None:
                    done = pending[0].result()
                    yield done
                    if done is not pending[1].receipts:  # signed again in its commit: the chain had moved
                        head, balances = self._head(conn), Balances(conn, None)  # no commit in flight now
                        before = balances.used()
                        batch = self._sign(items, head, balances)
                head = (batch.receipts[-1].seq, batch.receipts[-1].hash) if batch.receipts else head
                pending = (committer.submit(self._commit_signed, conn, batch, before), batch)
            if pending is not None:
                yield pending[0].result()

    def _commit_signed(self, conn: sqlite3.Connection, batch: _Signed, used_before: dict[str, int]) -> list[Receipt]:
        with transaction(conn):
            used_now = {str(r[0]): int(r[1]) for r in conn.execute("SELECT id, used FROM receipt_grants")}
            if self._head(conn) != batch.head or used_now != used_before:
                event(log, "receipt chain moved during a pipelined batch; signing it again", level=logging.INFO)
                return self._append(conn, list(batch.uses))
            self._insert(conn, batch)
        return batch.receipts

    @staticmethod
    def _park(conn: sqlite3.Connection, use: Use, time_ms: int, error: str | None) -> None:
        conn.execute(
            "INSERT INTO receipt_pending (time_ms, use, error) VALUES (?, ?, ?)",
            (time_ms, json.dumps(asdict(use), default=str), error),
        )

    # --- identity arriving later ---------------------------------------------------------------------------

    def adopt_identity(self, conn: sqlite3.Connection, identity: DeviceIdentity) -> int:
        """Start signing with ``identity`` and sign the uses parked while the box had none; returns how many.

        Also how a running agent takes a new identity (provisioned, or a rotated key, while it runs): the switch
        happens inside the write transaction that signs the parked uses, so a use recorded concurrently is
        either parked before it (and signed here) or signed after it with the new identity.
        """
        previous = self._identity
        try:
            with transaction(conn):
                self._identity = identity
                count = self._sign_parked(conn)
        except BaseException:
            self._identity = previous
            raise
        if count:
            event(log, "parked uses signed", count=count)
        return count

    def sign_parked(self, conn: sqlite3.Connection) -> int:
        """Sign the uses still parked although the box has an identity (parked by a writer that raced
        :meth:`adopt_identity`); returns how many. A cheap read when there are none."""
        if self._identity is None:
            return 0
        if conn.execute("SELECT 1 FROM receipt_pending WHERE error IS NULL LIMIT 1").fetchone() is None:
            return 0
        with transaction(conn):
            count = self._sign_parked(conn)
        if count:
            event(log, "parked uses signed", count=count)
        return count

    def _sign_parked(self, conn: sqlite3.Connection) -> int:
        """Inside the open transaction: sign every parked use without an error onto the chain, in order."""
        rows = conn.execute("SELECT id, time_ms, use FROM receipt_pending WHERE error IS NULL ORDER BY id")
        ready: list[tuple[Use, int]] = []
        for row in rows.fetchall():
            try:
                use = Use(**json.loads(row["use"]))
                use.validate()
            except (TypeError, ValueError, ProtocolError) as exc:
                conn.execute("UPDATE receipt_pending SET error = ? WHERE id = ?", (f"unreadable: {exc}", row["id"]))
                continue
            ready.append((use, int(row["time_ms"])))
            conn.execute("DELETE FROM receipt_pending WHERE id = ?", (row["id"],))
        if ready:
            self._append(conn, ready)
        return len(ready)

    # --- settlement -------------------------------------------------------------------------------------

    def unsettled(self, conn: sqlite3.Connection) -> tuple[int, int | None]:
        """How many receipts no settlement covers yet, and the time of the oldest."""
        row = conn.execute(
            "SELECT count(*), min(time_ms) FROM receipts"
            " WHERE seq > coalesce((SELECT max(last_seq) FROM receipt_settlements), 0)"
        ).fetchone()
        return int(row[0]), (None if row[1] is None else int(row[1]))

    def close_batch(self, conn: sqlite3.Connection, max_receipts: int) -> dict[str, Any] | None:
        """Close the next settlement over up to ``max_receipts`` unsettled receipts; None when there are none."""
        identity = self._require_identity()
        with transaction(conn):
            last = conn.execute(
                "SELECT batch, hash, last_seq FROM receipt_settlements ORDER BY batch DESC LIMIT 1"
            ).fetchone()
            batch, prev, last_seq = (0, GENESIS, 0) if last is None else (int(last[0]), str(last[1]), int(last[2]))
            rows = conn.execute(
                "SELECT body FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?",
                (last_seq, max_receipts),
            ).fetchall()
            if not rows:
                return None
            bodies = [bytes(r[0]) for r in rows]
            receipts = [parse_receipt(decode(b), sha256_hex(b)) for b in bodies]
            root = merkle.root([merkle.leaf_hash(b) for b in bodies]).hex()
            body = settlement_body(
                device=identity.device_id,
                keyid=identity.key.keyid,
                batch=batch + 1,
                prev=prev,
                receipts=receipts,
                root=root,
                closed_ms=self._clock(),
            )
            envelope = seal(SETTLEMENT, body, identity.key, *identity.cosigners)
            conn.execute(
                "INSERT INTO receipt_settlements (batch, hash, first_seq, last_seq, closed_ms, envelope)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    batch + 1,
                    sha256_hex(canonical_bytes(body)),
                    body["first_seq"],
                    body["last_seq"],
                    body["closed_ms"],
                    canonical_bytes(envelope).decode("utf-8"),
                ),
            )
        event(
            log,
            "settlement closed",
            batch=batch + 1,
            first_seq=body["first_seq"],
            last_seq=body["last_seq"],
            root=root[:16],
        )
        return envelope

    # --- reading ----------------------------------------------------------------------------------------

    @staticmethod
    def envelope(row: Mapping[str, Any]) -> dict[str, Any]:
        """The receipt envelope of a ``receipts`` row (its ML-DSA-65 signature second, when it has one)."""
        signed = decode(bytes(row["body"]))
        signatures = [{"alg": row["alg"], "keyid": signed["keyid"], "sig": bytes(row["sig"]).hex()}]
        try:
            pq_sig = row["pq_sig"]
        except (IndexError, KeyError):  # a database not migrated yet, read by a read-only CLI
            pq_sig = None
        if pq_sig is not None:
            signatures.append({"alg": row["pq_alg"], "keyid": row["pq_keyid"], "sig": bytes(pq_sig).hex()})
        return {"signed": signed, "signatures": signatures}

    def receipts(self, conn: sqlite3.Connection, after_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Receipt envelopes with ``seq > after_seq`` in order."""
        rows = conn.execute(
            "SELECT * FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, -1 if limit is None else limit),
        ).fetchall()
        return [self.envelope(row) for row in rows]

    @staticmethod
    def settlements(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        """Settlement envelopes in batch order."""
        rows = conn.execute("SELECT envelope FROM receipt_settlements ORDER BY batch").fetchall()
        return [decode(row[0]) for row in rows]

    @staticmethod
    def settlements_after(conn: sqlite3.Connection, after_batch: int, through_seq: int) -> list[BatchEnvelope]:
        """The settlements after batch ``after_batch`` that cover no receipt beyond ``through_seq``, in order."""
        rows = conn.execute(
            "SELECT batch, envelope FROM receipt_settlements WHERE batch > ? AND last_seq <= ? ORDER BY batch",
            (after_batch, through_seq),
        ).fetchall()
        return [BatchEnvelope(int(batch), decode(envelope)) for batch, envelope in rows]

    def prove(self, conn: sqlite3.Connection, seq: int) -> dict[str, Any]:
        """A stand-alone inclusion proof of receipt ``seq`` in the settlement that covers it."""
        identity = self._require_identity()
        row = conn.execute(
            "SELECT first_seq, last_seq, envelope FROM receipt_settlements WHERE first_seq <= ? AND ? <= last_seq",
            (seq, seq),
        ).fetchone()
        if row is None:
            raise ReceiptError(f"receipt {seq} is not in any settlement yet (btt-edge receipts settle)")
        rows = conn.execute(
            "SELECT * FROM receipts WHERE seq BETWEEN ? AND ? ORDER BY seq", (row[0], row[1])
        ).fetchall()
        leaves = [merkle.leaf_hash(bytes(r["body"])) for r in rows]
        index = seq - int(row[0])
        return {
            "type": PROOF,
            "format": 1,
            "certificates": [*identity.history, identity.certificate],
            "receipt": self.envelope(rows[index]),
            "settlement": decode(row[2]),
            "proof": [p.hex() for p in merkle.inclusion_proof(index, leaves)],
        }

    def export(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """Everything a verifier needs, as one JSON-ready document (no patient data: study digests only)."""
        identity = self._require_identity()
        conn.execute("BEGIN")
        try:
            doc = {
                "type": EXPORT,
                "format": 1,
                "device": identity.device_id,
                "exported_ms": self._clock(),
                "certificates": [*identity.history, identity.certificate],
                "receipts": self.receipts(conn),
                "settlements": self.settlements(conn),
                "grants": [decode(row[0]) for row in conn.execute("SELECT envelope FROM receipt_grants ORDER BY id")],
                "pending_uses": int(conn.execute("SELECT count(*) FROM receipt_pending").fetchone()[0]),
            }
        finally:
            conn.execute("COMMIT")
        return doc


# --- reads for the technician (the control socket) ------------------------------------------------------------


def book_present(conn: sqlite3.Connection) -> bool:
    """Whether the receipt book has created its tables on this box."""
    return has_table(conn, "receipts")


def balances(conn: sqlite3.Connection) -> list[BalanceLine]:
    """The installed rights by kind and id, with what is left of each."""
    rows = conn.execute(
        "SELECT id, kind, holder, units, used, units - used, not_after_ms FROM receipt_grants ORDER BY kind, id"
    )
    return [BalanceLine(*row) for row in rows]


def recent_receipts(conn: sqlite3.Connection, limit: int = 50) -> list[ReceiptLine]:
    """The last ``limit`` receipts, newest first."""
    rows = conn.execute(
        "SELECT seq, time_ms, kind, right_id, units, overage_units FROM receipts ORDER BY seq DESC LIMIT ?", (limit,)
    )
    return [ReceiptLine(*row) for row in rows]


def parked_count(conn: sqlite3.Connection) -> int:
    """Uses parked without a receipt (the box had no identity, or signing failed); 0 without a book."""
    if not has_table(conn, "receipt_pending"):
        return 0
    return int(conn.execute("SELECT COUNT(*) FROM receipt_pending").fetchone()[0])


def last_settlement(conn: sqlite3.Connection) -> SettlementLine | None:
    """The latest settlement closed, or None."""
    row = conn.execute(
        "SELECT batch, first_seq, last_seq, closed_ms FROM receipt_settlements ORDER BY batch DESC"
    ).fetchone()
    return None if row is None else SettlementLine(*row)
