"""OTA test helpers: a real HTTP server on loopback (Range, cut connections, attacker overrides), test bundles,
and a manufacturer repository made with the real ``btt-ota`` code.

* :class:`RepoServer` serves a directory over ``http.server`` in a thread. ``override[path] = bytes`` serves
  other bytes for one path (an attacker or a broken mirror); ``endless`` paths stream without end;
  ``cut_after[path] = n`` closes the connection after ``n`` bytes once (an interrupted download); ``trickle[path]
  = s`` sends the body one byte every ``s`` seconds and ``trickle_headers[path] = s`` the headers (without end),
  a slow retrieval attack; ``ranges`` records the ``Range`` headers received.
* :func:`bundle_dir` writes the tiny pipeline network as a bundle with a given version (optionally with golden
  vectors it cannot meet).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.config import AgentConfig, OtaConfig, PipelineConfig
from models.bundle import MODEL_NAME, pack_bundle, write_bundle
from models.golden import build_golden
from ota.repository import KeyStore, Repository, bundle_archive
from tests.pipeline_helpers import HEIGHT, MANIFEST, WIDTH, reference_outputs, tiny_onnx

__all__ = [
    "RepoServer",
    "agent_config",
    "bundle_dir",
    "deadline_timers",
    "new_repository",
    "publish_bundle",
    "self_signed",
    "serve",
]


def bundle_dir(
    root: Path, version: str, *, bad_golden: bool = False, fails_on_studies: bool = False, model_id: str = ""
) -> Path:
    """The tiny network as bundle ``tiny-test-model`` (or ``model_id``) ``version`` in ``root/<version>``.

    ``bad_golden``: golden vectors the network cannot meet. ``fails_on_studies``: the manifest asks for twice the
    input size the network takes, so the golden vectors pass but every real image fails in the backend.
    """
    rng = np.random.default_rng(1)
    inputs = rng.normal(0, 1, (1, 1, HEIGHT, WIDTH)).astype(np.float16).astype(np.float32)
    outputs = reference_outputs(inputs)
    if bad_golden:
        outputs = {name: value + 1.0 for name, value in outputs.items()}
    network = onnx.load_from_string(tiny_onnx())
    network.doc_string = f"tiny-test-model {version}"  # each version its own model hash (and TensorRT engine)
    files = {MODEL_NAME: network.SerializeToString(), "golden/a.npz": build_golden(inputs, outputs, 256, 0)}
    directory = root / f"{version}{'-bad' if bad_golden else ''}"
    directory.mkdir(parents=True)
    manifest = dataclasses.replace(MANIFEST, version=version, id=model_id or MANIFEST.id)
    if fails_on_studies:
        manifest = dataclasses.replace(
            manifest, input=dataclasses.replace(manifest.input, height=2 * HEIGHT, width=2 * WIDTH)
        )
    write_bundle(directory, pack_bundle(manifest, files))
    return directory


def new_repository(root: Path, **kwargs: object) -> Repository:
    """A fresh repository in ``root/repo`` with keys in ``root/keys``."""
    return Repository.create(root / "repo", KeyStore(root / "keys"), **kwargs)  # type: ignore[arg-type]


def publish_bundle(repo: Repository, directory: Path, **kwargs: object) -> None:
    archive, model_id, version = bundle_archive(directory)
    repo.add_bundle(archive, model_id, version, **kwargs)  # type: ignore[arg-type]


class RepoServer:
    """A directory served over HTTP on 127.0.0.1 with Range support and fault knobs."""

    def __init__(self, root: Path, *, tls_cert: tuple[Path, Path] | None = None) -> None:
        self.root = root
        self.override: dict[str, bytes] = {}
        self.endless: set[str] = set()
        self.cut_after: dict[str, int] = {}
        self.trickle: dict[str, float] = {}
        self.trickle_headers: dict[str, float] = {}
        self.ranges: list[tuple[str, str]] = []
        self.requests: list[str] = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].lstrip("/")
                server.requests.append(path)
                if path in server.trickle_headers:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
                    self.slowly(b"x" * 65536, server.trickle_headers[path])
                    return
                if path in server.endless:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    try:
                        while True:
                            self.wfile.write(b"x" * 65536)
                    except OSError:
                        return
                if path in server.override:
                    data = server.override[path]
                else:
                    file = server.root / path
                    if not file.is_file():
                        self.send_error(404)
                        return
                    data = file.read_bytes()
                start = 0
                header = self.headers.get("Range")
                if header:
                    server.ranges.append((path, header))
                    start = int(header.removeprefix("bytes=").split("-", 1)[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_after.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if path in server.trickle:
                    self.slowly(body, server.trickle[path])
                    return
                self.wfile.write(body)

            def slowly(self, data: bytes, interval_s: float) -> None:
                """``data`` a byte at a time until it is sent, the client goes or the server stops."""
                self.close_connection = True
                try:
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        if server.stopping.wait(interval_s):
                            return
                except OSError:
                    return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls_cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls_cert)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (the CA file of the test), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@contextmanager
def serve(root: Path, *, tls_cert: tuple[Path, Path] | None = None) -> Iterator[RepoServer]:
    server = RepoServer(root, tls_cert=tls_cert)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def agent_config(data_dir: Path, factory: Path, url: str, trusted_root: Path, **ota: object) -> AgentConfig:
    """An agent configuration with the factory bundle, ONNX Runtime on the CPU and ``[ota]`` pointing at ``url``."""
    return AgentConfig(
        agent=dataclasses.replace(AgentConfig().agent, data_dir=data_dir),
        pipeline=PipelineConfig(bundle_path=factory, backend="onnxruntime-cpu", threads=1),
        ota=OtaConfig(repository_url=url, trusted_root=str(trusted_root), **{"timeout_s": 5, **ota}),  # type: ignore[arg-type]
    )


def deadline_timers() -> list[threading.Thread]:
    """The download deadlines' timers still running (none once every download has ended)."""
    return [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
