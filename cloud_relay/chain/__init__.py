"""The relay's ledger on an Ethereum-compatible chain (issue 19), off by default.

The contracts (Solidity sources in ``contracts/``, compiled artefacts in :mod:`cloud_relay.chain.artifacts`, built
by :mod:`cloud_relay.chain.compile`) record service rights (ERC-1155), fractional ownership of assets with
checkpoints, each verified settlement's Merkle root, and disbursements as Merkle claims. Their interface is agreed in
the contracts' NatSpec comments; the relay's side talks to them through web3.py.
"""
