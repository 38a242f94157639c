"""The box's STOW-RS receiver (:mod:`edge.ingest.stow`): uploads over HTTP into the same store as the SCP.

Bodies are built with the product's own framing (:mod:`edge.multipart`) from the product's synthetic panoramic,
the unit simulator's image and pydicom's test files in seven transfer syntaxes, and posted with ``http.client``;
the box's own STOW-RS sender talks to it over mutual TLS with a bearer token, and ``btt-edge run`` with
``[dicomweb] enabled`` is killed with SIGKILL right after it answered, to show the answer came after the write.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from edge.config import DestinationConfig, DicomwebConfig
from edge.db import DB_FILENAME, connect
from edge.errors import ConfigError, IngestError
from edge.ingest.stow import CALLING_AE, StowReceiver
from edge.multipart import closing, content_type, new_boundary, part_head
from edge.results.dicomweb import StowSender
from edge.results.scu import Outgoing
from edge.store.image_store import ImageStore
from edge.store.index import get_instance
from tests.conftest import StartAgent, free_port, wait_until
from tests.mqtt_broker import Pki, make_pki
from tests.results_helpers import file_bytes, simulated_panoramic, synthetic_panoramic

PYDICOM_FILES = ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 "SC_rgb_rle.dcm", "JPEG-lossy.dcm", "image_dfl.dcm")  # fmt: skip
"""pydicom's bundled test files, one transfer syntax each."""


def _body(parts: Sequence[bytes | tuple[str, bytes]], boundary: str) -> bytes:
    """A ``multipart/related`` body: each part ``application/dicom`` unless given as ``(media type, bytes)``."""
    chunks = []
    for n, part in enumerate(parts):
        media, data = part if isinstance(part, tuple) else ("application/dicom", part)
        chunks += [b"\r\n" if n else b"", part_head(boundary, media), data]
    return b"".join(chunks) + closing(boundary)


def _post(
    port: int,
    parts: Sequence[bytes | tuple[str, bytes]] = (),
    *,
    path: str = "/studies",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    chunked: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    boundary = new_boundary()
    data = _body(parts, boundary) if body is None else body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        all_headers = {"Content-Type": content_type(boundary), "Accept": "application/dicom+json", **(headers or {})}
        if chunked:
            conn.request("POST", path, body=iter([data[: len(data) // 2], data[len(data) // 2 :]]),
                         headers=all_headers, encode_chunked=True)  # fmt: skip
        else:
            conn.request("POST", path, body=data, headers=all_headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _sequence(answer: bytes, tag: str) -> list[dict[str, Any]]:
    dataset = json.loads(answer)
    return list(dataset.get(tag, {}).get("Value", []))


def _referenced(answer: bytes) -> set[str]:
    return {item["00081155"]["Value"][0] for item in _sequence(answer, "00081199")}


def _failed(answer: bytes) -> dict[str, int]:
    return {item.get("00081155", {"Value": ["?"]})["Value"][0]: item["00081197"]["Value"][0]
            for item in _sequence(answer, "00081198")}  # fmt: skip


@pytest.fixture
def receiver(store: ImageStore) -> Iterator[StowReceiver]:
    stow = StowReceiver(DicomwebConfig(enabled=True, port=free_port()), store)
    stow.start()
    yield stow
    stow.stop()


def _sources() -> list[bytes]:
    files = [file_bytes(synthetic_panoramic()), file_bytes(simulated_panoramic())]
    return files + [Path(str(get_testdata_file(name))).read_bytes() for name in PYDICOM_FILES]


def _uid(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _leftovers(store: ImageStore) -> list[str]:
    return [p.name for p in store.incoming_dir.iterdir()]


def test_stores_every_instance_durably_and_indexed(receiver: StowReceiver, store: ImageStore) -> None:
    sources = _sources()
    woken: list[int] = []
    store.add_listener(lambda: woken.append(1))  # how the pipeline is woken, as for a C-STORE
    status, headers, answer = _post(receiver.port, sources)
    assert status == 200, answer
    assert headers["content-type"] == "application/dicom+json"
    uids = [_uid(data) for data in sources]
    assert _referenced(answer) == set(uids)
    assert "00081198" not in json.loads(answer)
    for uid, data in zip(uids, sources, strict=True):
        instance = get_instance(store.conn, uid)
        assert instance is not None, uid
        assert (instance.pipeline_state, instance.calling_ae) == ("received", CALLING_AE)
        assert (store.data_dir / instance.path).read_bytes() == data  # byte for byte as uploaded
    assert len(woken) == len(sources)
    assert _leftovers(store) == []


def test_chunked_upload_is_taken(receiver: StowReceiver, store: ImageStore) -> None:
    data = file_bytes(synthetic_panoramic())
    status, _, answer = _post(receiver.port, [data], chunked=True)
    assert status == 200, answer
    assert get_instance(store.conn, _uid(data)) is not None


def test_a_broken_part_fails_alone(receiver: StowReceiver, store: ImageStore) -> None:
    good = file_bytes(synthetic_panoramic())
    whole = file_bytes(simulated_panoramic())
    broken = whole[: len(whole) // 2]  # a Part 10 file cut in the pixel data
    status, _, answer = _post(receiver.port, [good, broken, ("text/plain", b"hello")])
    assert status == 202, answer
    assert _referenced(answer) == {_uid(good)}
    failures = [item["00081197"]["Value"][0] for item in _sequence(answer, "00081198")]
    assert failures == [0xC000, 0xC000]
    assert _failed(answer).get(_uid(whole)) == 0xC000  # named when its header could be read
    assert get_instance(store.conn, _uid(good)) is not None
    assert len(list(store.quarantine_dir.glob("*.dcm"))) == 1  # the broken file, kept for inspection as the SCP does
    assert _leftovers(store) == []


def test_every_part_failing_is_409(receiver: StowReceiver) -> None:
    status, _, answer = _post(receiver.port, [b"not dicom", b"\0" * 132])
    assert status == 409, answer
    assert len(_sequence(answer, "00081198")) == 2


def test_truncated_body_is_400_and_nothing_is_stored(receiver: StowReceiver, store: ImageStore) -> None:
    boundary = new_boundary()
    whole = _body([file_bytes(synthetic_panoramic()), file_bytes(simulated_panoramic())], boundary)
    cut = whole[: len(whole) - 100]  # the close delimiter and the end of the last part are missing
    status, _, answer = _post(receiver.port, body=cut, headers={"Content-Type": content_type(boundary)})
    assert status == 400
    assert b"truncated" in answer
    assert store.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0
    assert _leftovers(store) == []


def test_study_in_the_url_must_match(receiver: StowReceiver, store: ImageStore) -> None:
    mine, other = synthetic_panoramic(), simulated_panoramic()
    status, _, answer = _post(receiver.port, [file_bytes(mine), file_bytes(other)],
                              path=f"/studies/{mine.StudyInstanceUID}")  # fmt: skip
    assert status == 202, answer
    assert _referenced(answer) == {mine.SOPInstanceUID}
    assert _failed(answer) == {other.SOPInstanceUID: 0xC122}
    assert get_instance(store.conn, other.SOPInstanceUID) is None


def test_a_standard_class_that_is_not_storage_is_refused(receiver: StowReceiver) -> None:
    ds: Dataset = synthetic_panoramic()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.2.1.1")  # a C-FIND model
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    status, _, answer = _post(receiver.port, [file_bytes(ds)])
    assert status == 409
    assert _failed(answer) == {ds.SOPInstanceUID: 0x0122}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/studies", {"Content-Type": "application/json"}, 415),
        ("/studies", {"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'}, 415),
        ("/studies", {"Content-Type": 'multipart/related; type="application/dicom"'}, 400),
        ("/wado", {}, 404),
        ("/studies/not-a-uid", {}, 404),
    ],
)
def test_requests_refused_by_their_headers(
    receiver: StowReceiver, store: ImageStore, path: str, headers: dict[str, str], status: int
) -> None:
    got, _, answer = _post(receiver.port, [file_bytes(synthetic_panoramic())], path=path, headers=headers)
    assert got == status, answer
    assert store.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0


def test_no_qido_or_wado(receiver: StowReceiver) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    conn.request("GET", "/studies")
    response = conn.getresponse()
    assert (response.status, response.getheader("Allow")) == (405, "POST")
    conn.close()


def test_too_large_is_413_and_nothing_is_stored(store: ImageStore) -> None:
    stow = StowReceiver(DicomwebConfig(enabled=True, port=free_port(), max_request_mb=1), store)
    stow.start()
    try:
        big = file_bytes(synthetic_panoramic())
        assert len(big) > 1 << 20
        for chunked in (False, True):
            status, _, _ = _post(stow.port, [big], chunked=chunked)
            assert status == 413
    finally:
        stow.stop()
    assert store.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0


def test_bearer_token(store: ImageStore, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    stow = StowReceiver(DicomwebConfig(enabled=True, port=free_port(), token_file=str(token)), store)
    stow.start()
    try:
        data = file_bytes(synthetic_panoramic())
        status, headers, _ = _post(stow.port, [data])
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert _post(stow.port, [data], headers={"Authorization": "Bearer wrong"})[0] == 401
        assert store.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0
        assert _post(stow.port, [data], headers={"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        stow.stop()


def test_unreadable_token_stops_the_start(store: ImageStore, tmp_path: Path) -> None:
    stow = StowReceiver(DicomwebConfig(enabled=True, port=free_port(), token_file=str(tmp_path / "nope")), store)
    with pytest.raises(IngestError, match=r"dicomweb\.token_file"):
        stow.start()


def test_beyond_loopback_needs_a_credential() -> None:
    with pytest.raises(ConfigError, match=r"dicomweb\.bind_address"):
        DicomwebConfig(enabled=True, bind_address="0.0.0.0")
    DicomwebConfig(enabled=True, bind_address="0.0.0.0", token_file="/etc/btt-edge/stow.token")


def test_the_receiver_stores_through_the_scp_store_function(
    receiver: StowReceiver, store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its durability is the SCP's (:meth:`ImageStore.accept`: fsync, rename, fsync the directory, the index row,
    tested under kill -9 for the SCP): every part goes through it, and nothing is answered before it returns."""
    calls: list[tuple[Path, str]] = []
    accept = store.accept

    def spy(spooled: Path, calling_ae: str) -> Any:
        calls.append((spooled, calling_ae))
        return accept(spooled, calling_ae)

    monkeypatch.setattr(store, "accept", spy)
    sources = _sources()[:3]
    assert _post(receiver.port, sources)[0] == 200
    assert [ae for _, ae in calls] == [CALLING_AE] * 3
    assert all(path.parent == store.incoming_dir for path, _ in calls)


# --- the box's sender to the box's receiver, over mutual TLS with a token --------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), ["source"])


def test_stow_sender_to_stow_receiver_over_mutual_tls(store: ImageStore, pki: Pki, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    config = DicomwebConfig(enabled=True, port=free_port(), token_file=str(token), tls_cert_file=str(pki.server_cert),
                            tls_key_file=str(pki.server_key), tls_client_ca_file=str(pki.ca))  # fmt: skip
    stow = StowReceiver(config, store)
    stow.start()
    cert, key = pki.client("source")
    destination = DestinationConfig(protocol="dicomweb", url=f"https://127.0.0.1:{stow.port}", auth="bearer",
                                    token_file=str(token), tls_ca_file=str(pki.ca), tls_cert_file=str(cert),
                                    tls_key_file=str(key))  # fmt: skip
    items = []
    for n, data in enumerate(_sources()[:3]):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(data)
        ds = dcmread(path, stop_before_pixels=True)
        items.append(Outgoing(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), path))
    try:
        outcomes = StowSender().send(destination, items)
        no_cert = StowSender().send(replace(destination, tls_cert_file="", tls_key_file=""), items[:1])
        plain = http.client.HTTPSConnection("127.0.0.1", stow.port, timeout=5, context=ssl.create_default_context())
        try:
            with pytest.raises(ssl.SSLCertVerificationError):  # our CA is not the system's: no TLS without it
                plain.connect()
        finally:
            plain.close()
    finally:
        stow.stop()
    assert [o.result for o in outcomes] == ["sent"] * 3, outcomes
    assert no_cert[0].result == "retry"
    for item in items:
        assert get_instance(store.conn, item.object_uid) is not None


# --- btt-edge run -----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_agent_serves_stow_and_an_answered_upload_survives_kill_9(start_agent: StartAgent, tmp_path: Path) -> None:
    port = free_port()
    env = {"BTT_EDGE_DICOMWEB_ENABLED": "true", "BTT_EDGE_DICOMWEB_PORT": str(port),
           "BTT_EDGE_PIPELINE_ENABLED": "false", "BTT_EDGE_RECEIPTS_ENABLED": "false"}  # fmt: skip
    data_dir = tmp_path / "data"
    agent = start_agent(data_dir, env=env)
    wait_until(lambda: "stow-rs listening" in agent.log(), 30, "the STOW-RS receiver")
    data = file_bytes(synthetic_panoramic())
    status, _, answer = _post(port, [data])
    agent.kill()  # at once after the answer
    assert status == 200, answer
    conn = connect(data_dir / DB_FILENAME)
    try:
        instance = get_instance(conn, _uid(data))
    finally:
        conn.close()
    assert instance is not None
    assert (data_dir / instance.path).read_bytes() == data
    restarted = start_agent(data_dir, env=env)  # the store's recovery keeps it
    assert restarted.terminate() == 0
    assert (data_dir / instance.path).is_file()
    assert os.path.getsize(data_dir / instance.path) == len(data)
