"""What the relay knows of each device beyond its receipts: status and alerts, usage by day, prepaid rights, shares.

The API (``/v1/status``, ``/v1/devices/{device}/usage/daily``, ``/v1/rights``, ``/v1/shares`` through
:class:`~cloud_relay.clinic.ClinicView`) and the portal's pages read these same functions: one data path. They
are read-only and scoped exactly like ``ClinicView``: ``scope`` is a clinic id (only that clinic's devices, joined
on ``devices.clinic``) or None for the operator (every clinic). Capacity jobs are the coordinator's
(:meth:`~cloud_relay.capacity.coordinator.Coordinator.jobs`).

Health and result reports are stored by the relay as the device sent them (:mod:`cloud_relay.messages` checks
only that each is an object), so they are read like any outside input: a field of the wrong type is "unknown",
never an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cloud_relay.registry import ISSUER, DeviceInfo, Registry, trusted_keys
from cloud_relay.storage import Database, Tx
from protocol.errors import ProtocolError
from protocol.grants import Grant, verify_grant
from protocol.shares import ShareTable, verify_share_table

__all__ = [
    "Alert",
    "Balance",
    "DayUsage",
    "DeviceStatus",
    "assets",
    "balances",
    "daily_usage",
    "device_status",
    "share_tables",
]

DAY_MS = 86_400_000
REJECTS_WINDOW_MS = 7 * DAY_MS
_HEALTH_SCAN = 50
_OTA_ALERTS = ("rollback", "refused", "health_check_failed")


@dataclass(frozen=True)
class Alert:
    """Something to look at: ``code`` (a message id suffix) and its detail (a count or a reason)."""

    code: str
    detail: str
    at_ms: int | None = None


@dataclass(frozen=True)
class DeviceStatus:
    """What the relay knows of one device; None where it knows nothing."""

    device: str
    clinic: str | None
    asset: str
    revoked_ms: int | None
    last_seen_ms: int | None
    """The latest time the relay stored anything from it (receipt, settlement, report)."""
    last_seq: int
    """Its highest receipt sequence number at the relay (0: none)."""
    link_connected: bool | None
    """Whether its relay link was up, as its latest health report said."""
    health_ms: int | None
    """When that health report arrived."""
    model: str | None
    """``id version`` of the model bundle its latest receipt names (else its latest analysis summary)."""
    model_ms: int | None
    outbox_pending: int | None
    outbox_oldest_s: int | None
    alerts: tuple[Alert, ...]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "alerts": [asdict(a) for a in self.alerts]}


@dataclass(frozen=True)
class DayUsage:
    """Receipts and units of one service kind on one UTC day."""

    day_ms: int
    kind: str
    receipts: int
    units: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Balance:
    """A prepaid right and what the relay has seen used of it (prepaid units of its receipts)."""

    grant: Grant
    used: int

    @property
    def left(self) -> int:
        return max(0, self.grant.units - self.used)

    def to_json(self) -> dict[str, Any]:
        """The right as the relay verified it (prices in exact minor units), and ``used`` and ``left`` units."""
        return {**asdict(self.grant), "used": self.used, "left": self.left}


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _where(scope: str | None, column: str = "d.clinic") -> tuple[str, tuple[str, ...]]:
    return (f" AND {column} = ?", (scope,)) if scope is not None else ("", ())


def device_status(db: Database, scope: str | None, now_ms: int) -> list[DeviceStatus]:
    """The status of every device in ``scope``, by device id (rejects counted over the week before ``now_ms``)."""
    devices = Registry(db).devices(scope)
    with db.transaction() as tx:
        return [_status(tx, d, now_ms) for d in devices]


def _status(tx: Tx, info: DeviceInfo, now: int) -> DeviceStatus:
    device, revoked = info.id, info.revoked_ms
    seen = tx.one(
        "SELECT (SELECT max(received_ms) FROM receipts WHERE device = ?), (SELECT max(seq) FROM receipts WHERE"
        " device = ?), (SELECT max(received_ms) FROM settlements WHERE device = ?), (SELECT max(received_ms) FROM"
        " reports WHERE device = ?)",
        (device, device, device, device),
    )
    assert seen is not None
    times = [int(t) for t in (seen[0], seen[2], seen[3]) if t is not None]
    alerts: list[Alert] = []
    if revoked is not None:
        alerts.append(Alert("revoked", info.revoked_reason or "", int(revoked)))
    link: bool | None = None
    health_ms = pending = oldest = None
    for body, received in tx.all(
        "SELECT body, received_ms FROM reports WHERE device = ? AND kind = 'health' ORDER BY received_ms DESC LIMIT ?",
        (device, _HEALTH_SCAN),
    ):
        doc = _obj(_json(body))
        ota = _obj(doc.get("ota"))
        if ota.get("event") in _OTA_ALERTS:
            alerts.append(Alert(f"ota_{ota['event']}", str(ota.get("reason") or ota.get("error") or "")[:120]))
        if health_ms is None and isinstance(doc.get("link"), Mapping):
            health_ms = int(received)
            connected = doc["link"].get("connected")
            link = connected if isinstance(connected, bool) else None
            outbox = _obj(doc.get("outbox"))
            counts = _obj(outbox.get("pending")).values()
            pending = sum(c for c in counts if type(c) is int) if all(type(c) is int for c in counts) else None
            oldest = _int(outbox.get("oldest_pending_age_s"))
            if (_int(outbox.get("rejected")) or 0) > 0:
                alerts.append(Alert("outbox_rejected", str(outbox["rejected"])))
    model = model_ms = None
    for sql, id_key, version_key in (
        (
            "SELECT body, time_ms FROM receipts WHERE device = ? ORDER BY seq DESC LIMIT 1",
            "bundle_id",
            "bundle_version",
        ),
        (
            "SELECT body, received_ms FROM reports WHERE device = ? AND kind = 'results' ORDER BY received_ms DESC"
            " LIMIT 1",
            "model_id",
            "model_version",
        ),
    ):
        row = tx.one(sql, (device,))
        doc = _obj(_json(row[0])) if row is not None else {}
        if (
            row is not None
            and isinstance(doc.get(id_key), str)
            and doc[id_key]
            and isinstance(doc.get(version_key), str)
        ):
            model, model_ms = f"{doc[id_key]} {doc[version_key]}"[:120], int(row[1])
            break
    rejects = tx.one(
        "SELECT count(*) FROM rejects WHERE device = ? AND received_ms > ?", (device, now - REJECTS_WINDOW_MS)
    )
    if rejects is not None and int(rejects[0]):
        alerts.append(Alert("rejects", str(int(rejects[0]))))
    return DeviceStatus(
        device, info.clinic, info.asset, None if revoked is None else int(revoked), max(times) if times else None,
        int(seen[1] or 0), link, health_ms, model, model_ms, pending, oldest, tuple(alerts),
    )  # fmt: skip


def _json(text: Any) -> Any:
    try:
        return json.loads(str(text))
    except ValueError:
        return None


def daily_usage(db: Database, clinic: str, device: str, start_ms: int, end_ms: int) -> list[DayUsage]:
    """Receipts and units per UTC day and service kind of ``device`` (``clinic``'s) in ``[start_ms, end_ms)``."""
    with db.transaction() as tx:
        rows = tx.all(
            "SELECT r.time_ms / 86400000, r.kind, count(*), sum(r.units) FROM receipts r JOIN devices d"
            " ON d.id = r.device WHERE r.device = ? AND d.clinic = ? AND r.time_ms >= ? AND r.time_ms < ?"
            " GROUP BY r.time_ms / 86400000, r.kind ORDER BY 1, 2",
            (device, clinic, start_ms, end_ms),
        )
    return [DayUsage(int(r[0]) * DAY_MS, str(r[1]), int(r[2]), int(r[3])) for r in rows]


def balances(db: Database, scope: str | None) -> list[Balance]:
    """The prepaid rights held by ``scope`` (or all), each with the prepaid units its receipts at the relay used."""
    where, params = _where(scope, "holder")
    with db.transaction() as tx:
        issuers = {k.keyid: k for k in trusted_keys(tx, ISSUER)}
        out = []
        for grant_id, envelope in tx.all(f"SELECT id, envelope FROM grants WHERE 1 = 1{where} ORDER BY id", params):
            try:
                grant = verify_grant(json.loads(str(envelope)), issuers)
            except (ProtocolError, ValueError):
                continue  # an issuer key no longer trusted: the ledger does not price with it either
            used_where, used_params = _where(scope)
            used = tx.one(
                "SELECT coalesce(sum(r.units - r.overage_units), 0) FROM receipts r JOIN devices d ON d.id = r.device"
                f" WHERE r.right_id = ?{used_where}",
                (grant_id, *used_params),
            )
            out.append(Balance(grant, int(used[0]) if used else 0))
    return out


def share_tables(db: Database, scope: str | None) -> list[ShareTable]:
    """The verified share tables of the assets of ``scope``'s devices (or of every asset), by asset and version."""
    where, params = _where(scope)
    with db.transaction() as tx:
        issuers = {k.keyid: k for k in trusted_keys(tx, ISSUER)}
        rows = tx.all(
            "SELECT s.envelope FROM share_tables s WHERE s.asset IN (SELECT d.asset FROM devices d WHERE 1 = 1"
            f"{where}) ORDER BY s.asset, s.version",
            params,
        )
    tables = []
    for (envelope,) in rows:
        try:
            tables.append(verify_share_table(json.loads(str(envelope)), issuers))
        except (ProtocolError, ValueError):
            continue
    return tables


def assets(tables: Sequence[ShareTable], owner: str) -> list[ShareTable]:
    """The tables that name ``owner``."""
    return [t for t in tables if any(s.owner == owner for s in t.owners)]
