"""Ingest: verify what devices publish, store it idempotently, and say what to acknowledge.

One call of :meth:`Ingestor.handle` takes a batch of up messages (topic + payload, see the contract in
``README.md`` "Cloud relay") and runs ONE database transaction; the :class:`Ack` documents it returns may be
published only after it returns (the commit is durable by then). Per item:

* ``certificate``: verified against the manufacturer keys, stored (its device registered if new);
* ``receipts``: verified with :func:`protocol.verify.verify_receipts` against the device's stored
  certificates (all of them: keys rotate) and the revocations, continuing the chain from the receipt's own
  ``prev``; a receipt by a key that a newer certificate replaced is refused once a receipt by the newer key is
  stored before it in the chain (the other order, a replaced key's receipt stored first, is not caught); then
  stored once per
  (device, seq). The same receipt again is acknowledged as stored (a resend); a different one with a stored
  sequence number, or one whose chain link disagrees with a stored neighbour, is rejected. Receipts may
  arrive out of order (several workers share the stream): links are checked whenever a neighbour is present;
* ``settlements``: verified with :func:`~protocol.verify.verify_settlements` over the stored receipts it
  covers; when those (or the previous settlement) are not here yet it is deferred (:class:`NotYet`: not acked,
  the device resends);
* ``offers``, ``health``, ``results``: JSON objects stored once per (device, item id).

Nothing reaches these steps unchecked: :func:`cloud_relay.messages.parse_up` turns each message into typed items
first (types, ranges, sizes, depth) and refuses the malformed ones with their reason. A rejected item, there or
here, is recorded with its reason in ``rejects`` and acknowledged as rejected (permanent); the rest of the batch
goes on. A message whose topic, JSON or device is wrong as a whole is recorded and not acknowledged (it names no
items to ack). Only the database failing raises (the batch is retried); anything else that escapes is a bug, and
the consumer ends the process on it (:mod:`cloud_relay.consumer`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cloud_relay.config import IngestConfig
from cloud_relay.errors import NotYet, Rejected
from cloud_relay.messages import (
    CertificateIn,
    ReceiptIn,
    Refusal,
    ReportIn,
    SettlementIn,
    UpItem,
    clean_reason,
    parse_up,
)
from cloud_relay.registry import device_certificates, load_trust, store_certificate
from cloud_relay.storage import Database, Tx
from protocol.certificates import DeviceCertificate
from protocol.clock import now_ms
from protocol.encoding import decode, encode_unchecked
from protocol.errors import VerificationError
from protocol.receipts import GENESIS, Receipt, parse_receipt
from protocol.verify import Checkpoint, Trust, verify_receipts, verify_settlements
from runtime.logs import event

__all__ = ["Ack", "Ingestor", "UpMessage"]

log = logging.getLogger("cloud_relay.ingest")

_LOOKUP_CHUNK = 300
_T = TypeVar("_T")
_I = TypeVar("_I", ReceiptIn, SettlementIn, CertificateIn)


@dataclass(frozen=True)
class UpMessage:
    """One MQTT message as received."""

    topic: str
    payload: bytes


@dataclass
class Ack:
    """The application acknowledgement for one device (contract: ``{"v", "stored", "rejected"}``)."""

    device: str
    stored: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def payload(self) -> bytes:
        return json.dumps({"v": 1, "stored": self.stored, "rejected": self.rejected}).encode("utf-8")


_VerifyJob = tuple[Any, Mapping[str, DeviceCertificate], Trust, Checkpoint]
_Outcome = tuple[Receipt, bytes] | VerificationError


def _verify_chunk(jobs: Sequence[_VerifyJob]) -> list[_Outcome]:
    """Each receipt envelope verified on its own, its error kept (pure: no database; PyNaCl releases the GIL)."""
    out: list[_Outcome] = []
    for envelope, certs, trust, checkpoint in jobs:
        try:
            ((receipt, body),) = verify_receipts([envelope], certs, trust, checkpoint)
        except VerificationError as exc:
            out.append(exc)
        else:
            out.append((receipt, body))
    return out


class Ingestor:
    """Verifies and stores batches of up messages (see the module docstring).

    ``verify_threads`` (:attr:`IngestConfig.verify_threads`): a batch's signatures are checked in that many
    chunks side by side, one in the calling thread; the database is only ever used from the calling thread.
    """

    def __init__(
        self, db: Database, clock: Callable[[], int] = now_ms, *, verify_threads: int = IngestConfig.verify_threads
    ) -> None:
        self._db = db
        self._clock = clock
        self._certs = _CertificateCache()
        self._threads = verify_threads
        self._pool: ThreadPoolExecutor | None = None
        self.refusals: Counter[str] = Counter()
        """Items and messages refused at the boundary (:mod:`cloud_relay.messages`), by fault code."""

    def close(self) -> None:
        """Stop the verify threads (a later batch starts them again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _verify(self, jobs: Sequence[_VerifyJob]) -> list[_Outcome]:
        if self._threads < 2 or len(jobs) < 2 * self._threads:
            return _verify_chunk(jobs)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads - 1, thread_name_prefix="relay-verify")
        size = -(-len(jobs) // self._threads)
        first, *rest = (jobs[i : i + size] for i in range(0, len(jobs), size))
        futures = [self._pool.submit(_verify_chunk, chunk) for chunk in rest]
        return _verify_chunk(first) + [outcome for f in futures for outcome in f.result()]

    def handle(self, messages: Sequence[UpMessage]) -> list[Ack]:
        """Process ``messages`` in one transaction; returns the acks to publish once this returns.

        Raises :class:`~cloud_relay.errors.StorageUnavailable` / ``StorageError`` when the transaction did
        not commit: then nothing is acknowledged and the caller retries the batch.
        """
        now = self._clock()
        acks: dict[str, Ack] = {}
        work: list[tuple[str, UpItem, Ack]] = []
        refused: list[tuple[str, str, Refusal]] = []
        for message in messages:
            parsed = parse_up(message.topic, message.payload)
            device = parsed.device
            if parsed.items or any(r.item != "*" for r in parsed.refused):
                ack = acks.setdefault(device, Ack(device))
                work += [(device, item, ack) for item in parsed.items]
            for refusal in parsed.refused:
                self.refusals[refusal.code] += 1
                refused.append((device, parsed.kind, refusal))
                if refusal.item != "*":
                    acks[device].rejected.append({"id": refusal.item, "reason": refusal.reason, "permanent": True})
        with self._db.transaction() as tx:
            tx.lock_devices(sorted(acks))
            batch = _Batch(tx, load_trust(tx), now, self._certs, self._verify)
            batch.run(work)
            batch.rejects += [(device, r.item, kind, r.reason, now) for device, kind, r in refused]
            tx.execute_many(
                "INSERT INTO rejects (device, item_id, kind, reason, received_ms) VALUES (?, ?, ?, ?, ?)", batch.rejects
            )
        for device, kind, r in refused:
            event(
                log,
                "refused",
                level=logging.WARNING,
                device=device,
                kind=kind,
                id=r.item,
                fault=r.code,
                reason=r.reason,
            )
        return [a for a in acks.values() if a.stored or a.rejected]


class _CertificateCache:
    """Verified device certificates by device, kept across batches (certificates are only ever added).

    A key id missing from the cached set is looked up again in the database before a receipt is refused (another
    worker may have stored a new certificate); revocation is not cached (the trust is loaded per batch).
    """

    MAX_DEVICES = 100_000

    def __init__(self) -> None:
        self._by_device: dict[str, dict[str, DeviceCertificate]] = {}

    def load(self, tx: Tx, devices: Iterable[str]) -> None:
        """Load the certificates of the ``devices`` not cached yet, in one query per chunk."""
        missing = sorted(d for d in devices if d not in self._by_device)
        if len(self._by_device) + len(missing) > self.MAX_DEVICES:
            self._by_device.clear()
        self._by_device.update(device_certificates(tx, missing))

    def get(self, tx: Tx, device: str, keyid: object = None) -> dict[str, DeviceCertificate]:
        certs = self._by_device.get(device)
        if certs is None or (keyid is not None and keyid not in certs):
            certs = self._by_device[device] = device_certificates(tx, [device])[device]
        return certs

    def forget(self, device: str) -> None:
        self._by_device.pop(device, None)


class _Batch:
    """The work of one transaction."""

    def __init__(
        self,
        tx: Tx,
        trust: Trust,
        now: int,
        certs: _CertificateCache,
        verify: Callable[[Sequence[_VerifyJob]], list[_Outcome]],
    ) -> None:
        self.tx = tx
        self.trust = trust
        self.now = now
        self._certs = certs
        self._verify = verify
        self.rejects: list[tuple[str, str, str, str, int]] = []

    def certs(self, device: str, keyid: object = None) -> dict[str, DeviceCertificate]:
        return self._certs.get(self.tx, device, keyid)

    def run(self, work: Sequence[tuple[str, UpItem, Ack]]) -> None:
        """Certificates first, then receipts (verified, then stored together), settlements, and the rest."""
        for device, item, ack in work:
            if isinstance(item, CertificateIn):
                self._attempt(device, item, ack, self._certificate)
        receipts = [(d, i, a) for d, i, a in work if isinstance(i, ReceiptIn)]
        self._certs.load(self.tx, {d for d, _, _ in receipts})
        self._receipts(receipts)
        for device, item, ack in work:
            if isinstance(item, SettlementIn):
                self._attempt(device, item, ack, self._settlement)
        reports = []
        for device, item, ack in work:
            if isinstance(item, ReportIn):
                ack.stored.append(item.id)
                reports.append((device, item.id, item.kind, json.dumps(item.body), self.now))
        self.tx.execute_many(
            "INSERT INTO reports (device, item_id, kind, body, received_ms) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            reports,
        )

    def _attempt(
        self, device: str, item: _I, ack: Ack, step: Callable[[str, _I], _T], *, stored: bool = True
    ) -> _T | None:
        """Run one item's step; record a rejection, log a deferral, or (when ``stored``) acknowledge it."""
        try:
            result = step(device, item)
        except VerificationError as exc:
            self._reject(device, item, ack, f"{type(exc).__name__}: {exc}")
        except Rejected as exc:
            self._reject(device, item, ack, str(exc))
        except NotYet as exc:
            event(log, "item deferred", device=device, kind=item.kind, id=item.id, reason=str(exc))
        else:
            if stored:
                ack.stored.append(item.id)
            return result
        return None

    def _reject(self, device: str, item: UpItem, ack: Ack, reason: str) -> None:
        reason = clean_reason(reason)
        self.rejects.append((device, item.id, item.kind, reason, self.now))
        ack.rejected.append({"id": item.id, "reason": reason, "permanent": True})
        event(log, "item rejected", level=logging.WARNING, device=device, kind=item.kind, id=item.id, reason=reason)

    def _certificate(self, device: str, item: CertificateIn) -> None:
        cert = store_certificate(self.tx, item.envelope.document, self.trust, self.now)
        if cert.device_id != device:
            raise Rejected(f"certificate of {cert.device_id} published by {device}")
        self._certs.forget(device)

    def _receipts(self, work: Sequence[tuple[str, ReceiptIn, Ack]]) -> None:
        """Verify each receipt, look up all their stored neighbours at once, then place them in order.

        The signatures are checked by :func:`_verify_chunk` (side by side when the ingestor has verify threads);
        everything that reads the database happens here, in the transaction's thread.
        """
        inputs = []
        for device, item, ack in work:
            found = self._attempt(device, item, ack, self._receipt_inputs, stored=False)
            if found is not None:
                inputs.append((device, item, ack, found))
        outcomes = self._verify(
            [(item.envelope.document, certs, self.trust, checkpoint) for _, item, _, (certs, checkpoint) in inputs]
        )
        verified = []
        for (device, item, ack, (certs, _)), outcome in zip(inputs, outcomes, strict=True):
            check = functools.partial(self._verified_receipt, outcome=outcome, certs=certs)
            result = self._attempt(device, item, ack, check, stored=False)
            if result is not None:
                verified.append((device, item, ack, *result))
        known = self._known({(d, r.seq + k) for d, _, _, r, _ in verified for k in (-1, 0, 1)})
        rows: list[tuple[Any, ...]] = []
        for device, item, ack, receipt, body in verified:
            place = functools.partial(self._place, known, rows, receipt=receipt, body=body)
            self._attempt(device, item, ack, place)
        self.tx.execute_many(
            "INSERT INTO receipts (device, seq, hash, prev, keyid, time_ms, kind, right_id, units, overage_units,"
            " body, signatures, item_id, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _receipt_inputs(self, device: str, item: ReceiptIn) -> tuple[dict[str, DeviceCertificate], Checkpoint]:
        """The certificates and the checkpoint a receipt is verified against (its own ``seq - 1`` and ``prev``)."""
        certs = self.certs(device, item.keyid)
        if not certs:
            raise NotYet(f"receipt {item.seq}: no certificate of {device} at the relay yet")
        return certs, Checkpoint(item.seq - 1, item.prev)

    def _verified_receipt(
        self,
        device: str,
        item: ReceiptIn,
        *,
        outcome: _Outcome,
        certs: dict[str, DeviceCertificate],
    ) -> tuple[Receipt, bytes]:
        """A verified receipt's checks against its publisher and the stored chain (keys replaced since)."""
        if isinstance(outcome, VerificationError):
            raise outcome
        receipt, body = outcome
        seq = receipt.seq
        if receipt.device != device:
            raise Rejected(f"receipt {seq} of device {receipt.device} published by {device}")
        newer = sorted(c.key.keyid for c in certs.values() if c.replaces == receipt.keyid)
        if newer:
            marks = ", ".join("?" for _ in newer)
            if self.tx.one(
                f"SELECT 1 FROM receipts WHERE device = ? AND seq < ? AND keyid IN ({marks}) LIMIT 1",
                [device, seq, *newer],
            ):
                raise Rejected(f"RevokedKey: receipt {seq}: key {receipt.keyid[:16]} was replaced by a newer key")
        return receipt, body

    def _known(self, keys: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, str]]:
        """``(hash, prev)`` of the stored receipts among ``keys`` ((device, seq) pairs)."""
        out: dict[tuple[str, int], tuple[str, str]] = {}
        ordered = sorted(keys)
        for start in range(0, len(ordered), _LOOKUP_CHUNK):
            chunk = ordered[start : start + _LOOKUP_CHUNK]
            values = ", ".join("(?, ?)" for _ in chunk)
            rows = self.tx.all(
                "SELECT r.device, r.seq, r.hash, r.prev FROM receipts r"
                f" JOIN (VALUES {values}) AS k ON r.device = k.column1 AND r.seq = k.column2",
                [v for key in chunk for v in key],
            )
            out.update({(str(d), int(q)): (str(h), str(p)) for d, q, h, p in rows})
        return out

    def _place(
        self,
        known: dict[tuple[str, int], tuple[str, str]],
        rows: list[tuple[Any, ...]],
        device: str,
        item: ReceiptIn,
        *,
        receipt: Receipt,
        body: bytes,
    ) -> None:
        """Check a verified receipt against the stored (and just placed) neighbours and queue its row."""
        seq = receipt.seq
        same = known.get((device, seq))
        if same is not None:
            if same[0] == receipt.hash:
                return
            raise Rejected(f"ConflictingReceipt: receipt {seq} differs from the receipt {seq} stored (forked chain)")
        before, after = known.get((device, seq - 1)), known.get((device, seq + 1))
        if before is not None and before[0] != receipt.prev:
            raise Rejected(f"BrokenChain: receipt {seq}: prev is not the hash of the stored receipt {seq - 1}")
        if after is not None and after[1] != receipt.hash:
            raise Rejected(f"BrokenChain: the stored receipt {seq + 1} does not link to receipt {seq}")
        known[(device, seq)] = (receipt.hash, receipt.prev)
        rows.append(
            (
                device,
                seq,
                receipt.hash,
                receipt.prev,
                receipt.keyid,
                receipt.time_ms,
                receipt.kind,
                receipt.right,
                receipt.units,
                receipt.overage_units,
                body.decode("utf-8"),
                json.dumps(item.envelope.signatures),
                item.id,
                self.now,
            )
        )

    def _settlement(self, device: str, item: SettlementIn) -> None:
        batch, first, last = item.batch, item.first_seq, item.last_seq
        signed = item.envelope.signed
        digest = hashlib.sha256(encode_unchecked(signed)).hexdigest()
        stored = self.tx.one("SELECT hash FROM settlements WHERE device = ? AND batch = ?", (device, batch))
        if stored is not None:
            if stored[0] == digest:
                return
            raise Rejected(f"SettlementMismatch: settlement {batch} differs from the settlement {batch} stored")
        prev, prev_last = GENESIS, 0
        if batch > 1:
            row = self.tx.one(
                "SELECT hash, last_seq FROM settlements WHERE device = ? AND batch = ?", (device, batch - 1)
            )
            if row is None:
                raise NotYet(f"settlement {batch}: settlement {batch - 1} is not here yet")
            prev, prev_last = str(row[0]), int(row[1])
        if last < first or last - first > 1_000_000:
            raise Rejected(f"SettlementMismatch: settlement {batch}: range {first}-{last}")
        rows = self.tx.all(
            "SELECT body, hash FROM receipts WHERE device = ? AND seq BETWEEN ? AND ? ORDER BY seq",
            (device, first, last),
        )
        if len(rows) != last - first + 1:
            raise NotYet(f"settlement {batch}: {last - first + 1 - len(rows)} of its receipts are not here yet")
        receipts: list[tuple[Receipt, bytes]] = [
            (parse_receipt(decode(r[0]), str(r[1])), str(r[0]).encode("utf-8")) for r in rows
        ]
        checkpoint = Checkpoint(seq=prev_last, batch=batch - 1, settlement_hash=prev)
        (settlement,) = verify_settlements(
            [item.envelope.document], receipts, self.certs(device, item.keyid), self.trust, checkpoint
        )
        if settlement.device != device:
            raise Rejected(f"settlement {batch} of device {settlement.device} published by {device}")
        self.tx.execute(
            "INSERT INTO settlements (device, batch, hash, first_seq, last_seq, count, root, closed_ms, envelope,"
            " item_id, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                device,
                batch,
                settlement.hash,
                first,
                last,
                settlement.count,
                settlement.root,
                settlement.closed_ms,
                json.dumps(item.envelope.document),
                item.id,
                self.now,
            ),
        )
