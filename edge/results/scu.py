"""C-STORE to a destination with pynetdicom: one association per batch, one outcome per object.

Presentation contexts: Verification (so that an association stands even when none of our SOP classes is
accepted), and per SOP class the object's own transfer syntax when it is compressed (so a PACS that
takes it gets the bytes as they are) and one with Explicit and Implicit VR Little Endian, which every storage SCP
takes. An object in a transfer syntax the destination accepted is streamed from its file as stored; otherwise it
is read, decompressed if the destination takes it only uncompressed, and pynetdicom re-encodes it into the
accepted little-endian syntax. Optional TLS (server certificate checked; client certificate when configured).

Outcomes: ``sent`` (success or a warning status, kept), ``rejected`` (a failure status, a SOP class the
destination did not accept, or an object we cannot read: recorded, not retried blindly) and ``retry`` (no
association - unreachable, rejected, aborted, timed out - or no answer): the queue backs those off.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from edge import dicomlib
from edge.config import DestinationConfig
from runtime.logs import event

__all__ = ["Outcome", "Outgoing", "Sender", "StoreSCU"]

log = logging.getLogger("edge.results")

_UNCOMPRESSED: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_CONTEXTS = 128


@dataclass(frozen=True)
class Outgoing:
    """One object to send."""

    object_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path


@dataclass(frozen=True)
class Outcome:
    """What the destination did with one object."""

    object_uid: str
    result: Literal["sent", "rejected", "retry"]
    status: int | None
    """The DIMSE status of the C-STORE response, if there was one."""
    detail: str = ""


class Sender(Protocol):
    """Sends objects to a destination; never raises for what the destination or the network does.

    Returns one outcome per object tried, in order; when ``stopping()`` turns true it stops after the current
    object, and the objects not tried get no outcome (they stay as they were).
    """

    def send(
        self, destination: DestinationConfig, items: Sequence[Outgoing], stopping: Callable[[], bool] = bool
    ) -> list[Outcome]: ...


def _contexts(items: Sequence[Outgoing]) -> list[Any]:
    # Verification too: a destination that accepts none of our SOP classes still associates, so each object
    # is rejected for its SOP class (recorded, not retried) instead of the association failing as a whole.
    contexts: list[Any] = [build_context(Verification)]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for item in items:
        syntaxes: list[tuple[str, ...]] = [_UNCOMPRESSED]
        if UID(item.transfer_syntax_uid).is_compressed:
            syntaxes.insert(0, (item.transfer_syntax_uid,))
        for ts in syntaxes:
            if (item.sop_class_uid, ts) not in seen and len(contexts) < _MAX_CONTEXTS:
                seen.add((item.sop_class_uid, ts))
                contexts.append(build_context(item.sop_class_uid, list(ts)))
    return contexts


def _tls_args(destination: DestinationConfig) -> tuple[ssl.SSLContext, str] | None:
    if not destination.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=destination.tls_ca_file or None)
    if destination.tls_cert_file:
        context.load_cert_chain(destination.tls_cert_file, destination.tls_key_file)
    return context, destination.host


def _status_detail(rsp: Any) -> str:
    comment = str(rsp.get("ErrorComment", "") or "")
    return f"status 0x{int(rsp.Status):04X}" + (f": {comment}" if comment else "")


class _QuietConnectFailures(logging.Filter):
    """Drops pynetdicom's two ERROR lines per refused connection; :class:`StoreSCU` logs one line per batch."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Association request failed: unable to connect", "TCP Initialisation Error"))


_QUIET = _QuietConnectFailures()


class StoreSCU:
    """The real :class:`Sender`: C-STORE SCU as ``calling_ae``."""

    def __init__(self, calling_ae: str, *, connect_timeout_s: float = 10.0, dimse_timeout_s: float = 60.0) -> None:
        logging.getLogger("pynetdicom.transport").addFilter(_QUIET)  # the same filter object: added once
        self.calling_ae = calling_ae
        self.connect_timeout_s = connect_timeout_s
        self.dimse_timeout_s = dimse_timeout_s

    def send(
        self, destination: DestinationConfig, items: Sequence[Outgoing], stopping: Callable[[], bool] = bool
    ) -> list[Outcome]:
        """Send ``items`` over one association; one :class:`Outcome` per item tried, in order."""
        if not items:
            return []
        try:
            tls = _tls_args(destination)
        except (OSError, ssl.SSLError) as exc:
            return [Outcome(i.object_uid, "retry", None, f"TLS setup failed: {exc}") for i in items]
        ae = AE(ae_title=self.calling_ae)
        ae.connection_timeout = self.connect_timeout_s
        ae.acse_timeout = self.connect_timeout_s
        ae.dimse_timeout = self.dimse_timeout_s
        ae.network_timeout = self.dimse_timeout_s
        connected = threading.Event()
        assoc: Any = ae.associate(
            destination.host,
            destination.port,
            _contexts(items),
            ae_title=destination.ae_title,
            tls_args=tls,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda _: connected.set())],
        )
        if not assoc.is_established:
            # a PACS that does not know the calling or called AE title often rejects, and some (Orthanc) just close
            # the connection: say what to check on the PACS either way
            titles = (
                f"does {destination.name} know this box as AE title {self.calling_ae!r}, "
                f"and itself as {destination.ae_title!r}?"
            )
            why = (
                "cannot connect (unreachable, refused or timed out)"
                if not connected.is_set()
                else f"association rejected by the destination ({titles})"
                if assoc.is_rejected
                else f"association aborted or timed out during negotiation ({titles})"
            )
            event(log, "destination unavailable", level=logging.WARNING, destination=destination.name, reason=why,
                  objects=len(items))  # fmt: skip
            return [Outcome(i.object_uid, "retry", None, why) for i in items]
        outcomes: list[Outcome] = []
        try:
            for item in items:
                if stopping():
                    break
                lost = bool(outcomes) and outcomes[-1].result == "retry"
                if lost or not assoc.is_established:
                    outcomes.append(Outcome(item.object_uid, "retry", None, "association aborted"))
                    continue
                outcomes.append(self._store(assoc, item))
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes

    def _store(self, assoc: Any, item: Outgoing) -> Outcome:
        accepted = {c.transfer_syntax[0] for c in assoc.accepted_contexts if c.abstract_syntax == item.sop_class_uid}
        if not accepted:
            name = UID(item.sop_class_uid).name
            return Outcome(item.object_uid, "rejected", None, f"the destination does not accept {name}")
        payload: Path | Any = item.path  # sent as stored, without decoding and re-encoding it
        try:
            if item.transfer_syntax_uid not in accepted:
                payload = dcmread(item.path)
                if payload.file_meta.TransferSyntaxUID.is_compressed:
                    payload.decompress(generate_instance_uid=False)  # the same instance, only re-encoded
        except (OSError, InvalidDicomError, ValueError, AttributeError, RuntimeError, NotImplementedError) as exc:
            return Outcome(item.object_uid, "rejected", None, f"cannot read or transcode {item.path.name}: {exc}")
        try:
            with dicomlib.CHUNKED_SEND.held():  # a file the destination accepts as stored is streamed as it is
                rsp = assoc.send_c_store(payload)
        except RuntimeError as exc:  # the association went away under us
            return Outcome(item.object_uid, "retry", None, f"association lost: {exc}")
        except OSError as exc:
            return Outcome(item.object_uid, "rejected", None, f"cannot read {item.path.name}: {exc}")
        except (ValueError, AttributeError) as exc:
            return Outcome(item.object_uid, "rejected", None, f"cannot encode for this destination: {exc}")
        if "Status" not in rsp:
            why = (
                "no response (association aborted or timed out; a PACS that does not know this box as AE title "
                f"{self.calling_ae!r} may close it here)"
            )
            return Outcome(item.object_uid, "retry", None, why)
        status = int(rsp.Status)
        category = code_to_category(status)
        if category in ("Success", "Warning"):
            return Outcome(item.object_uid, "sent", status, "" if category == "Success" else _status_detail(rsp))
        return Outcome(item.object_uid, "rejected", status, _status_detail(rsp))
