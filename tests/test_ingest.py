"""Ingest end to end: ``btt-edge run`` as a process, DCMTK's ``storescu``/``echoscu`` as the unit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels.utils import pixel_array
from pydicom.uid import generate_uid

from tests.conftest import AgentProcess, Dcmtk, StartAgent, wait_until

pytestmark = pytest.mark.integration


def _testdata(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def profile(path: Path, files: Sequence[Path]) -> list[str]:
    """storescu arguments proposing exactly each file's SOP class in its own transfer syntax (stored as sent)."""
    metas = [_meta(f) for f in files]
    return profile_of(path, [(str(m.MediaStorageSOPClassUID), (str(m.TransferSyntaxUID),)) for m in metas])


def profile_of(path: Path, contexts: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """storescu arguments proposing exactly these presentation contexts: (SOP class, its transfer syntaxes)."""
    pairs = sorted({(sop, tuple(ts)) for sop, ts in contexts})
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, group in enumerate(syntaxes):
        lines += [f"[TS{i}]", *(f"TransferSyntax{n} = {ts}" for n, ts in enumerate(group, 1))]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    lines += [f"PresentationContext{n} = {sop}\\TS{syntaxes.index(ts)}" for n, (sop, ts) in enumerate(pairs, 1)]
    lines += ["[[Profiles]]", "[Exact]", "PresentationContexts = Contexts"]
    path.write_text("\n".join(lines) + "\n")
    return ["-xf", str(path), "Exact"]


def _meta(path: Path) -> Any:
    return dcmread(path, stop_before_pixels=True).file_meta


def store(dcmtk: Dcmtk, port: int, files: Sequence[Path], *args: str) -> subprocess.CompletedProcess[str]:
    return dcmtk.run("storescu", "-aec", "BTT_EDGE", *args, "127.0.0.1", str(port), *map(str, files))


def studies(data_dir: Path) -> dict[str, dict[str, object]]:
    """SOP Instance UID -> instance, from ``btt-edge studies list --json``."""
    out = subprocess.run(
        [sys.executable, "-m", "edge", "studies", "list", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("BTT_EDGE_")},
    ).stdout
    return {i["sop_instance_uid"]: i for s in json.loads(out)["studies"] for i in s["instances"]}


def _with_new_uid(source: Path, target: Path) -> Path:
    """``source`` under a new SOP Instance UID (several bundled files share one), same transfer syntax."""
    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target)
    return target


def copies(source: Path, out_dir: Path, n: int) -> list[Path]:
    """``n`` copies of ``source`` with new SOP Instance UIDs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = dcmread(source)
    paths = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(out_dir / f"copy{i:03d}.dcm")
        ds.save_as(paths[-1])
    return paths


def test_echo_store_list_and_clean_stop(agent: AgentProcess, dcmtk: Dcmtk) -> None:
    assert dcmtk.echo(agent.port)
    files = [_testdata("CT_small.dcm"), _testdata("MR_small.dcm")]
    result = store(dcmtk, agent.port, files)
    assert result.returncode == 0, result.stderr
    index = studies(agent.data_dir)
    for path in files:
        ds = dcmread(path)
        instance = index[ds.SOPInstanceUID]
        assert instance["calling_ae"] == "STORESCU"
        assert instance["pipeline_state"] in ("received", "processing", "analysed", "skipped", "failed")
        stored = dcmread(agent.data_dir / str(instance["path"]))
        assert stored.StudyInstanceUID == ds.StudyInstanceUID
        assert stored.PixelData == ds.PixelData
    again = store(dcmtk, agent.port, files)  # the unit resends: acknowledged, nothing added
    assert again.returncode == 0, again.stderr
    assert studies(agent.data_dir).keys() == index.keys()
    assert agent.log().count("duplicate ignored") == 2
    assert agent.terminate() == 0
    assert "agent stopped" in agent.log()


LOSSLESS_OF_MR_SMALL = ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"]
TRANSFER_SYNTAX_FILES = [
    "MR_small_implicit.dcm",  # implicit VR little endian
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated explicit VR little endian
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline
    "JPGExtended.dcm",  # JPEG extended (12 bit)
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "JPEG2000.dcm",  # JPEG 2000 (lossy)
    *LOSSLESS_OF_MR_SMALL,  # JPEG-LS lossless, JPEG 2000 lossless, RLE
]


@pytest.mark.slow
def test_every_transfer_syntax_is_stored_as_received_and_decodes(
    agent: AgentProcess, dcmtk: Dcmtk, tmp_path: Path
) -> None:
    files = [_with_new_uid(_testdata(name), tmp_path / name) for name in TRANSFER_SYNTAX_FILES]
    process14 = tmp_path / "ct_jpeg_process14.dcm"  # not among pydicom's bundled files: DCMTK makes one
    made = dcmtk.run("dcmcjpeg", "+el", str(_testdata("CT_small.dcm")), str(process14))
    assert made.returncode == 0, made.stderr
    files.append(process14)
    near_lossless = dcmread(_testdata("JPEGLSNearLossless_16.dcm"))  # the bundled ones lack study/series UIDs
    near_lossless.StudyInstanceUID, near_lossless.SeriesInstanceUID = generate_uid(), generate_uid()
    near_lossless.SOPInstanceUID = near_lossless.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    near_lossless.save_as(tmp_path / "jpeg_ls_near_lossless.dcm")
    files.append(tmp_path / "jpeg_ls_near_lossless.dcm")
    result = store(dcmtk, agent.port, files, *profile(tmp_path / "exact.cfg", files))
    assert result.returncode == 0, result.stderr
    index = studies(agent.data_dir)
    syntaxes = set()
    for path in files:
        sent = dcmread(path)
        instance = index[sent.SOPInstanceUID]
        stored = dcmread(agent.data_dir / str(instance["path"]))
        ts = sent.file_meta.TransferSyntaxUID
        syntaxes.add(ts)
        assert instance["transfer_syntax_uid"] == ts
        assert stored.file_meta.TransferSyntaxUID == ts
        plugin = _PLUGINS.get(ts.name.split(" ")[0], "") if ts.is_compressed else ""
        pixels = pixel_array(stored, decoding_plugin=plugin)  # the plugin the pipeline relies on, not Pillow
        assert np.array_equal(pixels, sent.pixel_array), path.name
        if path.name in LOSSLESS_OF_MR_SMALL:  # bit for bit the uncompressed original
            assert np.array_equal(pixels, dcmread(_testdata("MR_small.dcm")).pixel_array), path.name
        if path == process14:
            assert np.array_equal(pixels, dcmread(_testdata("CT_small.dcm")).pixel_array)
    assert len(syntaxes) == 13


_PLUGINS = {"JPEG": "pylibjpeg", "JPEG-LS": "pyjpegls", "RLE": "pylibjpeg"}  # by the first word of the name


def test_bad_input_is_refused_with_a_reason_and_quarantined(agent: AgentProcess, dcmtk: Dcmtk, tmp_path: Path) -> None:
    broken_header = dcmread(_testdata("CT_small.dcm"))
    broken_header.SOPInstanceUID = broken_header.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    broken_header.BitsAllocated = 12
    broken_header.save_as(tmp_path / "broken_header.dcm")
    short_pixels = dcmread(_testdata("CT_small.dcm"))
    short_pixels.SOPInstanceUID = short_pixels.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    short_pixels.PixelData = short_pixels.PixelData[:8000]
    short_pixels.save_as(tmp_path / "short_pixels.dcm")
    bad = {
        _testdata("JPEGLSNearLossless_08.dcm"): "StudyInstanceUID is missing",
        tmp_path / "short_pixels.dcm": "broken pixel data: 8000 bytes",
        tmp_path / "broken_header.dcm": "broken pixel header: BitsAllocated 12",
    }
    good = _testdata("CT_small.dcm")
    files = [*bad, good]
    result = store(dcmtk, agent.port, files, "-nh", "-v", *profile(tmp_path / "exact.cfg", files))
    assert result.stderr.count("Received Store Response (Error: CannotUnderstand)") == 3, result.stderr
    log = agent.log()
    for reason in bad.values():
        assert reason in log
    assert log.count("store rejected") == 3
    quarantined = sorted(p.suffix for p in (agent.data_dir / "quarantine").iterdir())
    assert quarantined == [".dcm"] * 3 + [".txt"] * 3
    assert list(studies(agent.data_dir)) == [dcmread(good).SOPInstanceUID]
    assert dcmtk.echo(agent.port)


@pytest.mark.slow
def test_allow_list_rejects_unknown_calling_aes(start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "data", env={"BTT_EDGE_DICOM_ALLOWED_CALLING_AES": "ECHOSCU,PANO1"})
    ct = _testdata("CT_small.dcm")
    refused = store(dcmtk, agent.port, [ct], "-aet", "INTRUDER")
    assert refused.returncode != 0
    assert "Called AE Title Not Recognized" in refused.stderr or "Calling AE Title Not Recognized" in refused.stderr
    assert studies(agent.data_dir) == {}
    assert store(dcmtk, agent.port, [ct], "-aet", "PANO1").returncode == 0
    assert len(studies(agent.data_dir)) == 1
    assert "association rejected calling_ae=INTRUDER" in agent.log()


@pytest.mark.slow
def test_disk_guard_answers_a700_and_says_why(start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "data", env={"BTT_EDGE_DICOM_MIN_FREE_MB": str(10**12)})
    result = store(dcmtk, agent.port, [_testdata("CT_small.dcm")], "-d")
    assert "0xa700: Refused: Out of resources" in result.stderr
    assert "ErrorComment" in result.stderr
    assert "out of space: only" in result.stderr
    assert "store refused" in agent.log()
    assert "reserve is 1000000000000 MB" in agent.log()
    assert studies(agent.data_dir) == {}
    assert list((agent.data_dir / "incoming").iterdir()) == []
    assert dcmtk.echo(agent.port)


@pytest.mark.slow
def test_kill_9_loses_nothing_acknowledged_and_leaves_no_half_file(
    start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path, big_multiframe: Path
) -> None:
    data = tmp_path / "data"
    agent = start_agent(data)
    small = copies(_testdata("CT_small.dcm"), tmp_path / "small", 20)
    acknowledged = store(dcmtk, agent.port, small)
    assert acknowledged.returncode == 0, acknowledged.stderr
    agent.kill()  # right after the last success

    agent = start_agent(data, port=agent.port)
    index = studies(data)
    for path in small:
        instance = index[dcmread(path, stop_before_pixels=True).SOPInstanceUID]
        sent = dcmread(path)
        del sent[0xFFFCFFFC]  # Data Set Trailing Padding: storescu does not send it
        assert dcmread(data / str(instance["path"])) == sent  # every element, pixel data included

    sender = subprocess.Popen(
        [dcmtk.storescu, "-aec", "BTT_EDGE", "127.0.0.1", str(agent.port), str(big_multiframe)],
        env=dict(dcmtk.env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def spooling() -> bool:
            return any(p.stat().st_size > 20_000_000 for p in (data / "incoming").iterdir())

        wait_until(spooling, 60, "the large object in the spool", interval=0.01)
        agent.kill()  # mid-transfer: the spool file is on disk, partly written
    finally:
        sender.wait(60)
    assert sender.returncode != 0

    agent = start_agent(data, port=agent.port)
    big_sop = dcmread(big_multiframe, stop_before_pixels=True).SOPInstanceUID
    index = studies(data)
    assert big_sop not in index
    assert len(index) == len(small)
    assert list((data / "incoming").iterdir()) == []
    assert not list((data / "dicom").rglob(f"{big_sop}*"))
    assert "recovered after restart partial_transfers=1" in agent.log()
    assert store(dcmtk, agent.port, [big_multiframe]).returncode == 0  # the unit's retry succeeds
    assert big_sop in studies(data)
