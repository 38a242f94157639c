"""Receipts: sign + durably persist, and verify, per second, beside raw PyNaCl and raw SQLite in one run.

    .venv/bin/python -m bench.receipts [--n 5000] [--batch 1000] [--repeats 7]

* ``pynacl sign`` / ``pynacl verify``: PyNaCl's ``SigningKey.sign`` / ``VerifyKey.verify`` over the same canonical
  receipt bytes our book signs (the floor for any signed receipt).
* ``sqlite insert``: raw inserts of rows of the same size into a WAL database with ``synchronous=FULL``, the
  same group-commit batch per transaction (the floor for any durable row).
* ``book sign+persist``: :meth:`ReceiptBook.record_stream`: validate, consume rights, hash-chain, canonical
  encode, sign, insert, one fsync'd commit per batch, the next batch signed while the previous one commits;
  each batch is acknowledged only after its commit (durable).
* ``book hook``: :meth:`ReceiptBook.record` inside a caller's own transaction, one commit per use (the clinical
  path: fsync-bound, for information).
* ``verify``: :func:`edge.receipts.verify.verify_receipts` over the exported envelopes (signature, certificate,
  sequence, chain), the pure verifier the relay runs. Verification is CPU-bound on both sides, so its ratio is
  taken per CPU-second of the verifying thread (the wall-clock ratio is printed too).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nacl.signing

from edge.db import DB_FILENAME, connect, transaction
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import KeyFiles, load_identity, provision
from protocol.encoding import canonical_bytes, decode, signing_message
from protocol.keys import generate_key
from protocol.receipts import RECEIPT, Use
from protocol.verify import Trust, verify_certificates, verify_receipts


def sample_uses(n: int) -> list[Use]:
    """``n`` analyses of distinct studies: the receipts every receipt benchmark signs."""
    return [
        Use(
            kind="analysis",
            bundle_id="btt-reference-dental-pano",
            bundle_version="0.1.0",
            output_digest="sha256:" + f"{i:064x}",
            study_uid=f"1.2.826.0.1.3680043.8.498.{i}",
        )
        for i in range(n)
    ]


def _rate(n: int, fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return n / (clock() - start)


_NAMES = (
    "pynacl sign",
    "book sign+persist",
    "pynacl verify",
    "verify",
    "pynacl verify cpu",
    "verify cpu",
    "sqlite insert",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="receipts per measurement")
    parser.add_argument("--batch", type=int, default=1000, help="receipts per group-commit transaction")
    parser.add_argument("--repeats", type=int, default=7, help="best of this many runs")
    args = parser.parse_args()
    n, batch = args.n, args.batch

    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-receipts-") as tmp:
        root = Path(tmp)
        manufacturer = generate_key()
        files = KeyFiles(root / "keys")
        provision(files, manufacturer=manufacturer)
        identity = load_identity(files)
        assert identity is not None
        uses = sample_uses(n)

        conn = connect(root / DB_FILENAME)
        book = ReceiptBook(identity)
        book.migrate(conn)
        for i in range(0, n, batch):
            book.record_batch(conn, uses[i : i + batch])
        envelopes = book.receipts(conn)
        bodies = [canonical_bytes(e["signed"]) for e in envelopes]
        sigs = [bytes.fromhex(e["signatures"][0]["sig"]) for e in envelopes]
        messages = [signing_message(RECEIPT, b) for b in bodies]
        sk = nacl.signing.SigningKey(identity.key.secret)
        vk = sk.verify_key
        trust = Trust.of([manufacturer.public])
        certs = verify_certificates([identity.certificate], trust)
        exported = [decode(canonical_bytes(e)) for e in envelopes]  # as the relay parses them

        def book_run() -> None:  # validate, rights, chain, encode, sign, insert; one fsync'd commit per batch
            db = connect(root / f"book-{time.monotonic_ns()}.db")
            fresh = ReceiptBook(identity)
            fresh.migrate(db)
            start = time.perf_counter()
            for _ in fresh.record_stream(db, (uses[i : i + batch] for i in range(0, n, batch))):
                pass  # each batch is acknowledged here, after its transaction committed
            timings["book sign+persist"].append(n / (time.perf_counter() - start))
            db.close()

        def sqlite_run() -> None:  # same rows, same batch, same pragmas
            db = connect(root / f"raw-{time.monotonic_ns()}.db")
            db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, hash TEXT, body BLOB, sig BLOB)")
            rows = [(i + 1, "0" * 64, bodies[i], sigs[i]) for i in range(n)]
            start = time.perf_counter()
            for i in range(0, n, batch):
                with transaction(db):
                    db.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows[i : i + batch])
            timings["sqlite insert"].append(n / (time.perf_counter() - start))
            db.close()

        timings: dict[str, list[float]] = {name: [] for name in _NAMES}
        for _ in range(args.repeats):  # interleaved, best of each: the box is shared, load comes and goes
            timings["pynacl sign"].append(_rate(n, lambda: [sk.sign(m) for m in messages]))
            book_run()
            raw_verify = lambda: [vk.verify(m, s) for m, s in zip(messages, sigs, strict=True)]  # noqa: E731
            our_verify = lambda: verify_receipts(exported, certs, trust)  # noqa: E731
            timings["pynacl verify"].append(_rate(n, raw_verify))
            timings["verify"].append(_rate(n, our_verify))
            timings["pynacl verify cpu"].append(_rate(n, raw_verify, time.thread_time))
            timings["verify cpu"].append(_rate(n, our_verify, time.thread_time))
            sqlite_run()

        hook_n = min(n, 300)  # the hook: one caller transaction, so one fsync, per use
        hconn = connect(root / "hook.db")
        hbook = ReceiptBook(identity)
        hbook.migrate(hconn)

        def hook_run() -> None:
            for use in uses[:hook_n]:
                with transaction(hconn):
                    hbook.record(hconn, use)

        hook = _rate(hook_n, hook_run)

    best = {name: max(values) for name, values in timings.items()}
    sign_persist, pynacl_sign = best["book sign+persist"], best["pynacl sign"]
    verify, pynacl_verify, sqlite_insert = best["verify"], best["pynacl verify"], best["sqlite insert"]
    print(f"receipts: n={n} batch={batch} best of {args.repeats}")
    print(f"  pynacl sign            {pynacl_sign:10.0f} /s")
    print(f"  book sign+persist      {sign_persist:10.0f} /s   (group commit, {batch} per fsync'd transaction)")
    print(f"  sqlite insert          {sqlite_insert:10.0f} /s   (raw rows, same batch and durability)")
    print(f"  book hook              {hook:10.0f} /s   (one commit per use, fsync-bound)")
    print(f"  pynacl verify          {pynacl_verify:10.0f} /s   ({best['pynacl verify cpu']:.0f} per CPU-second)")
    print(f"  verify (chain + sigs)  {verify:10.0f} /s   ({best['verify cpu']:.0f} per CPU-second)")
    print(f"ratio sign_persist_vs_pynacl_sign = {sign_persist / pynacl_sign:.2f}")
    print(f"ratio sign_persist_vs_sqlite_insert = {sign_persist / sqlite_insert:.2f}")
    print(f"ratio verify_wallclock_vs_pynacl_verify = {verify / pynacl_verify:.2f}")
    # CPU-bound on both sides: per CPU-second of the verifying thread, which the other load on a shared box
    # disturbs far less than wall-clock time.
    print(f"ratio verify_vs_pynacl_verify = {best['verify cpu'] / best['pynacl verify cpu']:.2f}")


if __name__ == "__main__":
    main()
