"""Scenario tests of the sans-I/O Raft core (distlab.raft.core), read as transcripts.

References: Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm", USENIX ATC
2014 ("Raft 2014"); Ongaro, "Consensus: Bridging Theory and Practice", PhD thesis, Stanford 2014
("thesis"). Each test names the section it checks.

No event loop, no sockets, no clock: ``Cluster`` holds the nodes, runs each node's Ready recipe
(persist to a dict, queue the messages, record what is applied, advance) and delivers the queued
messages only when a test says so, so a test reads as the paper's figures do: who sent what to
whom, and what each node did with it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from distlab.raft.core import (
    AppendRequest,
    AppendResponse,
    Config,
    Entry,
    EntryKind,
    HardState,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftCore,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotRequest,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    candidate_log_is_up_to_date,
    decode_config,
    encode_config,
    may_commit_by_counting_replicas,
    quorum_commit_index,
)

ELECTION_TICKS = 10
HEARTBEAT_TICKS = 1
THREE = ("n1", "n2", "n3")
SomeMessage = TypeVar("SomeMessage", bound=Message)


@dataclass
class Disk:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None


class Cluster:
    """A few RaftCores and the messages between them, delivered only when a test says so."""

    def __init__(self, ids: Iterable[str] = THREE, *, seed: int = 7, **options: int | bool) -> None:
        self.ids = tuple(ids)
        self.options = options
        self.seed = seed
        self.disks = {node_id: Disk() for node_id in self.ids}
        self.nodes = {node_id: self.new_core(node_id, self.ids) for node_id in self.ids}
        self.applied: dict[str, list[Entry]] = {node_id: [] for node_id in self.ids}
        self.read_states: dict[str, list[ReadState]] = {node_id: [] for node_id in self.ids}
        self.readies: dict[str, list[Ready]] = {node_id: [] for node_id in self.ids}
        self.pending: list[Message] = []
        self.cut: set[str] = set()  # nodes whose messages are lost, both ways

    def new_core(self, node_id: str, voters: Iterable[str], disk: Disk | None = None) -> RaftCore:
        config = Config(node_id, **self.options)  # type: ignore[arg-type]
        disk = disk or Disk()
        return RaftCore(
            config,
            voters,
            random.Random(f"{self.seed}:{node_id}"),
            hard_state=disk.hard_state,
            entries=disk.entries,
            snapshot=disk.snapshot,
        )

    def add_node(self, node_id: str) -> RaftCore:
        """A new server: no voters of its own, it waits for the leader (thesis 4.1)."""
        self.ids = (*self.ids, node_id)
        self.disks[node_id] = Disk()
        self.applied[node_id] = []
        self.read_states[node_id] = []
        self.readies[node_id] = []
        self.nodes[node_id] = self.new_core(node_id, ())
        return self.nodes[node_id]

    def restart(self, node_id: str, voters: Iterable[str] = THREE) -> RaftCore:
        """Crash and restart from what the node persisted."""
        self.nodes[node_id] = self.new_core(node_id, voters, self.disks[node_id])
        self.applied[node_id] = []
        return self.nodes[node_id]

    def flush(self) -> None:
        """Run every node's Ready recipe: persist, queue messages, apply, advance."""
        for node_id, node in self.nodes.items():
            while node.has_ready():
                ready = node.ready()
                disk = self.disks[node_id]
                if ready.snapshot is not None:
                    disk.snapshot = ready.snapshot
                    disk.entries.clear()
                if ready.entries:
                    first = ready.entries[0].index
                    disk.entries = [e for e in disk.entries if e.index < first]
                    disk.entries.extend(ready.entries)
                if ready.hard_state is not None:
                    disk.hard_state = ready.hard_state
                self.pending.extend(ready.messages)
                self.applied[node_id].extend(ready.committed)
                self.read_states[node_id].extend(ready.read_states)
                self.readies[node_id].append(ready)
                node.advance(ready)

    def deliver(self, where: Callable[[Message], bool] = lambda message: True) -> list[Message]:
        """Deliver the queued messages that match, once; the rest stay queued."""
        self.flush()
        chosen = [message for message in self.pending if where(message)]
        self.pending = [message for message in self.pending if not where(message)]
        delivered = []
        for message in chosen:
            if message.source in self.cut or message.target in self.cut:
                continue
            self.nodes[message.target].step(message)
            delivered.append(message)
            self.flush()
        return delivered

    def stabilize(self) -> None:
        for _ in range(1000):
            self.flush()
            if not self.pending:
                return
            self.deliver()
        raise AssertionError("messages kept flowing")

    def take(self, kind: type[SomeMessage]) -> list[SomeMessage]:
        """The queued messages of one kind, left in the queue."""
        self.flush()
        return [message for message in self.pending if isinstance(message, kind)]

    def drop(self, where: Callable[[Message], bool] = lambda message: True) -> None:
        self.flush()
        self.pending = [message for message in self.pending if not where(message)]

    def tick(self, node_id: str, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[node_id].tick()
        self.flush()

    def tick_until_campaign(self, node_id: str) -> int:
        node = self.nodes[node_id]
        for ticks in range(1, 4 * ELECTION_TICKS):
            node.tick()
            if node.role is not Role.FOLLOWER:
                self.flush()
                return ticks
        raise AssertionError(f"{node_id} never campaigned")

    def elect(self, node_id: str) -> RaftCore:
        self.tick_until_campaign(node_id)
        self.stabilize()
        node = self.nodes[node_id]
        assert node.role is Role.LEADER
        self.heartbeat(node_id)
        return node

    def expire_lease(self, node_id: str) -> None:
        """Let an election timeout pass at a node that hears from no leader (thesis 4.2.3: only
        then does it listen to candidates); whatever it sends meanwhile is lost."""
        for _ in range(ELECTION_TICKS):
            self.tick(node_id)
            self.drop(lambda message: message.source == node_id)

    def heartbeat(self, node_id: str) -> None:
        """One heartbeat round from the leader, delivered: followers learn the commit index."""
        self.tick(node_id, HEARTBEAT_TICKS)
        self.stabilize()

    def commits(self) -> dict[str, int]:
        return {node_id: node.commit_index for node_id, node in self.nodes.items()}


def normal(term: int, index: int, data: bytes = b"x") -> Entry:
    return Entry(term, index, EntryKind.NORMAL, data)


def to(target: str) -> Callable[[Message], bool]:
    return lambda message: message.target == target


# --- quorum arithmetic (etcd's quorum package has tests of its own; so does ours) ---------------


@pytest.mark.parametrize(
    ("matches", "voters", "expected"),
    [
        ({"a": 5}, ["a"], 5),  # a cluster of one commits what it has
        ({"a": 5, "b": 3, "c": 1}, ["a", "b", "c"], 3),  # the median of three
        ({"a": 5, "b": 3}, ["a", "b", "c"], 3),  # a silent voter counts as 0
        ({"a": 5, "b": 5, "c": 1, "d": 1}, ["a", "b", "c", "d"], 1),  # 2 of 4 is no majority
        ({"a": 5, "b": 5, "c": 4, "d": 1}, ["a", "b", "c", "d"], 4),
        ({"a": 9, "b": 8, "c": 7, "d": 2, "e": 1}, ["a", "b", "c", "d", "e"], 7),
        ({"a": 9, "x": 100, "y": 100}, ["a", "b", "c"], 0),  # non-voters do not count
        ({"a": 9}, [], 0),
    ],
)
def test_quorum_commit_index(matches: dict[str, int], voters: list[str], expected: int) -> None:
    assert quorum_commit_index(matches, voters) == expected


def test_quorum_commit_index_is_the_largest_index_a_majority_holds() -> None:
    rng = random.Random(11)
    for _ in range(500):
        voters = [f"v{number}" for number in range(rng.randint(1, 7))]
        matches = {voter: rng.randint(0, 20) for voter in voters}
        result = quorum_commit_index(matches, voters)
        majority = len(voters) // 2 + 1
        assert sum(1 for voter in voters if matches[voter] >= result) >= majority
        assert sum(1 for voter in voters if matches[voter] >= result + 1) < majority


@pytest.mark.parametrize(
    ("candidate", "mine", "granted"),
    [
        ((2, 5), (1, 9), True),  # a later last term wins, however short (5.4.1)
        ((1, 9), (2, 5), False),
        ((2, 5), (2, 5), True),  # equal logs are up to date
        ((2, 6), (2, 5), True),  # same last term: the longer log
        ((2, 4), (2, 5), False),
        ((0, 0), (0, 0), True),
    ],
)
def test_candidate_log_is_up_to_date(
    candidate: tuple[int, int], mine: tuple[int, int], granted: bool
) -> None:
    assert candidate_log_is_up_to_date(*candidate, *mine) is granted


def test_only_entries_of_the_current_term_commit_by_counting() -> None:
    assert may_commit_by_counting_replicas(4, 4)
    assert not may_commit_by_counting_replicas(2, 4)


def test_config_entries_encode_sorted_ids() -> None:
    assert encode_config({"n3", "n1", "n2"}) == b"n1,n2,n3"
    assert decode_config(b"n1,n2,n3") == {"n1", "n2", "n3"}
    assert decode_config(encode_config(())) == frozenset()


# --- configuration and input checks --------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"node_id": ""},
        {"node_id": "a,b"},
        {"node_id": "n1", "election_ticks": 1},
        {"node_id": "n1", "heartbeat_ticks": 10},  # not below election_ticks
        {"node_id": "n1", "heartbeat_ticks": 0},
        {"node_id": "n1", "max_entries_per_append": 0},
        {"node_id": "n1", "max_inflight_appends": 0},
    ],
)
def test_config_refuses_bad_values(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        Config(**options)  # type: ignore[arg-type]


def test_a_message_for_another_node_is_refused() -> None:
    node = Cluster().nodes["n1"]
    with pytest.raises(ValueError, match="n2"):
        node.step(TimeoutNow(1, "n3", "n2"))


def test_a_follower_refuses_proposals_and_names_the_leader() -> None:
    cluster = Cluster()
    cluster.elect("n1")
    with pytest.raises(NotLeaderError) as refused:
        cluster.nodes["n2"].propose(b"x")
    assert refused.value.leader == "n1"
    with pytest.raises(NotLeaderError):
        cluster.nodes["n2"].read_index(1)


def test_ready_is_empty_once_everything_is_done() -> None:
    cluster = Cluster()
    cluster.flush()
    node = cluster.nodes["n1"]
    assert not node.has_ready()
    assert node.ready().empty()


# --- elections -----------------------------------------------------------------------------------


def test_election_pre_vote_then_vote_then_noop() -> None:
    """Raft 2014, 5.2 (randomized timeout, votes) and thesis 9.6 (pre-vote at term + 1, which
    changes no term); Raft 2014, section 8 (a new leader's NOOP)."""
    cluster = Cluster()
    n1, n2, n3 = (cluster.nodes[node_id] for node_id in THREE)

    ticks = cluster.tick_until_campaign("n1")
    assert ELECTION_TICKS <= ticks < 2 * ELECTION_TICKS
    assert (n1.role, n1.term) == (Role.PRE_CANDIDATE, 0)
    assert cluster.take(VoteRequest) == [
        VoteRequest(1, "n1", "n2", 0, 0, pre_vote=True, transfer=False),
        VoteRequest(1, "n1", "n3", 0, 0, pre_vote=True, transfer=False),
    ]

    cluster.deliver()  # the pre-votes reach n2 and n3
    assert (n2.term, n3.term) == (0, 0)  # a pre-vote changes no term...
    assert cluster.disks["n2"].hard_state.voted_for is None  # ...and records no vote
    assert cluster.take(VoteResponse) == [
        VoteResponse(1, "n2", "n1", granted=True, pre_vote=True),
        VoteResponse(1, "n3", "n1", granted=True, pre_vote=True),
    ]

    cluster.deliver()  # one grant plus its own is a majority: a real election at term 1
    assert (n1.role, n1.term) == (Role.CANDIDATE, 1)
    assert cluster.disks["n1"].hard_state == HardState(term=1, voted_for="n1", commit=0)

    cluster.deliver()  # the vote requests
    # A vote is on disk before the answer leaves (Figure 2: persist votedFor before responding).
    assert cluster.disks["n2"].hard_state.voted_for == "n1"
    cluster.deliver()  # the votes
    assert (n1.role, n1.leader) == (Role.LEADER, "n1")
    assert n1.log_entries(1, 2) == (Entry(1, 1, EntryKind.NOOP, b""),)

    cluster.stabilize()
    assert n1.commit_index == 1  # the NOOP is on a majority
    cluster.heartbeat("n1")
    assert cluster.commits() == {"n1": 1, "n2": 1, "n3": 1}
    assert n2.leader == n3.leader == "n1"


def test_randomized_election_timeouts_spread_over_one_timeout() -> None:
    """Raft 2014, 5.2: timeouts drawn from [T, 2T) so that one server usually times out first."""
    seen = set()
    for seed in range(60):
        cluster = Cluster(seed=seed)
        seen.add(cluster.tick_until_campaign("n1"))
    assert min(seen) >= ELECTION_TICKS
    assert max(seen) < 2 * ELECTION_TICKS
    assert len(seen) >= 5


def test_one_vote_per_term() -> None:
    """Raft 2014, 5.2: "each server will vote for at most one candidate in a given term"."""
    cluster = Cluster(pre_vote=False)
    n3 = cluster.nodes["n3"]
    n3.step(VoteRequest(1, "n1", "n3", 0, 0, pre_vote=False, transfer=False))
    n3.step(VoteRequest(1, "n2", "n3", 0, 0, pre_vote=False, transfer=False))
    n3.step(VoteRequest(1, "n1", "n3", 0, 0, pre_vote=False, transfer=False))  # a duplicate
    assert cluster.take(VoteResponse) == [
        VoteResponse(1, "n3", "n1", granted=True, pre_vote=False),
        VoteResponse(1, "n3", "n2", granted=False, pre_vote=False),
        VoteResponse(1, "n3", "n1", granted=True, pre_vote=False),
    ]
    # After a restart the vote still holds: it was persisted.
    restarted = cluster.restart("n3")
    restarted.step(VoteRequest(1, "n2", "n3", 0, 0, pre_vote=False, transfer=False))
    assert cluster.take(VoteResponse)[-1] == VoteResponse(1, "n3", "n2", False, False)


def test_a_vote_is_refused_to_a_candidate_with_a_stale_log() -> None:
    """Raft 2014, 5.4.1: the voter denies its vote if its own log is more up-to-date."""
    cluster = Cluster(pre_vote=False)
    cluster.elect("n1")
    cluster.nodes["n1"].propose(b"a")
    cluster.cut.add("n3")  # n3 misses the entry
    cluster.stabilize()
    cluster.cut.clear()
    n3 = cluster.nodes["n3"]
    assert n3.last_index == 1
    cluster.nodes["n2"].step(VoteRequest(5, "n3", "n2", 1, 1, pre_vote=False, transfer=True))
    assert cluster.take(VoteResponse) == [VoteResponse(5, "n2", "n3", False, False)]
    assert cluster.nodes["n2"].term == 5  # the term is taken (5.1), the vote is not given


def test_leader_stickiness_refuses_a_disruptive_candidate() -> None:
    """Thesis 4.2.3: a server that heard from a leader within the minimum election timeout
    neither grants a vote nor takes the term; a leadership transfer's campaign is the exception
    (thesis 3.10)."""
    cluster = Cluster()
    cluster.elect("n1")
    n2 = cluster.nodes["n2"]
    n2.step(VoteRequest(7, "n3", "n2", 9, 9, pre_vote=False, transfer=False))
    n2.step(VoteRequest(7, "n3", "n2", 9, 9, pre_vote=True, transfer=False))
    assert cluster.take(VoteResponse) == [
        VoteResponse(1, "n2", "n3", False, False),
        VoteResponse(1, "n2", "n3", False, True),
    ]
    assert (n2.term, n2.leader) == (1, "n1")
    n2.step(VoteRequest(7, "n3", "n2", 9, 9, pre_vote=False, transfer=True))
    assert cluster.take(VoteResponse)[-1] == VoteResponse(7, "n2", "n3", True, False)


# --- replication ---------------------------------------------------------------------------------


def test_replication_commits_on_a_majority_and_followers_learn_it() -> None:
    """Raft 2014, 5.3: the leader commits an entry once it is on a majority; followers learn
    the commit index from later appends (here, the heartbeat)."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    index = n1.propose(b"set x=1")
    assert index == 2
    appends = cluster.take(AppendRequest)
    assert [(m.target, m.prev_index, m.prev_term, m.entries, m.commit) for m in appends] == [
        ("n2", 1, 1, (normal(1, 2, b"set x=1"),), 1),
        ("n3", 1, 1, (normal(1, 2, b"set x=1"),), 1),
    ]
    cluster.cut.add("n3")  # one follower is enough for a majority of three
    cluster.deliver()
    cluster.deliver()
    assert n1.commit_index == 2
    assert cluster.applied["n1"][-1] == normal(1, 2, b"set x=1")
    assert cluster.nodes["n2"].commit_index == 1
    cluster.heartbeat("n1")
    assert cluster.nodes["n2"].commit_index == 2
    assert cluster.applied["n2"] == cluster.applied["n1"]
    assert cluster.applied["n3"] == [Entry(1, 1, EntryKind.NOOP, b"")]


def test_a_follower_commits_only_what_the_append_proved_to_match() -> None:
    """Figure 2, AppendEntries receiver step 5: commitIndex = min(leaderCommit, index of last
    new entry), not the follower's last index, whose suffix may still be stale."""
    cluster = Cluster()
    disk = Disk(HardState(term=2), [normal(1, 1), normal(1, 2), normal(1, 3)])
    node = cluster.new_core("n2", THREE, disk)
    node.step(AppendRequest(3, "n1", "n2", 1, 1, (), commit=3, context=1))
    assert node.commit_index == 1
    assert node.ready().messages == (AppendResponse(3, "n2", "n1", True, 1, 0, 1),)


def test_figure_8_an_old_term_entry_on_a_majority_is_not_committed() -> None:
    """Raft 2014, 5.4.2 and Figure 8: a leader may not commit an entry of an earlier term by
    counting replicas. Here n1 (term 4) puts n1's term-2 entry on a majority (n1, n2), yet n3,
    whose log ends in term 3, can still be elected with n2's vote and overwrite it."""
    cluster = Cluster(max_entries_per_append=1, pre_vote=False)
    logs = {
        "n1": [normal(1, 1), normal(2, 2)],
        "n2": [normal(1, 1)],
        "n3": [normal(1, 1), normal(3, 2)],
    }
    for node_id, entries in logs.items():
        cluster.disks[node_id] = Disk(HardState(term=3, commit=1), list(entries))
        cluster.restart(node_id)
    n1, n2, n3 = (cluster.nodes[node_id] for node_id in THREE)

    cluster.cut.add("n3")  # n3 hears nothing of n1's term
    cluster.tick_until_campaign("n1")
    cluster.deliver()  # vote request to n2
    cluster.deliver()  # n2's vote: n1 leads term 4 and appends its NOOP at index 3
    assert (n1.role, n1.term) == (Role.LEADER, 4)
    cluster.deliver(to("n2"))  # probe at prev 2 (term 2): n2's log ends at 1
    assert cluster.take(AppendResponse) == [AppendResponse(4, "n2", "n1", False, 2, 2, 0)]
    cluster.deliver()  # n1 backs up and sends index 2 alone
    cluster.deliver(to("n2"))  # n2 appends the term-2 entry
    cluster.deliver(lambda message: isinstance(message, AppendResponse))
    assert n2.last_index == 2
    assert n1.commit_index == 1  # index 2 is on n1 and n2, but it is of term 2, not 4

    # Why: n1 crashes before the NOOP reaches n2. n3 (last term 3) beats n2 (last term 2).
    cluster.drop()
    cluster.cut = {"n1"}
    cluster.expire_lease("n2")
    while n3.role is not Role.LEADER:
        cluster.tick_until_campaign("n3")
        cluster.stabilize()
    cluster.heartbeat("n3")
    assert n2.log_entries(2, 3) == (normal(3, 2),)  # the term-2 entry is gone from n2


def test_figure_8_the_current_term_entry_commits_the_older_one() -> None:
    """Raft 2014, 5.4.2: once an entry of the leader's term is on a majority, every entry
    before it is committed too (the Log Matching Property)."""
    cluster = Cluster(max_entries_per_append=1, pre_vote=False)
    for node_id, entries in {"n1": [normal(1, 1), normal(2, 2)], "n2": [normal(1, 1)]}.items():
        cluster.disks[node_id] = Disk(HardState(term=3, commit=1), list(entries))
        cluster.restart(node_id)
    cluster.cut.add("n3")
    cluster.tick_until_campaign("n1")
    cluster.stabilize()
    n1 = cluster.nodes["n1"]
    assert n1.commit_index == 3
    assert [entry.term for entry in cluster.applied["n1"]] == [1, 2, 4]


def test_a_stale_leader_steps_down_and_its_uncommitted_entry_is_replaced() -> None:
    """Raft 2014, 5.1 (a server that sees a larger term reverts to follower; a request with a
    stale term is rejected) and 5.3 (the new leader overwrites the conflicting entry)."""
    cluster = Cluster(check_quorum=False)
    n1 = cluster.elect("n1")
    cluster.cut.add("n1")
    n1.propose(b"lost")  # reaches no one
    cluster.drop()
    cluster.expire_lease("n3")
    n2 = cluster.elect("n2")
    assert n2.term == 2
    n2.propose(b"kept")
    cluster.stabilize()
    assert n1.role is Role.LEADER  # n1 does not know yet

    cluster.cut.clear()
    cluster.tick("n1", 1)  # n1's heartbeat at term 1...
    cluster.deliver(to("n3"))
    assert cluster.take(AppendResponse) == [AppendResponse(2, "n3", "n1", False, 0, 0, 0)]
    cluster.deliver()  # ...is answered at term 2: n1 steps down
    assert (n1.role, n1.term) == (Role.FOLLOWER, 2)
    cluster.heartbeat("n2")
    cluster.heartbeat("n2")
    assert [entry.data for entry in n1.log_entries(1, n1.last_index + 1)] == [b"", b"", b"kept"]
    truncating = [ready for ready in cluster.readies["n1"] if ready.entries]
    assert truncating[-1].entries[0].index == 2  # Ready says: truncate from index 2
    assert [entry.data for entry in cluster.disks["n1"].entries] == [b"", b"", b"kept"]


def test_check_quorum_steps_down_a_leader_cut_off_from_the_majority() -> None:
    """Thesis 6.2: a leader that has not heard from a majority for an election timeout steps
    down, so clients stop waiting on a leader that cannot commit."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    cluster.tick("n1", ELECTION_TICKS)
    cluster.stabilize()
    assert n1.role is Role.LEADER  # heard from both followers
    cluster.cut = {"n2", "n3"}
    cluster.tick("n1", ELECTION_TICKS)
    cluster.stabilize()
    cluster.tick("n1", ELECTION_TICKS)
    assert (n1.role, n1.leader, n1.term) == (Role.FOLLOWER, None, 1)


def test_pre_vote_keeps_a_partitioned_node_from_disrupting_the_cluster() -> None:
    """Thesis 9.6: a node cut off keeps timing out, but as a pre-candidate it never raises its
    term; when it rejoins, the leader of term 1 keeps leading."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    n3 = cluster.nodes["n3"]
    cluster.cut.add("n3")
    for _ in range(10 * ELECTION_TICKS):
        cluster.tick("n3")
        cluster.tick("n1")
        cluster.stabilize()
    assert (n3.role, n3.term) == (Role.PRE_CANDIDATE, 1)
    cluster.cut.clear()
    cluster.tick("n3", 2 * ELECTION_TICKS)  # its pre-votes reach n1 and n2...
    cluster.stabilize()
    assert (n1.role, n1.term) == (Role.LEADER, 1)  # ...and change nothing
    cluster.heartbeat("n1")
    assert (n3.role, n3.leader, n3.term) == (Role.FOLLOWER, "n1", 1)


def test_without_pre_vote_a_returning_node_forces_an_election() -> None:
    """The problem thesis 9.6 solves: the cut-off node's term ran ahead, and its return deposes
    a healthy leader (the answer to a stale heartbeat carries the newer term)."""
    cluster = Cluster(pre_vote=False)
    n1 = cluster.elect("n1")
    n3 = cluster.nodes["n3"]
    cluster.cut.add("n3")
    for _ in range(3 * ELECTION_TICKS):
        cluster.tick("n3")
        cluster.drop()
    assert n3.term > 2
    cluster.cut.clear()
    cluster.heartbeat("n1")
    assert n1.role is Role.FOLLOWER
    assert n1.term == n3.term


def test_fast_backtracking_skips_a_conflicting_term_in_one_round_trip() -> None:
    """Raft 2014, 5.3 (after Figure 7): the follower names the first index of the conflicting
    term, so the leader skips the whole term instead of one entry per round trip."""
    cluster = Cluster(pre_vote=False)
    stale = [normal(1, 1)] + [normal(2, index) for index in range(2, 40)]
    current = [normal(1, 1)] + [normal(3, index) for index in range(2, 8)]
    for node_id, entries in {"n1": current, "n2": current, "n3": stale}.items():
        cluster.disks[node_id] = Disk(HardState(term=3, commit=1), list(entries))
        cluster.restart(node_id)
    cluster.tick_until_campaign("n1")
    cluster.stabilize()  # n1 leads term 4; its first append to n3 is at prev 7 (term 3)
    rejections = [
        message
        for ready in cluster.readies["n3"]
        for message in ready.messages
        if isinstance(message, AppendResponse) and not message.success
    ]
    assert len(rejections) == 1
    assert rejections[0].conflict_index == 2  # all 38 entries of term 2 skipped at once
    n3 = cluster.nodes["n3"]
    assert n3.log_entries(1, n3.last_index + 1) == cluster.nodes["n1"].log_entries(1, 9)


def test_pipelining_is_bounded_by_max_inflight_appends() -> None:
    """A follower in REPLICATE gets appends without waiting for answers, up to the limit."""
    cluster = Cluster(max_inflight_appends=2, max_entries_per_append=1)
    n1 = cluster.elect("n1")
    for number in range(5):
        n1.propose(f"c{number}".encode())
    sent_to_n2 = [message for message in cluster.take(AppendRequest) if message.target == "n2"]
    assert [message.entries[0].data for message in sent_to_n2] == [b"c0", b"c1"]
    cluster.stabilize()
    assert n1.commit_index == 6
    assert cluster.nodes["n2"].last_index == 6


def test_proposals_between_two_readies_share_one_append_per_follower() -> None:
    """Thesis 10.2.2, batching: what was proposed since the last Ready goes out together."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    for number in range(5):
        n1.propose(f"c{number}".encode())
    ready = n1.ready()
    appends = [message for message in ready.messages if isinstance(message, AppendRequest)]
    assert [(m.target, [e.data for e in m.entries]) for m in appends] == [
        ("n2", [b"c0", b"c1", b"c2", b"c3", b"c4"]),
        ("n3", [b"c0", b"c1", b"c2", b"c3", b"c4"]),
    ]
    assert ready.must_sync
    cluster.stabilize()
    assert n1.commit_index == 6


def test_a_heartbeat_answer_unblocks_a_full_pipeline_after_a_lost_append() -> None:
    """With one append in flight, a lost one would stall the follower until the retransmission
    timeout; the next heartbeat's answer sends again instead, and the refusal backs off."""
    cluster = Cluster(max_inflight_appends=1)
    n1 = cluster.elect("n1")
    n1.propose(b"lost")
    cluster.drop(to("n2"))
    n1.propose(b"waits")  # the pipeline to n2 is full: nothing goes out to it
    assert not [m for m in cluster.take(AppendRequest) if m.target == "n2"]
    cluster.heartbeat("n1")  # one heartbeat round, well inside an election timeout
    n2 = cluster.nodes["n2"]
    assert [entry.data for entry in n2.log_entries(2, n2.last_index + 1)] == [b"lost", b"waits"]


def test_a_commit_index_alone_needs_no_fsync() -> None:
    """etcd's MustSync: entries and a new term or vote must be durable before anyone hears of
    them; a commit index may be lost in a crash, as the leader tells it again."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    n1.propose(b"x")
    cluster.deliver(lambda message: isinstance(message, AppendRequest))  # n2 and n3 append
    cluster.deliver()  # their answers: n1 commits
    commit_only = cluster.readies["n1"][-1]
    assert commit_only.hard_state is not None
    assert commit_only.hard_state.commit == 2
    assert not commit_only.entries
    assert not commit_only.must_sync
    cluster.heartbeat("n1")  # the followers learn the commit index
    follower_commit = cluster.readies["n2"][-1]
    assert follower_commit.hard_state is not None
    assert follower_commit.hard_state.commit == 2
    assert not follower_commit.must_sync
    vote = Cluster()
    vote.elect("n1")  # after its pre-vote, n1 takes a new term and votes for itself
    new_term = [ready for ready in vote.readies["n1"] if ready.hard_state and ready.hard_state.term]
    assert new_term
    assert new_term[0].hard_state == HardState(1, "n1", 0)
    assert new_term[0].must_sync
    assert not new_term[0].entries


def test_a_leader_sends_before_persisting_and_counts_its_log_only_once_persisted() -> None:
    """Thesis 10.2.1: the leader may write its log in parallel with its followers, and commit an
    entry a majority of the *others* hold before it holds it on its own disk."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    n1.propose(b"x")
    ready = n1.ready()
    assert ready.send_before_persist
    assert ready.must_sync
    answers = {}
    for append in (m for m in ready.messages if isinstance(m, AppendRequest)):
        follower = cluster.nodes[append.target]
        follower.step(append)
        follower_ready = follower.ready()
        assert not follower_ready.send_before_persist  # an answer promises its disk
        follower.advance(follower_ready)
        (answers[append.target],) = follower_ready.messages
    n1.step(answers["n2"])  # n2 holds it; n1 has not persisted it: one of three
    assert n1.commit_index == 1
    n1.step(answers["n3"])  # n2 and n3: a majority without n1's disk
    assert n1.commit_index == 2
    n1.advance(ready)

    solo = Cluster()
    leader = solo.elect("n1")
    leader.propose(b"y")
    first = leader.ready()
    for append in (m for m in first.messages if isinstance(m, AppendRequest)):
        if append.target == "n2":
            follower = solo.nodes["n2"]
            follower.step(append)
            follower_ready = follower.ready()
            follower.advance(follower_ready)
            leader.step(follower_ready.messages[0])
    assert leader.commit_index == 1  # n2 alone is not a majority while n1's copy is in memory
    leader.advance(first)  # now persisted: n1 and n2
    assert leader.commit_index == 2


def test_a_leader_with_asynchronous_writes_counts_its_log_once_reported_durable() -> None:
    """etcd's AsyncStorageWrites: an accepted Ready hands its entries to a storage writer, the
    next Ready carries only newer entries, and the leader's own log counts toward commitment
    only when ``persisted`` says so (thesis 10.2.1); reports that no longer match are ignored."""
    cluster = Cluster()
    leader = cluster.elect("n1")
    leader.propose(b"a")
    first = leader.ready()
    leader.accept(first)  # handed to the writer, not durable
    leader.propose(b"b")
    second = leader.ready()
    assert [entry.data for entry in first.entries] == [b"a"]
    assert [entry.data for entry in second.entries] == [b"b"]  # not handed out twice
    leader.accept(second)
    assert not leader.has_ready()
    n2 = cluster.nodes["n2"]
    for message in (*first.messages, *second.messages):
        if message.target == "n2":
            n2.step(message)
    n2_ready = n2.ready()
    n2.advance(n2_ready)
    for message in n2_ready.messages:
        leader.step(message)
    assert leader.commit_index == 1  # n2 holds 2 and 3; n1's copies are in memory
    leader.persisted(second.entries[-1].index, second.entries[-1].term + 1)  # wrong term
    assert leader.commit_index == 1
    leader.persisted(first.entries[-1].index, first.entries[-1].term)
    assert leader.commit_index == 2
    leader.persisted(second.entries[-1].index, second.entries[-1].term)
    assert leader.commit_index == 3
    leader.persisted(first.entries[-1].index, first.entries[-1].term)  # late: changes nothing
    assert leader.commit_index == 3


def test_only_a_ready_that_promises_nothing_may_be_accepted_unpersisted() -> None:
    """A vote, or a follower's answer, promises what its Ready writes: it must be advanced,
    after the write, never accepted before it."""
    core = RaftCore(Config("n1"), THREE, random.Random(1))
    for _ in range(2 * ELECTION_TICKS):
        core.tick()
    ready = core.ready()
    assert not ready.send_before_persist  # the vote for itself, and its requests
    with pytest.raises(ValueError, match="send_before_persist"):
        core.accept(ready)


def test_a_lost_append_is_sent_again_after_an_election_timeout() -> None:
    """The network may drop anything; a leader that got no answer probes again."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    n1.propose(b"x")
    cluster.drop()
    for _ in range(ELECTION_TICKS):
        cluster.tick("n1")
        cluster.drop(lambda message: isinstance(message, AppendRequest) and not message.entries)
    cluster.stabilize()
    assert n1.commit_index == 2


# --- snapshots (thesis 5) ------------------------------------------------------------------------


def test_a_follower_behind_the_compacted_log_gets_the_snapshot() -> None:
    """Thesis 5.1 (Raft 2014, section 7): the leader sends its snapshot to a follower whose
    next entry was compacted away; the follower persists and installs it, then takes entries."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    cluster.cut.add("n3")
    for number in range(5):
        n1.propose(f"c{number}".encode())
    cluster.stabilize()
    cluster.heartbeat("n1")
    assert n1.applied_index == 6
    n1.compact(6, b"state@6")
    assert n1.snapshot == Snapshot(6, 1, frozenset(THREE), b"state@6")
    with pytest.raises(ValueError, match="not in the log"):
        n1.log_entries(5, 7)
    n1.propose(b"after")

    cluster.cut.clear()
    cluster.heartbeat("n1")
    cluster.heartbeat("n1")
    n3 = cluster.nodes["n3"]
    installs = [ready.snapshot for ready in cluster.readies["n3"] if ready.snapshot]
    assert installs == [Snapshot(6, 1, frozenset(THREE), b"state@6")]
    assert cluster.disks["n3"].snapshot == installs[0]
    assert (n3.commit_index, n3.applied_index, n3.last_index) == (7, 7, 7)
    assert cluster.applied["n3"][-1].data == b"after"
    assert any(isinstance(m, SnapshotRequest) for r in cluster.readies["n1"] for m in r.messages)


def test_compacting_past_the_applied_index_is_refused() -> None:
    cluster = Cluster()
    n1 = cluster.elect("n1")
    with pytest.raises(ValueError, match="applied"):
        n1.compact(5, b"")


# --- membership changes (thesis 4.1) -------------------------------------------------------------


def test_adding_a_voter_takes_effect_when_appended() -> None:
    """Thesis 4.1: the leader uses the new configuration as soon as the entry is in its log;
    a second change waits until the first is committed; the new server catches up."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    n4 = cluster.add_node("n4")
    index = n1.propose_config_change(add="n4")
    assert n1.voters == {"n1", "n2", "n3", "n4"}  # before it commits
    assert n1.commit_index < index
    with pytest.raises(ProposalDroppedError, match="uncommitted"):
        n1.propose_config_change(remove="n2")
    cluster.cut = {"n3", "n4"}
    cluster.stabilize()
    assert n1.commit_index < index  # n1 and n2: a majority of three, not of four
    cluster.cut.clear()
    cluster.heartbeat("n1")
    cluster.heartbeat("n1")
    assert n1.commit_index == index
    assert n4.voters == {"n1", "n2", "n3", "n4"}
    assert n4.log_entries(1, n4.last_index + 1) == n1.log_entries(1, n1.last_index + 1)


def test_a_config_change_waits_for_an_entry_of_the_leaders_term() -> None:
    """Ongaro, raft-dev 2015, "bug in single-server membership changes": a new leader must
    commit an entry of its term (its NOOP) before changing the configuration."""
    cluster = Cluster()
    cluster.tick_until_campaign("n1")
    cluster.deliver()
    cluster.deliver()
    cluster.deliver()
    cluster.deliver()
    n1 = cluster.nodes["n1"]
    assert n1.role is Role.LEADER
    assert n1.commit_index == 0
    with pytest.raises(ProposalDroppedError, match="term"):
        n1.propose_config_change(remove="n3")
    cluster.stabilize()
    n1.propose_config_change(remove="n3")


def test_a_removed_leader_steps_down_once_the_change_commits() -> None:
    """Thesis 4.2.2: the leader manages the cluster without counting itself until C_new
    commits, then steps down; the remaining voters elect a leader among themselves."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    index = n1.propose_config_change(remove="n1")
    assert n1.role is Role.LEADER
    cluster.stabilize()
    assert n1.commit_index >= index
    assert (n1.role, n1.voters) == (Role.FOLLOWER, {"n2", "n3"})
    for _ in range(5 * ELECTION_TICKS):
        cluster.tick("n1")  # a non-voter never campaigns
    assert n1.role is Role.FOLLOWER
    cluster.expire_lease("n3")
    n2 = cluster.elect("n2")
    n2.propose(b"without n1")
    cluster.cut.add("n1")
    cluster.stabilize()
    assert n2.commit_index == n2.last_index


def test_a_truncated_config_entry_falls_back_to_the_previous_configuration() -> None:
    """Thesis 4.1: a server uses the latest configuration in its log, committed or not; if a
    new leader overwrites that entry, the one before it applies again."""
    cluster = Cluster()
    disk = Disk(
        HardState(term=1, commit=1),
        [normal(1, 1), Entry(1, 2, EntryKind.CONFIG, encode_config(["n1", "n2", "n3", "n4"]))],
    )
    node = cluster.new_core("n2", THREE, disk)
    assert node.voters == {"n1", "n2", "n3", "n4"}  # restart reads the config from the log
    node.step(AppendRequest(2, "n3", "n2", 1, 1, (normal(2, 2),), commit=1, context=0))
    assert node.voters == set(THREE)


# --- leadership transfer (thesis 3.10) -----------------------------------------------------------


def test_leadership_transfer_catches_the_target_up_then_sends_timeout_now() -> None:
    cluster = Cluster()
    n1 = cluster.elect("n1")
    cluster.cut.add("n3")
    n1.propose(b"x")
    cluster.stabilize()
    cluster.cut.clear()
    n1.transfer_leadership("n3")
    with pytest.raises(ProposalDroppedError, match="n3"):
        n1.propose(b"refused during the transfer")
    assert cluster.take(TimeoutNow) == []  # n3 lacks an entry
    cluster.deliver()  # the catch-up append
    cluster.deliver()  # n3's answer: now it is up to date
    assert cluster.take(TimeoutNow) == [TimeoutNow(1, "n1", "n3")]
    cluster.deliver()  # n3 campaigns at once, without pre-vote, past stickiness
    assert cluster.take(VoteRequest)[0] == VoteRequest(2, "n3", "n1", 2, 1, False, True)
    cluster.stabilize()
    n3 = cluster.nodes["n3"]
    assert (n3.role, n3.term) == (Role.LEADER, 2)
    assert n1.role is Role.FOLLOWER


def test_leadership_transfer_gives_up_after_an_election_timeout() -> None:
    cluster = Cluster()
    n1 = cluster.elect("n1")
    cluster.cut.add("n3")
    n1.propose(b"x")
    cluster.stabilize()
    n1.transfer_leadership("n3")  # n3 is unreachable
    for _ in range(ELECTION_TICKS):
        cluster.tick("n1")
        cluster.stabilize()
    assert n1.role is Role.LEADER
    n1.propose(b"accepted again")


# --- ReadIndex (thesis 6.4) ----------------------------------------------------------------------


def test_read_index_waits_for_a_heartbeat_round_from_a_majority() -> None:
    cluster = Cluster()
    n1 = cluster.elect("n1")
    n1.propose(b"x")
    cluster.stabilize()
    n1.read_index(42)
    heartbeats = cluster.take(AppendRequest)
    assert [(m.target, m.entries, m.context) for m in heartbeats] == [
        ("n2", (), heartbeats[0].context),
        ("n3", (), heartbeats[0].context),
    ]
    assert heartbeats[0].context > 0
    assert cluster.read_states["n1"] == []  # leadership not confirmed yet
    cluster.cut.add("n3")
    cluster.deliver()  # the heartbeats (only n2's arrives)
    assert cluster.read_states["n1"] == []
    cluster.deliver()  # n2's acknowledgement: with n1 itself, a majority
    assert cluster.read_states["n1"] == [ReadState(42, 2)]


def test_reads_that_arrive_during_a_round_share_the_next_one() -> None:
    """etcd's read loop batching: one heartbeat round in flight; reads that arrive meanwhile
    wait for it and then go together in the next, instead of a round each."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    n1.read_index(1)
    first_round = cluster.take(AppendRequest)
    assert len(first_round) == 2
    n1.read_index(2)
    n1.read_index(3)
    assert len(cluster.take(AppendRequest)) == 2  # no new round while one is in flight
    cluster.deliver()  # the first round's heartbeats
    cluster.deliver(lambda message: isinstance(message, AppendResponse))  # and answers
    assert cluster.read_states["n1"] == [ReadState(1, 1)]
    second_round = cluster.take(AppendRequest)
    assert len(second_round) == 2
    assert second_round[0].context > first_round[0].context
    cluster.stabilize()
    assert cluster.read_states["n1"] == [ReadState(1, 1), ReadState(2, 1), ReadState(3, 1)]


def test_read_index_waits_for_the_first_commit_of_the_term() -> None:
    """Thesis 6.4 step 1: until its NOOP commits, a new leader's commit index may be behind."""
    cluster = Cluster()
    cluster.tick_until_campaign("n1")
    for _ in range(4):
        cluster.deliver()
    n1 = cluster.nodes["n1"]
    assert (n1.role, n1.commit_index) == (Role.LEADER, 0)
    n1.read_index(7)
    cluster.stabilize()
    assert cluster.read_states["n1"] == [ReadState(7, 1)]


def test_a_deposed_leader_cannot_confirm_a_read() -> None:
    cluster = Cluster(check_quorum=False)
    n1 = cluster.elect("n1")
    cluster.cut.add("n1")
    cluster.expire_lease("n3")
    cluster.elect("n2")
    n1.read_index(9)
    cluster.cut.clear()
    cluster.stabilize()
    assert cluster.read_states["n1"] == []
    assert n1.role is Role.FOLLOWER


# --- restart -------------------------------------------------------------------------------------


def test_restart_from_persisted_state() -> None:
    """Figure 2: currentTerm, votedFor and the log are persistent; the commit index is kept too,
    so committed entries are applied again from the last snapshot (here, none)."""
    cluster = Cluster()
    n1 = cluster.elect("n1")
    n1.propose(b"a")
    n1.propose(b"b")
    cluster.stabilize()
    cluster.heartbeat("n1")
    n2 = cluster.restart("n2")
    assert (n2.term, n2.role, n2.leader) == (1, Role.FOLLOWER, None)
    assert (n2.commit_index, n2.applied_index, n2.last_index) == (3, 0, 3)
    cluster.flush()
    assert [entry.data for entry in cluster.applied["n2"]] == [b"", b"a", b"b"]
    assert cluster.disks["n2"].hard_state == HardState(1, "n1", 3)


def test_restart_refuses_a_log_with_a_gap() -> None:
    config = Config("n1")
    with pytest.raises(ValueError, match="contiguous"):
        RaftCore(
            config,
            THREE,
            random.Random(1),
            hard_state=HardState(term=1),
            entries=[normal(1, 1), normal(1, 3)],
        )
