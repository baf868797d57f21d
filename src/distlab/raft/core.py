"""Raft consensus as a pure state machine (sans-I/O), in the manner of etcd-io/raft.

What it implements
------------------
Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm", USENIX ATC 2014
("Raft 2014"), and Ongaro's thesis, "Consensus: Bridging Theory and Practice", Stanford 2014
("thesis"):

* **Leader election** (Raft 2014, 5.2) with randomized election timeouts drawn from the injected
  ``random.Random``, the vote restriction (5.4.1: ``candidate_log_is_up_to_date``) and one vote
  per term, persisted before the vote is sent (``HardState.voted_for``).
* **Pre-vote** (thesis 9.6): a node whose timeout fires first asks "would you vote for me at
  term + 1?" without changing any term. Only if a majority would does it start a real election,
  so a node that was cut off (and kept timing out) cannot force the cluster into a new term when
  it comes back.
* **Leader stickiness** (thesis 4.2.3): a node that has heard from a leader within the election
  timeout refuses pre-votes and votes, except from the target of a leadership transfer.
* **Check quorum** (thesis 6.2): a leader that has not heard from a majority during an election
  timeout steps down, so a leader cut off in a minority stops claiming leadership.
* **Log replication** (5.3): the consistency check on ``prev_index``/``prev_term``, truncation of
  a conflicting suffix, fast backtracking with the follower's ``conflict_index`` hint (5.3, the
  paragraph after Figure 7), and pipelining: up to ``max_inflight_appends`` appends of up to
  ``max_entries_per_append`` entries each in flight per follower.
* **Commitment** (5.4.2): a leader commits an entry by counting replicas only if it is of its own
  term (``quorum_commit_index`` + ``may_commit_by_counting_replicas``); older entries are
  committed indirectly. A new leader appends a NOOP entry (Raft 2014, section 8; thesis 6.4) so
  that it commits something of its term promptly.
* **Log compaction** (thesis 5, Raft 2014 section 7): the application hands over its snapshot
  (``compact``); a follower whose next entry was compacted away receives the snapshot instead.
* **Single-server membership change** (thesis 4.1): one voter added or removed at a time; a
  server uses the latest configuration in its log, committed or not; a new change waits until the
  previous one is committed *and* the leader has committed an entry of its own term (the fix to
  single-server changes Ongaro posted to raft-dev in July 2015, "bug in single-server membership
  changes"); a leader that removed itself steps down once the change is committed (thesis 4.2.2).
* **Leadership transfer** (thesis 3.10): the leader stops taking proposals, brings the target up
  to date, sends it ``TimeoutNow``, and gives up after an election timeout.
* **ReadIndex** (thesis 6.4): a read is served at the commit index the leader recorded, once a
  heartbeat round sent after the request was acknowledged by a majority.

How to drive it: the Ready recipe
---------------------------------
Every input (``tick``, ``step``, ``propose``...) only changes memory. The effects come out of
``ready()``, and the caller must carry them out **in this order**, because the order is what
makes Raft safe:

1. Persist ``ready.hard_state`` (if not None), ``ready.snapshot`` (if not None: discard every
   stored entry and keep the snapshot) and ``ready.entries`` (first truncate the stored log from
   ``entries[0].index``: they may replace a conflicting suffix), durably (fsync) when
   ``ready.must_sync``; a Ready that changes only the commit index needs no fsync.
2. Send ``ready.messages``. A vote or an acknowledgement promises what step 1 wrote. When
   ``ready.send_before_persist`` (a leader's Ready), step 2 may come first, or run alongside
   step 1: the leader counts its own log toward commitment only once ``advance`` reports it
   written, so its followers' writes overlap its own (thesis 10.2.1).
3. Install ``ready.snapshot`` in the state machine if there is one, then apply
   ``ready.committed`` in order, and answer the reads in ``ready.read_states`` once the applied
   index reaches theirs.
4. Call ``advance(ready)``, then look at ``has_ready()`` again.

If the process stops anywhere in the recipe, a restart from what step 1 persisted is correct
(``RaftCore(config, voters, rng, hard_state=..., entries=..., snapshot=...)``): nothing another
node heard of depends on what was not persisted.

**Asynchronous storage writes** (etcd's ``AsyncStorageWrites``). A leader need not wait for its
own disk at all. For a Ready with ``send_before_persist``, the caller may hand step 1 to a
storage writer, do steps 2 and 3, and call ``accept(ready)`` instead of ``advance``; the core then
produces the next Ready while the write is still on its way. When the writer reports the entries
durable, the caller calls ``persisted(index, term)`` with the last entry's index and term, and
only then does the leader's own log count toward commitment. The writer must write in the order
it was handed the writes (a FIFO: each write may truncate what an earlier one wrote), and a Ready
without ``send_before_persist`` must wait until every write handed before it is durable, since its
messages promise the disk. The core keeps two marks on its log for this: what it has handed out
(``_unstable_from``) and what is known durable (``_stable_to``).

Theory of operation
-------------------
* Time is an abstract tick. A follower that hears nothing from a leader for its randomized
  election timeout, drawn from [election_ticks, 2 * election_ticks), campaigns; a leader sends a
  heartbeat (an ``AppendRequest`` with no entries and a non-zero ``context``) every
  ``heartbeat_ticks``.
* Messages of a newer term make a node a follower of that term (5.1), except pre-vote traffic,
  which never changes a term, and vote requests refused by leader stickiness. Messages of an
  older term are dropped, but an old leader's append and an old candidate's vote request are
  answered at the newer term so that their sender learns it.
* The leader tracks each follower's ``match`` and ``next`` in a small state machine
  (``PROGRESS_TRANSITIONS``, after etcd's ``tracker.Progress``): PROBE sends one append at a
  time until the follower's log is found to match; REPLICATE pipelines; SNAPSHOT waits for a
  snapshot to be installed. An append or snapshot that got no answer for an election timeout is
  taken as lost and the follower is probed again from its match.
* Heartbeats are appends at the follower's known ``match`` (which is sure to pass the consistency
  check), so they also tell the follower how far it may commit. Each heartbeat round has a number
  (``context``), which ReadIndex uses to know which rounds were sent after a read began.
* Configuration entries take effect as soon as they are in a log (thesis 4.1); if a conflicting
  suffix removes one, the server falls back to the previous configuration in its log.

What it leaves out
------------------
* No learners (non-voting members) and no joint consensus (Raft 2014, section 6): membership
  changes one voter at a time only. A new server joins with no voters of its own and waits to be
  contacted by the leader.
* Leases are off: there are no lease-based reads (thesis 6.4.1), which would trust clocks; every
  read costs a heartbeat round.
* No flow control by bytes (etcd's MaxSizePerMsg), no snapshotting in chunks: a snapshot
  travels as one message. Only a leader's writes may be asynchronous; a follower's answers wait
  for its disk (etcd also lets them go out from the storage writer once it has written).
* Proposals are not forwarded from followers: they raise ``NotLeaderError`` naming the leader.
* Pending reads are dropped when the leader steps down; the caller times them out.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

# Defaults of Config. etcd's recommended ratio: an election timeout of ten heartbeats, so a few lost
# heartbeats do not cause an election; with a 100 ms tick that is a 1-2 s election timeout.
ELECTION_TICKS_DEFAULT = 10
HEARTBEAT_TICKS_DEFAULT = 1
# One append carries at most this many entries, so one message stays small and a lagging follower
# catches up in steps (etcd bounds the same thing in bytes, MaxSizePerMsg).
ENTRIES_PER_APPEND_MAX_DEFAULT = 256
# Appends in flight to one follower in REPLICATE (etcd's MaxInflightMsgs default is 256; 64 x 256
# entries is already far more than a follower on a 2-core machine can take in one round trip).
INFLIGHT_APPENDS_MAX_DEFAULT = 64
# Bounds on the bounds, so a typo in a flag cannot configure an hour-long election.
TICKS_CEILING = 1_000_000
ENTRIES_PER_APPEND_CEILING = 1_000_000
INFLIGHT_APPENDS_CEILING = 100_000

# A leader refuses proposals once this many entries are uncommitted: a leader cut off from its
# followers would otherwise grow its log without bound (etcd's MaxUncommittedEntriesSize).
UNCOMMITTED_ENTRIES_MAX = 8192
# ReadIndex requests waiting for their heartbeat round; past it read_index sheds load.
READ_REQUESTS_PENDING_MAX = 1024
# Entries handed to the application in one Ready, so one Ready stays a bounded amount of work.
COMMITTED_ENTRIES_PER_READY_MAX = 1024


# --- Roles and their transitions ---------------------------------------------------------------


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# Every legal role change (Raft 2014, Figure 4, plus the pre-candidate of thesis 9.6). A
# follower may become a candidate directly when pre-vote is off or on TimeoutNow; a candidate
# whose election timed out campaigns again, with a pre-vote first when that is on.
ROLE_TRANSITIONS: dict[Role, frozenset[Role]] = {
    Role.FOLLOWER: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE}),
    Role.PRE_CANDIDATE: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE}),
    Role.CANDIDATE: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER}),
    Role.LEADER: frozenset({Role.FOLLOWER}),
}


class ReplicationState(StrEnum):
    """How the leader replicates to one follower (etcd's tracker.StateType)."""

    PROBE = "probe"  # one append at a time, until the follower's log is found to match
    REPLICATE = "replicate"  # appends pipelined, up to max_inflight_appends
    SNAPSHOT = "snapshot"  # a snapshot was sent; wait for it to be installed


PROGRESS_TRANSITIONS: dict[ReplicationState, frozenset[ReplicationState]] = {
    ReplicationState.PROBE: frozenset(
        {ReplicationState.PROBE, ReplicationState.REPLICATE, ReplicationState.SNAPSHOT}
    ),
    ReplicationState.REPLICATE: frozenset(
        {ReplicationState.PROBE, ReplicationState.REPLICATE, ReplicationState.SNAPSHOT}
    ),
    ReplicationState.SNAPSHOT: frozenset(
        {ReplicationState.PROBE, ReplicationState.REPLICATE, ReplicationState.SNAPSHOT}
    ),
}


# --- Log entries, persistent state, snapshots ----------------------------------------------------


class EntryKind(StrEnum):
    NORMAL = "normal"  # an application command
    CONFIG = "config"  # a new voter set (thesis 4.1), data = encode_config(voters)
    NOOP = "noop"  # appended by a new leader so it commits an entry of its term (Raft 2014, 8)


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind
    data: bytes


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it is sent (Figure 2)."""

    term: int = 0
    voted_for: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The application's state up to ``index``, and the voters as of that index (thesis 5.1)."""

    index: int
    term: int
    voters: frozenset[str]
    data: bytes


def encode_config(voters: Iterable[str]) -> bytes:
    """A CONFIG entry's data: the voter ids, sorted, comma-separated, UTF-8."""
    return ",".join(sorted(voters)).encode()


def decode_config(data: bytes) -> frozenset[str]:
    text = data.decode()
    return frozenset(text.split(",")) if text else frozenset()


# --- Messages (Raft 2014, Figure 2; thesis 3.10, 9.6) -------------------------------------------


@dataclass(frozen=True, slots=True)
class VoteRequest:
    term: int  # for a pre-vote: the term the sender would campaign in (its term + 1)
    source: str
    target: str
    last_index: int
    last_term: int
    pre_vote: bool
    transfer: bool  # sent after TimeoutNow: voters set leader stickiness aside


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int  # a granted pre-vote echoes the request's term; otherwise the voter's term
    source: str
    target: str
    granted: bool
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class AppendRequest:
    term: int
    source: str
    target: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    context: int  # heartbeat round number, echoed back (ReadIndex); 0 = a plain append


@dataclass(frozen=True, slots=True)
class AppendResponse:
    term: int
    source: str
    target: str
    success: bool
    # On success, the index up to which the follower's log now matches the leader's. On
    # rejection, the prev_index that was rejected (etcd's MsgAppResp.Index), which lets the leader
    # recognise a rejection of an append it has already moved past.
    match_index: int
    conflict_index: int  # on rejection: where the leader should try next (fast backtracking)
    context: int


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    term: int
    source: str
    target: str
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    term: int
    source: str
    target: str
    match_index: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    term: int
    source: str
    target: str


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | SnapshotRequest
    | SnapshotResponse
    | TimeoutNow
)


# --- Outputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed ReadIndex: once the applied index reaches ``index``, the read may be served."""

    request_id: int
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the caller must do, in the order of the recipe in the module docstring."""

    hard_state: HardState | None  # persist before sending messages (None: unchanged)
    entries: tuple[Entry, ...]  # persist; truncate the stored log from entries[0].index first
    snapshot: Snapshot | None  # received from the leader: persist and install
    messages: tuple[Message, ...]  # send after persisting
    committed: tuple[Entry, ...]  # apply in order, after persisting
    read_states: tuple[ReadState, ...]
    role: Role
    leader: str | None
    term: int
    # Whether step 1 needs an fsync: only if it writes entries or a snapshot, or changes the term
    # or the vote. A commit index alone may be lost in a crash: the leader tells it again, and no
    # promise rests on it (etcd's MustSync).
    must_sync: bool
    # Whether step 2 may come before step 1: a leader's appends and heartbeats promise nothing
    # about its own disk, because it counts its log toward commitment only once ``advance`` or
    # ``persisted`` reports it durable (thesis 10.2.1). Its followers then write while it writes,
    # and step 1 may be left to a storage writer (``accept``).
    send_before_persist: bool

    def empty(self) -> bool:
        """True when there is nothing to persist, send, apply or answer."""
        return (
            self.hard_state is None
            and not self.entries
            and self.snapshot is None
            and not self.messages
            and not self.committed
            and not self.read_states
        )


# --- Configuration and errors --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    node_id: str
    election_ticks: int = ELECTION_TICKS_DEFAULT  # randomized in [n, 2n) per election
    heartbeat_ticks: int = HEARTBEAT_TICKS_DEFAULT
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_append: int = ENTRIES_PER_APPEND_MAX_DEFAULT
    max_inflight_appends: int = INFLIGHT_APPENDS_MAX_DEFAULT

    def __post_init__(self) -> None:
        _check_node_id(self.node_id)
        _check_range("election_ticks", self.election_ticks, 2, TICKS_CEILING)
        # A leader must be heard from several times per election timeout, or followers campaign
        # while it is healthy (etcd refuses ElectionTick <= HeartbeatTick for the same reason).
        _check_range("heartbeat_ticks", self.heartbeat_ticks, 1, self.election_ticks - 1)
        _check_range(
            "max_entries_per_append", self.max_entries_per_append, 1, ENTRIES_PER_APPEND_CEILING
        )
        _check_range("max_inflight_appends", self.max_inflight_appends, 1, INFLIGHT_APPENDS_CEILING)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_node_id(node_id: str) -> None:
    # Commas separate ids in a CONFIG entry's data.
    if not node_id or "," in node_id:
        raise ValueError(f"a node id must be non-empty and contain no comma, got {node_id!r}")


class NotLeaderError(Exception):
    """Definite: nothing was appended. ``leader`` is the leader this node knows of, if any."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader; the leader is {leader or 'unknown'}")
        self.leader = leader


class ProposalDroppedError(Exception):
    """Definite: the leader refused it (a transfer or a configuration change is under way, or a
    limit was reached); nothing was appended."""


# --- The rules, as small functions (a test monkeypatches them to inject bugs) --------------------


def candidate_log_is_up_to_date(
    last_term: int, last_index: int, my_last_term: int, my_last_index: int
) -> bool:
    """Raft 2014, 5.4.1: "If the logs have last entries with different terms, then the log with
    the later term is more up-to-date. If the logs end with the same term, then whichever log is
    longer is more up-to-date." A voter grants only to a candidate at least as up to date."""
    if last_term != my_last_term:
        return last_term > my_last_term
    return last_index >= my_last_index


def may_commit_by_counting_replicas(entry_term: int, leader_term: int) -> bool:
    """Raft 2014, 5.4.2: "Raft never commits log entries from previous terms by counting
    replicas. Only log entries from the leader's current term are committed by counting
    replicas" (Figure 8 shows what goes wrong otherwise)."""
    return entry_term == leader_term


def quorum_commit_index(match_indexes: Mapping[str, int], voters: Iterable[str]) -> int:
    """The largest index that a majority of ``voters`` have (a voter missing from
    ``match_indexes`` has nothing): sort their match indexes in descending order and take the
    one at position n // 2, the smallest among the best majority. 0 for no voters."""
    matches = sorted((match_indexes.get(voter, 0) for voter in voters), reverse=True)
    if not matches:
        return 0
    return matches[len(matches) // 2]


# --- Leader's view of one follower ---------------------------------------------------------------


@dataclass(slots=True)
class _Progress:
    match: int
    next: int
    state: ReplicationState = ReplicationState.PROBE
    probe_sent: bool = False  # PROBE: an append is out and unanswered
    inflight: deque[int] = field(default_factory=deque)  # REPLICATE: last index of each append
    pending_snapshot: int = 0  # SNAPSHOT: the index of the snapshot sent
    recent_active: bool = False  # heard from during this election timeout (check quorum)
    stalled_ticks: int = 0  # ticks spent waiting for an answer without progress
    acked_round: int = 0  # highest heartbeat round acknowledged (ReadIndex)

    def transition(self, state: ReplicationState) -> None:
        assert state in PROGRESS_TRANSITIONS[self.state], (self.state, state)
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.stalled_ticks = 0

    def waiting(self) -> bool:
        if self.state is ReplicationState.PROBE:
            return self.probe_sent
        if self.state is ReplicationState.REPLICATE:
            return bool(self.inflight)
        return True


@dataclass(slots=True)
class _ReadRequest:
    request_id: int
    index: int | None  # the commit index recorded; None until an entry of the term is committed
    round: int  # the heartbeat round that must be acknowledged by a majority


# --- The state machine ---------------------------------------------------------------------------


class RaftCore:
    """One Raft server, without I/O. See the module docstring for the Ready recipe."""

    def __init__(
        self,
        config: Config,
        voters: Iterable[str],
        rng: random.Random,
        *,
        hard_state: HardState = HardState(),  # frozen, so one shared default is safe
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        self._config = config
        self._node_id = config.node_id
        self._rng = rng
        initial_voters = frozenset(voters)
        for voter in initial_voters:
            _check_node_id(voter)

        # The log: entries after the snapshot; ``_offset`` is the last index the snapshot covers.
        self._snapshot = snapshot
        self._offset = snapshot.index if snapshot else 0
        self._offset_term = snapshot.term if snapshot else 0
        self._base_voters = snapshot.voters if snapshot else initial_voters
        self._log: list[Entry] = [entry for entry in entries if entry.index > self._offset]
        self._check_restored_log(hard_state)

        self._term = hard_state.term
        self._voted_for = hard_state.voted_for
        self._commit = max(hard_state.commit, self._offset)
        if self._commit > self.last_index:
            raise ValueError(f"commit {self._commit} is past the last entry {self.last_index}")
        self._applied = self._offset
        self._role = Role.FOLLOWER
        self._leader: str | None = None
        self._voters = self._base_voters
        self._config_index = 0
        self._reload_voters()

        # What the caller has been handed (Ready, then accept or advance) and what it confirmed
        # durable (advance, persisted). The hard state needs no second mark: a Ready that
        # changes the term or vote is never accepted before its write is durable.
        self._persisted_hard_state = hard_state
        self._unstable_from = self.last_index + 1  # the first entry not yet handed to storage
        self._stable_to = self.last_index  # the last entry known durable, on this log
        self._pending_snapshot: Snapshot | None = None
        self._outbox: list[Message] = []
        self._read_states: list[ReadState] = []

        self._reported_soft_state: tuple[Role, str | None, int] = (Role.FOLLOWER, None, 0)
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_ticks = self._config.election_ticks
        self._reset_election_timer()
        self._votes: dict[str, bool] = {}

        # Leader state.
        self._progress: dict[str, _Progress] = {}
        self._lead_transferee: str | None = None
        self._heartbeat_round = 0
        self._reads: deque[_ReadRequest] = deque()
        # Sends owed by proposals and reads since the last Ready, made when the Ready is taken
        # (``_send_owed``), so that everything proposed together shares one append per follower
        # and every read one heartbeat round.
        self._appends_owed = False
        self._read_round_owed = False

    def _check_restored_log(self, hard_state: HardState) -> None:
        expected_index = self._offset + 1
        previous_term = self._offset_term
        for entry in self._log:
            if entry.index != expected_index:
                raise ValueError(f"entries must be contiguous from {expected_index}: {entry}")
            if entry.term < previous_term or entry.term > hard_state.term:
                raise ValueError(f"entry term out of order or past the hard state: {entry}")
            expected_index += 1
            previous_term = entry.term

    # --- read-only views ---

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def voters(self) -> frozenset[str]:
        return self._voters

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def last_index(self) -> int:
        return self._offset + len(self._log)

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def log_entries(self, low: int, high: int) -> tuple[Entry, ...]:
        """The entries with low <= index < high; ValueError if some were compacted away."""
        if not self._offset < low <= high <= self.last_index + 1:
            raise ValueError(
                f"entries [{low}, {high}) are not in the log ({self._offset}, {self.last_index}]"
            )
        return tuple(self._log[low - self._offset - 1 : high - self._offset - 1])

    # --- inputs ---

    def tick(self) -> None:
        if self._role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, message: Message) -> None:
        if message.target != self._node_id:
            raise ValueError(f"message for {message.target!r} stepped into {self._node_id!r}")
        if message.term > self._term:
            if not self._accept_newer_term(message):
                return
        elif message.term < self._term:
            self._answer_older_term(message)
            return
        self._dispatch(message)

    def propose(self, data: bytes) -> int:
        """Append a command; returns its index. It is committed when it comes out in
        ``Ready.committed`` (or never, if this leader is deposed first)."""
        self._check_can_propose()
        return self._append_as_leader(EntryKind.NORMAL, data)

    def propose_config_change(self, add: str | None = None, remove: str | None = None) -> int:
        """Add or remove one voter (thesis 4.1). The new configuration takes effect here at once
        and on each follower as soon as the entry is in its log."""
        if (add is None) == (remove is None):
            raise ValueError("give exactly one of add and remove")
        self._check_can_propose()
        if add is not None:
            _check_node_id(add)
            if add in self._voters:
                raise ValueError(f"{add!r} is already a voter")
            voters = self._voters | {add}
        else:
            assert remove is not None
            if remove not in self._voters:
                raise ValueError(f"{remove!r} is not a voter")
            if self._voters == {remove}:
                raise ValueError("cannot remove the last voter")
            voters = self._voters - {remove}
        if self._config_index > self._commit:
            raise ProposalDroppedError("a configuration change is still uncommitted")
        if not self._committed_in_term():
            # raft-dev, July 2015: a leader that changed the configuration before committing an
            # entry of its term could make a change that overlaps an uncommitted one of a
            # previous leader, and two disjoint majorities could decide.
            raise ProposalDroppedError("no entry of this leader's term is committed yet")
        return self._append_as_leader(EntryKind.CONFIG, encode_config(voters))

    def transfer_leadership(self, target: str) -> None:
        """Thesis 3.10: stop taking proposals, bring ``target`` up to date, send it TimeoutNow."""
        self._check_leader()
        if target not in self._voters:
            raise ValueError(f"{target!r} is not a voter")
        if target == self._node_id or target == self._lead_transferee:
            return
        self._lead_transferee = target
        # The transfer gives up after one election timeout, counted from now.
        self._election_elapsed = 0
        progress = self._progress[target]
        if progress.match == self.last_index:
            self._send(TimeoutNow(self._term, self._node_id, target))
            return
        # Send what the target lacks now rather than wait for appends that may have been lost:
        # the retransmission timeout is as long as the whole transfer may take.
        progress.transition(ReplicationState.PROBE)
        progress.next = progress.match + 1
        self._send_append(target)

    def read_index(self, request_id: int) -> None:
        """Thesis 6.4: come out as ``ReadState(request_id, index)`` once safe to read at index."""
        self._check_leader()
        if len(self._reads) >= READ_REQUESTS_PENDING_MAX:
            raise ProposalDroppedError("too many reads waiting for a heartbeat round")
        self._reads.append(_ReadRequest(request_id, index=None, round=0))
        self._read_round_owed = True

    def compact(self, index: int, data: bytes) -> None:
        """The application's snapshot of its state up to ``index`` (<= applied): drop the log up
        to it and keep the snapshot for followers that fall behind it (thesis 5.1). A no-op if
        the log is already compacted that far."""
        if index > self._applied:
            raise ValueError(f"cannot compact to {index}: only {self._applied} is applied")
        if index <= self._offset:
            return
        term = self._term_at(index)
        assert term is not None
        snapshot = Snapshot(index, term, self._voters_at(index), data)
        del self._log[: index - self._offset]
        self._snapshot = snapshot
        self._offset = index
        self._offset_term = term
        self._base_voters = snapshot.voters

    # --- outputs ---

    def has_ready(self) -> bool:
        return (
            self._appends_owed
            or self._read_round_owed
            or self._hard_state() != self._persisted_hard_state
            or self._unstable_from <= self.last_index
            or self._pending_snapshot is not None
            or bool(self._outbox)
            or bool(self._read_states)
            or self._first_to_apply() <= self._commit
            or self._soft_state() != self._reported_soft_state
        )

    def ready(self) -> Ready:
        self._send_owed()
        hard_state = self._hard_state()
        assert self._unstable_from > self._offset
        first_to_apply = self._first_to_apply()
        last_to_apply = min(self._commit, first_to_apply + COMMITTED_ENTRIES_PER_READY_MAX - 1)
        entries = tuple(self._log[self._unstable_from - self._offset - 1 :])
        snapshot = self._pending_snapshot
        persisted = self._persisted_hard_state
        same_vote = (hard_state.term, hard_state.voted_for) == (persisted.term, persisted.voted_for)
        return Ready(
            hard_state=None if hard_state == self._persisted_hard_state else hard_state,
            entries=entries,
            snapshot=snapshot,
            messages=tuple(self._outbox),
            committed=tuple(
                self._log[first_to_apply - self._offset - 1 : last_to_apply - self._offset]
            ),
            read_states=tuple(self._read_states),
            role=self._role,
            leader=self._leader,
            term=self._term,
            must_sync=bool(entries) or snapshot is not None or not same_vote,
            send_before_persist=self._role is Role.LEADER and snapshot is None and same_vote,
        )

    def advance(self, ready: Ready) -> None:
        """The caller did everything ``ready`` asked, its write durable. Inputs stepped in
        between are kept."""
        self._accept(ready)
        if ready.entries:
            last = ready.entries[-1]
            self.persisted(last.index, last.term)

    def accept(self, ready: Ready) -> None:
        """The caller did everything ``ready`` asked except that its write may still be on its
        way to disk: it will call ``persisted`` when it is durable. Only a Ready whose messages
        promise nothing about this node's disk may be accepted (``send_before_persist``)."""
        if not ready.send_before_persist:
            raise ValueError("only a Ready with send_before_persist may be accepted unpersisted")
        self._accept(ready)

    def persisted(self, index: int, term: int) -> None:
        """The storage writer made durable every write handed to it up to the one ending in
        the entry at ``index`` of ``term``. Stale reports are ignored: if the log no longer
        holds that entry, a truncation replaced it. If it does, Log Matching (Raft 2014, 5.3)
        says the whole prefix up to it is the one written, so that prefix is durable."""
        if index <= self._stable_to or index >= self._unstable_from:
            return
        if self._term_at(index) != term:
            return
        self._stable_to = index
        if self._role is Role.LEADER:
            self._maybe_commit()  # its own log now counts (thesis 10.2.1)

    def _accept(self, ready: Ready) -> None:
        if ready.hard_state is not None:
            self._persisted_hard_state = ready.hard_state
        if ready.snapshot is not None:
            if ready.snapshot is self._pending_snapshot:
                self._pending_snapshot = None
            self._applied = max(self._applied, ready.snapshot.index)
        if ready.entries:
            self._mark_handed(ready.entries)
        if ready.committed:
            self._applied = max(self._applied, ready.committed[-1].index)
        assert self._applied <= self._commit
        assert len(self._outbox) >= len(ready.messages)
        del self._outbox[: len(ready.messages)]
        del self._read_states[: len(ready.read_states)]
        self._reported_soft_state = (ready.role, ready.leader, ready.term)

    def _mark_handed(self, handed: tuple[Entry, ...]) -> None:
        # If a conflicting suffix replaced some of them after ready(), only the ones still in
        # the log were handed out; if the truncation went below them, none were.
        if self._unstable_from != handed[0].index:
            return
        handed_to = handed[0].index - 1
        for entry in handed:
            if self._entry_at(entry.index) is not entry:
                break
            handed_to = entry.index
        self._unstable_from = handed_to + 1

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._voted_for, self._commit)

    def _soft_state(self) -> tuple[Role, str | None, int]:
        return (self._role, self._leader, self._term)

    def _first_to_apply(self) -> int:
        applied = self._applied
        if self._pending_snapshot is not None:
            applied = max(applied, self._pending_snapshot.index)
        return applied + 1

    # --- the log ---

    def _term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if compacted away or past the end."""
        if index == self._offset:
            return self._offset_term
        if self._offset < index <= self.last_index:
            return self._log[index - self._offset - 1].term
        return None

    def _entry_at(self, index: int) -> Entry | None:
        if self._offset < index <= self.last_index:
            return self._log[index - self._offset - 1]
        return None

    def _last_term(self) -> int:
        term = self._term_at(self.last_index)
        assert term is not None
        return term

    def _append(self, entries: Sequence[Entry]) -> None:
        """Append after the last entry (the caller truncated any conflict first)."""
        if not entries:
            return
        assert entries[0].index == self.last_index + 1, (entries[0], self.last_index)
        self._log.extend(entries)
        for entry in reversed(entries):
            if entry.kind is EntryKind.CONFIG:
                self._set_voters(decode_config(entry.data), entry.index)
                break

    def _truncate_from(self, index: int) -> None:
        # Log Matching and Leader Completeness promise a committed entry is never replaced.
        assert index > self._commit, f"{self._node_id} would truncate committed entry {index}"
        del self._log[index - self._offset - 1 :]
        self._unstable_from = min(self._unstable_from, index)
        self._stable_to = min(self._stable_to, index - 1)
        if index <= self._config_index:
            self._reload_voters()  # thesis 4.1: fall back to the configuration before it

    def _reload_voters(self) -> None:
        for entry in reversed(self._log):
            if entry.kind is EntryKind.CONFIG:
                self._set_voters(decode_config(entry.data), entry.index)
                return
        self._set_voters(self._base_voters, self._offset)

    def _voters_at(self, index: int) -> frozenset[str]:
        for position in range(index - self._offset - 1, -1, -1):
            entry = self._log[position]
            if entry.kind is EntryKind.CONFIG:
                return decode_config(entry.data)
        return self._base_voters

    def _set_voters(self, voters: frozenset[str], config_index: int) -> None:
        self._config_index = config_index
        if voters == self._voters:
            return
        self._voters = voters
        if self._role is Role.LEADER:
            self._reconcile_progress()

    def _reconcile_progress(self) -> None:
        for peer in sorted(self._voters - {self._node_id} - self._progress.keys()):
            self._progress[peer] = _Progress(match=0, next=self.last_index + 1)
        for peer in sorted(self._progress.keys() - self._voters):
            del self._progress[peer]
        if self._lead_transferee is not None and self._lead_transferee not in self._voters:
            self._lead_transferee = None

    # --- roles ---

    def _promotable(self) -> bool:
        """Only a voter campaigns (a removed server or one not yet added waits)."""
        return self._node_id in self._voters

    def _set_role(self, role: Role) -> None:
        assert role in ROLE_TRANSITIONS[self._role], (self._role, role)
        self._role = role

    def _reset_election_timer(self) -> None:
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        # Raft 2014, 5.2: randomized timeouts make split votes rare.
        election_ticks = self._config.election_ticks
        self._randomized_election_ticks = self._rng.randrange(election_ticks, 2 * election_ticks)

    def _become_follower(self, term: int, leader: str | None) -> None:
        assert term >= self._term
        if term > self._term:
            self._term = term
            self._voted_for = None
        self._set_role(Role.FOLLOWER)
        self._leader = leader
        self._reset_election_timer()
        self._clear_leader_state()

    def _clear_leader_state(self) -> None:
        self._votes = {}
        self._progress = {}
        self._lead_transferee = None
        self._reads.clear()

    def _become_pre_candidate(self) -> None:
        # Thesis 9.6: neither the term nor the vote changes.
        self._set_role(Role.PRE_CANDIDATE)
        self._leader = None
        self._reset_election_timer()
        self._clear_leader_state()

    def _become_candidate(self) -> None:
        self._set_role(Role.CANDIDATE)
        self._term += 1
        self._voted_for = self._node_id
        self._leader = None
        self._reset_election_timer()
        self._clear_leader_state()

    def _become_leader(self) -> None:
        self._set_role(Role.LEADER)
        self._leader = self._node_id
        self._reset_election_timer()
        self._clear_leader_state()
        self._heartbeat_round = 0
        for peer in sorted(self._voters - {self._node_id}):
            self._progress[peer] = _Progress(match=0, next=self.last_index + 1)
        # Raft 2014 section 8: a NOOP of the new term, whose commitment commits every entry
        # before it (5.4.2) and tells the leader its commit index is current (thesis 6.4).
        self._append_as_leader(EntryKind.NOOP, b"")

    def _campaign(self, *, transfer: bool) -> None:
        if self._config.pre_vote and not transfer:
            self._become_pre_candidate()
            self._request_votes(pre_vote=True, transfer=False)
        else:
            self._become_candidate()
            self._request_votes(pre_vote=False, transfer=transfer)

    def _request_votes(self, *, pre_vote: bool, transfer: bool) -> None:
        self._votes = {self._node_id: True}
        if self._tally_votes():
            return
        term = self._term + 1 if pre_vote else self._term
        last_index, last_term = self.last_index, self._last_term()
        for peer in sorted(self._voters - {self._node_id}):
            self._send(
                VoteRequest(term, self._node_id, peer, last_index, last_term, pre_vote, transfer)
            )

    def _tally_votes(self) -> bool:
        """Act on a decided election; True if it was decided."""
        quorum = len(self._voters) // 2 + 1
        granted = sum(1 for voter, vote in self._votes.items() if vote and voter in self._voters)
        rejected = sum(
            1 for voter, vote in self._votes.items() if not vote and voter in self._voters
        )
        if granted >= quorum:
            if self._role is Role.PRE_CANDIDATE:
                self._become_candidate()
                self._request_votes(pre_vote=False, transfer=False)
            else:
                self._become_leader()
            return True
        if rejected >= quorum:
            self._become_follower(self._term, None)
            return True
        return False

    # --- ticks ---

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_election_ticks:
            self._campaign(transfer=False)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._config.election_ticks:
            self._election_elapsed = 0
            if self._config.check_quorum and not self._quorum_recently_active():
                self._become_follower(self._term, None)  # thesis 6.2
                return
            self._lead_transferee = None  # thesis 3.10: the transfer did not finish in time
        self._retransmit_stalled()
        if self._heartbeat_elapsed >= self._config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_recently_active(self) -> bool:
        active = {peer for peer, progress in self._progress.items() if progress.recent_active}
        active.add(self._node_id)
        for progress in self._progress.values():
            progress.recent_active = False
        return len(active & self._voters) >= len(self._voters) // 2 + 1

    def _retransmit_stalled(self) -> None:
        # An append or snapshot unanswered for an election timeout was lost (the network may
        # drop anything): probe again from the follower's match.
        for peer, progress in self._progress.items():
            if not progress.waiting():
                continue
            progress.stalled_ticks += 1
            if progress.stalled_ticks >= self._config.election_ticks:
                progress.transition(ReplicationState.PROBE)
                progress.next = progress.match + 1
                self._send_append(peer)

    # --- dispatch ---

    def _accept_newer_term(self, message: Message) -> bool:
        """Raft 2014, 5.1, with the pre-vote and stickiness exceptions; False: stop here."""
        if isinstance(message, VoteRequest):
            if not message.transfer and self._in_lease():
                # Thesis 4.2.3: a leader was heard from within the election timeout, so this
                # candidate is disruptive (or was cut off); refuse without taking its term.
                self._send(
                    VoteResponse(self._term, self._node_id, message.source, False, message.pre_vote)
                )
                return False
            if message.pre_vote:
                return True  # thesis 9.6: a pre-vote never changes our term
        elif isinstance(message, VoteResponse) and message.pre_vote and message.granted:
            return True  # a grant echoes the term we would campaign in
        leader = message.source if isinstance(message, AppendRequest | SnapshotRequest) else None
        self._become_follower(message.term, leader)
        return True

    def _answer_older_term(self, message: Message) -> None:
        # A deposed leader or an outdated candidate learns the newer term from the answer; every
        # other message of an older term is dropped (Raft 2014, 5.1).
        if isinstance(message, AppendRequest | SnapshotRequest):
            self._send(AppendResponse(self._term, self._node_id, message.source, False, 0, 0, 0))
        elif isinstance(message, VoteRequest):
            self._send(
                VoteResponse(self._term, self._node_id, message.source, False, message.pre_vote)
            )

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, VoteRequest):
            self._handle_vote_request(message)
        elif isinstance(message, VoteResponse):
            self._handle_vote_response(message)
        elif isinstance(message, AppendRequest | SnapshotRequest):
            assert self._role is not Role.LEADER, f"two leaders in term {self._term}"
            if self._role is not Role.FOLLOWER:
                self._become_follower(self._term, message.source)
            self._leader = message.source
            self._election_elapsed = 0
            if isinstance(message, AppendRequest):
                self._handle_append(message)
            else:
                self._handle_snapshot(message)
        elif isinstance(message, AppendResponse):
            if self._role is Role.LEADER:
                self._handle_append_response(message)
        elif isinstance(message, SnapshotResponse):
            if self._role is Role.LEADER:
                self._handle_snapshot_response(message)
        elif self._promotable() and self._role is not Role.LEADER:  # TimeoutNow, thesis 3.10
            self._campaign(transfer=True)

    def _in_lease(self) -> bool:
        return self._leader is not None and self._election_elapsed < self._config.election_ticks

    # --- elections (Raft 2014, 5.2 and 5.4.1; thesis 9.6) ---

    def _handle_vote_request(self, message: VoteRequest) -> None:
        can_vote = (
            self._voted_for == message.source
            or (self._voted_for is None and self._leader is None)
            or (message.pre_vote and message.term > self._term)
        )
        granted = can_vote and candidate_log_is_up_to_date(
            message.last_term, message.last_index, self._last_term(), self.last_index
        )
        if granted and not message.pre_vote:
            self._voted_for = message.source  # persisted (Ready.hard_state) before the answer
            self._election_elapsed = 0
        term = message.term if granted and message.pre_vote else self._term
        self._send(VoteResponse(term, self._node_id, message.source, granted, message.pre_vote))

    def _handle_vote_response(self, message: VoteResponse) -> None:
        if message.source not in self._voters:
            return
        if self._role is Role.PRE_CANDIDATE and message.pre_vote:
            expected_term = self._term + 1 if message.granted else self._term
        elif self._role is Role.CANDIDATE and not message.pre_vote:
            expected_term = self._term
        else:
            return
        if message.term != expected_term:
            return  # an answer to an earlier campaign
        self._votes[message.source] = message.granted
        self._tally_votes()

    # --- replication, follower side (Raft 2014, 5.3) ---

    def _handle_append(self, message: AppendRequest) -> None:
        prev_index, prev_term, entries = message.prev_index, message.prev_term, message.entries
        if prev_index < self._commit:
            # Entries up to our commit index are in every later leader's log (Leader
            # Completeness), so they match; keep only what follows.
            skipped = [entry for entry in entries if entry.index <= self._commit]
            for entry in skipped:
                assert self._term_at(entry.index) in (None, entry.term), (
                    f"{self._node_id}: leader {message.source} contradicts committed {entry}"
                )
            entries = entries[len(skipped) :]
            prev_index = self._commit
            prev_term_here = self._term_at(prev_index)
            assert prev_term_here is not None
            prev_term = prev_term_here
        if self._term_at(prev_index) != prev_term:
            self._send(
                AppendResponse(
                    self._term,
                    self._node_id,
                    message.source,
                    False,
                    message.prev_index,
                    self._conflict_hint(prev_index),
                    message.context,
                )
            )
            return
        self._append_from_leader(entries)
        last_new_index = prev_index + len(entries)
        # Figure 2: commitIndex = min(leaderCommit, index of last new entry). Not our last index:
        # beyond what this request proved to match, our log may still hold a stale suffix.
        self._commit = max(self._commit, min(message.commit, last_new_index))
        self._send(
            AppendResponse(
                self._term, self._node_id, message.source, True, last_new_index, 0, message.context
            )
        )

    def _append_from_leader(self, entries: tuple[Entry, ...]) -> None:
        for position, entry in enumerate(entries):
            term_here = self._term_at(entry.index)
            if term_here == entry.term:
                continue  # already have it: a duplicate or reordered append truncates nothing
            if term_here is not None:
                self._truncate_from(entry.index)  # Figure 2, receiver step 3
            self._append(entries[position:])
            return

    def _conflict_hint(self, prev_index: int) -> int:
        """Where the leader should try next: past our log's end, or the first index of the
        conflicting term, skipping that whole term in one round trip (Raft 2014, 5.3)."""
        if prev_index > self.last_index:
            return self.last_index + 1
        conflict_term = self._term_at(prev_index)
        floor = max(self._commit, self._offset) + 1
        index = prev_index
        while index > floor and self._term_at(index - 1) == conflict_term:
            index -= 1
        return max(index, 1)

    def _handle_snapshot(self, message: SnapshotRequest) -> None:
        snapshot = message.snapshot
        if snapshot.index <= self._commit:
            match_index = self._commit  # stale or duplicate: we are already past it
        elif self._term_at(snapshot.index) == snapshot.term:
            # Thesis 5.1: we hold the snapshot's last entry, so we have everything it covers;
            # keep the entries that follow it.
            self._commit = snapshot.index
            match_index = snapshot.index
        else:
            self._restore(snapshot)
            match_index = snapshot.index
        self._send(SnapshotResponse(self._term, self._node_id, message.source, match_index))

    def _restore(self, snapshot: Snapshot) -> None:
        assert snapshot.index > self._commit
        self._log.clear()
        self._snapshot = snapshot
        self._pending_snapshot = snapshot
        self._offset = snapshot.index
        self._offset_term = snapshot.term
        self._base_voters = snapshot.voters
        self._commit = snapshot.index
        self._unstable_from = snapshot.index + 1
        # Counted durable before its write is, which is harmless: only a follower installs a
        # snapshot, and its Ready is advanced (never accepted) once the write is durable.
        self._stable_to = snapshot.index
        self._reload_voters()

    # --- replication, leader side ---

    def _check_leader(self) -> None:
        if self._role is not Role.LEADER:
            raise NotLeaderError(self._leader)

    def _check_can_propose(self) -> None:
        self._check_leader()
        if self._lead_transferee is not None:
            raise ProposalDroppedError(f"leadership is moving to {self._lead_transferee}")
        if self.last_index - self._commit >= UNCOMMITTED_ENTRIES_MAX:
            raise ProposalDroppedError(f"{UNCOMMITTED_ENTRIES_MAX} entries are uncommitted")

    def _committed_in_term(self) -> bool:
        return self._term_at(self._commit) == self._term

    def _append_as_leader(self, kind: EntryKind, data: bytes) -> int:
        index = self.last_index + 1
        self._append([Entry(self._term, index, kind, data)])
        self._appends_owed = True
        return index

    def _send_owed(self) -> None:
        """The appends and the heartbeat round that proposals and reads since the last Ready
        asked for: one each, however many there were. This is where proposals are batched (many
        entries per append, so one fsync per batch on each follower), as etcd's server batches
        reads into one ReadIndex round."""
        if self._role is Role.LEADER and self._appends_owed:
            for peer in list(self._progress):
                self._send_append(peer)
        if self._read_round_owed:
            self._maybe_start_read_round()
        self._appends_owed = False
        self._read_round_owed = False

    def _send_append(self, peer: str) -> None:
        """Send what the follower's replication state allows: one probe, or a pipeline."""
        progress = self._progress[peer]
        if progress.state is ReplicationState.PROBE:
            if not progress.probe_sent and progress.match < self.last_index:
                self._send_entries(peer, progress)
                progress.probe_sent = True
        elif progress.state is ReplicationState.REPLICATE:
            while (
                progress.state is ReplicationState.REPLICATE
                and progress.next <= self.last_index
                and len(progress.inflight) < self._config.max_inflight_appends
            ):
                self._send_entries(peer, progress)

    def _send_entries(self, peer: str, progress: _Progress) -> None:
        prev_index = progress.next - 1
        prev_term = self._term_at(prev_index)
        if prev_term is None:
            self._send_snapshot(peer, progress)
            return
        high = min(self.last_index, prev_index + self._config.max_entries_per_append)
        entries = tuple(self._log[prev_index - self._offset : high - self._offset])
        if progress.state is ReplicationState.REPLICATE:
            progress.inflight.append(high)
            progress.next = high + 1  # optimistic: pipelining
        self._send(
            AppendRequest(
                self._term, self._node_id, peer, prev_index, prev_term, entries, self._commit, 0
            )
        )

    def _send_snapshot(self, peer: str, progress: _Progress) -> None:
        snapshot = self._snapshot
        assert snapshot is not None, "entries were compacted away, so there is a snapshot"
        progress.transition(ReplicationState.SNAPSHOT)
        progress.pending_snapshot = snapshot.index
        self._send(SnapshotRequest(self._term, self._node_id, peer, snapshot))

    def _broadcast_heartbeat(self) -> None:
        self._heartbeat_round += 1
        for peer, progress in self._progress.items():
            # At the follower's known match the consistency check passes, so the heartbeat also
            # tells it how far it may commit. A match compacted away is replaced by 0.
            prev_index = progress.match
            prev_term = self._term_at(prev_index)
            if prev_term is None:
                prev_index, prev_term = 0, 0
            self._send(
                AppendRequest(
                    self._term,
                    self._node_id,
                    peer,
                    prev_index,
                    prev_term,
                    (),
                    self._commit,
                    self._heartbeat_round,
                )
            )

    def _handle_append_response(self, message: AppendResponse) -> None:
        progress = self._progress.get(message.source)
        if progress is None:
            return  # no longer a voter
        progress.recent_active = True
        if message.success:
            self._on_match(message.source, progress, message.match_index)
        elif self._back_off(progress, message.match_index, message.conflict_index):
            progress.stalled_ticks = 0
        if message.context:
            progress.acked_round = max(progress.acked_round, message.context)
            if progress.state is ReplicationState.PROBE:
                progress.probe_sent = False  # the follower is reachable: probe again
            elif (
                progress.state is ReplicationState.REPLICATE
                and progress.match < self.last_index
                and len(progress.inflight) >= self._config.max_inflight_appends
            ):
                # The follower is reachable, behind, and the pipeline is full: an append may
                # have been lost. Free a slot and send one more append now, empty if nothing is
                # left to send: if an earlier one was lost, the follower refuses it and ``next``
                # backs off, instead of the pipeline waiting out the retransmission timeout
                # (etcd sends on a heartbeat response the same way).
                progress.inflight.popleft()
                self._send_entries(message.source, progress)
            self._advance_reads()
        if self._role is Role.LEADER and message.source in self._progress:
            self._send_append(message.source)

    def _handle_snapshot_response(self, message: SnapshotResponse) -> None:
        progress = self._progress.get(message.source)
        if progress is None:
            return
        progress.recent_active = True
        self._on_match(message.source, progress, message.match_index)
        if self._role is Role.LEADER and message.source in self._progress:
            self._send_append(message.source)

    def _on_match(self, peer: str, progress: _Progress, match_index: int) -> None:
        if match_index > progress.match:
            progress.match = match_index
            progress.stalled_ticks = 0
            if progress.state is not ReplicationState.REPLICATE:
                progress.transition(ReplicationState.REPLICATE)
                progress.next = progress.match + 1
            while progress.inflight and progress.inflight[0] <= match_index:
                progress.inflight.popleft()
            self._maybe_commit()
        elif (
            progress.state is ReplicationState.SNAPSHOT and match_index >= progress.pending_snapshot
        ):
            progress.transition(ReplicationState.REPLICATE)
            progress.next = progress.match + 1
        progress.next = max(progress.next, progress.match + 1)
        if (
            self._role is Role.LEADER
            and peer == self._lead_transferee
            and progress.match == self.last_index
        ):
            self._send(TimeoutNow(self._term, self._node_id, peer))  # thesis 3.10

    def _back_off(self, progress: _Progress, rejected_index: int, conflict_index: int) -> bool:
        """A rejected append: move ``next`` back to the follower's hint. False if stale."""
        next_index = max(progress.match + 1, min(rejected_index, conflict_index))
        if progress.state is ReplicationState.REPLICATE:
            if rejected_index <= progress.match:
                return False
            progress.transition(ReplicationState.PROBE)
            progress.next = next_index
            return True
        if progress.state is ReplicationState.PROBE:
            if rejected_index != progress.next - 1:
                return False
            progress.next = next_index
            progress.probe_sent = False
            return True
        return False

    def _maybe_commit(self) -> None:
        matches = {peer: progress.match for peer, progress in self._progress.items()}
        # The leader's own log counts once persisted, not before: it may have sent its appends
        # before writing them (thesis 10.2.1), and an entry on a majority of memories is not
        # committed.
        matches[self._node_id] = min(self._stable_to, self.last_index)
        candidate = quorum_commit_index(matches, self._voters)
        if candidate <= self._commit:
            return
        candidate_term = self._term_at(candidate)
        assert candidate_term is not None
        if not may_commit_by_counting_replicas(candidate_term, self._term):
            return
        self._commit = candidate
        self._on_leader_commit()

    def _on_leader_commit(self) -> None:
        self._maybe_start_read_round()
        if self._node_id not in self._voters and self._config_index <= self._commit:
            self._become_follower(self._term, None)  # thesis 4.2.2: removed, and it is final

    # --- ReadIndex (thesis 6.4) ---

    def _maybe_start_read_round(self) -> None:
        """Start a round for the reads waiting without one, unless a round is still in flight:
        reads that arrive meanwhile wait for it to finish and then share the next round, the
        batching etcd's server does in its linearizable read loop. One round per read would cost
        every read its own heartbeat to every follower."""
        if (
            self._role is Role.LEADER
            and self._reads
            and self._reads[0].index is None  # no round in flight: reads with one come first
            # Until then the commit index may be behind the previous leader's (thesis 6.4 step
            # 1); the first commit of the term starts the round (_on_leader_commit).
            and self._committed_in_term()
        ):
            self._start_read_round()

    def _start_read_round(self) -> None:
        """Record the commit index for every read without one, and send the heartbeat round
        that must come back from a majority before they may be served (thesis 6.4 steps 1-3)."""
        next_round = self._heartbeat_round + 1
        for read in self._reads:
            if read.index is None:
                read.index = self._commit
                read.round = next_round
        if self._progress:
            self._broadcast_heartbeat()
        else:
            self._heartbeat_round = next_round  # a cluster of one confirms itself
        self._advance_reads()

    def _advance_reads(self) -> None:
        acked_rounds = {peer: progress.acked_round for peer, progress in self._progress.items()}
        acked_rounds[self._node_id] = self._heartbeat_round
        confirmed_round = quorum_commit_index(acked_rounds, self._voters)
        while self._reads and self._reads[0].index is not None:
            read = self._reads[0]
            if read.round > confirmed_round:
                return
            self._reads.popleft()
            assert read.index is not None
            self._read_states.append(ReadState(read.request_id, read.index))
        self._maybe_start_read_round()

    def _send(self, message: Message) -> None:
        self._outbox.append(message)
