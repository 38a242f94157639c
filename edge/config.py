"""Agent configuration: one TOML file, environment overrides, frozen dataclasses with documented defaults.

Each section of the TOML file is one frozen dataclass below; every field documents its default and, where it
has one, its bounds (``field(metadata=...)``). The loader rejects unknown keys and out-of-range values with a
:class:`~edge.errors.ConfigError` that names the key, so a typo never silently falls back to a default.

Precedence, lowest first: the defaults here, the TOML file, environment variables, command-line flags.
An environment variable overrides one key: ``BTT_EDGE_<SECTION>_<KEY>``, upper case, e.g.
``BTT_EDGE_DICOM_PORT=11113`` or ``BTT_EDGE_DICOM_ALLOWED_CALLING_AES=UNIT1,UNIT2`` (lists are comma-separated).
``examples/edge.toml`` is a commented copy of every default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

from edge.errors import ConfigError
from edge.pipeline.backends.registry import BackendChoice
from edge.results.kinds import DEFAULT_KINDS, PROTOCOL_MEDIA_TYPES, ResultKind, spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack)
    import tomli as tomllib

__all__ = [
    "ENV_PREFIX",
    "AgentConfig",
    "AgentSection",
    "CapacityConfig",
    "ControlConfig",
    "DestinationAuth",
    "DestinationConfig",
    "DestinationProtocol",
    "DicomConfig",
    "DicomwebConfig",
    "MetricsConfig",
    "OtaConfig",
    "OutboxConfig",
    "PipelineConfig",
    "PlanConfig",
    "ReceiptsConfig",
    "ResultsConfig",
    "RetentionConfig",
    "SyncConfig",
    "UnitConfig",
    "bounded",
    "check_uid_root",
    "load_config",
    "with_overrides",
]

ENV_PREFIX = "BTT_EDGE_"

T = TypeVar("T")


def bounded(default: T, *, lo: float | None = None, hi: float | None = None) -> T:
    """A dataclass field with inclusive numeric bounds checked by the loader."""
    return field(default=default, metadata={"lo": lo, "hi": hi})


@dataclass(frozen=True)
class AgentSection:
    """``[agent]``: where the agent keeps its state and how it logs."""

    data_dir: Path = Path("/var/lib/btt-edge")
    """Images, the index database, keys and the outbox live here."""
    log_format: Literal["text", "json"] = "text"
    """``text``: one readable line per event; ``json``: one JSON object per line for log shippers."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_third_party_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    """Libraries' loggers (highdicom, pydicom, pynetdicom, paho...), never more verbose than ``log_level``."""
    log_file: str = ""
    """Also write the log to this file, rotated at ``log_max_mb`` keeping ``log_backups`` old files. Empty: standard
    error only (journald keeps it)."""
    log_max_mb: int = bounded(20, lo=1, hi=10_000)
    log_backups: int = bounded(5, lo=1, hi=100)
    group_access: bool = False
    """Let the agent's group read the data directory: nothing in it looser than 0750 (directories) and 0640
    (files), umask 0027; images, the database and keys stay 0600. Off: the agent's user only (0700/0600, umask
    0077), the data directory 0710 when the control socket in it is open to the group (``[control]
    group_access``). Either way the agent tightens what it finds looser at start, and ``btt-edge doctor`` warns."""


@dataclass(frozen=True)
class DicomConfig:
    """``[dicom]``: the storage SCP that receives images from the X-ray unit."""

    ae_title: str = "BTT_EDGE"
    """Our AE title (1-16 characters)."""
    bind_address: str = "0.0.0.0"
    port: int = bounded(11112, lo=1, hi=65535)
    allowed_calling_aes: tuple[str, ...] = ()
    """Calling AE titles allowed to associate. Empty: the allow-list is off and any AE may store."""
    max_associations: int = bounded(8, lo=1, hi=256)
    """Concurrent associations; more are rejected (transient, so the unit retries)."""
    min_free_mb: int = bounded(1024, lo=0)
    """Free-space reserve on the data disk. Below it, C-STORE answers 0xA700 (out of resources)."""
    max_pdu_bytes: int = bounded(4_194_304, lo=0)
    """Maximum PDU length we receive (0 = unlimited). Large PDUs mean fewer reads per image."""
    duplicate_policy: Literal["keep", "replace", "reject"] = "keep"
    """Same SOP Instance UID with different content: ``keep`` the first (and log), ``replace`` it, or ``reject``
    the new copy with status 0x0111 (duplicate SOP instance). Identical copies are always acknowledged."""
    acse_timeout_s: float = bounded(30.0, lo=1, hi=3600)
    dimse_timeout_s: float = bounded(60.0, lo=1, hi=3600)
    network_timeout_s: float = bounded(60.0, lo=1, hi=3600)

    def __post_init__(self) -> None:
        if not 1 <= len(self.ae_title.strip()) <= 16:
            raise ConfigError(f"dicom.ae_title: {self.ae_title!r} must be 1 to 16 characters")
        for ae in self.allowed_calling_aes:
            if not 1 <= len(ae.strip()) <= 16:
                raise ConfigError(f"dicom.allowed_calling_aes: {ae!r} must be 1 to 16 characters")


@dataclass(frozen=True)
class DicomwebConfig:
    """``[dicomweb]``: the STOW-RS receiver (``edge.ingest.stow``) for sources that upload over HTTP; off by default.

    It stores into the same store as the SCP, with the same checks and durability, and answers per instance."""

    enabled: bool = False
    bind_address: str = "127.0.0.1"
    """Listen address. Beyond loopback it needs ``token_file`` or ``tls_client_ca_file``."""
    port: int = bounded(8104, lo=1, hi=65535)
    token_file: str = ""
    """File holding the bearer token clients must send (first line, mode 0600). Empty: no token is asked for."""
    tls_cert_file: str = ""
    """Our server certificate (PEM): serve ``https``. Empty: plain ``http``."""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    """CA bundle client certificates must chain to (mutual TLS). Empty: no client certificate is asked for."""
    max_request_mb: int = bounded(1024, lo=1, hi=65536)
    """Largest request body; a larger one is refused with 413 before it is stored."""
    timeout_s: float = bounded(60.0, lo=1, hi=3600)
    """A client silent this long mid-request is dropped (nothing of that request is stored)."""

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("dicomweb.tls_cert_file and dicomweb.tls_key_file: give both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("dicomweb.tls_client_ca_file: needs tls_cert_file and tls_key_file (https)")
        if self.enabled and not (self.token_file or self.tls_client_ca_file) and not _loopback(self.bind_address):
            raise ConfigError(
                f"dicomweb.bind_address: {self.bind_address} is not loopback; set dicomweb.token_file or "
                "dicomweb.tls_client_ca_file so that only known sources can store"
            )


def _loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RetentionConfig:
    """``[retention]``: pruning pixel data of studies that are fully processed and forwarded."""

    prune_after_days: int = bounded(0, lo=0, hi=36500)
    """Days after which pixel data of a done instance is removed (its index row stays). 0 = never."""
    interval_s: float = bounded(3600.0, lo=10)
    """How often the pruner runs."""


@dataclass(frozen=True)
class UnitConfig:
    """``[unit]``: the serial link to the X-ray unit's controller (``firmware_bridge``). It only listens and asks:
    it never commands or blocks an exposure."""

    port: str = ""
    """Serial port of the unit, best a stable udev name (``/dev/serial/by-id/...``). Empty: no unit link."""
    baudrate: int = bounded(115200, lo=1200, hi=4_000_000)
    parity: Literal["none", "even", "odd"] = "none"
    driver: str = "reference"
    """``reference`` (this bridge's protocol) or a manufacturer's driver as ``package.module:factory``."""
    read_timeout_s: float = bounded(0.1, lo=0.001, hi=10)
    ack_timeout_s: float = bounded(0.25, lo=0.005, hi=30)
    """A DATA frame not acknowledged within this is sent again."""
    max_retries: int = bounded(8, lo=0, hi=100)
    """Retransmissions before the link re-handshakes (the message is kept and sent after)."""
    hello_interval_s: float = bounded(1.0, lo=0.01, hi=60)
    peer_timeout_s: float = bounded(5.0, lo=0, hi=3600)
    """No heartbeat or message from the unit for this long: the link counts as down. 0 = never."""
    reopen_initial_s: float = bounded(0.5, lo=0.01, hi=60)
    """First delay before reopening a lost port; doubles up to ``reopen_max_s``."""
    reopen_max_s: float = bounded(10.0, lo=0.01, hi=600)
    resync_interval_s: float = bounded(60.0, lo=0.1, hi=86400)
    """How often the agent asks for the unit's exposure log since the last exposure it recorded."""
    match_window_s: float = bounded(120.0, lo=1, hi=86400)
    """An image matches an exposure of the same unit whose start is this close to its acquisition time."""
    match_grace_s: float = bounded(600.0, lo=1, hi=604800)
    """After this long unmatched, an exposure is recorded as without image, an image as without exposure."""
    match_interval_s: float = bounded(5.0, lo=0.05, hi=3600)
    """How often images are matched to exposures and the link status is saved."""


@dataclass(frozen=True)
class ReceiptsConfig:
    """``[receipts]``: service-right receipts and settlement (``edge.receipts``)."""

    enabled: bool = True
    """Record a signed receipt for every use and close settlements. Off: no book, no settlement service."""
    manufacturer_key: str = ""
    """Manufacturer *private* key file (factory line, demo): a fresh data directory is provisioned with a device
    identity on the first ``run``. Empty: provision with ``btt-edge provision``."""
    trust_keys: tuple[str, ...] = ()
    """Manufacturer public key files the box checks its own certificate against at start. Empty: not checked."""
    issuer_keys: tuple[str, ...] = ()
    """Public key files of the rights issuers whose grants the box accepts."""
    device_id: str = ""
    """Device identifier written into the certificate at provisioning. Empty: ``btt-<key id prefix>``."""
    asset_id: str = ""
    """The asset grants must name (the unit or this box). Empty: the device id."""
    settle_interval_s: float = bounded(3600.0, lo=1, hi=2_678_400)
    """Close a settlement when the oldest unsettled receipt is this old."""
    settle_max_receipts: int = bounded(1000, lo=1, hi=1_000_000)
    """Close a settlement as soon as this many receipts are unsettled (also the most one settlement covers)."""
    check_interval_s: float = bounded(5.0, lo=0.05, hi=3600)
    """How often the settlement service looks at the unsettled receipts, and re-reads the device identity (one
    provisioned or rotated while the agent runs is taken at the next look)."""
    dev_mode: bool = False
    """Demo only: with no ``manufacturer_key``, create a DEVELOPMENT manufacturer key under ``<data_dir>/keys``
    and provision with it on the first ``run`` (logged loudly; such receipts are worthless to a real relay)."""
    hybrid: bool = False
    """Provision a hybrid identity on the first ``run`` (with ``manufacturer_key`` or ``dev_mode``): an ML-DSA-65 key
    beside the ed25519 one, both signing every receipt and settlement (``btt-edge provision --hybrid``)."""


@dataclass(frozen=True)
class OutboxConfig:
    """``[outbox]``: the durable queue of what goes to the relay (``edge.outbox``). Receipts, settlements and the
    device certificate are never dropped; telemetry (results summaries, capacity offers, health) is bounded."""

    max_telemetry_items: int = bounded(10_000, lo=10, hi=10_000_000)
    """Pending telemetry items kept; beyond this the oldest are dropped (and counted in the health report)."""
    keep_done_days: float = bounded(7.0, lo=0, hi=3650)
    """Items the relay acknowledged are deleted this long after (receipts stay in the receipt book)."""
    feed_interval_s: float = bounded(1.0, lo=0.05, hi=3600)
    """How often new receipts and settlements are copied from the receipt book into the outbox."""


@dataclass(frozen=True)
class SyncConfig:
    """``[sync]``: the MQTT v5 link to the cloud relay (``edge.sync``). With no ``url`` the agent queues offline."""

    url: str = ""
    """Broker, ``mqtts://host:8883`` (TLS) or ``mqtt://host:1883``; user and password may be given as
    ``mqtt://user:password@host``. Empty: no link, everything stays queued in the outbox."""
    username: str = ""
    """MQTT username. Empty: the device id (the broker's ACL expects it; with client certificates the broker
    takes the certificate's CN instead)."""
    password_file: str = ""
    """File holding the MQTT password (first line). Empty: no password (client certificate or URL)."""
    ca_file: str = ""
    """CA bundle that signs the broker's certificate (``mqtts``). Empty: the system's CAs."""
    cert_file: str = ""
    """This device's client certificate (PEM), CN = device id. Empty: no client certificate."""
    key_file: str = ""
    """The client certificate's private key (PEM)."""
    keepalive_s: int = bounded(60, lo=5, hi=65535)
    session_expiry_s: int = bounded(604_800, lo=0, hi=4_294_967_295)
    """The broker keeps our session (subscriptions, queued acks) this long after we drop off."""
    connect_timeout_s: float = bounded(10.0, lo=0.5, hi=300)
    backoff_initial_s: float = bounded(1.0, lo=0.01, hi=3600)
    """Reconnect delays: full jitter, a random wait up to ``min(backoff_max_s, backoff_initial_s * 2**n)``."""
    backoff_max_s: float = bounded(300.0, lo=0.01, hi=86400)
    ack_timeout_s: float = bounded(60.0, lo=0.1, hi=86400)
    """An up message the relay has not acknowledged within this is sent again."""
    max_inflight: int = bounded(8, lo=1, hi=1000)
    """Up messages awaiting the relay's acknowledgement at once."""
    batch_max_items: int = bounded(100, lo=1, hi=10_000)
    """Outbox items per up message."""
    batch_max_bytes: int = bounded(262_144, lo=1024, hi=1_000_000)
    """Largest up message; the shipped broker config allows 1 MiB."""
    health_interval_s: float = bounded(300.0, lo=1, hi=86400)
    """How often a health report (outbox depth, drop counters, link state) is queued."""

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ConfigError(f"sync.url: {self.url!r} is not mqtt://host[:port] or mqtts://host[:port]")
            try:
                parts.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError:
                raise ConfigError(f"sync.url: {self.url!r} has a bad port") from None
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("sync.cert_file and sync.key_file: give both or neither")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ConfigError("sync.backoff_initial_s: above sync.backoff_max_s")


_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def check_uid_root(root: str) -> str:
    """``root`` if it is a dotted-number UID root of at most 40 characters (so that a 24-digit suffix fits)."""
    if len(root) > 40 or not _UID_ROOT_RE.match(root):
        raise ConfigError(f"results.org_root: {root!r} must be a dotted-number UID root of at most 40 characters")
    return root


_FORWARD_RE = re.compile(r"^([^@\s\\]{1,16})@([^@\s:]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})$")


DestinationProtocol = Literal["dimse", "dicomweb", "fhir"]
"""How a destination is reached: DICOM C-STORE (``dimse``), STOW-RS (``dicomweb``) or a FHIR transaction (``fhir``)."""

DestinationAuth = Literal["none", "bearer", "basic"]
"""HTTP authentication of a ``dicomweb`` or ``fhir`` destination (mutual TLS is ``tls_cert_file``/``tls_key_file``)."""


@dataclass(frozen=True)
class DestinationConfig:
    """One ``[[results.destinations]]`` table: a peer (the clinic's PACS, VNA or EHR) that receives result objects.

    A ``dimse`` destination is ``ae_title``, ``host`` and ``port``; a ``dicomweb`` or ``fhir`` one is its base
    ``url`` (``https://`` or, on a trusted network, ``http://``) with ``auth``. All of them share the durable queue,
    its retries, dead letters and ``btt-edge results resend``.
    """

    ae_title: str = ""
    """The destination's AE title (1-16 characters); ``dimse`` only."""
    host: str = ""
    port: int = bounded(104, lo=1, hi=65535)
    kinds: tuple[ResultKind, ...] = ()
    """What it gets: kinds of :data:`edge.results.kinds.KINDS` (``sr``, the structured report; ``overlay``, the
    annotated Secondary Capture; ``gsps``; ``original``, every image as received; ``fhir``, the FHIR Bundle). Not
    given: ``sr`` and ``overlay`` (``dimse``, ``dicomweb``), ``fhir`` (``fhir``)."""
    tls: bool = False
    """``dimse``: associate over TLS (the PACS's certificate is checked against ``tls_ca_file``, else the system
    CAs). ``https://`` URLs always use TLS, checked the same way."""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    """Our client certificate, when the peer asks for one (with ``tls_key_file``)."""
    tls_key_file: str = ""
    protocol: DestinationProtocol = "dimse"
    url: str = ""
    """``dicomweb``: the DICOMweb service's base URL (STOW-RS posts to ``<url>/studies``); ``fhir``: the FHIR
    server's base URL (a transaction Bundle is posted to it)."""
    auth: DestinationAuth = "none"
    """``bearer``: ``Authorization: Bearer`` with the token in ``token_file``; ``basic``: ``username`` and the
    password in ``password_file``. Secrets live in files (mode 0600), never in this configuration."""
    token_file: str = ""
    username: str = ""
    password_file: str = ""

    def __post_init__(self) -> None:
        if self.protocol == "dimse":
            if not 1 <= len(self.ae_title.strip()) <= 16 or "\\" in self.ae_title:
                raise ConfigError(f"results.destinations.ae_title: {self.ae_title!r} must be 1 to 16 characters")
            if not self.host:
                raise ConfigError(f"results.destinations.host: missing for {self.ae_title}")
            if self.url:
                raise ConfigError(f"results.destinations.url: a dimse destination ({self.ae_title}) has no url")
        else:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"results.destinations.url: {self.url!r} is not an http(s) URL ({self.protocol} destination)"
                )
            if self.auth == "bearer" and not self.token_file:
                raise ConfigError(f"results.destinations.token_file: auth = 'bearer' needs it ({self.url})")
            if self.auth == "basic" and not (self.username and self.password_file):
                raise ConfigError(f"results.destinations: auth = 'basic' needs username and password_file ({self.url})")
        if not self.kinds:  # not given: what the protocol is for
            object.__setattr__(self, "kinds", ("fhir",) if self.protocol == "fhir" else DEFAULT_KINDS)
        carried = PROTOCOL_MEDIA_TYPES[self.protocol]
        if wrong := [k for k in self.kinds if spec(k).media_type not in carried]:
            raise ConfigError(
                f"results.destinations.kinds: a {self.protocol} destination cannot take {', '.join(wrong)}"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("results.destinations.tls_cert_file and tls_key_file: give both or neither")

    @property
    def name(self) -> str:
        """The key of this destination in the delivery queue: ``AE@host:port``, or ``<protocol>:<url>``."""
        if self.protocol == "dimse":
            return f"{self.ae_title}@{self.host}:{self.port}"
        return f"{self.protocol}:{self.url.rstrip('/')}"


def _parse_forward(text: str) -> DestinationConfig:
    """``AE@HOST:PORT`` (``--forward``, ``results.forward``) as a destination that gets the SR and the overlay."""
    match = _FORWARD_RE.match(text.strip())
    if match is None:
        raise ConfigError(f"results.forward: {text!r} is not AE@HOST:PORT")
    ae, host, port = match.groups()
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"results.forward: {text!r} has a bad port")
    return DestinationConfig(ae_title=ae, host=host.strip("[]"), port=int(port))


@dataclass(frozen=True)
class ResultsConfig:
    """``[results]``: DICOM result objects (SR, overlay) and their delivery to the clinic's PACS (``edge.results``)."""

    enabled: bool = True
    """Build the SR and the overlay for every analysed image. Off: nothing is built or forwarded."""
    org_root: str = "1.2.826.0.1.3680043.8.498"
    """UID root of the new objects (at most 40 characters). The default is pydicom's open root; a manufacturer
    sets its own."""
    tooth_numbering: Literal["fdi", "fdi+universal"] = "fdi"
    """How the overlay's findings table names teeth: FDI (ISO 3950), or FDI and Universal (the SR always has both)."""
    forward: tuple[str, ...] = ()
    """Shorthand destinations ``AE@HOST:PORT`` that get the SR and the overlay (``run --forward`` sets this)."""
    destinations: tuple[DestinationConfig, ...] = ()
    """Full destinations as ``[[results.destinations]]`` tables (see examples/edge.toml)."""
    poll_interval_s: float = bounded(0.05, lo=0.01, hi=60)
    """How often the index is checked for newly analysed images and due deliveries."""
    backoff_initial_s: float = bounded(5.0, lo=0.01, hi=3600)
    """First retry delay after a failed delivery; doubles per attempt up to ``backoff_max_s``."""
    backoff_max_s: float = bounded(600.0, lo=0.01, hi=86400)
    max_attempts: int = bounded(500, lo=1, hi=1_000_000)
    """Attempts before a delivery is dead-lettered (kept with its last error; ``btt-edge results resend``).
    The default outlasts a PACS that is down for three days at the maximum backoff."""
    batch_size: int = bounded(16, lo=1, hi=1000)
    """Objects sent per association."""
    connect_timeout_s: float = bounded(10.0, lo=0.1, hi=600)
    dimse_timeout_s: float = bounded(60.0, lo=1, hi=3600)

    def __post_init__(self) -> None:
        check_uid_root(self.org_root)
        if self.backoff_initial_s > self.backoff_max_s:
            raise ConfigError("results.backoff_initial_s: above results.backoff_max_s")
        names = [d.name for d in self.all_destinations()]
        if len(set(names)) != len(names):
            raise ConfigError(f"results.destinations: a destination is listed twice ({', '.join(names)})")

    def all_destinations(self) -> tuple[DestinationConfig, ...]:
        """``destinations`` and then the ``forward`` shorthands."""
        return self.destinations + tuple(_parse_forward(text) for text in self.forward)


@dataclass(frozen=True)
class PipelineConfig:
    """``[pipeline]``: on-device analysis of received images (``edge.pipeline``)."""

    enabled: bool = True
    """Analyse received images. Off: images are stored and forwarded without AI findings."""
    bundle_path: Path = Path("models/bundles/reference-dental")
    """Model bundle (directory or tar archive). Relative paths are resolved against the agent's installation."""
    extra_bundles: tuple[Path, ...] = ()
    """More bundles active beside ``bundle_path`` (e.g. an intra-oral model beside the panoramic one); OTA updates
    only ``bundle_path``. Each image goes to the first bundle, ``bundle_path`` first, whose manifest ``accepts`` it
    (docs/bundles.md); an image none accepts is skipped with the reason and gets no findings."""
    backend: BackendChoice = "auto"
    """``auto``: the best that is available and passes the bundle's golden vectors, in the order of
    :data:`edge.pipeline.backends.registry.BACKENDS` (TensorRT, then ONNX Runtime on the GPU, then on the CPU);
    a kind forces that backend."""
    threads: int = bounded(2, lo=1, hi=64)
    """Intra-op threads of ONNX Runtime on the CPU."""
    tensorrt_precision: Literal["fp32", "fp16", "int8"] = "fp16"
    """Native TensorRT engine precision; ``int8`` calibrates on the bundle's golden inputs."""
    variants: bool = True
    """Also try the bundle's variants for the backend (the reference bundle's INT8 network on ONNX Runtime's CPU)
    and run the fastest network that passes its golden vectors. Off: always the bundle's own network."""
    queue_size: int = bounded(8, lo=1, hi=1024)
    """Received instances taken from the index at a time (first in, first out)."""
    poll_interval_s: float = bounded(1.0, lo=0.05, hi=3600)
    """How often the worker looks for newly received instances when not woken."""
    ingest_quiet_s: float = bounded(0.3, lo=0.0, hi=10.0)
    """Analysis yields to ingest: the next image waits while data arrived on an open association within this many
    seconds (a batch from the unit is stored at full speed, then analysed). 0: analysis never waits for ingest."""
    max_defer_s: float = bounded(5.0, lo=0.1, hi=600.0)
    """The longest analysis waits for ingest in a row; then one image is analysed and it waits again, so a long
    transfer never starves analysis."""


@dataclass(frozen=True)
class OtaConfig:
    """``[ota]``: signed over-the-air model updates (``ota``, docs/ota.md). With no ``repository_url``: off."""

    repository_url: str = ""
    """Base URL of the update repository (``metadata/`` and ``targets/`` below it), ``https://`` (or ``http://``:
    the metadata is signed either way). Empty: the box never looks for updates."""
    trusted_root: str = ""
    """The manufacturer's ``root.json`` the box trusts first (newer roots are reached through it). Required with
    ``repository_url``."""
    ca_file: str = ""
    """CA bundle for an ``https`` repository. Empty: the system's CAs."""
    check_interval_s: float = bounded(3600.0, lo=10, hi=604_800)
    """How often the repository is asked (an ``ota-available`` command from the relay asks at once)."""
    timeout_s: float = bounded(30.0, lo=1, hi=600)
    """Longest wait for the repository on one read."""
    min_download_rate: int = bounded(16384, lo=1, hi=1_073_741_824)
    """Slowest rate, bytes/s, a download is allowed: each may take ``timeout_s`` plus its length at this rate, so a
    mirror that trickles bytes cannot hold a check (TUF's slow retrieval attack)."""
    max_download_s: float = bounded(3600.0, lo=10, hi=86_400)
    """Longest any one download may take, whatever its length (a bundle cut short resumes at the next check)."""
    max_bundle_bytes: int = bounded(536_870_912, lo=1024, hi=8_589_934_592)
    """A bundle larger than this is refused before download, whatever the signed metadata says."""
    failure_threshold: int = bounded(3, lo=1, hi=1000)
    """Consecutive failed studies after a switch that bring the previous model back."""
    watch_studies: int = bounded(50, lo=1, hi=1_000_000)
    """Studies observed after a switch; a model that got through them is confirmed."""
    groups: tuple[str, ...] = ()
    """Rollout groups this box belongs to (a bundle may go to a group, e.g. ``pilot``, first)."""

    def __post_init__(self) -> None:
        if self.repository_url:
            parts = urlsplit(self.repository_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"ota.repository_url: {self.repository_url!r} is not http(s)://host/...")
            if not self.trusted_root:
                raise ConfigError("ota.trusted_root: required with ota.repository_url")


@dataclass(frozen=True)
class ControlConfig:
    """``[control]``: the local control socket the terminal UI, ``btt-edge doctor`` and health checks use
    (``edge.control``). Technician actions through it are recorded in the audit log (table ``control_audit``)."""

    enabled: bool = True
    socket_path: str = ""
    """Unix socket of the control API. Empty: ``<data_dir>/control.sock``."""
    group_access: bool = True
    """Socket mode 0660 (the agent's group may use it, e.g. a ``btt-tech`` group); off: 0600 (its user only)."""
    log_lines: int = bounded(2000, lo=100, hi=100_000)
    """Recent log lines kept in memory for the terminal UI's live log view."""
    max_connections: int = bounded(32, lo=2, hi=1024)
    """Connections open at once. One more closes the connection idle longest, so the terminal UI and ``btt-edge
    doctor`` get in however many idle clients there are (each client reconnects when it needs to)."""
    idle_timeout_s: float = bounded(30.0, lo=1, hi=3600)
    """A connection with no complete request for this long is closed."""

    def path(self, data_dir: Path) -> Path:
        """The socket's path for an agent whose data directory is ``data_dir``."""
        return Path(self.socket_path) if self.socket_path else data_dir / "control.sock"


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus metrics (``/metrics``) and health (``/healthz``) HTTP endpoint (``edge.ops``)."""

    port: int = bounded(0, lo=0, hi=65535)
    """TCP port of the endpoint, e.g. 9464. 0: no endpoint."""
    bind_address: str = "127.0.0.1"
    """Listen address; keep it on loopback or a management network (the endpoint has no authentication, and
    carries no patient data)."""


@dataclass(frozen=True)
class CapacityConfig:
    """``[capacity]``: sharing the idle accelerator with the network (``edge.capacity``). Off by default; clinical
    work always pre-empts a shared job. ``btt-edge capacity enable|disable`` overrides ``enabled`` at run time."""

    enabled: bool = False
    """Offer spare capacity. Off: no offer is published and no job is accepted."""
    relay_key: str = ""
    """Hex Ed25519 public key the relay signs jobs with; a job signed by any other key is refused. Empty: no job
    is accepted (offers are still published when enabled)."""
    blob_url: str = ""
    """Base URL the relay serves job bundles and input batches from (``<blob_url>/<sha256>``); each is checked
    against the hash the signed job names. Empty: jobs are refused (nothing to fetch them from)."""
    min_download_rate: int = bounded(16384, lo=1, hi=1_073_741_824)
    """Slowest rate, bytes/s, a blob download is allowed: each may take 30 s plus its length (as the server states
    it, else the most a blob may hold) at this rate, so a server that trickles bytes cannot hold the job worker."""
    max_download_s: float = bounded(1800.0, lo=10, hi=86_400)
    """Longest any one blob download may take, whatever its length; a job whose blob is slower is refused."""
    opening_hours: tuple[str, ...] = ("mon-fri 07:00-19:00", "sat 08:00-13:00")
    """Local times the clinic is open, ``"<days> HH:MM-HH:MM"`` (days ``mon``..``sun``, ranges ``mon-fri``, lists
    ``mon,wed``). Nothing is offered during opening hours."""
    idle_minutes: float = bounded(15.0, lo=0, hi=1440)
    """Outside opening hours, offer only after this long without clinical work (an image received or analysed)."""
    max_memory_mb: int = bounded(2048, lo=64, hi=1_048_576)
    """Memory cap of the job worker (address-space limit) and the most the offer promises."""
    max_power_w: int = bounded(0, lo=0, hi=10_000)
    """Power cap stated in the offer; no offer while the accelerator already draws more (NVML, tegrastats); 0: no
    cap."""
    max_load: float = bounded(0.5, lo=0.0, hi=64.0)
    """No offer while the 1-minute load average per core is above this."""
    max_items: int = bounded(256, lo=1, hi=1_000_000)
    """Largest batch (items) one job may carry."""
    max_job_s: float = bounded(600.0, lo=1, hi=86_400)
    """CPU-seconds limit of one job worker (RLIMIT_CPU); it is killed beyond that."""
    price_per_item_micro: int = bounded(1000, lo=0, hi=1_000_000_000)
    """Asking price per processed item, in micro-units of the settlement currency."""
    offer_ttl_s: float = bounded(300.0, lo=10, hi=86_400)
    """An offer expires at the relay this long after it was made; it is renewed before that while it holds."""
    preempt: Literal["pause", "kill"] = "pause"
    """What clinical work does to a running job: ``pause`` (SIGSTOP, resumed when idle again) or ``kill`` (the job
    is given back to the relay)."""
    resume_after_s: float = bounded(2.0, lo=0, hi=3600)
    """A paused job resumes after this long without clinical activity."""
    poll_ms: int = bounded(10, lo=1, hi=1000)
    """How often clinical activity (an open DICOM association, an image waiting or in analysis) is checked; with
    the signal's delivery this bounds the pre-emption delay."""
    threads: int = bounded(1, lo=1, hi=64)
    """Threads of the job worker."""


@dataclass(frozen=True)
class PlanConfig:
    """``[plan]``: the draft treatment plan per study (``edge.plan``, docs/planning.md): an AI draft for the
    dentist to review, never a decision."""

    enabled: bool = True
    """Offer draft plans (``btt-edge plan``, the terminal UI's study view). Off: neither shows one."""
    code_set: str = "ada-cdt"
    """Procedure codes: ``ada-cdt`` (ADA CDT), ``cn`` (China: Chinese descriptors, the clinic's own codes) or the
    path of a code set file."""
    rules: str = ""
    """A clinic's rules table (a copy of ``edge/plan/data/rules.toml``). Empty: the shipped table."""
    fee_schedule: str = ""
    """The clinic's fee schedule (TOML: currency and minor units per procedure, ``examples/fees.toml``). Empty:
    plans carry no estimates."""
    currency: str = ""
    """The currency the fee schedule must be in (a plan refuses a schedule in another). Empty: the schedule's."""

    def __post_init__(self) -> None:
        if self.currency and not re.fullmatch(r"[A-Z][A-Z0-9]{2,11}", self.currency):
            raise ConfigError(f"plan.currency: {self.currency!r} is not a currency code (e.g. USD, CNY)")
        if self.currency and not self.fee_schedule:
            raise ConfigError("plan.currency: needs plan.fee_schedule (the currency of its fees)")


@dataclass(frozen=True)
class AgentConfig:
    """The whole configuration, one attribute per TOML section."""

    agent: AgentSection = field(default_factory=AgentSection)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    dicomweb: DicomwebConfig = field(default_factory=DicomwebConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    unit: UnitConfig = field(default_factory=UnitConfig)
    receipts: ReceiptsConfig = field(default_factory=ReceiptsConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)


# --- loading -------------------------------------------------------------------------------------------------


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Build the configuration from defaults, the TOML file at ``path`` (if any) and ``environ``."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    _apply_env(raw, os.environ if environ is None else environ)
    return _build(AgentConfig, raw, "")


def with_overrides(config: AgentConfig, **sections: Mapping[str, Any]) -> AgentConfig:
    """Return ``config`` with some keys replaced (command-line flags), validated like the file."""
    raw = _to_raw(config)
    for section, values in sections.items():
        raw.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return _build(AgentConfig, raw, "")


def _to_raw(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_raw(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return [_to_raw(item) for item in obj]
    return obj


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    sections = {f.name: f for f in dataclasses.fields(AgentConfig)}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(f"{name}: no configuration section matches this environment variable")
        key = rest[len(section) + 1 :]
        raw.setdefault(section, {})[key] = _EnvValue(value)


class _EnvValue(str):
    """A string from the environment, to be converted to the field's type."""


def _build(cls: type[T], raw: Any, prefix: str) -> T:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        kwargs[name] = _convert(hints[name], value, key)
        lo, hi = fields[name].metadata.get("lo"), fields[name].metadata.get("hi")
        if lo is not None and kwargs[name] < lo:
            raise ConfigError(f"{key}: {kwargs[name]} is below the minimum {lo}")
        if hi is not None and kwargs[name] > hi:
            raise ConfigError(f"{key}: {kwargs[name]} is above the maximum {hi}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")  # type: ignore[arg-type]
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return str(value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, _EnvValue) and value == ""):
            return None
        return _convert(args[0], value, key)
    if origin is tuple:
        item = get_args(tp)[0]
        if isinstance(value, _EnvValue):
            value = [_EnvValue(v.strip()) for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, _EnvValue):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        try:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError
            if tp is int and isinstance(value, float | str) and not isinstance(value, _EnvValue):
                raise ValueError
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a number'}, got {value!r}") from None
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported configuration type {tp!r}")  # pragma: no cover
