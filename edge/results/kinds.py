"""The result kinds: what a destination can take, in the order they are built and sent, each with its builder.

:data:`KINDS` is the one table; everything else reads it. ``[[results.destinations]] kinds`` in
:mod:`edge.config` is typed :data:`ResultKind` (a name not listed here is refused with the list) and defaults to
the kinds marked ``default``; :class:`~edge.results.service.ResultsService` builds the kinds that have a builder,
in this order (an ``on_demand`` kind only when some destination takes it), and the instance is done with the
last one built; :mod:`~edge.results.queue` sends what is due in this order (the SR first: it is small and it is
what a reader's worklist reacts to). ``btt-edge results`` and the TUI show the kind as it is stored.

Most kinds are DICOM objects (``media_type`` ``application/dicom``: a builder returns a dataset). A kind whose
builder returns a :class:`Document` (the FHIR Bundle, ``application/fhir+json``) is written as those bytes; it
goes only to destinations whose protocol takes its media type (:data:`PROTOCOL_MEDIA_TYPES`).

To add a kind: write its builder (``edge/results/<kind>.py``, a :class:`Builder`), then add its name to
:data:`ResultKind` and its :class:`ResultKindSpec` to :data:`KINDS` below, where its place is its order.

Nothing here imports a builder when this module loads: the configuration reads this module, and the builders
(pydicom, highdicom, Pillow) read the configuration. Each kind's ``bind`` imports its builder when the results
service starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from edge.config import ResultsConfig
    from edge.results.analysis import Analysis
    from edge.results.header import Equipment
    from edge.results.uids import UidFactory

__all__ = [
    "BUILT",
    "DEFAULT_KINDS",
    "DICOM_MEDIA_TYPE",
    "KINDS",
    "NAMES",
    "PROTOCOL_MEDIA_TYPES",
    "Builder",
    "Document",
    "ResultKind",
    "ResultKindSpec",
    "spec",
]

ResultKind = Literal["sr", "gsps", "fhir", "overlay", "original"]
"""Every kind's name, as configured and as stored in the queue (the same names as :data:`KINDS`, in its order)."""


DICOM_MEDIA_TYPE = "application/dicom"
PROTOCOL_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "dimse": (DICOM_MEDIA_TYPE,),
    "dicomweb": (DICOM_MEDIA_TYPE,),
    "fhir": ("application/fhir+json",),
}
"""What each ``[[results.destinations]] protocol`` can carry."""


@dataclass(frozen=True)
class Document:
    """A result object that is not a DICOM dataset: its UID (its key in the delivery queue) and its bytes."""

    uid: str
    content: bytes


class Builder(Protocol):
    """Builds one result object of an analysed image (pure: datasets and findings in, a dataset or a
    :class:`Document` out)."""

    def __call__(
        self, source: Dataset, analysis: Analysis, uids: UidFactory, *, equipment: Equipment
    ) -> Dataset | Document: ...


@dataclass(frozen=True)
class ResultKindSpec:
    """One kind of result object."""

    name: ResultKind
    summary: str
    """What a destination that takes it gets."""
    bind: Callable[[ResultsConfig], Builder] | None
    """Its builder with this box's options; None for a kind that is not built (an original is sent as stored)."""
    options: tuple[str, ...] = ()
    """The ``[results]`` keys ``bind`` reads."""
    reads_pixels: bool = True
    """Its builder needs the source's pixel data (read under the image lock); the SR is built from the header."""
    on_demand: bool = False
    """Built only when some destination takes it (otherwise always, so it is there when one is added)."""
    default: bool = False
    """In the kinds of a destination that does not list its own (and of ``--forward``)."""
    media_type: str = DICOM_MEDIA_TYPE
    """What the object is: ``application/dicom`` (its builder returns a dataset) or another media type (a
    :class:`Document`)."""


def _sr(config: ResultsConfig) -> Builder:
    from edge.results.sr import build_sr

    return build_sr


def _gsps(config: ResultsConfig) -> Builder:
    from edge.results.gsps import build_gsps

    return build_gsps


def _fhir(config: ResultsConfig) -> Builder:
    from edge.results.fhir import build_fhir

    return build_fhir


def _overlay(config: ResultsConfig) -> Builder:
    from edge.results.overlay import build_overlay

    return functools.partial(build_overlay, numbering=config.tooth_numbering)


KINDS: tuple[ResultKindSpec, ...] = (
    ResultKindSpec("sr", "the structured report (TID 1500)", _sr, reads_pixels=False, default=True),
    ResultKindSpec(
        "gsps",
        "a presentation state with the findings as switchable annotations over the original",
        _gsps,
        on_demand=True,
    ),
    ResultKindSpec(
        "fhir",
        "a FHIR R4 transaction Bundle (ImagingStudy, DiagnosticReport, an Observation per finding, the Device)",
        _fhir,
        reads_pixels=False,
        on_demand=True,
        media_type="application/fhir+json",
    ),
    ResultKindSpec("overlay", "the annotated Secondary Capture", _overlay, options=("tooth_numbering",), default=True),
    ResultKindSpec("original", "every image as received, for a box in line between the unit and the PACS", None),
)
"""Every kind, in build and send order."""

NAMES: tuple[ResultKind, ...] = tuple(k.name for k in KINDS)
BUILT: tuple[ResultKindSpec, ...] = tuple(k for k in KINDS if k.bind is not None)
"""The kinds built from an analysis, in build order."""
DEFAULT_KINDS: tuple[ResultKind, ...] = tuple(k.name for k in KINDS if k.default)
"""What a destination gets when it does not say (``sr``, ``overlay``)."""


def spec(name: ResultKind) -> ResultKindSpec:
    """The kind called ``name``."""
    return KINDS[NAMES.index(name)]
