"""``btt-edge doctor``: what is wrong with this box, and how to fix it.

Each check returns a :class:`~edge.ops.health.Check`: ``ok``, ``warn`` (works, but look at it) or ``fail``
(something will not work), what it found, and for anything not ok the fix, in words a technician can act on.

When the agent runs, doctor asks it (its control socket, never its database) for its overview and judges it with
:func:`edge.ops.health.overview_checks`, the checks ``/healthz`` uses too: the disk, the model it runs, the unit
link on the port it actually uses (``run --serial`` included) and its alerts. The box's own checks (data
directory and permissions, platform, device keys, clock: :func:`edge.ops.health.box_checks`) are the agent's as
well, so doctor fails exactly when ``/healthz`` does for the same condition. With no agent running, doctor checks
the configuration instead: the ports are free, the model loads and which inference backend will run and why, the
unit's serial port. The relay's broker and the update repository are checked from here either way. Doctor only
looks: nothing is created, provisioned or changed.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.config import AgentConfig
from edge.errors import ControlError, EdgeError, ModelError
from edge.ops.health import CLOCK_FLOOR, Check, Status, box_checks, overview_checks

__all__ = ["CLOCK_FLOOR", "Check", "Status", "render", "run_checks", "summary"]


def run_checks(config: AgentConfig, config_source: str) -> Iterator[Check]:
    """Every check, in the order a technician would go through them."""
    yield Check("configuration", "ok", f"{config_source}: valid")
    agent = _agent(config)
    yield agent.check
    if agent.overview is None:
        yield from box_checks(config)
    else:  # the agent's health, as /healthz has it (this user may not write its data directory, the agent does)
        yield from box_checks(config, writable=False, disk=False)
        yield from overview_checks(agent.overview)
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
    if not agent.running:
        yield from _model(config)
    yield _broker(config)
    if not agent.running:
        yield _serial(config)
    yield _ota(config)


# --- the running agent ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Agent:
    check: Check
    overview: Mapping[str, Any] | None = None
    """The running agent's overview (None: no agent answered)."""
    dicom_port: int | None = None

    @property
    def running(self) -> bool:
        return self.overview is not None


def _agent(config: AgentConfig) -> _Agent:
    from edge.control import ControlClient

    path = config.control.path(config.agent.data_dir)
    if not config.control.enabled:
        return _Agent(Check("agent", "warn", "[control] enabled = false: cannot ask the agent", ""))
    try:
        with ControlClient(path, timeout_s=10.0) as client:
            ping = client.call("ping")
            overview = client.call("overview")
    except ControlError as exc:
        return _Agent(Check("agent", "warn", str(exc), "start it: sudo systemctl start btt-edge"))
    detail = f"running, pid {ping['pid']}, version {ping['version']}, up {ping['uptime_s']} s ({path})"
    return _Agent(Check("agent", "ok", detail), overview, int(overview["dicom"]["port"]))


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


def _model(config: AgentConfig) -> Iterator[Check]:
    """Every bundle the agent will run (the active OTA slot or ``bundle_path``, then ``extra_bundles``): it loads,
    and which backend will run it."""
    if not config.pipeline.enabled:
        yield Check("model", "warn", "[pipeline] enabled = false: images are not analysed", "")
        return
    from edge.agent import updater_for

    try:
        primary = updater_for(config).active_path()
    except (EdgeError, ModelError) as exc:
        yield Check(
            "model",
            "fail",
            str(exc),
            "reinstall the bundle ([pipeline] bundle_path) or roll back: btt-edge ota rollback",
        )
        return
    yield from _bundle(
        config, primary, "model", "reinstall the bundle ([pipeline] bundle_path) or roll back: btt-edge ota rollback"
    )
    for path in config.pipeline.extra_bundles:
        yield from _bundle(
            config, path, "extra model", "reinstall the bundle or remove it from [pipeline] extra_bundles"
        )


def _bundle(config: AgentConfig, path: Path, name: str, fix: str) -> Iterator[Check]:
    from edge.pipeline.backends.base import BackendOptions
    from edge.pipeline.backends.selection import default_factories, select_backend
    from models.bundle import load_bundle

    try:
        bundle = load_bundle(path)
    except (EdgeError, ModelError) as exc:
        yield Check(name, "fail", str(exc), fix)
        return
    manifest = bundle.manifest
    yield Check(name, "ok", f"{manifest.id} {manifest.version} ({path})")
    reasons = []
    for factory in default_factories():
        why = factory.unavailable_reason()
        if why is not None and (config.pipeline.backend in ("auto", factory.kind)):
            reasons.append(f"{factory.kind}: {why}")
    try:
        options = BackendOptions(threads=config.pipeline.threads, variants=config.pipeline.variants)
        backend = select_backend(bundle, config.pipeline.backend, options)
    except (EdgeError, ModelError) as exc:
        yield Check(
            "backend",
            "fail",
            f"{manifest.id}: {exc}",
            'set [pipeline] backend = "auto", or install the GPU stack (JetPack / the gpu extra)',
        )
        return
    chosen = f"{backend.name} ({backend.precision})"
    backend.close()
    not_used = f"; not used: {'; '.join(reasons)}" if reasons else ""
    yield Check(
        "backend",
        "ok",
        f"{chosen} will run {manifest.id} (setting {config.pipeline.backend}, golden vectors pass){not_used}",
    )


# --- peers ------------------------------------------------------------------------------------------------------


def _reachable(host: str, port: int, timeout_s: float = 5.0) -> str | None:
    """None when a TCP connection to ``host:port`` opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def _broker(config: AgentConfig) -> Check:
    """The relay's broker answers (a warning if not: the outbox keeps everything, as the agent's relay alert
    says) and the files ``[sync]`` names exist."""
    url = config.sync.url
    if not url:
        return Check("relay broker", "ok", "no relay configured ([sync] url): everything is queued offline")
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        file = getattr(config.sync, key)
        if file and not Path(file).is_file():
            return Check(
                "relay broker", "fail", f"[sync] {key} {file} does not exist", "install the file or fix the key"
            )
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    why = _reachable(host, port)
    if why is not None:
        return Check(
            "relay broker",
            "warn",
            f"{host}:{port} cannot be reached: {why}",
            "check the network, DNS and firewall (outbound TCP to the broker); the outbox keeps everything meanwhile",
        )
    return Check("relay broker", "ok", f"{host}:{port} reachable ({parts.scheme})")


def _serial(config: AgentConfig) -> Check:
    """The configured unit port (a running agent's link, on whatever port it was given, is in its overview)."""
    port = config.unit.port
    if not port:
        return Check("serial port", "ok", "no unit link configured ([unit] port, or run --serial)")
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
    """Checks as JSON (``ok`` as ``/healthz`` has it: no check fails)."""
    return {"ok": not any(c.status == "fail" for c in checks), "checks": [c.to_json() for c in checks]}
