"""A tiny ONNX network with the contract's input and output names, packed as a verified bundle, for pipeline tests.

``teeth`` logits favour tooth channel 9 (FDI 21) wherever the image is not padding; ``findings`` channel 0
(caries) fires where the normalised image is bright (above 0.75 of the window). :data:`MANIFEST` declares it a
panoramic model; :data:`BITEWING_MANIFEST` the same network at another input size, declared an intra-oral
bitewing model (a second bundle with other ``accepts``, for routing tests).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dental.teeth import PERMANENT_FDI
from models.bundle import (
    MODEL_NAME,
    Accepts,
    Bundle,
    Code,
    FindingClass,
    FindingsOutput,
    GoldenSpec,
    InputSpec,
    Manifest,
    TeethOutput,
    pack_bundle,
    parse_bundle,
)
from models.golden import build_golden

HEIGHT, WIDTH = 32, 64
DX_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
KINDS = ("caries", "periapical_lesion")

MANIFEST = Manifest(
    format=1,
    id="tiny-test-model",
    version="0.0.1",
    task="dental-panoramic-segmentation",
    requires_agent=">=0.1,<1",
    clinical=False,
    description="pipeline test network",
    input=InputSpec("image", HEIGHT, WIDTH, 1, (0.5, 99.5), 0.5, 0.25, ("PX", "DX", "MR", "CT")),
    teeth=TeethOutput("teeth", PERMANENT_FDI),
    findings=FindingsOutput(
        "findings",
        tuple(FindingClass(kind, Code("SCT", "0", kind), 0.5, 1) for kind in KINDS),
    ),
    files={},
    golden=(GoldenSpec("golden/a.npz", 1e-3),),
    accepts=Accepts(
        views=("panoramic",), modalities=("PX", "DX"), rows=(16, 4096), columns=(16, 8192), aspect=(1.0, 4.0)
    ),
)
"""A panoramic model: its accepts block takes the small test images (:func:`bright_spot_image`) PX and DX."""


BITEWING_MANIFEST = dataclasses.replace(
    MANIFEST,
    id="tiny-bitewing-model",
    task="dental-intraoral-segmentation",
    description="pipeline test network for intra-oral bitewings",
    input=InputSpec("image", 48, 64, 1, (0.5, 99.5), 0.5, 0.25, ("IO",)),
    accepts=Accepts(
        views=("bitewing",),
        modalities=("IO",),
        rows=(200, 4096),
        columns=(200, 4096),
        aspect=(0.5, 2.0),
        pixel_spacing_mm=(0.01, 0.2),
    ),
)
"""An intra-oral bitewing model: IO images that name the bitewing view, of a sensor's size and shape."""
INTRA_ORAL_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.3")
"""Digital Intra-Oral X-Ray Image Storage - For Presentation."""


def _model_bytes(graph: onnx.GraphProto) -> bytes:
    """``graph`` as the bytes of a checked opset-17 model."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def tiny_onnx(height: int = HEIGHT, width: int = WIDTH) -> bytes:
    """A 1x1-convolution network: image [N,1,H,W] -> teeth [N,33,H,W], findings [N,K,H,W]."""
    teeth_w = np.zeros((33, 1, 1, 1), np.float32)
    teeth_b = np.zeros(33, np.float32)
    teeth_w[9] = 4.0  # brighter than padding (-2 after normalisation) -> tooth 9
    teeth_b[9] = 8.0
    find_w = np.full((len(KINDS), 1, 1, 1), 10.0, np.float32)
    find_b = np.array([-10.0] + [-100.0] * (len(KINDS) - 1), np.float32)  # caries where x > 1 (unit > 0.75)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "tw", "tb"], ["teeth"]),
            helper.make_node("Conv", ["image", "fw", "fb"], ["findings"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, height, width])],
        [
            helper.make_tensor_value_info("teeth", TensorProto.FLOAT, ["N", 33, height, width]),
            helper.make_tensor_value_info("findings", TensorProto.FLOAT, ["N", len(KINDS), height, width]),
        ],
        [
            numpy_helper.from_array(teeth_w, "tw"),
            numpy_helper.from_array(teeth_b, "tb"),
            numpy_helper.from_array(find_w, "fw"),
            numpy_helper.from_array(find_b, "fb"),
        ],
    )
    return _model_bytes(graph)


def reference_outputs(batch: np.ndarray) -> dict[str, np.ndarray]:
    """What the tiny network computes, in numpy (the oracle for golden vectors and fake backends)."""
    x = batch[:, 0:1].astype(np.float32)
    teeth = np.zeros((batch.shape[0], 33, *batch.shape[2:]), np.float32)
    teeth[:, 9:10] = 4.0 * x + 8.0
    findings = np.concatenate([10.0 * x - 10.0] + [10.0 * x - 100.0] * (len(KINDS) - 1), axis=1)
    return {"teeth": teeth, "findings": findings.astype(np.float32)}


def tiny_bundle(
    model: bytes | None = None, golden_outputs: dict[str, np.ndarray] | None = None, manifest: Manifest = MANIFEST
) -> Bundle:
    """The tiny network as a verified bundle with one golden file (expected values from :func:`reference_outputs`),
    at the input size and with the ``accepts`` of ``manifest``."""
    height, width = manifest.input.height, manifest.input.width
    rng = np.random.default_rng(1)
    inputs = rng.normal(0, 1, (1, 1, height, width)).astype(np.float16).astype(np.float32)
    outputs = golden_outputs if golden_outputs is not None else reference_outputs(inputs)
    files = {
        MODEL_NAME: model if model is not None else tiny_onnx(height, width),
        "golden/a.npz": build_golden(inputs, outputs, 256, 0),
    }
    return parse_bundle(pack_bundle(manifest, files), source=manifest.id)


def bitewing_bundle() -> Bundle:
    """The tiny network declared an intra-oral bitewing model (:data:`BITEWING_MANIFEST`)."""
    return tiny_bundle(manifest=BITEWING_MANIFEST)


def as_intra_oral(ds: Dataset, view: str | None, *, rows: int = 600, columns: int = 800) -> Dataset:
    """``ds`` (the generator's panoramic, say) turned into an intra-oral image: Modality IO, the intra-oral SOP
    class, its pixels cropped to a sensor's ``rows x columns`` about the centre, and ``view`` (``bitewing``,
    ``periapical`` or None) named in the View Code Sequence and the Series Description as units send it."""
    pixels = ds.pixel_array
    top, left = (pixels.shape[0] - rows) // 2, (pixels.shape[1] - columns) // 2
    crop = np.ascontiguousarray(pixels[top : top + rows, left : left + columns], dtype="<u2")
    ds.Rows, ds.Columns = crop.shape
    ds.PixelData = crop.tobytes()
    ds.Modality = "IO"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = INTRA_ORAL_PRESENTATION
    ds.ImageLaterality = "R"
    if view is not None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = f"{view}-view", "99TEST"
        code.CodeMeaning = {"bitewing": "Bitewing", "periapical": "Periapical"}.get(view, view)
        ds.ViewCodeSequence = Sequence([code])
        ds.SeriesDescription = f"{code.CodeMeaning} right"
    return ds


def write_radiograph(
    path: Path,
    pixels: np.ndarray,
    *,
    modality: str = "PX",
    sop_uid: str | None = None,
    spacing: tuple[float, float] | None = (0.1, 0.1),
    series_description: str | None = None,
) -> str:
    """Write a single-frame MONOCHROME2 16-bit radiograph; return its SOP Instance UID."""
    uid = UID(sop_uid or generate_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_PRESENTATION
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_PRESENTATION
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientID = "P1"
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if spacing is not None:
        ds.ImagerPixelSpacing = list(spacing)
    if series_description is not None:
        ds.SeriesDescription = series_description
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return uid


def bright_spot_image(rows: int = 100, cols: int = 200) -> np.ndarray:
    """A dim image with one bright square at rows 40-60, columns 120-150 (what the tiny network calls caries)."""
    image = np.random.default_rng(5).integers(100, 300, (rows, cols)).astype(np.uint16)
    image[40:60, 120:150] = 4000
    return image


def constant_onnx(outputs: dict[str, np.ndarray], height: int = HEIGHT, width: int = WIDTH) -> bytes:
    """A network that reads ``image [1, 1, height, width]`` and gives the constant ``outputs`` (float32).

    For bundles of every output kind (``model pack`` tests): each output is its constant plus 0 x the image's sum,
    so the graph reads its input as a real model does and ONNX Runtime computes (not folds) the result.
    """
    nodes = [
        helper.make_node("ReduceSum", ["image"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
    ]
    initializers = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    infos = []
    for name, value in outputs.items():
        array = np.asarray(value, np.float32)
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        initializers.append(numpy_helper.from_array(array, f"{name}_value"))
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(array.shape)))
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, height, width])],
        infos,
        initializers,
    )
    return _model_bytes(graph)


def split_teeth(left: str, right: str, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Tooth logits ``[1, 33, height, width]``: tooth ``left`` (FDI) on the image's left half, ``right`` on its
    right half (channel ``k`` is ``PERMANENT_FDI[k - 1]``, as :data:`MANIFEST` declares)."""
    teeth = np.zeros((1, 33, height, width), np.float32)
    teeth[0, PERMANENT_FDI.index(left) + 1, :, : width // 2] = 10.0
    teeth[0, PERMANENT_FDI.index(right) + 1, :, width // 2 :] = 10.0
    return teeth
