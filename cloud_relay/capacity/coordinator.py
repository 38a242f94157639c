"""The relay's capacity registry and job coordinator, over the relay database (SQLite or PostgreSQL).

What devices send (outbox kind ``offers``, see :mod:`protocol.capacity`) goes to :meth:`Coordinator.handle`,
which checks the device's signature against its stored certificate (:class:`~cloud_relay.errors.Rejected`
otherwise) and records it:

* ``capacity-offer``: a live offer until its ``expires_ms``; ``capacity-withdraw``: the offer ends, and a job
  dispatched under it is given back (another device gets it on the next :meth:`Coordinator.tick`);
* ``capacity-result``: the device's result for a job it was given. ``preempted``/``failed`` give the job back.
  A job is ``done`` when its result is in (and, for a spot-checked job, when a second device's result agrees item
  by item); two results that disagree make it ``disputed`` with the items named, and nobody is paid for it.

:meth:`Coordinator.tick` ends assignments past their deadline (a device that vanished mid-job), and dispatches
every job short of devices to the best matching live offer (:func:`cloud_relay.capacity.market.match`, never a
device that already had the job), signing the job with the relay's key; the caller publishes the returned
``(device, envelope)`` pairs on ``btt/v1/dev/{device}/cmd/capacity-job``. Payouts (items x the offer's price) are
recorded when a job is done, naming the device's compute receipts (``compute``: items, ``compute-seconds``), which
reach the relay and settlement through the normal receipt path.

Tables (own schema version ``capacity_schema``)::

    capacity_offers       offer_id PK, device, envelope, kind, memory_mb, score_mflops, max_items, price_micro,
                          made_ms, expires_ms, withdrawn_ms, reason
    capacity_jobs         job_id PK, clinic, bundle, batch, items, needs, spot_check, state, reason, outputs,
                          created_ms, updated_ms            state: queued -> done | disputed
    capacity_assignments  job_id, device, offer_id, role, price_micro, state, dispatched_ms, deadline_ms, result
                          state: dispatched -> done | preempted | failed | withdrawn | timeout | late
    capacity_payouts      job_id, device, items, amount_micro, receipts (the device's compute receipt
                          sequence numbers the payout covers: check them against its settled chain), paid_ms
    capacity_blobs        sha256 PK, data, created_ms       job bundles and batches, served to devices by hash
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from cloud_relay.capacity.market import Offer, Requirements, disagreements, match, payout_micro, spot_checked
from cloud_relay.errors import RegistryError, Rejected, RelayConfigError
from cloud_relay.registry import device_certificates, load_trust
from cloud_relay.storage import Database, Tx
from protocol.capacity import JOB, OFFER, RESULT, WITHDRAW, sign, verify
from protocol.clock import now_ms
from protocol.errors import EncodingError, VerificationError
from protocol.keys import PrivateKey

__all__ = ["MIGRATIONS", "Coordinator", "migrate_capacity"]

MIGRATIONS = [
    """
    CREATE TABLE capacity_offers (
        offer_id TEXT PRIMARY KEY, device TEXT NOT NULL, envelope TEXT NOT NULL, kind TEXT NOT NULL,
        memory_mb BIGINT NOT NULL, score_mflops BIGINT NOT NULL, max_items BIGINT NOT NULL,
        price_micro BIGINT NOT NULL, made_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL, withdrawn_ms BIGINT,
        reason TEXT
    );
    CREATE TABLE capacity_jobs (
        job_id TEXT PRIMARY KEY, clinic TEXT NOT NULL, bundle TEXT NOT NULL, batch TEXT NOT NULL,
        items BIGINT NOT NULL, needs TEXT NOT NULL, spot_check INTEGER NOT NULL, state TEXT NOT NULL,
        reason TEXT NOT NULL, outputs TEXT, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL
    );
    CREATE TABLE capacity_assignments (
        job_id TEXT NOT NULL, device TEXT NOT NULL, offer_id TEXT NOT NULL, role TEXT NOT NULL,
        price_micro BIGINT NOT NULL, state TEXT NOT NULL, dispatched_ms BIGINT NOT NULL, deadline_ms BIGINT NOT NULL,
        result TEXT, PRIMARY KEY (job_id, device)
    );
    CREATE TABLE capacity_payouts (
        job_id TEXT NOT NULL, device TEXT NOT NULL, items BIGINT NOT NULL, amount_micro BIGINT NOT NULL,
        receipts TEXT NOT NULL, paid_ms BIGINT NOT NULL, PRIMARY KEY (job_id, device)
    );
    CREATE TABLE capacity_blobs (sha256 TEXT PRIMARY KEY, data {blob} NOT NULL, created_ms BIGINT NOT NULL)
    """
]

_OPEN = ("queued",)


def migrate_capacity(db: Database) -> None:
    """Create or upgrade the capacity tables (serialised across workers like the relay's own schema)."""
    with db.transaction() as tx:
        tx.lock_devices(["capacity-schema"])
        tx.execute("CREATE TABLE IF NOT EXISTS capacity_schema (version BIGINT NOT NULL)")
        row = tx.one("SELECT max(version) FROM capacity_schema")
        current = 0 if row is None or row[0] is None else int(row[0])
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            blob = "BYTEA" if db.dialect == "postgresql" else "BLOB"
            for statement in script.replace("{blob}", blob).split(";"):
                if statement.strip():
                    tx.execute(statement)
            tx.execute("INSERT INTO capacity_schema (version) VALUES (?)", (version,))


class Coordinator:
    """Offers, jobs, dispatch, verification and payouts (module docstring)."""

    def __init__(
        self,
        db: Database,
        key: PrivateKey | None = None,
        *,
        job_timeout_s: float = 600.0,
        spot_check_fraction: float = 0.1,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.db = db
        self.key = key
        self.job_timeout_ms = int(job_timeout_s * 1000)
        self.spot_check_fraction = spot_check_fraction
        self.clock = clock
        migrate_capacity(db)

    # --- from devices ----------------------------------------------------------------------------------------

    def handle(self, device: str, envelope: Any) -> str:
        """Verify and record one capacity message from ``device``; returns its type. :class:`Rejected` when the
        signature, the device or the content is wrong."""
        signed = envelope.get("signed") if isinstance(envelope, Mapping) else None
        kind = signed.get("type") if isinstance(signed, Mapping) else None
        if kind not in (OFFER, WITHDRAW, RESULT):
            raise Rejected(f"not a capacity message: {kind!r}")
        with self.db.transaction() as tx:
            signed = self._verified(tx, device, str(kind), envelope)
            now = self.clock()
            if kind == OFFER:
                self._offer(tx, device, signed, envelope)
            elif kind == WITHDRAW:
                self._withdraw(tx, device, signed, now)
            else:
                self._result(tx, device, signed, envelope, now)
        return str(kind)

    def _verified(self, tx: Tx, device: str, kind: str, envelope: Any) -> Mapping[str, Any]:
        sigs = envelope.get("signatures")
        keyid = sigs[0].get("keyid") if isinstance(sigs, list) and sigs and isinstance(sigs[0], Mapping) else None
        cert = device_certificates(tx, [device])[device].get(str(keyid))
        if cert is None:
            raise Rejected(f"{kind}: no certificate of {device} for key {str(keyid)[:16]}")
        if cert.key.keyid in load_trust(tx).revoked:
            raise Rejected(f"{kind}: key of {device} is revoked")
        try:
            signed = verify(kind, envelope, cert.key)
        except (VerificationError, EncodingError) as exc:
            raise Rejected(f"{kind}: {exc}") from exc
        if signed.get("device") != device:
            raise Rejected(f"{kind}: signed for device {signed.get('device')!r}, sent by {device!r}")
        return signed

    def _offer(self, tx: Tx, device: str, s: Mapping[str, Any], envelope: Any) -> None:
        try:
            row = (
                str(s["offer_id"]), device, json.dumps(envelope), str(s["accelerator"]["kind"]),
                int(s["accelerator"]["memory_mb"]), int(s["score_mflops"]), int(s["max_items"]),
                int(s["price_per_item_micro"]), int(s["issued_ms"]), int(s["expires_ms"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise Rejected(f"capacity-offer: malformed ({exc})") from exc
        tx.execute(
            "INSERT INTO capacity_offers (offer_id, device, envelope, kind, memory_mb, score_mflops, max_items, "
            "price_micro, made_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            row,
        )

    def _withdraw(self, tx: Tx, device: str, s: Mapping[str, Any], now: int) -> None:
        offer_id = str(s.get("offer_id"))
        tx.execute(
            "UPDATE capacity_offers SET withdrawn_ms = ?, reason = ? WHERE offer_id = ? AND device = ? "
            "AND withdrawn_ms IS NULL",
            (now, str(s.get("reason", ""))[:200], offer_id, device),
        )
        tx.execute(
            "UPDATE capacity_assignments SET state = 'withdrawn' WHERE offer_id = ? AND device = ? "
            "AND state = 'dispatched'",
            (offer_id, device),
        )

    def _result(self, tx: Tx, device: str, s: Mapping[str, Any], envelope: Any, now: int) -> None:
        job_id = str(s.get("job_id"))
        job = tx.one("SELECT bundle, batch, items, state FROM capacity_jobs WHERE job_id = ?", (job_id,))
        assignment = tx.one("SELECT state FROM capacity_assignments WHERE job_id = ? AND device = ?", (job_id, device))
        if job is None or assignment is None:
            raise Rejected(f"capacity-result: job {job_id} was not given to {device}")
        if (s.get("bundle"), s.get("batch")) != (job[0], job[1]):
            raise Rejected(f"capacity-result: job {job_id}: bundle or batch differs from the job's")
        if assignment[0] in ("done", "late", "preempted", "failed"):
            return  # a resent result: already recorded
        status, outputs = s.get("status"), s.get("outputs")
        if status == "done" and (not isinstance(outputs, list) or len(outputs) != int(job[2])):
            raise Rejected(f"capacity-result: job {job_id}: {s.get('items')!r:.20} outputs for {job[2]} items")
        if status == "done" and not all(type(o) is list and all(type(v) is int for v in o) for o in outputs or ()):
            raise Rejected(f"capacity-result: job {job_id}: outputs must be lists of integers (micro-units)")
        if status == "done" and job[3] not in _OPEN:
            state = "late"  # the job was finished by another device meanwhile: kept, not paid
        else:
            state = {"done": "done", "preempted": "preempted"}.get(str(status), "failed")
        tx.execute(
            "UPDATE capacity_assignments SET state = ?, result = ? WHERE job_id = ? AND device = ?",
            (state, json.dumps(envelope), job_id, device),
        )
        if state == "done":
            self._settle(tx, job_id, now)

    def _settle(self, tx: Tx, job_id: str, now: int) -> None:
        spot = tx.one("SELECT spot_check, items FROM capacity_jobs WHERE job_id = ?", (job_id,))
        assert spot is not None
        done = tx.all(
            "SELECT device, price_micro, result FROM capacity_assignments WHERE job_id = ? AND state = 'done' "
            "ORDER BY dispatched_ms",
            (job_id,),
        )
        if len(done) < (2 if spot[0] else 1):
            return
        outputs = [json.loads(str(r[2]))["signed"]["outputs"] for r in done]
        if spot[0]:
            differ = disagreements(outputs[0], outputs[1])
            if differ:
                tx.execute(
                    "UPDATE capacity_jobs SET state = 'disputed', reason = ?, updated_ms = ? WHERE job_id = ?",
                    (f"the primary and the check device disagree on items {differ[:20]}", now, job_id),
                )
                return
        tx.execute(
            "UPDATE capacity_jobs SET state = 'done', reason = '', outputs = ?, updated_ms = ? WHERE job_id = ?",
            (json.dumps(outputs[0]), now, job_id),
        )
        for device, price, result in done:
            receipts = json.loads(str(result))["signed"].get("receipts", [])
            tx.execute(
                "INSERT INTO capacity_payouts (job_id, device, items, amount_micro, receipts, paid_ms) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (job_id, device, int(spot[1]), payout_micro(int(spot[1]), int(price)), json.dumps(receipts), now),
            )

    # --- jobs ------------------------------------------------------------------------------------------------

    def submit(self, clinic: str, bundle: str, batch: str, needs: Requirements, spot_check: bool | None = None) -> str:
        """Queue a job: run ``bundle`` (sha256) on ``batch`` (sha256) meeting ``needs``; returns its id. Spot
        checked (also run on a second device) when ``spot_check``, or for ``spot_check_fraction`` of jobs."""
        job_id = uuid.uuid4().hex
        check = spot_checked(job_id, self.spot_check_fraction) if spot_check is None else spot_check
        now = self.clock()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO capacity_jobs (job_id, clinic, bundle, batch, items, needs, spot_check, state, reason, "
                "created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', '', ?, ?)",
                (job_id, clinic, bundle, batch, needs.items, json.dumps(asdict(needs)), int(check), now, now),
            )
        return job_id

    def tick(self) -> list[tuple[str, dict[str, Any]]]:
        """End overdue assignments and dispatch jobs short of devices; returns ``(device, job envelope)`` pairs to
        publish. Needs the relay's signing key."""
        if self.key is None:
            raise RelayConfigError("the capacity coordinator has no signing key: it cannot dispatch jobs")
        key, now = self.key, self.clock()
        out: list[tuple[str, dict[str, Any]]] = []
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE capacity_assignments SET state = 'timeout' WHERE state = 'dispatched' AND deadline_ms < ?",
                (now,),
            )
            offers = [
                Offer(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]),
                      int(r[8]), bool(r[9]))
                for r in tx.all(
                    "SELECT o.offer_id, o.device, o.kind, o.memory_mb, o.score_mflops, o.max_items, o.price_micro, "
                    "o.made_ms, o.expires_ms, EXISTS (SELECT 1 FROM capacity_assignments a WHERE a.offer_id = "
                    "o.offer_id AND a.state = 'dispatched') FROM capacity_offers o "
                    "WHERE o.withdrawn_ms IS NULL AND o.expires_ms > ?",
                    (now,),
                )
            ]  # fmt: skip
            for job_id, bundle, batch, items, needs_json, spot in tx.all(
                "SELECT job_id, bundle, batch, items, needs, spot_check FROM capacity_jobs WHERE state = 'queued' "
                "ORDER BY created_ms"
            ):
                used = tx.all("SELECT device, state FROM capacity_assignments WHERE job_id = ?", (job_id,))
                active = sum(1 for _, state in used if state in ("dispatched", "done"))
                for role in ("primary", "check")[active : 2 if spot else 1]:
                    offer = match(offers, Requirements(**json.loads(str(needs_json))), now, [str(d) for d, _ in used])
                    if offer is None:
                        break
                    envelope = sign(
                        JOB,
                        {
                            "job_id": str(job_id), "device": offer.device, "offer_id": offer.offer_id,
                            "bundle": str(bundle), "batch": str(batch), "items": int(items),
                            "price_per_item_micro": offer.price_per_item_micro, "issued_ms": now,
                            "expires_ms": now + self.job_timeout_ms,
                        },
                        key,
                    )  # fmt: skip
                    tx.execute(
                        "INSERT INTO capacity_assignments (job_id, device, offer_id, role, price_micro, state, "
                        "dispatched_ms, deadline_ms) VALUES (?, ?, ?, ?, ?, 'dispatched', ?, ?)",
                        (job_id, offer.device, offer.offer_id, role, offer.price_per_item_micro, now,
                         now + self.job_timeout_ms),
                    )  # fmt: skip
                    offers = [o for o in offers if o.offer_id != offer.offer_id]
                    used.append((offer.device, "dispatched"))
                    out.append((offer.device, envelope))
        return out

    # --- blobs ------------------------------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Store a bundle or batch; returns its sha256 hex (storing the same bytes twice is a no-op)."""
        digest = hashlib.sha256(data).hexdigest()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO capacity_blobs (sha256, data, created_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (digest, data, self.clock()),
            )
        return digest

    def blob(self, digest: str) -> bytes | None:
        """The blob with this sha256, or None."""
        with self.db.transaction() as tx:
            row = tx.one("SELECT data FROM capacity_blobs WHERE sha256 = ?", (digest,))
        return None if row is None else bytes(row[0])

    def has_blob(self, digest: str) -> bool:
        with self.db.transaction() as tx:
            return tx.one("SELECT 1 FROM capacity_blobs WHERE sha256 = ?", (digest,)) is not None

    # --- views -----------------------------------------------------------------------------------------------

    def job(self, job_id: str, clinic: str | None = None) -> dict[str, Any]:
        """A job's state, outputs (when done) and assignments; :class:`RegistryError` when unknown (or, with
        ``clinic``, another clinic's). With ``clinic``, an assignment to another clinic's device names no device
        (``"device": null``: see :meth:`market`)."""
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT clinic, state, reason, items, spot_check, outputs FROM capacity_jobs WHERE job_id = ?",
                (job_id,),
            )
            if row is None or (clinic is not None and row[0] != clinic):
                raise RegistryError(f"no job {job_id}")
            assignments = tx.all(
                "SELECT a.device, a.role, a.state, d.clinic FROM capacity_assignments a"
                " LEFT JOIN devices d ON d.id = a.device WHERE a.job_id = ? ORDER BY a.dispatched_ms",
                (job_id,),
            )
        return {
            "job_id": job_id,
            "state": row[1],
            "reason": row[2],
            "items": row[3],
            "spot_check": bool(row[4]),
            "outputs": None if row[5] is None else json.loads(str(row[5])),
            "assignments": [
                {"device": d if clinic is None or owner == clinic else None, "role": r, "state": s}
                for d, r, s, owner in assignments
            ],
        }

    def jobs(self, clinic: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs submitted by ``clinic`` (None: by any clinic), newest first, without outputs."""
        where, params = (" WHERE clinic = ?", (clinic,)) if clinic is not None else ("", ())
        with self.db.transaction() as tx:
            rows = tx.all(
                "SELECT job_id, clinic, state, reason, items, spot_check, created_ms, updated_ms FROM capacity_jobs"
                f"{where} ORDER BY created_ms DESC, job_id LIMIT ?",
                (*params, limit),
            )
        return [
            {"job_id": r[0], "clinic": r[1], "state": r[2], "reason": r[3], "items": int(r[4]),
             "spot_check": bool(r[5]), "created_ms": int(r[6]), "updated_ms": int(r[7])}
            for r in rows
        ]  # fmt: skip

    def offers(self) -> list[dict[str, Any]]:
        """Live offers (not withdrawn, not expired)."""
        with self.db.transaction() as tx:
            rows = tx.all(
                "SELECT envelope FROM capacity_offers WHERE withdrawn_ms IS NULL AND expires_ms > ? ORDER BY made_ms",
                (self.clock(),),
            )
        return [json.loads(str(r[0]))["signed"] for r in rows]

    def market(self, clinic: str) -> list[dict[str, Any]]:
        """The live offers as ``clinic`` sees them: every offer's terms (accelerator kind, memory, score, items,
        price, expiry), and the device and offer id only of the clinic's own devices (``None`` for the others).

        Another clinic's device ids, and when its units have spare time, are that clinic's business; a buyer needs
        the terms to set its requirements and price ceiling, and the relay does the matching.
        """
        with self.db.transaction() as tx:
            rows = tx.all(
                "SELECT o.offer_id, o.device, d.clinic, o.kind, o.memory_mb, o.score_mflops, o.max_items,"
                " o.price_micro, o.expires_ms FROM capacity_offers o LEFT JOIN devices d ON d.id = o.device"
                " WHERE o.withdrawn_ms IS NULL AND o.expires_ms > ? ORDER BY o.price_micro, o.made_ms",
                (self.clock(),),
            )
        return [
            {"device": device if owner == clinic else None, "offer_id": offer if owner == clinic else None,
             "kind": kind, "memory_mb": memory, "score_mflops": score, "max_items": items,
             "price_per_item_micro": price, "expires_ms": expires}
            for offer, device, owner, kind, memory, score, items, price, expires in rows
        ]  # fmt: skip

    def payouts(self, device: str | None = None, clinic: str | None = None) -> list[dict[str, Any]]:
        """Payouts for verified compute, oldest first: of one ``device``, of ``clinic``'s devices, or all.

        With ``clinic``, a ``device`` that is not the clinic's is :class:`RegistryError` (like an unknown one).
        """
        sql = "SELECT p.job_id, p.device, p.items, p.amount_micro, p.receipts, p.paid_ms FROM capacity_payouts p"
        where, params = [], []
        if clinic is not None:
            sql += " JOIN devices d ON d.id = p.device"
            where.append("d.clinic = ?")
            params.append(clinic)
        if device is not None:
            where.append("p.device = ?")
            params.append(device)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.db.transaction() as tx:
            mine = clinic is None or device is None
            if not mine and tx.one("SELECT 1 FROM devices WHERE id = ? AND clinic = ?", (device, clinic)) is None:
                raise RegistryError(f"no device {device!r} in this clinic")
            rows = tx.all(sql + " ORDER BY p.paid_ms, p.job_id, p.device", params)
        return [
            {"job_id": r[0], "device": r[1], "items": r[2], "amount_micro": r[3], "receipts": json.loads(str(r[4])),
             "paid_ms": r[5]}
            for r in rows
        ]  # fmt: skip
