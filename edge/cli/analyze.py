"""``btt-edge analyze FILE... [--json] [--bundle PATH]...``: analyse DICOM files with the configured bundles.

Each file goes to the first bundle that accepts it (``[pipeline] bundle_path``, then ``extra_bundles``; or the
``--bundle`` options, in their order), as in the agent. Prints one result per file (``--json``: a JSON array of
objects with ``file``, ``sop_instance_uid``, ``status`` (``analysed`` or ``skipped``, ``failed`` when analysis
itself broke), ``reason``, ``model`` (the bundle that ran; null when none did), ``backend``, ``precision``,
``timings_ms`` and ``findings``). Exit 0 when every file was analysed or skipped with a reason, 1 when any failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.cli.common import add_config_args, config_from_args
from edge.pipeline.backends.registry import CHOICES

if TYPE_CHECKING:
    from edge.pipeline.analyzer import Analyzer

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``analyze`` command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "analyze", help="analyse DICOM files with the model bundle (AI findings, not a clinical diagnosis)"
    )
    add_config_args(parser)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print a JSON array, one object per file")
    parser.add_argument(
        "--bundle",
        type=Path,
        action="append",
        metavar="PATH",
        help="a bundle to route to; repeat for several (the first overrides pipeline.bundle_path, the others "
        "pipeline.extra_bundles)",
    )
    parser.add_argument(
        "--backend",
        choices=CHOICES,
        help="override pipeline.backend",
    )
    parser.add_argument("--threads", type=int, metavar="N", help="override pipeline.threads")
    parser.set_defaults(func=_analyze)


def _analyse_files(analyzer: Analyzer, files: list[Path]) -> tuple[bool, list[dict[str, Any]]]:
    """``(any failed, one JSON document per file)``."""
    from edge.errors import PipelineError, UnsupportedImage
    from edge.pipeline.analyzer import read_dataset

    docs: list[dict[str, Any]] = []
    failed = False
    for path in files:
        try:
            docs.append(analyzer.analyse(read_dataset(path)).to_json())
        except UnsupportedImage as exc:
            docs.append(analyzer.skipped(None, str(exc)).to_json())
        except (PipelineError, OSError) as exc:
            failed = True
            doc = analyzer.skipped(None, str(exc)).to_json()
            docs.append({**doc, "status": "failed"})
        docs[-1]["file"] = str(path)
    return failed, docs


def _analyze(args: argparse.Namespace) -> int:
    from edge.pipeline.analyzer import open_analyzer

    bundles = [str(path.resolve()) for path in args.bundle or ()]
    pipeline: dict[str, object] = {"backend": args.backend, "threads": args.threads}
    if bundles:
        pipeline.update(bundle_path=bundles[0], extra_bundles=bundles[1:])
    config = config_from_args(args, pipeline=pipeline)
    analyzer = open_analyzer(config.pipeline, args.data_dir)
    try:
        failed, docs = _analyse_files(analyzer, args.files)
    finally:
        analyzer.close()
    if args.json:
        print(json.dumps(docs, indent=2))
    else:
        for doc in docs:
            detail = f"{len(doc['findings'])} findings" if doc["status"] == "analysed" else doc.get("reason", "")
            total = doc["timings_ms"].get("total")
            timing = f" {total:.0f} ms" if total is not None else ""
            ran = f" [{doc['model']['id']} on {doc['backend']}]" if doc["model"] is not None else ""
            print(f"{doc['file']}: {doc['status']}{timing} ({detail}){ran}")
            for finding in doc["findings"]:
                print(
                    f"  {finding['kind']:<20} tooth {finding['tooth_fdi'] or '-':>3} "
                    f"(universal {finding['tooth_universal'] or '-'}) "
                    f"confidence {finding['confidence']:.2f} bbox {finding['bbox']}"
                )
        print("AI output of a model bundle; not a clinical diagnosis.")
    return 1 if failed else 0
