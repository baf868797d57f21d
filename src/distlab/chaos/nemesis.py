"""The nemesis: a fault schedule computed from a seed, with no I/O (the harness executes it).

Follows Jepsen's nemesis (jepsen.nemesis, jepsen.nemesis.combined) and seeded simulation as
FoundationDB and TigerBeetle (the VOPR) practise it.

- **Faults, one at a time.** Jepsen's default nemesis alternates :start and :stop, so at most one
  fault holds at any moment and each is healed before the next begins; a history is then read
  against one known fault at a time. The kinds are Jepsen's: kill (:kill, restart at the end),
  pause (:pause, SIGSTOP then SIGCONT), clock (jepsen.nemesis.time's bump: skew and reset), disk
  (jepsen.lazyfs's "lose un-fsynced writes": kill -9 and drop each file's un-fsynced tail) and
  latency (jepsen.net's slow: tc netem delay with jitter).
- **Partition shapes** from jepsen.nemesis and jepsen.nemesis.combined: one (:one, isolate a
  node), halves (:majority, Jepsen's bisect, but with the bigger half first), majorities-ring
  (:majorities-ring), bridge (jepsen.nemesis/bridge), plus one-way, a simplex partition in the
  terms of Alquraan et al., "An Analysis of Network-Partitioning Failures in Cloud Systems"
  (OSDI 2018): traffic flows in one direction only. Every other shape cuts each link both
  ways, majorities-ring included (see `_majorities_ring` for the construction and its proof).
- **Determinism.** Every random choice is drawn, in a fixed order, from one `random.Random(seed)`
  and never from iteration over a set, so the same arguments give the same `Schedule` and a failing
  run replays from its seed. A schedule also round-trips through JSON, so a saved run replays
  exactly even on a Python whose `random` draws differently, and a person can script one by hand.

Theory of operation of `random_schedule`:
1. Warm-up: the first fault starts after min(WARMUP_S_MAX, WARMUP_FRACTION x duration), once the
   cluster has elected its leaders and the workload is flowing; a fault earlier would test
   startup, not recovery.
2. Draw the fault's length uniformly in `fault_s`. If it would end after duration - quiet_s,
   stop: the schedule is complete.
3. Draw the kind uniformly from `kinds`, then its targets (see `_draw_fault`).
4. Stay healthy for max(HEALTHY_S_MIN, uniform(0, 2 x (interval_s - length))): Jepsen's
   stagger draws uniformly in [0, 2 x interval], so the mean start-to-start time is about
   `interval_s`; the floor gives every fault a clean "after" in the history. Go to 2.
Times are whole milliseconds, so JSON files read cleanly and float rounding cannot move a fault
across the quiet boundary.

What it leaves out: overlapping or composed faults (Jepsen's compose), packet loss, duplication
and reordering, membership changes, and Jepsen's :primaries (which needs to know the leaders,
something only the running cluster can tell). A Partition's `shape` is a label: `from_json`
checks hand-written cuts are well formed, not that they match the shape.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

# ---------------------------------------------------------------------------------------------
# Limits and defaults.
# ---------------------------------------------------------------------------------------------

# The chaos harness runs every node on one machine; 64 is far past what fits there, and the cuts
# of a partition grow with the square of the node count (CUTS_MAX below).
NODES_MAX = 64
# A node is named by a host name or "host:port"; a DNS name is at most 255 bytes.
NODE_NAME_CHARS_MAX = 255
# Every directed link between NODES_MAX nodes.
CUTS_MAX = NODES_MAX * (NODES_MAX - 1)
# A day of soak at one fault every 10 s is 8,640 faults.
FAULTS_MAX = 10_000
# A day; a longer soak should be several runs, so a failure replays in reasonable time.
DURATION_S_MAX = 86_400.0
# Seeds travel in logs, file names and CLI flags as an unsigned 64-bit integer.
SEED_MAX = (1 << 64) - 1
# Twice the kvstore failure detector's default timeout (membership.FAILURE_TIMEOUT_MS_DEFAULT,
# 5 s): after the last fault heals, a node that was marked down is seen live again, a restarted
# node has replayed its WAL and rejoined, and hinted handoff has had rounds to run, so the final
# reads check that the system converged rather than catch it still healing.
QUIET_S_DEFAULT = 10.0
# Long enough for the cluster to elect leaders and the workload to start; a tenth of a short
# run so that a 10 s smoke test still has most of its time for faults.
WARMUP_S_MAX = 2.0
WARMUP_FRACTION = 0.1
# Healthy time between two faults, so each fault has a clean "after" in the history.
HEALTHY_S_MIN = 1.0
# A shorter fault cannot be applied and healed reliably: proxies reconfigure, processes restart.
FAULT_S_MIN = 0.1
# Jepsen's "kill one node, then all": a whole-cluster crash is the case that loses acknowledged
# writes when fsync is skipped, but a cluster that is always wholly down tests nothing else.
CRASH_ALL_PROBABILITY = 0.2
# Two minutes: longer than any lease, election timeout or failure timeout in distlab, so a skew
# breaks anything that trusts wall clocks, yet short of the hours that look like a misconfigured
# machine rather than a drifting clock.
CLOCK_OFFSET_MS_MAX_DEFAULT = 120_000
# A day; past that a skew is a different machine's time zone, not a clock fault.
CLOCK_OFFSET_MS_MAX = 86_400_000
# A LAN is well under 1 ms; 50 to 500 ms is a slow WAN link or a congested switch, enough to
# reorder heartbeats and push calls near their deadlines without cutting the link outright.
LATENCY_DELAY_MS_MIN = 50
LATENCY_DELAY_MS_MAX = 500
# Hand-written latency: past a minute every RPC deadline (limits.DEADLINE_MS_MAX_DEFAULT, 30 s)
# has expired, and such a link is better written as a partition.
DELAY_MS_MAX = 60_000
# Room for every node's name (NODES_MAX x NODE_NAME_CHARS_MAX) plus separators.
DESCRIPTION_CHARS_MAX = 20_000


# ---------------------------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------------------------


class FaultKind(StrEnum):
    PARTITION = "partition"  # cut a set of directed links (network proxies)
    KILL = "kill"  # kill -9 some nodes, restart them at end_s
    PAUSE = "pause"  # SIGSTOP some nodes, SIGCONT at end_s
    CLOCK = "clock"  # skew the wall clocks of some nodes by clock_offsets_ms, reset at end_s
    DISK = "disk"  # kill -9 and lose the un-fsynced tail of the nodes' files, restart at end_s
    LATENCY = "latency"  # add delay_ms +- jitter_ms on every link touching the nodes
    # A gray failure (Huang et al., HotOS 2017): the nodes' calls to their peers misbehave
    # (rpc_action, with rpc_probability) while they stay up and answer health checks.
    GRAY = "gray"


# What a gray fault does to a call (``distlab.chaos.rpc_faults``): lose the reply after the
# callee did the work, hold the call (delay_ms), send it twice, or fail it at once.
GRAY_ACTIONS = ("drop_reply", "delay", "duplicate", "fail")
GRAY_PROBABILITY_MIN = 0.3  # below this a short fault may hit nothing worth seeing


class PartitionShape(StrEnum):
    ONE = "one"  # isolate one node from all others
    HALVES = "halves"  # two halves, the bigger first; for 3 nodes: 2 | 1
    MAJORITIES_RING = "majorities-ring"  # every node sees a majority, no two the same one
    BRIDGE = "bridge"  # two halves that reach each other only through one bridge node
    ONE_WAY = "one-way"  # one node cannot send to the others but still receives
    # The clients cannot reach one node, which still talks to its peers: the one partition that
    # matters to nodes that never talk to each other (cache nodes). Drawn only when named.
    CLIENTS = "clients"


# The clients' end of the links a partition can cut (the harness's client proxies).
CLIENT_NAME = "client"


# The fewest nodes each shape needs. Jepsen's majorities-ring is specified for 5 and more: with
# 3 nodes every view would be one neighbour (a one-way cycle), with 4 it cuts only the diagonals.
SHAPE_NODES_MIN: Mapping[PartitionShape, int] = {
    PartitionShape.ONE: 2,
    PartitionShape.HALVES: 2,
    PartitionShape.MAJORITIES_RING: 5,
    PartitionShape.BRIDGE: 3,
    PartitionShape.ONE_WAY: 2,
    PartitionShape.CLIENTS: 1,
}


@dataclass(frozen=True, slots=True)
class Partition:
    """Directed links (source, target) that are cut: source's messages to target are dropped."""

    shape: PartitionShape
    cuts: frozenset[tuple[str, str]]
    description: str  # e.g. "halves: {n1, n2} | {n3}"

    def __post_init__(self) -> None:
        if not self.cuts:
            raise ValueError("a partition must cut at least one link")
        if len(self.cuts) > CUTS_MAX:
            raise ValueError(f"a partition cuts at most {CUTS_MAX} links, got {len(self.cuts)}")
        for source, target in self.cuts:
            if source == target:
                raise ValueError(f"a node cannot be cut from itself: ({source!r}, {target!r})")
        if not 0 < len(self.description) <= DESCRIPTION_CHARS_MAX:
            raise ValueError(
                f"a partition description has 1 to {DESCRIPTION_CHARS_MAX} characters, "
                f"got {len(self.description)}"
            )

    def reachable(self, source: str, target: str) -> bool:
        """Whether a message from source arrives at target (a node always reaches itself)."""
        return source == target or (source, target) not in self.cuts


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: applied at start_s, healed at end_s (seconds after the workload starts)."""

    kind: FaultKind
    start_s: float
    end_s: float
    # The nodes it targets. For PARTITION this is informative: the isolated node (one), the
    # smaller half (halves), the bridge node (bridge), the node that cannot send (one-way), or
    # every node (majorities-ring, where every node loses some links).
    nodes: tuple[str, ...]
    partition: Partition | None = None  # for PARTITION
    clock_offsets_ms: tuple[tuple[str, int], ...] = ()  # for CLOCK: (node, offset) pairs
    delay_ms: int = 0  # for LATENCY, and GRAY's delay
    jitter_ms: int = 0  # for LATENCY
    rpc_action: str = ""  # for GRAY: one of GRAY_ACTIONS
    rpc_probability: float = 0.0  # for GRAY: of each call being hit, in (0, 1]

    def __post_init__(self) -> None:
        _check_time("start_s", self.start_s)
        _check_time("end_s", self.end_s)
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        _check_nodes("nodes", self.nodes)
        is_partition = self.kind is FaultKind.PARTITION
        if is_partition != (self.partition is not None):
            raise ValueError(
                f"a {self.kind} fault {'needs' if is_partition else 'takes no'} partition"
            )
        if self.kind is FaultKind.CLOCK:
            clock_nodes = tuple(node for node, _ in self.clock_offsets_ms)
            if clock_nodes != self.nodes:
                raise ValueError(
                    f"a clock fault's offsets must name its nodes in order: "
                    f"nodes {list(self.nodes)}, offsets for {list(clock_nodes)}"
                )
            for node, offset_ms in self.clock_offsets_ms:
                if not -CLOCK_OFFSET_MS_MAX <= offset_ms <= CLOCK_OFFSET_MS_MAX:
                    raise ValueError(
                        f"clock offset of {node} must be within +-{CLOCK_OFFSET_MS_MAX} ms, "
                        f"got {offset_ms}"
                    )
        elif self.clock_offsets_ms:
            raise ValueError(f"a {self.kind} fault takes no clock_offsets_ms")
        if self.kind is FaultKind.GRAY:
            if self.rpc_action not in GRAY_ACTIONS:
                raise ValueError(
                    f"rpc_action must be one of {GRAY_ACTIONS}, got {self.rpc_action!r}"
                )
            if not 0.0 < self.rpc_probability <= 1.0:
                raise ValueError(f"rpc_probability must be in (0, 1], got {self.rpc_probability}")
            wants_delay = self.rpc_action == "delay"
            if wants_delay != (1 <= self.delay_ms <= DELAY_MS_MAX) or self.jitter_ms:
                raise ValueError(
                    f"a gray fault takes delay_ms in [1, {DELAY_MS_MAX}] exactly when its "
                    "rpc_action is delay, and no jitter_ms"
                )
        elif self.rpc_action or self.rpc_probability:
            raise ValueError(f"a {self.kind} fault takes no rpc_action or rpc_probability")
        elif self.kind is FaultKind.LATENCY:
            if not 1 <= self.delay_ms <= DELAY_MS_MAX:
                raise ValueError(f"delay_ms must be in [1, {DELAY_MS_MAX}], got {self.delay_ms}")
            if not 0 <= self.jitter_ms <= self.delay_ms:
                raise ValueError(
                    f"jitter_ms must be in [0, delay_ms={self.delay_ms}], got {self.jitter_ms}"
                )
        elif self.delay_ms or self.jitter_ms:
            raise ValueError(f"a {self.kind} fault takes no delay_ms or jitter_ms")

    @property
    def description(self) -> str:
        """One line a person can read, e.g. "kill n2" or "latency n2 200+-50 ms"."""
        if self.partition is not None:
            return f"partition {self.partition.description}"
        if self.kind is FaultKind.CLOCK:
            skews = (f"{node} {offset_ms:+d} ms" for node, offset_ms in self.clock_offsets_ms)
            return f"clock {', '.join(skews)}"
        if self.kind is FaultKind.LATENCY:
            return f"latency {', '.join(self.nodes)} {self.delay_ms}+-{self.jitter_ms} ms"
        if self.kind is FaultKind.GRAY:
            delay = f" {self.delay_ms} ms" if self.rpc_action == "delay" else ""
            return (
                f"gray {', '.join(self.nodes)}: {self.rpc_action}{delay} on "
                f"{self.rpc_probability:.0%} of calls to peers"
            )
        return f"{self.kind} {', '.join(self.nodes)}"

    def to_json(self) -> dict[str, object]:
        """A JSON object holding only the fields this kind uses."""
        data: dict[str, object] = {
            "kind": str(self.kind),
            "start_s": self.start_s,
            "end_s": self.end_s,
            "nodes": list(self.nodes),
        }
        if self.partition is not None:
            data["partition"] = {
                "shape": str(self.partition.shape),
                # Sorted: a frozenset's order changes with the interpreter's hash seed.
                "cuts": [list(cut) for cut in sorted(self.partition.cuts)],
                "description": self.partition.description,
            }
        if self.kind is FaultKind.CLOCK:
            data["clock_offsets_ms"] = dict(self.clock_offsets_ms)
        if self.kind is FaultKind.LATENCY:
            data["delay_ms"] = self.delay_ms
            data["jitter_ms"] = self.jitter_ms
        if self.kind is FaultKind.GRAY:
            data["rpc_action"] = self.rpc_action
            data["rpc_probability"] = self.rpc_probability
            if self.delay_ms:
                data["delay_ms"] = self.delay_ms
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Fault:
        """The fault `to_json` wrote, or one written by hand; ValueError on anything else."""
        kind_name = _get_str(data, "kind")
        try:
            kind = FaultKind(kind_name)
        except ValueError:
            known = ", ".join(str(known_kind) for known_kind in FaultKind)
            raise ValueError(f"unknown fault kind {kind_name!r} (known: {known})") from None
        allowed = {"kind", "start_s", "end_s", "nodes", *_KIND_FIELDS[kind]}
        _check_keys(data, allowed, required=frozenset({"kind", "start_s", "end_s", "nodes"}))
        partition = None
        if "partition" in data:
            partition = _partition_from_json(_get_mapping(data, "partition"))
        clock_offsets_ms: tuple[tuple[str, int], ...] = ()
        if "clock_offsets_ms" in data:
            offsets = _get_mapping(data, "clock_offsets_ms")
            clock_offsets_ms = tuple(
                (node, _as_int(f"clock_offsets_ms[{node!r}]", offset))
                for node, offset in offsets.items()
            )
        return cls(
            kind=kind,
            start_s=_get_seconds(data, "start_s"),
            end_s=_get_seconds(data, "end_s"),
            nodes=_get_str_tuple(data, "nodes"),
            partition=partition,
            clock_offsets_ms=clock_offsets_ms,
            delay_ms=_as_int("delay_ms", data.get("delay_ms", 0)),
            jitter_ms=_as_int("jitter_ms", data.get("jitter_ms", 0)),
            rpc_action=str(data.get("rpc_action", "")),
            rpc_probability=(
                _get_probability(data, "rpc_probability") if "rpc_probability" in data else 0.0
            ),
        )


# The JSON fields each kind takes besides kind, start_s, end_s and nodes.
_KIND_FIELDS: Mapping[FaultKind, frozenset[str]] = {
    FaultKind.PARTITION: frozenset({"partition"}),
    FaultKind.KILL: frozenset(),
    FaultKind.PAUSE: frozenset(),
    FaultKind.CLOCK: frozenset({"clock_offsets_ms"}),
    FaultKind.DISK: frozenset(),
    FaultKind.LATENCY: frozenset({"delay_ms", "jitter_ms"}),
    FaultKind.GRAY: frozenset({"rpc_action", "rpc_probability", "delay_ms"}),
}


@dataclass(frozen=True, slots=True)
class Schedule:
    """The faults of one run: sorted by start_s, never overlapping, all healed by duration_s."""

    seed: int
    duration_s: float
    nodes: tuple[str, ...]
    faults: tuple[Fault, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be in [0, 2**64 - 1], got {self.seed}")
        if not (math.isfinite(self.duration_s) and 0 < self.duration_s <= DURATION_S_MAX):
            raise ValueError(
                f"duration_s must be in (0, {DURATION_S_MAX}] seconds, got {self.duration_s}"
            )
        _check_nodes("nodes", self.nodes)
        if len(self.faults) > FAULTS_MAX:
            raise ValueError(
                f"a schedule holds at most {FAULTS_MAX} faults, got {len(self.faults)}"
            )
        known = frozenset(self.nodes)
        previous: Fault | None = None
        for index, fault in enumerate(self.faults):
            where = f"faults[{index}] ({fault.description})"
            unknown = sorted(_fault_nodes(fault) - known)
            if unknown:
                raise ValueError(f"{where} names nodes not in the schedule: {unknown}")
            if fault.end_s > self.duration_s:
                raise ValueError(
                    f"{where} ends at {fault.end_s} s, after duration_s {self.duration_s} s"
                )
            if previous is not None and fault.start_s < previous.start_s:
                raise ValueError(
                    f"{where} starts at {fault.start_s} s, before faults[{index - 1}] "
                    f"at {previous.start_s} s: faults must be sorted by start_s"
                )
            if previous is not None and fault.start_s < previous.end_s:
                raise ValueError(
                    f"{where} starts at {fault.start_s} s, before faults[{index - 1}] heals "
                    f"at {previous.end_s} s: faults must not overlap"
                )
            previous = fault

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "duration_s": self.duration_s,
            "nodes": list(self.nodes),
            "faults": [fault.to_json() for fault in self.faults],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Schedule:
        """A saved or hand-written schedule; ValueError naming the first problem found."""
        fields = frozenset({"seed", "duration_s", "nodes", "faults"})
        _check_keys(data, fields, required=fields)
        faults_data = data["faults"]
        if not isinstance(faults_data, list):
            raise ValueError(f"faults must be a list, got {_type_name(faults_data)}")
        if len(faults_data) > FAULTS_MAX:
            raise ValueError(
                f"a schedule holds at most {FAULTS_MAX} faults, got {len(faults_data)}"
            )
        faults = []
        for index, fault_data in enumerate(faults_data):
            if not isinstance(fault_data, Mapping):
                raise ValueError(f"faults[{index}] must be an object, got {_type_name(fault_data)}")
            try:
                faults.append(Fault.from_json(fault_data))
            except ValueError as error:
                raise ValueError(f"faults[{index}]: {error}") from None
        return cls(
            seed=_as_int("seed", data["seed"]),
            duration_s=_get_seconds(data, "duration_s"),
            nodes=_get_str_tuple(data, "nodes"),
            faults=tuple(faults),
        )

    def active_at(self, t_s: float) -> Fault | None:
        """The fault holding at t_s (start_s <= t_s < end_s), if any."""
        index = bisect.bisect_right(self.faults, t_s, key=lambda fault: fault.start_s) - 1
        if index >= 0 and t_s < self.faults[index].end_s:
            return self.faults[index]
        return None


# ---------------------------------------------------------------------------------------------
# Partitions.
# ---------------------------------------------------------------------------------------------


def partition(shape: PartitionShape, nodes: Sequence[str], rng: random.Random) -> Partition:
    """A partition of `nodes` in `shape`, its members drawn from `rng`."""
    return _build_partition(PartitionShape(shape), _checked_node_list(nodes), rng)[0]


def _build_partition(
    shape: PartitionShape, nodes: tuple[str, ...], rng: random.Random
) -> tuple[Partition, tuple[str, ...]]:
    """The partition and the nodes a Fault names as its targets."""
    nodes_min = SHAPE_NODES_MIN[shape]
    if len(nodes) < nodes_min:
        raise ValueError(
            f"partition shape {shape} needs at least {nodes_min} nodes, got {len(nodes)}"
        )
    position = {node: index for index, node in enumerate(nodes)}

    def in_order(group: Iterable[str]) -> list[str]:
        # Descriptions list nodes in the caller's order, so "n1, n2" reads the same every time.
        return sorted(group, key=position.__getitem__)

    def braces(group: Iterable[str]) -> str:
        return "{" + ", ".join(in_order(group)) + "}"

    shuffled = list(nodes)
    rng.shuffle(shuffled)
    if shape is PartitionShape.ONE:
        isolated, others = shuffled[0], shuffled[1:]
        cuts = _cut_between([isolated], others)
        description = f"one: {braces([isolated])} | {braces(others)}"
        targets = [isolated]
    elif shape is PartitionShape.HALVES:
        bigger = (len(nodes) + 1) // 2
        first, second = shuffled[:bigger], shuffled[bigger:]
        cuts = _cut_between(first, second)
        description = f"halves: {braces(first)} | {braces(second)}"
        targets = second
    elif shape is PartitionShape.BRIDGE:
        bridge, rest = shuffled[0], shuffled[1:]
        bigger = (len(rest) + 1) // 2
        first, second = rest[:bigger], rest[bigger:]
        cuts = _cut_between(first, second)
        description = f"bridge: {braces(first)} <-> {bridge} <-> {braces(second)}"
        targets = [bridge]
    elif shape is PartitionShape.MAJORITIES_RING:
        cuts, description = _majorities_ring(shuffled)
        targets = list(nodes)
    elif shape is PartitionShape.CLIENTS:
        unreachable = shuffled[0]
        cuts = frozenset({(CLIENT_NAME, unreachable)})
        description = f"clients: the clients cannot reach {unreachable}"
        targets = [unreachable]
    else:
        assert shape is PartitionShape.ONE_WAY, shape
        mute, others = shuffled[0], shuffled[1:]
        cuts = frozenset((mute, other) for other in others)
        description = f"one-way: {mute} cannot send to {braces(others)}"
        targets = [mute]
    return Partition(shape, cuts, description), tuple(in_order(targets))


def _cut_between(first: Sequence[str], second: Sequence[str]) -> frozenset[tuple[str, str]]:
    """Every link between the two groups, both directions."""
    return frozenset(cut for a in first for b in second for cut in ((a, b), (b, a)))


def _majorities_ring(ring: Sequence[str]) -> tuple[frozenset[tuple[str, str]], str]:
    """Jepsen's majorities-ring: every node sees a majority, and no two see the same one.

    Construction: lay the (already shuffled) nodes on a ring; each node sees itself and the
    r = ceil(floor(n/2) / 2) nodes nearest it on each side, and a link is cut when its target is
    outside its source's view. Ring distance is symmetric, so every cut is cut both ways.
    - Majority: a view has 2r + 1 >= floor(n/2) + 1 > n/2 nodes.
    - Distinct: 2r + 1 <= floor(n/2) + 2 < n for n >= 5, so a view is an arc of the ring that
      leaves at least one node out; such an arc has one centre, its owner, so two nodes' views
      differ. (It also means the arc never wraps onto itself.)
    When floor(n/2) is odd (n = 6, 7, 10, 11, ...) a view is one node more than a bare majority:
    the price of symmetric cuts, since a bare majority of even size cannot be centred on its
    owner. Jepsen meets the same wall at 7 nodes and answers it with a stochastic graph instead.
    """
    count = len(ring)
    radius = (count // 2 + 1) // 2
    assert 2 * radius + 1 > count / 2, (count, radius)
    assert 2 * radius + 1 < count, (count, radius)
    cuts = frozenset(
        (ring[source], ring[target])
        for source in range(count)
        for target in range(count)
        if min((source - target) % count, (target - source) % count) > radius
    )
    description = (
        f"majorities-ring: {' - '.join(ring)} - {ring[0]}, "
        f"each node sees itself and the {radius} nearest on each side"
    )
    return cuts, description


def _allowed_shapes(node_count: int) -> tuple[PartitionShape, ...]:
    return tuple(shape for shape in PartitionShape if SHAPE_NODES_MIN[shape] <= node_count)


# ---------------------------------------------------------------------------------------------
# Random schedules.
# ---------------------------------------------------------------------------------------------


def random_schedule(
    seed: int,
    nodes: Sequence[str],
    kinds: Iterable[FaultKind],
    duration_s: float,
    interval_s: float = 10.0,
    fault_s: tuple[float, float] = (2.0, 6.0),
    quiet_s: float = QUIET_S_DEFAULT,
    shapes: Iterable[PartitionShape] | None = None,
    clock_offset_ms_max: int = CLOCK_OFFSET_MS_MAX_DEFAULT,
) -> Schedule:
    """The schedule of one run, a pure function of its arguments (see the module docstring).

    `kinds` is taken as a set (a kind listed twice is not drawn twice as often). `shapes` of None
    means every shape the node count allows; a shape named explicitly that the node count does
    not allow is an error. A duration too short for any fault gives a schedule with no faults.
    """
    node_list = _checked_node_list(nodes)
    kind_list = _checked_kinds(kinds)
    shape_list = _checked_shapes(shapes, len(node_list), FaultKind.PARTITION in kind_list)
    if FaultKind.CLOCK in kind_list and not 1 <= clock_offset_ms_max <= CLOCK_OFFSET_MS_MAX:
        raise ValueError(
            f"clock_offset_ms_max must be in [1, {CLOCK_OFFSET_MS_MAX}], got {clock_offset_ms_max}"
        )
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be in [0, 2**64 - 1], got {seed}")
    if not (math.isfinite(duration_s) and 0 < duration_s <= DURATION_S_MAX):
        raise ValueError(f"duration_s must be in (0, {DURATION_S_MAX}] seconds, got {duration_s}")
    if not (math.isfinite(interval_s) and 0 < interval_s <= DURATION_S_MAX):
        raise ValueError(f"interval_s must be in (0, {DURATION_S_MAX}] seconds, got {interval_s}")
    fault_s_min, fault_s_max = fault_s
    if not (math.isfinite(fault_s_max) and FAULT_S_MIN <= fault_s_min <= fault_s_max):
        raise ValueError(
            f"fault_s must be (low, high) with {FAULT_S_MIN} <= low <= high seconds, got {fault_s}"
        )
    if not (math.isfinite(quiet_s) and quiet_s >= 0):
        raise ValueError(f"quiet_s must be a non-negative number of seconds, got {quiet_s}")

    rng = random.Random(seed)
    warmup_ms = round(min(WARMUP_S_MAX, WARMUP_FRACTION * duration_s) * 1000)
    healed_by_ms = _floor_ms(duration_s - quiet_s)
    healthy_ms_min = math.ceil(HEALTHY_S_MIN * 1000)
    faults: list[Fault] = []
    start_ms = warmup_ms
    while True:
        length_ms = max(1, round(rng.uniform(fault_s_min, fault_s_max) * 1000))
        end_ms = start_ms + length_ms
        if end_ms > healed_by_ms:
            break
        if len(faults) == FAULTS_MAX:
            raise ValueError(
                f"the schedule would hold more than {FAULTS_MAX} faults; "
                f"lengthen interval_s or shorten duration_s"
            )
        kind = rng.choice(kind_list)
        faults.append(
            _draw_fault(
                kind,
                start_ms / 1000,
                end_ms / 1000,
                node_list,
                shape_list,
                clock_offset_ms_max,
                rng,
            )
        )
        stagger_s = rng.uniform(0.0, 2.0 * max(0.0, interval_s - length_ms / 1000))
        start_ms = end_ms + max(healthy_ms_min, round(stagger_s * 1000))
    schedule = Schedule(seed, float(duration_s), node_list, tuple(faults))
    assert all(fault.end_s <= duration_s - quiet_s for fault in schedule.faults)
    return schedule


def _draw_fault(
    kind: FaultKind,
    start_s: float,
    end_s: float,
    nodes: tuple[str, ...],
    shapes: tuple[PartitionShape, ...],
    clock_offset_ms_max: int,
    rng: random.Random,
) -> Fault:
    """One fault of `kind` over [start_s, end_s), its targets drawn from `rng`."""
    if kind is FaultKind.PARTITION:
        cut, targets = _build_partition(rng.choice(shapes), nodes, rng)
        return Fault(kind, start_s, end_s, targets, partition=cut)
    if kind in (FaultKind.KILL, FaultKind.DISK) and rng.random() < CRASH_ALL_PROBABILITY:
        return Fault(kind, start_s, end_s, nodes)
    if kind is FaultKind.CLOCK:
        # At least one node keeps true time, so the skew is relative to someone (unless the
        # cluster is one node, when the only skew is against the real time of the checker).
        count = rng.randint(1, max(1, len(nodes) - 1))
        chosen = sorted(rng.sample(range(len(nodes)), count))
        offsets = tuple(
            (nodes[index], _draw_offset_ms(clock_offset_ms_max, rng)) for index in chosen
        )
        return Fault(
            kind, start_s, end_s, tuple(node for node, _ in offsets), clock_offsets_ms=offsets
        )
    target = (rng.choice(nodes),)
    if kind is FaultKind.LATENCY:
        delay_ms = rng.randint(LATENCY_DELAY_MS_MIN, LATENCY_DELAY_MS_MAX)
        jitter_ms = rng.randint(0, delay_ms // 2)
        return Fault(kind, start_s, end_s, target, delay_ms=delay_ms, jitter_ms=jitter_ms)
    if kind is FaultKind.GRAY:
        action = rng.choice(GRAY_ACTIONS)
        delay_ms = (
            rng.randint(LATENCY_DELAY_MS_MIN, LATENCY_DELAY_MS_MAX) if action == "delay" else 0
        )
        probability = round(rng.uniform(GRAY_PROBABILITY_MIN, 1.0), 2)
        return Fault(
            kind,
            start_s,
            end_s,
            target,
            delay_ms=delay_ms,
            rpc_action=action,
            rpc_probability=probability,
        )
    return Fault(kind, start_s, end_s, target)


def _draw_offset_ms(offset_ms_max: int, rng: random.Random) -> int:
    """Log-uniform magnitude in [1, offset_ms_max], random sign: 3 ms and 30 s are equally
    likely orders of magnitude, and each breaks different things (ordering vs leases)."""
    magnitude = round(math.exp(rng.uniform(0.0, math.log(offset_ms_max))))
    magnitude = min(max(magnitude, 1), offset_ms_max)
    return magnitude if rng.random() < 0.5 else -magnitude


def _floor_ms(seconds: float) -> int:
    """The largest whole millisecond count m with m / 1000 <= seconds (negative if seconds is)."""
    millis = math.floor(seconds * 1000)
    # seconds * 1000 can round up to an integer; step back until the division is really below.
    while millis / 1000 > seconds:
        millis -= 1
    return millis


# ---------------------------------------------------------------------------------------------
# Checks and JSON helpers.
# ---------------------------------------------------------------------------------------------


def _checked_node_list(nodes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(nodes, str):
        raise ValueError(f"nodes must be a sequence of names, not the string {nodes!r}")
    node_tuple = tuple(nodes)
    _check_nodes("nodes", node_tuple)
    return node_tuple


def _checked_kinds(kinds: Iterable[FaultKind]) -> tuple[FaultKind, ...]:
    kind_list: list[FaultKind] = []
    for kind in kinds:
        try:
            checked = FaultKind(kind)
        except ValueError:
            raise ValueError(f"unknown fault kind {kind!r}") from None
        if checked not in kind_list:
            kind_list.append(checked)
    if not kind_list:
        raise ValueError("kinds must name at least one fault kind")
    return tuple(kind_list)


def _checked_shapes(
    shapes: Iterable[PartitionShape] | None, node_count: int, partitions: bool
) -> tuple[PartitionShape, ...]:
    allowed = _allowed_shapes(node_count)
    chosen: tuple[PartitionShape, ...]
    if shapes is None:
        chosen = tuple(shape for shape in allowed if shape is not PartitionShape.CLIENTS)
    else:
        chosen_list: list[PartitionShape] = []
        for shape in shapes:
            try:
                checked = PartitionShape(shape)
            except ValueError:
                raise ValueError(f"unknown partition shape {shape!r}") from None
            if checked not in chosen_list:
                chosen_list.append(checked)
        chosen = tuple(chosen_list)
    if not partitions:
        return chosen
    if not chosen:
        raise ValueError(
            f"partition faults need at least one shape, and {node_count} node(s) allow none"
        )
    for shape in chosen:
        if shape not in allowed:
            raise ValueError(
                f"partition shape {shape} needs at least {SHAPE_NODES_MIN[shape]} nodes, "
                f"got {node_count}"
            )
    return chosen


def _check_nodes(field: str, nodes: tuple[str, ...]) -> None:
    if not 1 <= len(nodes) <= NODES_MAX:
        raise ValueError(f"{field} must name 1 to {NODES_MAX} nodes, got {len(nodes)}")
    for node in nodes:
        if not 1 <= len(node) <= NODE_NAME_CHARS_MAX:
            raise ValueError(f"a node name has 1 to {NODE_NAME_CHARS_MAX} characters, got {node!r}")
    if len(set(nodes)) != len(nodes):
        duplicates = sorted({node for node in nodes if nodes.count(node) > 1})
        raise ValueError(f"{field} names a node more than once: {duplicates}")


def _check_time(field: str, seconds: float) -> None:
    if not (math.isfinite(seconds) and 0 <= seconds <= DURATION_S_MAX):
        raise ValueError(f"{field} must be in [0, {DURATION_S_MAX}] seconds, got {seconds}")


def _fault_nodes(fault: Fault) -> frozenset[str]:
    """Every node a fault names, in any field."""
    named = set(fault.nodes)
    named.update(node for node, _ in fault.clock_offsets_ms)
    if fault.partition is not None:
        for source, target in fault.partition.cuts:
            named.update((source, target))
    return frozenset(named - {CLIENT_NAME})


def _partition_from_json(data: Mapping[str, object]) -> Partition:
    _check_keys(data, {"shape", "cuts", "description"}, required=frozenset({"shape", "cuts"}))
    shape_name = _get_str(data, "shape")
    try:
        shape = PartitionShape(shape_name)
    except ValueError:
        known = ", ".join(str(known_shape) for known_shape in PartitionShape)
        raise ValueError(f"unknown partition shape {shape_name!r} (known: {known})") from None
    cuts_data = data["cuts"]
    if not isinstance(cuts_data, list):
        raise ValueError(f"partition.cuts must be a list, got {_type_name(cuts_data)}")
    if len(cuts_data) > CUTS_MAX:
        raise ValueError(f"a partition cuts at most {CUTS_MAX} links, got {len(cuts_data)}")
    cuts = []
    for cut in cuts_data:
        if not (
            isinstance(cut, list) and len(cut) == 2 and all(isinstance(end, str) for end in cut)
        ):
            raise ValueError(f"each cut must be [source, target] node names, got {cut!r}")
        cuts.append((str(cut[0]), str(cut[1])))
    if "description" in data:
        description = _get_str(data, "description")
    else:
        # Hand-written cuts: describe them as they are.
        links = ", ".join(f"{source}->{target}" for source, target in sorted(cuts))
        description = f"{shape}: cut {links}"
    return Partition(shape, frozenset(cuts), description)


def _check_keys(
    data: Mapping[str, object], allowed: set[str] | frozenset[str], required: frozenset[str]
) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise ValueError(f"unknown fields {unknown} (allowed: {sorted(allowed)})")
    missing = sorted(required - data.keys())
    if missing:
        raise ValueError(f"missing fields {missing}")


def _type_name(value: object) -> str:
    return type(value).__name__


def _get_str(data: Mapping[str, object], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {_type_name(value)}")
    return value


def _get_mapping(data: Mapping[str, object], field: str) -> Mapping[str, object]:
    value = data.get(field)
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ValueError(f"{field} must be an object, got {_type_name(value)}")
    return value


def _get_str_tuple(data: Mapping[str, object], field: str) -> tuple[str, ...]:
    value = data.get(field)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{field} must be a list of node names, got {value!r}")
    if len(value) > NODES_MAX:
        raise ValueError(f"{field} must name 1 to {NODES_MAX} nodes, got {len(value)}")
    return tuple(str(item) for item in value)


def _get_seconds(data: Mapping[str, object], field: str) -> float:
    value = data.get(field)
    # bool is an int in Python, but `"start_s": true` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"{field} is out of range, got {value!r}") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{field} must be finite, got {value!r}")
    return seconds


def _get_probability(data: Mapping[str, object], field: str) -> float:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be a number, got {value!r}")
    return float(value)


def _as_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    return value
