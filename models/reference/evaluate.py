"""Held-out evaluation of a bundle on synthetic radiographs, through ONNX Runtime (no PyTorch).

Each held-out radiograph (seeds from :data:`~models.reference.data.EVAL_SEED_BASE`, never used in training) is
prepared by the device's preprocessing, run through the bundle's network and post-processed into findings
exactly as on the device. Reported:

* per-class Dice at the model's resolution, pooled over the set: each tooth (and their mean) from the tooth
  labels post-processing uses, each finding class from its thresholded probability;
* per-finding precision and recall: a predicted finding is a true positive when it has the same kind as an
  unmatched ground-truth finding and their boxes overlap with IoU >= ``iou`` (greedy, most confident first);
  ``tooth_accuracy`` is the share of true positives given the right tooth;
* per-finding precision and recall at tooth level, as a dentist counts them (issue 17's measure): a tooth is a
  true positive for a kind when the truth and the prediction both put that kind on it (each tooth counted once);
* tooth numbering: the share of the teeth present whose pixels the tooth labels give, by majority, the right FDI
  number;
* for bone loss, the mean absolute error of ``bone_loss_mm`` and ``bone_loss_pct`` over true positives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from dental.findings import Finding, box_iou
from edge.pipeline.analyzer import infer_findings
from edge.pipeline.decoders import repeat_labels, tooth_labels
from models.bundle import Bundle
from models.errors import BundleError
from models.reference.data import EVAL_SEED_BASE, sample

__all__ = ["evaluate", "match_findings", "tooth_level"]


def match_findings(
    predicted: list[Finding], truth: list[Finding], iou: float
) -> tuple[list[tuple[Finding, Finding]], list[Finding], list[Finding]]:
    """``(matched (prediction, truth) pairs, false positives, false negatives)`` for one image."""
    pairs: list[tuple[Finding, Finding]] = []
    unmatched_pred: list[Finding] = []
    free = list(truth)
    for pred in sorted(predicted, key=lambda f: -f.confidence):
        scored = [(box_iou(pred.bbox, t.bbox), i) for i, t in enumerate(free) if t.kind == pred.kind]
        best = max(scored, default=(0.0, -1))
        if best[0] >= iou:
            pairs.append((pred, free.pop(best[1])))
        else:
            unmatched_pred.append(pred)
    return pairs, unmatched_pred, free


def tooth_level(predicted: list[Finding], truth: list[Finding]) -> dict[str, tuple[int, int, int]]:
    """Per kind, ``(teeth in truth, teeth predicted, teeth in both)`` for one image: a kind counts once per tooth;
    findings without a tooth do not count."""
    out: dict[str, tuple[int, int, int]] = {}
    for kind in {f.kind for f in (*predicted, *truth)}:
        true = {f.tooth_fdi for f in truth if f.kind == kind and f.tooth_fdi is not None}
        pred = {f.tooth_fdi for f in predicted if f.kind == kind and f.tooth_fdi is not None}
        out[kind] = (len(true), len(pred), len(true & pred))
    return out


def _runner(network: bytes, threads: int) -> Callable[[npt.NDArray[np.float32]], dict[str, npt.NDArray[np.float32]]]:
    """``network`` on ONNX Runtime's CPU provider as a function of its one input."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(network, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def run(batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        return dict(zip(outputs, session.run(outputs, {name: batch}), strict=True))

    return run


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def evaluate(bundle: Bundle, count: int = 40, threads: int = 2, iou: float = 0.3) -> dict[str, Any]:
    """Evaluate ``bundle`` on ``count`` held-out synthetic radiographs; a JSON-ready summary."""
    manifest = bundle.manifest
    if manifest.teeth is None or manifest.decoder is not None:
        raise BundleError(f"{manifest.id}: the evaluation reads segmentation bundles (tooth and finding masks)")
    run = _runner(bundle.model_bytes, threads)
    seen: dict[str, npt.NDArray[np.float32]] = {}

    def watched(batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        outputs = run(batch)
        seen.update({name: value.copy() for name, value in outputs.items()})  # post-processing consumes them
        return outputs

    # the crop network in the same precision as the first (its INT8 variant for the INT8 view)
    crops = None if manifest.crops is None else bundle.crop_stage().network_for("onnxruntime-cpu", bundle.precision)
    run_crops = None if crops is None else _runner(crops.model_bytes, threads)
    names = [manifest.teeth.name, manifest.findings.name]
    labels_fdi = manifest.teeth.labels_fdi
    classes = manifest.findings.classes
    teeth_inter = np.zeros(len(labels_fdi) + 1)
    teeth_total = np.zeros(len(labels_fdi) + 1)
    find_inter = np.zeros(len(classes))
    find_total = np.zeros(len(classes))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"truth": 0, "predicted": 0, "tp": 0, "tooth_ok": 0})
    teeth_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    numbered = present_teeth = 0
    loss_mm: list[float] = []
    loss_pct: list[float] = []
    seeds = range(EVAL_SEED_BASE, EVAL_SEED_BASE + count)
    for seed in seeds:
        s = sample(seed, manifest.input)
        seen.clear()
        spacing = (s.synthetic.spacing_mm, s.synthetic.spacing_mm)
        pixels = s.synthetic.pixels.astype(np.float32)
        predicted = infer_findings(pixels, manifest, spacing=spacing, run=watched, run_crops=run_crops)
        teeth = seen[names[0]]
        labels = repeat_labels(tooth_labels(teeth[0], labels_fdi), (s.teeth.shape[0], s.teeth.shape[1]))
        for k in range(1, len(labels_fdi) + 1):
            pred, true = labels == k, s.teeth == k
            teeth_inter[k] += np.logical_and(pred, true).sum()
            teeth_total[k] += pred.sum() + true.sum()
            if true.any():
                present_teeth += 1
                numbered += int(np.bincount(labels[true].ravel(), minlength=k + 1).argmax() == k)
        for c, cls in enumerate(classes if names[1] in seen else ()):  # a two-stage bundle has no finding masks
            pred = seen[names[1]][0, c] >= np.log(cls.threshold / (1 - cls.threshold))
            find_inter[c] += np.logical_and(pred, s.findings[c]).sum()
            find_total[c] += pred.sum() + s.findings[c].sum()
        pairs, _fp, _fn = match_findings(predicted, list(s.synthetic.findings), iou)
        for kind, row in tooth_level(predicted, list(s.synthetic.findings)).items():
            teeth_counts[kind] = [a + b for a, b in zip(teeth_counts[kind], row, strict=True)]
        for f in s.synthetic.findings:
            counts[f.kind]["truth"] += 1
        for f in predicted:
            counts[f.kind]["predicted"] += 1
        for pred, true in pairs:
            counts[pred.kind]["tp"] += 1
            counts[pred.kind]["tooth_ok"] += int(pred.tooth_fdi == true.tooth_fdi)
            if pred.kind == "bone_loss" and true.bone_loss_mm is not None and pred.bone_loss_mm is not None:
                loss_mm.append(abs(pred.bone_loss_mm - true.bone_loss_mm))
            if pred.kind == "bone_loss" and true.bone_loss_pct is not None and pred.bone_loss_pct is not None:
                loss_pct.append(abs(pred.bone_loss_pct - true.bone_loss_pct))
    teeth_dice = {
        fdi: _ratio(2 * teeth_inter[k], teeth_total[k]) for k, fdi in enumerate(labels_fdi, start=1) if teeth_total[k]
    }
    present = [v for v in teeth_dice.values() if v is not None]
    return {
        "model": {
            "id": manifest.id,
            "version": manifest.version,
            "clinical": manifest.clinical,
            "precision": bundle.precision,
        },
        "held_out": {"images": count, "seeds": [seeds.start, seeds.stop - 1]},
        "match": f"same kind and box IoU >= {iou}",
        "tooth_numbering": _ratio(numbered, present_teeth),
        "dice": {
            "teeth_mean": round(float(np.mean(present)), 4) if present else None,
            "findings": {cls.kind: _ratio(2 * find_inter[c], find_total[c]) for c, cls in enumerate(classes)},
            "teeth": teeth_dice,
        },
        "findings": {
            cls.kind: {
                "truth": counts[cls.kind]["truth"],
                "predicted": counts[cls.kind]["predicted"],
                "true_positives": counts[cls.kind]["tp"],
                "precision": _ratio(counts[cls.kind]["tp"], counts[cls.kind]["predicted"]),
                "recall": _ratio(counts[cls.kind]["tp"], counts[cls.kind]["truth"]),
                "tooth_accuracy": _ratio(counts[cls.kind]["tooth_ok"], counts[cls.kind]["tp"]),
            }
            for cls in classes
        },
        "tooth_level": {
            cls.kind: {
                "truth": teeth_counts[cls.kind][0],
                "predicted": teeth_counts[cls.kind][1],
                "true_positives": teeth_counts[cls.kind][2],
                "precision": _ratio(teeth_counts[cls.kind][2], teeth_counts[cls.kind][1]),
                "recall": _ratio(teeth_counts[cls.kind][2], teeth_counts[cls.kind][0]),
            }
            for cls in classes
        },
        "bone_loss": {
            "mae_mm": round(float(np.mean(loss_mm)), 3) if loss_mm else None,
            "mae_pct": round(float(np.mean(loss_pct)), 2) if loss_pct else None,
        },
    }
