"""The STOW-RS receiver: ``POST /studies`` and ``POST /studies/{StudyInstanceUID}`` into the image store.

Off unless ``[dicomweb] enabled``. Each request is spooled to a file in the store's ``incoming/`` directory
(bounded by ``max_request_mb``), split as ``multipart/related`` (:func:`edge.multipart.split_related`), and only
when the whole body is there, every ``application/dicom`` part is handed to
:meth:`~edge.store.image_store.ImageStore.accept`, the SCP's own store function: the same checks, the same durable
write (fsync, rename, fsync the directory, then the index row) and the same listeners (the pipeline is woken).
The answer is sent after the last part is durable.

==========================  =====================================================================================
request                     answer
==========================  =====================================================================================
all parts stored            200, DICOM JSON: Referenced SOP Sequence (0008,1199), one item per instance (no
                            Retrieve URL: the box serves no WADO-RS)
some parts failed           202: those in Failed SOP Sequence (0008,1198) with a Failure Reason (0008,1197)
every part failed           409, the same body
a truncated or malformed    400 with the reason as text; nothing is stored
multipart body, no parts
not multipart/related, or   415
a ``type`` other than
application/dicom
no token, a wrong one       401 (``token_file`` set)
larger than max_request_mb  413; nothing is read or stored
no length, not chunked      411
below the disk reserve      503 with Retry-After; nothing is read
==========================  =====================================================================================

Failure Reasons per instance: 0xA700 out of resources (below the reserve, the disk or the index failed: the
source may try again), 0xC000 cannot understand (not a whole Part 10 file, no UIDs: quarantined like the SCP's,
or a part that is not ``application/dicom``), 0x0111 duplicate with different content (``dicom.duplicate_policy
= "reject"``), 0x0122 a standard SOP class that is not a storage class, 0xC122 a Study Instance UID other than the
one in the URL. Instances are recorded as received from ``STOW-RS``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import mmap
import os
import re
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from edge.config import DicomwebConfig
from edge.errors import DuplicateConflict, IngestError, InvalidDataset, OutOfSpace, StoreError
from edge.multipart import RelatedPart, parse_media_type, split_related
from edge.store.image_store import ImageStore
from runtime.logs import event

__all__ = [
    "CALLING_AE",
    "REASON_CANNOT_UNDERSTAND",
    "REASON_DUPLICATE",
    "REASON_OUT_OF_RESOURCES",
    "REASON_SOP_CLASS_NOT_SUPPORTED",
    "REASON_STUDY_MISMATCH",
    "StowReceiver",
]

log = logging.getLogger("edge.ingest")

CALLING_AE = "STOW-RS"
"""What the index records as the sender of an instance that arrived over STOW-RS."""
REASON_OUT_OF_RESOURCES = 0xA700
REASON_CANNOT_UNDERSTAND = 0xC000
REASON_DUPLICATE = 0x0111
REASON_SOP_CLASS_NOT_SUPPORTED = 0x0122
REASON_STUDY_MISMATCH = 0xC122

_PATH = re.compile(r"^/studies(?:/([0-9.]{1,64}))?/?$")
_CHUNK = 1 << 20
_DRAIN_BYTES = 4 << 20
"""After refusing a request unread, at most this much of its body is read and dropped, so that the client (still
sending) sees the answer instead of a reset connection."""
_STANDARD_ROOT = "1.2.840.10008."
_MB = 1 << 20


@dataclass
class _Instance:
    """What became of one part."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    failure: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    media_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str, **headers: str) -> _Reply:
        return cls(status, (text + "\n").encode(), headers=headers)


def _response_body(instances: list[_Instance]) -> bytes:
    """The DICOM JSON answer: Referenced SOP Sequence and Failed SOP Sequence (PS3.18 section 10.5.3)."""

    def reference(instance: _Instance) -> dict[str, Any]:
        item: dict[str, Any] = {}
        if instance.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [instance.sop_class_uid]}
        if instance.sop_instance_uid:
            item["00081155"] = {"vr": "UI", "Value": [instance.sop_instance_uid]}
        return item

    dataset: dict[str, Any] = {}
    failed = [{**reference(i), "00081197": {"vr": "US", "Value": [i.failure]}} for i in instances if i.failure]
    stored = [reference(i) for i in instances if i.failure is None]
    if failed:
        dataset["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        dataset["00081199"] = {"vr": "SQ", "Value": stored}
    return json.dumps(dataset).encode()


def _storable(sop_class_uid: str) -> bool:
    """Every storage SOP class, and any private one (as the SCP accepts them); not a standard non-storage class."""
    if not sop_class_uid.startswith(_STANDARD_ROOT):
        return True
    return uid_to_service_class(sop_class_uid) is StorageServiceClass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: StowReceiver

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS is set up here, in the connection's own thread, so that a slow handshake holds up nobody else."""
        receiver = self.receiver
        request.settimeout(receiver.config.timeout_s)
        if receiver.tls is not None:
            try:
                request = receiver.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                event(log, "stow-rs tls refused", level=logging.WARNING, address=client_address[0], reason=str(exc))
                with contextlib.suppress(OSError):
                    request.close()
                return
        try:
            super().finish_request(request, client_address)
        finally:
            if receiver.tls is not None:  # socketserver closes only the plain socket it accepted (now detached)
                self.shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    """Thin: every request goes to :meth:`StowReceiver.handle`, the reply is written back."""

    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "btt-edge-stow"

    def do_POST(self) -> None:
        self._reply(self.server.receiver.handle(self))

    def _refuse_method(self) -> None:
        self._reply(_Reply.text(405, "only POST /studies (STOW-RS) is served here", Allow="POST"))

    do_GET = do_PUT = do_DELETE = do_PATCH = _refuse_method

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: refuse before the body is sent when the headers already say no."""
        early = self.server.receiver.precheck(self)
        if early is not None:
            self.close_connection = True
            self._reply(early)
            return False
        return super().handle_expect_100()

    def _reply(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.media_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        event(log, "stow-rs request", level=logging.DEBUG, address=self.client_address[0], line=format % args)


class StowReceiver:
    """The STOW-RS listener of the agent (a :class:`~edge.agent.Service`), storing into ``store``."""

    name = "dicomweb"

    def __init__(self, config: DicomwebConfig, store: ImageStore) -> None:
        self.config = config
        self.store = store
        self.tls: ssl.SSLContext | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is None:
            raise IngestError("the STOW-RS receiver is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Check the token file and the TLS files, bind, serve in a thread; returns once the socket is bound."""
        cfg = self.config
        if cfg.token_file:
            self._token()  # unreadable or empty: the agent stops here, naming the key
        if cfg.tls_cert_file:
            try:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
                if cfg.tls_client_ca_file:
                    context.load_verify_locations(cfg.tls_client_ca_file)
                    context.verify_mode = ssl.CERT_REQUIRED
            except (OSError, ssl.SSLError) as exc:
                raise IngestError(f"dicomweb.tls_cert_file: cannot set up TLS: {exc}") from exc
            self.tls = context
        try:
            server = _Server((cfg.bind_address, cfg.port), _Handler, bind_and_activate=True)
        except OSError as exc:
            raise IngestError(f"cannot listen on {cfg.bind_address}:{cfg.port}: {exc.strerror or exc}") from exc
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="stow-rs", daemon=True)
        self._thread.start()
        event(log, "stow-rs listening", address=cfg.bind_address, port=self.port, tls=bool(self.tls),
              token=bool(cfg.token_file), client_certificates=bool(cfg.tls_client_ca_file))  # fmt: skip

    def stop(self) -> None:
        """Stop listening; a request still being received is dropped (nothing of it was answered)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # --- a request ---------------------------------------------------------------------------------------

    def _token(self) -> bytes:
        try:
            with open(self.config.token_file, "rb") as fh:
                token = fh.readline().strip()
        except OSError as exc:
            raise IngestError(f"dicomweb.token_file: cannot read {self.config.token_file}: {exc.strerror}") from exc
        if not token:
            raise IngestError(f"dicomweb.token_file: {self.config.token_file} is empty")
        return token

    def precheck(self, request: BaseHTTPRequestHandler) -> _Reply | None:
        """The answer the headers alone call for (path, auth, media type, length, disk), or None to go on."""
        if _PATH.match(request.path.split("?", 1)[0]) is None:
            return _Reply.text(404, "not found: STOW-RS is POST /studies or POST /studies/{StudyInstanceUID}")
        if self.config.token_file:
            try:
                expected = b"Bearer " + self._token()
            except IngestError as exc:  # removed while running: nobody may store until it is back
                event(log, "stow-rs refused", level=logging.ERROR, reason=str(exc))
                return _Reply.text(503, "the receiver's token is unreadable", **{"Retry-After": "60"})
            given = request.headers.get("Authorization", "").strip().encode("latin-1", "replace")
            if not hmac.compare_digest(given, expected):
                return _Reply.text(
                    401, "a valid bearer token is required", **{"WWW-Authenticate": 'Bearer realm="btt-edge"'}
                )
        media_type, params = parse_media_type(request.headers.get("Content-Type", ""))
        if media_type != "multipart/related" or params.get("type", "application/dicom").lower() != "application/dicom":
            return _Reply.text(415, 'only multipart/related; type="application/dicom" is accepted')
        if not params.get("boundary"):
            return _Reply.text(400, "the Content-Type has no boundary")
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        length = request.headers.get("Content-Length")
        if not chunked:
            if length is None or not length.strip().isdigit():
                return _Reply.text(411, "a Content-Length (or chunked transfer encoding) is required")
            if int(length) > self.config.max_request_mb * _MB:
                return _Reply.text(
                    413, f"the request is larger than dicomweb.max_request_mb ({self.config.max_request_mb} MB)"
                )
        try:
            self.store.check_space()
        except OutOfSpace as exc:
            event(log, "stow-rs refused", level=logging.WARNING, reason=str(exc))
            return _Reply.text(503, f"out of space: {exc}", **{"Retry-After": "300"})
        return None

    def handle(self, request: BaseHTTPRequestHandler) -> _Reply:
        """Answer one ``POST``: spool the body, split it, store each part, say what became of each."""
        early = self.precheck(request)
        if early is not None:
            request.close_connection = True
            self._drain(request)
            return early
        started = time.perf_counter()
        match = _PATH.match(request.path.split("?", 1)[0])
        study = match.group(1) if match else None
        _, params = parse_media_type(request.headers.get("Content-Type", ""))
        fd, name = tempfile.mkstemp(dir=self.store.incoming_dir, prefix=".stow-", suffix=".body")
        body_path = Path(name)
        try:
            with os.fdopen(fd, "w+b") as body:
                problem = self._spool(request, body)
                if problem is not None:
                    request.close_connection = True
                    return problem
                body.flush()
                size = body.tell()
                if size == 0:
                    return _Reply.text(400, "the request has no body")
                with mmap.mmap(body.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                    related = split_related(buffer, params["boundary"])
                    if related.error:
                        event(log, "stow-rs refused", level=logging.WARNING, address=request.client_address[0],
                              reason=related.error)  # fmt: skip
                        return _Reply.text(400, f"malformed multipart/related body: {related.error}")
                    instances = [self._store_part(buffer, part, study) for part in related.parts]
        finally:
            body_path.unlink(missing_ok=True)
        failed = sum(1 for i in instances if i.failure is not None)
        status = 200 if not failed else 409 if failed == len(instances) else 202
        event(log, "stow-rs stored", address=request.client_address[0], stored=len(instances) - failed, failed=failed,
              bytes=size, ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip
        return _Reply(status, _response_body(instances), "application/dicom+json")

    def _drain(self, request: BaseHTTPRequestHandler) -> None:
        """Read and drop a little of a refused body, so that the client sees the answer, not a reset."""
        with contextlib.suppress(OSError, ValueError):
            length = int(request.headers.get("Content-Length", "0") or 0)
            left = min(length, _DRAIN_BYTES)
            request.connection.settimeout(1.0)
            while left > 0 and (chunk := request.rfile.read1(min(_CHUNK, left))):
                left -= len(chunk)

    def _spool(self, request: BaseHTTPRequestHandler, body: Any) -> _Reply | None:
        """Copy the request body to ``body``; a reply when it cannot be (too large, cut short)."""
        limit = self.config.max_request_mb * _MB
        try:
            if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
                return self._spool_chunked(request, body, limit)
            left = int(request.headers["Content-Length"])
            while left > 0:
                chunk = request.rfile.read1(min(_CHUNK, left))
                if not chunk:
                    return _Reply.text(400, "the body ended before its Content-Length")
                body.write(chunk)
                left -= len(chunk)
        except TimeoutError:
            return _Reply.text(408, f"no data for {self.config.timeout_s:g} s")
        return None

    def _spool_chunked(self, request: BaseHTTPRequestHandler, body: Any, limit: int) -> _Reply | None:
        total, refused = 0, None
        while True:
            line = request.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return _Reply.text(400, "malformed chunked transfer encoding")
            if size == 0:
                while request.rfile.readline(1024).strip():  # trailers
                    pass
                return refused
            total += size
            if total > limit and refused is None:  # read on (and drop) a little, so the client sees the answer
                refused = _Reply.text(
                    413, f"the request is larger than dicomweb.max_request_mb ({self.config.max_request_mb} MB)"
                )
            if refused is not None and total > limit + _DRAIN_BYTES:
                return refused
            while size > 0:
                chunk = request.rfile.read1(min(_CHUNK, size))
                if not chunk:
                    return refused or _Reply.text(400, "the body ended inside a chunk")
                if refused is None:
                    body.write(chunk)
                size -= len(chunk)
            request.rfile.readline(16)  # the CRLF after the chunk

    def _store_part(self, buffer: mmap.mmap, part: RelatedPart, study: str | None) -> _Instance:
        """Store one part through :meth:`ImageStore.accept`, as the SCP stores a C-STORE, and say what happened."""
        if part.headers.get("content-type") and part.media_type != "application/dicom":
            return _Instance(failure=REASON_CANNOT_UNDERSTAND, reason=f"a part of type {part.media_type}")
        fd, name = tempfile.mkstemp(dir=self.store.incoming_dir, prefix=".stow-", suffix=".dcm")
        spooled = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, memoryview(buffer) as view:
                for at in range(part.start, part.end, _CHUNK):
                    out.write(view[at : min(part.end, at + _CHUNK)])
        except OSError as exc:
            spooled.unlink(missing_ok=True)
            return self._failed(_Instance(), REASON_OUT_OF_RESOURCES, f"cannot spool: {exc.strerror}")
        instance, its_study = _identify(spooled)
        if study is not None and instance.sop_instance_uid and its_study != study:
            spooled.unlink(missing_ok=True)
            return self._failed(instance, REASON_STUDY_MISMATCH, f"not of study {study}")
        if instance.sop_class_uid and not _storable(instance.sop_class_uid):
            spooled.unlink(missing_ok=True)
            return self._failed(
                instance, REASON_SOP_CLASS_NOT_SUPPORTED, f"{instance.sop_class_uid} is no storage class"
            )
        try:
            stored = self.store.accept(spooled, CALLING_AE)
        except OutOfSpace as exc:
            spooled.unlink(missing_ok=True)
            return self._failed(instance, REASON_OUT_OF_RESOURCES, f"out of space: {exc}")
        except InvalidDataset as exc:
            where = self.store.quarantine(spooled, str(exc), calling_ae=CALLING_AE,
                                          sop_instance_uid=instance.sop_instance_uid)  # fmt: skip
            return self._failed(instance, REASON_CANNOT_UNDERSTAND, f"{exc} (quarantined as {where.name})")
        except DuplicateConflict as exc:
            return self._failed(instance, REASON_DUPLICATE, str(exc))
        except StoreError as exc:  # the disk or the database failed: nothing was indexed, the source retries
            spooled.unlink(missing_ok=True)
            return self._failed(instance, REASON_OUT_OF_RESOURCES, f"cannot store: {exc}")
        header = stored.header
        if stored.outcome == "stored":
            event(log, "stored", study=header.study_uid, sop=header.sop_instance_uid, patient=header.patient_id,
                  modality=header.modality, calling_ae=CALLING_AE, bytes=stored.size_bytes,
                  syntax=header.transfer_syntax_uid)  # fmt: skip
        return _Instance(header.sop_class_uid, header.sop_instance_uid)

    def _failed(self, instance: _Instance, code: int, reason: str) -> _Instance:
        event(log, "store rejected", level=logging.WARNING, sop=instance.sop_instance_uid or "(unknown)",
              calling_ae=CALLING_AE, reason=reason, failure_reason=f"0x{code:04X}")  # fmt: skip
        return _Instance(instance.sop_class_uid, instance.sop_instance_uid, code, reason)


def _identify(path: Path) -> tuple[_Instance, str]:
    """The SOP class and instance UIDs and the Study Instance UID of a spooled part, as far as they can be read
    (unreadable: empty; :meth:`ImageStore.accept` then says why)."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        meta = ds.file_meta
        sop_class = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
        sop_instance = str(ds.get("SOPInstanceUID", "") or meta.get("MediaStorageSOPInstanceUID", ""))
        study = str(ds.get("StudyInstanceUID", "") or "")
    except Exception:  # pydicom raises many types for malformed input; the store says why when it is accepted
        return _Instance(), ""
    return _Instance(sop_class, sop_instance), study
