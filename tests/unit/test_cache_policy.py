"""Pure tests of the eviction policies (distlab.cache.policy) and traces (distlab.cache.traces).

References: Einziger, Friedman, Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", ACM
ToS 2017 (admission, the reset, W-TinyLFU); Caffeine's BoundedLocalCache (ties go to the victim,
the hash-flooding admission); Belady 1966 (MIN). The hand-worked reference string is the one of
Silberschatz, Galvin, Gagne, "Operating System Concepts", 9.4 Page Replacement: with three frames
LRU takes 12 page faults and OPT 9.

No test here reads a clock or the module-level random: every trace is drawn from a seed.
"""

import functools
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.cache.policy import (
    HASH_FLOODING_ADMIT_ODDS,
    HASH_FLOODING_FREQUENCY_MIN,
    SKETCH_COUNTER_MAX,
    SKETCH_ITEMS_INITIAL,
    EvictionPolicy,
    FrequencySketch,
    LruPolicy,
    Region,
    WTinyLfuPolicy,
)
from distlab.cache.traces import HitStats, belady_opt_hits, read_trace, simulate, zipf_trace

# derandomize makes every run try the same examples, so a failure replays.
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)
# Silberschatz's reference string (module docstring).
TEXTBOOK_TRACE = [
    str(page).encode() for page in (7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1)
]
HASH_SEEDS = (11, 22, 33, 44)
# Sketches of small tests get room for a thousand items, so the few keys there never collide in
# all four rows and their estimates are exact.
ROOMY_SKETCH_ITEMS = 1024


def keys(*names: str) -> list[bytes]:
    return [name.encode() for name in names]


def read(policy: EvictionPolicy, key: bytes, weight: int = 1) -> list[bytes]:
    """What a store does on a read: a hit, or a miss and then an insert. Returns the evictions."""
    if key in policy:
        policy.on_hit(key)
        return []
    policy.on_miss(key)
    return policy.on_insert(key, weight)


def lfu_main_only(capacity_bytes: int) -> WTinyLfuPolicy:
    """No window and no protected segment: a new key duels probation's LRU key at once."""
    return WTinyLfuPolicy(
        capacity_bytes,
        window_fraction=0,
        protected_fraction=0,
        expected_items=ROOMY_SKETCH_ITEMS,
    )


# LRU ---------------------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used_first() -> None:
    policy = LruPolicy(3)
    for key in keys("a", "b", "c"):
        assert policy.on_insert(key, 1) == []
    policy.on_hit(b"a")  # Order is now b, c, a.
    assert policy.on_insert(b"d", 1) == [b"b"]
    assert policy.on_insert(b"e", 1) == [b"c"]
    assert policy.on_insert(b"f", 1) == [b"a"]
    assert [key in policy for key in keys("a", "b", "c", "d", "e", "f")] == [0, 0, 0, 1, 1, 1]


def test_lru_on_the_textbook_reference_string_faults_12_times() -> None:
    assert simulate(LruPolicy(3), TEXTBOOK_TRACE) == HitStats(hits=8, misses=12)


def test_lru_a_big_key_evicts_several_small_ones_in_order() -> None:
    policy = LruPolicy(10)
    for key in keys("a", "b", "c"):
        policy.on_insert(key, 3)
    assert policy.on_insert(b"big", 7) == [b"a", b"b"]  # 9 + 7 - 3 - 3 = 10 fits.
    assert policy.weight_bytes == 10
    assert len(policy) == 2


def test_lru_refuses_a_key_heavier_than_capacity() -> None:
    policy = LruPolicy(10)
    policy.on_insert(b"a", 4)
    assert policy.on_insert(b"huge", 11) == [b"huge"]
    assert b"huge" not in policy
    assert b"a" in policy
    assert policy.weight_bytes == 4


def test_lru_update_that_grows_a_key_evicts_others_never_the_key() -> None:
    policy = LruPolicy(10)
    for key in keys("a", "b", "c"):
        policy.on_insert(key, 3)
    # The update counts as a hit: "a" becomes the most recent, so "b" is the first to go.
    assert policy.on_update(b"a", 6) == [b"b"]
    assert policy.weight_bytes == 9
    assert policy.on_update(b"a", 10) == [b"c"]
    assert policy.weight_bytes == 10
    assert policy.on_update(b"a", 11) == [b"a"]  # Only a weight above capacity refuses it.
    assert len(policy) == 0
    assert policy.weight_bytes == 0


def test_lru_on_remove_frees_bytes_and_ignores_absent_keys() -> None:
    policy = LruPolicy(10)
    policy.on_insert(b"a", 4)
    policy.on_insert(b"b", 5)
    policy.on_remove(b"a")
    policy.on_remove(b"never-held")
    assert b"a" not in policy
    assert policy.weight_bytes == 5
    assert policy.on_insert(b"c", 5) == []  # The freed bytes are usable.


@pytest.mark.parametrize("make", [LruPolicy, WTinyLfuPolicy])
def test_policies_reject_calls_that_break_the_contract(
    make: Callable[[int], EvictionPolicy],
) -> None:
    policy = make(10)
    policy.on_insert(b"a", 1)
    with pytest.raises(KeyError):
        policy.on_hit(b"absent")
    with pytest.raises(KeyError):
        policy.on_update(b"absent", 1)
    with pytest.raises(ValueError, match="already holds"):
        policy.on_insert(b"a", 1)
    with pytest.raises(ValueError, match="already holds"):
        policy.on_miss(b"a")
    with pytest.raises(ValueError, match="weight"):
        policy.on_insert(b"b", -1)
    with pytest.raises(TypeError, match="weight"):
        policy.on_insert(b"b", 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("capacity_bytes", [0, -1])
def test_capacity_must_be_positive(capacity_bytes: int) -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        LruPolicy(capacity_bytes)
    with pytest.raises(ValueError, match="capacity_bytes"):
        WTinyLfuPolicy(capacity_bytes)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"window_fraction": -0.1}, "window_fraction"),
        ({"window_fraction": 1.5}, "window_fraction"),
        ({"window_fraction": float("nan")}, "window_fraction"),
        ({"protected_fraction": 2}, "protected_fraction"),
        ({"expected_items": 0}, "expected_items"),
        ({"expected_items": 1 << 40}, "expected_items"),
    ],
)
def test_w_tinylfu_validates_its_arguments(arguments: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WTinyLfuPolicy(100, **arguments)  # type: ignore[arg-type]


# W-TinyLFU ---------------------------------------------------------------------------------------


def test_regions_follow_caffeines_rounding() -> None:
    policy = WTinyLfuPolicy(1000)
    assert policy.window_capacity_bytes == 10
    assert policy.protected_capacity_bytes == 792  # 80% of main's 990.
    assert WTinyLfuPolicy(10).window_capacity_bytes == 1  # A tiny cache still has a window.


def test_a_hot_set_survives_a_scan_that_flushes_lru() -> None:
    """TinyLFU 2017: one-hit wonders lose admission to keys with a history (scan resistance)."""
    hot = [b"hot%d" % i for i in range(50)]
    scan = [b"scan%d" % i for i in range(1000)]
    lru, tinylfu = LruPolicy(100), WTinyLfuPolicy(100)
    for policy in (lru, tinylfu):
        for _ in range(5):
            for key in hot:
                read(policy, key)
        for key in scan:
            read(policy, key)
    assert sum(key in lru for key in hot) == 0
    assert sum(key in tinylfu for key in hot) == len(hot)
    assert simulate(tinylfu, hot) == HitStats(hits=50, misses=0)


def test_a_new_key_cannot_displace_a_hotter_victim() -> None:
    policy = lfu_main_only(10)
    residents = [b"r%d" % i for i in range(10)]
    for key in residents:
        read(policy, key)
    for key in residents:
        policy.on_hit(key)  # Frequency 2 each; r0 is probation's LRU key, the victim.
    assert policy.frequency(b"r0") == 2

    policy.on_miss(b"new")
    assert policy.on_insert(b"new", 1) == [b"new"]  # 1 < 2: the candidate is evicted.
    policy.on_miss(b"new")
    assert policy.frequency(b"new") == 2
    assert policy.on_insert(b"new", 1) == [b"new"]  # A tie goes to the victim.
    assert all(key in policy for key in residents)

    policy.on_miss(b"new")
    assert policy.on_insert(b"new", 1) == [b"r0"]  # 3 > 2: admitted in place of the victim.
    assert policy.region_of(b"new") is Region.PROBATION


def test_a_candidate_outbids_victims_one_by_one_until_it_fits() -> None:
    policy = lfu_main_only(10)
    for key in keys("a", "b", "c"):
        read(policy, key, weight=3)
    for _ in range(3):
        policy.on_miss(b"d")
    # Frequencies a=1, b=1, c=1, d=3: d (7 bytes) evicts a, then b, and then fits.
    assert policy.on_insert(b"d", 7) == [b"a", b"b"]
    assert policy.weight_bytes == 10
    assert policy.region_of(b"d") is Region.PROBATION


def test_a_candidate_that_wins_then_loses_is_evicted_after_its_victims() -> None:
    policy = lfu_main_only(10)
    for key in keys("a", "b", "c"):
        read(policy, key, weight=3)
    for _ in range(4):
        policy.on_hit(b"b")  # b=5; order in probation a, c, b (a hit moves b to the MRU end).
    for _ in range(3):
        policy.on_miss(b"d")  # d=3
    # d beats a (evicted), then c (evicted), then loses to b: the brief's simple approach
    # evicts the candidate after its victims, leaving room unused.
    assert policy.on_insert(b"d", 9) == [b"a", b"c", b"d"]
    assert len(policy) == 1
    assert policy.weight_bytes == 3


def test_a_probation_hit_promotes_and_protected_overflow_demotes_to_probation_mru() -> None:
    policy = WTinyLfuPolicy(
        10, window_fraction=0, protected_fraction=0.5, expected_items=ROOMY_SKETCH_ITEMS
    )
    residents = [b"r%d" % i for i in range(10)]
    for key in residents:
        read(policy, key)
    assert {policy.region_of(key) for key in residents} == {Region.PROBATION}
    for key in residents[:6]:
        policy.on_hit(key)
    # Protected holds 5 bytes: promoting r5 demoted r0, protected's LRU key, to probation.
    assert [policy.region_of(key) for key in residents[:6]] == [
        Region.PROBATION,
        *[Region.PROTECTED] * 5,
    ]
    # Probation is now r6, r7, r8, r9, r0 (r0 at the MRU end): strong candidates evict in that
    # order, each joining probation's MRU end behind r0.
    evicted = []
    for index in range(5):
        candidate = b"c%d" % index
        for _ in range(3):
            policy.on_miss(candidate)
        evicted += policy.on_insert(candidate, 1)
    assert evicted == keys("r6", "r7", "r8", "r9", "r0")


def test_a_window_key_moves_to_probation_when_the_window_overflows() -> None:
    policy = WTinyLfuPolicy(100)  # A window of one byte.
    read(policy, b"first")
    assert policy.region_of(b"first") is Region.WINDOW
    read(policy, b"second")
    assert policy.region_of(b"first") is Region.PROBATION  # The cache had room: no duel.
    assert policy.region_of(b"second") is Region.WINDOW
    policy.on_hit(b"first")
    assert policy.region_of(b"first") is Region.PROTECTED
    policy.on_remove(b"first")
    assert policy.region_of(b"first") is None
    assert policy.weight_bytes == 1


def test_w_tinylfu_refuses_too_heavy_keys_and_keeps_a_growing_key() -> None:
    policy = WTinyLfuPolicy(10, expected_items=ROOMY_SKETCH_ITEMS)
    assert policy.on_insert(b"huge", 11) == [b"huge"]
    for key in keys("a", "b", "c"):
        read(policy, key, weight=3)
    evicted = policy.on_update(b"a", 10)
    assert sorted(evicted) == keys("b", "c")
    assert b"a" in policy
    assert policy.weight_bytes == 10
    assert policy.on_update(b"a", 11) == [b"a"]
    assert policy.weight_bytes == 0


def test_a_growing_key_alone_in_main_makes_the_window_give_way() -> None:
    policy = WTinyLfuPolicy(10, window_fraction=0.1, protected_fraction=1)
    read(policy, b"a", weight=3)
    read(policy, b"b", weight=1)  # a moves on to probation; b holds the 1-byte window.
    policy.on_hit(b"a")
    assert (policy.region_of(b"a"), policy.region_of(b"b")) == (Region.PROTECTED, Region.WINDOW)
    # 10 bytes of "a" overfill protected (9 bytes): "a" is demoted, alone in main, and is the
    # main region's LRU key; the bytes must come from the window instead.
    assert policy.on_update(b"a", 10) == [b"b"]
    assert policy.region_of(b"a") is Region.PROBATION
    assert policy.weight_bytes == 10


def test_a_warm_loser_is_sometimes_admitted_against_hash_flooding() -> None:
    """Caffeine's admit(): a candidate of frequency >= 6 that loses still gets in 1 time in 128."""
    policy = lfu_main_only(1)
    read(policy, b"incumbent")
    for _ in range(SKETCH_COUNTER_MAX):
        policy.on_hit(b"incumbent")
    duels = 1000
    admitted = 0
    for index in range(duels):
        candidate = b"c%d" % index
        for _ in range(HASH_FLOODING_FREQUENCY_MIN):
            policy.on_miss(candidate)
        admitted += policy.on_insert(candidate, 1) != [candidate]
    expected = duels / HASH_FLOODING_ADMIT_ODDS  # About 8; every victim is at least as warm.
    assert expected / 4 <= admitted <= expected * 3


def test_a_lukewarm_loser_is_never_admitted() -> None:
    policy = lfu_main_only(1)
    read(policy, b"incumbent")
    for _ in range(SKETCH_COUNTER_MAX):
        policy.on_hit(b"incumbent")
    for index in range(1000):
        candidate = b"c%d" % index
        for _ in range(HASH_FLOODING_FREQUENCY_MIN - 1):
            policy.on_miss(candidate)
        assert policy.on_insert(candidate, 1) == [candidate]


# The frequency sketch ----------------------------------------------------------------------------


def test_sketch_counters_saturate_at_15_and_reset_halves_them() -> None:
    sketch = FrequencySketch(ROOMY_SKETCH_ITEMS, HASH_SEEDS)
    for _ in range(20):
        sketch.increment(b"k")
    for _ in range(4):
        sketch.increment(b"j")
    assert (sketch.frequency(b"k"), sketch.frequency(b"j"), sketch.frequency(b"x")) == (15, 4, 0)
    assert sketch.samples == 24
    sketch.reset()
    assert (sketch.frequency(b"k"), sketch.frequency(b"j")) == (7, 2)
    assert sketch.samples == 12


def test_sketch_ages_itself_after_ten_samples_per_expected_item() -> None:
    sketch = FrequencySketch(1, HASH_SEEDS)
    assert sketch.sample_size == 10
    for _ in range(9):
        sketch.increment(b"k")
    assert sketch.frequency(b"k") == 9
    sketch.increment(b"k")  # The 10th sample triggers the reset.
    assert sketch.frequency(b"k") == 5
    assert sketch.samples == 5


def test_sketch_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="expected_items"):
        FrequencySketch(0, HASH_SEEDS)
    with pytest.raises(ValueError, match="distinct"):
        FrequencySketch(10, (1, 1, 2, 3))
    with pytest.raises(ValueError, match="32-bit"):
        FrequencySketch(10, (1, 2, 3, 1 << 32))


def test_sketch_is_sized_from_the_mean_weight_once_half_full() -> None:
    policy = WTinyLfuPolicy(1_000_000)
    assert policy.sketch.expected_items == SKETCH_ITEMS_INITIAL
    for index in range(5_000):  # Half of 1 MB in keys of 100 bytes.
        read(policy, b"k%d" % index, weight=100)
    assert policy.sketch.expected_items == 10_000
    fixed = WTinyLfuPolicy(1_000_000, expected_items=300)
    for index in range(5_000):
        read(fixed, b"k%d" % index, weight=100)
    assert fixed.sketch.expected_items == 300


# Invariants under random operations --------------------------------------------------------------

OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["read", "update", "remove"]),
        st.integers(min_value=0, max_value=7),  # Which of 8 keys.
        st.integers(min_value=0, max_value=35),  # A weight, sometimes above capacity.
    ),
    max_size=60,
)


@st.composite
def policies(draw: st.DrawFn) -> EvictionPolicy:
    capacity_bytes = draw(st.integers(min_value=1, max_value=30))
    if draw(st.booleans()):
        return LruPolicy(capacity_bytes)
    return WTinyLfuPolicy(
        capacity_bytes,
        window_fraction=draw(st.sampled_from([0, 0.01, 0.2, 0.5, 1])),
        protected_fraction=draw(st.sampled_from([0, 0.5, 0.8, 1])),
        seed=draw(st.integers(min_value=0, max_value=3)),
    )


@PROPERTY_SETTINGS
@given(policy=policies(), operations=OPERATIONS)
def test_policies_hold_what_they_say_and_stay_under_capacity(
    policy: EvictionPolicy, operations: list[tuple[str, int, int]]
) -> None:
    held: dict[bytes, int] = {}  # The store's view: key -> weight.

    def apply(evicted: list[bytes], key: bytes, weight: int) -> None:
        assert len(set(evicted)) == len(evicted)
        for victim in evicted:
            assert victim in held or victim == key
            held.pop(victim, None)
        if key not in evicted:
            held[key] = weight

    for operation, index, weight in operations:
        key = b"k%d" % index
        if operation == "read" and key in held:
            policy.on_hit(key)
        elif operation == "read":
            policy.on_miss(key)
            evicted = policy.on_insert(key, weight)
            if weight > policy.capacity_bytes:
                assert evicted == [key]
            apply(evicted, key, weight)
        elif operation == "update" and key in held:
            evicted = policy.on_update(key, weight)
            assert (key in evicted) == (weight > policy.capacity_bytes)
            apply(evicted, key, weight)
        elif operation == "remove":
            policy.on_remove(key)
            held.pop(key, None)
        assert policy.weight_bytes <= policy.capacity_bytes
        assert policy.weight_bytes == sum(held.values())
        assert len(policy) == len(held)
        assert all((f"k{i}".encode() in policy) == (f"k{i}".encode() in held) for i in range(8))


# Traces ------------------------------------------------------------------------------------------


def test_zipf_trace_is_a_function_of_its_seed() -> None:
    first = zipf_trace(keys=1000, length=2000, alpha=0.8, seed=7)
    assert first == zipf_trace(keys=1000, length=2000, alpha=0.8, seed=7)
    assert first != zipf_trace(keys=1000, length=2000, alpha=0.8, seed=8)
    assert set(first) <= {b"k%d" % rank for rank in range(1, 1001)}


@pytest.mark.parametrize("alpha", [0.5, 0.9, 1.0, 1.5])
def test_zipf_rank_one_is_the_most_frequent(alpha: float) -> None:
    counts = Counter(zipf_trace(keys=500, length=20_000, alpha=alpha, seed=3))
    assert counts.most_common(1)[0][0] == b"k1"
    assert counts[b"k1"] > counts[b"k2"] > counts[b"k50"]


def test_zipf_proportions_match_alpha_one() -> None:
    key_count, draws = 100, 50_000
    counts = Counter(zipf_trace(keys=key_count, length=draws, alpha=1.0, seed=5))
    harmonic = sum(1 / rank for rank in range(1, key_count + 1))
    for rank in (1, 2, 5, 10):
        expected = draws / (rank * harmonic)  # 9640, 4820, 1928, 964
        assert abs(counts[b"k%d" % rank] / expected - 1) < 0.1, rank


@pytest.mark.parametrize(
    "arguments",
    [
        {"keys": 0, "length": 10, "alpha": 1.0, "seed": 1},
        {"keys": 10, "length": -1, "alpha": 1.0, "seed": 1},
        {"keys": 10, "length": 10, "alpha": 0.0, "seed": 1},
        {"keys": 10, "length": 10, "alpha": float("inf"), "seed": 1},
        {"keys": 1 << 30, "length": 10, "alpha": 1.0, "seed": 1},
    ],
)
def test_zipf_trace_validates_its_arguments(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"keys|length|alpha"):
        zipf_trace(**arguments)  # type: ignore[arg-type]


def test_read_trace_takes_one_key_per_line_and_skips_blank_lines() -> None:
    lines = ["a\n", "\n", "  b c  \n", "   \n", "é", "a"]
    assert read_trace(lines) == [b"a", b"b c", "é".encode(), b"a"]


def test_hit_stats() -> None:
    assert HitStats(hits=3, misses=1).hit_ratio == 0.75
    assert HitStats(hits=0, misses=0).hit_ratio == 0.0
    with pytest.raises(ValueError, match="hits"):
        HitStats(hits=-1, misses=0)


# Belady's OPT ------------------------------------------------------------------------------------


def test_opt_on_the_textbook_reference_string_faults_9_times() -> None:
    assert belady_opt_hits(TEXTBOOK_TRACE, 3, bypass=False) == HitStats(hits=11, misses=9)
    # Refusing a key counts too: at the last-but-one 7 it keeps 0 and 1 instead.
    assert belady_opt_hits(TEXTBOOK_TRACE, 3) == HitStats(hits=12, misses=8)


def test_opt_with_bypass_beats_demand_paging_when_refusing_pays() -> None:
    alternating = [b"A", b"B"] * 5
    assert belady_opt_hits(alternating, 1, bypass=False).hits == 0
    assert belady_opt_hits(alternating, 1).hits == 4  # Keeps A, refuses every B.


def brute_force_optimal_hits(trace: list[bytes], capacity_items: int) -> int:
    """Every choice on every miss (refuse, or insert evicting any held key), memoized."""

    @functools.cache
    def best(index: int, held: frozenset[bytes]) -> int:
        if index == len(trace):
            return 0
        key = trace[index]
        if key in held:
            return 1 + best(index + 1, held)
        choices = [best(index + 1, held)]
        if len(held) < capacity_items:
            choices.append(best(index + 1, held | {key}))
        else:
            choices += [best(index + 1, (held - {victim}) | {key}) for victim in held]
        return max(choices)

    return best(0, frozenset())


@PROPERTY_SETTINGS
@given(
    trace=st.lists(st.sampled_from(keys("a", "b", "c", "d", "e")), max_size=14),
    capacity_items=st.integers(min_value=1, max_value=3),
)
def test_opt_matches_an_exhaustive_search_and_bounds_lru_and_w_tinylfu(
    trace: list[bytes], capacity_items: int
) -> None:
    opt = belady_opt_hits(trace, capacity_items)
    assert opt.hits == brute_force_optimal_hits(trace, capacity_items)
    assert opt.hits >= simulate(LruPolicy(capacity_items), trace).hits
    assert opt.hits >= simulate(WTinyLfuPolicy(capacity_items), trace).hits
    assert opt.hits >= belady_opt_hits(trace, capacity_items, bypass=False).hits


def test_opt_validates_capacity() -> None:
    with pytest.raises(ValueError, match="capacity_items"):
        belady_opt_hits([b"a"], 0)


def test_opt_bounds_both_policies_on_a_zipf_trace() -> None:
    trace = zipf_trace(keys=5_000, length=30_000, alpha=0.8, seed=2)
    opt = belady_opt_hits(trace, 100)
    assert opt.hits > simulate(LruPolicy(100), trace).hits
    assert opt.hits > simulate(WTinyLfuPolicy(100), trace).hits


def test_headline_w_tinylfu_beats_lru_and_opt_beats_both() -> None:
    """The benchmark's claim: 1% of a 100k-key Zipf(0.9) key space, 200k requests, unit weights.

    Measured at this seed: LRU 0.341, W-TinyLFU 0.442, OPT 0.529.
    """
    trace = zipf_trace(keys=100_000, length=200_000, alpha=0.9, seed=1)
    capacity_items = 1_000
    lru = simulate(LruPolicy(capacity_items), trace, weight=1)
    tinylfu = simulate(WTinyLfuPolicy(capacity_items), trace, weight=1)
    opt = belady_opt_hits(trace, capacity_items)
    assert lru.hit_ratio < tinylfu.hit_ratio < opt.hit_ratio
    # A margin, so the claim is more than noise: the TinyLFU paper reports gains of this order.
    assert tinylfu.hit_ratio - lru.hit_ratio > 0.05
