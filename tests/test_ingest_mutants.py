"""Mutation test of the SCP through a real association: 1,020 seeded mutants of six sources (the product's
synthetic panoramic, and pydicom's files in implicit VR, big endian, with deeply nested sequences, 1-bit, YBR_FULL_422
and RLE pixels), each with a bit flipped, cut short, or an element header changed (length field, VR, tag, a
nested sequence's or item's length, a delimiter dropped).

Every mutant is either stored, and then reads back with pydicom and decodes (``pixel_array``), or refused with
0xC210; the association is never aborted, the SCP still answers C-ECHO at the end, and the process's memory stays
bounded. Mutants of the RLE source change headers only: the bytes inside a compressed fragment are the codec's
business, which the store does not decode.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom import AE, _config

from edge.ingest.scp import STATUS_CANNOT_UNDERSTAND
from edge.store.encoding import Element, walk
from edge.store.index import get_instance
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.test_ingest_scp import Running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_SOURCE = 170
SEED = 20261203
_VRS = [b"OB", b"OW", b"SQ", b"UN", b"UT", b"US", b"UL", b"CS", b"DS", b"IS", b"UI", b"LO", b"FD", b"AT", b"\0\0"]
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


@dataclass(frozen=True)
class Source:
    name: str
    data: bytes
    elements: list[Element]  # the dataset's headers, file meta left out (the SCU reads the meta to send)
    meta: FileMetaDataset
    headers_only: bool = False  # compressed: mutate headers, never a fragment's bytes

    @property
    def start(self) -> int:
        return self.elements[0].offset


def _source(name: str, data: bytes, *, headers_only: bool = False) -> Source:
    meta = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return Source(name, data, [e for e in walk(data) if not e.in_meta], meta, headers_only)


def _synthetic(tmp_path: Path) -> bytes:
    image = generate(5)
    image = replace(image, pixels=image.pixels[::4, ::4].copy())  # 276 x 522: small enough for many mutants
    ds = synthetic_dataset(image, 5)
    region, modifier = Dataset(), Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "T-D1217", "SRT", "Jaw region"
    modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning = "G-A101", "SRT", "Left"
    region.AnatomicRegionModifierSequence = [modifier]
    ds.AnatomicRegionSequence = [region]  # nested two deep
    path = tmp_path / "synthetic.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def _sources(tmp_path: Path) -> list[Source]:
    def bundled(name: str) -> bytes:
        return Path(str(get_testdata_file(name))).read_bytes()

    return [
        _source("synthetic panoramic", _synthetic(tmp_path)),
        _source("liver_1frame.dcm", bundled("liver_1frame.dcm")),  # Segmentation: 4 deep, 1-bit pixels
        _source("rtdose_expb_1frame.dcm", bundled("rtdose_expb_1frame.dcm")),  # explicit VR big endian
        _source("rtdose_1frame.dcm", bundled("rtdose_1frame.dcm")),  # implicit VR, 3 deep
        _source("SC_ybr_full_422_uncompressed.dcm", bundled("SC_ybr_full_422_uncompressed.dcm")),
        _source("MR_small_RLE.dcm", bundled("MR_small_RLE.dcm"), headers_only=True),
    ]


def _put(data: bytearray, offset: int, size: int, value: int, little: bool) -> None:
    data[offset : offset + size] = (value % (1 << (8 * size))).to_bytes(size, "little" if little else "big")


def _little(source: Source) -> bool:
    return source.name != "rtdose_expb_1frame.dcm"


def _bit_flip(source: Source, rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(source.data)
    if source.headers_only:
        element = rng.choice(source.elements)
        offset = rng.randrange(element.offset, element.value_offset)
    else:
        offset = rng.randrange(source.start, len(data))
    bit = rng.randrange(8)
    data[offset] ^= 1 << bit
    return f"bit {bit} flipped at {offset}", bytes(data)


def _truncate(source: Source, rng: random.Random) -> tuple[str, bytes]:
    element = rng.choice(source.elements)
    cut = rng.choice([element.offset, element.value_offset, rng.randrange(source.start, len(source.data))])
    cut = min(cut + rng.choice([0, 1, 3, 7]), len(source.data) - 1)
    return f"cut at {cut} of {len(source.data)}", source.data[:cut]


def _length(source: Source, rng: random.Random, elements: list[Element] | None = None) -> tuple[str, bytes]:
    element = rng.choice(elements or source.elements)
    size = element.value_offset - element.length_offset
    old = element.length
    new = rng.choice([old + 1, old - 1, old + 2, old - 2, old * 2, old + rng.randrange(1, 4096), 0, 0xFFFFFFFF])
    new = rng.choice([new, 0x7FFFFFF0]) if size == 4 and rng.random() < 0.2 else new
    data = bytearray(source.data)
    _put(data, element.length_offset, size, new, _little(source))
    return f"length of ({element.tag:08X}) at {element.offset}: {old} -> {new % (1 << (8 * size))}", bytes(data)


def _pixel_length(source: Source, rng: random.Random) -> tuple[str, bytes]:
    pixels = [e for e in source.elements if e.tag in _PIXEL_TAGS or (e.depth == 1 and e.tag >> 16 == 0xFFFE)]
    return _length(source, rng, pixels)


def _nested(source: Source, rng: random.Random) -> tuple[str, bytes]:
    nested = [e for e in source.elements if e.depth > 0 or e.vr == "SQ"]
    if rng.random() < 0.6:
        return _length(source, rng, nested)
    element = rng.choice(nested)
    data = bytearray(source.data)
    if element.tag >> 16 == 0xFFFE and element.tag != 0xFFFEE000:  # a delimiter: drop it
        return f"delimiter ({element.tag:08X}) at {element.offset} dropped", bytes(data[: element.offset]) + bytes(
            data[element.value_offset :]
        )
    tag = rng.choice([0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, element.tag ^ 1, 0x00080005])
    little = _little(source)
    _put(data, element.offset, 2, tag >> 16, little)
    _put(data, element.offset + 2, 2, tag & 0xFFFF, little)
    return f"tag ({element.tag:08X}) at {element.offset} -> ({tag:08X})", bytes(data)


def _vr(source: Source, rng: random.Random) -> tuple[str, bytes]:
    explicit = [e for e in source.elements if e.vr]
    if not explicit:  # implicit VR: the tag decides the VR; change it instead
        return _nested(source, rng) if rng.random() < 0.5 else _bit_flip(source, rng)
    element = rng.choice(explicit)
    vr = rng.choice([v for v in _VRS if v != element.vr.encode()] + [bytes(rng.randrange(256) for _ in range(2))])
    data = bytearray(source.data)
    data[element.offset + 4 : element.offset + 6] = vr
    return f"VR of ({element.tag:08X}) at {element.offset}: {element.vr} -> {vr!r}", bytes(data)


MUTATIONS: list[Callable[[Source, random.Random], tuple[str, bytes]]] = [
    _bit_flip,
    _bit_flip,
    _truncate,
    _length,
    _pixel_length,
    _nested,
    _vr,
]


def mutants(sources: list[Source], seed: int = SEED) -> Iterator[tuple[Source, str, bytes]]:
    """``PER_SOURCE`` mutants of each source, the same ones for the same seed."""
    rng = random.Random(seed)
    for source in sources:
        for n in range(PER_SOURCE):
            kind = MUTATIONS[n % len(MUTATIONS)]
            what, data = kind(source, rng)
            yield source, f"{source.name} #{n}: {kind.__name__.strip('_')}: {what}", data


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def _decodes(path: Path) -> str:
    """'' when the stored file reads back and its pixels (if any) decode; else what failed."""
    try:
        ds = dcmread(path)
        if any(tag in ds for tag in _PIXEL_TAGS):
            ds.pixel_array  # noqa: B018 - decoding is the check
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def test_every_mutant_is_stored_decodable_or_refused_and_the_scp_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send each file's bytes as they are
    sources = _sources(tmp_path)
    running = Running(tmp_path, policy="replace")  # every stored mutant replaces its source's SOP instance
    ae = AE(ae_title="MUTANTS")
    contexts = {(str(s.meta.MediaStorageSOPClassUID), str(s.meta.TransferSyntaxUID)) for s in sources}
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification: the SCP still answers at the end
    spool = tmp_path / "mutant.dcm"
    wrong: list[str] = []
    counts = {"stored": 0, "refused": 0}
    rss: list[int] = []
    assoc = ae.associate("127.0.0.1", running.scp.port, ae_title="BTT_EDGE")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as in the agent: pydicom's warnings about mutated values are no errors
            for n, (source, what, data) in enumerate(mutants(sources)):
                if n == 100:
                    rss.append(_rss_kb())
                spool.write_bytes(data)
                assert assoc.is_established, f"association lost before {what}"
                response = assoc.send_c_store(spool)
                status = int(response.get("Status", -1))
                if status == 0:
                    counts["stored"] += 1
                    instance = get_instance(running.store.conn, str(source.meta.MediaStorageSOPInstanceUID))
                    problem = "not indexed" if instance is None else _decodes(running.store.data_dir / instance.path)
                    if problem:
                        wrong.append(f"{what}: stored but {problem}")
                elif status == STATUS_CANNOT_UNDERSTAND:
                    counts["refused"] += 1
                else:
                    wrong.append(f"{what}: status {status:#06x} {response.get('ErrorComment', '')}")
            rss.append(_rss_kb())
        echo = assoc.send_c_echo()
        assert int(echo.Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()
        running.stop()
    assert not wrong, f"{len(wrong)} of {sum(counts.values())} mutants went wrong:\n" + "\n".join(wrong[:40])
    assert sum(counts.values()) == len(sources) * PER_SOURCE >= 1000
    assert counts["stored"] > 100, counts  # both outcomes are exercised
    assert counts["refused"] > 300, counts
    assert rss[-1] - rss[0] < 64 * 1024, f"RSS grew from {rss[0]} to {rss[-1]} kB"
    assert list(running.store.incoming_dir.iterdir()) == []
    print(f"mutants: {counts}, RSS {rss[0]} -> {rss[-1]} kB")
