"""Pure tests of the nemesis's fault schedule (distlab.chaos.nemesis); no event loop, no I/O.

References: Jepsen's nemesis (jepsen.nemesis, jepsen.nemesis.combined) for the partition shapes
("majorities-ring: every node can see a majority, but no node sees the same majority as any
other"; "bridge: ... a node in the middle which has uninterrupted bidirectional connectivity to
both components") and for one fault at a time; FoundationDB and TigerBeetle's seeded simulation
for "same seed, same run".

The partition oracles below read only `Partition.reachable` over every pair of nodes and rebuild
the groups from it, so they share no code with the construction they check.
"""

import copy
import itertools
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.chaos import nemesis
from distlab.chaos.nemesis import (
    CLOCK_OFFSET_MS_MAX_DEFAULT,
    CRASH_ALL_PROBABILITY,
    FAULTS_MAX,
    GRAY_ACTIONS,
    GRAY_PROBABILITY_MIN,
    HEALTHY_S_MIN,
    LATENCY_DELAY_MS_MAX,
    LATENCY_DELAY_MS_MIN,
    NODES_MAX,
    QUIET_S_DEFAULT,
    SHAPE_NODES_MIN,
    WARMUP_FRACTION,
    WARMUP_S_MAX,
    Fault,
    FaultKind,
    Partition,
    PartitionShape,
    Schedule,
    partition,
    random_schedule,
)
from tests.unit.test_pure_modules import violations

SEED = 20240601
# Small examples so the whole file runs in a few seconds; derandomize makes every run try the
# same examples, and a failing example prints its seed.
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


def names(count: int) -> list[str]:
    return [f"n{index}" for index in range(1, count + 1)]


def views(cut: Partition, nodes: Sequence[str]) -> dict[str, frozenset[str]]:
    """Each node's view: the nodes it can send to, itself included."""
    return {
        source: frozenset(target for target in nodes if cut.reachable(source, target))
        for source in nodes
    }


def fully_connected(cut: Partition, group: Sequence[str]) -> bool:
    return all(cut.reachable(a, b) for a in group for b in group)


def cut_off(cut: Partition, first: Sequence[str], second: Sequence[str]) -> bool:
    """No message crosses between the two groups, in either direction."""
    return not any(cut.reachable(a, b) or cut.reachable(b, a) for a in first for b in second)


def mutual_groups(cut: Partition, nodes: Sequence[str]) -> list[list[str]]:
    """Nodes grouped by mutual reachability (an equivalence only for clean splits)."""
    groups: list[list[str]] = []
    for node in nodes:
        for group in groups:
            if cut.reachable(node, group[0]) and cut.reachable(group[0], node):
                group.append(node)
                break
        else:
            groups.append([node])
    return groups


# ---------------------------------------------------------------------------------------------
# Partition shapes.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 5, 7])
@pytest.mark.parametrize("seed", range(5))
def test_one_isolates_a_single_node(count: int, seed: int) -> None:
    nodes = names(count)
    cut = partition(PartitionShape.ONE, nodes, random.Random(seed))
    isolated = [
        node
        for node in nodes
        if not any(cut.reachable(node, o) or cut.reachable(o, node) for o in nodes if o != node)
    ]
    assert len(isolated) == 1, cut
    others = [node for node in nodes if node != isolated[0]]
    assert fully_connected(cut, others)
    assert cut.shape is PartitionShape.ONE
    assert cut.description == f"one: {{{isolated[0]}}} | {{{', '.join(others)}}}"


@pytest.mark.parametrize("count", [2, 3, 5, 7])
@pytest.mark.parametrize("seed", range(5))
def test_halves_cut_every_link_across_and_none_within(count: int, seed: int) -> None:
    nodes = names(count)
    cut = partition(PartitionShape.HALVES, nodes, random.Random(seed))
    groups = mutual_groups(cut, nodes)
    assert len(groups) == 2, cut
    bigger, smaller = sorted(groups, key=len, reverse=True)
    assert (len(bigger), len(smaller)) == ((count + 1) // 2, count // 2)
    assert fully_connected(cut, bigger)
    assert fully_connected(cut, smaller)
    assert cut_off(cut, bigger, smaller)
    # The bigger half is written first: for 3 nodes, 2 | 1 (equal halves in either order).
    written = {
        f"halves: {{{', '.join(a)}}} | {{{', '.join(b)}}}"
        for a, b in [groups, groups[::-1]]
        if len(a) >= len(b)
    }
    assert cut.description in written


@pytest.mark.parametrize("count", [3, 5, 7])
@pytest.mark.parametrize("seed", range(5))
def test_bridge_joins_two_halves_through_one_node(count: int, seed: int) -> None:
    nodes = names(count)
    cut = partition(PartitionShape.BRIDGE, nodes, random.Random(seed))
    bridges = [
        node
        for node in nodes
        if all(cut.reachable(node, o) and cut.reachable(o, node) for o in nodes)
    ]
    assert len(bridges) == 1, cut
    bridge = bridges[0]
    rest = [node for node in nodes if node != bridge]
    groups = mutual_groups(cut, rest)
    assert len(groups) == 2, cut
    first, second = groups
    assert fully_connected(cut, first)
    assert fully_connected(cut, second)
    assert cut_off(cut, first, second)
    assert sorted(map(len, groups)) == sorted((count // 2, (count - 1) // 2))
    assert f"<-> {bridge} <->" in cut.description


@pytest.mark.parametrize("count", [5, 7, 9])
@pytest.mark.parametrize("seed", range(10))
def test_majorities_ring_gives_every_node_a_distinct_majority(count: int, seed: int) -> None:
    nodes = names(count)
    cut = partition(PartitionShape.MAJORITIES_RING, nodes, random.Random(seed))
    node_views = views(cut, nodes)
    for node, view in node_views.items():
        assert node in view
        assert len(view) > count / 2, (node, sorted(view))
    assert len(set(node_views.values())) == count, node_views
    # The construction is symmetric (ring distance), as the module docstring promises.
    assert all((target, source) in cut.cuts for source, target in cut.cuts)
    # And it does partition: nobody sees everyone.
    assert all(len(view) < count for view in node_views.values())


@given(count=st.integers(5, NODES_MAX), seed=st.integers(0, 2**32))
@PROPERTY_SETTINGS
def test_majorities_ring_holds_for_any_cluster_size(count: int, seed: int) -> None:
    nodes = names(count)
    node_views = views(partition(PartitionShape.MAJORITIES_RING, nodes, random.Random(seed)), nodes)
    assert all(len(view) > count / 2 for view in node_views.values()), f"seed {seed}"
    assert len(set(node_views.values())) == count, f"seed {seed}"


@pytest.mark.parametrize("count", [2, 3, 5, 7])
@pytest.mark.parametrize("seed", range(5))
def test_one_way_cuts_only_one_nodes_outgoing_links(count: int, seed: int) -> None:
    nodes = names(count)
    cut = partition(PartitionShape.ONE_WAY, nodes, random.Random(seed))
    sources = {source for source, _ in cut.cuts}
    assert len(sources) == 1, cut
    (mute,) = sources
    others = [node for node in nodes if node != mute]
    assert cut.cuts == frozenset((mute, other) for other in others)
    assert all(cut.reachable(other, mute) for other in others)  # it still receives
    assert fully_connected(cut, others)
    assert cut.description == f"one-way: {mute} cannot send to {{{', '.join(others)}}}"


@pytest.mark.parametrize(
    ("shape", "nodes_min"), sorted(item for item in SHAPE_NODES_MIN.items() if item[1] > 1)
)
def test_a_shape_refuses_too_few_nodes(shape: PartitionShape, nodes_min: int) -> None:
    with pytest.raises(ValueError, match=f"{shape} needs at least {nodes_min} nodes, got"):
        partition(shape, names(nodes_min - 1), random.Random(SEED))
    partition(shape, names(nodes_min), random.Random(SEED))


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (["n1", "n2", "n1"], "more than once"),
        ([], "1 to 64 nodes"),
        (names(NODES_MAX + 1), "1 to 64 nodes"),
        (["n1", ""], "1 to 255 characters"),
        ("n1n2", "not the string"),
    ],
)
def test_partition_refuses_bad_node_lists(nodes: Sequence[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition(PartitionShape.HALVES, nodes, random.Random(SEED))


@pytest.mark.parametrize("shape", list(PartitionShape))
def test_partitions_are_a_function_of_the_seed(shape: PartitionShape) -> None:
    nodes = names(7)
    first = partition(shape, nodes, random.Random(SEED))
    assert first == partition(shape, nodes, random.Random(SEED))
    others = {partition(shape, nodes, random.Random(seed)).cuts for seed in range(20)}
    assert len(others) > 1, "the seed should move the cut around"


@pytest.mark.parametrize("count", [1, 3, 5])
@pytest.mark.parametrize("seed", range(5))
def test_clients_cuts_only_the_clients_link_to_one_node(count: int, seed: int) -> None:
    nodes = names(count)
    cut = partition(PartitionShape.CLIENTS, nodes, random.Random(seed))
    ((source, unreachable),) = cut.cuts
    assert source == nemesis.CLIENT_NAME
    assert unreachable in nodes
    assert fully_connected(cut, nodes)  # the nodes still reach each other
    assert cut.description == f"clients: the clients cannot reach {unreachable}"


def test_clients_is_drawn_only_when_named() -> None:
    schedule = long_schedule(
        3, kinds=[FaultKind.PARTITION], shapes=[PartitionShape.CLIENTS], duration_s=300.0
    )
    assert schedule.faults
    for fault in schedule.faults:
        assert fault.partition is not None
        assert fault.partition.shape is PartitionShape.CLIENTS
        assert fault.nodes == (next(iter(fault.partition.cuts))[1],)
    assert Schedule.from_json(json.loads(json.dumps(schedule.to_json()))) == schedule


def test_reachable_treats_a_node_as_reaching_itself() -> None:
    cut = Partition(PartitionShape.ONE_WAY, frozenset({("a", "b")}), "one-way: a cannot send")
    assert cut.reachable("a", "a")
    assert not cut.reachable("a", "b")
    assert cut.reachable("b", "a")


# ---------------------------------------------------------------------------------------------
# Random schedules: determinism and invariants.
# ---------------------------------------------------------------------------------------------


def test_same_arguments_give_the_same_schedule() -> None:
    arguments = dict(nodes=names(5), kinds=list(FaultKind), duration_s=600.0)
    first = random_schedule(SEED, **arguments)  # type: ignore[arg-type]
    assert first == random_schedule(SEED, **arguments)  # type: ignore[arg-type]
    assert len(first.faults) > 20


def test_different_seeds_give_different_schedules() -> None:
    schedules = [
        random_schedule(seed, names(5), list(FaultKind), duration_s=300.0).faults
        for seed in range(30)
    ]
    assert len(set(schedules)) == len(schedules)


def check_schedule(
    schedule: Schedule,
    nodes: Sequence[str],
    kinds: Sequence[FaultKind],
    duration_s: float,
    quiet_s: float,
    fault_s: tuple[float, float],
    clock_offset_ms_max: int,
) -> None:
    """Every promise random_schedule makes about one schedule."""
    context = f"seed {schedule.seed}"
    warmup_s = min(WARMUP_S_MAX, WARMUP_FRACTION * duration_s)
    count = len(nodes)
    allowed_shapes = {shape for shape, low in SHAPE_NODES_MIN.items() if low <= count}
    assert schedule.nodes == tuple(nodes)
    assert schedule.duration_s == duration_s
    for index, fault in enumerate(schedule.faults):
        assert fault.start_s >= warmup_s - 0.0005, context  # rounded to whole milliseconds
        assert fault.end_s <= duration_s - quiet_s, context
        assert fault.kind in kinds, context
        # Lengths are rounded to whole milliseconds.
        assert fault_s[0] - 0.0015 <= fault.end_s - fault.start_s <= fault_s[1] + 0.0015, context
        if index:
            healthy_s = fault.start_s - schedule.faults[index - 1].end_s
            assert healthy_s >= HEALTHY_S_MIN - 1e-9, context
        if fault.kind in (FaultKind.KILL, FaultKind.DISK):
            assert fault.nodes == tuple(nodes) or len(fault.nodes) == 1, context
        elif fault.kind is FaultKind.PAUSE:
            assert len(fault.nodes) == 1, context
        elif fault.kind is FaultKind.CLOCK:
            assert 1 <= len(fault.nodes) <= max(1, count - 1), context
            for _, offset_ms in fault.clock_offsets_ms:
                assert 1 <= abs(offset_ms) <= clock_offset_ms_max, context
        elif fault.kind is FaultKind.LATENCY:
            assert len(fault.nodes) == 1, context
            assert LATENCY_DELAY_MS_MIN <= fault.delay_ms <= LATENCY_DELAY_MS_MAX, context
            assert 0 <= fault.jitter_ms <= fault.delay_ms // 2, context
        elif fault.kind is FaultKind.GRAY:
            assert len(fault.nodes) == 1, context
            assert fault.rpc_action in GRAY_ACTIONS, context
            assert GRAY_PROBABILITY_MIN <= fault.rpc_probability <= 1.0, context
            assert (fault.delay_ms > 0) == (fault.rpc_action == "delay"), context
        else:
            assert fault.partition is not None, context
            assert fault.partition.shape in allowed_shapes, context
        assert set(fault.nodes) <= set(nodes), context


@given(
    seed=st.integers(0, 2**64 - 1),
    count=st.integers(1, 9),
    kinds=st.sets(st.sampled_from(list(FaultKind)), min_size=1),
    duration_s=st.floats(0.5, 900.0),
    interval_s=st.floats(0.5, 60.0),
    fault_s=st.tuples(st.floats(0.1, 10.0), st.floats(0.0, 10.0)).map(
        lambda pair: (pair[0], pair[0] + pair[1])
    ),
    quiet_s=st.floats(0.0, 30.0),
    clock_offset_ms_max=st.integers(1, 10**6),
)
@PROPERTY_SETTINGS
def test_random_schedules_keep_their_promises(
    seed: int,
    count: int,
    kinds: set[FaultKind],
    duration_s: float,
    interval_s: float,
    fault_s: tuple[float, float],
    quiet_s: float,
    clock_offset_ms_max: int,
) -> None:
    if count < 2:
        # A single node cannot be partitioned (random_schedule refuses; tested below).
        kinds = (kinds - {FaultKind.PARTITION}) or {FaultKind.KILL}
    ordered_kinds = sorted(kinds)
    schedule = random_schedule(
        seed,
        names(count),
        ordered_kinds,
        duration_s,
        interval_s=interval_s,
        fault_s=fault_s,
        quiet_s=quiet_s,
        clock_offset_ms_max=clock_offset_ms_max,
    )
    check_schedule(
        schedule, names(count), ordered_kinds, duration_s, quiet_s, fault_s, clock_offset_ms_max
    )
    # Same arguments, same schedule.
    assert schedule == random_schedule(
        seed,
        names(count),
        ordered_kinds,
        duration_s,
        interval_s=interval_s,
        fault_s=fault_s,
        quiet_s=quiet_s,
        clock_offset_ms_max=clock_offset_ms_max,
    )


def long_schedule(count: int = 5, **overrides: object) -> Schedule:
    """A schedule with a few thousand faults, for the frequency checks."""
    arguments: dict[str, object] = {"kinds": list(FaultKind), "duration_s": 20_000.0}
    arguments.update(overrides)
    return random_schedule(SEED, names(count), **arguments)  # type: ignore[arg-type]


def test_kinds_are_drawn_uniformly() -> None:
    faults = long_schedule().faults
    for kind in FaultKind:
        share = sum(fault.kind is kind for fault in faults) / len(faults)
        assert abs(share - 1 / len(FaultKind)) < 0.05, (kind, share)


def test_kill_and_disk_sometimes_take_down_every_node() -> None:
    crashes = [f for f in long_schedule().faults if f.kind in (FaultKind.KILL, FaultKind.DISK)]
    whole = sum(len(fault.nodes) == 5 for fault in crashes) / len(crashes)
    assert abs(whole - CRASH_ALL_PROBABILITY) < 0.06, whole
    assert all(len(fault.nodes) in (1, 5) for fault in crashes)


def test_every_allowed_shape_is_drawn() -> None:
    for count in (2, 3, 5):
        schedule = long_schedule(count, kinds=[FaultKind.PARTITION], duration_s=3_000.0)
        drawn = {fault.partition.shape for fault in schedule.faults if fault.partition}
        assert drawn == {
            shape
            for shape, low in SHAPE_NODES_MIN.items()
            if low <= count and shape is not PartitionShape.CLIENTS
        }


def test_shapes_restrict_the_draw() -> None:
    schedule = long_schedule(
        kinds=[FaultKind.PARTITION], shapes=[PartitionShape.BRIDGE], duration_s=300.0
    )
    assert schedule.faults
    assert all(f.partition and f.partition.shape is PartitionShape.BRIDGE for f in schedule.faults)


def test_clock_offsets_span_orders_of_magnitude() -> None:
    clocks = long_schedule(kinds=[FaultKind.CLOCK], duration_s=3_000.0).faults
    magnitudes = [abs(offset) for f in clocks for _, offset in f.clock_offsets_ms]
    assert min(magnitudes) < 100
    assert max(magnitudes) > CLOCK_OFFSET_MS_MAX_DEFAULT // 10
    assert max(magnitudes) <= CLOCK_OFFSET_MS_MAX_DEFAULT
    signs = {offset > 0 for f in clocks for _, offset in f.clock_offsets_ms}
    assert signs == {True, False}
    # Log-uniform: about as many offsets below sqrt(max) as above it.
    below = sum(m < math.sqrt(CLOCK_OFFSET_MS_MAX_DEFAULT) for m in magnitudes) / len(magnitudes)
    assert 0.4 < below < 0.6, below
    # At least one node keeps true time.
    assert all(1 <= len(fault.nodes) <= 4 for fault in clocks)


def test_faults_start_about_every_interval() -> None:
    faults = long_schedule(interval_s=10.0).faults
    gaps = [b.start_s - a.start_s for a, b in itertools.pairwise(faults)]
    assert 9.0 < sum(gaps) / len(gaps) < 11.0


def test_short_interval_still_leaves_healthy_time() -> None:
    faults = long_schedule(interval_s=0.5, duration_s=500.0).faults
    assert all(b.start_s - a.end_s >= HEALTHY_S_MIN - 1e-9 for a, b in itertools.pairwise(faults))


def test_first_fault_waits_for_the_warm_up_and_the_tail_is_quiet() -> None:
    schedule = random_schedule(SEED, names(3), [FaultKind.KILL], duration_s=100.0)
    assert schedule.faults[0].start_s == WARMUP_S_MAX
    assert schedule.faults[-1].end_s <= 100.0 - QUIET_S_DEFAULT
    short = random_schedule(SEED, names(3), [FaultKind.KILL], duration_s=12.0, quiet_s=0.0)
    assert short.faults[0].start_s == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("duration_s", "quiet_s"), [(5.0, QUIET_S_DEFAULT), (10.0, 10.0), (3.0, 1.0), (0.001, 0.0)]
)
def test_a_run_too_short_for_a_fault_has_none(duration_s: float, quiet_s: float) -> None:
    schedule = random_schedule(SEED, names(3), list(FaultKind), duration_s, quiet_s=quiet_s)
    assert schedule.faults == ()
    assert schedule.duration_s == duration_s


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kinds": []}, "at least one fault kind"),
        ({"kinds": ["explode"]}, "unknown fault kind"),
        ({"nodes": []}, "1 to 64 nodes"),
        ({"nodes": ["a", "a"]}, "more than once"),
        ({"nodes": names(NODES_MAX + 1)}, "1 to 64 nodes"),
        ({"nodes": ["a"], "kinds": [FaultKind.PARTITION]}, "allow none"),
        ({"shapes": [PartitionShape.MAJORITIES_RING]}, "majorities-ring needs at least 5"),
        ({"shapes": ["square"]}, "unknown partition shape"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"duration_s": math.inf}, "duration_s"),
        ({"duration_s": 10**6}, "duration_s"),
        ({"interval_s": 0.0}, "interval_s"),
        ({"interval_s": 1e308}, "interval_s"),
        ({"fault_s": (3.0, 2.0)}, "fault_s"),
        ({"fault_s": (0.0, 2.0)}, "fault_s"),
        ({"quiet_s": -1.0}, "quiet_s"),
        ({"clock_offset_ms_max": 0}, "clock_offset_ms_max"),
        ({"seed": -1}, "seed"),
        ({"duration_s": 86_400.0, "interval_s": 0.1, "fault_s": (0.1, 0.1)}, "more than 10000"),
    ],
)
def test_random_schedule_refuses_bad_arguments(overrides: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "seed": SEED,
        "nodes": names(3),
        "kinds": [FaultKind.PARTITION, FaultKind.CLOCK],
        "duration_s": 60.0,
    }
    arguments.update(overrides)
    with pytest.raises(ValueError, match=message):
        random_schedule(**arguments)  # type: ignore[arg-type]


def test_kinds_listed_twice_are_not_drawn_twice_as_often() -> None:
    kinds = [FaultKind.KILL, FaultKind.KILL, FaultKind.KILL, FaultKind.PAUSE]
    faults = long_schedule(kinds=kinds).faults
    share = sum(fault.kind is FaultKind.KILL for fault in faults) / len(faults)
    assert abs(share - 0.5) < 0.05


def test_active_at_finds_the_fault_holding_at_a_time() -> None:
    schedule = random_schedule(SEED, names(5), list(FaultKind), duration_s=120.0)
    assert schedule.active_at(0.0) is None
    for fault in schedule.faults:
        assert schedule.active_at(fault.start_s) is fault
        assert schedule.active_at((fault.start_s + fault.end_s) / 2) is fault
        assert schedule.active_at(fault.end_s) is not fault  # healed at end_s
    for a, b in itertools.pairwise(schedule.faults):
        assert schedule.active_at((a.end_s + b.start_s) / 2) is None
    assert schedule.active_at(schedule.duration_s) is None


# ---------------------------------------------------------------------------------------------
# JSON.
# ---------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**64 - 1), count=st.integers(2, 9))
@PROPERTY_SETTINGS
def test_json_round_trip_is_exact(seed: int, count: int) -> None:
    schedule = random_schedule(seed, names(count), list(FaultKind), duration_s=200.0)
    text = json.dumps(schedule.to_json())
    assert Schedule.from_json(json.loads(text)) == schedule, f"seed {seed}"
    for fault in schedule.faults:
        assert Fault.from_json(json.loads(json.dumps(fault.to_json()))) == fault


def test_a_hand_written_schedule_reads() -> None:
    text = """{
      "seed": 0, "duration_s": 60, "nodes": ["n1", "n2", "n3"],
      "faults": [
        {"kind": "kill", "start_s": 5, "end_s": 10, "nodes": ["n2"]},
        {"kind": "partition", "start_s": 12, "end_s": 20, "nodes": ["n3"],
         "partition": {"shape": "halves", "cuts": [["n1", "n3"], ["n3", "n1"],
                                                  ["n2", "n3"], ["n3", "n2"]]}},
        {"kind": "clock", "start_s": 20, "end_s": 25, "nodes": ["n1", "n3"],
         "clock_offsets_ms": {"n1": 120000, "n3": -35}},
        {"kind": "latency", "start_s": 30, "end_s": 40, "nodes": ["n2"],
         "delay_ms": 200, "jitter_ms": 50}
      ]
    }"""
    schedule = Schedule.from_json(json.loads(text))
    assert [fault.description for fault in schedule.faults] == [
        "kill n2",
        "partition halves: cut n1->n3, n2->n3, n3->n1, n3->n2",
        "clock n1 +120000 ms, n3 -35 ms",
        "latency n2 200+-50 ms",
    ]
    assert schedule.faults[1].partition is not None
    assert not schedule.faults[1].partition.reachable("n1", "n3")
    assert schedule.faults[1].partition.reachable("n1", "n2")
    assert schedule.active_at(22.0) is schedule.faults[2]
    assert Schedule.from_json(json.loads(json.dumps(schedule.to_json()))) == schedule


def valid_document() -> dict[str, object]:
    return {
        "seed": 7,
        "duration_s": 60.0,
        "nodes": ["n1", "n2", "n3"],
        "faults": [
            {"kind": "kill", "start_s": 5.0, "end_s": 10.0, "nodes": ["n2"]},
            {
                "kind": "partition",
                "start_s": 12.0,
                "end_s": 20.0,
                "nodes": ["n3"],
                "partition": {
                    "shape": "one-way",
                    "cuts": [["n3", "n1"], ["n3", "n2"]],
                    "description": "one-way: n3 cannot send to {n1, n2}",
                },
            },
            {
                "kind": "latency",
                "start_s": 30.0,
                "end_s": 40.0,
                "nodes": ["n1"],
                "delay_ms": 100,
                "jitter_ms": 10,
            },
        ],
    }


def edit(path: Sequence[object], value: object) -> Callable[[dict[str, object]], None]:
    """A mutation that sets document[path...] = value (or deletes the key for DELETE)."""

    def apply(document: dict[str, object]) -> None:
        target: object = document
        for step in path[:-1]:
            target = target[step]  # type: ignore[index]
        if value is DELETE:
            del target[path[-1]]  # type: ignore[attr-defined]
        else:
            target[path[-1]] = value  # type: ignore[index]

    return apply


DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (edit(["faults", 0, "kind"], "explode"), r"faults\[0\]: unknown fault kind 'explode'"),
        (edit(["faults", 0, "end_s"], 5.0), r"faults\[0\]: end_s \(5.0\) must be after start_s"),
        (edit(["faults", 0, "end_s"], 4.0), "must be after start_s"),
        (edit(["faults", 0, "colour"], "red"), r"unknown fields \['colour'\]"),
        (edit(["faults", 0, "delay_ms"], 100), r"unknown fields \['delay_ms'\]"),
        (edit(["faults", 0, "nodes"], DELETE), r"missing fields \['nodes'\]"),
        (edit(["faults", 0, "nodes"], []), "1 to 64 nodes"),
        (edit(["faults", 0, "nodes"], ["n9"]), r"names nodes not in the schedule: \['n9'\]"),
        (edit(["faults", 0, "nodes"], "n2"), "list of node names"),
        (edit(["faults", 0, "start_s"], True), "must be a number of seconds"),
        (edit(["faults", 0, "start_s"], "5"), "must be a number of seconds"),
        (edit(["faults", 0, "start_s"], math.nan), "must be finite"),
        (edit(["faults", 0, "start_s"], -1.0), "start_s must be in"),
        (edit(["faults", 0, "start_s"], 10**400), "out of range"),
        (edit(["faults", 1, "partition"], DELETE), "a partition fault needs partition"),
        (edit(["faults", 1, "partition", "shape"], "square"), "unknown partition shape"),
        (edit(["faults", 1, "partition", "cuts"], []), "at least one link"),
        (edit(["faults", 1, "partition", "cuts"], [["n1", "n1"]]), "cut from itself"),
        (edit(["faults", 1, "partition", "cuts"], [["n1"]]), r"\[source, target\]"),
        (
            edit(["faults", 1, "partition", "cuts"], [["n1", "n7"]]),
            r"not in the schedule: \['n7'\]",
        ),
        (edit(["faults", 1, "partition", "extra"], 1), r"unknown fields \['extra'\]"),
        (edit(["faults", 2, "jitter_ms"], 200), "jitter_ms must be in"),
        (edit(["faults", 2, "delay_ms"], 0), "delay_ms must be in"),
        (edit(["faults", 2, "delay_ms"], 1.5), "delay_ms must be an integer"),
        (edit(["faults", 2, "end_s"], 61.0), "after duration_s"),
        (edit(["faults", 1, "start_s"], 8.0), r"faults\[1\] .* before faults\[0\] heals"),
        (edit(["faults", 1, "start_s"], 2.0), "must be sorted by start_s"),
        (edit(["faults", 1], "kill"), r"faults\[1\] must be an object"),
        (edit(["faults"], {}), "faults must be a list"),
        (edit(["seed"], DELETE), r"missing fields \['seed'\]"),
        (edit(["seed"], -1), "seed must be in"),
        (edit(["seed"], "7"), "seed must be an integer"),
        (edit(["duration_s"], 0), "duration_s must be in"),
        (edit(["nodes"], ["n1", "n2", "n3", "n2"]), r"more than once: \['n2'\]"),
        (edit(["version"], 2), r"unknown fields \['version'\]"),
    ],
)
def test_from_json_refuses_bad_documents(
    mutate: Callable[[dict[str, object]], None], message: str
) -> None:
    document = valid_document()
    Schedule.from_json(document)  # the control: unmutated, it reads
    mutated = copy.deepcopy(document)
    mutate(mutated)
    with pytest.raises(ValueError, match=message):
        Schedule.from_json(mutated)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"kind": "clock", "start_s": 1, "end_s": 2, "nodes": ["n1"]}, "offsets must name"),
        (
            {
                "kind": "clock",
                "start_s": 1,
                "end_s": 2,
                "nodes": ["n1"],
                "clock_offsets_ms": {"n2": 5},
            },
            "offsets must name its nodes",
        ),
        (
            {
                "kind": "clock",
                "start_s": 1,
                "end_s": 2,
                "nodes": ["n1"],
                "clock_offsets_ms": {"n1": 10**12},
            },
            "clock offset of n1 must be within",
        ),
        ({"kind": "pause", "start_s": 1, "end_s": 2, "nodes": ["n1"], "partition": {}}, "unknown"),
        ({"kind": 3, "start_s": 1, "end_s": 2, "nodes": ["n1"]}, "kind must be a string"),
    ],
)
def test_fault_from_json_checks_each_kinds_fields(fault: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault.from_json(fault)


# ---------------------------------------------------------------------------------------------
# Descriptions.
# ---------------------------------------------------------------------------------------------


def test_descriptions_read_as_one_line() -> None:
    halves = Partition(
        PartitionShape.HALVES,
        frozenset({("n1", "n3"), ("n3", "n1"), ("n2", "n3"), ("n3", "n2")}),
        "halves: {n1, n2} | {n3}",
    )
    assert Fault(FaultKind.KILL, 1.0, 2.0, ("n2",)).description == "kill n2"
    assert Fault(FaultKind.DISK, 1.0, 2.0, ("n1", "n2")).description == "disk n1, n2"
    assert Fault(FaultKind.PAUSE, 1.0, 2.0, ("n3",)).description == "pause n3"
    assert (
        Fault(FaultKind.PARTITION, 1.0, 2.0, ("n3",), partition=halves).description
        == "partition halves: {n1, n2} | {n3}"
    )
    clock = Fault(
        FaultKind.CLOCK, 1.0, 2.0, ("n1", "n3"), clock_offsets_ms=(("n1", 120_000), ("n3", -35))
    )
    assert clock.description == "clock n1 +120000 ms, n3 -35 ms"
    latency = Fault(FaultKind.LATENCY, 1.0, 2.0, ("n2",), delay_ms=200, jitter_ms=50)
    assert latency.description == "latency n2 200+-50 ms"


def test_generated_descriptions_are_single_lines_naming_the_targets() -> None:
    schedule = random_schedule(SEED, names(5), list(FaultKind), duration_s=600.0)
    for fault in schedule.faults:
        assert "\n" not in fault.description
        assert fault.description.startswith(str(fault.kind))
        assert all(node in fault.description for node in fault.nodes)


def test_majorities_ring_description_shows_the_ring() -> None:
    cut = partition(PartitionShape.MAJORITIES_RING, names(5), random.Random(SEED))
    ring = cut.description.removeprefix("majorities-ring: ").split(",")[0].split(" - ")
    assert ring[0] == ring[-1]
    assert sorted(ring[:-1]) == names(5)
    assert cut.description.endswith("each node sees itself and the 1 nearest on each side")


# ---------------------------------------------------------------------------------------------
# Values and purity.
# ---------------------------------------------------------------------------------------------


def test_faults_check_their_own_fields() -> None:
    with pytest.raises(ValueError, match="must be after start_s"):
        Fault(FaultKind.KILL, 2.0, 2.0, ("n1",))
    with pytest.raises(ValueError, match="takes no partition"):
        Fault(
            FaultKind.KILL,
            1.0,
            2.0,
            ("n1",),
            partition=Partition(PartitionShape.ONE, frozenset({("n1", "n2")}), "x"),
        )
    with pytest.raises(ValueError, match="takes no delay_ms"):
        Fault(FaultKind.PAUSE, 1.0, 2.0, ("n1",), delay_ms=5)
    with pytest.raises(ValueError, match="at most 10000 faults"):
        Schedule(0, 10.0, ("n1",), (Fault(FaultKind.KILL, 1.0, 2.0, ("n1",)),) * (FAULTS_MAX + 1))


def test_values_are_frozen() -> None:
    fault = Fault(FaultKind.KILL, 1.0, 2.0, ("n1",))
    with pytest.raises(AttributeError):
        fault.start_s = 3.0  # type: ignore[misc]


def test_nemesis_is_pure() -> None:
    """STYLE.md rule 1: the schedule is computed, never executed, here."""
    assert violations(Path(nemesis.__file__).read_text()) == []


def test_a_gray_fault_reads_as_what_it_does_and_round_trips() -> None:
    gray = Fault(FaultKind.GRAY, 1.0, 2.0, ("n2",), rpc_action="drop_reply", rpc_probability=0.5)
    assert gray.description == "gray n2: drop_reply on 50% of calls to peers"
    assert Fault.from_json(gray.to_json()) == gray
    slow = Fault(
        FaultKind.GRAY, 1.0, 2.0, ("n1",), rpc_action="delay", rpc_probability=1.0, delay_ms=80
    )
    assert Fault.from_json(slow.to_json()) == slow
    with pytest.raises(ValueError, match="rpc_action"):
        Fault(FaultKind.GRAY, 1.0, 2.0, ("n1",), rpc_action="explode", rpc_probability=1.0)
    with pytest.raises(ValueError, match="delay_ms"):
        Fault(FaultKind.GRAY, 1.0, 2.0, ("n1",), rpc_action="delay", rpc_probability=1.0)
    with pytest.raises(ValueError, match="takes no rpc_action"):
        Fault(FaultKind.KILL, 1.0, 2.0, ("n1",), rpc_action="fail")
