"""Merkle claims of a disbursement, built exactly as OpenZeppelin's ``StandardMerkleTree`` (pure).

Each claim is ``(index, account, amount)``; its leaf is ``keccak256(bytes.concat(keccak256(abi.encode(index,
account, amount))))`` (the double hash OpenZeppelin uses against second-preimage attacks). The leaves are sorted by
hash and laid out as OpenZeppelin's array tree (leaves at the end, in reverse; each node the keccak256 of its two
children in sorted order), so the root is the one ``@openzeppelin/merkle-tree`` gives and every proof checks with
``MerkleProof.verify`` in :sol:`PayoutDistributor.claim`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from cloud_relay.chain.errors import ChainError

__all__ = ["Claim", "ClaimTree", "leaf_hash", "verify_claim"]


@dataclass(frozen=True)
class Claim:
    """What ``account`` may claim: ``amount`` minor units of one period's token, at position ``index``."""

    index: int
    account: str
    amount: int


def leaf_hash(claim: Claim) -> bytes:
    """The OpenZeppelin standard leaf of ``claim``."""
    inner = keccak(encode(["uint256", "address", "uint256"], [claim.index, claim.account, claim.amount]))
    return keccak(inner)


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


class ClaimTree:
    """The tree over a disbursement's claims (one per owner, indexes 0..n-1)."""

    def __init__(self, claims: Sequence[Claim]) -> None:
        if not claims:
            raise ChainError("a disbursement needs at least one claim")
        if sorted(c.index for c in claims) != list(range(len(claims))):
            raise ChainError("claim indexes must be 0..n-1, each once")
        self.claims = tuple(Claim(c.index, to_checksum_address(c.account), c.amount) for c in claims)
        hashed = sorted((leaf_hash(c), c.index) for c in self.claims)
        size = 2 * len(hashed) - 1
        tree: list[bytes] = [b""] * size
        self._position: dict[int, int] = {}
        for i, (leaf, index) in enumerate(hashed):
            tree[size - 1 - i] = leaf
            self._position[index] = size - 1 - i
        for i in range(size - 1 - len(hashed), -1, -1):
            tree[i] = _pair(tree[2 * i + 1], tree[2 * i + 2])
        self._tree = tree

    @property
    def root(self) -> bytes:
        return self._tree[0]

    @property
    def total(self) -> int:
        return sum(c.amount for c in self.claims)

    def proof(self, index: int) -> list[bytes]:
        """The sibling hashes from claim ``index``'s leaf to the root."""
        if index not in self._position:
            raise ChainError(f"no claim {index} in this disbursement")
        i, out = self._position[index], []
        while i > 0:
            out.append(self._tree[i + 1 if i % 2 else i - 1])
            i = (i - 1) // 2
        return out


def verify_claim(claim: Claim, proof: Sequence[bytes], root: bytes) -> bool:
    """OpenZeppelin ``MerkleProof.verify`` in Python (sorted pairs)."""
    node = leaf_hash(claim)
    for sibling in proof:
        node = _pair(node, sibling)
    return node == root
