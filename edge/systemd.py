"""systemd service notification (``sd_notify``) without a dependency: one datagram per state to $NOTIFY_SOCKET.

The agent runs as ``Type=notify`` with ``WatchdogSec=`` (``packaging/systemd/btt-edge.service``): it sends
``READY=1`` once every service has started, ``WATCHDOG=1`` every half watchdog interval while it runs, and
``STOPPING=1`` when it begins to stop. Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
The protocol is a ``AF_UNIX`` datagram of newline-separated ``KEY=VALUE`` lines; an address starting with ``@``
is in the abstract namespace. Notification is best effort: a failure to send is logged, never raised, because a
service must not stop over its supervisor's socket.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

from runtime.logs import event

__all__ = ["Notifier", "notifier_from_env", "watchdog_interval_s"]

log = logging.getLogger("edge.systemd")


class Notifier:
    """Sends state lines to the service manager's notification socket (``None``: outside systemd, no-op)."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @property
    def enabled(self) -> bool:
        """True under systemd (a notification socket was given)."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``"READY=1"``, ...) as one datagram; True if it was sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), target)
        except OSError as exc:
            event(log, "systemd notification failed", level=logging.WARNING, state=lines[0], error=str(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Tell systemd the service is up (``READY=1``), with an optional status line."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """Reset the watchdog timer (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Tell systemd the service is stopping (``STOPPING=1``)."""
        return self.notify("STOPPING=1")


def notifier_from_env(environ: Mapping[str, str] = os.environ) -> Notifier:
    """The notifier for ``$NOTIFY_SOCKET`` (a no-op one when it is unset)."""
    return Notifier(environ.get("NOTIFY_SOCKET"))


def watchdog_interval_s(environ: Mapping[str, str] = os.environ) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, or None when no watchdog is armed for us.

    ``$WATCHDOG_PID``, when set, must be this process (systemd sets it for the main PID only).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
