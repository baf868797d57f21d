"""Pure tests of versioning (distlab.kvstore.versioning): dotted version vectors, siblings, codec.

References: DeCandia et al., "Dynamo", SOSP 2007, 4.4 (data versioning) and 4.5 (the
coordinator's put); Preguiça et al., "Dotted Version Vectors", 2010.

The property tests drive a small simulation of several coordinators and replicas (below) and
check the results against a ground truth kept apart from the clocks: the set of dots each version
truly had in its causal past, that is, what its writer actually read.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.common.hashring import NODE_ID_BYTES_MAX
from distlab.kvstore.versioning import (
    CLOCK_ENTRIES_MAX,
    CLOCK_ENTRIES_MAX_DEFAULT,
    COUNTER_MAX,
    DIGEST_BYTES,
    SIBLINGS_MAX,
    ClockEntry,
    Dot,
    Ordering,
    TooManySiblingsError,
    VectorClock,
    Version,
    VersionConflictError,
    decode_context,
    decode_siblings,
    digest,
    digest_encoded,
    encode_context,
    encode_siblings,
    last_writer_wins,
    next_version,
    obsoletes,
    read_context,
    reconcile,
    write_context,
)

# Derandomized: every run tries the same examples, so a failure replays as it is (hypothesis
# prints the failing example); no example database, so runs leave nothing behind.
PROPERTY_SETTINGS = settings(max_examples=120, deadline=None, derandomize=True, database=None)


def clock(counters: dict[str, int], wall_ms: int = 0) -> VectorClock:
    return VectorClock.from_entries(
        ClockEntry(node_id, counter, wall_ms) for node_id, counter in counters.items()
    )


def counters_of(vector_clock: VectorClock) -> dict[str, int]:
    return {entry.node_id: entry.counter for entry in vector_clock.entries}


def dots(versions: Iterable[Version]) -> set[Dot]:
    return {version.dot for version in versions}


# ---------------------------------------------------------------------------------------------
# Scenarios, as transcripts.
# ---------------------------------------------------------------------------------------------


def test_same_coordinator_concurrent_puts_are_siblings_where_plain_clocks_lose_one() -> None:
    """The example of the module docstring (Preguiça et al. 2010).

    Dynamo 4.4: "If the counters on the first object's clock are less-than-or-equal to all of
    the nodes in the second clock, then the first is an ancestor of the second and can be
    forgotten." With plain clocks that forgets a concurrent write; with dots it does not.
    """
    original = next_version((), VectorClock.empty(), "A", b"v1", now_wall_ms=1)
    assert original.dot == Dot("A", 1)
    local: tuple[Version, ...] = (original,)
    context = read_context(local)  # both clients read {A:1}
    assert counters_of(context) == {"A": 1}

    first = next_version(local, context, "A", b"from client 1", now_wall_ms=2)
    local = reconcile((*local, first))
    second = next_version(local, context, "A", b"from client 2", now_wall_ms=3)
    local = reconcile((*local, second))

    assert (first.dot, second.dot) == (Dot("A", 2), Dot("A", 3))
    # Plain vector clocks (each version's clock = its history) would say {A:3} descends {A:2}:
    assert counters_of(first.history()) == {"A": 2}
    assert counters_of(second.history()) == {"A": 3}
    assert second.history().compare(first.history()) is Ordering.AFTER
    # With dots, neither context {A:1} covers the other's dot: two siblings, nothing lost.
    assert not obsoletes(second, first)
    assert not obsoletes(first, second)
    assert local == (first, second)
    assert [version.value for version in local] == [b"from client 1", b"from client 2"]

    # A read returns both with the context {A:3}; a put from it supersedes both.
    merged = next_version(local, read_context(local), "A", b"merged", now_wall_ms=4)
    assert reconcile((*local, merged)) == (merged,)


def test_dynamo_figure_3_history() -> None:
    """Dynamo 4.4, Figure 3: D1 [Sx,1]; D2 [Sx,2]; D3 [Sx,2],[Sy,1] (written through Sy) and D4
    [Sx,2],[Sz,1] (through Sz) are concurrent; a client reads both, reconciles them, and Sx
    coordinates the write of D5 [Sx,3],[Sy,1],[Sz,1]."""
    d1 = next_version((), VectorClock.empty(), "Sx", b"D1", now_wall_ms=1)
    d2 = next_version((d1,), read_context((d1,)), "Sx", b"D2", now_wall_ms=2)
    assert reconcile((d1, d2)) == (d2,)
    # Sy and Sz each coordinate a write from a read of D2; neither saw the other.
    d3 = next_version((d2,), read_context((d2,)), "Sy", b"D3", now_wall_ms=3)
    d4 = next_version((d2,), read_context((d2,)), "Sz", b"D4", now_wall_ms=4)
    assert counters_of(d3.history()) == {"Sx": 2, "Sy": 1}
    assert counters_of(d4.history()) == {"Sx": 2, "Sz": 1}
    siblings = reconcile((d1, d2, d3, d4))
    assert siblings == (d3, d4), "D3 and D4 are concurrent: both kept, D1 and D2 obsolete"
    # The client reconciles D3 and D4 and Sx coordinates the write.
    sx_local = reconcile((d2, *siblings))
    d5 = next_version(sx_local, read_context(siblings), "Sx", b"D5", now_wall_ms=5)
    assert counters_of(d5.history()) == {"Sx": 3, "Sy": 1, "Sz": 1}
    assert reconcile((d1, d2, d3, d4, d5)) == (d5,)


def test_a_put_with_the_read_context_supersedes_every_sibling_read() -> None:
    """Dynamo 4.4: a client updating an object passes "the context it obtained from an earlier
    read operation"; a write that reconciles the branches collapses them into one."""
    siblings = reconcile(
        next_version((), VectorClock.empty(), node_id, node_id.encode(), now_wall_ms=1)
        for node_id in ("A", "B", "C")
    )
    assert len(siblings) == 3, "three blind writes through three coordinators are concurrent"
    put = next_version(siblings, read_context(siblings), "B", b"merged", now_wall_ms=2)
    assert all(obsoletes(put, sibling) for sibling in siblings)
    assert reconcile((*siblings, put)) == (put,)


def test_concurrent_puts_through_two_coordinators_are_siblings() -> None:
    """Dynamo 4.4: "divergent versions of the data ... are reconciled by the client"; two
    writes from one read, coordinated by different nodes, are both kept."""
    base = next_version((), VectorClock.empty(), "A", b"base", now_wall_ms=1)
    context = read_context((base,))
    through_a = next_version((base,), context, "A", b"a", now_wall_ms=2)
    through_b = next_version((base,), context, "B", b"b", now_wall_ms=3)
    assert reconcile((base, through_a, through_b)) == (through_a, through_b)
    assert through_a.history().compare(through_b.history()) is Ordering.CONCURRENT


def test_a_tombstone_supersedes_and_a_later_put_supersedes_the_tombstone() -> None:
    """A delete is a write of a tombstone, versioned like any other, so it obsoletes what it read
    and nothing else. (Dynamo 4.4 notes that when branches are merged "deleted items can
    resurface": a delete concurrent with a put stays a sibling of it, as below.)"""
    put = next_version((), VectorClock.empty(), "A", b"v", now_wall_ms=1)
    tombstone = next_version((put,), read_context((put,)), "B", None, now_wall_ms=2)
    assert tombstone.is_tombstone
    assert reconcile((put, tombstone)) == (tombstone,)
    again = next_version((tombstone,), read_context((tombstone,)), "A", b"w", now_wall_ms=3)
    assert not again.is_tombstone
    assert reconcile((put, tombstone, again)) == (again,)
    # A blind put (no context) does not supersede the tombstone: they are concurrent.
    blind = next_version((tombstone,), VectorClock.empty(), "C", b"blind", now_wall_ms=4)
    assert reconcile((tombstone, blind)) == (tombstone, blind)


def test_replicating_only_the_new_version_would_lose_a_write() -> None:
    """Why the coordinator must replicate its whole merged set (module docstring, duty 3).

    A context is a version vector, so {A:2} covers (A, 1) too. A replica that receives (A, 2)
    alone answers a read with that context, and a put from it discards (A, 1) unseen.
    """
    first = next_version((), VectorClock.empty(), "A", b"first", now_wall_ms=1)
    second = next_version((first,), VectorClock.empty(), "A", b"second", now_wall_ms=2)
    coordinator_set = reconcile((first, second))
    assert coordinator_set == (first, second), "two blind writes are siblings at A"

    lone_replica = (second,)  # what a replica holds if only the new version is sent
    blind_to_first = next_version(
        lone_replica, read_context(lone_replica), "B", b"x", now_wall_ms=3
    )
    assert obsoletes(blind_to_first, first), "the reader never saw 'first', yet it is discarded"

    whole_set_replica = coordinator_set  # what it holds when the whole merged set is sent
    informed = next_version(
        whole_set_replica, read_context(whole_set_replica), "B", b"y", now_wall_ms=3
    )
    assert obsoletes(informed, first), "this reader did see 'first': it was returned to it"


def test_the_counter_skips_past_everything_the_coordinator_stores() -> None:
    """Dynamo 4.5: the coordinator generates the new clock. It must never mint a dot twice, so it
    counts past its own counters in the context, in local dots, and in local contexts."""
    from_b = Version(Dot("B", 1), clock({"A": 7}), b"b", wall_ms=1)
    assert next_version((from_b,), VectorClock.empty(), "A", b"x", now_wall_ms=2).dot == Dot("A", 8)
    own = Version(Dot("A", 9), VectorClock.empty(), b"a", wall_ms=1)
    assert next_version((own,), clock({"A": 3}), "A", b"x", now_wall_ms=2).dot == Dot("A", 10)
    assert next_version((), clock({"A": 12}), "A", b"x", now_wall_ms=2).dot == Dot("A", 13)


def test_a_put_that_would_pass_siblings_max_is_refused_and_a_merge_is_not() -> None:
    local: tuple[Version, ...] = ()
    for index in range(SIBLINGS_MAX):
        blind = next_version(local, VectorClock.empty(), "A", b"%d" % index, now_wall_ms=index)
        local = reconcile((*local, blind))
    assert len(local) == SIBLINGS_MAX
    with pytest.raises(TooManySiblingsError, match="SIBLINGS_MAX"):
        next_version(local, VectorClock.empty(), "A", b"one more", now_wall_ms=100)
    merged = next_version(local, read_context(local), "A", b"merged", now_wall_ms=100)
    assert reconcile((*local, merged)) == (merged,)


def test_two_different_versions_with_one_dot_are_a_conflict() -> None:
    one = Version(Dot("A", 1), VectorClock.empty(), b"x", wall_ms=1)
    same = Version(Dot("A", 1), VectorClock.empty(), b"x", wall_ms=1)
    other = Version(Dot("A", 1), VectorClock.empty(), b"y", wall_ms=1)
    assert reconcile((one, same)) == (one,), "a duplicate counts once"
    with pytest.raises(VersionConflictError, match="share the dot"):
        reconcile((one, other))
    assert issubclass(VersionConflictError, ValueError)


# ---------------------------------------------------------------------------------------------
# Vector clocks.
# ---------------------------------------------------------------------------------------------


def test_clock_get_covers_and_compare() -> None:
    ab = clock({"A": 2, "B": 1})
    assert (ab.get("A"), ab.get("B"), ab.get("C"), len(ab)) == (2, 1, 0, 2)
    assert ab.covers(Dot("A", 2))
    assert not ab.covers(Dot("A", 3))
    assert not ab.covers(Dot("C", 1))
    assert ab.compare(clock({"A": 2, "B": 1}, wall_ms=99)) is Ordering.EQUAL, "wall_ms ignored"
    assert ab.compare(clock({"A": 3, "B": 1})) is Ordering.BEFORE
    assert ab.compare(clock({"A": 2})) is Ordering.AFTER
    assert ab.compare(clock({"A": 3})) is Ordering.CONCURRENT
    assert VectorClock.empty().compare(VectorClock.empty()) is Ordering.EQUAL
    assert VectorClock.empty().compare(ab) is Ordering.BEFORE


def test_merge_is_the_pointwise_max_keeping_the_wall_ms_of_the_larger_counter() -> None:
    left = VectorClock.from_entries(
        [ClockEntry("A", 3, 10), ClockEntry("B", 1, 50), ClockEntry("C", 2, 5)]
    )
    right = VectorClock.from_entries(
        [
            ClockEntry("A", 1, 90),
            ClockEntry("B", 4, 20),
            ClockEntry("C", 2, 7),
            ClockEntry("D", 1, 1),
        ]
    )
    expected = VectorClock(
        (
            ClockEntry("A", 3, 10),
            ClockEntry("B", 4, 20),
            ClockEntry("C", 2, 7),
            ClockEntry("D", 1, 1),
        )
    )
    assert left.merge(right) == expected
    assert right.merge(left) == expected
    assert left.with_dot(Dot("A", 5), 77).entries[0] == ClockEntry("A", 5, 77)
    assert left.with_dot(Dot("A", 2), 77) == left, "an event already covered changes nothing"
    assert left.with_dot(Dot("A", 3), 77).entries[0] == ClockEntry("A", 3, 77), "tie: later wall"


def test_prune_drops_the_oldest_entries_then_the_smallest_node_id() -> None:
    """Dynamo 4.4: "When the number of (node, counter) pairs in the vector clock reaches a
    threshold (say 10), the oldest pair is removed from the clock." """
    full = VectorClock.from_entries(
        [
            ClockEntry("A", 1, 30),
            ClockEntry("B", 9, 10),
            ClockEntry("C", 2, 10),
            ClockEntry("D", 4, 20),
        ]
    )
    assert counters_of(full.prune(4)) == {"A": 1, "B": 9, "C": 2, "D": 4}
    assert counters_of(full.prune(3)) == {"A": 1, "C": 2, "D": 4}, "B ties C at 10 and sorts first"
    assert counters_of(full.prune(1)) == {"A": 1}
    for entries_max in (0, CLOCK_ENTRIES_MAX + 1):
        with pytest.raises(ValueError, match="entries_max"):
            full.prune(entries_max)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ((ClockEntry("A", 1, 0), ClockEntry("A", 2, 0)), "twice"),
        ((ClockEntry("B", 1, 0), ClockEntry("A", 2, 0)), "ascend"),
    ],
)
def test_clock_rejects_duplicate_and_unsorted_entries(
    entries: tuple[ClockEntry, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        VectorClock(entries)


@pytest.mark.parametrize(
    ("node_id", "counter", "wall_ms", "message"),
    [
        ("", 1, 0, "empty"),
        ("x" * (NODE_ID_BYTES_MAX + 1), 1, 0, "NODE_ID_BYTES_MAX"),
        ("A", 0, 0, "counter"),
        ("A", COUNTER_MAX + 1, 0, "counter"),
        ("A", 1, -1, "wall_ms"),
    ],
)
def test_clock_entry_and_dot_validate_their_fields(
    node_id: str, counter: int, wall_ms: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ClockEntry(node_id, counter, wall_ms)
    if message != "wall_ms":
        with pytest.raises(ValueError, match=message):
            Dot(node_id, counter)


def test_a_version_whose_context_covers_its_own_dot_is_refused() -> None:
    with pytest.raises(ValueError, match="its own dot"):
        Version(Dot("A", 2), clock({"A": 2}), b"v", wall_ms=0)


# ---------------------------------------------------------------------------------------------
# The simulation: coordinators putting from reads, replicas merging whole sets.
# ---------------------------------------------------------------------------------------------

NODES = ("a", "b", "c")


@dataclass(frozen=True, slots=True)
class PutOperation:
    """A client puts through ``coordinator``, from one of the earlier reads (or blindly), and
    the coordinator sends its whole merged set to ``replicate_to`` (module docstring, duty 3)."""

    coordinator: int
    read_choice: int | None  # None: a blind write (empty context)
    tombstone: bool
    replicate_to: frozenset[int]
    wall_ms: int | None  # None: the step number, so entries age in step order


@dataclass(frozen=True, slots=True)
class ReadOperation:
    """A client reads from some replicas and keeps what it read, to put from it later."""

    from_nodes: frozenset[int]


@dataclass(frozen=True, slots=True)
class SyncOperation:
    """One replica merges another's whole set (read repair, hinted handoff, anti-entropy)."""

    source: int
    target: int


Operation = PutOperation | ReadOperation | SyncOperation


@dataclass(frozen=True, slots=True)
class Read:
    siblings: tuple[Version, ...]
    context: VectorClock
    created_before: int  # how many versions existed when the read happened


@dataclass(frozen=True, slots=True)
class PutRecord:
    read: Read | None  # None: a blind write
    version: Version


@dataclass
class Simulation:
    nodes: Sequence[str]
    clock_entries_max: int
    replicas: dict[str, tuple[Version, ...]] = field(default_factory=dict)
    created: list[Version] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    puts: list[PutRecord] = field(default_factory=list)
    # The ground truth, kept apart from the clocks: each dot's causal past, as the set of dots
    # its writer had read (directly, or through what it read).
    true_past: dict[Dot, frozenset[Dot]] = field(default_factory=dict)
    # Every replica's set after every step: states the protocol really reaches.
    states: list[tuple[Version, ...]] = field(default_factory=list)

    def run(self, operations: Sequence[Operation]) -> None:
        self.replicas = {node_id: () for node_id in self.nodes}
        for step, operation in enumerate(operations):
            if isinstance(operation, PutOperation):
                self.put(operation, step)
            elif isinstance(operation, ReadOperation):
                self.read(operation.from_nodes)
            else:
                self.merge_into(
                    self.node(operation.target), self.replicas[self.node(operation.source)]
                )
            self.states.extend(self.replicas.values())

    def node(self, index: int) -> str:
        return self.nodes[index % len(self.nodes)]

    def put(self, operation: PutOperation, step: int) -> None:
        read = None
        if operation.read_choice is not None and self.reads:
            read = self.reads[operation.read_choice % len(self.reads)]
        context = VectorClock.empty() if read is None else read.context
        value = None if operation.tombstone else b"%d" % len(self.created)
        coordinator = self.node(operation.coordinator)
        wall_ms = step if operation.wall_ms is None else operation.wall_ms
        version = next_version(
            self.replicas[coordinator], context, coordinator, value, wall_ms, self.clock_entries_max
        )
        self.true_past[version.dot] = frozenset() if read is None else self.seen_by(read.siblings)
        self.created.append(version)
        self.puts.append(PutRecord(read, version))
        self.merge_into(coordinator, (version,))
        whole_set = self.replicas[coordinator]
        for index in sorted(operation.replicate_to):
            self.merge_into(self.node(index), whole_set)

    def read(self, from_nodes: frozenset[int]) -> None:
        union = [
            version for index in sorted(from_nodes) for version in self.replicas[self.node(index)]
        ]
        siblings = reconcile(union)
        self.reads.append(Read(siblings, read_context(siblings), len(self.created)))

    def merge_into(self, node_id: str, versions: tuple[Version, ...]) -> None:
        self.replicas[node_id] = reconcile((*self.replicas[node_id], *versions))

    def seen_by(self, siblings: Iterable[Version]) -> frozenset[Dot]:
        seen: set[Dot] = set()
        for version in siblings:
            seen.add(version.dot)
            seen |= self.true_past[version.dot]
        return frozenset(seen)


NODE_INDEXES = st.integers(min_value=0, max_value=4)
OPERATION: st.SearchStrategy[Operation] = st.one_of(
    st.builds(
        PutOperation,
        coordinator=NODE_INDEXES,
        read_choice=st.none() | st.integers(min_value=0, max_value=20),
        tombstone=st.booleans(),
        replicate_to=st.frozensets(NODE_INDEXES, max_size=3),
        wall_ms=st.none() | st.integers(min_value=0, max_value=1000),
    ),
    st.builds(ReadOperation, from_nodes=st.frozensets(NODE_INDEXES, min_size=1, max_size=3)),
    st.builds(SyncOperation, source=NODE_INDEXES, target=NODE_INDEXES),
)
# At least a dozen steps, so that most examples hold several puts, reads between them and
# siblings (hypothesis otherwise favours the shortest lists).
OPERATIONS = st.lists(OPERATION, min_size=12, max_size=30)
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def simulate(
    operations: Sequence[Operation],
    nodes: Sequence[str] = NODES,
    clock_entries_max: int = CLOCK_ENTRIES_MAX_DEFAULT,
) -> Simulation:
    simulation = Simulation(nodes, clock_entries_max)
    simulation.run(operations)
    return simulation


def random_subset(generator: random.Random, versions: Sequence[Version]) -> list[Version]:
    return [version for version in versions if generator.random() < 0.5]


@PROPERTY_SETTINGS
@given(operations=OPERATIONS, seed=SEEDS)
def test_reconcile_is_a_semilattice_join(operations: list[Operation], seed: int) -> None:
    """Commutative, associative, idempotent: replicas may merge in any order and converge."""
    simulation = simulate(operations)
    generator = random.Random(seed)
    candidates = [*simulation.states, tuple(simulation.created)]
    a, b, c = (reconcile(random_subset(generator, generator.choice(candidates))) for _ in range(3))

    def join(left: Iterable[Version], right: Iterable[Version]) -> tuple[Version, ...]:
        return reconcile((*left, *right))

    assert join(a, b) == join(b, a), f"seed={seed}"
    assert join(join(a, b), c) == join(a, join(b, c)) == reconcile((*a, *b, *c)), f"seed={seed}"
    assert join(a, a) == a, f"seed={seed}"
    assert reconcile(reconcile(simulation.created)) == reconcile(simulation.created)
    shuffled = list(simulation.created)
    generator.shuffle(shuffled)
    assert reconcile(shuffled) == reconcile(simulation.created), f"seed={seed}"


@PROPERTY_SETTINGS
@given(operations=OPERATIONS)
def test_a_put_supersedes_exactly_what_its_writer_read(operations: list[Operation]) -> None:
    """No lost write and no false conflict: a version obsoletes another if and only if the
    other is in its true causal past (Preguiça et al. 2010: the clocks capture causality
    exactly). In particular it obsoletes every sibling read, and nothing written after the read.
    """
    simulation = simulate(operations)
    for record in simulation.puts:
        new = record.version
        for other in simulation.created:
            expected = other.dot in simulation.true_past[new.dot]
            assert obsoletes(new, other) == expected, f"{new.dot} vs {other.dot}"
        if record.read is not None:
            assert all(obsoletes(new, read) for read in record.read.siblings)
            assert not any(
                obsoletes(new, later) for later in simulation.created[record.read.created_before :]
            )


@PROPERTY_SETTINGS
@given(operations=OPERATIONS)
def test_replicas_converge_after_exchanging_sets(operations: list[Operation]) -> None:
    """Dynamo 4.7's goal: after anti-entropy every replica holds the reconciled set of all."""
    simulation = simulate(operations)
    for source in NODES:
        for target in NODES:
            simulation.merge_into(target, simulation.replicas[source])
    expected = reconcile(simulation.created)
    assert all(replica == expected for replica in simulation.replicas.values())
    # And nothing is lost: every version missing from it is in the true past of one kept.
    kept_past = set().union(*(simulation.true_past[version.dot] for version in expected))
    assert dots(simulation.created) - dots(expected) <= kept_past


@PROPERTY_SETTINGS
@given(operations=OPERATIONS, entries_max=st.integers(min_value=1, max_value=3))
def test_pruning_a_new_context_only_keeps_more_siblings(
    operations: list[Operation], entries_max: int
) -> None:
    """Dynamo 4.4 accepts that truncation "can lead to inefficiencies in reconciliation as the
    descendant relationships cannot be derived accurately": with a pruned context, the new
    version obsoletes a subset of what it would have, and is itself obsoleted exactly as often.
    """
    five_nodes = ("a", "b", "c", "d", "e")
    simulation = simulate(operations, five_nodes)
    for record in simulation.puts:
        context = VectorClock.empty() if record.read is None else record.read.context
        pruned = Version(
            record.version.dot,
            context.prune(entries_max),
            record.version.value,
            record.version.wall_ms,
        )
        others = [version for version in simulation.created if version.dot != pruned.dot]
        kept_full = dots(reconcile((*others, record.version)))
        kept_pruned = dots(reconcile((*others, pruned)))
        assert kept_full <= kept_pruned
        for other in others:
            assert obsoletes(other, pruned) == obsoletes(other, record.version)


def test_pruning_costs_a_spurious_sibling_not_a_write() -> None:
    # A context with three entries, pruned to two: the oldest entry (B, wall 1) goes.
    old_b = Version(Dot("B", 1), VectorClock.empty(), b"old", wall_ms=1)
    context = VectorClock.from_entries(
        [ClockEntry("A", 1, 5), ClockEntry("B", 1, 1), ClockEntry("C", 1, 9)]
    )
    put = next_version((old_b,), context, "A", b"new", now_wall_ms=10, clock_entries_max=2)
    assert counters_of(put.context) == {"A": 1, "C": 1}
    assert reconcile((old_b, put)) == (put, old_b), "B's old value stays, a spurious sibling"
    unpruned = next_version((old_b,), context, "A", b"new", now_wall_ms=10)
    assert reconcile((old_b, unpruned)) == (unpruned,)


def test_with_pruning_the_merge_order_can_decide_a_spurious_sibling() -> None:
    """Why reconcile is a semilattice join only without pruning (module docstring): w obsoletes
    u, u obsoleted v, but w's pruned context no longer covers v."""
    v = next_version((), VectorClock.empty(), "B", b"v", now_wall_ms=1)
    u = next_version((v,), read_context((v,)), "C", b"u", now_wall_ms=2)
    w = next_version((u,), read_context((u,)), "A", b"w", now_wall_ms=3, clock_entries_max=1)
    assert counters_of(w.context) == {"C": 1}, "B's entry was the oldest and went"
    held_u_first = reconcile((*reconcile((v, u)), w))
    held_v_only = reconcile((v, *reconcile((u, w))))
    assert held_u_first == (w,)
    assert held_v_only == (w, v), "v survives as a spurious sibling: not lost, not dropped"
    # The two replicas still converge once they exchange sets.
    assert reconcile((*held_u_first, *held_v_only)) == reconcile((*held_v_only, *held_u_first))


def test_pruning_can_make_a_coordinator_mint_a_dot_twice_and_the_clash_is_loud() -> None:
    """Dynamo 4.4 on truncation: "this problem has not surfaced in production". Here is the
    problem: C's entry is pruned from every version C still stores, so C counts from 1 again."""
    v = next_version((), VectorClock.empty(), "C", b"v", now_wall_ms=1)
    u = next_version((v,), read_context((v,)), "B", b"u", now_wall_ms=2)
    w = next_version((u,), read_context((u,)), "A", b"w", now_wall_ms=3, clock_entries_max=1)
    at_c = reconcile((v, u, w))
    assert at_c == (w,)
    again = next_version(at_c, VectorClock.empty(), "C", b"again", now_wall_ms=4)
    assert again.dot == v.dot, "the dot (C, 1) is minted a second time"
    stale_replica = (v,)  # a replica that never received u or w
    with pytest.raises(VersionConflictError):
        reconcile((*stale_replica, again))


# ---------------------------------------------------------------------------------------------
# Codec.
# ---------------------------------------------------------------------------------------------

NODE_ID_TEXT = st.text(alphabet="ABé#", min_size=1, max_size=4)
COUNTERS = st.integers(min_value=1, max_value=COUNTER_MAX)
WALL_MS = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def clocks(draw: st.DrawFn, max_entries: int = 4) -> VectorClock:
    counters = draw(st.dictionaries(NODE_ID_TEXT, COUNTERS, max_size=max_entries))
    return VectorClock.from_entries(
        ClockEntry(node_id, counter, draw(WALL_MS)) for node_id, counter in counters.items()
    )


@st.composite
def versions(draw: st.DrawFn) -> Version:
    dot = Dot(draw(NODE_ID_TEXT), draw(COUNTERS))
    context = draw(clocks())
    if context.covers(dot):
        context = VectorClock(
            tuple(entry for entry in context.entries if entry.node_id != dot.node_id)
        )
    value = draw(st.none() | st.binary(max_size=20))
    return Version(dot, context, value, draw(WALL_MS))


@st.composite
def sibling_sets(draw: st.DrawFn, max_size: int = 5) -> tuple[Version, ...]:
    drawn = draw(st.lists(versions(), max_size=max_size, unique_by=lambda version: version.dot))
    return tuple(sorted(drawn, key=lambda version: version.dot))


@PROPERTY_SETTINGS
@given(siblings=sibling_sets(), context=clocks())
def test_codec_round_trips(siblings: tuple[Version, ...], context: VectorClock) -> None:
    encoded = encode_siblings(siblings)
    assert decode_siblings(encoded) == siblings
    assert encode_siblings(reversed(siblings)) == encoded, "canonical: order does not matter"
    assert decode_context(encode_context(context)) == context


def test_the_empty_context_is_no_bytes() -> None:
    assert encode_context(VectorClock.empty()) == b""
    assert decode_context(b"") == VectorClock.empty()


def sample_siblings() -> tuple[Version, ...]:
    base = next_version((), VectorClock.empty(), "node-a", b"base", now_wall_ms=1_700_000_000_000)
    context = read_context((base,))
    first = next_version((base,), context, "node-b", b"first value", now_wall_ms=1_700_000_000_005)
    gone = next_version((base,), context, "node-é", None, now_wall_ms=1_700_000_000_009)
    return reconcile((base, first, gone))


def test_every_truncation_of_an_encoding_is_rejected() -> None:
    siblings = sample_siblings()
    assert len(siblings) == 2
    encoded = encode_siblings(siblings)
    for length in range(len(encoded)):
        with pytest.raises(ValueError, match="sibling set"):
            decode_siblings(encoded[:length])
    context = encode_context(read_context(siblings))
    # b"" is the empty context by definition; every other prefix is refused.
    for length in range(1, len(context)):
        with pytest.raises(ValueError, match="context"):
            decode_context(context[:length])


@PROPERTY_SETTINGS
@given(siblings=sibling_sets(max_size=3))
def test_every_truncation_of_any_encoding_is_rejected(siblings: tuple[Version, ...]) -> None:
    encoded = encode_siblings(siblings)
    for length in range(len(encoded)):
        with pytest.raises(ValueError):  # noqa: PT011 (the message varies with the cut)
            decode_siblings(encoded[:length])


def test_changed_bytes_are_rejected_or_decode_to_a_different_canonical_set() -> None:
    """No byte change is silently absorbed: a mutated encoding either fails, or decodes to a set
    that encodes back to exactly the mutated bytes (a different, equally valid set)."""
    seed = 20240612
    generator = random.Random(seed)
    encoded = encode_siblings(sample_siblings())
    for position in range(len(encoded)):
        mutated = bytearray(encoded)
        mutated[position] = (mutated[position] + generator.randrange(1, 256)) % 256
        try:
            decoded = decode_siblings(bytes(mutated))
        except ValueError:
            continue
        assert encode_siblings(decoded) == bytes(mutated), f"seed={seed} position={position}"
    for _ in range(2000):
        garbage = generator.randbytes(generator.randrange(0, 64))
        try:
            assert encode_siblings(decode_siblings(garbage)) == garbage, f"seed={seed}"
        except ValueError:
            pass
        try:
            assert encode_context(decode_context(garbage)) == garbage, f"seed={seed}"
        except ValueError:
            pass


def entry_bytes(node_id: bytes, counter: int, wall_ms: int = 0) -> bytes:
    return struct.pack(">B", len(node_id)) + node_id + struct.pack(">QQ", counter, wall_ms)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x02\x00\x01", "format version 2"),
        (b"\x01\x00\x00", "at least one entry"),
        (b"\x01\x00\x01" + entry_bytes(b"A", 0), "counter"),
        (b"\x01\x00\x01" + entry_bytes(b"", 1), "empty"),
        (b"\x01\x00\x01" + entry_bytes(b"\xff", 1), "not UTF-8"),
        (b"\x01\x00\x02" + entry_bytes(b"B", 1) + entry_bytes(b"A", 1), "ascend"),
        (b"\x01\x00\x02" + entry_bytes(b"A", 1) + entry_bytes(b"A", 2), "twice"),
        (b"\x01\x00\x01" + entry_bytes(b"A", 1) + b"\x00", "left over"),
        (b"\x01\x04\x01", "CLOCK_ENTRIES_MAX"),
    ],
)
def test_malformed_contexts_are_rejected_by_name(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_context(data)


def sibling_bytes(
    node_id: bytes,
    counter: int,
    kind: int,
    context: bytes = b"",
    entries: int = 0,
    value: bytes = b"",
) -> bytes:
    fields = struct.pack(">QQBH", counter, 0, kind, entries)
    tail = struct.pack(">I", len(value)) + value if kind == 1 else b""
    return struct.pack(">B", len(node_id)) + node_id + fields + context + tail


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x07\x00\x00", "format version 7"),
        (b"\x01\x00\x01" + sibling_bytes(b"A", 1, 3), "unknown kind 3"),
        (b"\x01\x00\x01" + sibling_bytes(b"A", 1, 1, value=b"v") + b"!", "left over"),
        (b"\x01\x00\x01" + sibling_bytes(b"A", 1, 1, value=b"v")[:-1], "truncated"),
        (
            b"\x01\x00\x02" + sibling_bytes(b"A", 2, 2) + sibling_bytes(b"A", 1, 2),
            "does not ascend",
        ),
        (
            b"\x01\x00\x02" + sibling_bytes(b"A", 1, 2) + sibling_bytes(b"A", 1, 2),
            "does not ascend",
        ),
        (b"\x01\x00\x01" + sibling_bytes(b"A", 1, 2, entry_bytes(b"A", 1), 1), "its own dot"),
        (b"\x01\x00\x41", "SIBLINGS_MAX"),
    ],
)
def test_malformed_sibling_sets_are_rejected_by_name(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_siblings(data)


def test_the_encoder_refuses_what_the_decoder_would() -> None:
    one = Version(Dot("A", 1), VectorClock.empty(), b"x", wall_ms=1)
    other = Version(Dot("A", 1), VectorClock.empty(), b"y", wall_ms=1)
    with pytest.raises(ValueError, match="reconcile"):
        encode_siblings((one, other))
    too_many = [Version(Dot("A", n), VectorClock.empty(), b"", 0) for n in range(1, 66)]
    with pytest.raises(ValueError, match="SIBLINGS_MAX"):
        encode_siblings(too_many)


def test_the_codec_is_compact() -> None:
    # One sibling from node "n1" with a two-entry context and a 5-byte value: 3 header bytes,
    # 3 + 19 for the dot, wall_ms, kind and entry count, 2 * 19 for the entries, 4 + 5 for the
    # value. No per-field tags, no padding.
    version = Version(Dot("n1", 3), clock({"n1": 2, "n2": 7}), b"hello", wall_ms=5)
    assert len(encode_siblings((version,))) == 3 + 3 + 19 + 2 * 19 + 4 + 5


# ---------------------------------------------------------------------------------------------
# Digest and last-writer-wins.
# ---------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(left=sibling_sets(max_size=3), right=sibling_sets(max_size=3), seed=SEEDS)
def test_digest_is_equal_exactly_when_the_sets_are(
    left: tuple[Version, ...], right: tuple[Version, ...], seed: int
) -> None:
    assert len(digest(left)) == DIGEST_BYTES
    assert (digest(left) == digest(right)) == (set(left) == set(right)), f"seed={seed}"
    shuffled = list(left)
    random.Random(seed).shuffle(shuffled)
    assert digest(shuffled) == digest(left), f"seed={seed}"
    assert digest_encoded(encode_siblings(left)) == digest(left)


def test_digest_tells_apart_sets_that_differ_in_one_field() -> None:
    base = Version(Dot("A", 1), clock({"B": 1}), b"v", wall_ms=1)
    variants = [
        base,
        Version(Dot("A", 2), base.context, b"v", wall_ms=1),
        Version(Dot("A", 1), clock({"B": 2}), b"v", wall_ms=1),
        Version(Dot("A", 1), base.context, b"w", wall_ms=1),
        Version(Dot("A", 1), base.context, None, wall_ms=1),
        Version(Dot("A", 1), base.context, b"v", wall_ms=2),
    ]
    assert len({digest((variant,)) for variant in variants}) == len(variants)
    assert digest(()) != digest((base,))


def test_last_writer_wins_keeps_the_latest_wall_clock_and_counts_what_it_threw_away() -> None:
    """Lossy by design: the chaos harness's negative control (Dynamo 6, "last write wins")."""
    early = Version(Dot("A", 1), VectorClock.empty(), b"early", wall_ms=100)
    late = Version(Dot("B", 1), VectorClock.empty(), b"late", wall_ms=300)
    tombstone = Version(Dot("C", 1), VectorClock.empty(), None, wall_ms=200)
    winner, discarded = last_writer_wins((early, late, tombstone, early))
    assert winner == late
    assert discarded == 1, "the tombstone is not a live write; the duplicate counts once"
    tie = Version(Dot("C", 2), VectorClock.empty(), b"tie", wall_ms=300)
    assert last_writer_wins((late, tie)) == (tie, 1), "ties go to the larger dot"
    deleted = Version(Dot("D", 1), VectorClock.empty(), None, wall_ms=400)
    assert last_writer_wins((early, late, deleted)) == (deleted, 2)
    with pytest.raises(ValueError, match="at least one"):
        last_writer_wins(())


# ----------------------------------------------------------------------------- write_context


def test_a_put_context_covers_the_new_version_when_its_dot_is_next_in_line() -> None:
    local = (Version(Dot("A", 1), clock({}), b"old", 5),)
    new = next_version(local, clock({"A": 1}), "A", b"new", 10)
    assert new.dot == Dot("A", 2)
    assert write_context(new, reconcile((*local, new))).get("A") == 2


def test_a_put_context_never_claims_versions_its_writer_did_not_see() -> None:
    # The coordinator A minted (A,2) and (A,3) for other writers; this writer read only (A,1).
    # The new dot is (A,4); the vector {A:4} would claim (A,2) and (A,3) too, and a later put
    # from it would supersede them unseen. So the writer gets its own context back.
    seen = Version(Dot("A", 1), clock({}), b"v1", 5)
    others = (
        Version(Dot("A", 2), clock({"A": 1}), b"v2", 6),
        Version(Dot("A", 3), clock({"A": 1}), b"v3", 7),
    )
    new = next_version(others, clock({"A": 1}), "A", b"v4", 10)
    assert new.dot == Dot("A", 4)
    returned = write_context(new, (*others, new))
    assert returned == clock({"A": 1})
    later = next_version((*others, new), returned, "A", b"v5", 11)
    survivors = reconcile((*others, new, later))
    assert {version.value for version in survivors} == {b"v2", b"v3", b"v4", b"v5"}
    assert obsoletes(later, seen), "what the writer did see, it may supersede"


def test_dots_never_repeat_after_the_key_is_forgotten_given_a_growing_floor() -> None:
    # Tombstone collection forgets the key: local is empty again. Without a floor, the next
    # put would mint (A,1), a dot old contexts already cover; with the node's WAL sequence as
    # the floor it mints a dot above every one A made before.
    old_context = clock({"A": 3})
    forgotten = next_version((), VectorClock.empty(), "A", b"new", 10)
    assert old_context.covers(forgotten.dot), "the bug the floor prevents"
    fresh = next_version((), VectorClock.empty(), "A", b"new", 10, counter_floor=57)
    assert fresh.dot == Dot("A", 58)
    assert not old_context.covers(fresh.dot)
