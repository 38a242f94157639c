"""Make a bundle from a manufacturer's ONNX model and a short description (``btt-edge model pack``).

The description (TOML or JSON) is the manifest without what the agent computes: ``id``, ``version``, ``task``,
``description``, ``clinical``, ``input``, ``accepts``, ``outputs`` (the output kind, tensor names, the finding
classes with their codes and thresholds) and optionally ``requires_agent`` (default :data:`DEFAULT_REQUIRES`) and
``[golden] atol`` (default :data:`DEFAULT_ATOL`). :func:`pack_model` adds the model's sha256 and golden vectors
computed by running it on ONNX Runtime (CPU) over a deterministic input: a generator panoramic
(:func:`models.synthetic.generate`) preprocessed by the bundle's own input spec. It checks that the ONNX input and
outputs are the ones the manifest names and that the outputs decode (:mod:`edge.pipeline.decoders`), so a bundle
that packs is one the agent can run.

:func:`monai_description` reads a MONAI Bundle (``configs/metadata.json``, ``models/model.onnx``): its
``network_data_format`` gives the input (name, ``spatial_shape``, ``num_channels``, ``value_range``) and the
outputs (``channel_def``: an image output of ``format`` ``labels`` whose channels are background and FDI tooth
numbers is the tooth segmentation; one of ``format`` ``classes`` the finding masks, its channels the finding
kinds; a ``probabilities`` output of ``format`` ``classes`` a per-tooth classifier's columns), and the
description supplies what MONAI does not carry: codes, thresholds, modalities, which images it accepts.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dental.teeth import fdi_to_universal
from edge.errors import BundleError, EdgeError, ModelError
from edge.pipeline.postprocess import findings_from_outputs
from edge.pipeline.preprocess import Prepared, prepare
from models.bundle import FORMAT, MODEL_NAME, Manifest, pack_bundle, parse_manifest, sha256_hex
from models.golden import build_golden

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack)
    import tomli as tomllib

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_REQUIRES",
    "GOLDEN_FILE",
    "GOLDEN_SEED",
    "MONAI_METADATA",
    "MONAI_MODEL",
    "golden_input",
    "monai_description",
    "pack_model",
    "read_description",
    "read_monai",
]

DEFAULT_REQUIRES = ">=0.1,<1"
"""The agent versions a packed bundle runs on unless its description says otherwise."""
DEFAULT_ATOL = 0.05
"""Golden-vector tolerance unless the description gives ``[golden] atol`` (what TensorRT FP16 meets in logits)."""
GOLDEN_FILE = "golden/pack.npz"
GOLDEN_SEED = 0
"""The generator panoramic the golden input is made from."""
GOLDEN_SAMPLES = 512
MONAI_METADATA = "configs/metadata.json"
MONAI_MODEL = "models/model.onnx"
_DESCRIPTION_KEYS = {
    "id",
    "version",
    "task",
    "description",
    "clinical",
    "requires_agent",
    "input",
    "accepts",
    "outputs",
    "golden",
}


def read_description(path: Path) -> dict[str, Any]:
    """A description file (``.toml``, else JSON) as a document; :class:`BundleError` naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"description {path}: cannot read: {exc}") from exc
    try:
        doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"description {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}"
        ) from exc
    if not isinstance(doc, dict):
        raise BundleError(f"description {path}: must be an object")
    return doc


def golden_input(manifest: Manifest) -> Prepared:
    """The deterministic golden input: a generator panoramic prepared by ``manifest.input``, its tensor
    ``[1, 1, H, W]`` rounded to float16 (golden inputs are stored so)."""
    from models.synthetic import generate

    prepared = prepare(generate(GOLDEN_SEED).pixels, manifest.input)
    rounded = np.asarray(prepared.tensor.astype(np.float16).astype(np.float32))
    return dataclasses.replace(prepared, tensor=rounded)


def _manifest_doc(description: Mapping[str, Any], files: Mapping[str, bytes], atol: float) -> dict[str, Any]:
    doc = {k: v for k, v in description.items() if k != "golden"}
    doc.setdefault("requires_agent", DEFAULT_REQUIRES)
    doc.setdefault("clinical", False)
    doc.setdefault("description", "")
    doc["input"] = {"channels": 1, "window_percentiles": [0.5, 99.5], "mean": 0.0, "std": 1.0, **doc.get("input", {})}
    doc["format"] = FORMAT
    doc["files"] = {name: sha256_hex(data) for name, data in sorted(files.items())}
    doc["golden"] = [{"file": GOLDEN_FILE, "atol": atol}]
    return doc


def _run_onnx(model: bytes, manifest: Manifest, batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
    """Every output of ``model`` for ``batch`` on ONNX Runtime (CPU), after checking its input is the manifest's."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a model it cannot load
        raise BundleError(f"ONNX Runtime cannot load the model: {exc}") from exc
    inputs = [i.name for i in session.get_inputs()]
    if inputs != [manifest.input.name]:
        raise BundleError(f"the model's inputs are {inputs}; the description's input.name is {manifest.input.name!r}")
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, {manifest.input.name: batch})
    except Exception as exc:  # a shape the model does not take, an operator that fails
        raise BundleError(f"the model fails on a {list(batch.shape)} input: {exc}") from exc
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def pack_model(model: bytes, description: Mapping[str, Any]) -> dict[str, bytes]:
    """The files of a bundle for ``model`` (ONNX bytes) as ``description`` describes it (see the module docstring).

    Raises :class:`BundleError` naming the problem: a description the manifest parser refuses, an unknown key, a
    model ONNX Runtime cannot run, an input or output name the model lacks, outputs that do not decode.
    """
    unknown = sorted(set(description) - _DESCRIPTION_KEYS)
    if unknown:
        raise BundleError(
            f"description: {unknown[0]} is not a description field ({', '.join(sorted(_DESCRIPTION_KEYS))})"
        )
    for key in ("input", "outputs", "accepts"):
        if key in description and not isinstance(description[key], dict):
            raise BundleError(f"description: {key} must be a table")
    golden = description.get("golden", {})
    if not isinstance(golden, dict) or set(golden) - {"atol"}:
        raise BundleError("description: golden must be a table with only atol")
    atol = golden.get("atol", DEFAULT_ATOL)
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol <= 1e6:
        raise BundleError("description: golden.atol must be a number in [0, 1e6]")
    placeholder = {MODEL_NAME: model, GOLDEN_FILE: b""}
    manifest = parse_manifest(json.dumps(_manifest_doc(description, placeholder, float(atol))).encode())
    prepared = golden_input(manifest)
    outputs = _run_onnx(model, manifest, prepared.tensor)
    try:
        findings_from_outputs(dict(outputs), manifest, prepared, None)
    except (EdgeError, ModelError) as exc:
        raise BundleError(f"the model's outputs ({', '.join(sorted(outputs))}) do not fit the manifest: {exc}") from exc
    files = {MODEL_NAME: model, GOLDEN_FILE: build_golden(prepared.tensor, outputs, GOLDEN_SAMPLES, GOLDEN_SEED)}
    return pack_bundle(manifest, files)


def read_monai(directory: Path) -> tuple[dict[str, Any], bytes]:
    """``(metadata, ONNX bytes)`` of the MONAI Bundle at ``directory``; :class:`BundleError` naming what lacks."""
    try:
        metadata = json.loads((directory / MONAI_METADATA).read_text(encoding="utf-8"))
        model = (directory / MONAI_MODEL).read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"MONAI bundle {directory}: no {Path(exc.filename).relative_to(directory)}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"MONAI bundle {directory}: cannot read: {exc}") from exc
    if not isinstance(metadata, dict):
        raise BundleError(f"MONAI bundle {directory}: {MONAI_METADATA} must be an object")
    return metadata, model


def _channels(name: str, spec: Mapping[str, Any]) -> list[str]:
    """An output's ``channel_def`` as a list in channel order (``{"0": "background", "1": "11"}``)."""
    raw = spec.get("channel_def")
    if not isinstance(raw, dict) or not raw:
        raise BundleError(f"MONAI network_data_format.outputs.{name}: channel_def is missing or empty")
    try:
        by_index = {int(k): str(v).strip() for k, v in raw.items()}
    except ValueError:
        raise BundleError(
            f"MONAI network_data_format.outputs.{name}: channel_def keys must be channel numbers"
        ) from None
    if sorted(by_index) != list(range(len(by_index))):
        raise BundleError(f"MONAI network_data_format.outputs.{name}: channel_def must number channels 0..N-1")
    channels = [by_index[i] for i in range(len(by_index))]
    declared = spec.get("num_channels")
    if isinstance(declared, int) and declared != len(channels):
        raise BundleError(
            f"MONAI network_data_format.outputs.{name}: num_channels {declared}, channel_def {len(channels)}"
        )
    return channels


def _is_fdi(text: str) -> bool:
    try:
        fdi_to_universal(text)
    except ValueError:
        return False
    return True


def _monai_input(inputs: Mapping[str, Any]) -> dict[str, Any]:
    if len(inputs) != 1:
        raise BundleError(f"MONAI network_data_format.inputs has {len(inputs)} inputs; the agent feeds one image")
    [(name, spec)] = inputs.items()
    if not isinstance(spec, dict):
        raise BundleError(f"MONAI network_data_format.inputs.{name} must be an object")
    shape = spec.get("spatial_shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
    ):
        raise BundleError(
            f"MONAI network_data_format.inputs.{name}.spatial_shape {shape!r}: the agent needs a fixed 2-D [H, W]"
        )
    if spec.get("num_channels", 1) != 1:
        raise BundleError(f"MONAI network_data_format.inputs.{name}.num_channels must be 1 (greyscale radiographs)")
    if spec.get("dtype", "float32") != "float32":
        raise BundleError(f"MONAI network_data_format.inputs.{name}.dtype must be float32")
    doc: dict[str, Any] = {"name": name, "height": shape[0], "width": shape[1], "channels": 1}
    value_range = spec.get("value_range") or []
    if value_range:
        if len(value_range) != 2 or not value_range[0] < value_range[1]:
            raise BundleError(f"MONAI network_data_format.inputs.{name}.value_range {value_range!r} is not [min, max]")
        low, high = float(value_range[0]), float(value_range[1])
        doc.update(mean=(0.0 - low) / (high - low), std=1.0 / (high - low))  # the window's 0-1 mapped onto [low, high]
    return doc


def _monai_outputs(outputs: Mapping[str, Any], kinds: set[str]) -> dict[str, Any]:
    """The manifest's ``outputs`` block (less the classes) from MONAI's outputs and the description's kinds."""
    teeth: dict[str, Any] | None = None
    block: dict[str, Any] = {}
    for name, spec in outputs.items():
        if not isinstance(spec, dict):
            raise BundleError(f"MONAI network_data_format.outputs.{name} must be an object")
        channels = _channels(name, spec)
        kind_of, fmt = spec.get("type"), spec.get("format")
        if kind_of == "image" and fmt == "labels" and all(_is_fdi(c) for c in channels[1:]) and len(channels) > 1:
            teeth = {"name": name, "labels_fdi": channels[1:]}
        elif kind_of == "image" and fmt == "classes":
            _known_kinds(name, channels, kinds)
            block = {"findings": {"name": name, "channels": channels}}
        elif kind_of == "probabilities" and fmt == "classes":
            _known_kinds(name, [c for c in channels if c in kinds], kinds)
            block = {
                "kind": "tooth_classification",
                "tooth_classification": {"name": name, "columns": [c if c in kinds else "" for c in channels]},
            }
        else:
            raise BundleError(
                f"MONAI network_data_format.outputs.{name} (type {kind_of}, format {fmt}) is not one the import "
                "maps: give the outputs block in the description instead"
            )
    if not block:
        raise BundleError("MONAI network_data_format.outputs has no findings output (type image, format classes)")
    if teeth is not None:
        block["teeth"] = teeth
    return block


def _known_kinds(name: str, channels: list[str], kinds: set[str]) -> None:
    missing = sorted(set(kinds) - set(channels))
    extra = sorted(set(channels) - set(kinds))
    if missing or extra:
        raise BundleError(
            f"MONAI network_data_format.outputs.{name}: channel_def names {', '.join(channels)}; the description's "
            f"classes are {', '.join(sorted(kinds))} (each class's kind must be a channel's name)"
        )


def monai_description(metadata: Mapping[str, Any], description: Mapping[str, Any]) -> dict[str, Any]:
    """The description of a MONAI Bundle: what ``metadata`` gives, overlaid with ``description``.

    From MONAI: ``version``, ``task``, ``description``, the ``input`` (the description's ``input`` keys override)
    and the ``outputs`` tensor names and channel order, unless the description's ``outputs`` gives a ``kind``
    (then its outputs block is used as it is: MONAI has no convention for detector outputs). From the
    description: ``id``, the classes (``[[outputs.findings.classes]]`` with ``kind``, ``code``, ``threshold``:
    each ``kind`` named by a channel of the findings output), ``input.modalities``, ``accepts``, and for a
    per-tooth classifier ``teeth_fdi``.
    """
    ndf = metadata.get("network_data_format")
    if not isinstance(ndf, dict) or not isinstance(ndf.get("inputs"), dict) or not isinstance(ndf.get("outputs"), dict):
        raise BundleError(f"MONAI {MONAI_METADATA}: network_data_format with inputs and outputs is required")
    given_outputs = description.get("outputs", {})
    if not isinstance(given_outputs, dict):
        raise BundleError("description: outputs must be a table")
    findings_block = given_outputs.get("findings", {})
    classes = findings_block.get("classes", []) if isinstance(findings_block, dict) else []
    if not isinstance(classes, list) or not all(isinstance(c, dict) for c in classes):
        classes = []
    kinds = {c.get("kind") for c in classes}
    if not classes or not all(isinstance(k, str) for k in kinds):
        raise BundleError("description: outputs.findings.classes (kind, code, threshold per MONAI channel) is required")
    doc: dict[str, Any] = {
        k: metadata[k] for k in ("version", "task", "description") if isinstance(metadata.get(k), str)
    }
    doc.update({k: v for k, v in description.items() if k not in ("input", "outputs")})
    given_input = description.get("input", {})
    if not isinstance(given_input, dict):
        raise BundleError("description: input must be a table")
    doc["input"] = {**_monai_input(ndf["inputs"]), **given_input}
    if "kind" in given_outputs:  # the description declares the outputs itself (a detector, say): MONAI gives the input
        doc["outputs"] = given_outputs
        return doc
    outputs = _monai_outputs(ndf["outputs"], {str(k) for k in kinds})
    findings = outputs.pop("findings", None)
    if findings is not None:  # classes in the channel order of the MONAI output
        order = findings["channels"]
        outputs["findings"] = {
            "name": findings["name"],
            "classes": sorted(classes, key=lambda c: order.index(c["kind"])),
        }
    else:
        outputs["findings"] = {"classes": classes}
    extra = given_outputs.get("tooth_classification", {})
    if "tooth_classification" in outputs:
        outputs["tooth_classification"].update(extra)
    doc["outputs"] = outputs
    return doc
