"""Pure tests of gossip membership and failure detection (distlab.kvstore.membership).

References: DeCandia et al., "Dynamo", SOSP 2007, 4.8 (membership and failure detection) and 4.9
(adding and removing nodes); van Renesse, Minsky, Hayden, "A Gossip-Style Failure Detection
Service", Middleware 1998 (heartbeat counters); Cassandra's gossiper ((generation, version)
states, JOINING / NORMAL / LEAVING / LEFT); Karp et al., "Randomized Rumor Spreading", FOCS 2000
(push-pull spreads a rumour to n nodes in about log3(n) + O(log log n) rounds).

No event loop and no sockets: ``SimulatedCluster`` runs N ``Membership`` cores on a manual clock
with seeded randomness, and a tiny simulated network (in the manner of MIT 6.824's labrpc) that
carries each exchange both ways (push-pull) and can drop messages, stop a node or partition the
cluster. A scenario is a transcript of rounds; every assertion message names its seed, so a
failure replays exactly.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.kvstore.membership import (
    FAILURE_TIMEOUT_ROUNDS_DEFAULT,
    INITIAL_STATUSES,
    NODES_MAX,
    RING_STATUSES,
    STATUS_TRANSITIONS,
    GossipReason,
    GossipTarget,
    IllegalTransitionError,
    Membership,
    MembershipConfig,
    MemberState,
    MemberStatus,
    MergeResult,
)

SEED = 20240701
# Scenario tests run each of these seeds; 20 keeps the file within a couple of seconds.
SCENARIO_SEEDS = range(SEED, SEED + 20)
# The defaults are what the cluster runs with, so they are what the scenarios check.
CONFIG = MembershipConfig()
INTERVAL_MS = CONFIG.gossip_interval_ms
TIMEOUT_ROUNDS = CONFIG.failure_timeout_ms // INTERVAL_MS
# A node's generation is the wall clock at its start; any large number does here.
GENERATION = 1_700_000_000_000
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)


def node_id_of(index: int) -> str:
    return f"node-{index}"


def address_of(index: int, port: int = 7000) -> str:
    return f"10.0.0.{index}:{port}"


def state(
    node_id: str = "a",
    *,
    address: str | None = None,
    weight: float = 1.0,
    status: MemberStatus = MemberStatus.NORMAL,
    generation: int = GENERATION,
    heartbeat: int = 0,
) -> MemberState:
    address = f"{node_id}:1" if address is None else address
    return MemberState(node_id, address, weight, status, generation, heartbeat)


def lone_node(
    node_id: str = "a",
    seeds: Iterable[str] = (),
    config: MembershipConfig = CONFIG,
    status: MemberStatus = MemberStatus.NORMAL,
) -> Membership:
    own = state(node_id, address=f"{node_id}:1", status=status)
    return Membership(own, tuple(seeds), random.Random(SEED), config)


# ---------------------------------------------------------------------------------------------
# The simulated cluster.
# ---------------------------------------------------------------------------------------------


@dataclass
class SimulatedNetwork:
    """Who can reach whom. A message is lost when either end is stopped, the two are on different
    sides of a partition, or a drop (with its own seeded rng) hits it."""

    rng: random.Random
    drop_probability: float = 0.0
    stopped: set[str] = field(default_factory=set)  # addresses that neither send nor answer
    sides: tuple[frozenset[str], ...] = ()  # a partition, by address; () when whole

    def delivers(self, source: str, destination: str) -> bool:
        if source in self.stopped or destination in self.stopped:
            return False
        if self.sides and not any(source in side and destination in side for side in self.sides):
            return False
        return self.rng.random() >= self.drop_probability


Condition = Callable[["SimulatedCluster"], bool]


class SimulatedCluster:
    """N membership cores on one manual clock. Node 0 is the seed of every other node.

    A round advances the clock by one gossip interval; then every running node, in an order
    shuffled by the cluster's rng, ticks and exchanges digests with each target at once (the
    target merges the request and replies with its digest, which the caller merges). States are
    frozen values, so handing them over by reference is as safe as serializing them.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        config: MembershipConfig = CONFIG,
        drop_probability: float = 0.0,
    ) -> None:
        self.seed = seed
        self.config = config
        self.now_ms = 0
        self.round_number = 0
        self.rng = random.Random(seed)
        self.network = SimulatedNetwork(random.Random(seed + 1), drop_probability)
        self.nodes: dict[str, Membership] = {}
        # Each round's gossip choices: (round, node id, targets). The determinism test compares it.
        self.schedule: list[tuple[int, str, tuple[GossipTarget, ...]]] = []
        for index in range(size):
            self.start(index)

    def start(
        self,
        index: int,
        *,
        generation: int = GENERATION,
        port: int = 7000,
        status: MemberStatus = MemberStatus.NORMAL,
    ) -> Membership:
        """Start (or restart, replacing the old process) node ``index``."""
        node_id = node_id_of(index)
        own = MemberState(node_id, address_of(index, port), 1.0, status, generation, 0)
        seeds = [address_of(0)]
        rng = random.Random(f"{self.seed}/{node_id}/{generation}")
        node = Membership(own, seeds, rng, self.config)
        self.nodes[node_id] = node
        return node

    @property
    def node_ids(self) -> frozenset[str]:
        return frozenset(self.nodes)

    def node_at(self, address: str) -> Membership | None:
        for node in self.nodes.values():
            if node.state.address == address:
                return node
        return None

    def running(self) -> list[Membership]:
        return [node for node in self.nodes.values() if self.is_running(node.node_id)]

    def is_running(self, node_id: str) -> bool:
        return self.nodes[node_id].state.address not in self.network.stopped

    def stop(self, node_id: str) -> None:
        self.network.stopped.add(self.nodes[node_id].state.address)

    def resume(self, node_id: str) -> None:
        self.network.stopped.discard(self.nodes[node_id].state.address)

    def partition(self, *sides: Iterable[str]) -> None:
        self.network.sides = tuple(
            frozenset(self.nodes[node_id].state.address for node_id in side) for side in sides
        )

    def heal(self) -> None:
        self.network.sides = ()

    def run_round(self) -> None:
        self.now_ms += self.config.gossip_interval_ms
        self.round_number += 1
        order = sorted(node.node_id for node in self.running())
        self.rng.shuffle(order)
        for node_id in order:
            node = self.nodes[node_id]
            targets = node.tick(self.now_ms)
            self.schedule.append((self.round_number, node_id, tuple(targets)))
            for target in targets:
                self.exchange(node, target.address)

    def exchange(self, caller: Membership, address: str) -> None:
        callee = self.node_at(address)
        if callee is None or not self.network.delivers(caller.state.address, address):
            return
        callee.merge(caller.digest(), self.now_ms)
        reply = callee.digest()
        if self.network.delivers(address, caller.state.address):
            caller.merge(reply, self.now_ms)

    def run_until(self, condition: Condition, rounds_max: int) -> int:
        """Run rounds until ``condition(self)`` holds; return how many ran. Fails past the max."""
        for rounds in range(rounds_max + 1):
            if condition(self):
                return rounds
            self.run_round()
        raise AssertionError(f"seed={self.seed}: not reached within {rounds_max} rounds")

    # Views --------------------------------------------------------------------------------------

    def known_by(self, observer: str) -> frozenset[str]:
        return frozenset(member.node_id for member in self.nodes[observer].members())

    def everyone_knows_everyone(self) -> bool:
        return all(self.known_by(node.node_id) == self.node_ids for node in self.running())

    def sees_alive(self, observer: str, subject: str) -> bool:
        return self.nodes[observer].is_alive(subject, self.now_ms)

    def all_alive_everywhere(self) -> bool:
        running = self.running()
        expected = frozenset(node.node_id for node in running)
        return all(node.live_nodes(self.now_ms) >= expected for node in running)


def converged_cluster(size: int, seed: int) -> SimulatedCluster:
    """A cluster that has run until every node knows every other."""
    cluster = SimulatedCluster(size, seed)
    cluster.run_until(SimulatedCluster.everyone_knows_everyone, rounds_max=50)
    return cluster


# ---------------------------------------------------------------------------------------------
# Values and configuration.
# ---------------------------------------------------------------------------------------------


def test_default_timeout_is_several_rounds() -> None:
    assert CONFIG.failure_timeout_ms == FAILURE_TIMEOUT_ROUNDS_DEFAULT * CONFIG.gossip_interval_ms
    assert TIMEOUT_ROUNDS >= 4


@pytest.mark.parametrize(
    "options",
    [
        {"gossip_interval_ms": 0},
        {"gossip_interval_ms": 500, "failure_timeout_ms": 1500},  # 3 rounds: too few
        {"seed_gossip_probability": 1.5},
        {"down_gossip_probability": -0.1},
        {"nodes_max": 1},
        {"nodes_max": 10**6},
        {"left_retention_ms": 10},  # shorter than the failure timeout
        {"gossip_interval_ms": True},
    ],
)
def test_config_is_validated(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        MembershipConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"node_id": ""},
        {"node_id": "x" * 256},
        {"address": ""},
        {"weight": 0.0},
        {"weight": float("nan")},
        {"weight": 17.0},
        {"generation": -1},
        {"heartbeat": 2**64},
        {"status": "NORMAL"},
    ],
)
def test_member_state_is_validated(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must be|limit"):
        dataclasses.replace(state(), **changes)  # type: ignore[arg-type]


def test_messages_are_frozen_values() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        state().heartbeat = 1  # type: ignore[misc]
    assert state(heartbeat=3) == state(heartbeat=3)
    assert state(generation=5, heartbeat=3).version == (5, 3)


# ---------------------------------------------------------------------------------------------
# The status lifecycle (Cassandra's JOINING / NORMAL / LEAVING / LEFT; Dynamo 4.9).
# ---------------------------------------------------------------------------------------------


def test_transition_table_is_the_lifecycle() -> None:
    assert set(STATUS_TRANSITIONS) == set(MemberStatus)
    assert STATUS_TRANSITIONS[MemberStatus.LEFT] == frozenset(), "LEFT is terminal"
    # Every status is reachable from a starting one, and LEFT from every status but itself.
    assert MemberStatus.LEFT in STATUS_TRANSITIONS[MemberStatus.LEAVING]
    assert MemberStatus.LEFT not in STATUS_TRANSITIONS[MemberStatus.NORMAL], "hand over first"
    assert {MemberStatus.JOINING, MemberStatus.NORMAL} == INITIAL_STATUSES
    assert {MemberStatus.NORMAL, MemberStatus.LEAVING} == RING_STATUSES


def test_legal_transitions_bump_the_heartbeat_and_illegal_ones_raise() -> None:
    node = lone_node(status=MemberStatus.JOINING)
    for status in (MemberStatus.NORMAL, MemberStatus.LEAVING, MemberStatus.LEFT):
        before = node.state.heartbeat
        node.set_status(status, now_ms=0)
        assert node.state.status is status
        assert node.state.heartbeat == before + 1, "a status change must outrank the old state"
    for status in (MemberStatus.JOINING, MemberStatus.NORMAL, MemberStatus.LEAVING):
        with pytest.raises(IllegalTransitionError, match="LEFT -> "):
            node.set_status(status, now_ms=0)


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (MemberStatus.NORMAL, MemberStatus.LEFT),
        (MemberStatus.NORMAL, MemberStatus.JOINING),
        (MemberStatus.JOINING, MemberStatus.LEAVING),
    ],
)
def test_illegal_transition_raises(start: MemberStatus, target: MemberStatus) -> None:
    node = lone_node(status=start)
    with pytest.raises(IllegalTransitionError):
        node.set_status(target, now_ms=0)
    assert node.state.status is start


def test_setting_the_current_status_again_is_a_no_op() -> None:
    node = lone_node()
    node.set_status(MemberStatus.NORMAL, now_ms=0)
    assert node.state.heartbeat == 0


def test_a_process_starts_joining_or_normal() -> None:
    with pytest.raises(ValueError, match="starts JOINING or NORMAL"):
        lone_node(status=MemberStatus.LEFT)


def test_an_aborted_decommission_may_return_to_normal() -> None:
    node = lone_node()
    node.set_status(MemberStatus.LEAVING, now_ms=0)
    node.set_status(MemberStatus.NORMAL, now_ms=1)
    assert node.ring_members() == [("a", 1.0)]


# ---------------------------------------------------------------------------------------------
# One core, driven by hand.
# ---------------------------------------------------------------------------------------------


def test_before_any_peer_is_known_tick_gossips_with_every_seed() -> None:
    node = lone_node(seeds=["s1:1", "s2:1", "s1:1", "a:1"])  # a duplicate and our own address
    targets = node.tick(now_ms=0)
    assert targets == [
        GossipTarget("s1:1", None, GossipReason.SEED_BOOTSTRAP),
        GossipTarget("s2:1", None, GossipReason.SEED_BOOTSTRAP),
    ]
    assert node.state.heartbeat == 1


def test_a_node_without_seeds_waits_to_be_contacted() -> None:
    node = lone_node()
    assert node.tick(now_ms=0) == []
    assert node.live_nodes(now_ms=0) == {"a"}


def test_merge_learns_new_nodes_and_reports_ring_changes() -> None:
    node = lone_node()
    result = node.merge([state("b", address="b:1"), state("c", status=MemberStatus.JOINING)], 0)
    assert result == MergeResult(
        added=frozenset({"b", "c"}),
        status_changed=frozenset(),
        restarted=frozenset(),
        recovered=frozenset(),
        ring_changed=True,
        refuted=False,
        refused_count=0,
    )
    assert node.ring_members() == [("a", 1.0), ("b", 1.0)], "a JOINING node is not on the ring"
    assert node.address_of("b") == "b:1"
    # The same states again: nothing changes (idempotence), nothing to rebuild.
    again = node.merge([state("b", address="b:1"), state("c", status=MemberStatus.JOINING)], 1)
    assert not again.added
    assert not again.ring_changed
    # c finishes joining: a status change that puts it on the ring.
    joined = node.merge([state("c", status=MemberStatus.NORMAL, heartbeat=1)], 2)
    assert joined.status_changed == {"c"}
    assert joined.ring_changed
    # A heartbeat alone changes nothing the ring is built from.
    assert not node.merge([state("c", heartbeat=2)], 3).ring_changed


def test_an_older_state_never_replaces_a_newer_one() -> None:
    node = lone_node()
    node.merge([state("b", heartbeat=5, status=MemberStatus.LEAVING)], 0)
    node.merge([state("b", heartbeat=4, status=MemberStatus.NORMAL)], 1)
    assert node.state_of("b").status is MemberStatus.LEAVING
    # A new generation wins even with heartbeat 0 (a restart).
    restarted = node.merge([state("b", generation=GENERATION + 1, address="b:2")], 2)
    assert restarted.restarted == {"b"}
    assert restarted.status_changed == {"b"}
    assert node.address_of("b") == "b:2"


def test_failure_detector_times_out_and_recovers_on_a_newer_heartbeat() -> None:
    """van Renesse 1998: a member is failed when its heartbeat has not increased for T_fail."""
    node = lone_node()
    timeout_ms = CONFIG.failure_timeout_ms
    node.merge([state("b", heartbeat=1)], now_ms=1000)
    assert node.is_alive("b", 1000 + timeout_ms - 1)
    assert not node.is_alive("b", 1000 + timeout_ms)
    # The same heartbeat again is old news: still down.
    node.merge([state("b", heartbeat=1)], now_ms=1000 + timeout_ms)
    assert node.live_nodes(1000 + timeout_ms) == {"a"}, "self is always alive"
    result = node.merge([state("b", heartbeat=2)], now_ms=1000 + timeout_ms + 1)
    assert result.recovered == {"b"}
    assert node.is_alive("b", 1000 + timeout_ms + 1)
    assert not node.is_alive("unknown", 0)


def test_down_nodes_stay_on_the_ring() -> None:
    """Dynamo 4.8.1: "a node outage rarely signifies a permanent departure"."""
    node = lone_node()
    node.merge([state("b")], now_ms=0)
    assert not node.is_alive("b", CONFIG.failure_timeout_ms * 10)
    assert node.ring_members() == [("a", 1.0), ("b", 1.0)]


def test_a_newer_state_about_self_is_refuted_not_adopted() -> None:
    """Only a node writes its own state; one that outranks it is answered with a newer one."""
    node = lone_node()
    stale_life = state("a", address="old:1", generation=GENERATION + 50, heartbeat=9)
    result = node.merge([stale_life], now_ms=0)
    assert result.refuted
    assert node.state.address == "a:1"
    assert node.state.status is MemberStatus.NORMAL
    assert node.state.version > stale_life.version
    # Same generation, larger heartbeat (a second process with our id): bump past it.
    twin = state("a", generation=node.state.generation, heartbeat=node.state.heartbeat + 7)
    assert node.merge([twin], now_ms=1).refuted
    assert node.state.version > twin.version
    assert not node.merge([state("a", generation=1)], now_ms=2).refuted


def test_time_must_not_run_backwards() -> None:
    node = lone_node()
    node.tick(now_ms=100)
    with pytest.raises(ValueError, match="backwards"):
        node.merge([], now_ms=99)


def test_the_table_is_bounded_by_nodes_max() -> None:
    config = MembershipConfig(nodes_max=3)
    node = lone_node(config=config)
    result = node.merge([state(f"n{index}") for index in range(5)], now_ms=0)
    assert result.added == {"n0", "n1"}
    assert result.refused_count == 3
    assert len(node.digest()) == 3
    assert NODES_MAX <= 1024, "full-state gossip must stay small"


def test_left_nodes_are_forgotten_after_retention_and_not_resurrected() -> None:
    """Cassandra keeps LEFT states for a while, then quarantines the endpoint."""
    node = lone_node()
    node.merge([state("b", heartbeat=3)], now_ms=0)
    node.merge([state("b", heartbeat=4, status=MemberStatus.LEFT)], now_ms=10)
    assert node.ring_members() == [("a", 1.0)]
    assert node.forget_left(older_than_ms=10) == 0, "LEFT since 10 is not older than 10"
    retention_ms = CONFIG.left_retention_ms
    node.tick(now_ms=10 + retention_ms)
    assert "b" in {member.node_id for member in node.members()}
    node.tick(now_ms=11 + retention_ms)
    assert "b" not in {member.node_id for member in node.members()}
    # A node that was away gossips b's old NORMAL state: the tombstone refuses it.
    echo = node.merge([state("b", heartbeat=3)], now_ms=12 + retention_ms)
    assert not echo.added
    assert node.ring_members() == [("a", 1.0)]
    # b returns as a new incarnation: that is a new member.
    back = node.merge([state("b", generation=GENERATION + 1)], now_ms=13 + retention_ms)
    assert back.added == {"b"}
    assert back.ring_changed


def test_left_peers_get_no_gossip() -> None:
    node = lone_node(seeds=["s:1"])
    node.merge([state("b", status=MemberStatus.LEFT)], now_ms=0)
    assert [target.reason for target in node.tick(now_ms=1)] == [GossipReason.SEED_BOOTSTRAP]


def test_with_no_live_peer_a_down_peer_is_tried_every_round() -> None:
    node = lone_node()
    node.merge([state("b")], now_ms=0)
    for round_number in range(1, 20):
        targets = node.tick(now_ms=CONFIG.failure_timeout_ms * round_number)
        assert targets[0] == GossipTarget("b:1", "b", GossipReason.DOWN_PEER)


# ---------------------------------------------------------------------------------------------
# Scenarios: the simulated cluster. Each runs once per seed of SCENARIO_SEEDS.
# ---------------------------------------------------------------------------------------------


def everyone_sees_status(node_id: str, status: MemberStatus) -> Condition:
    def condition(cluster: SimulatedCluster) -> bool:
        return cluster.everyone_knows_everyone() and all(
            node.state_of(node_id).status is status for node in cluster.running()
        )

    return condition


def everyone_sees_generation(node_id: str, incarnation: Membership) -> Condition:
    """Every other running node holds ``incarnation``'s current generation for ``node_id``."""

    def condition(cluster: SimulatedCluster) -> bool:
        generation = incarnation.state.generation
        return cluster.everyone_knows_everyone() and all(
            node.state_of(node_id).generation == generation
            for node in cluster.running()
            if node is not incarnation
        )

    return condition


def down_everywhere(victim: str, observers: Iterable[str]) -> Condition:
    def condition(cluster: SimulatedCluster) -> bool:
        return not any(cluster.sees_alive(observer, victim) for observer in observers)

    return condition


def split_into(*sides: frozenset[str]) -> Condition:
    """Every node sees exactly its own side alive."""

    def condition(cluster: SimulatedCluster) -> bool:
        return all(
            cluster.nodes[observer].live_nodes(cluster.now_ms) == side
            for side in sides
            for observer in side
        )

    return condition


# Measured over 1,000 seeds (0..999; the tests run 20 others): a cluster that starts from one
# seed knows itself completely after 2 to 4 rounds with 5 nodes (mean 2.2), 2 to 6 with 16 nodes
# (mean 3.3) and 4 to 5 with 64 (100 seeds, mean 4.3). Round 1 brings every node to the seed, so
# the seed (or whichever node it answered last) knows everyone; from there its table spreads by
# push-pull in about log3(n) + O(log log n) rounds. Each bound is the measured maximum plus one.
CONVERGENCE_ROUNDS_MAX = {5: 5, 16: 7}


@pytest.mark.parametrize("size", sorted(CONVERGENCE_ROUNDS_MAX))
@pytest.mark.parametrize("seed", SCENARIO_SEEDS)
def test_from_seeds_only_every_node_learns_every_other(size: int, seed: int) -> None:
    """Dynamo 4.8.1: membership changes propagate by gossip to "an eventually consistent view"."""
    cluster = SimulatedCluster(size, seed)
    assert cluster.known_by("node-1") == {"node-1"}, "at first a node knows only itself"
    cluster.run_until(SimulatedCluster.everyone_knows_everyone, CONVERGENCE_ROUNDS_MAX[size])
    assert cluster.all_alive_everywhere(), f"seed={seed}"
    expected_ring = [(node_id, 1.0) for node_id in sorted(cluster.node_ids)]
    for node in cluster.running():
        assert node.ring_members() == expected_ring, f"seed={seed}"


@pytest.mark.parametrize("seed", SCENARIO_SEEDS[:5])
def test_live_nodes_are_never_suspected_with_default_timeouts(seed: int) -> None:
    """The timeout arithmetic: no false suspicion in a long run of a healthy 16-node cluster."""
    cluster = converged_cluster(16, seed)
    for _ in range(200):
        cluster.run_round()
        assert cluster.all_alive_everywhere(), f"seed={seed} round={cluster.round_number}"


# A stopped node's last heartbeat reaches the others within a few rounds; each of them then
# waits out the timeout. Measured over 1,000 seeds with 5 nodes: the first observer marks it
# down exactly TIMEOUT_ROUNDS after it stopped (someone always heard its final heartbeat that
# round), the last one 0 to 5 rounds later (mean 1.2); everyone has it up again 1 to 4 rounds
# (mean 1.9) after it resumes. Bounds: the measured maxima plus one.
DOWN_AFTER_STOP_ROUNDS_MAX = TIMEOUT_ROUNDS + 6
# Theory allows an observer whose last advance was g rounds old at the stop to suspect it g
# rounds early; g was at most 3 in healthy 5-node runs.
DOWN_AFTER_STOP_ROUNDS_MIN = TIMEOUT_ROUNDS - 3
UP_AFTER_RESUME_ROUNDS_MAX = 5


@pytest.mark.parametrize("seed", SCENARIO_SEEDS)
def test_stopped_node_is_marked_down_everywhere_then_up_when_it_resumes(seed: int) -> None:
    """van Renesse 1998: a member whose heartbeat has not increased for T_fail is failed; Dynamo
    4.8.1: it stays a member, and is used again as soon as it is heard from."""
    cluster = converged_cluster(5, seed)
    for _ in range(10):
        cluster.run_round()
    victim = "node-3"
    observers = sorted(cluster.node_ids - {victim})
    cluster.stop(victim)
    for _ in range(DOWN_AFTER_STOP_ROUNDS_MIN - 1):
        cluster.run_round()
        assert all(cluster.sees_alive(observer, victim) for observer in observers), (
            f"seed={seed}: suspected {cluster.round_number} rounds in, too early"
        )
    cluster.run_until(
        down_everywhere(victim, observers),
        DOWN_AFTER_STOP_ROUNDS_MAX - (DOWN_AFTER_STOP_ROUNDS_MIN - 1),
    )
    # The others keep each other up meanwhile, and keep the victim on their rings.
    for observer in observers:
        assert cluster.nodes[observer].live_nodes(cluster.now_ms) == set(observers), f"seed={seed}"
        assert victim in dict(cluster.nodes[observer].ring_members()), f"seed={seed}"
    for _ in range(20):  # a long outage changes nothing more
        cluster.run_round()
    cluster.resume(victim)
    cluster.run_until(SimulatedCluster.all_alive_everywhere, UP_AFTER_RESUME_ROUNDS_MAX)


# Measured over 1,000 seeds: 1 to 5 rounds (mean 2.2) until every node holds the new life.
RESTART_SPREAD_ROUNDS_MAX = 6


@pytest.mark.parametrize("seed", SCENARIO_SEEDS)
def test_restarted_node_supersedes_its_old_state_everywhere(seed: int) -> None:
    """A new generation (Cassandra) outranks every state of the previous incarnation."""
    cluster = converged_cluster(5, seed)
    for _ in range(30):  # the old incarnation's heartbeat climbs well above 0
        cluster.run_round()
    old_heartbeat = cluster.nodes["node-2"].state.heartbeat
    cluster.stop("node-2")
    for _ in range(3):
        cluster.run_round()
    # It comes back on another port with an empty table, as a new process does.
    cluster.resume("node-2")
    restarted = cluster.start(2, generation=GENERATION + cluster.now_ms, port=7001)
    assert restarted.state.heartbeat < old_heartbeat
    cluster.run_until(everyone_sees_generation("node-2", restarted), RESTART_SPREAD_ROUNDS_MAX)
    for node in cluster.running():
        assert node.address_of("node-2") == address_of(2, 7001), f"seed={seed}"
    assert cluster.all_alive_everywhere(), f"seed={seed}"


@pytest.mark.parametrize("seed", SCENARIO_SEEDS)
def test_restart_with_a_clock_behind_the_old_generation_refutes_it(seed: int) -> None:
    """If the wall clock stepped back across a restart, the node outranks its old life anyway."""
    cluster = converged_cluster(5, seed)
    restarted = cluster.start(2, generation=GENERATION - 10_000, port=7001)
    # One round more: the old state must first reach the new process, which then refutes it.
    cluster.run_until(everyone_sees_generation("node-2", restarted), RESTART_SPREAD_ROUNDS_MAX + 1)
    assert restarted.state.generation == GENERATION + 1, f"seed={seed}"
    for node in cluster.running():
        assert node.address_of("node-2") == address_of(2, 7001), f"seed={seed}"


# Measured over 1,000 seeds: each status change reaches all 5 nodes within 1 to 4 rounds.
STATUS_SPREAD_ROUNDS_MAX = 5


@pytest.mark.parametrize("seed", SCENARIO_SEEDS)
def test_status_changes_propagate_and_shape_the_ring(seed: int) -> None:
    """Dynamo 4.9: a joining node takes its ranges once it has them; a leaving one gives them
    up once it has handed them over."""
    cluster = converged_cluster(4, seed)
    newcomer = cluster.start(4, status=MemberStatus.JOINING)
    cluster.run_until(
        everyone_sees_status("node-4", MemberStatus.JOINING), STATUS_SPREAD_ROUNDS_MAX
    )
    for node in cluster.running():
        assert "node-4" not in dict(node.ring_members()), f"seed={seed}"
    for status in (MemberStatus.NORMAL, MemberStatus.LEAVING, MemberStatus.LEFT):
        newcomer.set_status(status, cluster.now_ms)
        cluster.run_until(everyone_sees_status("node-4", status), STATUS_SPREAD_ROUNDS_MAX)
        on_ring = status in RING_STATUSES
        for node in cluster.running():
            assert ("node-4" in dict(node.ring_members())) is on_ring, f"seed={seed} {status}"
    with pytest.raises(IllegalTransitionError):
        newcomer.set_status(MemberStatus.NORMAL, cluster.now_ms)


# A 6-node cluster cut in halves, measured over 1,000 seeds: each side has the whole other side
# down 0 to 11 rounds after the timeout (mean 3): until then every node spends part of its gossip
# on peers that cannot answer, so the last heartbeats from across take longer to settle on each
# side. After the cut heals, everyone has everyone up within 1 to 5 rounds (mean 1.9).
PARTITION_DETECT_ROUNDS_MAX = TIMEOUT_ROUNDS + 12
PARTITION_HEAL_ROUNDS_MAX = 6


@pytest.mark.parametrize("seed", SCENARIO_SEEDS)
def test_partition_each_side_marks_the_other_down_then_heals(seed: int) -> None:
    cluster = converged_cluster(6, seed)
    left = frozenset({"node-0", "node-1", "node-2"})
    right = cluster.node_ids - left
    cluster.partition(left, right)
    sides_split = split_into(left, right)
    cluster.run_until(sides_split, PARTITION_DETECT_ROUNDS_MAX)
    for _ in range(20):
        cluster.run_round()
        assert sides_split(cluster), f"seed={seed} round={cluster.round_number}"
    cluster.heal()
    cluster.run_until(SimulatedCluster.all_alive_everywhere, PARTITION_HEAL_ROUNDS_MAX)
    for _ in range(5):
        cluster.run_round()
        assert cluster.all_alive_everywhere(), f"seed={seed} round={cluster.round_number}"


# Measured over 1,000 seeds with 8 nodes and a fifth of all messages lost: 2 to 12 rounds (mean
# 4.4), against 2 to 6 without losses.
LOSSY_CONVERGENCE_ROUNDS_MAX = 13


@pytest.mark.parametrize("seed", SCENARIO_SEEDS)
def test_membership_converges_despite_lost_messages(seed: int) -> None:
    cluster = SimulatedCluster(8, seed, drop_probability=0.2)
    cluster.run_until(SimulatedCluster.everyone_knows_everyone, LOSSY_CONVERGENCE_ROUNDS_MAX)


def test_same_seed_same_gossip_schedule() -> None:
    """TigerBeetle: randomness is injected, so a run replays from its seed."""
    runs = []
    for _ in range(2):
        cluster = SimulatedCluster(6, SEED, drop_probability=0.1)
        for _ in range(30):
            cluster.run_round()
        runs.append((cluster.schedule, [node.members() for node in cluster.running()]))
    assert runs[0] == runs[1], f"seed={SEED}"
    other = SimulatedCluster(6, SEED + 1, drop_probability=0.1)
    for _ in range(30):
        other.run_round()
    assert other.schedule != runs[0][0], "a different seed should give a different schedule"


# ---------------------------------------------------------------------------------------------
# Merge is a join: idempotent, commutative, associative.
# ---------------------------------------------------------------------------------------------

member_states = st.builds(
    MemberState,
    node_id=st.sampled_from(["a", "b", "c", "d"]),
    address=st.sampled_from(["x:1", "y:1"]),
    weight=st.sampled_from([0.5, 1.0, 2.0]),
    status=st.sampled_from(list(MemberStatus)),
    generation=st.integers(min_value=1, max_value=3),
    heartbeat=st.integers(min_value=0, max_value=3),
)


@PROPERTY_SETTINGS
@given(
    batches=st.lists(st.lists(member_states, max_size=6), min_size=1, max_size=5),
    data=st.data(),
)
def test_merge_is_idempotent_and_order_independent(
    batches: list[list[MemberState]], data: st.DataObject
) -> None:
    """Any order and grouping of the same states, each delivered once or twice, gives one table."""

    def table_after(deliveries: list[list[MemberState]]) -> tuple[MemberState, ...]:
        node = lone_node("observer")
        for now_ms, batch in enumerate(deliveries):
            node.merge(batch, now_ms)
        return node.members()

    reference = table_after(batches)
    everything = [member for batch in batches for member in batch]
    shuffled = data.draw(st.permutations(everything + everything), label="redelivered shuffle")
    cut = data.draw(st.integers(min_value=0, max_value=len(shuffled)), label="cut")
    assert table_after([shuffled[:cut], shuffled[cut:]]) == reference
    assert table_after([[member] for member in reversed(everything)]) == reference
    # The table holds, per node, the maximum state received.
    for member in reference:
        if member.node_id != "observer":
            received = [m for m in everything if m.node_id == member.node_id]
            assert member.version == max(m.version for m in received)
