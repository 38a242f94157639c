"""``btt-edge model synth|eval|verify|pack|train|export``: the reference model's data, metrics and bundle tools.

``synth`` writes synthetic panoramic radiographs as DICOM with their ground truth beside them (``X.dcm`` and
``X.json``, the ground truth as the object ``analyze --json`` prints for one file, with model id
``synthetic-ground-truth``). ``eval`` prints the held-out metrics of a bundle; ``verify`` loads a bundle (hashes,
agent version), says which images it accepts and runs its golden vectors on ONNX Runtime. ``pack`` makes a bundle
from a manufacturer's ONNX model (or a MONAI Bundle) and a short description (:mod:`edge.pipeline.pack`). ``train`` and
``export`` retrain and rebuild the reference bundle; they need the ``train`` extra (PyTorch).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge.errors import EdgeError

__all__ = ["DEFAULT_BUNDLE", "DEFAULT_CROP_WEIGHTS", "DEFAULT_WEIGHTS", "register"]

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "bundles" / "reference-dental"
"""The committed reference bundle."""
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "reference" / "reference.pt"
"""The committed PyTorch weights of the reference bundle's first network (teeth)."""
DEFAULT_CROP_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "reference" / "tooth.pt"
"""The committed PyTorch weights of its second network (findings on tooth crops)."""


def register(sub: Any) -> None:
    """Add the ``model`` command."""
    parser: argparse.ArgumentParser = sub.add_parser("model", help="reference model: synthetic data, eval, bundles")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    synth = actions.add_parser("synth", help="write synthetic panoramic radiographs (DICOM) with ground truth")
    synth.add_argument("--out", type=Path, required=True, metavar="DIR")
    synth.add_argument("--count", type=int, default=1, metavar="N")
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="first seed (image i uses S + i)")
    synth.set_defaults(func=_synth)

    evaluate = actions.add_parser("eval", help="held-out metrics: per-class Dice, per-finding precision/recall")
    evaluate.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, metavar="PATH")
    evaluate.add_argument("--count", type=int, default=40, metavar="N", help="held-out images (default 40)")
    evaluate.add_argument("--threads", type=int, default=2, metavar="T")
    evaluate.add_argument(
        "--precision", default="fp32", metavar="P", help="fp32 (the bundle's network, default) or a variant's (int8)"
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(func=_eval)

    verify = actions.add_parser("verify", help="check a bundle: manifest, hashes, agent version, golden vectors")
    verify.add_argument("path", type=Path, metavar="PATH")
    verify.set_defaults(func=_verify)

    pack = actions.add_parser("pack", help="make a bundle from an ONNX model (or a MONAI Bundle) and a description")
    source = pack.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", type=Path, metavar="MODEL.onnx", help="the network")
    source.add_argument("--monai", type=Path, metavar="DIR", help="a MONAI Bundle (configs/metadata.json, models/)")
    pack.add_argument(
        "--describe", type=Path, required=True, metavar="FILE", help="classes, codes, thresholds, input (TOML/JSON)"
    )
    pack.add_argument("--out", type=Path, required=True, metavar="DIR", help="the bundle directory to write")
    pack.set_defaults(func=_pack)

    train = actions.add_parser("train", help="train a reference network (needs the train extra)")
    train.add_argument(
        "--network",
        choices=("teeth", "crops"),
        default="teeth",
        help="teeth: the first network (tooth labels); crops: the second (findings on tooth crops)",
    )
    train.add_argument("--out", type=Path, default=None, metavar="WEIGHTS", help="default: the committed weights")
    train.add_argument("--seed", type=int, default=None, metavar="S")
    train.add_argument("--steps", type=int, default=None, metavar="N", help="teeth: optimiser steps")
    train.add_argument("--epochs", type=int, default=None, metavar="N", help="crops: passes over the crops")
    train.add_argument("--images", type=int, default=None, metavar="N")
    train.add_argument("--refine-steps", type=int, default=None, metavar="N", help="teeth: second stage (0: none)")
    train.set_defaults(func=_train)

    export = actions.add_parser("export", help="export weights to an ONNX bundle (needs the train extra)")
    export.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, metavar="WEIGHTS")
    export.add_argument("--crop-weights", type=Path, default=DEFAULT_CROP_WEIGHTS, metavar="WEIGHTS")
    export.add_argument(
        "--one-stage", action="store_true", help="the first network alone, finding masks from it (no crops)"
    )
    export.add_argument("--out", type=Path, default=DEFAULT_BUNDLE, metavar="DIR")
    export.set_defaults(func=_export)


def _synth(args: argparse.Namespace) -> int:
    from edge import __version__
    from edge.pipeline.analyzer import AnalysisResult
    from models.synthetic import generate
    from models.synthetic_dicom import instance_uid, synthetic_dicom_bytes
    from runtime.durable import atomic_write_bytes

    if args.count < 1:
        raise EdgeError("--count must be at least 1")
    for seed in range(args.seed, args.seed + args.count):
        image = generate(seed)
        stem = args.out / f"synthetic-{seed:06d}"
        atomic_write_bytes(stem.with_suffix(".dcm"), synthetic_dicom_bytes(image, seed))
        truth = AnalysisResult(
            sop_instance_uid=instance_uid(seed),
            status="analysed",
            model_id="synthetic-ground-truth",
            model_version=__version__,
            clinical=False,
            backend="ground-truth",
            findings=tuple(image.findings),
        ).to_json()
        atomic_write_bytes(stem.with_suffix(".json"), (json.dumps(truth, indent=1) + "\n").encode())
        print(f"{stem}.dcm  {len(image.teeth_fdi)} teeth, {len(image.findings)} findings")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle
    from models.reference.evaluate import evaluate

    bundle = load_bundle(args.bundle)
    networks = {n.precision: n for n in bundle.networks_for("onnxruntime-cpu")}
    if args.precision not in networks:
        raise EdgeError(f"{bundle.manifest.id} has no {args.precision} network for ONNX Runtime on the CPU")
    report = evaluate(networks[args.precision], count=args.count, threads=args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    model = report["model"]
    print(f"{model['id']} {model['version']} ({model['precision']}) on {args.count} held-out synthetic radiographs")
    print(f"tooth Dice (mean over teeth): {report['dice']['teeth_mean']}")
    print(f"{'kind':<20}{'Dice':>8}{'truth':>8}{'pred':>8}{'prec':>8}{'recall':>8}{'tooth':>8}")
    for kind, row in report["findings"].items():
        cells = [report["dice"]["findings"][kind], row["truth"], row["predicted"], row["precision"], row["recall"]]
        cells.append(row["tooth_accuracy"])
        print(f"{kind:<20}" + "".join(f"{'-' if c is None else c:>8}" for c in cells))
    print(f"tooth numbering: {report['tooth_numbering']} of the teeth present get the right FDI number")
    seeds = report["held_out"]["seeds"]
    print(f"by tooth (a kind counted once per tooth, the way a dentist charts it; seeds {seeds}):")
    print(f"{'kind':<20}{'truth':>8}{'pred':>8}{'prec':>8}{'recall':>8}")
    for kind, row in report["tooth_level"].items():
        cells = [row["truth"], row["predicted"], row["precision"], row["recall"]]
        print(f"{kind:<20}" + "".join(f"{'-' if c is None else c:>8}" for c in cells))
    print(f"bone loss MAE: {report['bone_loss']['mae_mm']} mm, {report['bone_loss']['mae_pct']} % of root length")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edge.pipeline.backends import BackendOptions
    from edge.pipeline.backends.ort import OrtCpuFactory
    from models.bundle import accepts_of, describe_accepts, describe_outputs, load_bundle
    from models.golden import check_golden

    bundle = load_bundle(args.path)
    manifest = bundle.manifest
    print(f"{manifest.id} {manifest.version}: manifest, hashes and agent version ok")
    print(f"  accepts {describe_accepts(accepts_of(manifest))}")
    print(f"  outputs {describe_outputs(manifest)}")
    failed = None
    for network in bundle.networks_for("onnxruntime-cpu"):
        backend = OrtCpuFactory().load(network, BackendOptions())
        try:
            report = check_golden(network, backend.run)
        finally:
            backend.close()
        for case in report.cases:
            status = "ok" if case.ok else "FAIL"
            print(
                f"  {network.network_file} golden {case.file} {case.output}: "
                f"max abs error {case.max_abs_error:.3g} (atol {case.atol:g}) {status}"
            )
        if report.ok:
            continue
        if network.variant is None:
            failed = report.reason
        else:
            print(f"  the {network.precision} variant fails on this CPU; the agent will not use it: {report.reason}")
    if failed is not None:
        print(f"golden vectors failed: {failed}", file=sys.stderr)
        return 1
    return 0


def _pack(args: argparse.Namespace) -> int:
    from edge.errors import BundleError
    from edge.pipeline.pack import monai_description, pack_model, read_description, read_monai
    from models.bundle import load_bundle, write_bundle

    description = read_description(args.describe)
    if args.monai is not None:
        metadata, model = read_monai(args.monai)
        description = monai_description(metadata, description)
    else:
        try:
            model = args.onnx.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read {args.onnx}: {exc}") from exc
    if args.out.exists() and any(args.out.iterdir()):
        raise BundleError(f"{args.out} is not empty: pack into a new directory")
    files = pack_model(model, description)
    write_bundle(args.out, files)
    manifest = load_bundle(args.out).manifest
    print(
        f"wrote {args.out}: {manifest.id} {manifest.version}, {manifest.output_kind}, "
        f"{len(manifest.findings.classes)} finding classes, golden vectors from ONNX Runtime"
    )
    return _verify(argparse.Namespace(path=args.out))


def _train(args: argparse.Namespace) -> int:
    try:
        from models.reference.tooth_train import ToothTrainConfig, train_teeth
        from models.reference.train import TrainConfig, train
    except ImportError as exc:
        raise EdgeError(f"training needs the train extra (pip install '.[train]'): {exc}") from exc
    given = {"seed": args.seed, "images": args.images}
    if args.network == "crops":
        out = args.out or DEFAULT_CROP_WEIGHTS
        overrides = {k: v for k, v in {**given, "epochs": args.epochs}.items() if v is not None}
        summary = train_teeth(ToothTrainConfig(**overrides), out)
    else:
        out = args.out or DEFAULT_WEIGHTS
        more = {"steps": args.steps, "refine_steps": args.refine_steps}
        overrides = {k: v for k, v in {**given, **more}.items() if v is not None}
        summary = train(TrainConfig(**overrides), out)
    print(f"wrote {out} after {summary['seconds']} s")
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        from models.reference.export import export_bundle
    except ImportError as exc:
        raise EdgeError(f"export needs the train extra (pip install '.[train]'): {exc}") from exc
    print(f"wrote {export_bundle(args.weights, args.out, None if args.one_stage else args.crop_weights)}")
    return 0
