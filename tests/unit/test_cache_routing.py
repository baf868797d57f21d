"""Pure tests of client-side cache routing (distlab.cache.routing); no event loop, no I/O.

References: Karger et al. 1997 and libketama (consistent hashing); Lamping and Veach 2014 (jump
consistent hash); Thaler and Ravishankar 1998 (highest random weight); Mirrokni, Thorup and
Zadimoghaddam 2018 (consistent hashing with bounded loads); Envoy outlier detection and
mcrouter's TKO and failover (NodeHealth).
"""

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.cache.routing import (
    EJECTION_MS,
    PROBE_TIMEOUT_MS,
    TRANSITIONS,
    BoundedLoadRouter,
    ConsistentHashRouter,
    IllegalTransition,
    JumpHashRouter,
    NodeHealth,
    NodeState,
    RendezvousRouter,
    Router,
    check_transition,
    ideal_fraction,
    jump_consistent_hash,
    load_spread,
    movement_report,
    placement,
)

# derandomize: every run tries the same examples, so a failure replays.
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None)
NODE_IDS = st.text(alphabet="ab#1é", min_size=1, max_size=4)
MEMBERSHIPS = st.lists(NODE_IDS, min_size=1, max_size=6, unique=True)

FOUR = ("cache-a", "cache-b", "cache-c", "cache-d")
FIVE = (*FOUR, "cache-e")
BALANCE_KEYS = [f"key-{i}".encode() for i in range(100_000)]
# Movement is a fraction of about 0.2; over 20,000 keys its standard error is under 0.3%.
MOVEMENT_KEYS = BALANCE_KEYS[:20_000]
SAMPLE_KEYS = BALANCE_KEYS[:500]

RouterFactory = Callable[[tuple[str, ...]], Router]
ROUTERS: dict[str, RouterFactory] = {
    "consistent": ConsistentHashRouter,
    "jump": JumpHashRouter,
    "rendezvous": RendezvousRouter,
    "bounded": BoundedLoadRouter,
}
every_router = pytest.mark.parametrize("make", list(ROUTERS.values()), ids=list(ROUTERS))


# The Router protocol -----------------------------------------------------------------------------


@every_router
def test_routing_is_deterministic(make: RouterFactory) -> None:
    first, second = make(FIVE), make(FIVE)
    assert [first.node_for(k) for k in SAMPLE_KEYS] == [second.node_for(k) for k in SAMPLE_KEYS]
    assert [first.nodes_for(k, 3) for k in SAMPLE_KEYS] == [
        second.nodes_for(k, 3) for k in SAMPLE_KEYS
    ]
    # And not constant: every node gets some of 500 keys.
    assert {first.node_for(k) for k in SAMPLE_KEYS} == set(FIVE)


@every_router
def test_nodes_for_is_distinct_starts_with_node_for_and_extends_as_a_prefix(
    make: RouterFactory,
) -> None:
    router = make(FIVE)
    for key in SAMPLE_KEYS:
        order = router.nodes_for(key, 5)
        assert sorted(order) == sorted(FIVE)
        assert order[0] == router.node_for(key)
        for count in range(1, 5):
            assert router.nodes_for(key, count) == order[:count]
        # Asking for more nodes than there are gives all of them.
        assert router.nodes_for(key, 9) == order


@every_router
def test_membership_must_be_nonempty_distinct_node_ids(make: RouterFactory) -> None:
    with pytest.raises(ValueError, match="at least one node"):
        make(())
    with pytest.raises(ValueError, match="duplicate node ids: \\['cache-b'\\]"):
        make(("cache-a", "cache-b", "cache-b"))
    with pytest.raises(ValueError, match="must not be empty"):
        make(("cache-a", ""))
    with pytest.raises(TypeError, match="not the str"):
        make("cache-a")  # type: ignore[arg-type]
    router = make(FOUR)
    with pytest.raises(ValueError, match="duplicate"):
        router.with_nodes(["cache-a", "cache-a"])
    with pytest.raises(ValueError, match="count must be >= 1"):
        router.nodes_for(b"k", 0)
    with pytest.raises(TypeError, match="key must be bytes"):
        router.node_for("k")  # type: ignore[arg-type]


# Per-router bounds on max load / mean load, 100,000 keys over 5 nodes. A consistent-hash node's
# share is a sum of 160 arcs, so it varies by about 1/sqrt(160) = 7.9%; the busiest of five is
# expected near 1.08 and 1.2 is about 2.5 of those deviations. Rendezvous and jump are a
# multinomial: sqrt(4 / 100,000) = 0.6% per node, so 1.05 is far out.
BALANCE_BOUNDS = {"consistent": 1.2, "jump": 1.05, "rendezvous": 1.05}


@pytest.mark.parametrize("name", list(BALANCE_BOUNDS))
def test_balance_over_five_nodes(name: str) -> None:
    router = ROUTERS[name](FIVE)
    spread = load_spread(placement(router, BALANCE_KEYS), router.nodes)
    assert spread.mean_load == 20_000
    assert spread.max_to_mean < BALANCE_BOUNDS[name]


# Movement --------------------------------------------------------------------------------------


def test_ideal_fraction_is_the_least_movement_between_even_spreads() -> None:
    assert ideal_fraction(FOUR, FIVE) == pytest.approx(1 / 5)  # One joins four.
    assert ideal_fraction(FIVE, FOUR) == pytest.approx(1 / 5)  # One of five leaves.
    assert ideal_fraction(FOUR, (*FOUR[:3], "cache-z")) == pytest.approx(1 / 4)  # Replaced.
    assert ideal_fraction(FOUR, reversed(FOUR)) == 0
    assert ideal_fraction(FOUR, ("x", "y")) == 1


@pytest.mark.parametrize("name", ["consistent", "jump", "rendezvous"])
def test_adding_a_fifth_node_at_the_end_moves_about_a_fifth(name: str) -> None:
    before = ROUTERS[name](FOUR)
    after = before.with_nodes(FIVE)
    old = placement(before, MOVEMENT_KEYS)
    report = movement_report(before, after, MOVEMENT_KEYS)
    assert report.ideal_fraction == pytest.approx(0.2)
    # Chaos matrix row 7: about 1/(n+1) moves, at most 10% above it.
    assert 0.18 < report.moved_fraction <= report.ideal_fraction * 1.10
    # Every key that moved went to the newcomer.
    new = placement(after, MOVEMENT_KEYS)
    assert {new[key] for key in MOVEMENT_KEYS if new[key] != old[key]} == {"cache-e"}


@pytest.mark.parametrize("name", ["consistent", "rendezvous"])
@pytest.mark.parametrize("removed", ["cache-b", "cache-e"])
def test_removing_a_node_moves_only_the_keys_it_held(name: str, removed: str) -> None:
    before = ROUTERS[name](FIVE)
    after = before.with_nodes(node for node in FIVE if node != removed)
    old, new = placement(before, MOVEMENT_KEYS), placement(after, MOVEMENT_KEYS)
    assert {old[key] for key in MOVEMENT_KEYS if new[key] != old[key]} == {removed}
    # And all of them moved: nothing else stayed behind on it.
    report = movement_report(before, after, MOVEMENT_KEYS)
    assert report.moved == sum(1 for node in old.values() if node == removed)


def test_jump_hash_removing_the_last_bucket_moves_only_its_keys() -> None:
    before = JumpHashRouter(FIVE)
    after = before.with_nodes(FOUR)
    old, new = placement(before, MOVEMENT_KEYS), placement(after, MOVEMENT_KEYS)
    assert {old[key] for key in MOVEMENT_KEYS if new[key] != old[key]} == {"cache-e"}
    assert 0.15 < movement_report(before, after, MOVEMENT_KEYS).moved_fraction < 0.25


def test_jump_hash_removing_a_middle_bucket_renumbers_the_rest() -> None:
    """Lamping and Veach 2014: buckets "must be numbered sequentially". Dropping index 1 of 5
    shifts cache-c, cache-d and cache-e down a bucket, so their keys move too."""
    before = JumpHashRouter(FIVE)
    after = before.with_nodes(node for node in FIVE if node != "cache-b")
    report = movement_report(before, after, MOVEMENT_KEYS)
    assert report.ideal_fraction == pytest.approx(0.2)
    assert report.moved_fraction > 0.3


def test_jump_consistent_hash_matches_the_paper() -> None:
    # Test vector of the Rust ports jmphash-rs and rust-jumphash, as collected in
    # necrobious/jumphash (src/lib.rs), each written from the paper's C++ listing.
    assert jump_consistent_hash(123456, 1000) == 984
    assert jump_consistent_hash(1, 1) == 0
    # The property the algorithm is built on: going from n to n + 1 buckets, a key stays or
    # jumps to the new bucket n, never elsewhere.
    for key in (0, 1, 2**63, 2**64 - 1, 0xDEADBEEF):
        for buckets in range(1, 200):
            bucket = jump_consistent_hash(key, buckets + 1)
            assert bucket in (jump_consistent_hash(key, buckets), buckets)
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        jump_consistent_hash(2**64, 3)
    with pytest.raises(ValueError, match="num_buckets"):
        jump_consistent_hash(7, 0)


# Bounded loads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("load_factor", [1.0, 1.1, 1.25])
def test_bounded_loads_never_exceed_the_capacity(load_factor: float) -> None:
    router = BoundedLoadRouter(FIVE, load_factor=load_factor)
    assignment = router.assign(BALANCE_KEYS)
    capacity = math.ceil(round(load_factor * 100) * len(BALANCE_KEYS) / (100 * len(FIVE)))
    assert router.capacity(len(BALANCE_KEYS)) == capacity
    assert load_spread(assignment, FIVE).max_load <= capacity
    # The bound holds at every prefix of the population too, which is what keeps it online.
    loads = dict.fromkeys(FIVE, 0)
    for placed, key in enumerate(BALANCE_KEYS[:5_000], start=1):
        loads[assignment[key]] += 1
        assert max(loads.values()) <= router.capacity(placed)


def test_bounded_loads_with_a_large_factor_is_plain_consistent_hashing() -> None:
    bounded = BoundedLoadRouter(FIVE, load_factor=100)
    plain = ConsistentHashRouter(FIVE)
    assert bounded.assign(MOVEMENT_KEYS) == placement(plain, MOVEMENT_KEYS)


def test_bounded_loads_with_factor_one_moves_keys_off_their_ring_owner() -> None:
    # The other side of the guarantee: at c = 1 every node holds ceil(m / n) at most, which
    # plain consistent hashing (max/mean above 1.1 here) does not.
    assignment = BoundedLoadRouter(FIVE, load_factor=1.0).assign(MOVEMENT_KEYS)
    plain = placement(ConsistentHashRouter(FIVE), MOVEMENT_KEYS)
    assert load_spread(assignment, FIVE).max_load == 4_000
    assert load_spread(plain, FIVE).max_load > 4_400
    assert assignment != plain


def test_bounded_loads_answers_from_the_last_assignment() -> None:
    router = BoundedLoadRouter(FIVE, load_factor=1.0)
    plain = ConsistentHashRouter(FIVE)
    keys = MOVEMENT_KEYS[:2_000]
    assignment = router.assign(keys)
    displaced = [key for key in keys if assignment[key] != plain.node_for(key)]
    assert displaced, "c = 1 must push some key off its ring owner"
    for key in displaced:
        assert router.node_for(key) == assignment[key]
        order = router.nodes_for(key, 5)
        assert order[0] == assignment[key]
        assert sorted(order) == sorted(FIVE)
    # A key not assigned goes to its ring owner; a new membership forgets the assignment.
    assert router.node_for(b"never-assigned") == plain.node_for(b"never-assigned")
    fresh = router.with_nodes(FIVE)
    assert [fresh.node_for(key) for key in displaced] == [plain.node_for(k) for k in displaced]


def test_bounded_loads_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="load_factor must be finite and >= 1"):
        BoundedLoadRouter(FIVE, load_factor=0.9)
    with pytest.raises(ValueError, match="load_factor"):
        BoundedLoadRouter(FIVE, load_factor=math.inf)
    with pytest.raises(ValueError, match="distinct"):
        BoundedLoadRouter(FIVE).assign([b"a", b"b", b"a"])
    with pytest.raises(ValueError, match="distinct"):
        movement_report(ConsistentHashRouter(FOUR), ConsistentHashRouter(FIVE), [b"a", b"a"])
    with pytest.raises(ValueError, match="no keys"):
        movement_report(ConsistentHashRouter(FOUR), ConsistentHashRouter(FIVE), [])


# Failure handling: NodeHealth ------------------------------------------------------------------


def fail(health: NodeHealth, node: str, now_ms: int, times: int) -> NodeState:
    state = health.state(node, now_ms)
    for _ in range(times):
        state = health.record_failure(node, now_ms)
    return state


def test_three_failures_in_a_row_eject_a_node() -> None:
    health = NodeHealth()
    assert fail(health, "cache-a", 0, 2) is NodeState.HEALTHY
    assert not health.is_ejected("cache-a", 0)
    assert health.record_failure("cache-a", 10) is NodeState.EJECTED
    assert health.is_ejected("cache-a", 10)
    assert health.is_ejected("cache-a", 10 + EJECTION_MS - 1)
    assert not health.is_ejected("cache-b", 10)


def test_a_success_in_between_resets_the_failure_count() -> None:
    health = NodeHealth()
    fail(health, "cache-a", 0, 2)
    assert health.record_success("cache-a", 1) is NodeState.HEALTHY
    assert health.record("cache-a", 1).consecutive_failures == 0
    assert fail(health, "cache-a", 2, 2) is NodeState.HEALTHY
    assert fail(health, "cache-a", 3, 1) is NodeState.EJECTED


def test_calls_to_an_ejected_node_fall_over_to_the_next_in_ring_order() -> None:
    router = ConsistentHashRouter(FIVE)
    health = NodeHealth()
    key = b"user:42"
    order = router.nodes_for(key, 5)
    assert health.route(router, key, now_ms=0, count=2) == order[:2]
    fail(health, order[0], 0, 3)
    assert health.route(router, key, now_ms=1) == [order[1]]
    assert health.route(router, key, now_ms=1, count=2) == [order[1], order[2]]
    fail(health, order[2], 1, 3)
    assert health.route(router, key, now_ms=2, count=3) == [order[1], order[3], order[4]]
    # Asking for more than remain gives what remains.
    assert health.route(router, key, now_ms=2, count=5) == [order[1], order[3], order[4]]


@every_router
def test_every_node_ejected_routes_nowhere(make: RouterFactory) -> None:
    router = make(FOUR)
    health = NodeHealth()
    for node in FOUR:
        fail(health, node, 0, 3)
    assert health.route(router, b"k", now_ms=1) == []
    assert health.route(router, b"k", now_ms=1, count=4) == []


def test_after_the_ejection_period_one_probe_may_go_and_its_success_readmits() -> None:
    health = NodeHealth()
    fail(health, "cache-a", 1_000, 3)  # Ejected until 6,000.
    assert not health.should_probe("cache-a", 5_999)
    assert health.state("cache-a", 6_000) is NodeState.PROBING
    assert health.is_ejected("cache-a", 6_000)  # Ordinary calls still skip it.
    assert health.should_probe("cache-a", 6_000)
    assert not health.should_probe("cache-a", 6_001)  # Not two at once.
    assert health.record_success("cache-a", 6_050) is NodeState.HEALTHY
    assert not health.is_ejected("cache-a", 6_050)
    assert not health.should_probe("cache-a", 6_050)
    # Re-admitted with a clean slate: it takes three failures again, for the base period.
    assert fail(health, "cache-a", 7_000, 2) is NodeState.HEALTHY
    assert fail(health, "cache-a", 7_000, 1) is NodeState.EJECTED
    assert health.record("cache-a", 7_000).ejected_until_ms == 7_000 + EJECTION_MS


def test_a_failed_probe_ejects_again_for_twice_as_long_up_to_the_cap() -> None:
    health = NodeHealth(ejection_ms=5_000, ejection_ms_max=300_000)
    fail(health, "cache-a", 0, 3)
    now_ms = 5_000
    for expected_ms in (10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000):
        assert health.should_probe("cache-a", now_ms)
        assert health.record_failure("cache-a", now_ms + 1) is NodeState.EJECTED
        assert health.record("cache-a", now_ms + 1).ejected_until_ms == now_ms + 1 + expected_ms
        assert not health.should_probe("cache-a", now_ms + expected_ms)
        now_ms += 1 + expected_ms
    assert health.state("cache-a", now_ms) is NodeState.PROBING


def test_a_lost_probe_allows_another_after_the_probe_timeout() -> None:
    health = NodeHealth()
    fail(health, "cache-a", 0, 3)
    assert health.should_probe("cache-a", EJECTION_MS)
    assert not health.should_probe("cache-a", EJECTION_MS + PROBE_TIMEOUT_MS - 1)
    assert health.should_probe("cache-a", EJECTION_MS + PROBE_TIMEOUT_MS)


def test_late_outcomes_of_calls_sent_before_the_ejection_are_ignored() -> None:
    health = NodeHealth()
    fail(health, "cache-a", 0, 3)
    assert health.record_success("cache-a", 100) is NodeState.EJECTED
    assert health.record_failure("cache-a", 200) is NodeState.EJECTED
    assert health.record("cache-a", 200).ejected_until_ms == EJECTION_MS  # Not extended.
    # Past the period, with no probe sent, an outcome is not the probe's either.
    assert health.record_success("cache-a", EJECTION_MS) is NodeState.PROBING
    assert health.record_failure("cache-a", EJECTION_MS) is NodeState.PROBING


def test_illegal_transitions_raise() -> None:
    for old, new in [
        (NodeState.HEALTHY, NodeState.PROBING),
        (NodeState.EJECTED, NodeState.HEALTHY),
    ]:
        assert new not in TRANSITIONS[old]
        with pytest.raises(IllegalTransition, match=f"from {old.name} to {new.name}"):
            check_transition(old, new)
    for old, targets in TRANSITIONS.items():
        check_transition(old, old)
        for new in targets:
            check_transition(old, new)


def test_node_health_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="eject_after_failures"):
        NodeHealth(eject_after_failures=0)
    with pytest.raises(ValueError, match="ejection_ms"):
        NodeHealth(ejection_ms=10_000, ejection_ms_max=5_000)
    with pytest.raises(ValueError, match="now_ms"):
        NodeHealth().record_failure("cache-a", -1)


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["success", "failure", "probe"]), st.integers(min_value=0, max_value=4_000)
    ),
    max_size=40,
)


@PROPERTY_SETTINGS
@given(OPERATIONS)
def test_every_state_change_is_in_the_table(operations: list[tuple[str, int]]) -> None:
    health = NodeHealth()
    now_ms = 0
    for operation, elapsed_ms in operations:
        now_ms += elapsed_ms
        before = health.state("n", now_ms)
        if operation == "success":
            health.record_success("n", now_ms)
        elif operation == "failure":
            health.record_failure("n", now_ms)
        else:
            granted = health.should_probe("n", now_ms)
            assert granted <= (before is NodeState.PROBING)
        after = health.state("n", now_ms)
        assert after is before or after in TRANSITIONS[before], (before, after)
        assert health.is_ejected("n", now_ms) == (after is not NodeState.HEALTHY)


# Properties over random memberships ------------------------------------------------------------


@PROPERTY_SETTINGS
@given(MEMBERSHIPS, st.sampled_from(list(ROUTERS)))
def test_routers_route_to_members_and_rebuild_identically(nodes: list[str], name: str) -> None:
    router = ROUTERS[name](tuple(nodes))
    rebuilt = router.with_nodes(list(nodes))
    assert router.nodes == rebuilt.nodes == tuple(nodes)
    for key in SAMPLE_KEYS[:50]:
        node = router.node_for(key)
        assert node in nodes
        assert rebuilt.node_for(key) == node
        order = router.nodes_for(key, len(nodes))
        assert sorted(order) == sorted(nodes)
        assert order[0] == node
        assert rebuilt.nodes_for(key, len(nodes)) == order
