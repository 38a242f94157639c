"""The settings pydicom and pynetdicom offer only as process-wide globals: every one the agent changes, here.

Neither library takes these per AE, per association or per read, so the agent has to change module globals;
this module is the one place that does, and each switch is *held* (counted) by the components that need it and
put back as it was when the last one lets go: a test's fake PACS in the same process, or a second agent
started after the first has stopped, finds pynetdicom and pydicom as their defaults left them.

Each switch, who holds it, and why:

* :data:`LENIENT_READING` (pydicom ``settings.reading_validation_mode = IGNORE``), held by the image store while
  it is started: values that break a VR's rules are the sender's business (the store checks what it needs and
  keeps the object byte for byte), so pydicom should not warn about the rest.
* :data:`UNRESTRICTED_STORAGE` (pynetdicom ``_config.UNRESTRICTED_STORAGE_SERVICE``), held by the storage SCP
  while it listens: accept every storage SOP class, known or private.
* :func:`receive_to_spool` (pynetdicom ``_config.STORE_RECV_CHUNKED_DATASET`` and the ``NamedTemporaryFile`` it
  looks up in ``pynetdicom.dimse_messages``), held by the storage SCP while it listens: a C-STORE dataset is
  written to the AE's :class:`~edge.ingest.spool.Spool` as it arrives; associations of other AEs get the
  original factory.
* :data:`CHUNKED_SEND` (pynetdicom ``_config.STORE_SEND_CHUNKED_DATASET``), held by a results send for one
  C-STORE: a file whose transfer syntax the destination accepted is streamed as stored (no decode, no
  re-encode).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from pydicom import config as pydicom_config
from pynetdicom import _config, dimse_messages

__all__ = [
    "CHUNKED_SEND",
    "LENIENT_READING",
    "UNRESTRICTED_STORAGE",
    "SpoolFactory",
    "Switch",
    "receive_to_spool",
    "stop_receiving_to_spool",
]


class Switch:
    """One library global set to ``value`` while at least one holder holds it, and restored after the last."""

    def __init__(self, get: Callable[[], Any], put: Callable[[Any], None], value: Any) -> None:
        self._get, self._put, self._value = get, put, value
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: Any = None

    def hold(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._saved = self._get()
                self._put(self._value)
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            if self._holders == 0:
                return
            self._holders -= 1
            if self._holders == 0:
                self._put(self._saved)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.hold()
        try:
            yield
        finally:
            self.release()


def _setter(target: Any, name: str) -> Callable[[Any], None]:
    return lambda value: setattr(target, name, value)


LENIENT_READING = Switch(
    lambda: pydicom_config.settings.reading_validation_mode,
    _setter(pydicom_config.settings, "reading_validation_mode"),
    pydicom_config.IGNORE,
)
UNRESTRICTED_STORAGE = Switch(
    lambda: _config.UNRESTRICTED_STORAGE_SERVICE, _setter(_config, "UNRESTRICTED_STORAGE_SERVICE"), True
)
CHUNKED_SEND = Switch(lambda: _config.STORE_SEND_CHUNKED_DATASET, _setter(_config, "STORE_SEND_CHUNKED_DATASET"), True)


class SpoolFactory(Protocol):
    """What opens the spool file of a C-STORE arriving on ``assoc`` (:meth:`edge.ingest.spool.Spool.open`)."""

    def open(self, assoc: Any) -> Any: ...


_spools: dict[Any, SpoolFactory] = {}
"""AE -> its spool: pynetdicom's one ``NamedTemporaryFile`` lookup serves every AE in the process."""
_spools_lock = threading.Lock()
_original = tempfile.NamedTemporaryFile
_CHUNKED_RECEIVE = Switch(
    lambda: _config.STORE_RECV_CHUNKED_DATASET, _setter(_config, "STORE_RECV_CHUNKED_DATASET"), True
)


def _spool_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's ``NamedTemporaryFile``: the spool file of the receiving AE, else the original's."""
    assoc = getattr(threading.current_thread(), "assoc", None)  # the DUL thread of the receiving association
    spool = _spools.get(getattr(assoc, "ae", None)) if assoc is not None else None
    if spool is None:
        return _original(*args, **kwargs)
    return spool.open(assoc)


_SPOOL_FACTORY = Switch(
    lambda: dimse_messages.NamedTemporaryFile,  # type: ignore[attr-defined]
    _setter(dimse_messages, "NamedTemporaryFile"),
    _spool_file,
)


def receive_to_spool(ae: Any, spool: SpoolFactory) -> None:
    """Have associations of ``ae`` write each C-STORE dataset to ``spool`` as it arrives."""
    with _spools_lock:
        if ae in _spools:
            return
        _spools[ae] = spool
    _CHUNKED_RECEIVE.hold()
    _SPOOL_FACTORY.hold()


def stop_receiving_to_spool(ae: Any) -> None:
    """Undo :func:`receive_to_spool` for ``ae``; after the last AE, pynetdicom receives in memory again."""
    with _spools_lock:
        if _spools.pop(ae, None) is None:
            return
    _SPOOL_FACTORY.release()
    _CHUNKED_RECEIVE.release()
