"""Client-side routing of cache keys to cache nodes, memcached and mcrouter style.

Implements four ways for a client to pick the node that holds a key, each one class with the
same `Router` protocol, so that their balance and movement can be measured side by side:
- `ConsistentHashRouter`: consistent hashing (Karger et al., "Consistent Hashing and Random
  Trees", STOC 1997) with virtual nodes, as libketama does for memcached; built on
  `distlab.common.hashring.HashRing`.
- `JumpHashRouter`: jump consistent hash (Lamping and Veach, "A Fast, Minimal Memory, Consistent
  Hash Algorithm", 2014).
- `RendezvousRouter`: highest random weight (Thaler and Ravishankar, "Using Name-Based Mappings
  to Increase Hit Rates", IEEE/ACM Transactions on Networking 1998).
- `BoundedLoadRouter`: consistent hashing with bounded loads (Mirrokni, Thorup and
  Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018).
Plus `movement_report`, which measures what a membership change costs (keys that move, against
the least any balanced scheme must move) and how even the new placement is; and `NodeHealth`,
the client's failure handling: consecutive failures take a node out of rotation (mcrouter's TKO,
Envoy's outlier ejection) for a period that grows while probes keep failing, and a key whose
node is out goes to the next node of its preference order (mcrouter's failover).

Theory of operation:
- Every router is an immutable value over a membership, a tuple of distinct node ids. A new
  membership is a new router (`with_nodes`); comparing the two on a sample of keys
  (`movement_report`) is how the cost of a change is measured, with no data anywhere.
- `nodes_for(key, count)` is the key's preference order: distinct nodes, `node_for(key)` first,
  and `nodes_for(key, k)` is a prefix of `nodes_for(key, k + 1)`. A client replicating a hot key
  writes it to the first R; a client whose first choice is out of rotation uses the next one
  (`NodeHealth.route`). The prefix rule is what makes "the next one" well defined.
- The least movement: if keys are spread evenly over the nodes before and after, a key must
  move at least as often as the two even spreads differ, which is their total variation
  distance, 1 - |common nodes| / max(|before|, |after|): 1/n when one node joins n - 1 or one of
  n leaves, and 1/n too when one node of n is replaced by another (`ideal_fraction`).
- `NodeHealth` is a per-node state machine, HEALTHY -> EJECTED -> PROBING -> HEALTHY | EJECTED,
  with its legal transitions in `TRANSITIONS`. Time is the caller's `now_ms`; the move from
  EJECTED to PROBING happens when a call looks at the node at or after the ejection's end.

Leaves out:
- The hash functions of libketama (MD5, four points per digest) and of mcrouter (its own
  variants of both): these routers agree with each other, not with those libraries.
- Weights (a bigger node taking a bigger share). The ring supports them; the protocol here keeps
  one share per node so that the four routers compare directly.
- mcrouter's other routes (prefix routing, shadowing, warm-up, all-sync/all-async replication)
  and its background health probes; Envoy's success-rate and failure-percentage detectors and
  its cap on the fraction of hosts ejected at once (`max_ejection_percent`).
- Any I/O: the client sends the calls and the probes and reports their outcome here.
"""

import enum
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Protocol

import mmh3

from distlab.common.hashring import NODE_ID_BYTES_MAX, NODES_MAX, HashRing, check_node_id
from distlab.common.limits import CLIENT_DEADLINE_MS_DEFAULT

# libketama gives every memcached server 160 points on its continuum (40 MD5 digests, 4 points
# each), so a reader comparing with memcached clients sees the same density. A node's share then
# varies by about 1/sqrt(160) = 8%; of the tests' five nodes the busiest carries 14% over.
DEFAULT_VNODES_PER_NODE = 160
# The paper's c = 1 + epsilon. 1.25 is the low end of what HAProxy's manual calls reasonable
# for hash-balance-factor ("from 125 to 200"): a node holds at most 25% over the average. A
# smaller c balances better but moves more keys off their ring owner and walks past more full
# nodes per key.
DEFAULT_LOAD_FACTOR = 1.25
# The load factor is read as a fraction with a denominator up to this, so 1.1 means 11/10 and not
# the binary float just above it, and capacities are exact integer arithmetic.
LOAD_FACTOR_DENOMINATOR_MAX = 1000
# A placement holds every key and its node in memory (about 200 bytes an entry in CPython), so a
# million keys is about 200 MB: far more than a sample needs to measure balance to a percent.
PLACEMENT_KEYS_MAX = 1 << 20

# Jump consistent hash, exactly as the paper's C++ listing: the 64-bit linear congruential
# generator's multiplier, and the 2**31 the doubles are scaled by.
JUMP_LCG_MULTIPLIER = 2862933555777941757
JUMP_SCALE = float(1 << 31)
UINT64_MASK = (1 << 64) - 1

# mcrouter's default (--timeouts-until-tko 3): one failure is often a blip, three in a row
# rarely are. Envoy's consecutive_5xx default is 5, for servers that may fail one request alone.
EJECT_AFTER_FAILURES = 3
# Short, unlike Envoy's 30 s base_ejection_time: an ejected cache node's keys are misses on the
# node they fall over to, which loads the database behind the cache, so a node that blipped
# should get its keys back soon. A node that stays down is ejected for longer each time.
EJECTION_MS = 5_000
# Envoy's max_ejection_time default (300 s): a node that has been down for a while is still
# probed every five minutes.
EJECTION_MS_MAX = 300_000
# A probe with no outcome after a client deadline was lost (or its outcome was dropped): another
# may go. Without this a lost probe would keep the node out for ever.
PROBE_TIMEOUT_MS = CLIENT_DEADLINE_MS_DEFAULT

# The rendezvous score hashes a node id behind its length in one byte; that only parses one way
# while ids fit in a byte's count.
assert NODE_ID_BYTES_MAX < 256


class Router(Protocol):
    """Where a key lives, for one membership. Routers are immutable values (but see
    `BoundedLoadRouter.assign`)."""

    @property
    def nodes(self) -> tuple[str, ...]:
        """The membership, in the order given."""
        ...

    def node_for(self, key: bytes) -> str:
        """The node holding the key."""
        ...

    def nodes_for(self, key: bytes, count: int) -> list[str]:
        """The first min(count, len(nodes)) nodes of the key's preference order, distinct,
        `node_for(key)` first; `nodes_for(key, k)` is a prefix of `nodes_for(key, k + 1)`."""
        ...

    def with_nodes(self, nodes: Iterable[str]) -> "Router":
        """A router of the same kind and parameters over another membership."""
        ...


class ConsistentHashRouter:
    """Consistent hashing with virtual nodes: Karger et al. 1997; libketama for memcached.

    Each node takes `vnodes` points on a ring of 2**128; a key goes to the first point clockwise
    from its hash. `nodes_for` is the ring's preference list (Dynamo 2007, 4.3): the distinct
    nodes met walking clockwise, so a dead node's keys spread over the nodes after its points.
    """

    __slots__ = ("_nodes", "_ring", "_vnodes")

    def __init__(self, nodes: Iterable[str], vnodes: int = DEFAULT_VNODES_PER_NODE) -> None:
        self._nodes = check_membership(nodes)
        self._vnodes = vnodes
        self._ring = _ring_of(self._nodes, vnodes)

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._nodes

    @property
    def vnodes(self) -> int:
        return self._vnodes

    def node_for(self, key: bytes) -> str:
        return self._ring.owner(_check_key(key))

    def nodes_for(self, key: bytes, count: int) -> list[str]:
        return self._ring.preference_list(_check_key(key), _check_count(count))

    def with_nodes(self, nodes: Iterable[str]) -> "ConsistentHashRouter":
        return ConsistentHashRouter(nodes, self._vnodes)

    def __repr__(self) -> str:
        return f"ConsistentHashRouter({list(self._nodes)!r}, vnodes={self._vnodes})"


class JumpHashRouter:
    """Jump consistent hash: Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash
    Algorithm", 2014.

    Bucket i is `nodes[i]`. The key's 64-bit hash seeds the paper's generator, which jumps
    forward through bucket numbers; the last jump below the bucket count is the bucket. No table
    at all, and a near-perfect balance. But the buckets are numbered: going from n to n + 1
    buckets moves 1/(n + 1) of the keys, all to the new last bucket, and only adding or removing
    at the END of the list moves the minimum. Removing `nodes[i]` from the middle renumbers every
    bucket after i, so most keys on those buckets move. The paper says so: buckets "must be
    numbered sequentially, which makes it more suitable for data storage applications than for
    distributed web caching" (a store replaces a bucket's machine and keeps its number; a cache
    client loses nodes in any order). The tests measure it.

    `nodes_for`: the r-th choice is jump hash of the key rehashed with seed r over the nodes not
    chosen yet, in their given order. A failed node's keys thus spread evenly over all the others
    (the next bucket number would take them all), at the price of choices after the first being
    no more stable than the numbering of what remains.
    """

    __slots__ = ("_nodes",)

    def __init__(self, nodes: Iterable[str]) -> None:
        self._nodes = check_membership(nodes)

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._nodes

    def node_for(self, key: bytes) -> str:
        return self._nodes[jump_consistent_hash(key_hash64(_check_key(key)), len(self._nodes))]

    def nodes_for(self, key: bytes, count: int) -> list[str]:
        _check_key(key)
        remaining = list(self._nodes)
        chosen: list[str] = []
        for seed in range(min(_check_count(count), len(self._nodes))):
            bucket = jump_consistent_hash(key_hash64(key, seed), len(remaining))
            chosen.append(remaining.pop(bucket))
        return chosen

    def with_nodes(self, nodes: Iterable[str]) -> "JumpHashRouter":
        return JumpHashRouter(nodes)

    def __repr__(self) -> str:
        return f"JumpHashRouter({list(self._nodes)!r})"


class RendezvousRouter:
    """Highest random weight: Thaler and Ravishankar, "Using Name-Based Mappings to Increase Hit
    Rates", IEEE/ACM ToN 1998.

    Every node scores the key with a hash of (node id, key); the highest score wins, and the
    preference order is the nodes by falling score. A join takes from each node exactly the keys
    the newcomer outscores it on, a leave hands each of its keys to that key's runner-up: both
    the least movement, with no ring and no vnodes. The cost is a hash per node per lookup.
    """

    __slots__ = ("_node_prefixes", "_nodes")

    def __init__(self, nodes: Iterable[str]) -> None:
        self._nodes = check_membership(nodes)
        self._node_prefixes = tuple(_score_prefix(node) for node in self._nodes)

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._nodes

    def node_for(self, key: bytes) -> str:
        return self.nodes_for(key, 1)[0]

    def nodes_for(self, key: bytes, count: int) -> list[str]:
        _check_key(key)
        # Ties (two 128-bit scores equal) go to the smaller id, so every client agrees.
        ranked = sorted(
            zip(self._nodes, self._node_prefixes, strict=True),
            key=lambda pair: (-mmh3.hash128(pair[1] + key, signed=False), pair[0]),
        )
        return [node for node, _ in ranked[: _check_count(count)]]

    def with_nodes(self, nodes: Iterable[str]) -> "RendezvousRouter":
        return RendezvousRouter(nodes)

    def __repr__(self) -> str:
        return f"RendezvousRouter({list(self._nodes)!r})"


class BoundedLoadRouter:
    """Consistent hashing with bounded loads: Mirrokni, Thorup and Zadimoghaddam, SODA 2018;
    used by Google Cloud Pub/Sub and by Vimeo in HAProxy (hash-balance-factor).

    The ring of `ConsistentHashRouter`, with a capacity: when the m-th key is placed, a node may
    take it only while it holds fewer than ceil(c * m / n) keys, so no node ever holds more than
    ceil(c * m / n) of m keys, c being `load_factor`. A key goes to the first node clockwise
    from its hash that is under capacity. The bound is on a known population: loads are counts
    of the keys (or clients, or connections) placed, and the answer for a key depends on the
    keys placed before it. So this router places a population with `assign(keys)`, in the order
    given, and answers `node_for` from the last assignment; a key it has not assigned goes to its
    plain consistent-hash owner. `assign` is the one mutation of a router: it records the answer.

    `nodes_for`: the assigned node, then the rest of the key's ring preference list.
    """

    __slots__ = ("_assignment", "_capacity_ratio", "_load_factor", "_nodes", "_ring", "_vnodes")

    def __init__(
        self,
        nodes: Iterable[str],
        load_factor: float = DEFAULT_LOAD_FACTOR,
        vnodes: int = DEFAULT_VNODES_PER_NODE,
    ) -> None:
        self._nodes = check_membership(nodes)
        if not (math.isfinite(load_factor) and load_factor >= 1):
            # Below 1 the capacities add up to less than the keys and some key has nowhere to go.
            raise ValueError(f"load_factor must be finite and >= 1, got {load_factor!r}")
        self._load_factor = load_factor
        self._capacity_ratio = Fraction(load_factor).limit_denominator(LOAD_FACTOR_DENOMINATOR_MAX)
        self._vnodes = vnodes
        self._ring = _ring_of(self._nodes, vnodes)
        self._assignment: dict[bytes, str] = {}

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._nodes

    @property
    def load_factor(self) -> float:
        return self._load_factor

    def capacity(self, placed_count: int) -> int:
        """The most keys a node may hold once `placed_count` keys are placed: ceil(c * m / n)."""
        ratio = self._capacity_ratio
        # Integer ceiling division: -(-a // b).
        return -(-ratio.numerator * placed_count // (ratio.denominator * len(self._nodes)))

    def assign(self, keys: Sequence[bytes]) -> dict[bytes, str]:
        """Place distinct keys in the order given; record and return the placement."""
        _check_population(keys)
        loads = dict.fromkeys(self._nodes, 0)
        assignment: dict[bytes, str] = {}
        for placed_count, key in enumerate(keys, start=1):
            capacity = self.capacity(placed_count)
            node = self._ring.owner(key)
            if loads[node] >= capacity:
                # The owner is full: walk on clockwise. A free node exists, because the n
                # capacities add up to at least c * m >= m and only m - 1 keys are placed.
                node = next(
                    candidate
                    for candidate in self._ring.preference_list(key, len(self._nodes))
                    if loads[candidate] < capacity
                )
            loads[node] += 1
            assignment[key] = node
        assert not keys or max(loads.values()) <= self.capacity(len(keys)), "a node over capacity"
        self._assignment = assignment
        return dict(assignment)

    def node_for(self, key: bytes) -> str:
        assigned = self._assignment.get(_check_key(key))
        return assigned if assigned is not None else self._ring.owner(key)

    def nodes_for(self, key: bytes, count: int) -> list[str]:
        wanted = min(_check_count(count), len(self._nodes))
        first = self.node_for(key)
        ring_order = self._ring.preference_list(key, len(self._nodes))
        return [first, *(node for node in ring_order if node != first)][:wanted]

    def with_nodes(self, nodes: Iterable[str]) -> "BoundedLoadRouter":
        """A router over the new membership with no assignment: the keys must be assigned again."""
        return BoundedLoadRouter(nodes, self._load_factor, self._vnodes)

    def __repr__(self) -> str:
        return (
            f"BoundedLoadRouter({list(self._nodes)!r}, load_factor={self._load_factor}, "
            f"vnodes={self._vnodes}, assigned={len(self._assignment)})"
        )


# Every router, for a reader and for mypy, which checks each one against the protocol here.
ROUTER_CLASSES: tuple[type[Router], ...] = (
    ConsistentHashRouter,
    JumpHashRouter,
    RendezvousRouter,
    BoundedLoadRouter,
)


def jump_consistent_hash(key: int, num_buckets: int) -> int:
    """The bucket in [0, num_buckets) of a 64-bit key: the paper's `JumpConsistentHash`, line for
    line, with Python's float for C++'s double and a mask for unsigned 64-bit overflow."""
    if not 0 <= key <= UINT64_MASK:
        raise ValueError(f"key must be an unsigned 64-bit integer, got {key}")
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    b, j = -1, 0
    while j < num_buckets:
        b = j
        key = (key * JUMP_LCG_MULTIPLIER + 1) & UINT64_MASK
        j = int((b + 1) * (JUMP_SCALE / float((key >> 33) + 1)))
    assert 0 <= b < num_buckets
    return b


def key_hash64(key: bytes, seed: int = 0) -> int:
    """A key's 64-bit hash for jump hash: the first half of MurmurHash3 x64 128, unsigned.

    With seed 0 this is the low 64 bits of the key's ring token (`hashring.key_token`).
    """
    first_half: int = mmh3.hash64(key, seed=seed, signed=False)[0]
    return first_half


@dataclass(frozen=True, slots=True)
class LoadSpread:
    """How evenly keys sit on nodes: the busiest against the mean, and the coefficient of
    variation (population standard deviation over mean) of keys per node."""

    max_load: int
    mean_load: float
    coefficient_of_variation: float

    @property
    def max_to_mean(self) -> float:
        return self.max_load / self.mean_load


@dataclass(frozen=True, slots=True)
class MovementReport:
    """What a membership change costs, on a sample of keys.

    `ideal_fraction` is the least fraction of keys any scheme that spreads keys evenly over both
    memberships must move: 1 - |common nodes| / max(|before|, |after|) (module docstring).
    `load_spread` is of the placement after the change.
    """

    key_count: int
    moved: int
    ideal_fraction: float
    load_spread: LoadSpread

    @property
    def moved_fraction(self) -> float:
        return self.moved / self.key_count


def placement(router: Router, keys: Sequence[bytes]) -> dict[bytes, str]:
    """Where each of a population of distinct keys lives: `assign` for a bounded-load router
    (which records it), `node_for` of each key for the others."""
    _check_population(keys)
    if isinstance(router, BoundedLoadRouter):
        return router.assign(keys)
    return {key: router.node_for(key) for key in keys}


def load_spread(assignment: Mapping[bytes, str], nodes: Sequence[str]) -> LoadSpread:
    """The spread of an assignment over `nodes`; a node with no keys counts, as a zero."""
    if not assignment:
        raise ValueError("the load spread of no keys is undefined")
    loads = dict.fromkeys(nodes, 0)
    for node in assignment.values():
        if node not in loads:
            raise ValueError(f"node {node!r} of the assignment is not one of the nodes")
        loads[node] += 1
    mean_load = len(assignment) / len(loads)
    return LoadSpread(
        max_load=max(loads.values()),
        mean_load=mean_load,
        coefficient_of_variation=statistics.pstdev(loads.values()) / mean_load,
    )


def ideal_fraction(before: Iterable[str], after: Iterable[str]) -> float:
    """The least fraction of evenly spread keys that must move between two memberships: the total
    variation distance of the uniform distributions, 1 - |common| / max(|before|, |after|)."""
    before_set, after_set = set(check_membership(before)), set(check_membership(after))
    return 1 - len(before_set & after_set) / max(len(before_set), len(after_set))


def movement_report(before: Router, after: Router, keys: Sequence[bytes]) -> MovementReport:
    """How many of `keys` change node going from `before` to `after`, and the spread after."""
    old, new = placement(before, keys), placement(after, keys)
    return MovementReport(
        key_count=len(keys),
        moved=sum(1 for key in keys if old[key] != new[key]),
        ideal_fraction=ideal_fraction(before.nodes, after.nodes),
        load_spread=load_spread(new, after.nodes),
    )


# Failure handling ---------------------------------------------------------------------------------


class NodeState(enum.Enum):
    """A node as the client sees it."""

    HEALTHY = "healthy"  # In rotation; counting consecutive failures.
    EJECTED = "ejected"  # Out of rotation until the ejection period ends.
    PROBING = "probing"  # Out of rotation; one probe at a time may go, its outcome decides.


# The legal transitions (staying put is always legal). HEALTHY -> EJECTED on the
# EJECT_AFTER_FAILURES-th failure in a row; EJECTED -> PROBING when the period ends; PROBING ->
# HEALTHY on the probe's success, PROBING -> EJECTED (for twice as long) on its failure.
TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.HEALTHY: frozenset({NodeState.EJECTED}),
    NodeState.EJECTED: frozenset({NodeState.PROBING}),
    NodeState.PROBING: frozenset({NodeState.HEALTHY, NodeState.EJECTED}),
}


class IllegalTransition(RuntimeError):
    """A move between node states that `TRANSITIONS` does not allow: a bug, since the public
    methods of `NodeHealth` only ask for legal ones."""


def check_transition(old: NodeState, new: NodeState) -> None:
    """Raise IllegalTransition unless `TRANSITIONS` allows old -> new (or new is old)."""
    if new is not old and new not in TRANSITIONS[old]:
        raise IllegalTransition(f"no transition from {old.name} to {new.name}")


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What the client knows of one node."""

    state: NodeState = NodeState.HEALTHY
    consecutive_failures: int = 0
    # Ejections since the node was last re-admitted; the ejection period doubles with each.
    ejections: int = 0
    # While EJECTED: the time it may be probed. Otherwise 0.
    ejected_until_ms: int = 0
    # While PROBING: when the probe in flight went, or None if none is.
    probe_sent_ms: int | None = None


HEALTHY_RECORD = NodeRecord()


class NodeHealth:
    """Outlier ejection for a cache client, after mcrouter and Envoy.

    mcrouter marks a destination TKO ("total knockout") after --timeouts-until-tko failures
    (default 3), sends it no regular requests, and probes it at exponentially growing intervals;
    its FailoverRoute sends a request that errs to the next child. Envoy's outlier detection
    ejects a host after consecutive_5xx failures for base_ejection_time times the number of
    ejections (linear growth), capped at max_ejection_time, then returns it to the pool. Here:
    EJECT_AFTER_FAILURES in a row eject a node; the period doubles on each re-ejection (as
    mcrouter's probe interval grows: with the defaults the 300 s cap comes at the 7th ejection,
    where linear growth would take 60), capped as in Envoy; then one probe at a time decides,
    and `route` gives the failover order.

    The client reports each call's outcome with `record_success` / `record_failure`, asks
    `route` where to send a key, and for each node out of rotation asks `should_probe` before
    sending it a probe. While a node is out (EJECTED or PROBING), only the probe's outcome counts:
    the outcome of a call sent before the ejection is ignored. A re-admission resets the
    ejection period to its base (Envoy instead lowers its multiplier gradually while the host
    stays healthy, which punishes a flapping host more).
    """

    __slots__ = ("_eject_after_failures", "_ejection_ms", "_ejection_ms_max", "_records")

    def __init__(
        self,
        eject_after_failures: int = EJECT_AFTER_FAILURES,
        ejection_ms: int = EJECTION_MS,
        ejection_ms_max: int = EJECTION_MS_MAX,
    ) -> None:
        if eject_after_failures < 1:
            raise ValueError(f"eject_after_failures must be >= 1, got {eject_after_failures}")
        if not 1 <= ejection_ms <= ejection_ms_max:
            raise ValueError(
                f"need 1 <= ejection_ms <= ejection_ms_max, got {ejection_ms}, {ejection_ms_max}"
            )
        self._eject_after_failures = eject_after_failures
        self._ejection_ms = ejection_ms
        self._ejection_ms_max = ejection_ms_max
        # Only nodes that differ from HEALTHY_RECORD, so the map is bounded by the nodes in
        # trouble, not by every node ever called.
        self._records: dict[str, NodeRecord] = {}

    def record(self, node: str, now_ms: int) -> NodeRecord:
        """What is known of the node at `now_ms`."""
        return _advanced(self._records.get(node, HEALTHY_RECORD), _check_now(now_ms))

    def state(self, node: str, now_ms: int) -> NodeState:
        return self.record(node, now_ms).state

    def is_ejected(self, node: str, now_ms: int) -> bool:
        """Whether ordinary calls must skip the node: it is EJECTED, or PROBING and not yet
        re-admitted by a probe."""
        return self.state(node, now_ms) is not NodeState.HEALTHY

    def ejection_ms(self, ejections: int) -> int:
        """The length of the `ejections`-th ejection in a row: doubling from the base, capped."""
        assert ejections >= 1
        # Past the cap the doubling stops mattering; the bound keeps the power small.
        doublings = min(ejections - 1, self._ejection_ms_max.bit_length())
        return min(self._ejection_ms << doublings, self._ejection_ms_max)

    def record_success(self, node: str, now_ms: int) -> NodeState:
        record = self.record(node, now_ms)
        if record.state is NodeState.HEALTHY:
            new = HEALTHY_RECORD
        elif record.state is NodeState.PROBING and record.probe_sent_ms is not None:
            new = HEALTHY_RECORD  # The probe answered: re-admitted, failures forgotten.
        else:
            new = record  # A late outcome of a call sent before the ejection.
        return self._store(node, record, new)

    def record_failure(self, node: str, now_ms: int) -> NodeState:
        record = self.record(node, now_ms)
        if record.state is NodeState.HEALTHY:
            failures = record.consecutive_failures + 1
            if failures >= self._eject_after_failures:
                new = self._ejected(ejections=1, now_ms=now_ms)
            else:
                new = replace(record, consecutive_failures=failures)
        elif record.state is NodeState.PROBING and record.probe_sent_ms is not None:
            new = self._ejected(ejections=record.ejections + 1, now_ms=now_ms)
        else:
            new = record  # A late outcome of a call sent before the ejection.
        return self._store(node, record, new)

    def should_probe(self, node: str, now_ms: int) -> bool:
        """Whether to send the node a probe now; True means the caller sends one and reports
        its outcome. One probe at a time: a second is allowed only once the first is
        PROBE_TIMEOUT_MS old, and so presumed lost."""
        record = self.record(node, now_ms)
        if record.state is not NodeState.PROBING:
            return False
        if record.probe_sent_ms is not None and now_ms - record.probe_sent_ms < PROBE_TIMEOUT_MS:
            return False
        self._store(node, record, replace(record, probe_sent_ms=now_ms))
        return True

    def route(self, router: Router, key: bytes, now_ms: int, count: int = 1) -> list[str]:
        """The first `count` nodes of the key's order that are in rotation: the router's
        `nodes_for` with ejected nodes skipped, so a key falls over to its next node. [] if every
        node is out."""
        _check_count(count)
        out = {node for node in router.nodes if self.is_ejected(node, now_ms)}
        # Among the first count + |out| nodes of the order at least count are in rotation, if
        # that many exist; asking for no more keeps a lookup short when few nodes are out.
        order = router.nodes_for(key, min(count + len(out), len(router.nodes)))
        return [node for node in order if node not in out][:count]

    def _ejected(self, ejections: int, now_ms: int) -> NodeRecord:
        return NodeRecord(
            state=NodeState.EJECTED,
            ejections=ejections,
            ejected_until_ms=now_ms + self.ejection_ms(ejections),
        )

    def _store(self, node: str, old: NodeRecord, new: NodeRecord) -> NodeState:
        check_transition(old.state, new.state)
        if new == HEALTHY_RECORD:
            self._records.pop(node, None)
        else:
            if node not in self._records and len(self._records) >= NODES_MAX:
                raise ValueError(f"already tracking NODES_MAX={NODES_MAX} nodes in trouble")
            self._records[node] = new
        return new.state


def _advanced(record: NodeRecord, now_ms: int) -> NodeRecord:
    """The record at `now_ms`: an ejection whose period is over has become PROBING."""
    if record.state is NodeState.EJECTED and now_ms >= record.ejected_until_ms:
        check_transition(record.state, NodeState.PROBING)
        return replace(record, state=NodeState.PROBING, ejected_until_ms=0, probe_sent_ms=None)
    return record


# Checks -----------------------------------------------------------------------------------------


def check_membership(nodes: Iterable[str]) -> tuple[str, ...]:
    """The membership as a tuple, or ValueError if it is empty, has duplicates or is too big."""
    if isinstance(nodes, str):
        # A str is an Iterable[str] of its characters, never what was meant.
        raise TypeError(f"nodes must be an iterable of node ids, not the str {nodes!r}")
    membership = tuple(nodes)
    if not membership:
        raise ValueError("a router needs at least one node")
    if len(membership) > NODES_MAX:
        raise ValueError(f"{len(membership)} nodes, more than NODES_MAX={NODES_MAX}")
    for node in membership:
        check_node_id(node)
    if len(set(membership)) != len(membership):
        duplicates = sorted({node for node in membership if membership.count(node) > 1})
        raise ValueError(f"duplicate node ids: {duplicates!r}")
    return membership


def _ring_of(nodes: tuple[str, ...], vnodes: int) -> HashRing:
    ring = HashRing(vnodes)
    for node in nodes:
        ring.add_node(node)
    return ring


def _score_prefix(node: str) -> bytes:
    encoded = node.encode()
    return bytes([len(encoded)]) + encoded


def _check_key(key: bytes) -> bytes:
    # Key length is bounded at the service edge (common.limits); here only the type, because
    # mmh3 would also hash a str, differently from its encoding on another client.
    if not isinstance(key, bytes):
        raise TypeError(f"key must be bytes, got {type(key).__name__}")
    return key


def _check_count(count: int) -> int:
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return count


def _check_population(keys: Sequence[bytes]) -> None:
    if len(keys) > PLACEMENT_KEYS_MAX:
        raise ValueError(f"{len(keys)} keys, more than PLACEMENT_KEYS_MAX={PLACEMENT_KEYS_MAX}")
    for key in keys:
        _check_key(key)
    if len(set(keys)) != len(keys):
        raise ValueError("the keys of a population must be distinct")


def _check_now(now_ms: int) -> int:
    if now_ms < 0:
        raise ValueError(f"now_ms must be >= 0, got {now_ms}")
    return now_ms


__all__ = [
    "DEFAULT_LOAD_FACTOR",
    "DEFAULT_VNODES_PER_NODE",
    "EJECTION_MS",
    "EJECTION_MS_MAX",
    "EJECT_AFTER_FAILURES",
    "PLACEMENT_KEYS_MAX",
    "PROBE_TIMEOUT_MS",
    "ROUTER_CLASSES",
    "TRANSITIONS",
    "BoundedLoadRouter",
    "ConsistentHashRouter",
    "IllegalTransition",
    "JumpHashRouter",
    "LoadSpread",
    "MovementReport",
    "NodeHealth",
    "NodeRecord",
    "NodeState",
    "RendezvousRouter",
    "Router",
    "check_membership",
    "check_transition",
    "ideal_fraction",
    "jump_consistent_hash",
    "key_hash64",
    "load_spread",
    "movement_report",
    "placement",
]
