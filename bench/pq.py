"""Hybrid (ed25519 + ML-DSA-65) against ed25519-only device identities: sign and verify rates, and sizes.

    .venv/bin/python -m bench.pq [--n 2000] [--batch 500] [--repeats 3]

For each kind of identity, over the same uses:

* ``sign``: the signatures alone, over the receipts' signing messages (ed25519; ed25519 then ML-DSA-65 for the
  hybrid): :meth:`protocol.keys.PrivateKey.sign`, what the book calls.
* ``book sign+persist``: :meth:`ReceiptBook.record_stream` (validate, rights, chain, encode, sign, insert, one
  fsync'd commit per batch), as ``bench.receipts`` measures it.
* ``verify``: :func:`protocol.verify.verify_receipts` over the exported envelopes (every signature, the
  certificate, sequence and chain), the pure verifier the relay runs, per CPU-second of the verifying thread
  (CPU-bound; wall-clock printed too).

The ratios are hybrid / ed25519 (below 1: the hybrid is slower). Sizes: a signature, a public key, a receipt
envelope and a certificate as canonical JSON.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.receipts import sample_uses
from edge.db import connect
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import DeviceIdentity, KeyFiles, load_identity, provision
from protocol.certificates import DeviceCertificate
from protocol.encoding import canonical_bytes, decode, signing_message
from protocol.keys import PrivateKey, generate_key
from protocol.receipts import RECEIPT
from protocol.verify import Trust, verify_certificates, verify_receipts

KINDS = ("ed25519", "hybrid")


def _rate(n: int, fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return n / (clock() - start)


def _identity(root: Path, manufacturer: PrivateKey, hybrid: bool) -> DeviceIdentity:
    files = KeyFiles(root / "keys")
    provision(files, manufacturer=manufacturer, hybrid=hybrid)
    identity = load_identity(files)
    assert identity is not None
    return identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="receipts per measurement")
    parser.add_argument("--batch", type=int, default=500, help="receipts per group-commit transaction")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    n: int = args.n
    batch: int = args.batch
    uses = sample_uses(n)
    manufacturer = generate_key()
    trust = Trust.of([manufacturer.public])
    best: dict[tuple[str, str], float] = {}
    sizes: dict[str, tuple[int, int, int, int]] = {}

    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-pq-") as tmp:
        root = Path(tmp)
        for kind in KINDS:
            identity = _identity(root / kind, manufacturer, hybrid=kind == "hybrid")
            keys = (identity.key, *identity.cosigners)
            conn = connect(root / kind / "book.db")
            book = ReceiptBook(identity)
            book.migrate(conn)
            for i in range(0, n, batch):
                book.record_batch(conn, uses[i : i + batch])
            exported = [decode(canonical_bytes(e)) for e in book.receipts(conn)]  # as the relay parses them
            conn.close()
            messages = [signing_message(RECEIPT, canonical_bytes(e["signed"])) for e in exported]
            certs = verify_certificates([identity.certificate], trust)
            envelope = exported[0]
            sizes[kind] = (
                sum(len(bytes.fromhex(s["sig"])) for s in envelope["signatures"]),
                sum(len(k.public.key) for k in keys),
                len(canonical_bytes(envelope)),
                len(canonical_bytes(identity.certificate)),
            )

            def sign_all(keys: tuple[PrivateKey, ...] = keys, messages: list[bytes] = messages) -> None:
                for message in messages:
                    for key in keys:
                        key.sign(message)

            def book_run(identity: DeviceIdentity = identity, kind: str = kind) -> float:
                db = connect(root / kind / f"run-{time.monotonic_ns()}.db")
                fresh = ReceiptBook(identity)
                fresh.migrate(db)
                start = time.perf_counter()
                for _ in fresh.record_stream(db, (uses[i : i + batch] for i in range(0, n, batch))):
                    pass  # each batch acknowledged after its commit
                rate = n / (time.perf_counter() - start)
                db.close()
                return rate

            def verify_all(exported: list[Any] = exported, certs: dict[str, DeviceCertificate] = certs) -> None:
                verified = verify_receipts(exported, certs, trust)
                assert len(verified) == n

            runs: dict[str, list[float]] = {"sign": [], "book": [], "verify": [], "verify cpu": []}
            for _ in range(args.repeats):  # best of each: the machine is shared
                runs["sign"].append(_rate(n, sign_all, time.thread_time))
                runs["book"].append(book_run())
                runs["verify"].append(_rate(n, verify_all))
                runs["verify cpu"].append(_rate(n, verify_all, time.thread_time))
            for name, values in runs.items():
                best[(kind, name)] = max(values)

    print(f"pq: n={n} batch={batch} best of {args.repeats} (ed25519-only vs hybrid ed25519 + ML-DSA-65)")
    for kind in KINDS:
        sig, public, envelope_len, cert_len = sizes[kind]
        print(f"  {kind:<8} sign                {best[(kind, 'sign')]:9.0f} /s   (signatures only, per CPU-second)")
        print(f"  {kind:<8} book sign+persist   {best[(kind, 'book')]:9.0f} /s   (group commit, {batch} per fsync)")
        print(
            f"  {kind:<8} verify              {best[(kind, 'verify cpu')]:9.0f} /s   (chain + signatures, per"
            f" CPU-second; {best[(kind, 'verify')]:.0f} /s wall-clock)"
        )
        print(
            f"  {kind:<8} sizes: signatures {sig} B, public keys {public} B, receipt envelope {envelope_len} B,"
            f" certificate {cert_len} B"
        )
    ratio = {name: best[("hybrid", name)] / best[("ed25519", name)] for name in ("sign", "book", "verify cpu")}
    print(f"ratio hybrid_sign_vs_ed25519 = {ratio['sign']:.3f}")
    print(f"ratio hybrid_book_sign_persist_vs_ed25519 = {ratio['book']:.3f}")
    print(f"ratio hybrid_verify_vs_ed25519 = {ratio['verify cpu']:.3f}")
    print(f"ratio hybrid_envelope_size_vs_ed25519 = {sizes['hybrid'][2] / sizes['ed25519'][2]:.1f}")


if __name__ == "__main__":
    main()
