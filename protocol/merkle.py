"""Merkle tree hash and inclusion proofs exactly as RFC 9162 (Certificate Transparency 2.0), section 2.1.

Leaf hash ``SHA-256(0x00 || data)``, interior node ``SHA-256(0x01 || left || right)``, the empty tree
``SHA-256("")``; a tree of ``n > 1`` leaves splits at the largest power of two below ``n``. Pure functions over
bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from protocol.errors import InclusionProofInvalid

__all__ = ["inclusion_proof", "leaf_hash", "node_hash", "root", "verify_inclusion"]


def leaf_hash(data: bytes) -> bytes:
    """The hash of one leaf."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash over leaf hashes ``leaves``.

    Bottom-up pairing that carries an odd last node up unchanged builds the same tree as RFC 9162's split at
    the largest power of two (the property tests check this against the recursive definition).
    """
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 ``PATH(index, leaves)``: the audit path from leaf ``index`` to the root."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} outside a tree of {len(leaves)}")
    lo, hi = 0, len(leaves)
    siblings: list[bytes] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            siblings.append(root(leaves[lo + k : hi]))
            hi = lo + k
        else:
            siblings.append(root(leaves[lo : lo + k]))
            lo = lo + k
    return siblings[::-1]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes) -> None:
    """Check an audit path (RFC 9162 section 2.1.3.2); :class:`InclusionProofInvalid` when it fails."""
    if not 0 <= index < size:
        raise InclusionProofInvalid(f"leaf index {index} is outside a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise InclusionProofInvalid("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != expected_root:
        raise InclusionProofInvalid("the proof does not lead to the settlement root")
