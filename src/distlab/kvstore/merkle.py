"""Merkle trees over a token range: how two replicas find where they differ (anti-entropy).

What it implements
------------------
* **Anti-entropy with Merkle trees** (DeCandia et al., "Dynamo: Amazon's Highly Available
  Key-value Store", SOSP 2007, section 4.7 "Handling permanent failures: Replica
  synchronization"): "Dynamo uses Merkle trees ... each node maintains a separate Merkle tree for
  each key range (the set of keys covered by a virtual node) it hosts. This allows nodes to
  compare whether the keys within a key range are up-to-date. In this scheme, two nodes exchange
  the root of the Merkle tree corresponding to the key ranges that they host in common.
  Subsequently, using the tree traversal scheme described above the nodes determine if they have
  any differences and perform the appropriate synchronization action."
* **Merkle hash trees** (Merkle, "A Digital Signature Based on a Conventional Encryption
  Function", CRYPTO 1987): each inner node hashes its two children, so equal roots mean equal
  leaves, and a difference is found by descending only into subtrees whose hashes differ.
* Leaf and inner hashes are domain-separated as in Certificate Transparency (RFC 6962, 2.1):
  a leaf hashes a 0x00 byte before its contents, an inner node a 0x01 byte before its children,
  so no leaf contents can be passed off as a pair of children, or the other way round.

Pure: standard library and ``distlab.common.hashring``; no I/O, no clock.

Theory of operation
-------------------
A tree covers one ``TokenRange`` (start, end] of the ring (``distlab.common.hashring``; it may
wrap past the top of the circle, or be the full circle). The range is cut into 2**depth
contiguous leaves of equal width (within one token when the width is not a multiple of the leaf
count): the token at offset o past ``start`` (o = token - start - 1, modulo the circle, so
0 <= o < width) falls in leaf o * leaves // width. A key goes to the leaf of its token
(``key_token``, the same hash that places it on the ring), so keys that move together when the
ring changes, move together between leaves.

A leaf's hash is blake2b over its (key, digest) pairs in key order, each length-prefixed; the
digest is the key's ``versioning.digest``, which is equal on two replicas exactly when they hold
the same sibling set. An empty leaf hashes nothing but its 0x00 prefix, one fixed hash. An inner
node's hash is blake2b(0x01 || left || right). ``levels[0]`` is (root,), ``levels[depth]`` the
leaves, and node i of level l has children 2i and 2i + 1 on level l + 1.

``diff`` compares the roots; where two nodes differ it compares their children, level by level.
One differing key costs 1 + 2 * depth comparisons (the root, then both children at each level),
not 2**depth: the log-scale exchange Dynamo relies on (Merkle trees "help in reducing the
amount of data that needs to be transferred while checking for inconsistencies among
replicas"). ``DiffResult`` reports both
the leaves and the number of comparisons, so tests and traces can show it.

The exchange on the wire is one round trip: a node sends all its levels (``level_bytes``, read
back by ``from_levels``, which checks every inner node against its children). At the default
depth that is 2047 hashes of 16 bytes, 32 KiB; a chattier protocol could send one level at a
time, only the children of differing nodes (the loop in ``diff``), for depth round trips of
fewer bytes. For a study cluster one reply of a few KiB is simpler and fast enough.

What it leaves out
------------------
* Keeping trees up to date as writes arrive: a tree is built from scratch from the keys a caller
  lists, O(keys + 2**depth) per exchange. The upside: when ranges change (Dynamo 6.2: the trees
  "for the new ranges need to be recalculated"), nothing extra is needed.
* Per-vnode trees: the caller chooses the range; ``distlab.kvstore.node`` builds one tree over
  the full circle of the keys two nodes both replicate, which fits a small cluster.
* Synchronisation itself: the caller fetches and merges the sibling sets in the differing leaves.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from distlab.common.hashring import TOKEN_COUNT, TokenRange, key_token

# 2**10 = 1024 leaves: one exchange is 2047 hashes, 32 KiB, and a store of a million keys puts
# about a thousand keys in each leaf, so one differing key costs a thousand-key exchange rather
# than a million. Shallower trees send less but re-send more keys per difference.
DEPTH_DEFAULT = 10
# 2**16 leaves: 2**17 - 1 hashes, 2 MiB per tree, built and checked in well under a second. A
# deeper tree would be larger than most of the data sets it summarises.
DEPTH_MAX = 16
# blake2b-128, as versioning.digest: a 2**-64 chance of a collision after 2**32 comparisons.
HASH_BYTES = 16

_LEAF_PREFIX = b"\x00"
_INNER_PREFIX = b"\x01"
# Key length, then digest length, in front of each (key, digest) pair hashed into a leaf, so that
# no two different lists of pairs hash the same bytes.
_PAIR_LENGTHS = struct.Struct(">II")


def _leaf_hash(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    hasher = hashlib.blake2b(_LEAF_PREFIX, digest_size=HASH_BYTES)
    for key, key_digest in pairs:
        hasher.update(_PAIR_LENGTHS.pack(len(key), len(key_digest)))
        hasher.update(key)
        hasher.update(key_digest)
    return hasher.digest()


def _inner_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.blake2b(_INNER_PREFIX + left + right, digest_size=HASH_BYTES).digest()


def _empty_subtree_hashes() -> tuple[bytes, ...]:
    # Entry h is the hash of a subtree of height h with no keys at all. Building uses it to skip
    # hashing the empty parts of a sparse tree: most of a deep tree, for a small data set.
    hashes = [_leaf_hash(())]
    for _ in range(DEPTH_MAX):
        hashes.append(_inner_hash(hashes[-1], hashes[-1]))
    return tuple(hashes)


EMPTY_SUBTREE_HASHES = _empty_subtree_hashes()
# The hash of a leaf with no keys.
EMPTY_LEAF_HASH = EMPTY_SUBTREE_HASHES[0]


@dataclass(frozen=True, slots=True)
class DiffResult:
    """The leaves whose hashes differ (ascending), and how many node pairs were compared."""

    leaves: list[int]
    nodes_compared: int


@dataclass(frozen=True, slots=True)
class MerkleTree:
    """A Merkle tree of 2**depth leaves over ``token_range``; see the module docstring.

    ``levels[0]`` is (root,), ``levels[depth]`` the leaves. Make one with ``build`` (from keys)
    or ``from_levels`` (from a peer's reply).
    """

    token_range: TokenRange
    depth: int
    levels: tuple[tuple[bytes, ...], ...]

    def __post_init__(self) -> None:
        _check_shape(self.token_range, self.depth)
        if len(self.levels) != self.depth + 1:
            raise ValueError(f"a tree of depth {self.depth} has {self.depth + 1} levels")
        for level_index, level in enumerate(self.levels):
            if len(level) != 1 << level_index:
                raise ValueError(
                    f"level {level_index} has {len(level)} nodes, not {1 << level_index}"
                )
            if any(len(node_hash) != HASH_BYTES for node_hash in level):
                raise ValueError(f"level {level_index} holds a hash that is not {HASH_BYTES} bytes")

    @classmethod
    def build(
        cls,
        token_range: TokenRange,
        items: Iterable[tuple[bytes, bytes]],
        depth: int = DEPTH_DEFAULT,
    ) -> MerkleTree:
        """The tree of ``items``, (key, digest) pairs, each key once.

        Every key must lie in ``token_range``: a key outside raises ValueError rather than being
        skipped, because a caller that passes one has filtered with a different ring than it
        thinks, and the two replicas would be comparing different key sets.
        """
        _check_shape(token_range, depth)
        leaf_count = 1 << depth
        pairs_by_leaf: dict[int, list[tuple[bytes, bytes]]] = {}
        seen_keys: set[bytes] = set()
        for key, key_digest in items:
            if key in seen_keys:
                raise ValueError(f"key {key!r} is listed twice")
            seen_keys.add(key)
            token = key_token(key)
            if not token_range.contains(token):
                raise ValueError(f"key {key!r} (token {token}) is outside {token_range}")
            leaf = _leaf_index(token_range, leaf_count, token)
            pairs_by_leaf.setdefault(leaf, []).append((key, key_digest))
        leaves = [EMPTY_LEAF_HASH] * leaf_count
        for leaf, pairs in pairs_by_leaf.items():
            pairs.sort()
            leaves[leaf] = _leaf_hash(pairs)
        return cls(token_range, depth, _levels_above(leaves, depth))

    @classmethod
    def from_levels(
        cls, token_range: TokenRange, depth: int, levels: Sequence[bytes]
    ) -> MerkleTree:
        """The tree a peer sent as ``level_bytes()``: each level its hashes back to back.

        ValueError if the sizes are wrong or an inner node is not the hash of its children (a
        corrupt reply could otherwise hide differences below an equal-looking node).
        """
        _check_shape(token_range, depth)
        if len(levels) != depth + 1:
            raise ValueError(f"a tree of depth {depth} has {depth + 1} levels, got {len(levels)}")
        split: list[tuple[bytes, ...]] = []
        for level_index, level_bytes in enumerate(levels):
            expected_bytes = (1 << level_index) * HASH_BYTES
            if len(level_bytes) != expected_bytes:
                raise ValueError(
                    f"level {level_index} is {len(level_bytes)} bytes, not {expected_bytes}"
                )
            split.append(
                tuple(
                    bytes(level_bytes[offset : offset + HASH_BYTES])
                    for offset in range(0, expected_bytes, HASH_BYTES)
                )
            )
        rebuilt = _levels_above(list(split[depth]), depth)
        for level_index in range(depth):
            if rebuilt[level_index] != split[level_index]:
                raise ValueError(f"level {level_index} does not match the hashes of its children")
        return cls(token_range, depth, rebuilt)

    def level_bytes(self) -> tuple[bytes, ...]:
        """Each level's hashes back to back, root first: the form ``from_levels`` reads."""
        return tuple(b"".join(level) for level in self.levels)

    @property
    def root(self) -> bytes:
        return self.levels[0][0]

    @property
    def leaf_count(self) -> int:
        return 1 << self.depth

    def leaf_of(self, key: bytes) -> int:
        """The leaf a key falls in; ValueError if its token is outside the tree's range."""
        return self.leaf_of_token(key_token(key))

    def leaf_of_token(self, token: int) -> int:
        if not self.token_range.contains(token):
            raise ValueError(f"token {token} is outside {self.token_range}")
        return _leaf_index(self.token_range, self.leaf_count, token)

    def leaf_range(self, index: int) -> TokenRange:
        """The tokens of leaf ``index``: (start, end], like every range on the ring.

        Leaf i holds the offsets o (past the range's start) with i * width <= o * leaves
        < (i + 1) * width, that is ceil(i * width / leaves) <= o < ceil((i + 1) * width / leaves).
        """
        if not 0 <= index < self.leaf_count:
            raise ValueError(f"leaf index must be in 0..{self.leaf_count - 1}, got {index}")
        width = self.token_range.width
        first_offset = _ceiling_division(index * width, self.leaf_count)
        end_offset = _ceiling_division((index + 1) * width, self.leaf_count)
        start = self.token_range.start
        # Offset o is the token start + 1 + o, so the leaf is (start + first, start + end].
        return TokenRange((start + first_offset) % TOKEN_COUNT, (start + end_offset) % TOKEN_COUNT)

    def diff(self, other: MerkleTree) -> DiffResult:
        """The leaves where the trees differ, descending only into differing subtrees.

        Also callable as ``MerkleTree.diff(a, b)``, or as the module's ``diff(a, b)``.
        """
        if (self.token_range, self.depth) != (other.token_range, other.depth):
            raise ValueError(
                f"cannot compare a tree over {self.token_range} of depth {self.depth} with one "
                f"over {other.token_range} of depth {other.depth}"
            )
        nodes_compared = 1
        differing = [0] if self.root != other.root else []
        for level_index in range(1, self.depth + 1):
            mine, theirs = self.levels[level_index], other.levels[level_index]
            children = [child for parent in differing for child in (2 * parent, 2 * parent + 1)]
            nodes_compared += len(children)
            differing = [child for child in children if mine[child] != theirs[child]]
        return DiffResult(differing, nodes_compared)


def diff(a: MerkleTree, b: MerkleTree) -> DiffResult:
    """``a.diff(b)``: the differing leaves of two trees over the same range and depth."""
    return a.diff(b)


def _levels_above(leaves: list[bytes], depth: int) -> tuple[tuple[bytes, ...], ...]:
    """All the levels, root first, of a tree with these leaves."""
    levels = [tuple(leaves)]
    below = leaves
    for height in range(depth):
        empty_child, empty_parent = EMPTY_SUBTREE_HASHES[height], EMPTY_SUBTREE_HASHES[height + 1]
        above = []
        for index in range(0, len(below), 2):
            left, right = below[index], below[index + 1]
            if left == empty_child and right == empty_child:
                above.append(empty_parent)
            else:
                above.append(_inner_hash(left, right))
        levels.append(tuple(above))
        below = above
    levels.reverse()
    return tuple(levels)


def _leaf_index(token_range: TokenRange, leaf_count: int, token: int) -> int:
    # The range is (start, end]: the first token in it is start + 1, at offset 0.
    offset = (token - token_range.start - 1) % TOKEN_COUNT
    return offset * leaf_count // token_range.width


def _ceiling_division(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _check_shape(token_range: TokenRange, depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(f"depth must be an int, got {depth!r}")
    if not 0 <= depth <= DEPTH_MAX:
        raise ValueError(f"depth must be in 0..DEPTH_MAX={DEPTH_MAX}, got {depth}")
    # Every leaf must hold at least one token: a range on the ring cannot be empty.
    if token_range.width < 1 << depth:
        raise ValueError(
            f"{token_range} holds {token_range.width} tokens, fewer than the {1 << depth} "
            f"leaves of a depth-{depth} tree"
        )


__all__ = [
    "DEPTH_DEFAULT",
    "DEPTH_MAX",
    "EMPTY_LEAF_HASH",
    "EMPTY_SUBTREE_HASHES",
    "HASH_BYTES",
    "DiffResult",
    "MerkleTree",
    "diff",
]
