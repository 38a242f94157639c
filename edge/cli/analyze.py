"""``btt-edge analyze FILE... [--json]``: analyse DICOM files with the configured model bundle and backend.

Prints one result per file (``--json``: a JSON array of objects with ``sop_instance_uid``, ``status``
(``analysed`` or ``skipped``, ``failed`` when analysis itself broke), ``reason``, ``model``, ``backend``,
``timings_ms`` and ``findings``). Exit 0 when every file was analysed or skipped with a reason, 1 when any failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``analyze`` command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "analyze", help="analyse DICOM files with the model bundle (AI findings, not a clinical diagnosis)"
    )
    add_config_args(parser)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print a JSON array, one object per file")
    parser.add_argument("--bundle", type=Path, metavar="PATH", help="override pipeline.bundle_path")
    parser.add_argument(
        "--backend",
        choices=("auto", "tensorrt", "onnxruntime-gpu", "onnxruntime-cpu"),
        help="override pipeline.backend",
    )
    parser.add_argument("--threads", type=int, metavar="N", help="override pipeline.threads")
    parser.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from edge.errors import PipelineError, UnsupportedImage
    from edge.pipeline.analyzer import open_analyzer, read_dataset

    bundle = None if args.bundle is None else str(args.bundle.resolve())
    config = config_from_args(args, pipeline={"bundle_path": bundle, "backend": args.backend, "threads": args.threads})
    analyzer = open_analyzer(config.pipeline, args.data_dir)
    docs: list[dict[str, Any]] = []
    failed = False
    for path in args.files:
        try:
            docs.append(analyzer.analyse(read_dataset(path)).to_json())
        except UnsupportedImage as exc:
            docs.append(analyzer.skipped(None, str(exc)).to_json())
        except (PipelineError, OSError) as exc:
            failed = True
            doc = analyzer.skipped(None, str(exc)).to_json()
            docs.append({**doc, "status": "failed"})
        docs[-1]["file"] = str(path)
    if args.json:
        print(json.dumps(docs, indent=2))
    else:
        for doc in docs:
            detail = f"{len(doc['findings'])} findings" if doc["status"] == "analysed" else doc.get("reason", "")
            total = doc["timings_ms"].get("total")
            timing = f" {total:.0f} ms" if total is not None else ""
            print(f"{doc['file']}: {doc['status']}{timing} ({detail}) [{doc['model']['id']} on {doc['backend']}]")
            for finding in doc["findings"]:
                print(
                    f"  {finding['kind']:<20} tooth {finding['tooth_fdi'] or '-':>3} "
                    f"(universal {finding['tooth_universal'] or '-'}) "
                    f"confidence {finding['confidence']:.2f} bbox {finding['bbox']}"
                )
        print("AI output of a model bundle; not a clinical diagnosis.")
    return 1 if failed else 0
