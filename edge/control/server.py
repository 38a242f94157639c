"""The control socket: the agent's state and a technician's actions, over a permissioned Unix socket.

:class:`ControlServer` (a :class:`~edge.agent.Service`) listens on ``[control] socket_path`` (default
``<data_dir>/control.sock``), mode 0660 (``group_access``) or 0600, set before the socket appears at its path. Each
connection is served by its own thread, one request line and one response line at a time
(:mod:`edge.control.protocol`). Views come from :class:`~edge.control.state.AgentState`; actions
(:mod:`edge.control.actions`) are recorded in the audit log (:mod:`edge.control.audit`) with the peer's uid and pid
before they run and with their outcome after. A failure to serve never reaches the rest of the agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import sqlite3
import struct
import threading
from collections.abc import Callable
from typing import Any

from edge.config import ControlConfig
from edge.control import audit
from edge.control.actions import ACTIONS, Actions, Updater, Waker
from edge.control.client import ControlClient, socket_address
from edge.control.logtail import LogTail
from edge.control.protocol import MAX_LINE_BYTES, Request, Response, decode_request, encode
from edge.control.state import AgentState
from edge.db import DB_FILENAME, connect
from edge.errors import ControlError, EdgeError
from edge.logs import event

__all__ = ["ControlServer"]

log = logging.getLogger("edge.control")


class ControlServer:
    """Serves :class:`AgentState` views and :data:`~edge.control.actions.ACTIONS` on the control socket."""

    name = "control"

    def __init__(
        self,
        config: ControlConfig,
        state: AgentState,
        *,
        updater: Updater | None = None,
        results: Waker | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.path = config.path(state.data_dir)
        db_path = state.data_dir / DB_FILENAME
        self.actions = Actions(state, lambda: connect(db_path), updater=updater, results=results)
        self.tail = LogTail(config.log_lines)
        self._db_path = db_path
        self._audit: sqlite3.Connection | None = None
        self._audit_mutex = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._reads: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": lambda _: state.ping(),
            "overview": lambda _: state.overview(),
            "health": lambda _: state.health(),
            "studies": lambda p: state.studies(int(p.get("limit", 50))),
            "study": lambda p: state.study(str(p["study_uid"])),
            "unit": lambda _: state.unit(),
            "receipts": lambda _: state.receipts(),
            "models": lambda _: state.models(),
            "capacity": lambda _: state.capacity(),
            "logs": lambda p: self.tail.read(
                int(p.get("since", 0)), str(p.get("text", "")), str(p.get("level", "")), int(p.get("limit", 500))
            ),
            "audit": lambda p: self._audit_recent(int(p.get("limit", 50))),
        }

    # --- service ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (refusing if another agent answers on it) and serve."""
        conn = connect(self._db_path)
        audit.migrate_audit(conn)
        self._audit = conn
        self._claim_path()
        server = _Server(self)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        try:
            with socket_address(staging) as address:
                server.server_bind_to(address)
            os.chmod(staging, 0o660 if self.config.group_access else 0o600)
            os.replace(staging, self.path)  # the socket appears at its path with its final mode
        except OSError as exc:
            server.server_close()
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            raise ControlError(f"cannot open the control socket {self.path}: {exc.strerror or exc}") from exc
        self._server = server
        logging.getLogger().addHandler(self.tail)
        self._thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
        self._thread.start()
        event(log, "control socket ready", path=str(self.path), mode="0660" if self.config.group_access else "0600")

    def stop(self) -> None:
        """Stop serving, remove the socket file."""
        logging.getLogger().removeHandler(self.tail)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._audit is not None:
            self._audit.close()
            self._audit = None

    def _claim_path(self) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        try:
            with ControlClient(self.path, timeout_s=2.0) as other:
                other.call("ping")
        except ControlError:
            self.path.unlink()  # left by an agent that died
            return
        raise ControlError(f"another agent is serving {self.path}; stop it first")

    # --- requests -----------------------------------------------------------------------------------------------

    def handle(self, request: Request, peer: tuple[int | None, int | None]) -> Response:
        """The response to ``request`` from the peer ``(uid, pid)``."""
        method, params = request.method, request.params
        if method in self._reads:
            try:
                return Response(request.id, True, self._reads[method](params))
            except Exception as exc:
                return Response(request.id, False, error=self._message(method, exc))
        action = ACTIONS.get(method)
        if action is None:
            known = ", ".join(sorted([*self._reads, *ACTIONS]))
            return Response(request.id, False, error=f"unknown method {method!r} (known: {known})")
        entry = self._audit_write(lambda c: audit.start(c, method, params, *peer))
        try:
            result = action(self.actions, params)
        except Exception as exc:
            message = self._message(method, exc)
            outcome: audit.Outcome = "refused" if isinstance(exc, EdgeError) else "failed"
            self._audit_write(lambda c: audit.finish(c, entry, outcome, message))
            event(log, "technician action " + outcome, level=logging.WARNING, action=method, uid=peer[0], error=message)
            return Response(request.id, False, error=message)
        self._audit_write(lambda c: audit.finish(c, entry, "ok", str(result)))
        event(log, "technician action", action=method, uid=peer[0], params=params, result=result)
        return Response(request.id, True, result)

    @staticmethod
    def _message(method: str, exc: Exception) -> str:
        if isinstance(exc, EdgeError):
            return str(exc)
        if isinstance(exc, (KeyError, TypeError, ValueError)):
            return f"bad parameters for {method}: {exc!r}"
        log.exception("control request %s failed", method)
        return f"internal error in {method}: {type(exc).__name__} (see the agent's log)"

    def _audit_write(self, write: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._audit_mutex:
            assert self._audit is not None
            return write(self._audit)

    def _audit_recent(self, limit: int) -> list[dict[str, Any]]:
        with self._audit_mutex:
            assert self._audit is not None
            return audit.recent(self._audit, max(1, min(limit, 1000)))


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, control: ControlServer) -> None:
        super().__init__("", _Handler, bind_and_activate=False)
        self.control = control
        self.connections: set[socket.socket] = set()
        self.connections_mutex = threading.Lock()

    def close_connections(self) -> None:
        """End every open connection (their threads see end of file and return)."""
        with self.connections_mutex:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def server_bind_to(self, address: str) -> None:
        self.socket.bind(address)
        self.server_address = address
        self.server_activate()


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_mutex:
            self.server.connections.add(self.request)

    def finish(self) -> None:
        with self.server.connections_mutex:
            self.server.connections.discard(self.request)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        peer = _peer(self.request)
        while True:
            try:
                line = self.rfile.readline(MAX_LINE_BYTES + 1)
            except OSError:
                return
            if not line:
                return
            try:
                response = self.server.control.handle(decode_request(line), peer)
            except ControlError as exc:
                response = Response(0, False, error=str(exc))
            try:
                self.wfile.write(encode(response))
                self.wfile.flush()
            except ControlError as exc:
                self.wfile.write(encode(Response(response.id, False, error=str(exc))))
            except OSError:
                return


def _peer(sock: socket.socket) -> tuple[int | None, int | None]:
    """``(uid, pid)`` of the peer process, from the kernel."""
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError):
        return None, None
    return uid, pid
