"""``btt-ota``: the manufacturer's tool for the signed model-update repository.

::

    btt-ota init --repo DIR --keys KEYDIR [--root-keys 3 --root-threshold 2 ...]
    btt-ota keys create --keys KEYDIR                      a new key (prints its id; not trusted until rotated in)
    btt-ota add BUNDLE --repo DIR --keys KEYDIR [--percent P] [--group G ...]
    btt-ota publish --repo DIR --keys KEYDIR [--role timestamp|snapshot|targets]   re-sign before expiry
    btt-ota rotate ROLE --repo DIR --keys KEYDIR [--add-key PEM ...] [--remove-key KEYID ...] [--threshold N]
    btt-ota announce MODEL_ID --repo DIR --mqtt mqtt://btt-relay:PW@broker --devices FILE   staged rollout
    btt-ota status --repo DIR

``DIR`` is what the web server serves (``metadata/``, ``targets/``); give devices ``DIR/metadata/1.root.json``
(or any later root) as ``[ota] trusted_root``. Signing uses every private key of a role found in ``KEYDIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from ota.errors import OtaError, PublishError
from ota.repository import DEFAULT_EXPIRY, ROLES, KeyStore, Repository, bundle_archive, target_path
from ota.rollout import RolloutPolicy

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="btt-ota", description="Signed model-update repository (TUF).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def repo_args(p: argparse.ArgumentParser, keys: bool = True) -> None:
        p.add_argument("--repo", type=Path, required=True, metavar="DIR", help="the repository directory")
        if keys:
            p.add_argument("--keys", type=Path, required=True, metavar="KEYDIR", help="private keys (<keyid>.pem)")

    init = sub.add_parser("init", help="create keys and a new repository (root v1, empty targets)")
    repo_args(init)
    for role in ROLES:
        init.add_argument(f"--{role}-keys", type=int, default=1, metavar="N", help=f"{role} keys (default 1)")
        init.add_argument(f"--{role}-threshold", type=int, default=1, metavar="N", help="signatures needed")
    init.set_defaults(func=_init)

    keys = sub.add_parser("keys", help="key management")
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_actions.add_parser("create", help="a new Ed25519 key in KEYDIR; prints its key id")
    create.add_argument("--keys", type=Path, required=True, metavar="KEYDIR")
    create.set_defaults(func=_key_create)

    add = sub.add_parser("add", help="publish a bundle (directory or tar archive) as its model's current bundle")
    add.add_argument("bundle", type=Path, metavar="BUNDLE")
    repo_args(add)
    add.add_argument("--percent", type=int, default=100, help="share of devices that take it (default 100)")
    add.add_argument("--group", action="append", default=[], metavar="NAME", help="rollout group that takes it")
    add.set_defaults(func=_add)

    publish = sub.add_parser("publish", help="re-sign metadata with fresh expiry (the timestamp at least daily)")
    repo_args(publish)
    publish.add_argument("--role", action="append", choices=("timestamp", "snapshot", "targets"), default=[])
    publish.add_argument("--timestamp-days", type=float, default=DEFAULT_EXPIRY["timestamp"].days)
    publish.set_defaults(func=_publish)

    rotate = sub.add_parser("rotate", help="change a role's keys or threshold in a new root version")
    rotate.add_argument("role", choices=ROLES)
    repo_args(rotate)
    rotate.add_argument("--add-key", action="append", type=Path, default=[], metavar="PEM")
    rotate.add_argument("--remove-key", action="append", default=[], metavar="KEYID")
    rotate.add_argument("--threshold", type=int)
    rotate.set_defaults(func=_rotate)

    announce = sub.add_parser("announce", help="send ota-available to the devices a bundle's rollout reaches")
    announce.add_argument("model_id", metavar="MODEL_ID")
    repo_args(announce, keys=False)
    announce.add_argument("--mqtt", required=True, metavar="URL", help="mqtt[s]://btt-relay:PASSWORD@host:port")
    announce.add_argument("--devices", type=Path, required=True, metavar="FILE", help="lines: DEVICE_ID [GROUP ...]")
    announce.add_argument("--ca-file", default="", metavar="PEM", help="CA of an mqtts broker")
    announce.set_defaults(func=_announce)

    status = sub.add_parser("status", help="versions, expiry and targets of the repository")
    repo_args(status, keys=False)
    status.set_defaults(func=_status)
    return parser


def _init(args: argparse.Namespace) -> int:
    repo = Repository.create(
        args.repo,
        KeyStore(args.keys),
        key_counts={role: getattr(args, f"{role}_keys") for role in ROLES},
        thresholds={role: getattr(args, f"{role}_threshold") for role in ROLES},
    )
    print(f"repository created; give devices {repo.metadata_dir / '1.root.json'} as [ota] trusted_root")
    return 0


def _key_create(args: argparse.Namespace) -> int:
    print(KeyStore(args.keys).create().public_key.keyid)
    return 0


def _add(args: argparse.Namespace) -> int:
    archive, model_id, version = bundle_archive(args.bundle)
    try:
        rollout = RolloutPolicy(percent=args.percent, groups=tuple(args.group))
    except ValueError as exc:
        raise SystemExit(f"btt-ota: error: {exc}") from None
    info = Repository(args.repo, KeyStore(args.keys)).add_bundle(archive, model_id, version, rollout=rollout)
    print(f"added {info.path}: {model_id} {version}, {info.length} bytes, sha256 {info.hashes['sha256']}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    expiry = {**DEFAULT_EXPIRY, "timestamp": timedelta(days=args.timestamp_days)}
    Repository(args.repo, KeyStore(args.keys)).publish(expiry, roles=args.role or ["timestamp"])
    print("published")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    keys = KeyStore(args.keys)
    added = [keys.load(path).public_key for path in args.add_key]
    version = Repository(args.repo, keys).rotate(args.role, add=added, remove=args.remove_key, threshold=args.threshold)
    print(f"root version {version} published")
    return 0


def _announce(args: argparse.Namespace) -> int:
    from ota.announce import announce, parse_devices, select_devices

    try:
        path = target_path(args.model_id)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    info = Repository(args.repo, KeyStore(Path())).load("targets").signed.targets.get(path)
    if info is None:
        raise PublishError(f"the repository has no bundle for {args.model_id}")
    custom = info.custom or {}
    try:
        devices = parse_devices(args.devices.read_text(encoding="utf-8"))
        chosen = select_devices(devices, RolloutPolicy.from_json(custom.get("rollout")))
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot select devices: {exc}") from exc
    sent = announce(args.mqtt, chosen, args.model_id, str(custom.get("version", "")), ca_file=args.ca_file)
    print(json.dumps({"devices": chosen, "acknowledged": sent, "of": len(devices)}))
    return 0 if sent == len(chosen) else 1


def _status(args: argparse.Namespace) -> int:
    repo = Repository(args.repo, KeyStore(Path()))
    doc: dict[str, object] = {}
    for role in ROLES:
        signed = repo.load(role).signed
        doc[role] = {"version": signed.version, "expires": signed.expires.isoformat()}
    targets = repo.load("targets").signed.targets
    doc["bundles"] = {path: {"length": t.length, **(t.custom or {})} for path, t in sorted(targets.items())}
    print(json.dumps(doc, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``btt-ota``."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except OtaError as exc:
        print(f"btt-ota: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
