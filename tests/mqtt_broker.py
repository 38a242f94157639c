"""A real Mosquitto (``/usr/sbin/mosquitto``) for tests, started from the shipped ``packaging/mosquitto`` config.

::

    broker = MosquittoBroker(tmp_path / "broker", users={"dev-a": "pw-a", RELAY_USER: "pw-r"})
    broker.start()                  # free loopback port; returns once it accepts connections
    broker.url("dev-a", "pw-a")     # "mqtt://dev-a:pw-a@127.0.0.1:<port>"
    broker.stop(); broker.start()   # same port, same persistence directory
    broker.kill()                   # SIGKILL: no clean shutdown, no persistence save

The config is the shipped ``btt-password.conf`` (or ``btt-tls.conf`` with ``tls=True``) with its
``/etc/mosquitto/btt/`` paths pointed at the broker's directory and its listener at a free loopback port, plus
persistence and a log file; the ACL is the shipped ``acl`` file, unchanged. ``users`` become a password file in
one ``mosquitto_passwd -U`` run (thousands are fine); ``{directory}`` in ``extra_config`` is the broker's
directory. With ``tls=True``, :func:`make_pki` creates a CA, a
server certificate for 127.0.0.1 and one client certificate per user (CN = the user): ``broker.pki``.
Use it as a context manager, or call :meth:`MosquittoBroker.stop` in a ``finally``. :class:`StubRelay` plays the
relay's MQTT side (store once, ack) until the real relay is used.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port, wait_until

__all__ = [
    "MOSQUITTO",
    "PACKAGING",
    "PASSWORDS_OVER_TLS",
    "RELAY_USER",
    "MosquittoBroker",
    "Pki",
    "StubRelay",
    "make_pki",
]

MOSQUITTO = Path("/usr/sbin/mosquitto")
PASSWD = Path("/usr/bin/mosquitto_passwd")
OPENSSL = "openssl"
PACKAGING = Path(__file__).resolve().parent.parent / "packaging" / "mosquitto"
RELAY_USER = "btt-relay"
_SHIPPED_DIR = "/etc/mosquitto/btt/"
PASSWORDS_OVER_TLS = "require_certificate false\nuse_identity_as_username false\npassword_file {directory}/passwd"
"""``extra_config`` for ``tls=True`` brokers whose clients authenticate with passwords over server-only TLS."""


@dataclass(frozen=True)
class Pki:
    """Files of a throw-away CA: ``ca``, the server's cert/key, and ``client(name)`` -> (cert, key)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def client(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"


def _openssl(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True)


def _issue(pki: Pki, name: str, cert: Path, key: Path, *extensions: str) -> None:
    csr = pki.directory / f"{name}.csr"
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    ext = pki.directory / f"{name}.ext"
    ext.write_text("\n".join(extensions) + "\n", encoding="utf-8")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", pki.ca, "-CAkey", pki.directory / "ca.key", "-CAcreateserial",
        "-days", "2", "-sha256", "-out", cert, "-extfile", ext,
    )  # fmt: skip


def make_pki(directory: Path, clients: Iterable[str]) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate (CN = name) per client."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-keyout", directory / "ca.key", "-out", pki.ca, "-subj", "/CN=BTT test CA",
    )  # fmt: skip
    _issue(pki, "server", pki.server_cert, pki.server_key, "subjectAltName=IP:127.0.0.1,DNS:localhost")
    for name in clients:
        _issue(pki, name, *pki.client(name), "extendedKeyUsage=clientAuth")
    return pki


class MosquittoBroker:
    """One Mosquitto process on a free loopback port, restartable on the same port and persistence directory."""

    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, str] | None = None,
        tls: bool = False,
        port: int | None = None,
        extra_config: str = "",
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.port = port or free_port()
        self.users = dict(users or {})
        self.log_file = directory / "mosquitto.log"
        self.pki: Pki | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(exist_ok=True)
        self._write_config(extra_config)

    # --- setup ------------------------------------------------------------------------------------------

    def _write_config(self, extra: str) -> None:
        shipped = (PACKAGING / ("btt-tls.conf" if self.tls else "btt-password.conf")).read_text(encoding="utf-8")
        lines = [
            f"listener {self.port} 127.0.0.1" if line.startswith("listener ") else line
            for line in shipped.replace(_SHIPPED_DIR, f"{self.directory}/").splitlines()
        ]
        lines += [
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {self.directory}/data/",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            extra.replace("{directory}", str(self.directory)),
        ]
        (self.directory / "mosquitto.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (self.directory / "acl").write_text((PACKAGING / "acl").read_text(encoding="utf-8"), encoding="utf-8")
        if self.tls:
            self.pki = make_pki(self.directory / "pki", self.users)
            for name, src in (("ca.crt", self.pki.ca), ("server.crt", self.pki.server_cert)):
                (self.directory / name).write_bytes(src.read_bytes())
            (self.directory / "server.key").write_bytes(self.pki.server_key.read_bytes())
        # always written (users with a password), so a TLS test can switch to passwords (PASSWORDS_OVER_TLS)
        passwd = self.directory / "passwd"
        passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items() if p), encoding="utf-8")
        passwd.chmod(0o600)
        if any(self.users.values()):
            subprocess.run([str(PASSWD), "-U", str(passwd)], check=True, capture_output=True)

    # --- addresses --------------------------------------------------------------------------------------

    def url(self, username: str | None = None, password: str | None = None) -> str:
        """``mqtt://[user[:password]@]127.0.0.1:<port>`` (``mqtts://`` with TLS)."""
        auth = ""
        if username is not None:
            auth = quote(username, safe="") + ("" if password is None else ":" + quote(password, safe="")) + "@"
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}127.0.0.1:{self.port}"

    # --- lifecycle --------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections on its port."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise RuntimeError(f"mosquitto exited at start: {err}\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its persistence file) and wait for the process to exit."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving anything."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: int, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def log(self) -> str:
        """The broker's log so far (for assertion messages)."""
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StubRelay:
    """A stand-in for the relay: consumes ``$share/btt-relay/btt/v1/dev/+/up/#`` as ``btt-relay``, stores each
    item id once (the relay's de-duplication) and acks what it stored while ``ack`` is true, except messages of
    the kinds in ``held_kinds`` (stored, never acked: a relay whose acks are late).

    Also a spy: every payload it sees (up messages, and presence on a second subscription) is kept in
    ``payloads`` so a test can scan them.
    """

    def __init__(self, broker: MosquittoBroker, password: str, *, client_id: str = "relay-1") -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.deliveries: dict[str, int] = {}
        self.payloads: list[tuple[str, bytes]] = []
        self.presence: dict[str, bytes] = {}
        self.ack = True
        self.held_kinds: set[str] = set()
        self._lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(RELAY_USER, password)
        client.reconnect_delay_set(1, 2)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        self.client = client
        wait_until(client.is_connected, 10, "the stub relay to connect")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe("$share/btt-relay/btt/v1/dev/+/up/#", qos=1)
        client.subscribe("btt/v1/dev/+/presence", qos=1)

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append((message.topic, bytes(message.payload)))
            if message.topic.endswith("/presence"):
                self.presence[message.topic.split("/")[3]] = bytes(message.payload)
                return
            doc = json.loads(message.payload)
            ids = [item["id"] for item in doc["items"]]
            for item in doc["items"]:
                self.deliveries[item["id"]] = self.deliveries.get(item["id"], 0) + 1
                self.stored.setdefault(item["id"], item["body"])  # de-duplicated on (device, id)
            if self.ack and doc.get("kind") not in self.held_kinds:
                client.publish(f"btt/v1/dev/{doc['device']}/ack", json.dumps({"v": 1, "stored": ids}), qos=1)

    def ids(self, prefix: str) -> set[str]:
        with self._lock:
            return {i for i in self.stored if i.startswith(prefix)}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
