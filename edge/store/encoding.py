"""Whether a Part 10 file holds whole elements: the bytes that arrived, not what the length fields claim.

A pure core: :func:`walk` reads the element headers of a Part 10 file from a buffer (the store passes an
``mmap`` of the spool file, so no value is copied) and yields one :class:`Element` per header, sequence items
and delimiters included, in file order. It raises :class:`~edge.errors.InvalidDataset` at the first thing that
is not whole or not well formed:

* an element, item or fragment whose length runs past the end of the file or of the sequence or item that holds
  it (a file that ends early, or a length field that claims more than arrived);
* an undefined-length sequence, item or encapsulated Pixel Data without its delimiter;
* a header cut off by the end of the file, an unknown explicit VR, an undefined length on a VR that cannot have
  one, an item tag outside a sequence or anything but an item inside one, tags out of ascending order (a
  duplicate included), sequences nested deeper than :data:`MAX_DEPTH`;
* a deflated dataset whose stream is incomplete or inflates past :data:`MAX_INFLATED_BYTES`.

:func:`pixel_extent` walks a whole file and returns what the store's pixel check needs: the Pixel Data value's
bytes present (native) or its fragments (encapsulated). In a deflated file, offsets count in the inflated
dataset.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

from edge.errors import InvalidDataset

__all__ = ["MAX_DEPTH", "MAX_INFLATED_BYTES", "UNDEFINED", "Element", "PixelExtent", "pixel_extent", "walk"]

UNDEFINED = 0xFFFFFFFF
"""The length field of an undefined-length sequence, item or encapsulated Pixel Data."""
MAX_DEPTH = 32
"""Deepest nesting of sequences accepted (real objects stay below 10)."""
MAX_INFLATED_BYTES = 512 * 1024 * 1024
"""A deflated dataset may inflate to at most this much (it is inflated in memory, as pydicom does)."""

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_PIXEL_TAGS = tuple(_PIXEL_KEYWORDS)
_SHORT_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_16)
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_PREAMBLE = 128


@dataclass(frozen=True)
class Element:
    """One header in the file: a data element, an item, or a delimiter."""

    tag: int
    vr: str
    """The explicit VR; empty in implicit VR and for items and delimiters."""
    offset: int
    """Where the header starts (in a deflated file: in the inflated dataset)."""
    length_offset: int
    """Where its length field starts; the field is ``value_offset - length_offset`` bytes long."""
    value_offset: int
    length: int
    """The length field: bytes of the value, all of which are present, or :data:`UNDEFINED`."""
    depth: int
    """0 for the dataset's own elements, 1 inside an item of a top-level sequence, and so on."""
    in_meta: bool = False
    """An element of the file meta information (group 0002), always explicit VR little endian."""


@dataclass(frozen=True)
class PixelExtent:
    """What arrived of the pixel data element (Pixel Data, or else Float / Double Float Pixel Data)."""

    keyword: str
    encapsulated: bool
    """Undefined length: a Basic Offset Table item and fragments, ended by a sequence delimiter."""
    length: int
    """Native: bytes of the value. Encapsulated: bytes of the fragments (the offset table not counted)."""
    fragments: int = 0
    """Encapsulated: fragments after the Basic Offset Table."""
    offset_table_bytes: int = 0
    """Encapsulated: length of the Basic Offset Table (0 when empty)."""


@dataclass(frozen=True)
class _Syntax:
    implicit: bool
    little: bool

    @property
    def order(self) -> str:
        return "<" if self.little else ">"


_META = _Syntax(implicit=False, little=True)
_CP246 = _Syntax(implicit=True, little=True)  # an undefined-length UN holds implicit VR little endian


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _is_sequence(tag: int) -> bool:
    """Whether an implicit-VR element is a sequence by the dictionary (a private tag is not known to be)."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


class _Walk:
    """The walk over one buffer (the file, or the inflated dataset of a deflated file)."""

    def __init__(self, buffer: Any, *, in_meta: bool = False) -> None:
        self.buffer = buffer
        self.in_meta = in_meta

    def _ends_early(self, what: str, at: int, needs: int, end: int) -> InvalidDataset:
        return InvalidDataset(
            f"ends early: {what} at offset {at} needs {needs} bytes, only {max(0, end - at)} arrived"
            if end == len(self.buffer)
            else f"broken encoding: {what} at offset {at} needs {needs} bytes, its container has {end - at}"
        )

    def _header(self, pos: int, end: int, syntax: _Syntax, depth: int) -> Element:
        if end - pos < 8:
            raise self._ends_early("an element header", pos, 8, end)
        group, elem = struct.unpack_from(f"{syntax.order}HH", self.buffer, pos)
        tag = group << 16 | elem
        if syntax.implicit or group == 0xFFFE:
            (length,) = struct.unpack_from(f"{syntax.order}L", self.buffer, pos + 4)
            return Element(tag, "", pos, pos + 4, pos + 8, length, depth, self.in_meta)
        vr = bytes(self.buffer[pos + 4 : pos + 6])
        if vr in _SHORT_VRS:
            (length,) = struct.unpack_from(f"{syntax.order}H", self.buffer, pos + 6)
            return Element(tag, vr.decode(), pos, pos + 6, pos + 8, length, depth, self.in_meta)
        if vr not in _LONG_VRS:
            raise InvalidDataset(f"broken encoding: element {_tag_name(tag)} at offset {pos} has unknown VR {vr!r}")
        if end - pos < 12:
            raise self._ends_early("an element header", pos, 12, end)
        (length,) = struct.unpack_from(f"{syntax.order}L", self.buffer, pos + 8)
        return Element(tag, vr.decode(), pos, pos + 8, pos + 12, length, depth, self.in_meta)

    def dataset(
        self, pos: int, end: int, syntax: _Syntax, depth: int, *, delimited: bool = False, meta: bool = False
    ) -> Generator[Element, None, int]:
        """The elements from ``pos`` to ``end`` or (``delimited``) to an item delimiter; returns where they stop.

        ``meta``: only the group 0002 elements at the start (the file meta information).
        """
        previous = -1
        while delimited or pos < end:
            if meta and (end - pos < 2 or struct.unpack_from("<H", self.buffer, pos)[0] != 0x0002):
                return pos
            element = self._header(pos, end, syntax, depth)
            tag = element.tag
            if delimited and tag == _ITEM_END:
                if element.length != 0:
                    raise InvalidDataset(f"broken encoding: item delimiter at offset {pos} has length {element.length}")
                yield element
                return element.value_offset
            if tag >> 16 == 0xFFFE:
                raise InvalidDataset(f"broken encoding: {_tag_name(tag)} at offset {pos} outside a sequence")
            if tag <= previous:
                raise InvalidDataset(
                    f"broken encoding: element {_tag_name(tag)} at offset {pos} after {_tag_name(previous)}"
                    " (tags must ascend)"
                )
            previous = tag
            yield element
            pos = yield from self._value(element, end, syntax)
        return pos

    def _value(self, element: Element, end: int, syntax: _Syntax) -> Generator[Element, None, int]:
        start, length, depth = element.value_offset, element.length, element.depth
        if length == UNDEFINED:
            if element.tag in _PIXEL_TAGS and depth == 0 and element.vr in ("OB", "OW", "UN", ""):
                return (yield from self._fragments(start, end, syntax, depth + 1))
            if element.vr == "SQ" or syntax.implicit:
                return (yield from self.sequence(start, end, syntax, depth + 1, delimited=True))
            if element.vr == "UN":
                return (yield from self.sequence(start, end, _CP246, depth + 1, delimited=True))
            raise InvalidDataset(
                f"broken encoding: element {_tag_name(element.tag)} at offset {element.offset}: "
                f"undefined length on VR {element.vr}"
            )
        if length > end - start:
            raise self._ends_early(f"element {_tag_name(element.tag)}", start, length, end)
        if element.vr == "SQ" or (syntax.implicit and _is_sequence(element.tag)):
            stop = yield from self.sequence(start, start + length, syntax, depth + 1)
            return stop
        return start + length

    def sequence(
        self, pos: int, end: int, syntax: _Syntax, depth: int, *, delimited: bool = False
    ) -> Generator[Element, None, int]:
        """The items of a sequence from ``pos`` to ``end`` or (``delimited``) to its sequence delimiter."""
        if depth > MAX_DEPTH:
            raise InvalidDataset(f"broken encoding: sequences nested deeper than {MAX_DEPTH} at offset {pos}")
        while delimited or pos < end:
            item = self._item_header(pos, end, syntax, depth)
            yield item
            if item.tag == _SEQUENCE_END:
                return item.value_offset
            if item.length == UNDEFINED:
                pos = yield from self.dataset(item.value_offset, end, syntax, depth, delimited=True)
            elif item.length > end - item.value_offset:
                raise self._ends_early("a sequence item", item.value_offset, item.length, end)
            else:
                stop = item.value_offset + item.length
                pos = yield from self.dataset(item.value_offset, stop, syntax, depth)
        return pos

    def _item_header(self, pos: int, end: int, syntax: _Syntax, depth: int) -> Element:
        if end - pos < 8:
            raise self._ends_early("a sequence item or delimiter", pos, 8, end)
        group, elem, length = struct.unpack_from(f"{syntax.order}HHL", self.buffer, pos)
        tag = group << 16 | elem
        if tag not in (_ITEM, _SEQUENCE_END):
            raise InvalidDataset(f"broken encoding: {_tag_name(tag)} at offset {pos} where an item should be")
        if tag == _SEQUENCE_END and length != 0:
            raise InvalidDataset(f"broken encoding: sequence delimiter at offset {pos} has length {length}")
        return Element(tag, "", pos, pos + 4, pos + 8, length, depth, self.in_meta)

    def _fragments(self, pos: int, end: int, syntax: _Syntax, depth: int) -> Generator[Element, None, int]:
        """Encapsulated pixel data: the Basic Offset Table item, the fragments, the sequence delimiter."""
        while True:
            item = self._item_header(pos, end, syntax, depth)
            yield item
            if item.tag == _SEQUENCE_END:
                return item.value_offset
            if item.length == UNDEFINED or item.length > end - item.value_offset:
                raise self._ends_early("a pixel data fragment", item.value_offset, item.length, end)
            pos = item.value_offset + item.length


def _inflate(data: Any) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise InvalidDataset(f"broken encoding: the deflated dataset cannot be inflated: {exc}") from None
    if len(out) > MAX_INFLATED_BYTES:
        raise InvalidDataset(f"the deflated dataset inflates to more than {MAX_INFLATED_BYTES // 2**20} MiB")
    if not inflater.eof:
        raise InvalidDataset("ends early: the deflated dataset's stream is incomplete")
    return out


def walk(buffer: Any) -> Iterator[Element]:
    """Every header of the Part 10 file in ``buffer`` (bytes, ``mmap``), file meta first; see the module doc."""
    size = len(buffer)
    if size < _PREAMBLE + 4 or bytes(buffer[_PREAMBLE : _PREAMBLE + 4]) != b"DICM":
        raise InvalidDataset("not a DICOM Part 10 file: no 'DICM' after the 128-byte preamble")
    meta = _Walk(buffer, in_meta=True)
    syntax_uid = ""
    elements = meta.dataset(_PREAMBLE + 4, size, _META, 0, meta=True)
    while True:
        try:
            element = next(elements)
        except StopIteration as stop:
            start = int(stop.value)
            break
        if element.tag == 0x00020010:
            raw = bytes(buffer[element.value_offset : element.value_offset + element.length])
            syntax_uid = raw.decode("ascii", "replace").strip("\0 ")
        yield element
    if not syntax_uid:
        raise InvalidDataset("not a DICOM Part 10 file: its file meta information has no Transfer Syntax UID")
    transfer_syntax = UID(syntax_uid)
    if not transfer_syntax.is_transfer_syntax:
        raise InvalidDataset(f"unknown transfer syntax {syntax_uid!r}")
    syntax = _Syntax(implicit=transfer_syntax.is_implicit_VR, little=transfer_syntax.is_little_endian)
    if transfer_syntax.is_deflated:
        inflated = _inflate(memoryview(buffer)[start:])
        yield from _Walk(inflated).dataset(0, len(inflated), syntax, 0)
    else:
        yield from _Walk(buffer).dataset(start, size, syntax, 0)


def pixel_extent(buffer: Any) -> PixelExtent | None:
    """Walk the whole Part 10 file in ``buffer`` and say what arrived of its pixel data (``None``: there is none).

    Pixel Data is preferred to Float and Double Float Pixel Data when a file has more than one.
    """
    found: dict[int, PixelExtent] = {}
    encapsulated: int | None = None  # the tag whose fragments are being counted
    items: list[int] = []
    for element in walk(buffer):
        if element.depth == 0 and element.tag in _PIXEL_TAGS:
            if element.length == UNDEFINED:
                encapsulated, items = element.tag, []
            else:
                found[element.tag] = PixelExtent(
                    _PIXEL_KEYWORDS[element.tag], encapsulated=False, length=element.length
                )
        elif encapsulated is not None and element.depth == 1:
            if element.tag == _ITEM:
                items.append(element.length)
            else:  # the sequence delimiter
                found[encapsulated] = PixelExtent(
                    _PIXEL_KEYWORDS[encapsulated],
                    encapsulated=True,
                    length=sum(items[1:]),
                    fragments=max(0, len(items) - 1),
                    offset_table_bytes=items[0] if items else 0,
                )
                encapsulated = None
    return next((found[tag] for tag in _PIXEL_TAGS if tag in found), None)
