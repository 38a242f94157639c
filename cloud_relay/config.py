"""Relay configuration: frozen dataclasses with documented, bounded defaults, built from ``btt-relay run`` flags.

Each value is checked when the dataclass is built; a bad one raises :class:`RelayConfigError` naming the
option. ``MqttConfig.from_url`` reads ``mqtt://user:password@host:port`` (``mqtts://`` for TLS).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cloud_relay.chain.config import ChainConfig
from cloud_relay.errors import RelayConfigError

__all__ = ["HttpConfig", "IngestConfig", "LedgerConfig", "MqttConfig", "RelayConfig"]


def _check_bounds(obj: object, bounds: dict[str, tuple[float, float]]) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        if f.name in bounds:
            lo, hi = bounds[f.name]
            value = getattr(obj, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
                raise RelayConfigError(f"{f.name} must be a number from {lo:g} to {hi:g}, got {value!r}")


@dataclass(frozen=True)
class MqttConfig:
    """The broker connection of one relay worker."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    """CA of the broker's certificate (TLS; default: the system's)."""
    cert_file: Path | None = None
    """Client certificate (CN ``btt-relay``) when the broker requires one."""
    key_file: Path | None = None
    group: str = "btt-relay"
    """Shared-subscription group: every worker of one relay uses the same group and splits the stream."""
    client_id: str = "btt-relay-1"
    """Unique per worker; a restarted worker with the same id resumes its session (unacked messages)."""
    keepalive_s: int = 30
    """MQTT keep-alive, 5-600 s."""
    session_expiry_s: int = 86_400
    """How long the broker keeps the worker's session while it is away, 0-30 days."""
    receive_maximum: int = 1_000
    """Unacknowledged messages the broker may have in flight to this worker (MQTT v5), 1-65535."""

    def __post_init__(self) -> None:
        _check_bounds(
            self,
            {
                "port": (1, 65535),
                "keepalive_s": (5, 600),
                "session_expiry_s": (0, 30 * 86_400),
                "receive_maximum": (1, 65535),
            },
        )
        for name in ("group", "client_id"):
            value = getattr(self, name)
            if not value or any(c in value for c in "/+#"):
                raise RelayConfigError(f"{name} {value!r} must be non-empty without '/', '+' or '#'")

    @classmethod
    def from_url(cls, url: str, **options: object) -> MqttConfig:
        """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``; ``options`` set the other fields."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise RelayConfigError(f"--mqtt {url!r} must look like mqtt://[user:password@]host[:port]")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise RelayConfigError(f"--mqtt {url!r}: {exc}") from exc
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            **options,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class IngestConfig:
    """How a worker groups messages into store transactions."""

    batch_max: int = 500
    """Messages per transaction (one commit, then the acks), 1-10000."""
    batch_wait_ms: int = 20
    """How long a batch waits to fill after its first message, 0-1000 ms."""
    retry_s: float = 1.0
    """Pause before retrying a batch the database refused (nothing is acked meanwhile), 0.05-60 s."""
    verify_threads: int = 2
    """Threads checking a batch's signatures side by side (PyNaCl releases the GIL), 1-64; 1: no extra thread."""

    def __post_init__(self) -> None:
        _check_bounds(
            self,
            {"batch_max": (1, 10_000), "batch_wait_ms": (0, 1000), "retry_s": (0.05, 60), "verify_threads": (1, 64)},
        )


@dataclass(frozen=True)
class HttpConfig:
    """The clinic API listener."""

    host: str = "127.0.0.1"
    port: int = 0
    """0 = no API in this worker (run it in one worker, or behind a load balancer in several)."""

    def __post_init__(self) -> None:
        _check_bounds(self, {"port": (0, 65535)})


@dataclass(frozen=True)
class LedgerConfig:
    """Who is billed for uses without a right (at the tariff stored with ``btt-relay tariff set``)."""

    operator: str = "operator"


@dataclass(frozen=True)
class RelayConfig:
    """Everything ``btt-relay run`` needs."""

    db: str
    """SQLite file path (embedded default) or ``postgresql://`` URL."""
    mqtt: MqttConfig | None = None
    http: HttpConfig = HttpConfig()
    ingest: IngestConfig = IngestConfig()
    ledger: LedgerConfig = LedgerConfig()
    capacity_key: Path | None = None
    """The relay's private key file for signing capacity jobs (``cloud_relay.capacity``); with ``mqtt``, the
    worker also coordinates spare-capacity jobs. None: no dispatch (the capacity API still takes jobs)."""
    chain: ChainConfig | None = None
    """The ledger chain (:mod:`cloud_relay.chain`): anchor verified settlements, burn their units, send what the
    journal holds. None (the default): no chain; the database is the whole ledger."""
