"""DICOMweb destinations (``protocol = "dicomweb"``): STOW-RS from the results service (:mod:`edge.results.dicomweb`).

The real peer is Orthanc with Debian's DICOMweb plugin (:class:`tests.orthanc.OrthancPacs` ``dicomweb=True``): the
SR and the overlay of the product's own synthetic panoramic, the panoramic itself and pydicom's test files in seven
transfer syntaxes go through the results service's queue, and Orthanc's QIDO-RS lists them in their study and
WADO-RS gives each back byte for byte. What Orthanc cannot be made to do (answer 202 with a Failed SOP Sequence,
503, ask for credentials or a client certificate) is played by :class:`StowStandIn`, a small stdlib STOW-RS
server that records every request (so the request's framing is checked as well) and answers from a script.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from edge.config import DestinationConfig, ResultsConfig
from edge.multipart import parse_media_type, split_related
from edge.results import queue
from edge.results.dicomweb import StowSender, read_response
from edge.results.scu import Outgoing
from edge.results.service import ResultsService
from edge.store.image_store import ImageStore
from tests.conftest import free_port
from tests.mqtt_broker import Pki, make_pki
from tests.orthanc import OrthancPacs
from tests.results_helpers import FakeAnalyses, analysis_of, ingest, synthetic_panoramic

PYDICOM_FILES = (
    "CT_small.dcm",  # Explicit VR Little Endian
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline
    "SC_rgb_rle.dcm",  # RLE Lossless
    "JPEG-lossy.dcm",  # JPEG Extended
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
)
"""pydicom's bundled test files, one transfer syntax each."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the stand-in ------------------------------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def parts(self) -> list[bytes]:
        media_type, params = parse_media_type(self.headers["content-type"])
        assert media_type == "multipart/related"
        assert params["type"] == "application/dicom"
        related = split_related(self.body, params["boundary"])
        assert not related.error, related.error
        assert {p.media_type for p in related.parts} == {"application/dicom"}
        return [self.body[p.start : p.end] for p in related.parts]

    def uids(self) -> list[str]:
        return [str(dcmread(_bytes_io(part), stop_before_pixels=True).SOPInstanceUID) for part in self.parts()]


def _bytes_io(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


Answer = tuple[int, dict[str, Any] | bytes]
Script = Callable[[Request], Answer]


def stored_all(request: Request) -> Answer:
    """What an origin server that stored everything answers."""
    return 200, {"00081199": {"vr": "SQ", "Value": [_ref(uid) for uid in request.uids()]}}


def _ref(uid: str, **extra: Any) -> dict[str, Any]:
    return {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]}, "00081155": {"vr": "UI", "Value": [uid]},
            **extra}  # fmt: skip


@dataclass
class StowStandIn:
    """A stdlib STOW-RS origin server on a free loopback port: records requests, answers with ``script``."""

    script: Script = stored_all
    token: str = ""
    basic: tuple[str, str] | None = None
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                assert "transfer-encoding" not in {k.lower() for k in self.headers}, "chunked upload"
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                standin.requests.append(request)
                status, answer = standin._answer(request)
                data = json.dumps(answer).encode() if isinstance(answer, dict) else answer
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json" if isinstance(answer, dict) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _answer(self, request: Request) -> Answer:
        given = request.headers.get("authorization", "")
        if self.token and given != f"Bearer {self.token}":
            return 401, b"bearer token required"
        if self.basic and given != "Basic " + base64.b64encode(":".join(self.basic).encode()).decode():
            return 401, b"basic credentials required"
        return self.script(request)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}/dicomweb"

    def __enter__(self) -> StowStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _destination(url: str, **kwargs: Any) -> DestinationConfig:
    return DestinationConfig(protocol="dicomweb", url=url, kinds=kwargs.pop("kinds", ("sr", "overlay")), **kwargs)


def _service(
    store: ImageStore, destination: DestinationConfig, clock: Clock | None = None, **config: Any
) -> tuple[ResultsService, FakeAnalyses]:
    analyses = FakeAnalyses()
    cfg = ResultsConfig(destinations=(destination,), backoff_initial_s=10, backoff_max_s=40, **config)
    service = ResultsService(cfg, store.data_dir, analyses, calling_ae="BTT_EDGE", clock=clock or Clock())
    queue.migrate_results(store.conn)
    return service, analyses


def _analysed(store: ImageStore, analyses: FakeAnalyses) -> str:
    """The product's synthetic panoramic in the store, analysed (its findings from the results helpers)."""
    source = synthetic_panoramic()
    analyses.analyses[source.SOPInstanceUID] = analysis_of(source)
    return ingest(store, source)


def _deliveries(store: ImageStore) -> dict[str, tuple[str, str, int | None, str]]:
    """object UID -> (kind, state, last status, last error)."""
    return {s.object.object_uid: (s.object.kind, d.state, d.last_status, d.last_error)
            for s in queue.list_objects(store.conn) for d in s.deliveries}  # fmt: skip


def _drain(service: ResultsService, store: ImageStore, destination: DestinationConfig) -> None:
    service.build_pending(store.conn)
    for _ in range(20):
        if not service.send_due(store.conn, destination):
            break


# --- the answer, as PS3.18 says (pure) ------------------------------------------------------------------------


def _items(*uids: str) -> list[Outgoing]:
    return [Outgoing(uid, "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1", Path(f"/x/{uid}.dcm")) for uid in uids]


def _failed(uid: str, code: int) -> dict[str, Any]:
    return _ref(uid, **{"00081197": {"vr": "US", "Value": [code]}})


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"00081199": {"vr": "SQ", "Value": [_ref("1.1"), _ref("1.2")]}}, ["sent", "sent"]),
        (200, b"", ["sent", "sent"]),  # no body: the status says all were stored
        (
            202,
            {
                "00081199": {"vr": "SQ", "Value": [_ref("1.1")]},
                "00081198": {"vr": "SQ", "Value": [_failed("1.2", 0xA700)]},
            },
            ["sent", "rejected"],
        ),
        (202, {"00081199": {"vr": "SQ", "Value": [_ref("1.1")]}}, ["sent", "retry"]),  # 1.2 not mentioned
        (
            409,
            {"00081198": {"vr": "SQ", "Value": [_failed("1.1", 0xC122), _failed("1.2", 0x0122)]}},
            ["rejected", "rejected"],
        ),
        (409, b"<html>conflict</html>", ["rejected", "rejected"]),
        (400, b"bad multipart", ["rejected", "rejected"]),
        (413, b"", ["rejected", "rejected"]),
        (415, b"", ["rejected", "rejected"]),
        (401, b"", ["retry", "retry"]),
        (403, b"", ["retry", "retry"]),
        (404, b"", ["retry", "retry"]),
        (503, b"busy", ["retry", "retry"]),
        (202, b"{not json", ["retry", "retry"]),
        (202, {"00081198": {"vr": "SQ", "Value": "nonsense"}}, ["retry", "retry"]),
    ],
)
def test_response_is_read_per_instance(status: int, body: dict[str, Any] | bytes, expected: list[str]) -> None:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    media = "application/dicom+json" if isinstance(body, dict) else "text/plain"
    outcomes = read_response(status, "Reason", media, data, _items("1.1", "1.2"))
    assert [o.result for o in outcomes] == expected
    assert [o.object_uid for o in outcomes] == ["1.1", "1.2"]


def test_failure_reason_is_the_status_and_the_detail() -> None:
    body = {"00081198": {"vr": "SQ", "Value": [_failed("1.1", 0xA700)]}}
    [outcome] = read_response(409, "Conflict", "application/dicom+json", json.dumps(body).encode(), _items("1.1"))
    assert (outcome.result, outcome.status) == ("rejected", 0xA700)
    assert "0xA700 (out of resources)" in outcome.detail


# --- Orthanc, the real peer -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    with OrthancPacs(tmp_path_factory.mktemp("orthanc-web"), dicomweb=True) as pacs:
        yield pacs


def _wado(pacs: OrthancPacs, study: str, series: str, sop: str) -> bytes:
    media, body = pacs.fetch(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                             'multipart/related; type="application/dicom"; transfer-syntax=*')  # fmt: skip
    media_type, params = parse_media_type(media)
    assert media_type == "multipart/related", media
    related = split_related(body, params["boundary"])
    assert not related.error, related.error
    assert len(related.parts) == 1
    part = related.parts[0]
    return body[part.start : part.end]


def _qido(pacs: OrthancPacs, path: str) -> list[dict[str, Any]]:
    _, body = pacs.fetch(path, "application/dicom+json")
    result = json.loads(body)
    assert isinstance(result, list)
    return result


def _uid(item: dict[str, Any], tag: str) -> str:
    return str(item[tag]["Value"][0])


@pytest.mark.integration
def test_orthanc_receives_results_and_originals_whole(orthanc: OrthancPacs, store: ImageStore) -> None:
    destination = _destination(orthanc.dicomweb_url, kinds=("original", "sr", "overlay"))
    service, analyses = _service(store, destination)
    source_uid = _analysed(store, analyses)
    third_party = {}
    for name in PYDICOM_FILES:
        ds = dcmread(str(get_testdata_file(name)))
        third_party[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
        ingest(store, ds, analysed=False)
    _drain(service, store, destination)

    deliveries = _deliveries(store)
    assert {kind for kind, *_ in deliveries.values()} == {"original", "sr", "overlay"}
    assert {state for _, state, *_ in deliveries.values()} == {"sent"}, f"{deliveries}\n{orthanc.log()}"
    assert set(third_party) | {source_uid} <= set(deliveries)
    assert len(set(third_party.values())) == len(PYDICOM_FILES)

    objects = {s.object.object_uid: s.object for s in queue.list_objects(store.conn)}
    by_study: dict[str, set[str]] = {}
    for obj in objects.values():
        by_study.setdefault(obj.study_uid, set()).add(obj.object_uid)
    for study, uids in by_study.items():  # QIDO-RS: every object in its study, in a series Orthanc knows
        series = {_uid(s, "0020000E") for s in _qido(orthanc, f"/dicom-web/studies/{study}/series")}
        instances = _qido(orthanc, f"/dicom-web/studies/{study}/instances")
        assert {_uid(i, "00080018") for i in instances} == uids
        for instance in instances:  # WADO-RS: each comes back as the box sent it
            sop, its_series = _uid(instance, "00080018"), _uid(instance, "0020000E")
            assert its_series in series
            sent = (store.data_dir / objects[sop].path).read_bytes()
            got = _wado(orthanc, study, its_series, sop)
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(sent).hexdigest(), objects[sop].kind
    [sr] = [o for o in objects.values() if o.kind == "sr"]
    assert sr.study_uid == objects[source_uid].study_uid


@pytest.mark.integration
def test_orthanc_refusal_is_rejected_alone(orthanc: OrthancPacs, tmp_path: Path) -> None:
    """Orthanc answers 400 to a request holding one file it cannot parse: the batch is sent again object by
    object, the good one is stored and only the broken one is rejected."""
    good = Path(str(get_testdata_file("CT_small.dcm")))
    ds = dcmread(good, stop_before_pixels=True)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"not a data set" * 10)
    items = [
        Outgoing("1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1", broken),
        Outgoing(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), good),
    ]
    outcomes = StowSender().send(_destination(orthanc.dicomweb_url), items)
    assert [o.result for o in outcomes] == ["rejected", "sent"], outcomes
    assert "HTTP 400" in outcomes[0].detail


# --- the stand-in: framing, partial failures, retries, dead letters, auth, TLS ---------------------------------


def test_request_is_one_multipart_related_post_with_a_length(store: ImageStore) -> None:
    with StowStandIn() as peer:
        destination = _destination(peer.url)
        service, analyses = _service(store, destination)
        _analysed(store, analyses)
        _drain(service, store, destination)
    assert {state for _, state, *_ in _deliveries(store).values()} == {"sent"}
    [request] = peer.requests  # the SR and the overlay in one request
    assert request.path == "/dicomweb/studies"
    assert request.headers["accept"] == "application/dicom+json"
    assert int(request.headers["content-length"]) == len(request.body)
    objects = {s.object.object_uid: s.object for s in queue.list_objects(store.conn)}
    parts = request.parts()
    assert sorted(parts) == sorted((store.data_dir / o.path).read_bytes() for o in objects.values())


def test_partial_failure_rejects_that_instance_with_its_reason(store: ImageStore) -> None:
    def one_fails(request: Request) -> Answer:
        ok, bad = request.uids()
        return 202, {"00081199": {"vr": "SQ", "Value": [_ref(ok)]},
                     "00081198": {"vr": "SQ", "Value": [_failed(bad, 0xA900)]}}  # fmt: skip

    with StowStandIn(one_fails) as peer:
        destination = _destination(peer.url)
        service, analyses = _service(store, destination)
        _analysed(store, analyses)
        _drain(service, store, destination)
    deliveries = sorted(_deliveries(store).values())  # overlay, sr
    assert [(kind, state) for kind, state, *_ in deliveries] == [("overlay", "rejected"), ("sr", "sent")]
    _, _, status, error = deliveries[0]
    assert status == 0xA900
    assert "0xA900" in error
    assert "does not match SOP class" in error


def test_unavailable_is_retried_then_delivered(store: ImageStore) -> None:
    answers: list[Answer] = [(503, b"maintenance")]

    def busy_once(request: Request) -> Answer:
        return answers.pop(0) if answers else stored_all(request)

    clock = Clock()
    with StowStandIn(busy_once) as peer:
        destination = _destination(peer.url)
        service, analyses = _service(store, destination, clock)
        _analysed(store, analyses)
        _drain(service, store, destination)
        first = _deliveries(store)
        assert {state for _, state, *_ in first.values()} == {"pending"}
        assert all("HTTP 503" in error and "maintenance" in error for *_, error in first.values())
        assert service.send_due(store.conn, destination) == 0  # backing off
        clock.now += 11
        _drain(service, store, destination)
    assert {state for _, state, *_ in _deliveries(store).values()} == {"sent"}
    assert len(peer.requests) == 2


def test_dead_letter_after_max_attempts_then_resend(store: ImageStore) -> None:
    clock = Clock()
    script: list[Script] = [lambda _: (503, b"down")]

    def scripted(request: Request) -> Answer:
        return script[0](request)

    with StowStandIn(scripted) as peer:
        destination = _destination(peer.url)
        service, analyses = _service(store, destination, clock, max_attempts=2)
        _analysed(store, analyses)
        _drain(service, store, destination)
        clock.now += 100
        _drain(service, store, destination)
        assert {state for _, state, *_ in _deliveries(store).values()} == {"dead"}
        script[0] = stored_all
        assert queue.resend(store.conn, now=clock.now) == 2
        _drain(service, store, destination)
    assert {state for _, state, *_ in _deliveries(store).values()} == {"sent"}
    assert len(peer.requests) == 3


def test_bearer_token_is_read_from_its_file_at_send_time(store: ImageStore, tmp_path: Path) -> None:
    token = tmp_path / "token"
    clock = Clock()
    with StowStandIn(token="s3cret") as peer:
        destination = _destination(peer.url, auth="bearer", token_file=str(token))
        service, analyses = _service(store, destination, clock)
        _analysed(store, analyses)
        _drain(service, store, destination)  # no file yet: retry, nothing sent, the reason names the key
        errors = {error for *_, error in _deliveries(store).values()}
        assert len(errors) == 1
        assert "token_file" in errors.pop()
        assert peer.requests == []
        token.write_text("wrong\n")
        clock.now += 11
        _drain(service, store, destination)  # 401: a credential an operator fixes, so retried
        assert all(s == "pending" and "HTTP 401" in e for _, s, _, e in _deliveries(store).values())
        token.write_text("s3cret\n")
        clock.now += 100
        _drain(service, store, destination)
    assert {state for _, state, *_ in _deliveries(store).values()} == {"sent"}


def test_basic_auth(store: ImageStore, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("pa:ss\n")
    with StowStandIn(basic=("box", "pa:ss")) as peer:
        destination = _destination(peer.url, auth="basic", username="box", password_file=str(password))
        service, analyses = _service(store, destination)
        _analysed(store, analyses)
        _drain(service, store, destination)
    assert {state for _, state, *_ in _deliveries(store).values()} == {"sent"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), ["btt-box"])


def _mutual_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.client("btt-box")
    item = _items("1.2.3")[0]
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 200)
    item = Outgoing(item.object_uid, item.sop_class_uid, item.transfer_syntax_uid, path)
    with StowStandIn(lambda _: stored_all_uids(["1.2.3"]), tls=_mutual_tls(pki)) as peer:
        with_cert = _destination(peer.url, tls_ca_file=str(pki.ca), tls_cert_file=str(cert), tls_key_file=str(key))
        [sent] = StowSender().send(with_cert, [item])
        [anonymous] = StowSender().send(_destination(peer.url, tls_ca_file=str(pki.ca)), [item])
        [untrusted] = StowSender().send(_destination(peer.url), [item])  # the system CAs do not know this server
    assert sent.result == "sent", sent
    assert anonymous.result == "retry", anonymous
    assert untrusted.result == "retry", untrusted
    assert "certificate" in untrusted.detail.lower()


def stored_all_uids(uids: list[str]) -> Answer:
    return 200, {"00081199": {"vr": "SQ", "Value": [_ref(uid) for uid in uids]}}


def test_unreachable_and_stopping(tmp_path: Path) -> None:
    destination = _destination(f"http://127.0.0.1:{free_port()}")
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 200)
    items = [Outgoing(i.object_uid, i.sop_class_uid, i.transfer_syntax_uid, path) for i in _items("1.1", "1.2")]
    outcomes = StowSender(connect_timeout_s=1).send(destination, items)
    assert [o.result for o in outcomes] == ["retry", "retry"]
    assert "cannot reach" in outcomes[0].detail
    assert StowSender().send(destination, _items("1.1"), stopping=lambda: True) == []


def test_unreadable_object_is_rejected_the_rest_sent(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 200)
    readable = Outgoing("1.2", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1", path)
    with contextlib.ExitStack() as stack:
        peer = stack.enter_context(StowStandIn(lambda _: stored_all_uids(["1.2"])))
        outcomes = StowSender().send(_destination(peer.url), [*_items("1.1"), readable])
    assert [o.result for o in outcomes] == ["rejected", "sent"]
    assert "cannot read" in outcomes[0].detail
