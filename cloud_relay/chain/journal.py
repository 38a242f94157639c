"""The crash-safe transaction journal: every transaction the relay sends is written down before it is sent.

A journal entry has a unique ``key`` naming its effect (``anchor:<settlement>``, ``burn:<settlement>:<right>:<from>``,
``mint:<request>``, ``publish:<period>:<token>``, ...) so an effect is journalled once however often it is planned.
It moves through these states, each change one database transaction committed before the next step::

    intent ──► signed ──► sent ──► mined ──► confirmed
      │  ▲        │  (nonce, signed  (block      (N blocks deep,
      │  │        │   bytes, hash)    and hash)   same block hash)
      │  └────────┴── the nonce went to another transaction and the effect is not on chain: sign again
      ├──► confirmed   the contract's own replay guard says the effect is on chain already
      └─ (stays)        the call reverts at estimation: the reason is kept and it is tried again next pass
                        (a mint waits for its right's definition, a publication for its approval)
    sent/mined ──► failed   mined, reverted, and the guard says it is not done (the reason is kept; not retried)

* **Before sending**, the signed bytes, the nonce and the hash are committed (``signed``). A crash after that point
  leaves an entry whose transaction may or may not have reached the node; on restart the same bytes are broadcast
  again (a node that has them already says so: not an error), so the effect happens at most once: one nonce, one
  hash. The contracts' guards (``usedRequest``, ``burned``, ``anchored``, ``published``, ``isClaimed``) are a second
  line: a replay reverts, and a revert whose guard says "done" counts as done.
* **Nonces** come from the node's pending count and the journal's own highest open nonce, whichever is higher, in
  the transaction that marks the entry ``signed`` (so two senders on one database never share one).
* **Gas** is the node's estimate times ``gas_margin``; a call that reverts at estimation is checked against its
  guard: done elsewhere, or left as an intent with the reason, tried again on the next pass.
* **Confirmations**: an entry is ``confirmed`` when its block is ``confirmations`` deep and the block at that
  height still has the hash the receipt named. A receipt that disappears or moves to another block (a reorg) puts
  the entry back to ``signed`` and the same bytes are broadcast again.
* A ``sent`` transaction not mined after ``resend_s`` is broadcast again (nodes drop transactions).

The journal never decides what to send: planners (:mod:`~cloud_relay.chain.anchor`, :mod:`~cloud_relay.chain.rights`,
:mod:`~cloud_relay.chain.disburse`) add entries; :meth:`Journal.advance` moves them on.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cloud_relay.chain.client import ChainClient, Contracts
from cloud_relay.chain.config import ChainConfig
from cloud_relay.chain.errors import ChainRefused, NonceTooLow
from cloud_relay.storage import Database, Tx
from protocol.clock import now_ms
from runtime.logs import event

__all__ = ["FINAL", "OPEN", "Entry", "Journal", "add_intent", "guard_holds"]

log = logging.getLogger("cloud_relay.chain.journal")

OPEN = ("intent", "signed", "sent", "mined")
FINAL = ("confirmed", "failed")
_COLUMNS = (
    "id, key, kind, to_addr, data, args, status, nonce, tx_hash, raw_tx, block_number, block_hash, sent_ms, attempts,"
    " error"
)


@dataclass(frozen=True)
class Entry:
    """One journal row."""

    id: int
    key: str
    kind: str
    to: str | None
    data: bytes
    args: dict[str, Any]
    status: str
    nonce: int | None
    tx_hash: str | None
    raw: bytes | None
    block_number: int | None
    block_hash: str | None
    sent_ms: int | None
    attempts: int
    error: str | None

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> Entry:
        return cls(
            int(r[0]), str(r[1]), str(r[2]), r[3], bytes.fromhex(str(r[4])), json.loads(r[5]), str(r[6]),
            None if r[7] is None else int(r[7]), r[8], None if r[9] is None else bytes.fromhex(str(r[9])),
            None if r[10] is None else int(r[10]), r[11], None if r[12] is None else int(r[12]), int(r[13]), r[14],
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "status": self.status,
            "nonce": self.nonce,
            "tx_hash": self.tx_hash,
            "block": self.block_number,
            "error": self.error,
        }


def add_intent(
    tx: Tx, key: str, kind: str, call: tuple[str | None, bytes], args: Mapping[str, Any], *, now: int
) -> bool:
    """Journal an intended transaction (``call`` = (to, data)) unless ``key`` is journalled already."""
    to, data = call
    return bool(
        tx.execute(
            "INSERT INTO chain_journal (key, kind, to_addr, data, args, status, attempts, created_ms, updated_ms)"
            " VALUES (?, ?, ?, ?, ?, 'intent', 0, ?, ?) ON CONFLICT DO NOTHING",
            (key, kind, to, data.hex(), json.dumps(dict(args), sort_keys=True), now, now),
        )
    )


def _b32(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


_ZERO = b"\x00" * 32
Guard = Callable[[Contracts, ChainClient, Mapping[str, Any]], bool]
_GUARDS: dict[str, Guard] = {
    "define": lambda c, cl, a: bool(c.view(cl, "ServiceRights", "terms", int(a["id"], 16))[0] != _ZERO),
    "mint": lambda c, cl, a: bool(c.view(cl, "ServiceRights", "usedRequest", _b32(a["request"]))),
    "burn": lambda c, cl, a: bool(
        c.view(cl, "ServiceRights", "burned", _b32(a["settlement"]), int(a["id"], 16), a["from"])
    ),
    "anchor": lambda c, cl, a: bool(c.view(cl, "SettlementAnchor", "anchored", _b32(a["settlement"]))[0] != _ZERO),
    "publish": lambda c, cl, a: bool(
        c.view(cl, "PayoutDistributor", "published", _b32(a["period"]), a["token"])[0] != _ZERO
    ),
    "claim": lambda c, cl, a: bool(
        c.view(cl, "PayoutDistributor", "isClaimed", _b32(a["period"]), a["token"], int(a["index"]))
    ),
    "role": lambda c, cl, a: bool(c.view(cl, a["contract"], "hasRole", _b32(a["role"]), a["account"])),
    "shares": lambda c, cl, a: (
        int(c.view(cl, "AssetShares", "balanceOf", a["to"], int(a["asset"], 16))) >= int(a["amount"])
    ),
}
"""Per kind: is the effect on chain already (the contract's own replay guard)? Kinds without one (``approve``)
and ``deploy``) rely on the journal alone: one nonce, one signed transaction."""


def guard_holds(contracts: Contracts, client: ChainClient, entry: Entry) -> bool:
    guard = _GUARDS.get(entry.kind)
    return guard is not None and guard(contracts, client, entry.args)


class Journal:
    """Moves journal entries towards ``confirmed`` (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        client: ChainClient,
        contracts: Contracts,
        config: ChainConfig,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._db = db
        self._client = client
        self._contracts = contracts
        self._config = config
        self._clock = clock

    def entries(self, statuses: tuple[str, ...] = OPEN, kind: str | None = None) -> list[Entry]:
        marks = ", ".join("?" for _ in statuses)
        where, params = f"status IN ({marks})", list(statuses)
        if kind is not None:
            where, params = where + " AND kind = ?", [*params, kind]
        with self._db.transaction() as tx:
            rows = tx.all(f"SELECT {_COLUMNS} FROM chain_journal WHERE {where} ORDER BY id", params)
        return [Entry.from_row(r) for r in rows]

    def entry(self, key: str) -> Entry | None:
        with self._db.transaction() as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM chain_journal WHERE key = ?", (key,))
        return None if row is None else Entry.from_row(row)

    def advance(self) -> int:
        """One pass over the open entries (signed ones first, by nonce); returns how many changed state.

        :class:`~cloud_relay.chain.errors.ChainUnavailable` ends the pass (the caller backs off and calls again).
        """
        entries = self.entries()
        entries.sort(key=lambda e: (e.status == "intent", e.nonce if e.nonce is not None else math.inf, e.id))
        changed = 0
        for entry in entries:
            if self._step(entry):
                changed += 1
        return changed

    def _set(self, entry: Entry, status: str, expect: str | None = None, **fields: Any) -> bool:
        """Compare-and-set the entry's status (and ``fields``) in one transaction; False if it moved meanwhile."""
        sets = ", ".join(f"{name} = ?" for name in fields)
        sets = ", " + sets if sets else ""
        sql = f"UPDATE chain_journal SET status = ?, updated_ms = ?{sets} WHERE id = ? AND status = ?"
        with self._db.transaction() as tx:
            done = tx.execute(sql, (status, self._clock(), *fields.values(), entry.id, expect or entry.status))
        if done:
            event(log, "chain tx", key=entry.key, status=status, tx=fields.get("tx_hash", entry.tx_hash))
        return bool(done)

    def _note(self, entry: Entry, error: str) -> None:
        """Keep why an intent cannot be sent yet (it is tried again on the next pass)."""
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE chain_journal SET error = ?, attempts = attempts + 1, updated_ms = ?"
                " WHERE id = ? AND status = ?",
                (error[:500], self._clock(), entry.id, entry.status),
            )

    def _step(self, entry: Entry) -> bool:
        if entry.status == "intent":
            return self._sign(entry)
        if entry.status == "signed":
            return self._broadcast(entry)
        if entry.status == "sent":
            return self._check_sent(entry)
        return self._check_mined(entry)

    def _done_elsewhere(self, entry: Entry, why: str) -> bool:
        return self._set(entry, "confirmed", error=f"already on chain ({why})")

    def _sign(self, entry: Entry) -> bool:
        if guard_holds(self._contracts, self._client, entry):
            return self._done_elsewhere(entry, "guard before sending")
        try:
            gas = math.ceil(self._client.estimate_gas(entry.to, entry.data) * self._config.gas_margin)
        except ChainRefused as exc:
            if guard_holds(self._contracts, self._client, entry):
                return self._done_elsewhere(entry, "guard after a revert")
            self._note(entry, f"not sent yet: {exc}")
            return False
        fees = self._client.fees()
        with self._db.transaction() as tx:
            row = tx.one("SELECT status FROM chain_journal WHERE id = ?", (entry.id,))
            if row is None or row[0] != "intent":
                return False
            highest = tx.one("SELECT max(nonce) FROM chain_journal WHERE status IN ('signed', 'sent', 'mined')")
            nonce = max(self._client.pending_nonce(), 0 if highest is None or highest[0] is None else highest[0] + 1)
            signed = self._client.sign(entry.to, entry.data, int(nonce), gas, fees)
            tx.execute(
                "UPDATE chain_journal SET status = 'signed', nonce = ?, tx_hash = ?, raw_tx = ?, block_number = NULL,"
                " block_hash = NULL, attempts = attempts + 1, error = NULL, updated_ms = ? WHERE id = ?",
                (nonce, signed.tx_hash, signed.raw.hex(), self._clock(), entry.id),
            )
        event(log, "chain tx", key=entry.key, status="signed", nonce=nonce, tx=signed.tx_hash)
        fresh = self.entry(entry.key)
        assert fresh is not None
        self._broadcast(fresh)
        return True

    def _broadcast(self, entry: Entry) -> bool:
        assert entry.raw is not None
        try:
            self._client.broadcast(entry.raw)
        except NonceTooLow:
            return self._nonce_used(entry)
        except ChainRefused as exc:
            return self._set(entry, "failed", error=str(exc)[:500])
        if entry.status == "signed":
            return self._set(entry, "sent", sent_ms=self._clock())
        return self._set(entry, "sent", expect="sent", sent_ms=self._clock())

    def _nonce_used(self, entry: Entry) -> bool:
        """The entry's nonce is used: by this very transaction (mined), or by another one (sign again)."""
        assert entry.tx_hash is not None
        if (receipt := self._client.receipt(entry.tx_hash)) is not None:
            return self._set(entry, "mined", block_number=receipt.block_number, block_hash=receipt.block_hash)
        if guard_holds(self._contracts, self._client, entry):
            return self._done_elsewhere(entry, "nonce used, guard holds")
        return self._set(entry, "intent", nonce=None, tx_hash=None, raw_tx=None, error="nonce used by another tx")

    def _check_sent(self, entry: Entry) -> bool:
        assert entry.tx_hash is not None
        receipt = self._client.receipt(entry.tx_hash)
        if receipt is None:
            if self._clock() - (entry.sent_ms or 0) >= self._config.resend_s * 1000:
                return self._broadcast(entry)
            return False
        if not receipt.ok:
            if guard_holds(self._contracts, self._client, entry):
                return self._done_elsewhere(entry, "reverted, guard holds")
            return self._set(entry, "failed", error=f"reverted in block {receipt.block_number}")
        return self._set(entry, "mined", block_number=receipt.block_number, block_hash=receipt.block_hash)

    def _check_mined(self, entry: Entry) -> bool:
        assert entry.tx_hash is not None
        assert entry.block_number is not None
        receipt = self._client.receipt(entry.tx_hash)
        if receipt is None or receipt.block_hash != entry.block_hash:
            event(log, "chain reorg", level=logging.WARNING, key=entry.key, block=entry.block_number)
            if receipt is not None:
                return self._set(entry, "mined", block_number=receipt.block_number, block_hash=receipt.block_hash)
            return self._set(entry, "signed", block_number=None, block_hash=None, error="reorg: receipt gone")
        depth = self._client.head() - entry.block_number + 1
        if depth < self._config.confirmations:
            return False
        block = self._client.block(entry.block_number)
        if block is None or block.hash != entry.block_hash:
            return self._set(entry, "signed", block_number=None, block_hash=None, error="reorg: block replaced")
        return self._set(entry, "confirmed")

    def settle(self, max_passes: int = 1000, tick: Callable[[], None] | None = None) -> list[Entry]:
        """Advance until nothing is open (``tick`` between passes: mine a block in tests, sleep otherwise)."""
        for _ in range(max_passes):
            self.advance()
            open_entries = self.entries()
            if not open_entries:
                return []
            if tick is not None:
                tick()
        return self.entries()
