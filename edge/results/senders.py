"""The senders: how a result object reaches a destination, one per ``[[results.destinations]] protocol``.

:data:`SENDERS` is the one table; :class:`~edge.results.service.ResultsService` asks :func:`sender_for` for the
sender of each protocol its destinations use, when it is built. Each entry imports its module only when it is
called, so a box that only speaks DIMSE never loads an HTTP client.

To add a protocol: write its :class:`~edge.results.scu.Sender` (``edge/results/<protocol>.py``), add its name to
:data:`edge.config.DestinationProtocol` and its factory here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from edge.errors import ConfigError

if TYPE_CHECKING:
    from edge.config import DestinationProtocol, ResultsConfig
    from edge.results.scu import Sender

__all__ = ["SENDERS", "sender_for"]

SenderFactory = Callable[["ResultsConfig", str], "Sender"]
"""Builds a protocol's sender from ``[results]`` and the box's calling AE title."""


def _dimse(config: ResultsConfig, calling_ae: str) -> Sender:
    from edge.results.scu import StoreSCU

    return StoreSCU(calling_ae, connect_timeout_s=config.connect_timeout_s, dimse_timeout_s=config.dimse_timeout_s)


def _fhir(config: ResultsConfig, calling_ae: str) -> Sender:
    from edge.results.fhir_send import FhirSender

    return FhirSender(connect_timeout_s=config.connect_timeout_s, timeout_s=config.dimse_timeout_s)


def _dicomweb(config: ResultsConfig, calling_ae: str) -> Sender:
    from edge.results.dicomweb import StowSender

    return StowSender(connect_timeout_s=config.connect_timeout_s, read_timeout_s=config.dimse_timeout_s)


SENDERS: Mapping[str, SenderFactory] = {
    "dimse": _dimse,
    "dicomweb": _dicomweb,
    "fhir": _fhir,
}
"""Every protocol's sender factory."""


def sender_for(protocol: DestinationProtocol, config: ResultsConfig, calling_ae: str) -> Sender:
    """The sender of ``protocol``; a protocol without one is a configuration error."""
    factory = SENDERS.get(protocol)
    if factory is None:
        raise ConfigError(f"results.destinations.protocol: {protocol!r} has no sender on this box")
    return factory(config, calling_ae)
