"""The storage SCP: C-ECHO and C-STORE on pynetdicom, answering success only once an object is durable.

Handlers are thin: the C-STORE handler hands pynetdicom's spooled file to
:meth:`~edge.store.image_store.ImageStore.accept` and maps the store's errors to DICOM statuses, with the
reason in the response's Error Comment and in the log:

==========================  =======  ==================================================================
store says                  status   meaning
==========================  =======  ==================================================================
stored / duplicate          0x0000   success (the file and its index row are on disk)
OutOfSpace                  0xA700   refused: free space is below ``dicom.min_free_mb``
StoreError (disk, database) 0xA700   refused: nothing was indexed; the sender retries later
InvalidDataset              0xC210   cannot understand; the object is quarantined for inspection
DuplicateConflict           0x0111   duplicate SOP instance (policy ``reject``)
anything else               0xC211   pynetdicom's own net for an unexpected error (logged with a trace)
==========================  =======  ==================================================================

Every storage SOP class is accepted (pynetdicom's unrestricted storage service), in every transfer syntax
pynetdicom knows, stored as received. The calling-AE allow-list (``dicom.allowed_calling_aes``, off when
empty) and the association limit (``dicom.max_associations``) reject at association time, and are logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

from edge import dicomlib
from edge.config import DicomConfig
from edge.errors import DuplicateConflict, IngestError, InvalidDataset, OutOfSpace, StoreError
from edge.ingest import transport
from edge.ingest.spool import Spool
from edge.store.image_store import ImageStore
from runtime.logs import event

__all__ = ["STATUS_CANNOT_UNDERSTAND", "STATUS_DUPLICATE", "STATUS_OUT_OF_RESOURCES", "StorageSCP"]

log = logging.getLogger("edge.ingest")

VERIFICATION = "1.2.840.10008.1.1"
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_DUPLICATE = 0x0111


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO: at most 64 characters
    return ds


class StorageSCP:
    """The DICOM listener of the agent (a :class:`~edge.agent.Service`)."""

    name = "dicom"

    def __init__(self, config: DicomConfig, store: ImageStore) -> None:
        self.config = config
        self.store = store
        self._ae: Any = None
        self._server: Any = None
        self._last_pdu_at = 0.0
        """``time.monotonic()`` when a PDU last arrived on any association (see :meth:`receiving_at`)."""
        self._open = 0
        """Connections open, counted by this SCP's own open and close events (pynetdicom's list of active
        associations still holds one for a moment after its close event)."""
        self._open_lock = threading.Lock()
        self._close_listeners: list[Callable[[], None]] = []
        self._spool = Spool(store.incoming_dir)
        self._unrestricted = False

    @property
    def port(self) -> int:
        """The port actually listened on (useful when configured as 0)."""
        if self._server is None:
            raise IngestError("the SCP is not running")
        return int(self._server.server_address[1])

    @property
    def active_associations(self) -> int:
        """Associations open right now (0 when not listening); for the control socket's overview."""
        return 0 if self._ae is None else len(self._ae.active_associations)

    def receiving_at(self) -> float | None:
        """When data last arrived (``time.monotonic()``) while an association is open; None while none is.

        The pipeline's ingest activity: analysis waits while this is recent (``[pipeline] ingest_quiet_s``), so
        that a batch from the unit is stored at full speed; an open association that has gone quiet (a unit that
        holds it between exposures) does not hold analysis back for longer than that."""
        return self._last_pdu_at if self._open else None

    def add_close_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from the association's thread; it must not block) whenever a connection closes: the
        pipeline, waiting for ingest to go quiet, starts at once when the unit's association ends."""
        self._close_listeners.append(listener)

    def start(self) -> None:
        """Listen for associations; returns once the socket is bound."""
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_pdu_size = cfg.max_pdu_bytes
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.require_calling_aet = list(cfg.allowed_calling_aes)
        ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
        if not self._unrestricted:  # accept every storage SOP class, known or private (edge.dicomlib)
            dicomlib.UNRESTRICTED_STORAGE.hold()
            self._unrestricted = True
        self._spool.start(ae)
        self._ae = ae
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connect),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_PDU_RECV, self._on_pdu),
        ]
        try:
            self._server = ae.start_server((cfg.bind_address, cfg.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            self.stop()
            raise IngestError(f"cannot listen on {cfg.bind_address}:{cfg.port}: {exc.strerror or exc}") from exc
        event(log, "listening", ae_title=cfg.ae_title, port=self.port, allow_list=",".join(cfg.allowed_calling_aes))

    def stop(self) -> None:
        """Stop listening and abort open associations (their unacknowledged objects are retried by the sender)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None
        self._spool.stop()
        if self._unrestricted:
            dicomlib.UNRESTRICTED_STORAGE.release()
            self._unrestricted = False

    # --- handlers ----------------------------------------------------------------------------------------

    def _on_connect(self, ev: Any) -> None:
        with self._open_lock:
            self._open += 1
        transport.tune(ev.assoc)

    def _on_pdu(self, ev: Any) -> None:
        self._last_pdu_at = time.monotonic()

    def _on_close(self, ev: Any) -> None:
        with self._open_lock:
            self._open -= 1
        size = self._spool.discard_partial(ev.assoc)
        if size is not None:
            calling = ev.assoc.requestor.ae_title
            event(log, "partial transfer discarded", level=logging.WARNING, calling_ae=calling, bytes=size)
        for listener in self._close_listeners:
            listener()

    def _on_accepted(self, ev: Any) -> None:
        requestor = ev.assoc.requestor
        event(log, "association accepted", calling_ae=requestor.ae_title, address=requestor.address)

    def _on_rejected(self, ev: Any) -> None:
        calling = ev.assoc.requestor.ae_title
        allowed = self.config.allowed_calling_aes
        reason = (
            "calling AE not in dicom.allowed_calling_aes"
            if allowed and calling not in allowed
            else f"dicom.max_associations ({self.config.max_associations}) reached"
        )
        event(log, "association rejected", level=logging.WARNING, calling_ae=calling, reason=reason)

    def _on_echo(self, ev: Any) -> int:
        event(log, "echo", level=logging.DEBUG, calling_ae=ev.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _on_store(self, ev: Any) -> int | Dataset:
        started = time.perf_counter()
        calling = ev.assoc.requestor.ae_title
        spooled = Path(ev.dataset_path)
        sop = str(ev.request.AffectedSOPInstanceUID or "")
        try:
            stored = self.store.accept(spooled, calling)
        except OutOfSpace as exc:
            spooled.unlink(missing_ok=True)
            event(log, "store refused", level=logging.WARNING, sop=sop, calling_ae=calling, reason=str(exc))
            return _status(STATUS_OUT_OF_RESOURCES, f"out of space: {exc}")
        except InvalidDataset as exc:
            where = self.store.quarantine(spooled, str(exc), calling_ae=calling, sop_instance_uid=sop)
            event(
                log,
                "store rejected",
                level=logging.WARNING,
                sop=sop,
                calling_ae=calling,
                reason=str(exc),
                quarantined=where.name,
            )
            return _status(STATUS_CANNOT_UNDERSTAND, str(exc))
        except DuplicateConflict as exc:
            event(log, "store rejected", level=logging.WARNING, sop=sop, calling_ae=calling, reason=str(exc))
            return _status(STATUS_DUPLICATE, "duplicate SOP instance with different content")
        except StoreError as exc:  # the disk or the database failed: nothing was indexed, the unit retries
            spooled.unlink(missing_ok=True)
            event(log, "store failed", level=logging.ERROR, sop=sop, calling_ae=calling, reason=str(exc))
            return _status(STATUS_OUT_OF_RESOURCES, f"cannot store: {exc}")
        if stored.outcome != "stored":  # a duplicate: the store logged its decision and the policy
            return STATUS_SUCCESS
        header = stored.header
        event(
            log,
            "stored",
            study=header.study_uid,
            sop=header.sop_instance_uid,
            patient=header.patient_id,
            modality=header.modality,
            calling_ae=calling,
            bytes=stored.size_bytes,
            syntax=getattr(ev.context, "transfer_syntax", ""),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return STATUS_SUCCESS
