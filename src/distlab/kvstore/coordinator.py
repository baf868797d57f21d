"""The coordinator's decisions in the Dynamo-style store: whom to ask, and when to answer.

What it implements
------------------
* **Quorums** (DeCandia et al., "Dynamo: Amazon's Highly Available Key-value Store", SOSP 2007,
  section 4.5): "R is the minimum number of nodes that must participate in a successful read
  operation. W is the minimum number of nodes that must participate in a successful write
  operation. Setting R and W such that R + W > N yields a quorum-like system." A put is
  acknowledged once W replicas (the coordinator's own durable write counts: "if at least W-1
  nodes respond then the write is considered successful") have stored it; a get answers once R
  replicas replied. Vogels, "Eventually Consistent" (CACM 2009), states why: "If W+R > N, then
  the write set and the read set always overlap and one can guarantee strong consistency."
  ``QuorumConfig.quorums_overlap`` says whether a configuration has that property.
* **The coordinator** (4.5): "a node handling a read or write operation is known as the
  coordinator. Typically, this is the first among the top N nodes in the preference list."
  ``coordinator_for`` names it; a node that receives a put for which it is not the coordinator
  forwards it there.
* **Sloppy quorum and hinted handoff** (4.6): "all read and write operations are performed on the
  first N healthy nodes from the preference list, which may not always be the first N nodes
  encountered while walking the consistent hashing ring", and "the replica that would normally
  have lived on A will now be sent to node D ... the replica sent to D will have a hint in its
  metadata that suggests which node was the intended recipient". ``plan_write`` and ``plan_read``
  choose those nodes; a ``ReplicaTarget`` with ``hint_for`` set is such a fallback. The same
  paragraph covers an owner that is up in the failure detector's view but fails the write itself
  ("if A is temporarily down or unreachable during a write operation"): ``WriteTracker`` then
  names the next spare node as its fallback (``replacement_for``). With ``sloppy=False`` (a
  strict quorum) only the top N themselves count.
* **Read repair** (section 5): "If stale versions were returned in any of the responses, the
  coordinator updates those nodes with the latest version. This process is called read repair
  because it repairs replicas that have missed a recent update at an opportunistic time and
  relieves the anti-entropy protocol from having to do it." ``ReadTracker.repairs`` lists them.
* A **trace** of every operation (preference list, targets, each replica's answer and latency,
  hints written, versions seen, repairs planned) for readers to watch the protocol at work.

Everything here is pure: no clocks, no sockets, no tasks. The shell (``distlab.kvstore.node``)
sends the replica calls concurrently, reports each outcome with the time elapsed since the
operation started, and acts on the decisions. Time enters only as those ``elapsed_ms`` numbers.

Theory of operation
-------------------
Planning. The caller passes the key's full ring walk (``ring.preference_list(key, len(ring))``:
every node once, in ring order from the key's owner) and the failure detector's set of live
nodes. The top N of the walk are the key's **preference list**, its owners. The **targets** are
the live owners, and, in sloppy mode, one **fallback** per down owner: the k-th down owner (in
preference order) is stood in for by the k-th live node beyond the top N (in ring order), which
gets ``hint_for`` = that owner. Targets are listed in walk order, so the owners come first.

Two edge cases follow from taking nodes only from the walk:

* A cluster of fewer than N nodes: the preference list is the whole walk, shorter than N, and
  there is no node beyond it to fall back on. W and R are not lowered to fit: the client asked
  for W durable copies, so a put with W larger than the cluster is refused.
* No fallbacks left: when more owners are down than there are live nodes beyond the top N, the
  remaining down owners are simply not replaced, and the targets number fewer than N.

A plan is **achievable** when it has at least W (or R) targets; a put also needs a live owner to
coordinate it (see "departures" below). An unachievable plan is refused before anything is
written or read: a definite failure (``common.errors.NOT_ENOUGH_REPLICAS``).

Replacing. In sloppy mode, a put's target whose write fails (an owner, or a fallback that failed
too) is replaced at once by the next unused live node beyond the top N, which gets ``hint_for`` =
the owner it stands in for; the replacement counts towards W like any target, so one slow or
crashed owner costs a put a round trip, not its quorum. Each spare serves once; when they run
out, the failure stands. A get is not redirected: its targets' replies are already what R counts.

Deciding. A tracker counts answers against the quorum. Each target answers at most once, moving
from NO_ANSWER to ACKED (a write stored and fsynced), REPLIED (a read's versions) or FAILED
(``REPLICA_TRANSITIONS``). The operation moves from PENDING to SUCCEEDED as soon as W (or R)
targets answered, and to FAILED as soon as the targets that answered plus those still
outstanding can no longer make W (or R), or when the shell reports the deadline while it is still
pending (``OUTCOME_TRANSITIONS``). A decision is final; answers that arrive later are still
recorded, for the trace and for read repair.

Definite or indefinite (Maelstrom's error model, ``common.errors``). A failed put is definite
only when no target can have stored it: none acknowledged, none is still outstanding, and every
failure was reported as certain (``definite=True``: the replica refused before writing). When in
doubt, indefinite. Once any target acknowledged, above all the coordinator itself, whose write
comes first, the value is durable there; Dynamo has no rollback, so it may later reach other
replicas through read repair, hinted handoff or anti-entropy, and a client must treat the failure
as "maybe happened". A get changes nothing, so its failures are definite.

Why sloppy quorums read stale values even with R + W > N. Take N=3, W=2, R=2, owners A, B, C.
A and B are unreachable from C for a while, so C coordinates a put and stores it on itself and
the fallback D (hint for A): W=2 acknowledged. A and B come back before D hands the hint over, and
a get asks A and B: both reply with the old value, R=2 is met, and the read is stale. The overlap
Vogels describes holds for the N owners only; a fallback's acknowledgement counts towards W while
it is not an owner. The same happens on the read side: a fallback answers from its main store,
where it holds nothing for a key it does not own (its hinted copy sits in the separate hint
store, which reads do not consult), and its empty reply counts towards R all the same. That is
the price of "always writeable" (4.6); ``sloppy=False`` trades it back for availability.

Read repair. ``ReadTracker.result`` is the reconciliation (``versioning.reconcile``) of every reply
so far; it is what the client gets. After the stragglers (or the deadline), ``repairs`` names
every owner that replied with a different set, a replica that replied with nothing included, and
the reconciled set to send it; the replica merges it with what it has. Reconciliation is a
semilattice join, so repairs are idempotent and may race with other writes safely.

How the shell uses this (the order matters)
-------------------------------------------
A put:
  1. ``plan = plan_write(walk, live, config)``. Not ``plan.achievable``: refuse with
     NOT_ENOUGH_REPLICAS and ``plan.refusal_message()``; definite, nothing written.
  2. ``coordinator_for(walk, live, config)`` is another node: forward the put to it (once).
  3. ``plan.can_coordinate(self)`` is False (a forwarded put, and this node's view of the ring
     or of liveness differs): refuse, definite.
  4. ``tracker = WriteTracker(plan, config.w, self)``. Mint the version and store it durably
     here, then report it: ``tracker.on_ack(self, elapsed_ms)``.
  5. Send the merged sibling set to every other target (with its ``hint_for``) concurrently, and
     report each answer (``on_ack``, or ``on_failure`` with ``definite=True`` only when the
     replica certainly did not store it). After a failure, ``replacement_for(target)`` names the
     fallback that now stands in for it, if any: send it the same set, with its hint.
  6. Answer the client when ``tracker.outcome`` is no longer PENDING, or call
     ``tracker.on_deadline`` when the deadline passes first. FAILED: answer with
     ``failure_kind()`` and ``failure_message()``.
  7. Keep reporting late answers; ``tracker.trace()`` reflects them.
A get:
  1. ``plan = plan_read(walk, live, config)``; not achievable: refuse, definite.
  2. ``tracker = ReadTracker(plan, config.r)``; ask every target concurrently; report each
     answer (``on_reply`` with the versions, or ``on_failure``).
  3. Answer the client when the outcome is decided (``result()``, and its read context), or call
     ``on_deadline`` first.
  4. In the background, wait (bounded) for the stragglers, then send each ``repairs()`` entry to
     its replica as a merge, without a hint.

What it leaves out
------------------
* Departures from Dynamo, both deliberate. (1) A put whose N owners are all down is refused even
  in sloppy mode, although fallbacks might accept it: the coordinator mints the version and
  stores it in its own main store first (``versioning``, duties 1 and 2), which is right only on
  an owner. (2) Fallbacks are never read-repaired: they are not replicas of the key, and data
  written to their main store would never be handed off or collected.
* Choosing as coordinator the node that answered a previous read fastest, and client-driven
  coordination (Dynamo 6.4); retries and hedged requests to more than the targets.
* Reading the hint store of a fallback: a read asks only main stores (see above).
* Repairing replicas that did not answer, and down owners in strict mode (no hints are written
  then): anti-entropy (4.7, ``distlab.kvstore.merkle``) reaches them.
* Dynamo's write buffering, where only one of the N replicas writes durably (6.1): here every
  acknowledgement is an fsync.
* Rack and zone awareness when choosing fallbacks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum
from typing import Any

from distlab.common import errors
from distlab.common.hashring import NODES_MAX
from distlab.kvstore.versioning import (
    CLOCK_ENTRIES_MAX_DEFAULT,
    Version,
    VersionConflictError,
    reconcile,
)

# ---------------------------------------------------------------------------------------------
# Limits and defaults.
# ---------------------------------------------------------------------------------------------

# Dynamo section 6: "The common (N,R,W) configuration used by several instances of Dynamo is
# (3,2,2)." R + W > N, and one replica may be down for reads and for writes.
N_DEFAULT = 3
R_DEFAULT = 2
W_DEFAULT = 2
# Replicas per key. Every put and get fans out to N nodes and the trackers hold a record per
# target, so N bounds the work of one request. 7 tolerates 3 replicas down with overlapping
# majority quorums (R = W = 4), more than production stores default to (3 in Dynamo, Cassandra
# and Riak). It also keeps vector clocks unpruned: only a key's N owners coordinate its puts, so
# in a stable ring a clock holds at most N entries, below the pruning threshold (checked below).
N_MAX = 7
# A replica's failure reason goes into the client's error message and the trace. Cut at 200
# characters, N_MAX reasons stay near 1.5 KiB, well inside gRPC's default 8 KiB limit on the
# metadata (trailers) that carry a status message, and one verbose peer error cannot flood it.
REASON_CHARS_MAX = 200
# The walk names every node of the ring, so it is bounded as the ring is.
WALK_NODES_MAX = NODES_MAX

assert N_MAX <= CLOCK_ENTRIES_MAX_DEFAULT, "N owners must fit in a clock without pruning"


# ---------------------------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuorumConfig:
    """N replicas per key, R replies per get, W acknowledgements per put, and whether fallbacks
    stand in for down owners (Dynamo's sloppy quorum) or not (a strict quorum)."""

    n: int = N_DEFAULT
    r: int = R_DEFAULT
    w: int = W_DEFAULT
    sloppy: bool = True

    def __post_init__(self) -> None:
        # n first, so the messages for r and w name a valid bound.
        _check_count("n", self.n, N_MAX, "N_MAX")
        _check_count("r", self.r, self.n, "n")
        _check_count("w", self.w, self.n, "n")
        if not isinstance(self.sloppy, bool):
            raise TypeError(f"sloppy must be a bool, got {self.sloppy!r}")

    @property
    def quorums_overlap(self) -> bool:
        """R + W > N: every read quorum of owners meets every write quorum of owners (Vogels
        2009). A sloppy quorum keeps this for owners only; see the module docstring."""
        return self.r + self.w > self.n

    def with_overrides(self, r: int | None = None, w: int | None = None) -> QuorumConfig:
        """This configuration with a request's own R or W (None keeps the node's).

        ValueError naming the field ("r" or "w") when it is out of 1..n: INVALID_ARGUMENT.
        """
        return QuorumConfig(
            n=self.n,
            r=self.r if r is None else r,
            w=self.w if w is None else w,
            sloppy=self.sloppy,
        )


def _check_count(field: str, value: int, upper: int, upper_name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {value!r}")
    if not 1 <= value <= upper:
        raise ValueError(f"{field} must be in 1..{upper_name}={upper}, got {value}")


# ---------------------------------------------------------------------------------------------
# Plans: whom to write to and read from.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    """A node asked to store or read the key. ``hint_for`` names the down owner this node stands
    in for (a fallback, Dynamo 4.6); None for an owner."""

    node_id: str
    hint_for: str | None = None

    @property
    def is_fallback(self) -> bool:
        return self.hint_for is not None

    def label(self) -> str:
        return self.node_id if self.hint_for is None else f"{self.node_id} (for {self.hint_for})"


@dataclass(frozen=True, slots=True)
class WritePlan:
    """The targets of a put. ``achievable``: at least W targets and a live owner to coordinate.

    ``live_owners`` counts the live nodes among the preference list; ``down_owners`` names the
    others, in preference order (each replaced by a fallback in ``targets`` when one was left).
    """

    preference_list: tuple[str, ...]
    targets: tuple[ReplicaTarget, ...]
    achievable: bool
    live_owners: int
    down_owners: tuple[str, ...]
    config: QuorumConfig
    # Sloppy only: the live nodes beyond the top N not already fallbacks, in walk order; they
    # replace targets whose write fails (``WriteTracker.replacement_for``).
    spares: tuple[str, ...] = ()

    @property
    def fallbacks(self) -> tuple[ReplicaTarget, ...]:
        return tuple(target for target in self.targets if target.is_fallback)

    def can_coordinate(self, node_id: str) -> bool:
        """Whether ``node_id`` may coordinate this put: it is a live owner. A fallback may not:
        the coordinator stores the new version in its main store first."""
        return any(t.node_id == node_id and not t.is_fallback for t in self.targets)

    def refusal_message(self) -> str:
        """Why an unachievable put is refused before anything is written (definite)."""
        if self.achievable:
            raise RuntimeError("the plan is achievable: there is nothing to refuse")
        if self.live_owners == 0 and len(self.targets) >= self.config.w:
            return (
                f"no owner of the key is live (preference list {_names(self.preference_list)}): "
                "a put needs one to coordinate it; nothing was written"
            )
        return _unreachable_quorum_message("W", self.config.w, self)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The targets of a get. ``achievable``: at least R targets.

    A fallback among the targets answers from its main store, where it most likely holds nothing
    for this key; its reply still counts towards R (the stale reads of sloppy quorums).
    """

    preference_list: tuple[str, ...]
    targets: tuple[ReplicaTarget, ...]
    achievable: bool
    live_owners: int
    down_owners: tuple[str, ...]
    config: QuorumConfig

    @property
    def fallbacks(self) -> tuple[ReplicaTarget, ...]:
        return tuple(target for target in self.targets if target.is_fallback)

    def refusal_message(self) -> str:
        """Why an unachievable get is refused before any replica is asked."""
        if self.achievable:
            raise RuntimeError("the plan is achievable: there is nothing to refuse")
        return _unreachable_quorum_message("R", self.config.r, self)


def plan_write(walk: Sequence[str], live: AbstractSet[str], config: QuorumConfig) -> WritePlan:
    """The targets of a put of the key whose ring walk is ``walk`` (Dynamo 4.5, 4.6).

    ``walk`` is every node of the ring once, in ring order from the key's owner; ``live`` the
    failure detector's view (nodes outside the walk are ignored). Strict: the live nodes among
    the top N. Sloppy: those, plus for each down owner the next live node beyond the top N, in
    ring order, with ``hint_for`` set to that owner. Achievable: at least W targets, one of them
    a live owner (the coordinator). See the module docstring for the edge cases.
    """
    preference_list, targets, down_owners = _choose_targets(walk, live, config)
    live_owners = len(preference_list) - len(down_owners)
    targeted = {target.node_id for target in targets}
    spares = (
        tuple(
            node_id for node_id in walk[config.n :] if node_id in live and node_id not in targeted
        )
        if config.sloppy
        else ()
    )
    return WritePlan(
        preference_list=preference_list,
        targets=targets,
        achievable=live_owners >= 1 and len(targets) >= config.w,
        live_owners=live_owners,
        down_owners=down_owners,
        config=config,
        spares=spares,
    )


def plan_read(walk: Sequence[str], live: AbstractSet[str], config: QuorumConfig) -> ReadPlan:
    """The targets of a get: chosen exactly as ``plan_write`` chooses them. Achievable: at least
    R targets, whether owners or (sloppy) fallbacks, which most likely reply with nothing."""
    preference_list, targets, down_owners = _choose_targets(walk, live, config)
    return ReadPlan(
        preference_list=preference_list,
        targets=targets,
        achievable=len(targets) >= config.r,
        live_owners=len(preference_list) - len(down_owners),
        down_owners=down_owners,
        config=config,
    )


def coordinator_for(
    walk: Sequence[str], live: AbstractSet[str], config: QuorumConfig
) -> str | None:
    """The node that should coordinate a put: the first live node among the top N (Dynamo 4.5).

    None when every owner is down; the put is then refused (definite), in sloppy mode too.
    """
    _check_walk(walk)
    return next((node_id for node_id in walk[: config.n] if node_id in live), None)


def _choose_targets(
    walk: Sequence[str], live: AbstractSet[str], config: QuorumConfig
) -> tuple[tuple[str, ...], tuple[ReplicaTarget, ...], tuple[str, ...]]:
    """(preference list, targets in walk order, down owners in preference order)."""
    _check_walk(walk)
    preference_list = tuple(walk[: config.n])
    down_owners = tuple(node_id for node_id in preference_list if node_id not in live)
    targets = [ReplicaTarget(node_id) for node_id in preference_list if node_id in live]
    if config.sloppy:
        spares = (node_id for node_id in walk[config.n :] if node_id in live)
        # zip stops at the shorter side: owners left over when the spares run out stay
        # unreplaced ("no fallbacks left"), and spares left over are not needed.
        for owner, spare in zip(down_owners, spares, strict=False):
            targets.append(ReplicaTarget(spare, hint_for=owner))
    chosen = tuple(targets)
    assert len({target.node_id for target in chosen}) == len(chosen), "a node targeted twice"
    assert len(chosen) <= config.n, "more targets than replicas"
    return preference_list, chosen, down_owners


def _check_walk(walk: Sequence[str]) -> None:
    if len(walk) > WALK_NODES_MAX:
        raise ValueError(f"walk names {len(walk)} nodes, over WALK_NODES_MAX={WALK_NODES_MAX}")
    seen: set[str] = set()
    for node_id in walk:
        if not isinstance(node_id, str) or not node_id:
            raise ValueError(f"walk must name nodes by non-empty str ids, got {node_id!r}")
        if node_id in seen:
            raise ValueError(f"walk names node {node_id!r} twice: it must be a ring walk")
        seen.add(node_id)


def _unreachable_quorum_message(name: str, required: int, plan: WritePlan | ReadPlan) -> str:
    reachable = ", ".join(target.label() for target in plan.targets) or "none"
    down = _names(plan.down_owners) or "none"
    unreplaced = len(plan.down_owners) - len(plan.fallbacks)
    if not plan.config.sloppy:
        fallback_note = "strict quorum: no fallbacks"
    elif unreplaced:
        fallback_note = f"no live fallback left for {unreplaced} of them"
    else:
        fallback_note = "every down owner has a fallback"
    return (
        f"quorum not reachable: {name}={required} needs {required} live replicas, only "
        f"{len(plan.targets)} reachable ({reachable}) for preference list "
        f"{_names(plan.preference_list)} (down: {down}; {fallback_note}); refused before "
        "contacting any replica"
    )


def _names(node_ids: Iterable[str]) -> str:
    return ", ".join(node_ids)


# ---------------------------------------------------------------------------------------------
# State machines: the outcome of an operation, and the answer of each replica.
# ---------------------------------------------------------------------------------------------


class Outcome(Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ReplicaOutcome(Enum):
    NO_ANSWER = "no answer"  # asked, no answer yet (or ever)
    ACKED = "acked"  # a put's target stored the write durably
    REPLIED = "replied"  # a get's target sent its versions (possibly none)
    FAILED = "failed"  # the call failed; the reason says how


# Every legal move; a decision is final. Drawn: PENDING -> SUCCEEDED | FAILED.
OUTCOME_TRANSITIONS: dict[Outcome, frozenset[Outcome]] = {
    Outcome.PENDING: frozenset({Outcome.SUCCEEDED, Outcome.FAILED}),
    Outcome.SUCCEEDED: frozenset(),
    Outcome.FAILED: frozenset(),
}
# Each target answers once. Drawn: NO_ANSWER -> ACKED | REPLIED | FAILED.
REPLICA_TRANSITIONS: dict[ReplicaOutcome, frozenset[ReplicaOutcome]] = {
    ReplicaOutcome.NO_ANSWER: frozenset(
        {ReplicaOutcome.ACKED, ReplicaOutcome.REPLIED, ReplicaOutcome.FAILED}
    ),
    ReplicaOutcome.ACKED: frozenset(),
    ReplicaOutcome.REPLIED: frozenset(),
    ReplicaOutcome.FAILED: frozenset(),
}


class Operation(Enum):
    PUT = "put"  # deletes too: a delete is a put of a tombstone
    GET = "get"


# ---------------------------------------------------------------------------------------------
# Traces.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repair:
    """Read repair: send ``versions`` (the reconciled set) to ``node_id``, which merges them."""

    node_id: str
    versions: tuple[Version, ...]


@dataclass(frozen=True, slots=True)
class ReplicaTrace:
    """What one target did: its answer, when (ms since the operation started), why it failed,
    and for a get the versions it replied with (reconciled; empty for a replica without the
    key)."""

    node_id: str
    hint_for: str | None
    outcome: ReplicaOutcome
    elapsed_ms: float | None
    reason: str | None
    versions: tuple[Version, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "hint_for": self.hint_for,
            "outcome": self.outcome.value,
            "elapsed_ms": None if self.elapsed_ms is None else round(self.elapsed_ms, 3),
            "reason": self.reason,
            "versions": _versions_to_list(self.versions),
        }


@dataclass(frozen=True, slots=True)
class Trace:
    """One operation as the coordinator saw it, at the moment ``trace()`` was called.

    ``hints_written``: the fallbacks that acknowledged a put, each now holding a hint for its
    owner. ``result`` and ``repairs``: a get's reconciled versions and the read repairs planned
    from the replies so far (the shell sends them). ``coordinator`` is None for a get.
    """

    operation: Operation
    config: QuorumConfig
    coordinator: str | None
    preference_list: tuple[str, ...]
    targets: tuple[ReplicaTarget, ...]
    replicas: tuple[ReplicaTrace, ...]
    outcome: Outcome
    decided_ms: float | None
    decided_by_deadline: bool
    failure: str | None
    hints_written: tuple[ReplicaTarget, ...]
    result: tuple[Version, ...]
    repairs: tuple[Repair, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict. Versions appear as "node:counter" dots, values left out."""
        return {
            "operation": self.operation.value,
            "n": self.config.n,
            "required": self.config.w if self.operation is Operation.PUT else self.config.r,
            "sloppy": self.config.sloppy,
            "coordinator": self.coordinator,
            "preference_list": list(self.preference_list),
            "targets": [_target_to_dict(target) for target in self.targets],
            "replicas": [replica.to_dict() for replica in self.replicas],
            "outcome": self.outcome.value,
            "decided_ms": None if self.decided_ms is None else round(self.decided_ms, 3),
            "decided_by_deadline": self.decided_by_deadline,
            "failure": self.failure,
            "hints_written": [_target_to_dict(target) for target in self.hints_written],
            "result": _versions_to_list(self.result),
            "repairs": [
                {"node_id": repair.node_id, "versions": _versions_to_list(repair.versions)}
                for repair in self.repairs
            ],
        }


def _target_to_dict(target: ReplicaTarget) -> dict[str, Any]:
    return {"node_id": target.node_id, "hint_for": target.hint_for}


def _versions_to_list(versions: Iterable[Version]) -> list[str]:
    return [
        f"{version.dot.node_id}:{version.dot.counter}"
        + (" (tombstone)" if version.is_tombstone else "")
        for version in versions
    ]


# ---------------------------------------------------------------------------------------------
# Trackers: counting answers against the quorum.
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _ReplicaRecord:
    """A target's answer so far (mutable, private; ``ReplicaTrace`` is its published copy)."""

    target: ReplicaTarget
    outcome: ReplicaOutcome = ReplicaOutcome.NO_ANSWER
    elapsed_ms: float | None = None
    reason: str | None = None
    definite: bool = False  # a FAILED put target that certainly did not store the write
    versions: tuple[Version, ...] = ()


class _QuorumTracker:
    """What WriteTracker and ReadTracker share: one record per target, the quorum count, the
    decision, and the failure text. Subclasses say which answer counts (ACKED or REPLIED)."""

    _COUNTED: ReplicaOutcome  # the answer that counts towards the quorum
    _VERB: str  # how the failure message says "answered" for that answer

    def __init__(
        self,
        operation: Operation,
        targets: tuple[ReplicaTarget, ...],
        preference_list: tuple[str, ...],
        config: QuorumConfig,
        required: int,
    ) -> None:
        self._operation = operation
        self._preference_list = preference_list
        self._config = config
        self._required = required
        self._records = {target.node_id: _ReplicaRecord(target) for target in targets}
        self._outcome = Outcome.PENDING
        self._decided_ms: float | None = None
        self._decided_by_deadline = False
        # Fixed at the decision, so what the client was told never changes with late answers.
        self._failure: str | None = None
        self._failure_definite = False

    @property
    def outcome(self) -> Outcome:
        return self._outcome

    @property
    def all_answered(self) -> bool:
        """Every target answered (the stragglers are in): the time to plan read repairs."""
        return self._count(ReplicaOutcome.NO_ANSWER) == 0

    def on_deadline(self, elapsed_ms: float) -> Outcome:
        """The deadline passed: FAILED if still pending; a decided outcome stays as it is.
        Targets that have not answered may still answer later; they are recorded then."""
        _check_elapsed(elapsed_ms)
        if self._outcome is Outcome.PENDING:
            self._decide(Outcome.FAILED, elapsed_ms, by_deadline=True)
        return self._outcome

    def failure_message(self) -> str:
        """The error text for the client, as it stood when the operation failed."""
        if self._failure is None:
            raise RuntimeError(f"the {self._operation.value} has not failed: {self._outcome.name}")
        return self._failure

    def failure_is_definite(self) -> bool:
        """Whether the failed operation certainly had no effect (see the module docstring)."""
        self.failure_message()  # raises unless failed
        return self._failure_definite

    def failure_is_deadline(self) -> bool:
        """Whether the deadline, rather than too many failed replicas, decided the failure."""
        self.failure_message()  # raises unless failed
        return self._decided_by_deadline

    def _answer(
        self,
        node_id: str,
        answer: ReplicaOutcome,
        elapsed_ms: float,
        *,
        reason: str | None = None,
        definite: bool = False,
        versions: tuple[Version, ...] = (),
    ) -> Outcome:
        _check_elapsed(elapsed_ms)
        record = self._record_of(node_id)
        if answer not in REPLICA_TRANSITIONS[record.outcome]:
            raise ValueError(
                f"{node_id!r} already answered this {self._operation.value} "
                f"({record.outcome.value}); each target answers once"
            )
        record.outcome = answer
        record.elapsed_ms = elapsed_ms
        record.reason = reason
        record.definite = definite
        record.versions = versions
        self._settle(elapsed_ms)
        return self._outcome

    def _record_of(self, node_id: str) -> _ReplicaRecord:
        record = self._records.get(node_id)
        if record is None:
            raise ValueError(
                f"{node_id!r} is not a target of this {self._operation.value} "
                f"(targets: {_names(self._records)})"
            )
        return record

    def _settle(self, elapsed_ms: float) -> None:
        if self._outcome is not Outcome.PENDING:
            return  # decided: later answers are recorded, never reconsidered
        answered = self._count(self._COUNTED)
        outstanding = self._count(ReplicaOutcome.NO_ANSWER)
        if answered >= self._required:
            self._decide(Outcome.SUCCEEDED, elapsed_ms, by_deadline=False)
        elif answered + outstanding < self._required:
            self._decide(Outcome.FAILED, elapsed_ms, by_deadline=False)

    def _decide(self, outcome: Outcome, elapsed_ms: float, *, by_deadline: bool) -> None:
        assert outcome in OUTCOME_TRANSITIONS[self._outcome], (self._outcome, outcome)
        self._outcome = outcome
        self._decided_ms = elapsed_ms
        self._decided_by_deadline = by_deadline
        if outcome is Outcome.FAILED:
            self._failure_definite = self._failure_would_be_definite()
            self._failure = self._describe_failure(elapsed_ms)

    def _failure_would_be_definite(self) -> bool:
        raise NotImplementedError

    def _describe_failure(self, elapsed_ms: float) -> str:
        records = list(self._records.values())
        answered = [r for r in records if r.outcome is self._COUNTED]
        failed = [r for r in records if r.outcome is ReplicaOutcome.FAILED]
        silent = [r for r in records if r.outcome is ReplicaOutcome.NO_ANSWER]
        groups = [
            f"{title}: {', '.join(_describe_replica(r) for r in group)}"
            for title, group in (("answered", answered), ("failed", failed), ("no answer", silent))
            if group
        ]
        message = (
            f"quorum not reached: {len(answered)} of {self._required} required replicas "
            f"{self._VERB} ({'; '.join(groups)})"
        )
        if self._decided_by_deadline:
            message += f"; the deadline passed after {elapsed_ms:.0f} ms"
        return message

    def _count(self, answer: ReplicaOutcome) -> int:
        return sum(1 for record in self._records.values() if record.outcome is answer)

    def _replica_traces(self) -> tuple[ReplicaTrace, ...]:
        return tuple(
            ReplicaTrace(
                node_id=record.target.node_id,
                hint_for=record.target.hint_for,
                outcome=record.outcome,
                elapsed_ms=record.elapsed_ms,
                reason=record.reason,
                versions=record.versions,
            )
            for record in self._records.values()
        )


class WriteTracker(_QuorumTracker):
    """Counts a put's acknowledgements against W (Dynamo 4.5).

    SUCCEEDED at the W-th acknowledgement (the coordinator's own durable write is one: report it
    with ``on_ack`` like any other); FAILED as soon as W can no longer be reached, or at the
    deadline while pending.
    """

    _COUNTED = ReplicaOutcome.ACKED
    _VERB = "acknowledged"

    def __init__(self, plan: WritePlan, w: int, local_node: str) -> None:
        if not plan.achievable:
            raise ValueError(f"refuse the put instead of tracking it: {plan.refusal_message()}")
        if w != plan.config.w:
            raise ValueError(f"w={w} differs from the plan's w={plan.config.w}")
        if not plan.can_coordinate(local_node):
            raise ValueError(
                f"{local_node!r} is not a live owner of the key (targets: "
                f"{', '.join(t.label() for t in plan.targets)}), so it cannot coordinate the put"
            )
        super().__init__(Operation.PUT, plan.targets, plan.preference_list, plan.config, w)
        self._local_node = local_node
        self._spares = list(plan.spares)
        self._replacements: dict[str, ReplicaTarget] = {}

    def on_ack(self, node_id: str, elapsed_ms: float) -> Outcome:
        """``node_id`` stored the write durably (fsynced); a fallback stored it as a hint."""
        return self._answer(node_id, ReplicaOutcome.ACKED, elapsed_ms)

    def on_failure(
        self, node_id: str, elapsed_ms: float, reason: str, *, definite: bool = False
    ) -> Outcome:
        """The write to ``node_id`` failed. ``definite=True`` only when the replica certainly did
        not store it (it refused before writing, or the connection was refused); a timeout or a
        call cut off midway may have stored it, so the default is False.

        In sloppy mode the next spare takes the failed target's place before the quorum is
        counted again (``replacement_for``), unless the put has already failed."""
        record = self._record_of(node_id)
        if (
            ReplicaOutcome.FAILED in REPLICA_TRANSITIONS[record.outcome]
            and self._spares
            and self._outcome is not Outcome.FAILED
        ):
            spare = self._spares.pop(0)
            replacement = ReplicaTarget(spare, hint_for=record.target.hint_for or node_id)
            self._records[spare] = _ReplicaRecord(replacement)
            self._replacements[node_id] = replacement
        return self._answer(
            node_id,
            ReplicaOutcome.FAILED,
            elapsed_ms,
            reason=_clip_reason(reason),
            definite=definite,
        )

    def replacement_for(self, node_id: str) -> ReplicaTarget | None:
        """The fallback that took the place of ``node_id`` when its write failed (Dynamo 4.6),
        holding a hint for the owner; None if none did (strict mode, no spare left)."""
        return self._replacements.get(node_id)

    def failure_kind(self) -> errors.ErrorKind:
        """The error table's entry for the failure: DEADLINE_EXCEEDED when the deadline decided
        it; otherwise NOT_ENOUGH_REPLICAS if definite (nothing was stored anywhere), else
        WRITE_QUORUM_NOT_REACHED (indefinite)."""
        if self.failure_is_deadline():
            return errors.DEADLINE_EXCEEDED
        if self.failure_is_definite():
            return errors.NOT_ENOUGH_REPLICAS
        return errors.WRITE_QUORUM_NOT_REACHED

    def hints_written(self) -> tuple[ReplicaTarget, ...]:
        """The fallbacks that acknowledged, each holding a hint for the owner it stands in for."""
        return tuple(
            record.target
            for record in self._records.values()
            if record.target.is_fallback and record.outcome is ReplicaOutcome.ACKED
        )

    def trace(self) -> Trace:
        return Trace(
            operation=Operation.PUT,
            config=self._config,
            coordinator=self._local_node,
            preference_list=self._preference_list,
            targets=tuple(record.target for record in self._records.values()),
            replicas=self._replica_traces(),
            outcome=self._outcome,
            decided_ms=self._decided_ms,
            decided_by_deadline=self._decided_by_deadline,
            failure=self._failure,
            hints_written=self.hints_written(),
            result=(),
            repairs=(),
        )

    def _failure_would_be_definite(self) -> bool:
        # Definite only if no target can have stored the write: none acknowledged, none is
        # still out (silence is not a no), and every failure was a certain one.
        return all(
            record.outcome is ReplicaOutcome.FAILED and record.definite
            for record in self._records.values()
        )

    def _describe_failure(self, elapsed_ms: float) -> str:
        message = super()._describe_failure(elapsed_ms)
        stored_on = [
            record.target.node_id
            for record in self._records.values()
            if record.outcome is ReplicaOutcome.ACKED
        ]
        if stored_on:
            message += (
                f"; the write is durable on {_names(stored_on)} and is not rolled back, so it "
                "may still be read later"
            )
        elif not self._failure_definite:
            message += "; a replica may have stored the write before failing or going silent"
        return message


class ReadTracker(_QuorumTracker):
    """Counts a get's replies against R (Dynamo 4.5), reconciles them, and plans read repair
    (Dynamo 5).

    SUCCEEDED at the R-th reply (a replica without the key replies too, with no versions);
    FAILED as soon as R can no longer be reached, or at the deadline while pending.
    """

    _COUNTED = ReplicaOutcome.REPLIED
    _VERB = "replied"

    def __init__(self, plan: ReadPlan, r: int) -> None:
        if not plan.achievable:
            raise ValueError(f"refuse the get instead of tracking it: {plan.refusal_message()}")
        if r != plan.config.r:
            raise ValueError(f"r={r} differs from the plan's r={plan.config.r}")
        super().__init__(Operation.GET, plan.targets, plan.preference_list, plan.config, r)
        self._result: tuple[Version, ...] = ()

    def on_reply(self, node_id: str, versions: tuple[Version, ...], elapsed_ms: float) -> Outcome:
        """``node_id`` replied with the versions it stores for the key (empty: none).

        Versions that conflict with those already seen (one dot, two contents: corruption, or a
        dot minted twice; see ``versioning``) make this reply count as a failure, with the
        conflict as its reason, so the tracker stays consistent and the conflict shows.
        """
        self._record_of(node_id)  # an unknown node is refused before anything else
        try:
            reply = reconcile(versions)
            merged = reconcile((*self._result, *reply))
        except VersionConflictError as error:
            return self._answer(
                node_id,
                ReplicaOutcome.FAILED,
                elapsed_ms,
                reason=_clip_reason(f"version conflict: {error}"),
            )
        outcome = self._answer(node_id, ReplicaOutcome.REPLIED, elapsed_ms, versions=reply)
        # After _answer, which refuses a second answer from the node before anything changes.
        self._result = merged
        return outcome

    def on_failure(self, node_id: str, elapsed_ms: float, reason: str) -> Outcome:
        """The read from ``node_id`` failed."""
        return self._answer(node_id, ReplicaOutcome.FAILED, elapsed_ms, reason=_clip_reason(reason))

    def result(self) -> tuple[Version, ...]:
        """The reconciliation of every reply so far: the siblings the client gets (4.4)."""
        return self._result

    def repairs(self) -> list[Repair]:
        """Read repair (Dynamo 5): for each owner that replied with a set other than ``result()``
        (older versions, or nothing), the reconciled set to send it. Fallbacks are not repaired
        (they are not replicas of the key), nor are targets that did not reply.

        Call once all targets answered (``all_answered``) or the stragglers' wait is over;
        earlier calls are safe but may miss a stale straggler.
        """
        wanted = tuple(version.dot for version in self._result)
        return [
            Repair(record.target.node_id, self._result)
            for record in self._records.values()
            if record.outcome is ReplicaOutcome.REPLIED
            and not record.target.is_fallback
            # Both sides are reconciled and in dot order; one dot is one version, so equal
            # dots mean equal sets (reconcile refused any conflict).
            and tuple(version.dot for version in record.versions) != wanted
        ]

    def failure_kind(self) -> errors.ErrorKind:
        """DEADLINE_EXCEEDED when the deadline decided the failure, else READ_QUORUM_NOT_REACHED."""
        if self.failure_is_deadline():
            return errors.DEADLINE_EXCEEDED
        return errors.READ_QUORUM_NOT_REACHED

    def trace(self) -> Trace:
        return Trace(
            operation=Operation.GET,
            config=self._config,
            coordinator=None,
            preference_list=self._preference_list,
            targets=tuple(record.target for record in self._records.values()),
            replicas=self._replica_traces(),
            outcome=self._outcome,
            decided_ms=self._decided_ms,
            decided_by_deadline=self._decided_by_deadline,
            failure=self._failure,
            hints_written=(),
            result=self._result,
            repairs=tuple(self.repairs()),
        )

    def _failure_would_be_definite(self) -> bool:
        return True  # a get changes nothing


def _describe_replica(record: _ReplicaRecord) -> str:
    notes = []
    if record.target.hint_for is not None:
        notes.append(f"fallback for {record.target.hint_for}")
    if record.reason is not None:
        notes.append(record.reason)
    return f"{record.target.node_id} ({'; '.join(notes)})" if notes else record.target.node_id


def _clip_reason(reason: str) -> str:
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, got {reason!r}")
    reason = reason.strip() or "no reason given"
    if len(reason) <= REASON_CHARS_MAX:
        return reason
    return reason[: REASON_CHARS_MAX - 3] + "..."


def _check_elapsed(elapsed_ms: float) -> None:
    if isinstance(elapsed_ms, bool) or not isinstance(elapsed_ms, int | float):
        raise TypeError(f"elapsed_ms must be a number, got {elapsed_ms!r}")
    if not (math.isfinite(elapsed_ms) and elapsed_ms >= 0):
        raise ValueError(f"elapsed_ms must be finite and >= 0, got {elapsed_ms}")


__all__ = [
    "N_DEFAULT",
    "N_MAX",
    "OUTCOME_TRANSITIONS",
    "REASON_CHARS_MAX",
    "REPLICA_TRANSITIONS",
    "R_DEFAULT",
    "WALK_NODES_MAX",
    "W_DEFAULT",
    "Operation",
    "Outcome",
    "QuorumConfig",
    "ReadPlan",
    "ReadTracker",
    "Repair",
    "ReplicaOutcome",
    "ReplicaTarget",
    "ReplicaTrace",
    "Trace",
    "WritePlan",
    "WriteTracker",
    "coordinator_for",
    "plan_read",
    "plan_write",
]
