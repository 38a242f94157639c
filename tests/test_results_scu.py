"""The C-STORE SCU against real peers: DCMTK's storescp (the PACS), and pynetdicom SCPs that refuse a SOP class,
answer a failure or warning status, or abort; and a destination nobody listens on."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge.config import DestinationConfig
from edge.results.overlay import build_overlay
from edge.results.scu import Outgoing, StoreSCU
from edge.results.sr import build_sr
from edge.results.uids import UidFactory
from tests.conftest import free_port
from tests.results_helpers import analysis_of, dciodvfy_errors, file_bytes, received, source_image, storescp

pytestmark = pytest.mark.integration


@pytest.fixture
def objects(tmp_path: Path) -> list[Outgoing]:
    """An SR, an overlay and an RLE-compressed original, as files."""
    source = source_image("PX", rows=300, columns=600)
    out = []
    for ds in (
        build_sr(source, analysis_of(source), UidFactory()),
        build_overlay(source, analysis_of(source), UidFactory()),
    ):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(file_bytes(ds))
        out.append(Outgoing(ds.SOPInstanceUID, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID, path))
    source.compress(RLELossless, generate_instance_uid=False)
    path = tmp_path / "original.dcm"
    path.write_bytes(file_bytes(source))
    out.append(Outgoing(source.SOPInstanceUID, source.SOPClassUID, RLELossless, path))
    return out


def _dest(port: int, ae: str = "PACS") -> DestinationConfig:
    return DestinationConfig(ae_title=ae, host="127.0.0.1", port=port)


def test_storescp_receives_everything_and_the_compressed_original_is_transcoded(
    objects: list[Outgoing], tmp_path: Path
) -> None:
    port = free_port()
    with storescp(tmp_path / "pacs", port):
        outcomes = StoreSCU("BTT_EDGE", connect_timeout_s=5).send(_dest(port), objects)
    assert [(o.result, o.status) for o in outcomes] == [("sent", 0)] * 3
    files = received(tmp_path / "pacs")
    assert set(files) == {o.object_uid for o in objects}
    original = dcmread(files[objects[2].object_uid])
    assert original.file_meta.TransferSyntaxUID != RLELossless  # storescp accepts only uncompressed by default
    for item in objects[:2]:
        assert dciodvfy_errors(files[item.object_uid]) == []


@pytest.fixture
def scp() -> Iterator[Callable[..., int]]:
    """Factory: a pynetdicom storage SCP on a free port, with the given SOP classes and C-STORE handler."""
    servers: list[Any] = []

    def start(
        handler: Callable[[Any], Any],
        sop_classes: tuple[str, ...] = (Comprehensive3DSRStorage,),
        *,
        require_called_aet: bool = False,
        syntax: str = ExplicitVRLittleEndian,
    ) -> int:
        ae = AE(ae_title="PACS")
        ae.require_called_aet = require_called_aet
        ae.add_supported_context(Verification)  # as every PACS does
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, [syntax])
        port = free_port()
        servers.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)]))
        return port

    yield start
    for server in servers:
        server.shutdown()


def test_refused_sop_class_is_a_rejection_per_object(objects: list[Outgoing], scp: Callable[..., int]) -> None:
    port = scp(lambda event: 0x0000, (CTImageStorage,))
    outcomes = StoreSCU("BTT_EDGE").send(_dest(port), objects[:2])
    assert [o.result for o in outcomes] == ["rejected", "rejected"]
    assert "does not accept Comprehensive 3D SR Storage" in outcomes[0].detail
    assert "does not accept Secondary Capture Image Storage" in outcomes[1].detail


def test_failure_status_is_a_rejection_and_warning_counts_as_sent(
    objects: list[Outgoing], scp: Callable[..., int]
) -> None:
    statuses = iter([0xA700, 0xB000])
    port = scp(lambda event: next(statuses))
    sr = objects[0]
    first, second = StoreSCU("BTT_EDGE").send(_dest(port), [sr, sr])
    assert (first.result, first.status) == ("rejected", 0xA700)
    assert first.detail.startswith("status 0xA700")
    assert (second.result, second.status) == ("sent", 0xB000)


def test_aborted_association_is_retried(objects: list[Outgoing], scp: Callable[..., int]) -> None:
    def abort(event: Any) -> int:
        event.assoc.abort()
        return 0x0000

    port = scp(abort)
    outcomes = StoreSCU("BTT_EDGE", dimse_timeout_s=5).send(_dest(port), [objects[0], objects[0]])
    assert [o.result for o in outcomes] == ["retry", "retry"]


# pynetdicom drops (without closing) its socket when the connection is refused; the GC closes it later
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreachable_destination_is_retried(objects: list[Outgoing]) -> None:
    outcomes = StoreSCU("BTT_EDGE", connect_timeout_s=2).send(_dest(free_port()), objects)
    assert {o.result for o in outcomes} == {"retry"}
    assert "cannot connect" in outcomes[0].detail


def test_rejected_association_is_retried(objects: list[Outgoing], scp: Callable[..., int]) -> None:
    port = scp(lambda event: 0x0000, require_called_aet=True)
    outcomes = StoreSCU("BTT_EDGE").send(_dest(port, ae="NOT_PACS"), objects[:1])
    assert outcomes[0].result == "retry"
    assert outcomes[0].detail.startswith("association rejected by the destination")
    assert "know this box as AE title 'BTT_EDGE', and itself as 'NOT_PACS'" in outcomes[0].detail


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 (openssl) and its key."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "pacs.crt", directory / "pacs.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pacs",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_destination(objects: list[Outgoing], certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    ae.add_supported_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, ssl_context=server_context, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)]
    )
    assert server is not None  # not blocking: the server is returned
    try:
        trusted = DestinationConfig(ae_title="PACS", host="127.0.0.1", port=port, tls=True, tls_ca_file=str(cert))
        assert StoreSCU("BTT_EDGE").send(trusted, objects[:1])[0].result == "sent"
        untrusted = DestinationConfig(ae_title="PACS", host="127.0.0.1", port=port, tls=True)  # system CAs only
        outcome = StoreSCU("BTT_EDGE", connect_timeout_s=5).send(untrusted, objects[:1])[0]
        assert (outcome.result, outcome.detail) == ("retry", "cannot connect (unreachable, refused or timed out)")
    finally:
        server.shutdown()


def test_implicit_only_destination_gets_the_sr_re_encoded(objects: list[Outgoing], scp: Callable[..., int]) -> None:
    got: list[Any] = []

    def keep(event: Any) -> int:
        got.append((event.context.transfer_syntax, event.dataset.SOPInstanceUID))
        return 0x0000

    port = scp(keep, syntax=ImplicitVRLittleEndian)
    (outcome,) = StoreSCU("BTT_EDGE").send(_dest(port), objects[:1])
    assert outcome.result == "sent"
    assert got == [(ImplicitVRLittleEndian, objects[0].object_uid)]


def test_stopping_leaves_the_rest_untried(objects: list[Outgoing], scp: Callable[..., int]) -> None:
    got: list[str] = []

    def keep(event: Any) -> int:
        got.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    port = scp(keep)
    outcomes = StoreSCU("BTT_EDGE").send(_dest(port), [objects[0]] * 3, stopping=lambda: bool(got))
    assert [o.result for o in outcomes] == ["sent"]
    assert len(got) == 1
