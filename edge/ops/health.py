"""The agent's health: one list of typed checks behind ``btt-edge doctor``, ``/healthz``, the metrics and the TUI.

A :class:`Check` is ``ok``, ``warn`` (works, but look at it) or ``fail`` (something will not work), with what it
found and, when not ok, the fix in words a technician can act on. The health is ``ok`` unless a check fails:
``/healthz`` answers 503 exactly when ``btt-edge doctor`` would exit 1 for the same condition, because both
compute it here.

Two kinds of checks, each written once:

* :func:`overview_checks`: pure, from the running agent's overview (:meth:`edge.control.AgentState.overview`, also
  served on the control socket as ``overview``): the disk, the model it runs, the unit link on the port it
  actually uses (a ``--serial`` simulator too) and its open alerts;
* :func:`box_checks`: what the box shows whoever looks (the agent, or doctor beside it): the data directory and
  its permissions, the platform (Python, a Jetson's GPU wiring), the device keys, the clock.

:func:`agent_health` is both for the agent itself (``/healthz``, the metrics); doctor asks a running agent for its
overview and adds the box checks; the TUI calls :func:`overview_checks` on the overview it already has.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge.config import AgentConfig
from edge.errors import EdgeError
from runtime.durable import DataModes, loose_bits

if TYPE_CHECKING:
    from edge.control.state import AgentState, Overview

__all__ = [
    "CLOCK_FLOOR",
    "NOTICE",
    "Check",
    "Health",
    "Status",
    "agent_health",
    "box_checks",
    "clock_check",
    "data_dir_checks",
    "disk_check",
    "keys_check",
    "overview_checks",
    "permissions_check",
    "platform_checks",
]

Status = Literal["ok", "warn", "fail"]

CLOCK_FLOOR = 1_767_225_600
"""2026-01-01T00:00:00Z: a clock before this is wrong (receipts and certificates would be misdated)."""

_LEVEL: dict[Status, str] = {"fail": "error", "warn": "warning"}

NOTICE = "agent notice"
"""The name of a check made from one of the overview's notices, whose text already says what it is about."""


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class Health:
    """Every check of one agent; ``ok`` unless one fails."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def alerts(self) -> list[dict[str, str]]:
        """The checks that are not ok as alerts (``level`` error or warning, ``text``), errors first."""
        out = [
            {"level": _LEVEL[c.status], "text": c.detail if c.name == NOTICE else f"{c.name}: {c.detail}"}
            for c in self.checks
            if c.status != "ok"
        ]
        return sorted(out, key=lambda a: a["level"] != "error")

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks], "alerts": self.alerts()}


def agent_health(state: AgentState, overview: Overview | None = None) -> Health:
    """The running agent's health: :func:`box_checks` and :func:`overview_checks` (of ``overview`` when the
    caller already has it)."""
    doc = (state.overview() if overview is None else overview).to_json()
    return Health((*box_checks(state.config, disk=False), *overview_checks(doc)))


# --- from the running agent's overview (pure) -------------------------------------------------------------------


def overview_checks(overview: Mapping[str, Any]) -> list[Check]:
    """The checks of a running agent from its overview: disk, model, unit link, then each of its ``notices``
    (faults, failed analyses, parked uses, the relay link...) as a check of its own."""
    disk = overview["disk"]
    checks = [
        disk_check(int(disk["free_mb"]), int(disk["total_mb"]), int(disk["reserve_mb"])),
        _model_check(overview["pipeline"]),
        _unit_check(overview["unit"]),
    ]
    for notice in overview.get("notices", ()):
        status: Status = "fail" if notice["level"] == "error" else "warn"
        checks.append(Check(NOTICE, status, str(notice["text"]), "see `btt-edge tui` (Overview)"))
    return checks


def _model_check(pipeline: Mapping[str, Any]) -> Check:
    if not pipeline["enabled"]:
        return Check("model", "warn", "[pipeline] enabled = false: images are not analysed")
    model = pipeline["model"]
    if "error" in model:
        return Check(
            "model",
            "fail",
            f"the agent cannot load its model: {model['error']}",
            "reinstall the bundle ([pipeline] bundle_path) or roll back: btt-edge ota rollback",
        )
    ran = f", last ran on {pipeline['backend']} ({pipeline['precision']})" if pipeline.get("backend") else ""
    return Check("model", "ok", f"{model.get('id', '?')} {model.get('version', '')} in use{ran}")


def _unit_check(unit: Mapping[str, Any]) -> Check:
    port = unit.get("port") or ""
    if not unit["configured"]:
        return Check("unit link", "ok", "the agent runs no unit link ([unit] port, run --serial)")
    link = unit.get("link")
    if link is not None and link.get("state") == "connected":
        names = ", ".join(str(u.get("serial", "?")) for u in unit.get("units", ()) if isinstance(u, Mapping))
        return Check("unit link", "ok", f"{port}: connected" + (f" (unit {names})" if names else ""))
    state = "not started" if link is None else str(link.get("state"))
    error = "" if link is None or not link.get("error") else f": {link['error']}"
    return Check(
        "unit link",
        "fail",
        f"{port}: {state}{error}",
        "check the unit is on and the cable; `ls -l /dev/serial/by-id/` for the port; see `btt-edge tui` (Unit)",
    )


# --- the box ------------------------------------------------------------------------------------------------------


def box_checks(config: AgentConfig, *, writable: bool = True, disk: bool = True) -> list[Check]:
    """What the box shows: the data directory, its permissions (and disk), the device keys, the clock.

    ``writable``: check this user may write the data directory (not for doctor beside a running agent: the
    agent's user is what counts); ``disk``: check its disk (a running agent's overview has it)."""
    return [
        *data_dir_checks(config, writable=writable, disk=disk),
        *platform_checks(),
        keys_check(config),
        clock_check(),
    ]


def platform_checks() -> Iterator[Check]:
    """Python and, on a Jetson, JetPack's GPU wiring (:mod:`edge.jetson`; which backend runs is the model's
    business)."""
    from edge.jetson import assess, gather_facts

    for check in assess(gather_facts(backends=False)):
        yield Check(check.name, "ok" if check.ok else "fail", check.detail, check.fix)


def disk_check(free_mb: int, total_mb: int, reserve_mb: int) -> Check:
    """Free space on the data disk against ``[dicom] min_free_mb``: below it images are refused."""
    detail = f"{free_mb} MB free of {total_mb} MB (reserve {reserve_mb} MB)"
    if free_mb < reserve_mb:
        return Check(
            "disk",
            "fail",
            detail + ": images are refused (0xA700)",
            "free space (btt-edge results / [retention] prune_after_days) or lower [dicom] min_free_mb",
        )
    if free_mb < 2 * reserve_mb:
        return Check("disk", "warn", detail + ": close to the reserve", "set [retention] prune_after_days")
    return Check("disk", "ok", detail)


def data_dir_checks(config: AgentConfig, *, writable: bool = True, disk: bool = True) -> Iterator[Check]:
    """The data directory exists (and this user may write it, ``writable``), its permissions, and the disk it is
    on (``disk``)."""
    from edge.agent import data_modes

    d, modes = config.agent.data_dir, data_modes(config)
    if not d.is_dir():
        yield Check(
            "data directory",
            "fail",
            f"{d} does not exist",
            f"create it for the agent's user: sudo install -d -o btt-edge -g btt-edge -m {modes.root:04o} {d}",
        )
        return
    if writable and not os.access(d, os.W_OK | os.X_OK):
        yield Check("data directory", "fail", f"{d} is not writable by this user", f"sudo chown -R btt-edge: {d}")
    else:
        yield Check("data directory", "ok", str(d))
    yield permissions_check(d, modes)
    if disk:
        usage = shutil.disk_usage(d)
        yield disk_check(usage.free // 2**20, usage.total // 2**20, config.dicom.min_free_mb)


def permissions_check(data_dir: Path, modes: DataModes) -> Check:
    """The data directory and :func:`edge.agent.data_entries` (what is directly in it, the device keys) are no
    looser than ``modes``; what is deeper is out of reach through them."""
    from edge.agent import data_entries

    loose: list[str] = []
    unreadable = ""

    def look(path: Path, mode: int) -> None:
        bits = loose_bits(path, mode)
        if bits:
            name = "." if path == data_dir else str(path.relative_to(data_dir))
            loose.append(f"{name} {stat.S_IMODE(path.lstat().st_mode):04o} (at most {mode:04o})")

    look(data_dir, modes.root)
    try:
        for entry in data_entries(data_dir):
            look(entry, modes.directory if entry.is_dir() else modes.file)
    except PermissionError as exc:
        unreadable = f"; cannot look inside as this user ({exc.strerror})"
    if not loose:
        return Check(
            "permissions", "ok", f"{data_dir}: private (at most {modes.directory:04o}/{modes.file:04o})" + unreadable
        )
    group = "g-w,o-rwx" if modes.directory & 0o070 else "go-rwx"
    search = f" && sudo chmod g+x {data_dir}" if modes.root & 0o010 and not modes.directory & 0o070 else ""
    return Check(
        "permissions",
        "warn",
        "looser than the agent makes them (patient data): "
        + ", ".join(loose[:8])
        + (f" and {len(loose) - 8} more" if len(loose) > 8 else ""),
        f"sudo chmod -R {group} {data_dir}{search} (the agent also tightens them at its next start)",
    )


def keys_check(config: AgentConfig) -> Check:
    """The device identity the receipts are signed with: present, readable, not expired."""
    if not config.receipts.enabled:
        return Check("device keys", "ok", "receipts are off ([receipts] enabled = false)")
    from edge.receipts.identity import load_identity
    from edge.receipts.service import key_files

    files = key_files(config)
    data_dir = config.agent.data_dir
    try:
        if files.next_certificate.exists():
            return Check("device keys", "warn", "a key rotation is half done", "restart the agent; it completes it")
        identity = load_identity(files)
    except PermissionError as exc:
        return Check(
            "device keys",
            "warn",
            f"cannot read {files.directory} as this user ({exc.strerror})",
            f"run doctor as the agent's user: sudo -u btt-edge btt-edge doctor --data-dir {data_dir}",
        )
    except EdgeError as exc:
        return Check(
            "device keys",
            "fail",
            str(exc),
            f"fix the file named, or move {files.directory} aside and provision again: {_provision(data_dir)}",
        )
    if identity is None:
        if config.receipts.manufacturer_key or config.receipts.dev_mode:
            return Check("device keys", "warn", "no identity yet; the agent provisions one at its first start")
        return Check(
            "device keys",
            "fail",
            f"no device identity in {files.directory}: uses are parked, not billed",
            _provision(data_dir),
        )
    not_after = identity.parsed.not_after_ms
    if not_after is not None and not_after < time.time() * 1000:
        return Check(
            "device keys",
            "fail",
            f"certificate of {identity.device_id} has expired",
            f"btt-edge provision --data-dir {data_dir} --rotate --manufacturer-key M.key",
        )
    return Check("device keys", "ok", f"device {identity.device_id}, certificate serial {identity.parsed.serial}")


def _provision(data_dir: Path) -> str:
    """How to give the box an identity (``btt-edge provision --help``), as commands that work."""
    return (
        f"btt-edge provision --data-dir {data_dir} --dev (a development identity; its receipts are worthless "
        f"to a real relay), or for a clinic box btt-edge provision --data-dir {data_dir} --manufacturer-key M.key "
        "(factory line), or without --manufacturer-key and send keys/device.request.json to the manufacturer"
    )


def clock_check(now: Callable[[], float] = time.time, synced: Callable[[], bool | None] | None = None) -> Check:
    """The system clock is after :data:`CLOCK_FLOOR` and, where ``timedatectl`` says, NTP synchronised."""
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
    return {"yes": True, "no": False}.get(out.stdout.strip())
