"""pydicom's bundled test data through DCMTK's storescu: every file it can send is stored, or refused for a reason
that is true of that file; every file it cannot send is listed with storescu's own reason."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from edge.store.index import get_instance
from tests.conftest import Dcmtk
from tests.test_ingest import profile_of
from tests.test_ingest_scp import Running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_ROOT = Path(str(get_testdata_file("CT_small.dcm"))).parent
_NO_STUDY = "StudyInstanceUID is missing"
_NO_UIDS = "No SOP Class or Instance UID in file"  # storescu reads the dataset and finds none to send under
_NOT_DICOM = "Bad DICOM file"
_DICOMDIRS = ["DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-empty.dcm", "DICOMDIR-implicit", "DICOMDIR-nooffset"]
_DICOMDIRS += ["DICOMDIR-nopatient", "DICOMDIR-reordered", "TINY_ALPHA/DICOMDIR"]
_NOT_DICOM_FILES = ["README.txt", "dicomdirtests/README.txt", "test1.json", "test_PN.json", "crayons.icc"]
_NOT_DICOM_FILES += ["zipMR.gz", "rtplan.dump", "rtstruct.dump", "dicomdirtests/TINY_ALPHA/README"]

REFUSED = {  # refused with 0xC210: the reason the SCP gives, and why it is true
    "JPEGLSNearLossless_08.dcm": _NO_STUDY,  # the bundled JPEG-LS near-lossless files carry no study or series
    "JPEGLSNearLossless_16.dcm": _NO_STUDY,
    "SC_rgb_jls_lossy_line.dcm": _NO_STUDY,
    "SC_rgb_jls_lossy_sample.dcm": _NO_STUDY,
    "badVR.dcm": "NumberOfFrames is not an integer: '1A'",  # an IS value with a letter in it, on purpose
}
NOT_SENT = {  # storescu will not send these: what it says
    "MR_truncated.dcm": "PixelData (7fe0,0010) larger (8192) than remaining bytes in file",  # cut short on purpose
    "rtplan_truncated.dcm": "larger (50) than remaining bytes (29) in file",
    "SC_rgb_jpeg.dcm": "Bad DICOM file",  # its dataset is implicit VR under an explicit VR transfer syntax
    "UN_sequence.dcm": _NO_UIDS,  # a fragment with a UN sequence, no SOP class or instance
    "priv_SQ.dcm": _NO_UIDS,
    "nested_priv_SQ.dcm": _NO_UIDS,
    "rtdose_rle.dcm": _NO_UIDS,
    "rtdose_rle_1frame.dcm": _NO_UIDS,
    "no_meta_group_length.dcm": _NO_UIDS,
    "empty_charset_LEI.dcm": _NO_UIDS,
    "meta_missing_tsyntax.dcm": _NO_UIDS,
    "no_meta.dcm": _NOT_DICOM,  # a dataset with neither preamble nor meta, which storescu does not recognise
    **{  # DICOMDIRs: Media Storage Directory is no storage SOP class, so the SCP accepts no context for them
        f"dicomdirtests/{name}": "No Acceptable Presentation Contexts" for name in _DICOMDIRS
    },
    **{  # not DICOM at all: text, JSON, an ICC profile, a gzip file
        name: _NOT_DICOM for name in _NOT_DICOM_FILES
    },
}
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


def _contexts(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """The file's SOP class in its own transfer syntax; the uncompressed ones for a file without file meta."""
    try:
        ds = dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # not DICOM: storescu gets its default contexts and says why it cannot send it
        return []
    meta = ds.get("file_meta", {})
    sop_class = meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID")
    syntax = meta.get("TransferSyntaxUID")
    if not sop_class:
        return []
    return [(str(sop_class), (str(syntax),) if syntax else _UNCOMPRESSED)]


def _outcome(dcmtk: Dcmtk, running: Running, path: Path, caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    contexts = _contexts(path)
    args = profile_of(running.store.data_dir / "exact.cfg", contexts) if contexts else []
    caplog.clear()
    result = dcmtk.run("storescu", "-v", "-aec", "BTT_EDGE", *args, "127.0.0.1", str(running.scp.port), str(path))
    response = re.search(r"Received Store Response \(([^)]*)\)", result.stderr)
    if response is None:
        errors = [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
        return "not sent", " | ".join(errors)
    if response.group(1) == "Success":
        return "stored", ""
    rejected = [r for r in caplog.records if r.getMessage() == "store rejected" and hasattr(r, "btt_fields")]
    reasons = [r.btt_fields["reason"] for r in rejected]
    return f"refused {response.group(1)}", " | ".join(reasons)


def test_every_bundled_file_storescu_can_send_is_stored_or_refused_for_a_true_reason(
    tmp_path: Path, dcmtk: Dcmtk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    files = sorted(p for p in map(Path, get_testdata_files()) if p.is_file())
    assert len(files) > 150, "pydicom's test data is not all there"
    running = Running(tmp_path, policy="replace")  # several bundled files share a SOP Instance UID
    wrong = []
    try:
        for path in files:
            name = str(path.relative_to(_ROOT))
            outcome, detail = _outcome(dcmtk, running, path, caplog)
            if name in NOT_SENT:
                ok = outcome == "not sent" and NOT_SENT[name] in detail
            elif name in REFUSED:
                ok = outcome == "refused Error: CannotUnderstand" and REFUSED[name] in detail
            else:
                ok = outcome == "stored" and _stored_whole(running, path)
            if not ok:
                wrong.append(f"{name}: {outcome} {detail}")
        assert dcmtk.echo(running.scp.port)
    finally:
        running.stop()
    assert not wrong, "\n".join(wrong)
    for name in [*NOT_SENT, *REFUSED]:
        assert (_ROOT / name).is_file(), f"{name} is no longer in pydicom's test data: update the table"


def _stored_whole(running: Running, path: Path) -> bool:
    """The file as stored reads back with the same SOP Instance UID (and the same pixels where it was wrongly
    refused before: a YBR_FULL_422 object has two samples a pixel's worth of chroma, not three)."""
    sent = dcmread(path, force=True)
    instance = get_instance(running.store.conn, str(sent.SOPInstanceUID))
    if instance is None:
        return False
    stored = dcmread(running.store.data_dir / instance.path)
    if path.name == "SC_ybr_full_422_uncompressed.dcm":
        return bool(np.array_equal(stored.pixel_array, sent.pixel_array))
    return bool(stored.SOPInstanceUID == sent.SOPInstanceUID)
