"""``btt-edge provision``: give the box its device identity, and the manufacturer's side of it.

On the box::

    btt-edge provision --data-dir DIR --dev                       # demo/tests: DEVELOPMENT manufacturer key
    btt-edge provision --data-dir DIR --manufacturer-key M.key    # factory line: certify on the spot
    btt-edge provision --data-dir DIR                             # key + request; send keys/device.request.json
    btt-edge provision --data-dir DIR --install-certificate CERT --trust M.pub
    btt-edge provision --data-dir DIR --rotate --manufacturer-key M.key   # new device key, old cert retired
    btt-edge provision --data-dir DIR --hybrid --manufacturer-key M.key   # hybrid: ed25519 + ML-DSA-65 keys
    btt-edge provision --data-dir DIR --rotate --hybrid --manufacturer-key M.key  # an existing box goes hybrid

A hybrid identity (``--hybrid``, the post-quantum option) signs every receipt and settlement with both an ed25519
and an ML-DSA-65 key; its certificate names both and verifiers require both signatures. ``--hybrid`` goes with
every way of provisioning above (``--dev``, ``--manufacturer-key``, or a request for the manufacturer); the
manufacturer's key stays ed25519.

At the manufacturer::

    btt-edge provision --new-manufacturer-key M.key               # writes M.key (0600) and M.key.pub
    btt-edge provision --sign-request REQ --manufacturer-key M.key --out CERT
    btt-edge provision --revoke KEYID [KEYID ...] --number N --manufacturer-key M.key --out REVOKED.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge.cli.common import add_config_args, config_from_args

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``provision`` command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "provision",
        help="create the device identity (key, study salt, certificate) or act as the manufacturer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dev", action="store_true", help="sign with a DEVELOPMENT manufacturer key made here")
    mode.add_argument("--install-certificate", type=Path, metavar="CERT", help="install a signed certificate")
    mode.add_argument("--new-manufacturer-key", type=Path, metavar="FILE", help="generate a manufacturer key")
    mode.add_argument("--sign-request", type=Path, metavar="REQ", help="manufacturer: certify a device request")
    mode.add_argument("--revoke", nargs="+", metavar="KEYID", help="manufacturer: sign a revocation list")
    parser.add_argument(
        "--rotate", action="store_true", help="replace the device key (with --dev or --manufacturer-key)"
    )
    parser.add_argument(
        "--hybrid", action="store_true", help="hybrid device identity: ed25519 + ML-DSA-65 keys, both sign everything"
    )
    parser.add_argument("--manufacturer-key", type=Path, metavar="FILE", help="manufacturer private key")
    parser.add_argument("--trust", type=Path, metavar="PUBKEY", help="manufacturer public key (with --install-)")
    parser.add_argument("--device-id", help="device identifier (default: btt-<key id prefix>)")
    parser.add_argument("--valid-days", type=int, metavar="N", help="certificate validity (default: no expiry)")
    parser.add_argument("--number", type=int, default=1, help="revocation list number (increases each time)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="output file (certificate or revocation list)")
    parser.set_defaults(func=_provision)


def _provision(args: argparse.Namespace) -> int:
    from edge.errors import IdentityError
    from edge.receipts.identity import dev_manufacturer_key, install_certificate, load_identity, provision, rotate
    from edge.receipts.service import DEV_WARNING, key_files
    from protocol.certificates import issue_certificate, issue_revocations
    from protocol.clock import now_ms
    from protocol.encoding import canonical_bytes, decode
    from protocol.keyfiles import load_private_key, load_public_key, save_private_key, save_public_key
    from protocol.keys import PrivateKey, generate_key
    from runtime.durable import atomic_write_bytes

    def need(value: Path | None, flag: str) -> Path:
        if value is None:
            raise IdentityError(f"{flag} is required here")
        return value

    if args.new_manufacturer_key is not None:
        key = generate_key()
        save_private_key(args.new_manufacturer_key, key)
        save_public_key(args.new_manufacturer_key.with_name(args.new_manufacturer_key.name + ".pub"), key.public)
        print(f"manufacturer key {key.keyid} written to {args.new_manufacturer_key} (+ .pub); keep it offline")
        return 0
    if args.sign_request is not None:
        manufacturer = load_private_key(need(args.manufacturer_key, "--manufacturer-key"))
        request = decode(args.sign_request.read_bytes())
        issued = now_ms()
        cert = issue_certificate(request, manufacturer, serial=issued, issued_ms=issued, valid_days=args.valid_days)
        atomic_write_bytes(need(args.out, "--out"), canonical_bytes(cert) + b"\n")
        print(f"certificate for {cert['signed']['device']}{_pq(cert)} written to {args.out}")
        return 0
    if args.revoke is not None:
        manufacturer = load_private_key(need(args.manufacturer_key, "--manufacturer-key"))
        revocations = issue_revocations(manufacturer, list(args.revoke), number=args.number, issued_ms=now_ms())
        atomic_write_bytes(need(args.out, "--out"), canonical_bytes(revocations) + b"\n")
        print(f"revocation list {args.number} ({len(args.revoke)} keys) written to {args.out}")
        return 0

    config = config_from_args(args)
    files = key_files(config)
    # the agent's IdentityWatch reads the certificate every check_interval_s: no restart needed
    live = f"a running agent takes it within {config.receipts.check_interval_s:g} s and signs the uses it parked"
    if args.install_certificate is not None:
        cert = decode(args.install_certificate.read_bytes())
        parsed = install_certificate(files, cert, load_public_key(need(args.trust, "--trust")))
        print(f"certificate installed: device {parsed.device_id}, key {parsed.key.keyid}")
        print(live)
        return 0
    signer: PrivateKey | None = None
    if args.dev:
        banner = "!" * 78
        print(f"{banner}\n!! WARNING: {DEV_WARNING}\n{banner}", file=sys.stderr)
        signer = dev_manufacturer_key(files)
    elif args.manufacturer_key is not None:
        signer = load_private_key(args.manufacturer_key)
    if args.rotate:
        if signer is None:
            raise IdentityError("--rotate needs the manufacturer: --dev or --manufacturer-key")
        rotated = rotate(files, signer, valid_days=args.valid_days, hybrid=args.hybrid)
        print(f"key rotated: device {rotated['signed']['device']}, new key {rotated['signed']['keyid']}{_pq(rotated)}")
        print(f"a running agent signs with the new key within {config.receipts.check_interval_s:g} s")
        return 0
    existing = load_identity(files)
    if existing is not None:
        print(f"already provisioned: device {existing.device_id}, key {existing.key.keyid}{_pq(existing.certificate)}")
        if args.hybrid and existing.pq_key is None:
            print("this identity is ed25519-only; `--rotate --hybrid` with the manufacturer key makes it hybrid")
            return 1
        return 0
    installed = provision(
        files, device_id=args.device_id, manufacturer=signer, valid_days=args.valid_days, hybrid=args.hybrid
    )
    if installed is None:
        kind = "device keys (ed25519 + ML-DSA-65)" if files.pq_key.exists() else "device key"
        print(f"{kind} created; send {files.request} to the manufacturer, then --install-certificate")
        return 0
    print(f"provisioned: device {installed['signed']['device']}, key {installed['signed']['keyid']}{_pq(installed)}")
    print(live)
    if args.dev:
        print(f"DEVELOPMENT manufacturer public key (use as --trust): {files.dev_manufacturer_public}")
    return 0


def _pq(certificate: dict[str, Any]) -> str:
    """``", ML-DSA-65 key <id> (hybrid)"`` for a hybrid certificate, nothing for an ed25519-only one."""
    pq_keyid = certificate["signed"].get("pq_keyid")
    return "" if pq_keyid is None else f", ML-DSA-65 key {pq_keyid} (hybrid)"
