"""The wire contract between a box and the relay: what crosses it, and its pure checks.

Both ends import this package; it imports only the standard library, PyNaCl and :mod:`runtime` (for the one
module that writes files, ``keyfiles``). Modules, one concept each: ``errors`` (the exception tree),
``encoding`` (canonical JSON: the bytes that are hashed and signed), ``keys`` (algorithm-tagged keys, sealing
and signature checks), ``envelope`` (a signed envelope parsed once, typed), ``keyfiles`` (keys on disk),
``clock`` (integer milliseconds), ``records`` (strict field access), ``money`` (integer minor units),
``certificates`` (device certificates, requests, revocation lists), ``receipts`` (the receipt and its one
encoder), ``settlement`` (batches), ``merkle`` (RFC 9162 trees and proofs), ``grants`` (rights), ``shares``
(ownership tables), ``payout`` (exact integer splits), ``verify`` (the verifier the CLI and the relay share),
``capacity`` (spare-capacity messages), ``kinds`` (message kinds and command names) and ``topics`` (every MQTT
topic).
"""
