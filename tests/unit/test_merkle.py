"""Pure tests of the anti-entropy Merkle trees (distlab.kvstore.merkle); no event loop, no I/O.

References: Dynamo 2007, 4.7 ("two nodes exchange the root of the Merkle tree corresponding to
the key ranges that they host in common"); Merkle 1987; RFC 6962, 2.1 (leaf and node prefixes).

The oracle below puts keys in leaves by walking the leaf ranges linearly (``leaf_range`` and
``TokenRange.contains``), sharing no code with the tree's offset arithmetic.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.common.hashring import TOKEN_COUNT, TOKEN_MAX, TokenRange, key_token
from distlab.kvstore.merkle import (
    DEPTH_DEFAULT,
    DEPTH_MAX,
    EMPTY_LEAF_HASH,
    HASH_BYTES,
    DiffResult,
    MerkleTree,
    diff,
)

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None)
FULL_CIRCLE = TokenRange(0, 0)
KEY_COUNT = 2000


def key_digest(key: bytes, version: int = 0) -> bytes:
    """A stand-in for versioning.digest: any 16 bytes that change with the stored set."""
    return hashlib.blake2b(key + b"/%d" % version, digest_size=16).digest()


def items_for(keys: list[bytes], version: int = 0) -> list[tuple[bytes, bytes]]:
    return [(key, key_digest(key, version)) for key in keys]


def many_keys(count: int = KEY_COUNT) -> list[bytes]:
    return [b"key-%d" % index for index in range(count)]


def oracle_leaf(tree: MerkleTree, key: bytes) -> int:
    token = key_token(key)
    matches = [i for i in range(tree.leaf_count) if tree.leaf_range(i).contains(token)]
    assert len(matches) == 1, f"token {token} is in leaves {matches}"
    return matches[0]


# ---------------------------------------------------------------------------------------------
# Transcripts.
# ---------------------------------------------------------------------------------------------


def test_identical_data_gives_equal_roots_and_no_difference() -> None:
    """Dynamo 4.7: "If the hash values of the root of two trees are equal, then the values of the
    leaf nodes in the tree are also equal and the nodes require no synchronization." """
    keys = many_keys()
    here = MerkleTree.build(FULL_CIRCLE, items_for(keys))
    there = MerkleTree.build(FULL_CIRCLE, reversed(items_for(keys)))  # order does not matter
    assert here.root == there.root
    assert here == there
    assert diff(here, there) == DiffResult(leaves=[], nodes_compared=1)
    assert here.depth == DEPTH_DEFAULT
    assert len(here.root) == HASH_BYTES


def test_one_changed_key_costs_a_walk_down_one_path_not_a_scan_of_the_leaves() -> None:
    """Dynamo 4.7: "each branch of the tree can be checked independently without requiring nodes
    to download the entire tree"; one difference costs 1 + 2 * depth comparisons."""
    keys = many_keys()
    changed = keys[1234]
    here = MerkleTree.build(FULL_CIRCLE, items_for(keys))
    there_items = [(key, key_digest(key, 1 if key == changed else 0)) for key in keys]
    there = MerkleTree.build(FULL_CIRCLE, there_items)
    result = here.diff(there)
    assert result.leaves == [here.leaf_of(changed)]
    assert result.nodes_compared == 1 + 2 * here.depth
    assert result.nodes_compared < here.leaf_count // 10
    assert MerkleTree.diff(here, there) == diff(there, here) == result


def test_a_key_present_on_one_side_only_is_found() -> None:
    keys = many_keys(200)
    here = MerkleTree.build(FULL_CIRCLE, items_for(keys), depth=6)
    there = MerkleTree.build(FULL_CIRCLE, items_for(keys[:-1]), depth=6)
    assert diff(here, there).leaves == [here.leaf_of(keys[-1])]


def test_keys_spread_over_the_leaves() -> None:
    # 2000 keys in 64 leaves: about 31 per leaf. With a uniform hash, every leaf gets some and
    # none more than about twice its share.
    tree = MerkleTree.build(FULL_CIRCLE, items_for(many_keys()), depth=6)
    counts = [0] * tree.leaf_count
    for key in many_keys():
        counts[tree.leaf_of(key)] += 1
    assert min(counts) > 0
    assert max(counts) < 2 * KEY_COUNT / tree.leaf_count
    assert EMPTY_LEAF_HASH not in tree.levels[-1]


def test_an_empty_tree_is_the_tree_of_empty_leaves() -> None:
    tree = MerkleTree.build(FULL_CIRCLE, [], depth=4)
    assert tree.levels[-1] == (EMPTY_LEAF_HASH,) * 16
    assert len({tree.root, EMPTY_LEAF_HASH}) == 2
    one_key = MerkleTree.build(FULL_CIRCLE, items_for([b"k"]), depth=4)
    assert one_key.root != tree.root


def test_leaf_ranges_tile_the_full_circle() -> None:
    tree = MerkleTree.build(FULL_CIRCLE, [], depth=3)
    width = TOKEN_COUNT // 8
    assert [tree.leaf_range(i) for i in range(8)] == [
        TokenRange(i * width, ((i + 1) * width) % TOKEN_COUNT) for i in range(8)
    ]
    # (start, end]: token 0 is the last token of the last leaf, token 1 the first of leaf 0.
    assert tree.leaf_of_token(0) == 7
    assert tree.leaf_of_token(1) == 0
    assert tree.leaf_of_token(width) == 0
    assert tree.leaf_of_token(width + 1) == 1
    assert tree.leaf_of_token(TOKEN_MAX) == 7
    whole = MerkleTree.build(TokenRange(5, 5), [], depth=0)
    assert whole.leaf_range(0) == TokenRange(5, 5), "a one-leaf tree's leaf is the whole circle"


def test_a_wrapping_range_is_cut_into_leaves_across_the_top_of_the_circle() -> None:
    # (TOKEN_COUNT - 100, 300]: 400 tokens, wrapping past TOKEN_MAX round to 0.
    wrapping = TokenRange(TOKEN_COUNT - 100, 300)
    tree = MerkleTree.build(wrapping, [], depth=2)
    assert [tree.leaf_range(i) for i in range(4)] == [
        TokenRange(TOKEN_COUNT - 100, 0),
        TokenRange(0, 100),
        TokenRange(100, 200),
        TokenRange(200, 300),
    ]
    assert tree.leaf_of_token(TOKEN_COUNT - 99) == 0
    assert tree.leaf_of_token(0) == 0
    assert tree.leaf_of_token(1) == 1
    assert tree.leaf_of_token(300) == 3
    with pytest.raises(ValueError, match="outside"):
        tree.leaf_of_token(301)


def test_uneven_widths_differ_by_at_most_one_token() -> None:
    tree = MerkleTree.build(TokenRange(10, 20), [], depth=2)  # 10 tokens in 4 leaves
    widths = [tree.leaf_range(i).width for i in range(4)]
    assert sum(widths) == 10
    assert max(widths) - min(widths) <= 1
    for token in range(11, 21):
        leaf = tree.leaf_of_token(token)
        assert tree.leaf_range(leaf).contains(token)


def test_keys_outside_the_range_are_refused_not_skipped() -> None:
    keys = many_keys(50)
    half = TokenRange(0, TOKEN_COUNT // 2)
    outside = next(key for key in keys if not half.contains(key_token(key)))
    with pytest.raises(ValueError, match="outside"):
        MerkleTree.build(half, items_for(keys))
    inside = [key for key in keys if half.contains(key_token(key))]
    tree = MerkleTree.build(half, items_for(inside), depth=4)
    with pytest.raises(ValueError, match="outside"):
        tree.leaf_of(outside)


def test_a_key_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        MerkleTree.build(FULL_CIRCLE, [(b"k", b"1"), (b"k", b"2")], depth=2)


@pytest.mark.parametrize(
    ("token_range", "depth", "message"),
    [
        (FULL_CIRCLE, -1, "depth"),
        (FULL_CIRCLE, DEPTH_MAX + 1, "DEPTH_MAX"),
        (TokenRange(0, 3), 2, "fewer than the 4 leaves"),
    ],
)
def test_shapes_that_cannot_be_built_are_refused(
    token_range: TokenRange, depth: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MerkleTree.build(token_range, [], depth)


def test_trees_of_different_ranges_or_depths_cannot_be_compared() -> None:
    tree = MerkleTree.build(FULL_CIRCLE, [], depth=3)
    with pytest.raises(ValueError, match="cannot compare"):
        diff(tree, MerkleTree.build(FULL_CIRCLE, [], depth=4))
    with pytest.raises(ValueError, match="cannot compare"):
        diff(tree, MerkleTree.build(TokenRange(1, 1), [], depth=3))


def test_a_tree_crosses_the_wire_as_its_levels_and_is_checked_on_arrival() -> None:
    tree = MerkleTree.build(FULL_CIRCLE, items_for(many_keys(300)), depth=5)
    wire = tree.level_bytes()
    assert [len(level) for level in wire] == [HASH_BYTES << level for level in range(6)]
    assert MerkleTree.from_levels(FULL_CIRCLE, 5, list(wire)) == tree
    # A flipped bit anywhere makes some inner node disagree with its children.
    for level in range(6):
        damaged = list(wire)
        damaged[level] = bytes([damaged[level][0] ^ 1]) + damaged[level][1:]
        with pytest.raises(ValueError, match="does not match"):
            MerkleTree.from_levels(FULL_CIRCLE, 5, damaged)
    with pytest.raises(ValueError, match="levels"):
        MerkleTree.from_levels(FULL_CIRCLE, 5, list(wire[:-1]))
    with pytest.raises(ValueError, match="bytes, not"):
        MerkleTree.from_levels(FULL_CIRCLE, 5, [*wire[:-1], wire[-1][:-1]])


def test_the_deepest_tree_builds_quickly_when_sparse() -> None:
    # The empty-subtree shortcut: 2**16 leaves, a few keys; each differing leaf is found.
    keys = many_keys(20)
    here = MerkleTree.build(FULL_CIRCLE, items_for(keys), depth=DEPTH_MAX)
    there = MerkleTree.build(FULL_CIRCLE, items_for(keys[:10]), depth=DEPTH_MAX)
    assert diff(here, there).leaves == sorted({here.leaf_of(key) for key in keys[10:]})


# ---------------------------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------------------------

KEYS = st.binary(min_size=1, max_size=6)
RANGES = st.sampled_from(
    [
        FULL_CIRCLE,
        TokenRange(TOKEN_COUNT // 3, TOKEN_COUNT // 3),  # the full circle, starting elsewhere
        TokenRange(TOKEN_COUNT - TOKEN_COUNT // 4, TOKEN_COUNT // 2),  # wrapping, 3/4 of it
        TokenRange(TOKEN_COUNT // 8, TOKEN_COUNT - TOKEN_COUNT // 8),  # not wrapping
    ]
)


@PROPERTY_SETTINGS
@given(
    token_range=RANGES,
    depth=st.integers(min_value=0, max_value=5),
    stored=st.dictionaries(KEYS, st.integers(min_value=0, max_value=2), max_size=40),
    changes=st.dictionaries(KEYS, st.none() | st.integers(min_value=0, max_value=2), max_size=8),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_diff_is_exactly_the_leaves_whose_contents_differ(
    token_range: TokenRange,
    depth: int,
    stored: dict[bytes, int],
    changes: dict[bytes, int | None],
    seed: int,
) -> None:
    """Two replicas hold the same keys but for ``changes`` (None: missing on the other side)."""
    here_versions = {
        key: version for key, version in stored.items() if token_range.contains(key_token(key))
    }
    there_versions = dict(here_versions)
    for key, version in changes.items():
        if not token_range.contains(key_token(key)):
            continue
        if version is None:
            there_versions.pop(key, None)
        else:
            there_versions[key] = version
    here_items = [(key, key_digest(key, version)) for key, version in here_versions.items()]
    there_items = [(key, key_digest(key, version)) for key, version in there_versions.items()]
    random.Random(seed).shuffle(there_items)
    here = MerkleTree.build(token_range, here_items, depth)
    there = MerkleTree.build(token_range, there_items, depth)

    differing_keys = {
        key
        for key in here_versions.keys() | there_versions.keys()
        if here_versions.get(key) != there_versions.get(key)
    }
    expected = sorted({oracle_leaf(here, key) for key in differing_keys})
    result = diff(here, there)
    assert result.leaves == expected, f"seed={seed}"
    assert (here.root == there.root) == (not differing_keys)
    # The walk compares the root, then both children of each differing node on the way down.
    assert result.nodes_compared <= 1 + 2 * depth * max(1, len(expected))
    for key in here_versions:
        assert here.leaf_of(key) == oracle_leaf(here, key)
