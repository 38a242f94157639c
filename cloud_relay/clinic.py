"""What a clinic may read: its devices and their status, usage, receipts with inclusion proofs, settlements,
prepaid rights, share tables and capacity.

A receipt's proof is also available as the stand-alone document ``btt-edge receipts verify-proof`` checks.

Every query takes the clinic id and only ever returns that clinic's devices; a device of another clinic is
reported as unknown (:class:`RegistryError`), never as forbidden, so clinics cannot probe each other's ids.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from cloud_relay import fleet
from cloud_relay.errors import RegistryError
from cloud_relay.ledger import period_bounds
from cloud_relay.registry import Registry
from cloud_relay.storage import Database, Tx
from protocol import merkle
from protocol.verify import PROOF

__all__ = ["ClinicView"]


class ClinicView:
    """Read-only queries scoped to one clinic at a time."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._registry = Registry(db)

    def devices(self, clinic: str) -> list[dict[str, Any]]:
        return [d.to_json() for d in self._registry.devices(clinic)]

    @staticmethod
    def _own(tx: Tx, clinic: str, device: str) -> None:
        if tx.one("SELECT 1 FROM devices WHERE id = ? AND clinic = ?", (device, clinic)) is None:
            raise RegistryError(f"no device {device!r} in this clinic")

    def usage(self, clinic: str, period: str) -> dict[str, Any]:
        """Receipts, units and overage units per device and service kind in ``period`` (``YYYY-MM``)."""
        start, end = period_bounds(period)
        with self._db.transaction() as tx:
            rows = tx.all(
                "SELECT r.device, r.kind, count(*), sum(r.units), sum(r.overage_units) FROM receipts r"
                " JOIN devices d ON d.id = r.device WHERE d.clinic = ? AND r.time_ms >= ? AND r.time_ms < ?"
                " GROUP BY r.device, r.kind ORDER BY r.device, r.kind",
                (clinic, start, end),
            )
        return {
            "period": period,
            "usage": [
                {"device": r[0], "kind": r[1], "receipts": int(r[2]), "units": int(r[3]), "overage_units": int(r[4])}
                for r in rows
            ],
        }

    def receipts(self, clinic: str, device: str, after_seq: int, limit: int) -> dict[str, Any]:
        """Receipt envelopes after ``after_seq``, each with its settlement and RFC 9162 inclusion proof."""
        with self._db.transaction() as tx:
            self._own(tx, clinic, device)
            rows = tx.all(
                "SELECT seq, body, signatures FROM receipts WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?",
                (device, after_seq, limit),
            )
            settlements = tx.all(
                "SELECT batch, first_seq, last_seq, root, hash FROM settlements WHERE device = ?"
                " AND last_seq > ? AND first_seq <= ? ORDER BY batch",
                (device, after_seq, rows[-1][0] if rows else after_seq),
            )
            leaves = {
                s[0]: [
                    merkle.leaf_hash(str(r[0]).encode("utf-8"))
                    for r in tx.all(
                        "SELECT body FROM receipts WHERE device = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                        (device, s[1], s[2]),
                    )
                ]
                for s in settlements
            }
        out = []
        for seq, body, signatures in rows:
            entry: dict[str, Any] = {
                "seq": int(seq),
                "envelope": {"signed": json.loads(body), "signatures": json.loads(signatures)},
                "inclusion": None,
            }
            for batch, first, last, root, digest in settlements:
                if first <= seq <= last and len(leaves[batch]) == last - first + 1:
                    proof = merkle.inclusion_proof(int(seq - first), leaves[batch])
                    entry["inclusion"] = {
                        "settlement_batch": int(batch),
                        "settlement_hash": digest,
                        "root": root,
                        "index": int(seq - first),
                        "tree_size": int(last - first + 1),
                        "proof": [p.hex() for p in proof],
                    }
            out.append(entry)
        return {"device": device, "receipts": out}

    def proof(self, clinic: str, device: str, seq: int) -> dict[str, Any]:
        """A stand-alone inclusion proof of one receipt, the document ``btt-edge receipts verify-proof`` checks."""
        with self._db.transaction() as tx:
            self._own(tx, clinic, device)
            settlement = tx.one(
                "SELECT first_seq, last_seq, envelope FROM settlements WHERE device = ? AND first_seq <= ?"
                " AND ? <= last_seq",
                (device, seq, seq),
            )
            if settlement is None:
                raise RegistryError(f"receipt {seq} of {device} is not in a settlement at the relay")
            first, last = int(settlement[0]), int(settlement[1])
            rows = tx.all(
                "SELECT body, signatures FROM receipts WHERE device = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (device, first, last),
            )
            certificates = [
                json.loads(r[0]) for r in tx.all("SELECT envelope FROM certificates WHERE device = ?", (device,))
            ]
        leaves = [merkle.leaf_hash(str(r[0]).encode("utf-8")) for r in rows]
        body, signatures = rows[seq - first]
        return {
            "type": PROOF,
            "format": 1,
            "certificates": certificates,
            "receipt": {"signed": json.loads(body), "signatures": json.loads(signatures)},
            "settlement": json.loads(settlement[2]),
            "proof": [p.hex() for p in merkle.inclusion_proof(seq - first, leaves)],
        }

    def settlements(self, clinic: str, device: str) -> dict[str, Any]:
        """The device's verified settlement envelopes in batch order."""
        with self._db.transaction() as tx:
            self._own(tx, clinic, device)
            rows = tx.all("SELECT envelope FROM settlements WHERE device = ? ORDER BY batch", (device,))
        return {"device": device, "settlements": [json.loads(r[0]) for r in rows]}

    def capacity(self, clinic: str) -> dict[str, Any]:
        """The latest capacity offer of each of the clinic's devices that has published one."""
        with self._db.transaction() as tx:
            rows = tx.all(
                "SELECT r.device, r.body, r.received_ms FROM reports r JOIN devices d ON d.id = r.device"
                " WHERE d.clinic = ? AND r.kind = 'offers' AND r.received_ms = (SELECT max(received_ms)"
                " FROM reports x WHERE x.device = r.device AND x.kind = 'offers') ORDER BY r.device, r.item_id",
                (clinic,),
            )
        latest: dict[str, dict[str, Any]] = {}
        for device, body, received in rows:
            latest[device] = {"device": device, "offer": json.loads(body), "received_ms": int(received)}
        return {"capacity": list(latest.values())}

    def status(self, clinic: str, now_ms: int) -> dict[str, Any]:
        """Each device's last contact, link state, active model, outbox lag and alerts (:mod:`cloud_relay.fleet`;
        rejected messages are counted over the week before ``now_ms``)."""
        return {"devices": [s.to_json() for s in fleet.device_status(self._db, clinic, now_ms)]}

    def daily_usage(self, clinic: str, device: str, period: str) -> dict[str, Any]:
        """The device's receipts and units per UTC day and service kind in ``period`` (``YYYY-MM``)."""
        start, end = period_bounds(period)
        with self._db.transaction() as tx:
            self._own(tx, clinic, device)
        days = fleet.daily_usage(self._db, clinic, device, start, end)
        return {"device": device, "period": period, "days": [d.to_json() for d in days]}

    def rights(self, clinic: str) -> dict[str, Any]:
        """The clinic's prepaid rights (verified grants), each with the units its receipts at the relay used."""
        return {"rights": [b.to_json() for b in fleet.balances(self._db, clinic)]}

    def shares(self, clinic: str) -> dict[str, Any]:
        """The verified share tables of the assets the clinic's devices are, by asset and version."""
        tables = fleet.share_tables(self._db, clinic)
        return {"shares": [{**asdict(t), "owners": [asdict(o) for o in t.owners]} for t in tables]}
