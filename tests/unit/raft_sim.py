"""A deterministic simulation of a Raft cluster, for ``distlab.raft.core``.

In the manner of TigerBeetle's VOPR, FoundationDB's simulation and MIT 6.824's labrpc: every node
is a ``RaftCore`` in this one process, the network and the disks are simulated, time is the
simulation's tick, and every random choice comes from one ``random.Random(seed)``, so a failing
seed replays exactly (``Simulation(seed).run()``).

The fault model
---------------
* **Network.** Each message gets a random delay (1 to ``delay_ticks_max`` ticks, sometimes a long
  one of up to three election timeouts, which reorders it behind later traffic); it may be
  dropped or duplicated (each copy with its own delay). Partitions (a random split, or one node
  cut off) come and go; a link is checked both when a message is sent and when it is delivered.
  Messages are frozen dataclasses holding tuples, bytes and frozensets, so no two nodes ever
  share mutable state.
* **Disks.** A node's Ready is processed by the recipe of ``distlab.raft.core`` (persist, send,
  apply, advance), but a disk may stall for a few ticks; meanwhile the node keeps stepping
  messages and ticking, and its effects queue up unpersisted and unsent.
* **Asynchronous writes.** Half of the seeds write as ``distlab.raft.node --async-writes`` does:
  a leader's Ready (``send_before_persist``) goes to a FIFO disk queue and is ``accept``-ed at
  once; each write becomes durable 1 to 3, 5 or 9 ticks later (the seed draws which: at times
  later than a round trip to a follower and back), and its ``persisted`` report reaches the core
  then or a tick after, so reports arrive late, out of order, or after the node stopped leading.
  Any other Ready first waits for the whole queue. A crash keeps a random prefix of the queue
  (what the disk got to) and loses the rest.
* **Crashes.** A node crashes between steps (losing whatever it had not yet handed over in a
  Ready) or in the middle of a Ready (after persisting, having sent only some of the messages and
  applied nothing); half of its messages still in flight are lost with it. Leaders are crashed
  on purpose too, and a node just elected may be cut off at once, its first appends in flight
  (so that logs diverge as in Figure 7 of Raft 2014). A node restarts later from exactly what it
  persisted: hard state, entries and snapshot; its state machine restarts from the snapshot and
  re-applies the committed entries.
* **Clients and operators.** Clients propose commands to a node that believes it leads (a
  deposed one cut off from the rest included) or to a random node (NotLeaderError), backing off
  from a leader with many uncommitted entries; reads go through ReadIndex; now and then the
  leader adds or removes a voter (a spare node id waits outside the initial configuration),
  transfers leadership, and a node compacts its log into a snapshot.
* **Swarm testing** (Groce et al., ISSTA 2012): each seed draws its own fault mix, some calm,
  some hostile, and its own Raft configuration: election and heartbeat ticks, entries per append
  and appends in flight (small values force pipelining and backtracking), pre-vote and check
  quorum on or off. A quarter of the seeds draw the leader-churn mix (``FaultMix.draw_churn``),
  whose leaders keep failing mid-way: the schedule of Figure 8 of Raft 2014.

What is checked, after every step (Raft 2014, Figure 3)
--------------------------------------------------------
* **Election safety**: at most one leader per term, ever (a history of every leader seen).
* **Log matching**: each entry written to any disk gets a chain id naming its whole prefix; two
  entries with the same index and term must have the same chain id, i.e. identical logs up to
  them.
* **Leader completeness**: an entry known committed in term T (a node persisted a commit index
  covering it while at term T, so the commit happened in a term <= T) must be in the log of every
  leader of a term > T: checked when a node becomes leader, and when a commit becomes known.
* **State machine safety**: no two nodes apply different entries (or reach different states) at
  one index; a snapshot installed must be the state some node reached at its index.
* **ReadIndex**: a read is never served below an index known committed when it was asked.
* Plus the core's own asserts (it never truncates a committed entry, for one).

A violation raises ``SafetyViolation`` (an AssertionError) naming the seed and the step. At the
end the network heals, every node restarts, faults stop, and a leader must be elected and a
proposal committed within a generous bound (liveness, loosely).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from distlab.raft.core import (
    Config,
    Entry,
    HardState,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftCore,
    Ready,
    Role,
    Snapshot,
)

# Ticks of faults per seed before the healing phase. 120 ticks is 12 to 20 election timeouts at
# the ticks the seeds draw, enough for several elections, crashes and partitions per seed while
# keeping a seed near 15 ms (about 1,000 steps).
FAULT_TICKS_DEFAULT = 120
# After healing, a leader must be elected and a proposal committed within this many election
# timeouts: generous, since a removed node or a stale transfer may cost a few of them.
LIVENESS_ELECTION_TIMEOUTS_MAX = 40


# The share of seeds that draw the leader-churn mix (FaultMix.draw_churn).
CHURN_SEED_FRACTION = 0.25
# Clients stop proposing to a leader with this many entries uncommitted (back-pressure), which
# bounds the backlog the healing phase must commit: at one entry per append and one append in
# flight, 16 entries take a few dozen ticks.
CLIENT_UNCOMMITTED_MAX = 16


class SafetyViolation(AssertionError):
    """A safety property failed; the message names the seed and the step."""


class LivenessFailure(AssertionError):
    """No proposal committed in time after healing; the message names the seed."""


@dataclass(frozen=True, slots=True)
class FaultMix:
    """Probabilities per message (network) or per tick (everything else)."""

    drop_probability: float
    duplicate_probability: float
    delay_ticks_max: int
    long_delay_probability: float
    partition_probability: float
    heal_probability: float
    crash_probability: float
    leader_crash_probability: float  # Figure 8 needs leaders to die between two sends
    # Cut a leader off the moment it is elected, with its first appends still in flight, so
    # that logs diverge: a new leader's entries reach no one (Raft 2014, Figure 7 (e), (f)).
    new_leader_isolation_probability: float
    crash_in_ready_probability: float
    restart_probability: float
    disk_stall_probability: float
    propose_probability: float
    read_probability: float
    config_change_probability: float
    transfer_probability: float
    compact_probability: float

    @staticmethod
    def draw(rng: random.Random) -> FaultMix:
        """A mix for one seed: some seeds are calm, some are hostile."""
        return FaultMix(
            drop_probability=rng.choice((0.0, 0.02, 0.1, 0.25, 0.4)),
            duplicate_probability=rng.choice((0.0, 0.02, 0.1)),
            delay_ticks_max=rng.choice((1, 2)),
            long_delay_probability=rng.choice((0.0, 0.02, 0.08)),
            partition_probability=rng.choice((0.0, 0.03, 0.08)),
            heal_probability=rng.choice((0.05, 0.15)),
            crash_probability=rng.choice((0.0, 0.02, 0.05)),
            leader_crash_probability=rng.choice((0.0, 0.03, 0.1, 0.2)),
            new_leader_isolation_probability=rng.choice((0.0, 0.1, 0.3)),
            crash_in_ready_probability=rng.choice((0.0, 0.002, 0.01, 0.03)),
            restart_probability=rng.choice((0.1, 0.3)),
            disk_stall_probability=rng.choice((0.0, 0.02, 0.08)),
            propose_probability=rng.choice((0.2, 0.5)),
            read_probability=rng.choice((0.0, 0.1)),
            config_change_probability=rng.choice((0.0, 0.01, 0.03)),
            transfer_probability=rng.choice((0.0, 0.01, 0.03)),
            compact_probability=rng.choice((0.0, 0.02, 0.1)),
        )

    @staticmethod
    def draw_churn(rng: random.Random) -> FaultMix:
        """Leader churn, the mix that produces Figure 8 of Raft 2014: leaders die or are cut off
        soon after they are elected, so uncommitted tails of several terms pile up in different
        logs, and a new leader often dies while it is still copying an older term's entries.
        Few messages are lost otherwise: a leader must get far enough to do damage."""
        return FaultMix(
            drop_probability=rng.choice((0.0, 0.02)),
            duplicate_probability=0.02,
            delay_ticks_max=rng.choice((1, 2)),
            long_delay_probability=0.02,
            partition_probability=rng.choice((0.03, 0.08)),
            heal_probability=rng.choice((0.1, 0.2)),
            crash_probability=rng.choice((0.0, 0.02)),
            leader_crash_probability=rng.choice((0.1, 0.2, 0.3)),
            new_leader_isolation_probability=rng.choice((0.2, 0.4, 0.6)),
            crash_in_ready_probability=rng.choice((0.0, 0.01)),
            restart_probability=rng.choice((0.2, 0.4)),
            disk_stall_probability=0.02,
            propose_probability=rng.choice((0.5, 0.8)),
            read_probability=0.0,
            config_change_probability=0.0,
            transfer_probability=0.0,
            compact_probability=0.0,
        )

    @staticmethod
    def calm() -> FaultMix:
        """The healing phase: messages are only delayed."""
        return FaultMix(
            drop_probability=0.0,
            duplicate_probability=0.0,
            delay_ticks_max=2,
            long_delay_probability=0.0,
            partition_probability=0.0,
            heal_probability=1.0,
            crash_probability=0.0,
            leader_crash_probability=0.0,
            new_leader_isolation_probability=0.0,
            crash_in_ready_probability=0.0,
            restart_probability=1.0,
            disk_stall_probability=0.0,
            propose_probability=0.0,
            read_probability=0.0,
            config_change_probability=0.0,
            transfer_probability=0.0,
            compact_probability=0.0,
        )


@dataclass(frozen=True, slots=True)
class SimulationResult:
    seed: int
    steps: int
    ticks: int
    trace_digest: str
    leaders: int  # distinct (term, leader) pairs seen
    committed: int  # highest index known committed
    max_term: int


@dataclass(slots=True)
class _Storage:
    """What a node's disk holds: only what was handed over in a Ready, or compacted."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    snapshot_chain: int = 0
    entries: list[Entry] = field(default_factory=list)
    chains: list[int] = field(default_factory=list)  # the chain id of each entry
    commit_observed: int = 0  # checker bookkeeping: committed indexes already recorded

    @property
    def offset(self) -> int:
        return self.snapshot.index if self.snapshot else 0


@dataclass(slots=True)
class _Node:
    node_id: str
    initial_voters: frozenset[str]
    config: Config
    storage: _Storage = field(default_factory=_Storage)
    core: RaftCore | None = None  # None while crashed
    applied_index: int = 0  # the state machine: how far it applied, and the chain id it reached
    applied_chain: int = 0
    disk_free_at: int = 0  # the disk stalls until this tick
    leader_terms_checked: set[int] = field(default_factory=set)
    # Asynchronous writes: (due tick, Ready) in the order handed over, and the ``persisted``
    # reports on their way to the core: (due tick, order, index, term).
    writes: deque[tuple[int, Ready]] = field(default_factory=deque)
    reports: list[tuple[int, int, int, int]] = field(default_factory=list)


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        fault_ticks: int = FAULT_TICKS_DEFAULT,
        node_count: int | None = None,
        churn: bool | None = None,
        async_writes: bool | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        rng = self.rng
        self.node_count = node_count if node_count is not None else rng.choice((3, 5))
        self.fault_ticks = fault_ticks
        # Swarm testing: each seed draws its own fault mix; CHURN_SEED_FRACTION of the seeds
        # draw the leader-churn mix.
        self.churn = churn if churn is not None else rng.random() < CHURN_SEED_FRACTION
        self.faults = FaultMix.draw_churn(rng) if self.churn else FaultMix.draw(rng)
        self.election_ticks = rng.randint(6, 10)
        heartbeat_ticks = rng.randint(1, 2)
        pre_vote = rng.random() < 0.8
        check_quorum = rng.random() < 0.8
        max_entries = rng.choice((1, 1, 2, 3, 64))
        max_inflight = rng.choice((1, 2, 4, 16))
        drawn_async_writes = rng.random() < 0.5
        # How late an asynchronous write may become durable: sometimes longer than a round trip
        # to a follower and back, as a busy disk's fsync is compared with a LAN's round trip.
        self.write_ticks_max = rng.choice((2, 4, 8))
        self.async_writes = async_writes if async_writes is not None else drawn_async_writes
        if self.churn:
            # One entry per append, one append in flight, and cut-off leaders that keep taking
            # proposals: a new leader copies an old tail entry by entry (Figure 8 (c)).
            check_quorum, max_entries, max_inflight = False, 1, 1
        # One spare id outside the initial configuration, for membership changes to add.
        ids = [f"n{number}" for number in range(self.node_count + 1)]
        initial_voters = frozenset(ids[:-1])
        self.nodes: dict[str, _Node] = {}
        for node_id in ids:
            config = Config(
                node_id,
                election_ticks=self.election_ticks,
                heartbeat_ticks=heartbeat_ticks,
                pre_vote=pre_vote,
                check_quorum=check_quorum,
                max_entries_per_append=max_entries,
                max_inflight_appends=max_inflight,
            )
            voters = initial_voters if node_id in initial_voters else frozenset()
            self.nodes[node_id] = _Node(node_id, voters, config)

        self.now = 0
        self._faults_now = self.faults
        self.step_number = 0
        self._last_step = "none"
        self._sequence = 0
        self._in_flight: list[tuple[int, float, int, Message]] = []
        self._group_of: dict[str, int] = dict.fromkeys(ids, 0)
        self._trace = hashlib.blake2b(digest_size=16)
        self._proposals = 0
        self._next_read_id = 1

        # The checker's history.
        self._chain_ids: dict[tuple[int, Entry], int] = {}
        self._chain_at: dict[tuple[int, int], int] = {}  # (index, term) -> chain id
        self._leader_of_term: dict[int, str] = {}
        self._committed_chain: dict[int, int] = {}
        self._committed_entry: dict[int, Entry] = {}
        self._commit_term: dict[int, int] = {}
        self._applied_chain: dict[int, tuple[int, str]] = {}  # index -> (chain, first applier)
        self._read_floor: dict[int, int] = {}  # request id -> index known committed when asked

        for node in self.nodes.values():
            self._start(node)

    # --- running ---

    def run(self) -> SimulationResult:
        try:
            for _ in range(self.fault_ticks):
                self._run_tick(self.faults)
            self._heal_and_check_liveness()
        except (SafetyViolation, LivenessFailure):
            raise
        except AssertionError as error:
            self._fail(f"an invariant asserted in the core failed: {error!r}")
        return SimulationResult(
            seed=self.seed,
            steps=self.step_number,
            ticks=self.now,
            trace_digest=self._trace.hexdigest(),
            leaders=len(self._leader_of_term),
            committed=max(self._committed_chain, default=0),
            max_term=max(self._leader_of_term, default=0),
        )

    def _run_tick(self, faults: FaultMix) -> None:
        self.now += 1
        self._faults_now = faults
        self._nemesis(faults)
        self._deliver_due(faults)
        for node in self._shuffled_up_nodes():
            self._run_disk(node, faults)
        for node in self._shuffled_up_nodes():
            self._step(node, "tick", node_core(node).tick, faults)
        for node in self._shuffled_up_nodes():
            self._process_ready(node, faults)

    def _shuffled_up_nodes(self) -> list[_Node]:
        nodes = [node for node in self.nodes.values() if node.core is not None]
        self.rng.shuffle(nodes)
        return nodes

    def _step(self, node: _Node, what: str, action: Callable[[], object], faults: FaultMix) -> None:
        """One step: an input to one node, its Ready if the disk allows, then the checks."""
        self.step_number += 1
        self._last_step = f"{node.node_id}: {what}"
        try:
            action()
        except (NotLeaderError, ProposalDroppedError):
            pass  # definite refusals, which clients see all the time
        self._process_ready(node, faults)
        self._check_leaders()

    def _fail(self, what: str, kind: type[AssertionError] = SafetyViolation) -> None:
        raise kind(
            f"seed {self.seed}, step {self.step_number} (tick {self.now}, last input "
            f"{self._last_step}): {what}"
        )

    # --- the network ---

    def _connected(self, source: str, target: str) -> bool:
        return self._group_of[source] == self._group_of[target]

    def _send(self, message: Message, faults: FaultMix) -> None:
        if not self._connected(message.source, message.target):
            return
        rng = self.rng
        copies = 2 if rng.random() < faults.duplicate_probability else 1
        for _ in range(copies):
            if rng.random() < faults.drop_probability:
                continue
            if rng.random() < faults.long_delay_probability:
                delay = rng.randint(1, 3 * self.election_ticks)
            else:
                delay = rng.randint(1, faults.delay_ticks_max)
            self._sequence += 1
            # The random second key reorders messages due in the same tick.
            heapq.heappush(
                self._in_flight, (self.now + delay, rng.random(), self._sequence, message)
            )

    def _deliver_due(self, faults: FaultMix) -> None:
        while self._in_flight and self._in_flight[0][0] <= self.now:
            message = heapq.heappop(self._in_flight)[3]
            node = self.nodes[message.target]
            core = node.core
            if core is None or not self._connected(message.source, message.target):
                continue
            self._trace.update(
                f"{self.step_number}{type(message).__name__}{message.term}"
                f"{message.source}{message.target}".encode()
            )
            self._step(node, f"step {message!r}", functools.partial(core.step, message), faults)

    # --- disks, crashes, restarts ---

    def _start(self, node: _Node) -> None:
        storage = node.storage
        node.core = RaftCore(
            node.config,
            node.initial_voters,
            random.Random(self.rng.getrandbits(64)),
            hard_state=storage.hard_state,
            entries=tuple(storage.entries),
            snapshot=storage.snapshot,
        )
        # The state machine restarts from the snapshot and re-applies the committed entries.
        node.applied_index, node.applied_chain = (
            decode_state(storage.snapshot.data) if storage.snapshot else (0, 0)
        )
        node.disk_free_at = 0
        node.leader_terms_checked.clear()
        self._trace.update(f"{self.step_number}start{node.node_id}".encode())

    def _crash(self, node: _Node) -> None:
        node.core = None
        # The disk got through some of its queue before the power went.
        for _ in range(self.rng.randint(0, len(node.writes))):
            self._persist(node, node.writes.popleft()[1])
        node.writes.clear()
        node.reports.clear()
        # A machine that dies takes with it what its network card had not sent yet: each of its
        # messages still in flight is lost with even odds (labrpc drops all of a dead server's).
        self._in_flight = [
            item
            for item in self._in_flight
            if item[3].source != node.node_id or self.rng.random() < 0.5
        ]
        heapq.heapify(self._in_flight)
        self._trace.update(f"{self.step_number}crash{node.node_id}".encode())

    def _process_ready(self, node: _Node, faults: FaultMix) -> None:
        core = node.core
        if core is None or node.disk_free_at > self.now or not core.has_ready():
            return
        if self.rng.random() < faults.disk_stall_probability:
            node.disk_free_at = self.now + self.rng.randint(1, 3)
            return
        ready = core.ready()
        handed_over = False
        if ready.send_before_persist:
            # A leader's messages go out first (thesis 10.2.1); it may die before writing.
            for message in ready.messages:
                self._send(message, faults)
            if self.rng.random() < faults.crash_in_ready_probability:
                self._crash(node)  # sent, nothing persisted
                return
            if self.async_writes:
                node.writes.append((self.now + self.rng.randint(0, self.write_ticks_max), ready))
                handed_over = True
            else:
                self._persist(node, ready)
        else:
            self._flush_writes(node)  # its messages promise everything handed over before
            self._persist(node, ready)
            if self.rng.random() < faults.crash_in_ready_probability:
                # Persisted, some messages out, nothing applied, no advance.
                for message in ready.messages:
                    if self.rng.random() < 0.5:
                        self._send(message, faults)
                self._crash(node)
                return
            for message in ready.messages:
                self._send(message, faults)
        if ready.snapshot is not None:
            self._install_snapshot(node, ready.snapshot)
        for entry in ready.committed:
            self._apply(node, entry)
        for read_state in ready.read_states:
            floor = self._read_floor.pop(read_state.request_id)
            if read_state.index < floor:
                self._fail(
                    f"{node.node_id} served read {read_state.request_id} at index "
                    f"{read_state.index}, but {floor} was committed when it was asked"
                )
        if handed_over:
            core.accept(ready)
        else:
            core.advance(ready)

    def _run_disk(self, node: _Node, faults: FaultMix) -> None:
        """Finish the writes that are due, in order, then deliver the reports that are due."""
        while node.writes and node.writes[0][0] <= self.now:
            self._complete_write(node, node.writes.popleft()[1])
        due = sorted(report for report in node.reports if report[0] <= self.now)
        node.reports = [report for report in node.reports if report[0] > self.now]
        for _, _, index, term in due:
            core = node.core
            if core is None:
                return  # crashed in the Ready of an earlier report
            self._step(
                node,
                f"persisted {index}@{term}",
                functools.partial(core.persisted, index, term),
                faults,
            )

    def _flush_writes(self, node: _Node) -> None:
        while node.writes:
            self._complete_write(node, node.writes.popleft()[1])

    def _complete_write(self, node: _Node, ready: Ready) -> None:
        self._persist(node, ready)
        if ready.entries:
            last = ready.entries[-1]
            # The random second key reorders reports due in the same tick.
            due = self.now + self.rng.randint(0, 1)
            node.reports.append((due, self.rng.getrandbits(32), last.index, last.term))

    def _persist(self, node: _Node, ready: Ready) -> None:
        storage = node.storage
        if ready.snapshot is not None:
            snapshot = ready.snapshot
            chain = self._chain_at.get((snapshot.index, snapshot.term))
            if chain is None:
                self._fail(f"{node.node_id} got a snapshot of an entry no disk ever held")
            assert chain is not None
            storage.snapshot = snapshot
            storage.snapshot_chain = chain
            storage.entries.clear()
            storage.chains.clear()
            storage.commit_observed = max(storage.commit_observed, snapshot.index)
            self._record_committed(node, snapshot.index, chain, None, ready.term)
        if ready.entries:
            self._persist_entries(node, ready.entries)
        if ready.hard_state is not None:
            if not ready.must_sync and self.rng.random() < 0.5:
                return  # written without fsync, and as if a crash will lose it
            storage.hard_state = ready.hard_state
            self._observe_commit(node)

    def _persist_entries(self, node: _Node, entries: tuple[Entry, ...]) -> None:
        storage = node.storage
        position = entries[0].index - storage.offset - 1
        assert 0 <= position <= len(storage.entries), (entries[0], storage.offset)
        del storage.entries[position:]
        del storage.chains[position:]
        chain = storage.chains[-1] if storage.chains else storage.snapshot_chain
        for entry in entries:
            chain = self._chain(chain, entry)
            known = self._chain_at.setdefault((entry.index, entry.term), chain)
            if known != chain:
                self._fail(
                    f"log matching: {node.node_id} holds {entry} with a prefix that differs from "
                    f"another log's entry of the same index and term"
                )
            storage.entries.append(entry)
            storage.chains.append(chain)

    def _chain(self, previous: int, entry: Entry) -> int:
        """A small integer naming the whole log prefix ending in ``entry``."""
        key = (previous, entry)
        chain = self._chain_ids.get(key)
        if chain is None:
            chain = len(self._chain_ids) + 1
            self._chain_ids[key] = chain
        return chain

    # --- what is known committed, and leader completeness ---

    def _observe_commit(self, node: _Node) -> None:
        storage = node.storage
        commit = storage.hard_state.commit
        term = storage.hard_state.term
        for index in range(storage.commit_observed + 1, commit + 1):
            position = index - storage.offset - 1
            self._record_committed(
                node, index, storage.chains[position], storage.entries[position], term
            )
        storage.commit_observed = max(storage.commit_observed, commit)

    def _record_committed(
        self, node: _Node, index: int, chain: int, entry: Entry | None, term: int
    ) -> None:
        known = self._committed_chain.get(index)
        if known is not None and known != chain:
            self._fail(
                f"{node.node_id} committed {entry or 'a snapshot'} at {index}, but a different "
                f"entry was committed there before ({self._committed_entry.get(index)})"
            )
        if entry is not None:
            self._committed_entry.setdefault(index, entry)
        if known is None or term < self._commit_term[index]:
            self._committed_chain[index] = chain
            self._commit_term[index] = term
            for leader in self.nodes.values():
                core = leader.core
                if core is not None and core.role is Role.LEADER and core.term > term:
                    self._check_leader_has(leader, index)

    def _check_leaders(self) -> None:
        for node in self.nodes.values():
            core = node.core
            if core is None or core.role is not Role.LEADER:
                continue
            term = core.term
            if term in node.leader_terms_checked:
                continue
            leader = self._leader_of_term.setdefault(term, node.node_id)
            if leader != node.node_id:
                self._fail(f"election safety: {leader} and {node.node_id} both led term {term}")
            node.leader_terms_checked.add(term)
            self._trace.update(f"{self.step_number}leader{node.node_id}{term}".encode())
            for index, commit_term in self._commit_term.items():
                if commit_term < term:
                    self._check_leader_has(node, index)
            if self.rng.random() < self._faults_now.new_leader_isolation_probability:
                self._isolate({node.node_id})

    def _check_leader_has(self, node: _Node, index: int) -> None:
        core = node_core(node)
        snapshot = core.snapshot
        if snapshot is not None and index <= snapshot.index:
            return  # in its snapshot, which the state machine checks cover
        committed = self._committed_entry.get(index)
        if index > core.last_index:
            self._fail(
                f"leader completeness: {node.node_id}, leader of term {core.term}, lacks "
                f"committed entry {committed or index} (committed by term "
                f"{self._commit_term[index]}); its log ends at {core.last_index}"
            )
        (entry,) = core.log_entries(index, index + 1)
        if committed is not None and entry != committed:
            self._fail(
                f"leader completeness: {node.node_id}, leader of term {core.term}, has {entry} "
                f"where {committed} was committed"
            )

    # --- the state machine ---

    def _apply(self, node: _Node, entry: Entry) -> None:
        if entry.index != node.applied_index + 1:
            self._fail(f"{node.node_id} applied {entry} after {node.applied_index}")
        chain = self._chain(node.applied_chain, entry)
        self._check_state(node, entry.index, chain, f"applied {entry}")
        node.applied_index, node.applied_chain = entry.index, chain

    def _install_snapshot(self, node: _Node, snapshot: Snapshot) -> None:
        index, chain = decode_state(snapshot.data)
        if index != snapshot.index:
            self._fail(f"{node.node_id} got a snapshot whose state is at {index}, not its index")
        self._check_state(node, index, chain, f"installed a snapshot at {index}")
        node.applied_index, node.applied_chain = index, chain

    def _check_state(self, node: _Node, index: int, chain: int, what: str) -> None:
        known = self._applied_chain.setdefault(index, (chain, node.node_id))
        if known[0] != chain:
            self._fail(
                f"state machine safety: {node.node_id} {what}, but {known[1]} applied a "
                f"different entry or history at index {index}"
            )

    # --- the nemesis, clients and operators ---

    def _nemesis(self, faults: FaultMix) -> None:
        rng = self.rng
        if rng.random() < faults.partition_probability:
            self._partition()
        elif rng.random() < faults.heal_probability:
            self._group_of = dict.fromkeys(self._group_of, 0)
        for node in self.nodes.values():
            if node.core is None:
                if rng.random() < faults.restart_probability:
                    self._start(node)
            elif rng.random() < faults.crash_probability:
                self._crash(node)
        leaders = self._believed_leaders()
        if leaders and rng.random() < faults.leader_crash_probability:
            self._crash(rng.choice(leaders))
        if rng.random() < faults.propose_probability:
            self._propose(faults)
        # Each operation may crash a node (in its Ready), so the leader is looked up each time.
        operations = (
            (faults.read_probability, self._read),
            (faults.config_change_probability, self._change_membership),
            (faults.transfer_probability, self._transfer),
        )
        for probability, operation in operations:
            if rng.random() < probability:
                leader = self._current_leader()
                if leader is not None:
                    operation(leader, faults)
        if rng.random() < faults.compact_probability:
            self._compact(faults)

    def _partition(self) -> None:
        ids = list(self._group_of)
        if self.rng.random() < 0.5:
            self._isolate({self.rng.choice(ids)})
        else:
            self._isolate({node_id for node_id in ids if self.rng.random() < 0.5})

    def _isolate(self, isolated: set[str]) -> None:
        self._group_of = {node_id: int(node_id in isolated) for node_id in self._group_of}
        self._trace.update(f"{self.step_number}partition{sorted(isolated)}".encode())

    def _current_leader(self) -> _Node | None:
        """The up leader of the highest term, if any (others may still think they lead)."""
        return max(self._believed_leaders(), key=lambda node: node_core(node).term, default=None)

    def _believed_leaders(self) -> list[_Node]:
        """Every up node that thinks it leads, a deposed one cut off from the rest included."""
        return [
            node
            for node in self.nodes.values()
            if node.core is not None and node.core.role is Role.LEADER
        ]

    def _propose(self, faults: FaultMix) -> None:
        """A client that found some leader (maybe a deposed one), or asked a random node."""
        leaders = self._believed_leaders()
        if leaders and self.rng.random() < 0.9:
            node = self.rng.choice(leaders)
        else:
            node = self.rng.choice(list(self.nodes.values()))
        core = node.core
        if core is None or core.last_index - core.commit_index >= CLIENT_UNCOMMITTED_MAX:
            return  # clients back off from a leader that commits nothing
        for _ in range(self.rng.randint(1, 3)):
            self._proposals += 1
            data = f"{self.seed}:{self._proposals}".encode()
            self._step(node, "propose", functools.partial(core.propose, data), faults)
            if node.core is not core:
                return  # it crashed in its Ready

    def _read(self, leader: _Node, faults: FaultMix) -> None:
        request_id = self._next_read_id
        self._next_read_id += 1
        self._read_floor[request_id] = max(self._committed_chain, default=0)
        core = node_core(leader)
        self._step(leader, "read_index", functools.partial(core.read_index, request_id), faults)

    def _change_membership(self, leader: _Node, faults: FaultMix) -> None:
        core = node_core(leader)
        voters = core.voters
        outside = sorted(set(self.nodes) - voters)
        if outside and (len(voters) <= 2 or self.rng.random() < 0.5):
            add = self.rng.choice(outside)
            self._step(
                leader, f"add {add}", functools.partial(core.propose_config_change, add=add), faults
            )
        elif len(voters) > 2:
            remove = self.rng.choice(sorted(voters))
            self._step(
                leader,
                f"remove {remove}",
                functools.partial(core.propose_config_change, remove=remove),
                faults,
            )

    def _transfer(self, leader: _Node, faults: FaultMix) -> None:
        core = node_core(leader)
        targets = sorted(core.voters - {leader.node_id})
        if targets:
            target = self.rng.choice(targets)
            self._step(
                leader,
                f"transfer to {target}",
                functools.partial(core.transfer_leadership, target),
                faults,
            )

    def _compact(self, faults: FaultMix) -> None:
        node = self.rng.choice(list(self.nodes.values()))
        core = node.core
        if core is None or node.disk_free_at > self.now or core.has_ready():
            return  # compact only with the disk caught up, as an application would
        self._flush_writes(node)  # the storage writer compacts after the writes before it
        index = node.applied_index
        if index <= node.storage.offset:
            return
        data = encode_state(index, node.applied_chain)

        def compact() -> None:
            core.compact(index, data)
            storage = node.storage
            snapshot = core.snapshot
            assert snapshot is not None
            assert snapshot.index == index
            # RaftStorage writes the hard state with the snapshot's mark, fsynced: a commit index
            # it had written without fsync is durable from here on.
            hard_state = storage.hard_state
            storage.hard_state = HardState(
                hard_state.term, hard_state.voted_for, max(hard_state.commit, core.commit_index)
            )
            self._observe_commit(node)
            position = index - storage.offset - 1
            storage.snapshot_chain = storage.chains[position]
            del storage.entries[: position + 1]
            del storage.chains[: position + 1]
            storage.snapshot = snapshot

        self._step(node, f"compact to {index}", compact, faults)

    # --- liveness ---

    def _heal_and_check_liveness(self) -> None:
        """Heal everything, then a leader must emerge and commit a proposal (loosely bounded)."""
        calm = FaultMix.calm()
        self._group_of = dict.fromkeys(self._group_of, 0)
        for node in self.nodes.values():
            node.disk_free_at = 0
            if node.core is None:
                self._start(node)
        marker: tuple[str, int] | None = None
        deadline = self.now + LIVENESS_ELECTION_TIMEOUTS_MAX * self.election_ticks
        while self.now < deadline:
            self._run_tick(calm)
            leader = self._current_leader()
            if leader is None:
                continue
            core = node_core(leader)
            if marker is not None and marker[0] == leader.node_id:
                if leader.applied_index >= marker[1]:
                    # Applied, so committed: by the state machine checks, the same everywhere.
                    (applied,) = core.log_entries(marker[1], marker[1] + 1)
                    if applied.data == b"liveness":
                        return
                    marker = None  # lost to a conflicting suffix: propose again
                continue
            try:
                marker = (leader.node_id, core.propose(b"liveness"))
            except (NotLeaderError, ProposalDroppedError):
                continue
            self._process_ready(leader, calm)
        self._fail(
            f"liveness: no proposal committed {LIVENESS_ELECTION_TIMEOUTS_MAX} election timeouts "
            f"after healing; roles {self._roles()}",
            LivenessFailure,
        )

    def _roles(self) -> dict[str, str]:
        return {
            node_id: f"{node.core.role}@{node.core.term}" if node.core else "down"
            for node_id, node in self.nodes.items()
        }


def node_core(node: _Node) -> RaftCore:
    assert node.core is not None, f"{node.node_id} is down"
    return node.core


def encode_state(index: int, chain: int) -> bytes:
    """The simulated application's state: how far it applied, and the history's chain id."""
    return f"{index}:{chain}".encode()


def decode_state(data: bytes) -> tuple[int, int]:
    index, chain = data.decode().split(":")
    return int(index), int(chain)


class SimulationOptions(TypedDict, total=False):
    """``Simulation``'s keyword arguments, for the helpers that run many seeds."""

    fault_ticks: int
    node_count: int | None
    churn: bool | None
    async_writes: bool | None


def run_seeds(seeds: range, **options: Unpack[SimulationOptions]) -> list[SimulationResult]:
    """Run each seed; the first violation propagates, naming its seed."""
    return [Simulation(seed, **options).run() for seed in seeds]


def first_violation(seeds: range, **options: Unpack[SimulationOptions]) -> tuple[int, str] | None:
    """The first seed that violates a safety property, and the violation; None if none does."""
    for seed in seeds:
        try:
            Simulation(seed, **options).run()
        except SafetyViolation as violation:
            return seed, str(violation)
        except LivenessFailure:
            continue  # an injected bug may also stall the cluster; only safety counts here
    return None
