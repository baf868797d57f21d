"""Pure tests of the consistent-hash ring (distlab.common.hashring); no event loop, no I/O.

References: Karger et al. 1997 (consistent hashing); Dynamo 2007, 4.2 (partitioning, virtual
nodes), 4.3 (replication, the preference list) and 4.9 (adding and removing storage nodes).

The oracles below recompute positions straight from `vnode_token` and walk them linearly, so they
share no code with the ring's binary search, merging or tie handling.
"""

import math
import random
from collections import Counter
from collections.abc import Iterable

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.common import hashring
from distlab.common.hashring import (
    DEFAULT_VNODES_PER_NODE,
    NODE_ID_BYTES_MAX,
    TOKEN_COUNT,
    TOKEN_MAX,
    VNODES_PER_NODE_MAX,
    WEIGHT_MAX,
    HashRing,
    RangeMove,
    ReplicaChange,
    TokenRange,
    key_token,
    replica_changes,
    vnode_token,
)

SEED = 20240601
# Property tests stay small (a few nodes, a few vnodes) so the whole file runs in seconds;
# derandomize makes every run try the same examples.
PROPERTY_SETTINGS = settings(max_examples=75, deadline=None, derandomize=True)
SAMPLED_KEYS_PER_EXAMPLE = 100
DISTRIBUTION_KEY_COUNT = 100_000

# "#" is the separator inside vnode names and "é" is two bytes in UTF-8: both must be harmless.
NODE_IDS = st.text(alphabet="ab#1é", min_size=1, max_size=4)
WEIGHTS = st.sampled_from([0.25, 1.0, 1.5, 2.0])
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
REPLICA_COUNTS = st.integers(min_value=1, max_value=5)


@st.composite
def rings(draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = 6) -> HashRing:
    ring = HashRing(draw(st.integers(min_value=1, max_value=8)))
    node_ids = draw(st.lists(NODE_IDS, min_size=min_nodes, max_size=max_nodes, unique=True))
    for node_id in node_ids:
        ring.add_node(node_id, draw(WEIGHTS))
    return ring


# Oracles -----------------------------------------------------------------------------------------


def positions_of(ring: HashRing) -> list[tuple[int, str]]:
    return sorted(
        (vnode_token(node_id, index), node_id)
        for node_id in ring.nodes
        for index in range(ring.vnode_count(node_id))
    )


def brute_owner(positions: list[tuple[int, str]], token: int) -> str:
    for position_token, node_id in positions:
        if position_token >= token:
            return node_id
    return positions[0][1]


def brute_preference_list(positions: list[tuple[int, str]], token: int, n: int) -> list[str]:
    start = next((i for i, (t, _) in enumerate(positions) if t >= token), 0)
    chosen: list[str] = []
    for step in range(len(positions)):
        node_id = positions[(start + step) % len(positions)][1]
        if node_id not in chosen and len(chosen) < n:
            chosen.append(node_id)
    return chosen


def sample_tokens(seed: int, rings: Iterable[HashRing]) -> list[int]:
    """Tokens of random keys, plus the edges of every range, where off-by-one errors live."""
    rng = random.Random(seed)
    tokens = {0, TOKEN_MAX}
    tokens.update(key_token(rng.randbytes(16)) for _ in range(SAMPLED_KEYS_PER_EXAMPLE))
    for ring in rings:
        for token in ring.tokens:
            tokens.update({token, (token - 1) % TOKEN_COUNT, (token + 1) % TOKEN_COUNT})
    return sorted(tokens)


def assert_tiles_circle(ranges: list[TokenRange], context: str) -> None:
    """The ranges cover every token exactly once: each starts where the previous one ends, in ring
    order, and together they are exactly TOKEN_COUNT tokens wide."""
    assert sum(token_range.width for token_range in ranges) == TOKEN_COUNT, context
    in_ring_order = sorted(ranges, key=lambda token_range: token_range.end)
    for previous, current in zip(
        in_ring_order[-1:] + in_ring_order[:-1], in_ring_order, strict=True
    ):
        assert current.start == previous.end, context


# Tokens and ranges -------------------------------------------------------------------------------


def test_key_token_is_murmur3_x64_128_read_unsigned_little_endian() -> None:
    # MurmurHash3_x64_128("hello", seed 0) is h1 = cbd8a7b341bd9b02, h2 = 5b1e906a48ae1d19.
    assert key_token(b"hello") == 0x5B1E906A48AE1D19_CBD8A7B341BD9B02
    assert key_token(b"") == 0
    assert key_token(b"\xff" * 40) == mmh3.hash128(b"\xff" * 40, signed=False) >= 0


def test_vnode_token_hashes_node_id_hash_index() -> None:
    assert vnode_token("node-a", 0) == key_token(b"node-a#0")
    assert vnode_token("n\u00e9", 12) == key_token(b"n\xc3\xa9#12")
    # "a#1#0" and "a#10": splitting at the last "#" tells the two vnodes apart.
    assert vnode_token("a#1", 0) != vnode_token("a", 10)


def test_token_range_is_open_left_closed_right() -> None:
    token_range = TokenRange(10, 20)
    inside = {token for token in (9, 10, 11, 20, 21) if token_range.contains(token)}
    assert inside == {11, 20}
    assert token_range.width == 10


def test_token_range_wraps_past_the_largest_token() -> None:
    token_range = TokenRange(TOKEN_MAX - 5, 5)
    assert token_range.contains(TOKEN_MAX)
    assert token_range.contains(0)
    assert token_range.contains(5)
    assert not token_range.contains(6)
    assert not token_range.contains(TOKEN_MAX - 5)
    assert token_range.width == 11


def test_token_range_with_equal_ends_is_the_whole_circle() -> None:
    token_range = TokenRange(7, 7)
    assert token_range.is_full_circle
    assert all(token_range.contains(t) for t in (0, 6, 7, 8, TOKEN_MAX))
    assert token_range.width == TOKEN_COUNT


@pytest.mark.parametrize(("start", "end"), [(-1, 0), (0, TOKEN_COUNT)])
def test_token_range_rejects_tokens_off_the_circle(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="must be a token"):
        TokenRange(start, end)


# Exact small examples ----------------------------------------------------------------------------


def three_single_vnode_nodes() -> tuple[HashRing, list[tuple[int, str]]]:
    ring = HashRing(vnodes_per_node=1)
    for node_id in ("node-a", "node-b", "node-c"):
        ring.add_node(node_id)
    positions = sorted((vnode_token(node_id, 0), node_id) for node_id in ring.nodes)
    return ring, positions


def test_a_token_is_owned_by_the_position_at_or_after_it() -> None:
    ring, positions = three_single_vnode_nodes()
    assert ring.tokens == tuple(token for token, _ in positions)
    for index, (token, node_id) in enumerate(positions):
        next_owner = positions[(index + 1) % len(positions)][1]
        assert ring.token_owner(token) == node_id, "at the vnode token"
        assert ring.token_owner(token - 1) == node_id, "just before the vnode token"
        assert ring.token_owner(token + 1) == next_owner, "just after the vnode token"


def test_tokens_past_the_largest_position_wrap_to_the_smallest() -> None:
    ring, positions = three_single_vnode_nodes()
    smallest_owner = positions[0][1]
    assert positions[-1][0] < TOKEN_MAX
    assert ring.token_owner(TOKEN_MAX) == smallest_owner
    assert ring.token_owner(positions[-1][0] + 1) == smallest_owner
    assert ring.token_owner(0) == smallest_owner
    wrapping = ring.ranges_of(smallest_owner)
    assert wrapping == [TokenRange(positions[-1][0], positions[0][0])]


def test_owner_of_a_key_is_found_through_its_token() -> None:
    ring, positions = three_single_vnode_nodes()
    for index in range(50):
        key = b"user:%d" % index
        assert ring.owner(key) == brute_owner(positions, key_token(key)), key


def test_single_node_owns_the_whole_circle() -> None:
    ring = HashRing(vnodes_per_node=1)
    moves = ring.add_node("only")
    token = vnode_token("only", 0)
    assert moves == [RangeMove(TokenRange(token, token), source=None, target="only")]
    assert ring.ranges_of("only") == [TokenRange(token, token)]
    assert all(ring.token_owner(t) == "only" for t in (0, token - 1, token, token + 1, TOKEN_MAX))
    assert ring.preference_list(b"any", 3) == ["only"]


def test_single_node_with_many_vnodes_owns_every_range() -> None:
    ring = HashRing()
    moves = ring.add_node("only")
    assert ring.vnode_count("only") == DEFAULT_VNODES_PER_NODE
    assert len(moves) == 1
    assert moves[0].token_range.is_full_circle
    assert_tiles_circle(ring.ranges_of("only"), "one node, many vnodes")
    assert len(ring.ranges_of("only")) == DEFAULT_VNODES_PER_NODE


def test_dynamo_4_9_adding_node_x_between_a_and_b() -> None:
    """Dynamo 2007, 4.9, with N = 3: "when node X is added to the system between A and B, X is
    in charge of storing keys in the ranges (F, G], (G, A] and (A, X]. As a consequence, nodes B,
    C and D no longer have to store the keys in these respective ranges." Node ids are arbitrary
    here, so A..G are named after the positions the hash gives them relative to X."""
    before = HashRing(vnodes_per_node=1)
    for node_id in ("s1", "s2", "s3", "s4", "s5", "s6", "s7"):
        before.add_node(node_id)
    after = before.copy()
    moves = after.add_node("x")
    x_index = after.tokens.index(vnode_token("x", 0))

    def at(offset: int) -> tuple[int, str]:
        token = after.tokens[(x_index + offset) % len(after.tokens)]
        return token, after.token_owner(token)

    (f, _), (g, _), (a, _), (x, _) = at(-3), at(-2), at(-1), at(0)
    (_, node_b), (_, node_c), (_, node_d) = at(1), at(2), at(3)
    assert moves == [RangeMove(TokenRange(a, x), source=node_b, target="x")]
    assert set(replica_changes(before, after, 3)) == {
        ReplicaChange(TokenRange(f, g), gained=frozenset({"x"}), lost=frozenset({node_b})),
        ReplicaChange(TokenRange(g, a), gained=frozenset({"x"}), lost=frozenset({node_c})),
        ReplicaChange(TokenRange(a, x), gained=frozenset({"x"}), lost=frozenset({node_d})),
    }


def test_token_ties_go_to_the_smaller_node_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real 128-bit collision cannot be found, so every vnode is put on the same token.
    monkeypatch.setattr(hashring, "vnode_token", lambda node_id, index: 100 + index)
    for order in (("b", "a"), ("a", "b")):
        ring = HashRing(vnodes_per_node=2)
        for node_id in order:
            ring.add_node(node_id)
        assert ring.tokens == (100, 101), order
        assert ring.ranges_of("a") == [TokenRange(101, 100), TokenRange(100, 101)], order
        assert ring.ranges_of("b") == [], order
        assert ring.preference_list(b"key", 2) == ["a"], "b holds no position"
    assert ring.remove_node("a") == [RangeMove(TokenRange(101, 101), source="a", target="b")]


def test_copy_is_independent() -> None:
    ring, _ = three_single_vnode_nodes()
    copied = ring.copy()
    copied.add_node("node-d")
    copied.remove_node("node-a")
    assert ring.nodes == ("node-a", "node-b", "node-c")
    assert copied.nodes == ("node-b", "node-c", "node-d")
    assert len(ring) == 3
    assert "node-a" in ring
    assert "node-a" not in copied


def test_weight_scales_the_vnode_count() -> None:
    ring = HashRing(vnodes_per_node=10)
    ring.add_node("tiny", weight=0.01)
    ring.add_node("quarter", weight=0.26)
    ring.add_node("double", weight=2.0)
    assert [ring.vnode_count(n) for n in ("tiny", "quarter", "double")] == [1, 3, 20]


def test_removing_the_last_node_moves_nothing_and_empties_the_ring() -> None:
    ring = HashRing(vnodes_per_node=4)
    ring.add_node("only")
    assert ring.remove_node("only") == []
    assert len(ring) == 0
    assert ring.tokens == ()
    assert ring.preference_list(b"key", 3) == []
    with pytest.raises(LookupError, match="ring is empty"):
        ring.owner(b"key")


# Bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vnodes_per_node", "message"),
    [(0, "vnodes_per_node"), (VNODES_PER_NODE_MAX + 1, "vnodes_per_node")],
)
def test_vnodes_per_node_is_bounded(vnodes_per_node: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HashRing(vnodes_per_node)


@pytest.mark.parametrize(
    ("node_id", "weight", "message"),
    [
        ("", 1.0, "node_id must not be empty"),
        ("x" * (NODE_ID_BYTES_MAX + 1), 1.0, "NODE_ID_BYTES_MAX"),
        ("\ud800", 1.0, "UTF-8"),
        ("present", 1.0, "already in the ring"),
        ("fresh", 0.0, "weight"),
        ("fresh", -1.0, "weight"),
        ("fresh", math.nan, "weight"),
        ("fresh", math.inf, "weight"),
        ("fresh", WEIGHT_MAX * 2, "weight"),
    ],
)
def test_add_node_rejects_bad_input(node_id: str, weight: float, message: str) -> None:
    ring = HashRing(vnodes_per_node=2)
    ring.add_node("present")
    with pytest.raises(ValueError, match=message):
        ring.add_node(node_id, weight)
    assert ring.nodes == ("present",), "a rejected add must leave the ring unchanged"


def test_add_node_enforces_nodes_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashring, "NODES_MAX", 2)
    ring = HashRing(vnodes_per_node=1)
    ring.add_node("a")
    ring.add_node("b")
    with pytest.raises(ValueError, match="NODES_MAX"):
        ring.add_node("c")


def test_add_node_enforces_ring_vnodes_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashring, "RING_VNODES_MAX", 5)
    ring = HashRing(vnodes_per_node=3)
    ring.add_node("a")
    with pytest.raises(ValueError, match="RING_VNODES_MAX"):
        ring.add_node("b")


def test_unknown_node_raises_key_error() -> None:
    ring = HashRing(vnodes_per_node=2)
    ring.add_node("present")
    for lookup in (ring.remove_node, ring.vnode_count, ring.ranges_of):
        with pytest.raises(KeyError, match="absent"):
            lookup("absent")


def test_replica_count_must_be_positive() -> None:
    ring = HashRing(vnodes_per_node=2)
    ring.add_node("present")
    with pytest.raises(ValueError, match="n "):
        ring.preference_list(b"key", 0)
    with pytest.raises(ValueError, match="n "):
        replica_changes(ring, ring, 0)


# Properties --------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(ring=rings(), seed=SEEDS)
def test_owner_and_preference_list_match_a_linear_walk(ring: HashRing, seed: int) -> None:
    positions = positions_of(ring)
    for token in sample_tokens(seed, [ring]):
        assert ring.token_owner(token) == brute_owner(positions, token), f"seed={seed}"
        for n in (1, 3):
            expected = brute_preference_list(positions, token, n)
            assert ring.token_preference_list(token, n) == expected, f"seed={seed} n={n}"


@PROPERTY_SETTINGS
@given(ring=rings(), data=st.data())
def test_membership_order_does_not_change_the_ring(ring: HashRing, data: st.DataObject) -> None:
    """Every node must compute the same ring from the same membership, however it learned it."""
    order = data.draw(st.permutations(ring.nodes))
    rebuilt = HashRing(ring.vnodes_per_node)
    for node_id in order:
        rebuilt.add_node(node_id, ring.vnode_count(node_id) / ring.vnodes_per_node)
    assert rebuilt.tokens == ring.tokens
    assert [rebuilt.token_owner(t) for t in ring.tokens] == [
        ring.token_owner(t) for t in ring.tokens
    ]


@PROPERTY_SETTINGS
@given(ring=rings(), newcomer=NODE_IDS, keys=st.lists(st.binary(max_size=16), max_size=20))
def test_owner_is_stable_when_another_node_joins(
    ring: HashRing, newcomer: str, keys: list[bytes]
) -> None:
    """Karger 1997: a key moves only if the joining node takes it."""
    if newcomer in ring:
        return
    after = ring.copy()
    after.add_node(newcomer)
    for key in keys:
        new_owner = after.owner(key)
        assert new_owner in (ring.owner(key), newcomer), key


@PROPERTY_SETTINGS
@given(ring=rings(min_nodes=2), data=st.data(), keys=st.lists(st.binary(max_size=16), max_size=20))
def test_owner_is_stable_when_another_node_leaves(
    ring: HashRing, data: st.DataObject, keys: list[bytes]
) -> None:
    """Karger 1997: a key moves only if its owner is the node that left."""
    leaver = data.draw(st.sampled_from(ring.nodes))
    after = ring.copy()
    after.remove_node(leaver)
    for key in keys:
        old_owner = ring.owner(key)
        if old_owner != leaver:
            assert after.owner(key) == old_owner, key


@PROPERTY_SETTINGS
@given(ring=rings(), key=st.binary(max_size=16), n=REPLICA_COUNTS)
def test_preference_list_has_distinct_nodes_and_starts_with_the_owner(
    ring: HashRing, key: bytes, n: int
) -> None:
    """Dynamo 2007, 4.3: the list skips positions so that it holds only distinct physical nodes."""
    preference_list = ring.preference_list(key, n)
    assert len(preference_list) == len(set(preference_list)) == min(n, len(ring))
    assert preference_list[0] == ring.owner(key)
    assert ring.preference_list(key, n + 1)[:n] == preference_list


@PROPERTY_SETTINGS
@given(ring=rings())
def test_primary_ranges_tile_the_circle(ring: HashRing) -> None:
    all_ranges = [token_range for node_id in ring.nodes for token_range in ring.ranges_of(node_id)]
    assert len(all_ranges) == len(ring.tokens)
    assert_tiles_circle(all_ranges, repr(ring))
    for node_id in ring.nodes:
        for token_range in ring.ranges_of(node_id):
            assert ring.token_owner(token_range.end) == node_id
            assert ring.token_owner((token_range.start + 1) % TOKEN_COUNT) == node_id


def assert_moves_are_exact(
    before: HashRing, after: HashRing, moves: list[RangeMove], seed: int
) -> None:
    """Every sampled token whose owner changed lies in exactly one move, with that source and
    target; every token whose owner did not change lies in none."""
    for token in sample_tokens(seed, [before, after]):
        old_owner = before.token_owner(token) if len(before) else None
        new_owner = after.token_owner(token)
        covering = [move for move in moves if move.token_range.contains(token)]
        context = f"seed={seed} token={token} old={old_owner!r} new={new_owner!r} {covering}"
        if old_owner == new_owner:
            assert covering == [], context
        else:
            assert len(covering) == 1, context
            assert (covering[0].source, covering[0].target) == (old_owner, new_owner), context


@PROPERTY_SETTINGS
@given(ring=rings(min_nodes=0), newcomer=NODE_IDS, weight=WEIGHTS, seed=SEEDS)
def test_add_node_returns_exactly_the_ranges_that_move(
    ring: HashRing, newcomer: str, weight: float, seed: int
) -> None:
    if newcomer in ring:
        return
    after = ring.copy()
    moves = after.add_node(newcomer, weight)
    assert_moves_are_exact(ring, after, moves, seed)
    # Everything the newcomer owns came to it in a move, and nothing else moved.
    assert sum(move.token_range.width for move in moves) == sum(
        token_range.width for token_range in after.ranges_of(newcomer)
    )


@PROPERTY_SETTINGS
@given(ring=rings(min_nodes=2), data=st.data(), seed=SEEDS)
def test_remove_node_returns_exactly_the_ranges_that_move(
    ring: HashRing, data: st.DataObject, seed: int
) -> None:
    leaver = data.draw(st.sampled_from(ring.nodes))
    after = ring.copy()
    moves = after.remove_node(leaver)
    assert_moves_are_exact(ring, after, moves, seed)
    assert sum(move.token_range.width for move in moves) == sum(
        token_range.width for token_range in ring.ranges_of(leaver)
    )


@PROPERTY_SETTINGS
@given(
    before=rings(min_nodes=0),
    after=rings(min_nodes=0),
    n=REPLICA_COUNTS,
    seed=SEEDS,
)
def test_replica_changes_match_preference_lists_before_and_after(
    before: HashRing, after: HashRing, n: int, seed: int
) -> None:
    """Any two memberships (drawn from the same small alphabet, so they overlap): each sampled
    token's change of replica set is reported by exactly one range, and unchanged tokens by none."""
    changes = replica_changes(before, after, n)
    for token in sample_tokens(seed, [before, after]):
        old = set(before.token_preference_list(token, n))
        new = set(after.token_preference_list(token, n))
        covering = [change for change in changes if change.token_range.contains(token)]
        context = f"seed={seed} n={n} token={token} old={old} new={new} {covering}"
        if old == new:
            assert covering == [], context
        else:
            assert len(covering) == 1, context
            assert covering[0].gained == new - old, context
            assert covering[0].lost == old - new, context
    # Adjacent ranges with the same change are merged, so neighbours differ.
    for previous, current in zip(changes[-1:] + changes[:-1], changes, strict=True):
        if len(changes) > 1 and current.token_range.start == previous.token_range.end:
            assert (current.gained, current.lost) != (previous.gained, previous.lost)


# Distribution ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_tokens() -> list[int]:
    rng = random.Random(SEED)
    return [key_token(rng.randbytes(16)) for _ in range(DISTRIBUTION_KEY_COUNT)]


def test_load_spread_of_8_nodes_with_128_vnodes(key_tokens: list[int]) -> None:
    """100,000 random 16-byte keys on node-0..node-7 with 128 vnodes each.

    Measured: the lightest node holds 89.4% of its fair share (12,500 keys) and the heaviest
    112.1% (node-6 89.4%, node-5 94.5%, node-1 97.5%, node-7 98.7%, node-3 100.4%, node-0 102.5%,
    node-2 104.9%, node-4 112.1%); the exact arc shares are 91.6%..110.8%, so sampling adds about
    1%. Why +/-25%: a node's share is a sum of about 128 arcs, relative spread about
    1/sqrt(128) = 9%; over 300 random 8-node clusters (other node ids) the extremes had a median
    of 88%..112% and 1st/99th percentiles of 75%/127%. The bound catches a broken token spread
    (clustered or biased vnode tokens) while a change of vnode encoding rarely trips it.
    """
    ring = HashRing(vnodes_per_node=128)
    for index in range(8):
        ring.add_node(f"node-{index}")
    counts = Counter(ring.token_owner(token) for token in key_tokens)
    fair_share = DISTRIBUTION_KEY_COUNT / 8
    shares = {node_id: counts[node_id] / fair_share for node_id in ring.nodes}
    context = f"seed={SEED} shares={shares}"
    assert min(shares.values()) >= 0.75, context
    assert max(shares.values()) <= 1.25, context


def test_adding_the_kth_node_moves_about_1_over_k_of_keys(key_tokens: list[int]) -> None:
    """Karger 1997: the k-th node takes about 1/k of the keys, all of them from other nodes.

    Measured with 100,000 keys and 128 vnodes per node (fraction moved, and relative to 1/k):
    k=2 44.6% (-10.8%), k=3 31.3% (-6.2%), k=4 28.5% (+14.2%), k=5 23.1% (+15.3%),
    k=6 15.7% (-5.6%), k=7 12.7% (-11.4%), k=8 12.3% (-1.3%). Why +/-25% relative: over 300
    random clusters (2,100 joins) the relative error had a standard deviation of 7.7%, a 99th
    percentile of 20.6% and a worst case of 29.7%; key sampling adds about 1%.
    """
    ring = HashRing(vnodes_per_node=128)
    ring.add_node("node-0")
    owners = [ring.token_owner(token) for token in key_tokens]
    for k in range(2, 9):
        newcomer = f"node-{k - 1}"
        ring.add_node(newcomer)
        new_owners = [ring.token_owner(token) for token in key_tokens]
        moved_to = Counter(new for old, new in zip(owners, new_owners, strict=True) if old != new)
        fraction_moved = sum(moved_to.values()) / DISTRIBUTION_KEY_COUNT
        context = f"seed={SEED} k={k} moved={fraction_moved:.4f} ideal={1 / k:.4f}"
        assert set(moved_to) == {newcomer}, context
        assert abs(fraction_moved * k - 1) <= 0.25, context
        owners = new_owners


def test_a_node_of_weight_2_takes_about_twice_the_keys(key_tokens: list[int]) -> None:
    """Four nodes of weight 2 (256 vnodes) and four of weight 1 (128 vnodes), 100,000 keys.

    Measured: the heavy nodes hold 2.05 times the keys of the light ones (67,246 against 32,754;
    per node 15,615..17,655 against 7,728..9,141). Why 1.6..2.4: over 300 random clusters of this
    shape the ratio had mean 2.00, standard deviation 0.11 and 1st/99th percentiles 1.75/2.31.
    """
    ring = HashRing(vnodes_per_node=128)
    for index in range(4):
        ring.add_node(f"heavy-{index}", weight=2.0)
        ring.add_node(f"light-{index}", weight=1.0)
    assert ring.vnode_count("heavy-0") == 2 * ring.vnode_count("light-0") == 256
    counts = Counter(ring.token_owner(token) for token in key_tokens)
    heavy = sum(count for node_id, count in counts.items() if node_id.startswith("heavy"))
    light = sum(count for node_id, count in counts.items() if node_id.startswith("light"))
    assert 1.6 <= heavy / light <= 2.4, f"seed={SEED} heavy={heavy} light={light}"
