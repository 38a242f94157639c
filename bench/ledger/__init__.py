"""Ledger: gas and transactions per receipt with Merkle anchoring, against posting every receipt on chain.

    .venv/bin/python -m bench.ledger [--settlements 100] [--naive-sample 200] [--doc docs/scaling.md]

Against a real anvil (``tests.anvil.Anvil``, Foundry's node, on a free loopback port, with EIP-7825's per-transaction
gas cap of 2^24 enforced), the committed artefacts of ``SettlementAnchor`` and ``NaiveReceiptLog``
(:func:`cloud_relay.chain.artifacts.load`) are deployed and driven from anvil's first development account:

* ``anchorMany``: a transaction anchoring ``--settlements`` settlements, each an RFC 9162 root
  (:func:`protocol.merkle.root`) over N receipts, N = 100 / 1,000 / 10,000; and the most settlements one
  transaction can hold under the cap;
* ``anchor``: one settlement per transaction (what the relay's chain module sends today);
* the naive peer, ``NaiveReceiptLog.post``: one transaction per receipt, measured on a sample of
  ``--naive-sample`` receipts and extrapolated linearly to N (every post writes one new slot: the cost is flat).

It prints gas and transactions per receipt, tx latency and throughput on anvil, ``ratio <what> = <number>`` lines
(peer gas / our gas, higher is better) and the month on paper for 15,000 and 500,000 devices
(:mod:`bench.ledger.paper`); with ``--doc`` it rewrites that file's section "Ledger" (appended if absent).
"""
