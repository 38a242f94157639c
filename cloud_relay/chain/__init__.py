"""The relay's ledger on an Ethereum-compatible chain (issue 19), off by default.

The contracts (Solidity sources in ``contracts/``, compiled artefacts in :mod:`cloud_relay.chain.artifacts`, built
by :mod:`cloud_relay.chain.compile`) record service rights (ERC-1155), fractional ownership of assets with
checkpoints, each verified settlement's Merkle root, and disbursements as Merkle claims. Their interface is agreed in
the contracts' NatSpec comments; the relay's side talks to them through web3.py.
"""

import importlib
import sys


def _import_keeping_the_recursion_limit(name: str) -> None:
    """Import ``name`` and undo what it does to the interpreter's recursion limit.

    ``py_ecc``, which ``eth_account`` (and so web3.py) imports, raises the limit to 100000 on import. The relay
    process parses untrusted JSON (the HTTP API's bodies, devices' messages): with that limit a deeply nested body
    overflows the C stack and kills the relay instead of raising :class:`RecursionError`. Importing it here first,
    before any module of this package imports the Ethereum libraries, keeps the limit the relay started with.
    """
    limit = sys.getrecursionlimit()
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # a later eth_account without it: nothing to undo
    finally:
        sys.setrecursionlimit(limit)


_import_keeping_the_recursion_limit("py_ecc")
