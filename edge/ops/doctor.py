"""``btt-edge doctor``: what is wrong with this box, and how to fix it.

Each check returns a :class:`Check`: ``ok``, ``warn`` (works, but look at it) or ``fail`` (something will not
work), what it found, and for anything not ok the fix, in words a technician can act on. The checks cover the
configuration, the data directory and disk, the running agent (through its control socket, never its database),
the DICOM and metrics ports, the model bundle and which inference backend will run and why, the device keys, the
clock, the relay's broker, the unit's serial port and the update repository. They only look: nothing is created,
provisioned or changed.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from edge.config import AgentConfig
from edge.errors import ControlError, EdgeError

__all__ = ["CLOCK_FLOOR", "Check", "Status", "render", "run_checks", "summary"]

Status = Literal["ok", "warn", "fail"]

CLOCK_FLOOR = 1_767_225_600
"""2026-01-01T00:00:00Z: a clock before this is wrong (receipts and certificates would be misdated)."""


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def run_checks(config: AgentConfig, config_source: str) -> Iterator[Check]:
    """Every check, in the order a technician would go through them."""
    yield Check("configuration", "ok", f"{config_source}: valid")
    yield from _data_dir(config)
    agent = _agent(config)
    yield agent.check
    yield from agent.alerts
    if agent.dicom_port is not None and agent.dicom_port != config.dicom.port:
        yield Check(
            "dicom port",
            "warn",
            f"the agent listens on {agent.dicom_port}, the configuration says {config.dicom.port}",
            "a --port flag or BTT_EDGE_DICOM_PORT overrides [dicom] port; make them agree",
        )
    else:
        yield _port("dicom port", config.dicom.bind_address, config.dicom.port, agent.running, "[dicom] port")
    if config.metrics.port:
        yield _port("metrics port", config.metrics.bind_address, config.metrics.port, agent.running, "[metrics] port")
    yield from _platform()
    yield from _model(config)
    yield _keys(config)
    yield _clock()
    yield _broker(config)
    yield _serial(config)
    yield _ota(config)


# --- data directory and disk ----------------------------------------------------------------------------------


def _data_dir(config: AgentConfig) -> Iterator[Check]:
    d = config.agent.data_dir
    if not d.is_dir():
        yield Check(
            "data directory",
            "fail",
            f"{d} does not exist",
            f"create it for the agent's user: sudo install -d -o btt-edge -g btt-edge -m 0750 {d}",
        )
        return
    if not os.access(d, os.W_OK | os.X_OK):
        yield Check("data directory", "fail", f"{d} is not writable by this user", f"sudo chown -R btt-edge: {d}")
    else:
        yield Check("data directory", "ok", str(d))
    usage = shutil.disk_usage(d)
    free_mb, reserve = usage.free // 2**20, config.dicom.min_free_mb
    detail = f"{free_mb} MB free of {usage.total // 2**20} MB (reserve {reserve} MB)"
    if free_mb < reserve:
        yield Check(
            "disk",
            "fail",
            detail + ": images are refused (0xA700)",
            "free space (btt-edge results / [retention] prune_after_days) or lower [dicom] min_free_mb",
        )
    elif free_mb < 2 * reserve:
        yield Check("disk", "warn", detail + ": close to the reserve", "set [retention] prune_after_days")
    else:
        yield Check("disk", "ok", detail)


# --- the running agent ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Agent:
    running: bool
    check: Check
    alerts: tuple[Check, ...] = ()
    dicom_port: int | None = None


def _agent(config: AgentConfig) -> _Agent:
    from edge.control import ControlClient

    path = config.control.path(config.agent.data_dir)
    if not config.control.enabled:
        return _Agent(False, Check("agent", "warn", "[control] enabled = false: cannot ask the agent", ""))
    try:
        with ControlClient(path, timeout_s=10.0) as client:
            ping = client.call("ping")
            overview = client.call("overview")
    except ControlError as exc:
        return _Agent(False, Check("agent", "warn", str(exc), "start it: sudo systemctl start btt-edge"))
    alerts = tuple(
        Check("agent alert", "fail" if a["level"] == "error" else "warn", a["text"], "see `btt-edge tui` (Overview)")
        for a in overview["alerts"]
    )
    detail = f"running, pid {ping['pid']}, version {ping['version']}, up {ping['uptime_s']} s ({path})"
    return _Agent(True, Check("agent", "ok", detail), alerts, int(overview["dicom"]["port"]))


# --- ports ------------------------------------------------------------------------------------------------------


def _port(name: str, host: str, port: int, agent_running: bool, key: str) -> Check:
    if agent_running:
        return Check(name, "ok", f"{host}:{port} (held by the running agent)")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return Check(
                name,
                "fail",
                f"{host}:{port} is in use by another program",
                f"find it with `ss -ltnp 'sport = :{port}'` and stop it, or change {key}",
            )
        if exc.errno == errno.EACCES:
            return Check(
                name,
                "fail",
                f"no permission to listen on {host}:{port}",
                "ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it) or a port >= 1024",
            )
        return Check(name, "fail", f"cannot listen on {host}:{port}: {exc.strerror}", f"check {key} and the address")
    finally:
        sock.close()
    return Check(name, "ok", f"{host}:{port} is free for the agent")


# --- model and backend ----------------------------------------------------------------------------------------


def _platform() -> Iterator[Check]:
    """Python and, on a Jetson, JetPack's GPU wiring (edge.jetson; the backend itself is checked by _model)."""
    from edge.jetson import assess, gather_facts

    for check in assess(gather_facts(backends=False)):
        yield Check(check.name, "ok" if check.ok else "fail", check.detail, check.fix)


def _model(config: AgentConfig) -> Iterator[Check]:
    if not config.pipeline.enabled:
        yield Check("model", "warn", "[pipeline] enabled = false: images are not analysed", "")
        return
    from edge.pipeline.backends.base import BackendOptions
    from edge.pipeline.backends.selection import default_factories, select_backend
    from models.bundle import load_bundle
    from ota.service import build_updater

    try:
        path = build_updater(config).active_path()
        bundle = load_bundle(path)
    except EdgeError as exc:
        yield Check(
            "model",
            "fail",
            str(exc),
            "reinstall the bundle ([pipeline] bundle_path) or roll back: btt-edge ota rollback",
        )
        return
    manifest = bundle.manifest
    yield Check("model", "ok", f"{manifest.id} {manifest.version} ({path})")
    reasons = []
    for factory in default_factories():
        why = factory.unavailable_reason()
        if why is not None and (config.pipeline.backend in ("auto", factory.kind)):
            reasons.append(f"{factory.kind}: {why}")
    try:
        options = BackendOptions(threads=config.pipeline.threads, variants=config.pipeline.variants)
        backend = select_backend(bundle, config.pipeline.backend, options)
    except EdgeError as exc:
        yield Check(
            "backend",
            "fail",
            str(exc),
            'set [pipeline] backend = "auto", or install the GPU stack (JetPack / the gpu extra)',
        )
        return
    name = f"{backend.name} ({backend.precision})"
    backend.close()
    not_used = f"; not used: {'; '.join(reasons)}" if reasons else ""
    yield Check(
        "backend",
        "ok",
        f"{name} will run (setting {config.pipeline.backend}, golden vectors pass){not_used}",
    )


# --- keys, clock --------------------------------------------------------------------------------------------------


def _keys(config: AgentConfig) -> Check:
    if not config.receipts.enabled:
        return Check("device keys", "ok", "receipts are off ([receipts] enabled = false)")
    from edge.receipts.identity import load_identity
    from edge.receipts.service import key_files

    files = key_files(config)
    if files.next_certificate.exists():
        return Check("device keys", "warn", "a key rotation is half done", "restart the agent; it completes it")
    try:
        identity = load_identity(files)
    except EdgeError as exc:
        return Check("device keys", "fail", str(exc), "fix the file named, or re-provision: btt-edge provision")
    if identity is None:
        if config.receipts.manufacturer_key or config.receipts.dev_mode:
            return Check("device keys", "warn", "no identity yet; the agent provisions one at its first start")
        return Check(
            "device keys",
            "fail",
            f"no device identity in {files.directory}: uses are parked, not billed",
            "btt-edge provision (factory line or manufacturer service)",
        )
    not_after = identity.parsed.not_after_ms
    if not_after is not None and not_after < time.time() * 1000:
        return Check("device keys", "fail", f"certificate of {identity.device_id} has expired", "btt-edge provision")
    return Check("device keys", "ok", f"device {identity.device_id}, certificate serial {identity.parsed.serial}")


def _clock(now: Callable[[], float] = time.time, synced: Callable[[], bool | None] | None = None) -> Check:
    t = now()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    if t < CLOCK_FLOOR:
        return Check(
            "clock",
            "fail",
            f"system time {stamp} is before 2026: receipts and certificates would be misdated",
            "enable NTP: sudo timedatectl set-ntp true (or set the time: sudo date -s ...)",
        )
    state = (synced or _ntp_synchronized)()
    if state is False:
        return Check("clock", "warn", f"{stamp}, not synchronised with NTP", "sudo timedatectl set-ntp true")
    return Check("clock", "ok", stamp + (", NTP synchronised" if state else ""))


def _ntp_synchronized() -> bool | None:
    if shutil.which("timedatectl") is None:
        return None
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value)


# --- peers ------------------------------------------------------------------------------------------------------


def _reachable(host: str, port: int, timeout_s: float = 5.0) -> str | None:
    """None when a TCP connection to ``host:port`` opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def _broker(config: AgentConfig) -> Check:
    url = config.sync.url
    if not url:
        return Check("relay broker", "ok", "no relay configured ([sync] url): everything is queued offline")
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    why = _reachable(host, port)
    if why is not None:
        return Check(
            "relay broker",
            "fail",
            f"{host}:{port} cannot be reached: {why}",
            "check the network, DNS and firewall (outbound TCP to the broker); the outbox keeps everything meanwhile",
        )
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        file = getattr(config.sync, key)
        if file and not Path(file).is_file():
            return Check(
                "relay broker", "fail", f"[sync] {key} {file} does not exist", "install the file or fix the key"
            )
    return Check("relay broker", "ok", f"{host}:{port} reachable ({parts.scheme})")


def _serial(config: AgentConfig) -> Check:
    port = config.unit.port
    if not port:
        return Check("serial port", "ok", "no unit link configured ([unit] port)")
    path = Path(port)
    if not path.exists():
        return Check(
            "serial port",
            "fail",
            f"{port} does not exist",
            "check the cable and the adapter; list ports with `ls -l /dev/serial/by-id/` and set [unit] port",
        )
    if not os.access(path, os.R_OK | os.W_OK):
        return Check(
            "serial port",
            "fail",
            f"no read/write permission on {port}",
            "add the agent's user to the dialout group: sudo usermod -aG dialout btt-edge",
        )
    return Check("serial port", "ok", f"{port} ({os.path.realpath(path)})")


def _ota(config: AgentConfig) -> Check:
    ota = config.ota
    if not ota.repository_url:
        return Check("update repository", "ok", "no update repository configured ([ota] repository_url)")
    if not Path(ota.trusted_root).is_file():
        return Check(
            "update repository",
            "fail",
            f"[ota] trusted_root {ota.trusted_root} does not exist",
            "install the manufacturer's root.json and point [ota] trusted_root at it",
        )
    parts = urlsplit(ota.repository_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    why = _reachable(parts.hostname or "", port)
    if why is not None:
        return Check(
            "update repository",
            "warn",
            f"{parts.hostname}:{port} cannot be reached: {why}",
            "updates wait until it can be reached; check the network",
        )
    return Check("update repository", "ok", f"{parts.hostname}:{port} reachable")


def render(checks: list[Check]) -> str:
    """Checks as text lines for a terminal."""
    tags: dict[str, str] = {"ok": "[ OK ]", "warn": "[WARN]", "fail": "[FAIL]"}
    lines = []
    for c in checks:
        lines.append(f"{tags[c.status]} {c.name:<18} {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"{'':7}{'':<18} fix: {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    lines.append("all checks passed" if not failed and not warned else f"{failed} problem(s), {warned} warning(s)")
    return "\n".join(lines)


def summary(checks: list[Check]) -> dict[str, Any]:
    """Checks as JSON."""
    return {"ok": not any(c.status == "fail" for c in checks), "checks": [c.to_json() for c in checks]}
