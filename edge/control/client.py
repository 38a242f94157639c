"""The control socket's client: what the terminal UI, the CLI and health checks use to talk to a running agent.

::

    with ControlClient(config.control.path(config.agent.data_dir)) as agent:
        overview = agent.call("overview")
        agent.call("results.resend", study_uid="1.2.3")

A call returns the result or raises :class:`~edge.errors.ControlError` with the agent's message (or why the agent
cannot be reached). One client keeps one connection and may be shared between threads; when the agent has closed
it meanwhile (idle longer than ``[control] idle_timeout_s``, or to make room), the next call opens a new one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from edge.control.protocol import MAX_LINE_BYTES, Request, decode_response, encode
from edge.errors import ControlError

__all__ = ["ControlClient", "socket_address"]

_SUN_PATH_MAX = 100
"""Unix socket paths are limited to 108 bytes; longer ones are reached through ``/proc/self/fd``."""


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits a Unix socket address (the directory's ``/proc/self/fd`` alias when long)."""
    if len(os.fsencode(path)) < _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class ControlClient:
    """A connection to the agent's control socket at ``path``."""

    def __init__(self, path: Path, *, timeout_s: float = 30.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._ids = itertools.count(1)
        self._mutex = threading.Lock()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # flushing to a peer that has gone
                self._file.close()
            self._file = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> Any:
        if self._file is not None:
            return self._file
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            self._connect_within(sock, time.monotonic() + self.timeout_s)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise ControlError(
                f"the agent is not running, or not on this data directory (no control socket at {self.path}); "
                "start it with `btt-edge run` (or `systemctl start btt-edge`)"
            ) from exc
        except PermissionError as exc:
            sock.close()
            raise ControlError(
                f"no permission to use {self.path}: run as the agent's user or join its group ([control] group_access)"
            ) from exc
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot reach the agent at {self.path}: {exc.strerror or exc}") from exc
        self._sock = sock
        self._file = sock.makefile("rwb")
        return self._file

    def _connect_within(self, sock: socket.socket, deadline: float) -> None:
        """Connect, waiting while the agent's queue of connections not yet accepted is full (a Unix socket with a
        timeout says so at once, ``EAGAIN``, where TCP would wait)."""
        with socket_address(self.path) as address:
            while True:
                try:
                    sock.connect(address)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.01)

    def call(self, method: str, *, timeout_s: float | None = None, **params: Any) -> Any:
        """Call ``method`` with ``params``; the result, or :class:`ControlError` with the agent's message."""
        with self._mutex:
            request = Request(next(self._ids), method, params)
            line = self._exchange(encode(request), self.timeout_s if timeout_s is None else timeout_s)
            response = decode_response(line)
            if response.id != request.id:
                self.close()
                if response.id == 0 and not response.ok:  # about the connection (e.g. every connection busy)
                    raise ControlError(response.error)
                raise ControlError(f"answer {response.id} to request {request.id}: the connection is out of step")
            if not response.ok:
                raise ControlError(response.error)
            return response.result

    def _exchange(self, data: bytes, timeout_s: float) -> bytes:
        """Send the request ``data``, return the answer line. A connection kept from an earlier call that the agent
        has closed meanwhile (idle too long, or to make room for another client) is replaced once: the agent closes
        only a connection without a request in hand, so it never saw this one."""
        while True:
            kept = self._file is not None
            stream = self._connect()
            assert self._sock is not None
            self._sock.settimeout(timeout_s)
            try:
                stream.write(data)
                stream.flush()
                line: bytes = stream.readline(MAX_LINE_BYTES + 1)
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if kept:
                    continue
                raise ControlError(f"the agent stopped answering on {self.path}: {exc.strerror or exc}") from exc
            except OSError as exc:
                self.close()
                raise ControlError(f"the agent stopped answering on {self.path}: {exc.strerror or exc}") from exc
            if not line:
                self.close()
                if kept:
                    continue
                raise ControlError(f"the agent closed the control connection ({self.path})")
            return line
