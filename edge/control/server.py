"""The control socket: the agent's state and a technician's actions, over a permissioned Unix socket.

:class:`ControlServer` (a :class:`~edge.agent.Service`) listens on ``[control] socket_path`` (default
``<data_dir>/control.sock``), mode 0660 (``group_access``) or 0600, set before the socket appears at its path. One
thread serves every connection (:class:`_Loop`, a selector), one request line and one response line at a time
(:mod:`edge.control.protocol`), and :data:`WORKERS` threads handle the requests. At most ``[control]
max_connections`` are open (one more closes the one idle longest) and none stays idle beyond ``idle_timeout_s``.
Views come from :class:`~edge.control.state.AgentState`; actions (:mod:`edge.control.actions`) are recorded in the
audit log (:mod:`edge.control.audit`) with the peer's uid and pid before they run and with their outcome after. A
failure to serve never reaches the rest of the agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.config import ControlConfig
from edge.control.actions import ACTIONS, Actions, Updater, Waker
from edge.control.audit import Outcome, migrate_audit, recent
from edge.control.audit import finish as finish_entry
from edge.control.audit import start as start_entry
from edge.control.client import ControlClient, socket_address
from edge.control.logtail import LogTail
from edge.control.protocol import MAX_REQUEST_BYTES, Request, Response, decode_request, encode
from edge.control.state import AgentState
from edge.db import DB_FILENAME, connect
from edge.errors import ControlError, EdgeError, ModelError
from runtime.logs import event

__all__ = ["WORKERS", "ControlServer"]

log = logging.getLogger("edge.control")

WORKERS = 4
"""Threads that handle requests (views are short database reads; an action may take longer). The connections
themselves cost no thread: one loop serves them all."""


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
        self._loop: _Loop | None = None
        self._thread: threading.Thread | None = None
        self._reads: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": lambda _: state.ping(),
            "overview": lambda _: state.overview().to_json(),
            "health": lambda _: state.health(),
            "studies": lambda p: [s.to_json() for s in state.studies(int(p.get("limit", 50)))],
            "study": lambda p: state.study(str(p["study_uid"])).to_json(),
            "plan": lambda p: state.plan(str(p["study_uid"])),
            "unit": lambda _: state.unit().to_json(),
            "receipts": lambda _: state.receipts().to_json(),
            "models": lambda _: state.models().to_json(),
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
        migrate_audit(conn)
        self._audit = conn
        self._claim_path()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        try:
            with socket_address(staging) as address:
                listener.bind(address)
            listener.listen(socket.SOMAXCONN)
            os.chmod(staging, 0o660 if self.config.group_access else 0o600)
            os.replace(staging, self.path)  # the socket appears at its path with its final mode
        except OSError as exc:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            raise ControlError(f"cannot open the control socket {self.path}: {exc.strerror or exc}") from exc
        self._loop = _Loop(
            listener,
            self._answer,
            max_connections=self.config.max_connections,
            idle_timeout_s=self.config.idle_timeout_s,
        )
        logging.getLogger().addHandler(self.tail)
        self._thread = threading.Thread(target=self._serve_until_stopped, args=(self._loop, listener), name="control")
        self._thread.daemon = True
        self._thread.start()
        event(log, "control socket ready", path=str(self.path), mode="0660" if self.config.group_access else "0600")

    @staticmethod
    def _serve_until_stopped(loop: _Loop, listener: socket.socket) -> None:
        try:
            loop.run()
        finally:
            listener.close()

    def stop(self) -> None:
        """Stop serving (every connection closed), remove the socket file."""
        logging.getLogger().removeHandler(self.tail)
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
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

    def _answer(self, line: bytes, peer: tuple[int | None, int | None]) -> bytes:
        """The response line to the request ``line`` (a worker thread of the loop)."""
        try:
            response = self.handle(decode_request(line), peer)
        except ControlError as exc:
            response = Response(0, False, error=str(exc))
        try:
            return encode(response)
        except ControlError as exc:  # a result too large for one line
            return encode(Response(response.id, False, error=str(exc)))

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
        entry = self._audit_write(lambda c: start_entry(c, method, params, *peer))
        try:
            result = action(self.actions, params)
        except Exception as exc:
            message = self._message(method, exc)
            outcome: Outcome = "refused" if isinstance(exc, (EdgeError, ModelError)) else "failed"
            self._audit_write(lambda c: finish_entry(c, entry, outcome, message))
            event(log, "technician action " + outcome, level=logging.WARNING, action=method, uid=peer[0], error=message)
            return Response(request.id, False, error=message)
        self._audit_write(lambda c: finish_entry(c, entry, "ok", str(result)))
        event(log, "technician action", action=method, uid=peer[0], params=params, result=result)
        return Response(request.id, True, result)

    @staticmethod
    def _message(method: str, exc: Exception) -> str:
        if isinstance(exc, (EdgeError, ModelError)):
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
            return recent(self._audit, max(1, min(limit, 1000)))


@dataclass(eq=False)
class _Connection:
    """One client connection as the loop sees it."""

    sock: socket.socket
    peer: tuple[int | None, int | None]
    last: float
    """When its last exchange ended (or it was accepted): what the idle time is counted from."""
    received: bytearray = field(default_factory=bytearray)
    pending: bytes = b""
    """Response bytes not yet sent."""
    busy: bool = False
    """One of its requests is with a worker: not idle, never closed for idleness or to make room."""
    closing: bool = False
    """Close once ``pending`` is sent (a line over the limit, a refusal)."""
    refusal: str = ""
    """Answer the first request with this error and close (accepted while every connection was busy)."""
    closed: bool = False


class _Loop:
    """Every connection of the control socket in one thread (a selector), requests handled by :data:`WORKERS`
    worker threads.

    At most ``max_connections`` are open: a new one beyond that closes the one idle longest (so the terminal UI or
    ``doctor`` always gets in, however many idle clients there are), or is told the socket is busy when every
    connection has a request in hand. A connection without a complete request for ``idle_timeout_s`` is closed,
    whether it sends nothing or a byte now and then. A request line is at most
    :data:`~edge.control.protocol.MAX_REQUEST_BYTES`. One request of a connection is handled at a time; its
    response is sent by the loop, so a client that does not read holds no worker.
    """

    def __init__(
        self,
        listener: socket.socket,
        serve: Callable[[bytes, tuple[int | None, int | None]], bytes],
        *,
        max_connections: int,
        idle_timeout_s: float,
    ) -> None:
        self._listener = listener
        self._serve = serve
        self._max = max_connections
        self._idle_s = idle_timeout_s
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._connections: list[_Connection] = []
        self._jobs: queue.SimpleQueue[tuple[_Connection, bytes] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[_Connection, bytes]] = queue.SimpleQueue()
        self._stopping = False

    # --- the loop thread ----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop`; then close every connection."""
        workers = [threading.Thread(target=self._work, name=f"control-{i}", daemon=True) for i in range(WORKERS)]
        for worker in workers:
            worker.start()
        self._listener.setblocking(False)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, events in self._selector.select(self._next_expiry()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                    elif key.data.closed:  # closed earlier in this round (to make room)
                        continue
                    elif events & selectors.EVENT_WRITE:
                        self._send(key.data)
                    else:
                        self._receive(key.data)
                self._finish_done()
                self._close_idle()
        finally:
            for _ in workers:
                self._jobs.put(None)
            for conn in list(self._connections):
                self._close(conn)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _next_expiry(self) -> float:
        idle = [c.last for c in self._connections if not c.busy]
        return max(0.0, min(idle) + self._idle_s - time.monotonic()) if idle else self._idle_s

    def _accept(self) -> None:
        """Accept every connection waiting (so a flood of them never leaves a new client waiting for the queue)."""
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                event(log, "control connection not accepted", level=logging.WARNING, error=str(exc))
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        conn = _Connection(sock, _peer(sock), time.monotonic())
        if len(self._connections) >= self._max:
            idle = [c for c in self._connections if not c.busy]
            if idle:
                oldest = min(idle, key=lambda c: c.last)
                event(log, "idle control connection closed to make room", uid=oldest.peer[0], pid=oldest.peer[1])
                self._close(oldest)
            else:  # its request will be answered with this (it is idle until then, the first to make room)
                conn.refusal = f"all {self._max} control connections are busy; try again"
        self._connections.append(conn)
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _receive(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.received += data
        self._next_request(conn)

    def _next_request(self, conn: _Connection) -> None:
        """Hand the connection's next complete request line to a worker (or refuse a line over the limit)."""
        end = conn.received.find(b"\n", 0, MAX_REQUEST_BYTES)
        if end < 0:
            if len(conn.received) >= MAX_REQUEST_BYTES:
                self._reply(conn, Response(0, False, error=f"request line longer than {MAX_REQUEST_BYTES} bytes"))
                conn.closing = True
            return
        line = bytes(conn.received[: end + 1])
        del conn.received[: end + 1]
        if conn.refusal:
            try:
                request_id = decode_request(line).id
            except ControlError:
                request_id = 0
            self._reply(conn, Response(request_id, False, error=conn.refusal))
            conn.closing = True
            return
        conn.busy = True
        self._selector.unregister(conn.sock)
        self._jobs.put((conn, line))

    def _finish_done(self) -> None:
        while True:
            try:
                conn, data = self._done.get_nowait()
            except queue.Empty:
                return
            conn.busy = False
            if conn.closed:
                continue
            conn.pending = data
            self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)
            self._send(conn)

    def _reply(self, conn: _Connection, response: Response) -> None:
        """Send ``response`` from the loop (a refusal; requests are answered through a worker)."""
        conn.pending = encode(response)
        try:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        except KeyError:
            self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)

    def _send(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.pending = conn.pending[sent:]
        if conn.pending:
            return
        if conn.closing:
            self._close(conn)
            return
        conn.last = time.monotonic()
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        self._next_request(conn)

    def _close_idle(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._connections if not c.busy and now - c.last > self._idle_s]:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if not conn.busy:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        conn.sock.close()
        self._connections.remove(conn)

    # --- other threads ------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            conn, line = job
            try:
                data = self._serve(line, conn.peer)
            except Exception:
                log.exception("control request failed")
                data = encode(Response(0, False, error="internal error (see the agent's log)"))
            self._done.put((conn, data))
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (stopped)
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        """End :meth:`run` (from any thread)."""
        self._stopping = True
        self._wake()


def _peer(sock: socket.socket) -> tuple[int | None, int | None]:
    """``(uid, pid)`` of the peer process, from the kernel."""
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError):
        return None, None
    return uid, pid
