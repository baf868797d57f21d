"""Cluster membership and failure detection by gossip: who is in the ring, and who is alive.

What it implements
------------------
* **Gossip-based membership** (DeCandia et al., "Dynamo: Amazon's Highly Available Key-value
  Store", SOSP 2007, section 4.8.1 "Ring Membership"): "a gossip-based protocol propagates
  membership changes and maintains an eventually consistent view of membership. Each node
  contacts a peer chosen at random every second and the two nodes efficiently reconcile their
  persisted membership change histories." Here a node's whole view is a table of ``MemberState``,
  one per node, and two nodes reconcile by a push-pull exchange: each sends its table and keeps,
  for every node, the newer of the two states.
* **Seeds** (4.8.2 "External Discovery"): "seeds are nodes that are discovered via an external
  mechanism and are known to all nodes". A node starts knowing only their addresses, and keeps
  gossiping with a seed now and then, so two parts of the cluster that formed separately (a
  *logical partition*) always meet.
* **Heartbeat counters** (van Renesse, Minsky, Hayden, "A Gossip-Style Failure Detection
  Service", Middleware 1998): every node increments its own counter once per gossip round, the
  counter travels in the table like any other field, and each node notes *on its own clock* when
  a node's counter last went up. A node whose counter has not gone up for ``failure_timeout_ms``
  is *down*; it is *up* again as soon as a larger counter arrives. No clocks are compared between
  machines. Dynamo itself (4.8.3) only uses "a purely local notion of failure detection" (a peer
  that does not answer is failed); heartbeats add that a node also learns about peers it has not
  talked to lately, which the coordinator's sloppy quorum needs to skip them up front.
* **(generation, version) states**, as in Cassandra's gossiper (``EndpointState``,
  ``HeartBeatState``): the *generation* is the node's incarnation, taken from the wall clock when
  its process starts, and the heartbeat counts within the generation. A restarted node therefore
  supersedes every state of its previous life, even though its counter starts again from 0.
* **Member status** as a state machine (Cassandra's JOINING / NORMAL / LEAVING / LEFT): a joining
  node fetches its ranges before it takes them (Dynamo 4.9), a leaving one hands them over before
  it gives them up. ``STATUS_TRANSITIONS`` below is the whole lifecycle.

Why a plain timeout, not the phi accrual detector
-------------------------------------------------
Hayashibara et al., "The phi Accrual Failure Detector" (SRDS 2004), which Cassandra uses, turns
the history of arrival intervals into a suspicion level phi and declares a node down past a
threshold, so it adapts to a slow network. Through gossip, though, the interval between two
heartbeat *arrivals* is not the sender's interval: it depends on which paths the rumour took
(a node hears a heartbeat directly, or one to several rounds later through others), so the
distribution phi models is a mix of several. A fixed timeout measured in gossip rounds is
simpler to reason about, to configure (one number, in milliseconds) and to test exactly, and the
arithmetic below says how to pick it. ``failure_timeout_ms`` is the knob.

Theory of operation
-------------------
* The table maps node id to the newest ``MemberState`` seen. "Newest" is the total order
  ``_precedence``: (generation, heartbeat), then, only to break ties that a correct cluster never
  produces (two processes with one node id started in the same millisecond), the status in
  lifecycle order, the address and the weight. Merging keeps the maximum per node, so the table is
  a state-based CRDT (a map of max-registers; Shapiro et al. 2011): merging is commutative,
  associative and idempotent, and two nodes that have received the same states hold the same
  table, whatever the order or duplication of the messages.
* Only a node writes its own state: it bumps its heartbeat every round (``tick``) and on every
  status change (``set_status``), so the change outranks its previous state everywhere. A state
  about this node that arrives from others is never adopted. If one outranks our own (an earlier
  incarnation whose wall clock ran ahead of ours, or a second process using our node id), we move
  our own version past it, as SWIM (Das et al. 2002) refutes a suspicion by raising its
  incarnation number, and report it (``MergeResult.refuted``).
* Whom to gossip with each round (``tick``): one random live peer (fan-out 1, as in Dynamo);
  with probability ``down_gossip_probability`` also one random down peer, so that a node that
  comes back, or the far side of a healed network partition, is heard from again (and always one
  when no peer is live: there is no one else to talk to); with probability
  ``seed_gossip_probability`` also one seed, against logical partitions. Before any peer is
  known, all the seeds, by address.
* The arithmetic of the timeout. A heartbeat is news that starts at one node; with push-pull
  gossip and fan-out 1, such a rumour reaches all n nodes in about log3(n) + O(log log n) rounds
  (Karp, Schindelhauer, Shenker, Vocking, "Randomized Rumor Spreading", FOCS 2000). So a node
  hears a newer heartbeat of each live peer every round or two, and now and then goes longer:
  the timeout must be several times that gap, or live nodes are declared down (a false
  suspicion); and every round added to it is a round more before a dead node is skipped.
  Measured in the simulation of tests/unit/test_membership.py, the longest gap between two
  advances of a live peer's heartbeat, over every pair of nodes for 2,000 rounds of 3 seeds
  (500 for 64 nodes): 3 rounds with 5 nodes, 4 with 16, 5 with 32, 6 with 64 (a gap of 4 or
  more occurred once in 14,000 pair-rounds at 16 nodes, of 6 once in 24 million at 64). A
  partition is harder: until the far side times out, every node spends a share of its single
  exchange per round on peers that cannot answer, so news on its own side slows down. With a
  6-node cluster cut in halves (500 seeds), a 6-round timeout suspected a live node on the same
  side in 7% of the runs, 8 rounds in 2%, 10 rounds in none (16 nodes: 2.5%). Hence the default
  of 10 rounds; ``FAILURE_TIMEOUT_ROUNDS_MIN`` refuses fewer than 4, below which even a healthy
  5-node cluster suspects its live members.
* A stopped node is marked down by every other node ``failure_timeout_ms`` plus a few rounds
  after it stopped (the time its last heartbeat takes to spread), and up again at each node as
  soon as a newer heartbeat reaches it. Measured with 5 nodes over 1,000 seeds: the last
  observer marks it down 0 to 5 rounds after the timeout (1.2 on average), and everyone has it up
  again 1 to 4 rounds after it resumes. A node learned for the first time counts as heard at that
  moment: a node that joins is told of a dead member as alive for up to one timeout, the same
  assumption van Renesse makes.
* Liveness never takes a node off the ring: "a node outage rarely signifies a permanent departure
  and therefore should not result in rebalancing" (Dynamo 4.8.1). The ring holds the NORMAL and
  LEAVING nodes (``ring_members``); the coordinator skips the down ones (sloppy quorum, 4.6).
* A LEFT node is kept in the table for ``left_retention_ms`` so that its departure reaches every
  node, then forgotten. What remains is a *tombstone* (its last version), so a node that was away
  all that time cannot gossip the departed node back in with an older NORMAL state. Cassandra
  keeps such states for three days and quarantines removed endpoints for the same reason.

The recipe the shell follows (``distlab.kvstore.node``)
-------------------------------------------------------
Every ``gossip_interval_ms``, measured from the start of one round to the start of the next:

1. ``targets = membership.tick(now_ms)``.
2. For each target, send ``membership.digest()`` (a fresh one per target) and merge the reply:
   ``membership.merge(reply, now_ms)``, with ``now_ms`` read when the reply arrives (push-pull).
   A failed call is simply dropped: the failure detector notices silence through heartbeats,
   not through errors. Calls to down peers and seeds must not delay the next round (give them
   a deadline shorter than the interval, or run them concurrently): a late round ages every
   heartbeat this node carries.
3. On receiving a digest from a peer: ``membership.merge(states, now_ms)``, then reply with
   ``membership.digest()`` (taken after the merge, so the reply carries the news just learned).
4. Whenever a merge returns ``ring_changed`` (and after ``set_status``), rebuild the ring from
   ``membership.ring_members()``. Read liveness with ``live_nodes(now_ms)`` when a request is
   planned, not from a cached copy.

What it leaves out
------------------
* Full-state gossip: every exchange carries the whole table (about 50 bytes per node, at most
  ``nodes_max`` nodes), not Cassandra's digests of versions followed by the missing states. For
  the small clusters distlab runs that is a few hundred bytes a round, and it keeps one message
  type.
* No tokens travel: a node's positions on the ring derive from its node id and weight
  (``distlab.common.hashring.vnode_token``), so every node computes the same ring from the same
  membership, and there is no anti-entropy of token lists, unlike Dynamo's persisted histories of
  token assignments (4.8.1).
* No persistence: a restarted node learns the table again from its seeds.
* No seed-free discovery (multicast, DNS): with no seeds and no peer yet, a node waits to be
  contacted.
* No security: any peer may gossip any state. Authenticating members belongs to the transport.
* No removal of a member by another: only the node itself moves to LEFT. A node that died for
  good stays on the ring, down, until an operator-level removal (not implemented) takes it off.
* No suspicion or indirect probes (SWIM), and no phi accrual (see above).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from distlab.common.hashring import NODE_ID_BYTES_MAX, WEIGHT_MAX
from distlab.common.hashring import NODES_MAX as RING_NODES_MAX

# ---------------------------------------------------------------------------------------------
# Limits and defaults.
# ---------------------------------------------------------------------------------------------

# Dynamo gossips "every second" and Cassandra too; distlab's clusters are a handful of nodes on
# one machine or one LAN, where an exchange costs well under a millisecond and a few hundred
# bytes, so gossiping twice as often halves the time to notice a failure at negligible cost.
GOSSIP_INTERVAL_MS_DEFAULT = 500
# Below 10 ms a round would be dominated by scheduling noise; above a minute a failure would go
# unnoticed for many minutes.
GOSSIP_INTERVAL_MS_MIN = 10
GOSSIP_INTERVAL_MS_MAX = 60_000
# The timeout, in rounds (see "The arithmetic of the timeout" above): a live peer's heartbeat was
# seen to go without advancing for at most 3 rounds with 5 nodes and 6 with 64, and for longer
# during a partition, when a share of every round's gossip is lost to unreachable peers. 10
# rounds suspected no live node in those runs, and a dead node is still skipped within about
# 5 s (plus the few rounds its last heartbeat takes to spread) at the default interval.
FAILURE_TIMEOUT_ROUNDS_DEFAULT = 10
# Fewer rounds than this and a healthy 5-node cluster suspects its live members (gaps of 3
# rounds occur there about once in 5,000 pair-rounds).
FAILURE_TIMEOUT_ROUNDS_MIN = 4
FAILURE_TIMEOUT_MS_DEFAULT = FAILURE_TIMEOUT_ROUNDS_DEFAULT * GOSSIP_INTERVAL_MS_DEFAULT
# Ten minutes: a detector slower than that is not one.
FAILURE_TIMEOUT_MS_MAX = 10 * 60 * 1000
# With n nodes, about n * p of them call a seed each round: at 0.1, the seed of a 5-node cluster
# hears from someone every two or three rounds, enough to join logical partitions, which are
# rare, while the seeds of a large cluster take on only a tenth of a round's calls between them.
SEED_GOSSIP_PROBABILITY_DEFAULT = 0.1
# After a partition heals, each of n nodes tries a down peer with probability p per round, so the
# first exchange across takes about 1 / (n * p) rounds (under one round for 6 nodes at 0.25),
# and each node spends one extra call in four on peers that are probably not answering.
DOWN_GOSSIP_PROBABILITY_DEFAULT = 0.25
# Full-state gossip sends every member in every message, so the traffic of a round grows with the
# square of the cluster: at 256 members of ~50 bytes a digest is ~13 KB, and with two digests per
# exchange and one exchange per node a round, ~13 MB per second across the cluster at the default
# interval. Past that, gossip digests of versions instead (Cassandra).
# The ring itself allows more (distlab.common.hashring.NODES_MAX, the ceiling of nodes_max).
NODES_MAX = 256
# A LEFT state must outlive the time it takes to reach every node, including nodes that were down
# or cut off when it was announced. An hour covers any outage a study cluster rides out; Cassandra
# keeps such states for three days. The tombstone left afterwards prevents resurrection anyway.
LEFT_RETENTION_MS_DEFAULT = 60 * 60 * 1000
LEFT_RETENTION_MS_MAX = 30 * 24 * 60 * 60 * 1000
# An address is "host:port": a DNS name of at most 255 bytes, a colon and five digits.
ADDRESS_BYTES_MAX = 255 + 1 + 5
# Generation and heartbeat travel as protobuf uint64.
COUNTER_MAX = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# The member lifecycle: a state machine as data.
# ---------------------------------------------------------------------------------------------


class MemberStatus(Enum):
    """Where a node is in its life in the cluster. Values follow the lifecycle order."""

    JOINING = 1  # fetching the data of the ranges it will own; not on the ring yet
    NORMAL = 2  # on the ring, owning its ranges
    LEAVING = 3  # still on the ring, handing its ranges over to the nodes that will own them
    LEFT = 4  # off the ring, about to stop; terminal for this generation


# The legal changes of a node's own status. Anything else raises IllegalTransitionError.
STATUS_TRANSITIONS: dict[MemberStatus, frozenset[MemberStatus]] = {
    # A completed bootstrap makes a node NORMAL; a node that gives up joining owns nothing yet, so
    # it may leave at once.
    MemberStatus.JOINING: frozenset({MemberStatus.NORMAL, MemberStatus.LEFT}),
    # A member must hand over its ranges before it leaves, so NORMAL never goes straight to LEFT.
    MemberStatus.NORMAL: frozenset({MemberStatus.LEAVING}),
    # A LEAVING node still owns all its ranges, so an aborted decommission may return to NORMAL.
    MemberStatus.LEAVING: frozenset({MemberStatus.LEFT, MemberStatus.NORMAL}),
    # A node that comes back after leaving is a new incarnation (a new generation), not a change.
    MemberStatus.LEFT: frozenset(),
}
# A process enters the cluster either as a joining node or as a founding member.
INITIAL_STATUSES = frozenset({MemberStatus.JOINING, MemberStatus.NORMAL})
# The statuses whose nodes hold positions on the ring.
RING_STATUSES = frozenset({MemberStatus.NORMAL, MemberStatus.LEAVING})


class IllegalTransitionError(ValueError):
    """A status change that STATUS_TRANSITIONS does not allow."""


# ---------------------------------------------------------------------------------------------
# Messages and configuration: values.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberState:
    """What the cluster knows of one node; written only by that node.

    ``generation``: the node's incarnation, the wall clock in milliseconds when its process
    started, so a restarted node's states outrank its old ones. ``heartbeat``: incremented by the
    node every gossip round and on every status change. Raises ValueError when malformed, so a
    codec can refuse a bad message whole.
    """

    node_id: str
    address: str
    weight: float
    status: MemberStatus
    generation: int
    heartbeat: int

    def __post_init__(self) -> None:
        _check_text("node_id", self.node_id, NODE_ID_BYTES_MAX)
        _check_text("address", self.address, ADDRESS_BYTES_MAX)
        if not isinstance(self.status, MemberStatus):
            raise ValueError(f"status must be a MemberStatus, got {self.status!r}")
        weight_is_number = isinstance(self.weight, int | float) and not isinstance(
            self.weight, bool
        )
        if not (weight_is_number and math.isfinite(self.weight) and 0 < self.weight <= WEIGHT_MAX):
            raise ValueError(f"weight must be > 0 and <= {WEIGHT_MAX}, got {self.weight!r}")
        _check_counter("generation", self.generation)
        _check_counter("heartbeat", self.heartbeat)

    @property
    def version(self) -> tuple[int, int]:
        """(generation, heartbeat): the order in which one node's states supersede each other."""
        return (self.generation, self.heartbeat)


class GossipReason(Enum):
    """Why ``tick`` chose a target; for logs and tests."""

    SEED_BOOTSTRAP = 1  # no peer known yet: every seed, by address
    LIVE_PEER = 2  # the round's random live peer
    DOWN_PEER = 3  # a down peer, to notice it coming back (or the far side of a healed partition)
    SEED = 4  # a seed, against logical partitions


@dataclass(frozen=True, slots=True)
class GossipTarget:
    """A peer to exchange digests with this round. ``node_id`` is None for a seed not yet met."""

    address: str
    node_id: str | None
    reason: GossipReason


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What one ``merge`` changed; the shell rebuilds the ring only when ``ring_changed``."""

    added: frozenset[str]  # nodes learned of for the first time
    status_changed: frozenset[str]  # known nodes whose status changed
    restarted: frozenset[str]  # known nodes with a new generation (their address may differ)
    recovered: frozenset[str]  # nodes that were down here and are up again
    ring_changed: bool  # ring_members() differs from before the merge
    # A state about this node outranked our own and we moved our version past it: an earlier
    # incarnation whose clock ran ahead, or another process using our node id (worth a warning).
    refuted: bool
    refused_count: int  # states of new nodes not added because the table held nodes_max


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """One node's membership settings; each default's reason is beside its constant above."""

    gossip_interval_ms: int = GOSSIP_INTERVAL_MS_DEFAULT
    failure_timeout_ms: int = FAILURE_TIMEOUT_MS_DEFAULT
    seed_gossip_probability: float = SEED_GOSSIP_PROBABILITY_DEFAULT
    down_gossip_probability: float = DOWN_GOSSIP_PROBABILITY_DEFAULT
    nodes_max: int = NODES_MAX
    left_retention_ms: int = LEFT_RETENTION_MS_DEFAULT

    def __post_init__(self) -> None:
        _check_int_range(
            "gossip_interval_ms",
            self.gossip_interval_ms,
            GOSSIP_INTERVAL_MS_MIN,
            GOSSIP_INTERVAL_MS_MAX,
        )
        # Several rounds, because a heartbeat reaches a node only through gossip (see the module
        # docstring): a shorter timeout declares live nodes down.
        _check_int_range(
            "failure_timeout_ms",
            self.failure_timeout_ms,
            FAILURE_TIMEOUT_ROUNDS_MIN * self.gossip_interval_ms,
            FAILURE_TIMEOUT_MS_MAX,
        )
        _check_probability("seed_gossip_probability", self.seed_gossip_probability)
        _check_probability("down_gossip_probability", self.down_gossip_probability)
        # Two: this node and one peer; anything less is not a cluster.
        _check_int_range("nodes_max", self.nodes_max, 2, RING_NODES_MAX)
        # At least the failure timeout: a departure must be able to spread before it is forgotten.
        _check_int_range(
            "left_retention_ms",
            self.left_retention_ms,
            self.failure_timeout_ms,
            LEFT_RETENTION_MS_MAX,
        )


# ---------------------------------------------------------------------------------------------
# The core.
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Peer:
    """Another node as this node knows it."""

    state: MemberState
    # The local monotonic time at which a newer state last arrived: the failure detector's input.
    heard_ms: int
    # The local time at which its state was first seen LEFT; None while it is not LEFT.
    left_since_ms: int | None


class Membership:
    """One node's view of the cluster: the gossiped table and the failure detector over it."""

    def __init__(
        self,
        self_state: MemberState,
        seeds: Sequence[str],
        rng: random.Random,
        config: MembershipConfig,
    ) -> None:
        if not isinstance(self_state, MemberState):
            raise TypeError(f"self_state must be a MemberState, got {self_state!r}")
        if self_state.status not in INITIAL_STATUSES:
            raise ValueError(
                f"a node starts JOINING or NORMAL, not {self_state.status.name}: "
                "a returning node is a new generation"
            )
        if not isinstance(config, MembershipConfig):
            raise TypeError(f"config must be a MembershipConfig, got {config!r}")
        if isinstance(seeds, str):
            raise TypeError("seeds must be a sequence of addresses, not one string")
        for seed in seeds:
            _check_text("seed address", seed, ADDRESS_BYTES_MAX)
        # Our own address is no seed to us; duplicates would only skew the seed choice.
        unique_seeds = tuple(dict.fromkeys(seed for seed in seeds if seed != self_state.address))
        if len(unique_seeds) > config.nodes_max:
            raise ValueError(f"{len(unique_seeds)} seeds, more than nodes_max={config.nodes_max}")
        self._own = self_state
        self._seeds = unique_seeds
        self._rng = rng
        self._config = config
        self._peers: dict[str, _Peer] = {}
        # Node id -> the version of its LEFT state, for departed nodes already forgotten; oldest
        # first, at most nodes_max (see forget_left).
        self._tombstones: dict[str, tuple[int, int]] = {}
        # The latest now_ms seen by a call that changes state: time must not run backwards.
        self._latest_now_ms: int | None = None

    # ----------------------------------------------------------------- reading

    @property
    def node_id(self) -> str:
        return self._own.node_id

    @property
    def state(self) -> MemberState:
        """This node's own current state."""
        return self._own

    @property
    def config(self) -> MembershipConfig:
        return self._config

    @property
    def seeds(self) -> tuple[str, ...]:
        return self._seeds

    def digest(self) -> tuple[MemberState, ...]:
        """Every state this node holds, its own included, by node id: what one gossip carries.

        Full state, at most nodes_max entries: clusters here are small (see the module docstring).
        """
        return self.members()

    def members(self) -> tuple[MemberState, ...]:
        """Every known node's state, this node's included, sorted by node id."""
        states = [self._own, *(peer.state for peer in self._peers.values())]
        assert len(states) <= self._config.nodes_max, "the table outgrew nodes_max"
        return tuple(sorted(states, key=lambda state: state.node_id))

    def state_of(self, node_id: str) -> MemberState:
        """The state of a known node; KeyError if it is not (or no longer) known."""
        if node_id == self._own.node_id:
            return self._own
        return self._known(node_id).state

    def address_of(self, node_id: str) -> str:
        return self.state_of(node_id).address

    def ring_members(self) -> list[tuple[str, float]]:
        """(node id, weight) of every node that belongs on the ring, by node id.

        NORMAL and LEAVING nodes, whether alive or not: a leaving node keeps its ranges until it
        has handed them over, and a down node is skipped by the coordinator, not removed.
        """
        return [
            (state.node_id, state.weight)
            for state in self.members()
            if state.status in RING_STATUSES
        ]

    def is_alive(self, node_id: str, now_ms: int) -> bool:
        """Whether the node's heartbeat went up within the last failure_timeout_ms.

        This node is always alive; an unknown node is not (nothing says it is).
        """
        if node_id == self._own.node_id:
            return True
        peer = self._peers.get(node_id)
        return peer is not None and self._peer_is_alive(peer, now_ms)

    def live_nodes(self, now_ms: int) -> frozenset[str]:
        """The ids of every node alive at now_ms, this node included."""
        live = {
            node_id for node_id, peer in self._peers.items() if self._peer_is_alive(peer, now_ms)
        }
        live.add(self._own.node_id)
        return frozenset(live)

    # ----------------------------------------------------------------- changing

    def tick(self, now_ms: int) -> list[GossipTarget]:
        """One gossip round: bump our heartbeat, forget old departures, and choose whom to call."""
        self._observe_time(now_ms)
        self._own = dataclasses.replace(self._own, heartbeat=self._own.heartbeat + 1)
        self.forget_left(now_ms - self._config.left_retention_ms)
        return self._choose_targets(now_ms)

    def set_status(self, status: MemberStatus, now_ms: int) -> None:
        """Change this node's own status along STATUS_TRANSITIONS.

        Setting the current status again does nothing, so a retried step (a decommission that
        failed half-way) may repeat it. Any other change not in the table raises
        IllegalTransitionError. The heartbeat is bumped, so the change outranks the old state.
        """
        self._observe_time(now_ms)
        current = self._own.status
        if status == current:
            return
        if status not in STATUS_TRANSITIONS[current]:
            raise IllegalTransitionError(
                f"{self._own.node_id}: {current.name} -> {status.name} is not a legal transition"
            )
        self._own = dataclasses.replace(self._own, status=status, heartbeat=self._own.heartbeat + 1)

    def merge(self, states: Iterable[MemberState], now_ms: int) -> MergeResult:
        """Keep, for each node, the newer of our state and the received one.

        A node whose state advanced counts as heard at now_ms (the failure detector's input).
        States about this node are not adopted (see ``MergeResult.refuted``).
        """
        self._observe_time(now_ms)
        changes = _Changes()
        for state in states:
            if not isinstance(state, MemberState):
                raise TypeError(f"states must be MemberState values, got {state!r}")
            if state.node_id == self._own.node_id:
                changes.refuted |= self._refute_if_newer(state)
            else:
                self._merge_peer(state, now_ms, changes)
        return changes.result()

    def forget_left(self, older_than_ms: int) -> int:
        """Drop the LEFT nodes first seen LEFT before older_than_ms (a local monotonic time).

        Returns how many were dropped. Each leaves a tombstone (its last version), so an older
        state of it gossiped later by a node that was away is not taken for a new member.
        ``tick`` calls this with now_ms - left_retention_ms.
        """
        forgotten = [
            node_id
            for node_id, peer in self._peers.items()
            if peer.left_since_ms is not None and peer.left_since_ms < older_than_ms
        ]
        for node_id in forgotten:
            peer = self._peers.pop(node_id)
            self._tombstones.pop(node_id, None)  # re-inserted last: the newest tombstone
            self._tombstones[node_id] = peer.state.version
        while len(self._tombstones) > self._config.nodes_max:
            del self._tombstones[next(iter(self._tombstones))]  # the oldest goes first
        return len(forgotten)

    # ----------------------------------------------------------------- helpers

    def _observe_time(self, now_ms: int) -> None:
        if self._latest_now_ms is not None and now_ms < self._latest_now_ms:
            raise ValueError(
                f"now_ms went backwards ({now_ms} after {self._latest_now_ms}): "
                "pass a monotonic clock reading"
            )
        self._latest_now_ms = now_ms

    def _known(self, node_id: str) -> _Peer:
        peer = self._peers.get(node_id)
        if peer is None:
            raise KeyError(f"node_id {node_id!r} is not a known member")
        return peer

    def _peer_is_alive(self, peer: _Peer, now_ms: int) -> bool:
        return now_ms - peer.heard_ms < self._config.failure_timeout_ms

    def _choose_targets(self, now_ms: int) -> list[GossipTarget]:
        # Sorted, so that the same seed of the rng gives the same choices on every run.
        peers = sorted(
            node_id
            for node_id, peer in self._peers.items()
            if peer.state.status is not MemberStatus.LEFT  # a departed node no longer answers
        )
        if not peers:
            return [GossipTarget(seed, None, GossipReason.SEED_BOOTSTRAP) for seed in self._seeds]
        live = [node_id for node_id in peers if self._peer_is_alive(self._peers[node_id], now_ms)]
        live_set = set(live)
        down = [node_id for node_id in peers if node_id not in live_set]
        targets: list[GossipTarget] = []
        if live:
            targets.append(self._peer_target(self._rng.choice(live), GossipReason.LIVE_PEER))
        if down and (not live or self._rng.random() < self._config.down_gossip_probability):
            targets.append(self._peer_target(self._rng.choice(down), GossipReason.DOWN_PEER))
        if self._seeds and self._rng.random() < self._config.seed_gossip_probability:
            seed = self._rng.choice(self._seeds)
            if all(target.address != seed for target in targets):
                targets.append(GossipTarget(seed, self._node_at(seed), GossipReason.SEED))
        return targets

    def _peer_target(self, node_id: str, reason: GossipReason) -> GossipTarget:
        return GossipTarget(self._peers[node_id].state.address, node_id, reason)

    def _node_at(self, address: str) -> str | None:
        for node_id, peer in self._peers.items():
            if peer.state.address == address:
                return node_id
        return None

    def _refute_if_newer(self, state: MemberState) -> bool:
        own = self._own
        if _precedence(state) <= _precedence(own):
            return False
        if state.generation > own.generation:
            # A new incarnation past the other one: it outranks every state of that generation,
            # including those still on their way to us.
            own = dataclasses.replace(
                own, generation=state.generation + 1, heartbeat=own.heartbeat + 1
            )
        else:
            own = dataclasses.replace(own, heartbeat=state.heartbeat + 1)
        assert _precedence(own) > _precedence(state), "refutation must outrank the state"
        self._own = own
        return True

    def _merge_peer(self, state: MemberState, now_ms: int, changes: _Changes) -> None:
        peer = self._peers.get(state.node_id)
        if peer is None:
            self._add_peer(state, now_ms, changes)
            return
        previous = peer.state
        if _precedence(state) <= _precedence(previous):
            return  # old news: the heartbeat did not advance
        if not self._peer_is_alive(peer, now_ms):
            changes.recovered.add(state.node_id)
        peer.state = state
        peer.heard_ms = now_ms
        if state.status is not MemberStatus.LEFT:
            peer.left_since_ms = None
        elif previous.status is not MemberStatus.LEFT:
            peer.left_since_ms = now_ms
        if state.status is not previous.status:
            changes.status_changed.add(state.node_id)
        if state.generation != previous.generation:
            changes.restarted.add(state.node_id)
        if _ring_entry(state) != _ring_entry(previous):
            changes.ring_changed = True

    def _add_peer(self, state: MemberState, now_ms: int, changes: _Changes) -> None:
        tombstone = self._tombstones.get(state.node_id)
        if tombstone is not None and state.version <= tombstone:
            return  # an echo of a node that left and was forgotten: do not resurrect it
        if len(self._peers) + 1 >= self._config.nodes_max:
            changes.refused_count += 1
            return
        left_since_ms = now_ms if state.status is MemberStatus.LEFT else None
        self._peers[state.node_id] = _Peer(state, now_ms, left_since_ms)
        self._tombstones.pop(state.node_id, None)
        changes.added.add(state.node_id)
        if _ring_entry(state) is not None:
            changes.ring_changed = True


@dataclass(slots=True)
class _Changes:
    """MergeResult under construction."""

    added: set[str] = dataclasses.field(default_factory=set)
    status_changed: set[str] = dataclasses.field(default_factory=set)
    restarted: set[str] = dataclasses.field(default_factory=set)
    recovered: set[str] = dataclasses.field(default_factory=set)
    ring_changed: bool = False
    refuted: bool = False
    refused_count: int = 0

    def result(self) -> MergeResult:
        return MergeResult(
            added=frozenset(self.added),
            status_changed=frozenset(self.status_changed),
            restarted=frozenset(self.restarted),
            recovered=frozenset(self.recovered),
            ring_changed=self.ring_changed,
            refuted=self.refuted,
            refused_count=self.refused_count,
        )


def _precedence(state: MemberState) -> tuple[int, int, int, str, float]:
    """The total order in which states of one node supersede each other (larger wins).

    (generation, heartbeat) decides in a correct cluster. The rest only breaks ties between
    different states with the same version (two processes started with one node id in the same
    millisecond), so that every node still keeps the same one.
    """
    return (state.generation, state.heartbeat, state.status.value, state.address, state.weight)


def _ring_entry(state: MemberState) -> float | None:
    """The node's weight if it belongs on the ring, else None: what the ring is built from."""
    return state.weight if state.status in RING_STATUSES else None


def _check_text(name: str, value: str, bytes_max: int) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    try:
        size_bytes = len(value.encode())
    except UnicodeEncodeError as error:
        raise ValueError(f"{name} {value!r} is not encodable as UTF-8") from error
    if size_bytes > bytes_max:
        raise ValueError(f"{name} is {size_bytes} bytes in UTF-8; the limit is {bytes_max}")


def _check_counter(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= COUNTER_MAX:
        raise ValueError(f"{name} must be an integer in [0, 2**64 - 1], got {value!r}")


def _check_int_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
