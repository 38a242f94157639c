"""Service-right receipts: device identity, rights, signed hash-chained receipts, settlements and payouts.

Modules, one concept each: ``encoding`` (canonical JSON), ``keys`` (algorithm-tagged keys, envelopes),
``identity`` (device key, certificate, study salt, rotation), ``records`` (strict field access), ``money``
(integer minor units of a currency), ``grants`` (rights and local balances), ``shares`` (ownership tables),
``receipts`` (the receipt and its chain), ``merkle`` (RFC 9162 tree and proofs), ``settlement`` (batches),
``book`` (the durable receipt book: the hook other components call), ``verify`` (the pure verifier the CLI and
the relay share), ``payout`` (exact integer splits), ``service`` (the agent's settlement service).
"""
