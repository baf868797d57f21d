"""Chaos checkers of the Dynamo-style store: what its quorums promise, checked on a history.

The workload (``distlab.kvstore.workload``) writes unique values, so every value read names the
put that wrote it, and records the causal context of each operation as a plain vector clock
({node: counter}): a write's request context (what its writer had seen), a read's context, and
the **dot** each acknowledged write minted (Preguiça et al. 2010). With dots the checker knows
causality exactly: write Q **supersedes** put P when Q's request context covers P's dot
(``versioning.obsoletes``). So the checks are:

1. **lost-writes** (always required). After the faults are healed, a final read at R=N of every
   key: each acknowledged put is in it (as the value or a sibling) unless a later write that
   may have happened (acknowledged or indefinite) superseded it. Dynamo 2007, section 4.4: a put
   must never silently disappear; only a causally later write may replace it. The same final
   read must hold no value that was never written (**phantom**) and no value that an
   acknowledged write superseded (**resurrected**: a deleted value that came back, the failure
   tombstones and their grace period exist to prevent).
2. **stale-reads** (required with a strict quorum and R + W > N). A read that starts after a
   write was acknowledged covers that write's dot: the W replicas that acknowledged it and the
   R that answer the read share one, which has the write durably (Dynamo 4.5's "R + W > N
   yields a quorum-like system"). A sloppy quorum (4.6) gives this up under partitions, when
   writes land on fallbacks that reads do not ask.
3. **convergence** (always required). After the run, every replica of a key holds the same
   versions (digest), and a key has N replicas: read repair (4.5), hinted handoff (4.6) and
   anti-entropy (4.7) each converge the replicas a fault left behind.
4. **linearizability** (informative unless required): each key as a register
   (``distlab.chaos.linearizability``). Dynamo quorums are not linearizable: a write that
   reached one replica before failing can be read and then un-read. The report shows where.

Pure: standard library and the pure chaos modules only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distlab.chaos import checkers
from distlab.chaos.checkers import Anomaly, CheckResult
from distlab.chaos.history import OBSERVER_PROCESS, Op, Operation, OpType, pair

Clock = Mapping[str, int]

LOST_WRITES = "lost-writes"
STALE_READS = "stale-reads"
CONVERGENCE = "convergence"
LINEARIZABILITY = "linearizability"
CHECK_NAMES = (LOST_WRITES, STALE_READS, CONVERGENCE, LINEARIZABILITY)

# What the workload and the harness call things in the history.
PUT, GET, DELETE = "put", "get", "delete"
REPLICA_STATE = "replica-state"


@dataclass(frozen=True, slots=True)
class KvCheckConfig:
    replicas: int = 3
    r: int = 2
    w: int = 2
    strict_quorum: bool = True
    require: frozenset[str] = frozenset()  # checks required beyond those the configuration promises
    informative: frozenset[str] = frozenset()  # checks the user demoted to informative
    # Tombstones may be collected this long after their delete (the nodes' setting); None: the
    # run is too short for any to be.
    tombstone_grace_ms: int | None = None

    def __post_init__(self) -> None:
        unknown = (self.require | self.informative) - set(CHECK_NAMES)
        if unknown:
            raise ValueError(f"unknown checks {sorted(unknown)}; the checks are {CHECK_NAMES}")

    def required(self, check: str) -> bool:
        if check in self.informative:
            return False
        if check in self.require:
            return True
        if check in (LOST_WRITES, CONVERGENCE):
            return True
        if check == STALE_READS:
            return self.strict_quorum and self.r + self.w > self.replicas
        return False


@dataclass(frozen=True, slots=True)
class Dot:
    node: str
    counter: int


def covers(clock: Clock, dot: Dot) -> bool:
    return clock.get(dot.node, 0) >= dot.counter


def _dot(data: Any) -> Dot | None:
    """A write's dot as the workload records it, [node, counter]; None if absent."""
    if not isinstance(data, list | tuple) or len(data) != 2 or not data[0]:
        return None
    return Dot(str(data[0]), int(data[1]))


@dataclass(frozen=True, slots=True)
class Write:
    operation: Operation
    value: str | None  # None: a delete
    context: Clock
    dot: Dot | None  # known for acknowledged writes only

    @property
    def acknowledged(self) -> bool:
        return self.operation.type is OpType.OK

    def describe(self) -> str:
        what = "delete" if self.value is None else f"put {self.value!r}"
        done = self.operation.complete_ns
        end = f"{done / 1e9:.3f} s" if done is not None else "never"
        return (
            f"{what} (op {self.operation.invoke.index}, process {self.operation.process}, "
            f"{self.operation.invoke_ns / 1e9:.3f}-{end}, {self.operation.type})"
        )


@dataclass(frozen=True, slots=True)
class Read:
    operation: Operation
    values: tuple[str, ...] | None  # None: not found
    context: Clock
    final: bool

    def describe(self) -> str:
        got = "not found" if self.values is None else list(self.values)
        done = self.operation.complete_ns or 0
        return (
            f"get (op {self.operation.invoke.index}, process {self.operation.process}, "
            f"{self.operation.invoke_ns / 1e9:.3f}-{done / 1e9:.3f} s) returned {got}"
        )


@dataclass
class KeyHistory:
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)

    def final_read(self) -> Read | None:
        finals = [read for read in self.reads if read.final]
        return finals[-1] if finals else None

    def superseders(self, dot: Dot, exclude: Write) -> list[Write]:
        """Writes that may have happened (not definitely failed) and supersede ``dot``."""
        return [
            write for write in self.writes if write is not exclude and covers(write.context, dot)
        ]


def _clock(data: Any) -> dict[str, int]:
    if not isinstance(data, Mapping):
        return {}
    return {str(node): int(counter) for node, counter in data.items()}


def by_key(operations: Sequence[Operation]) -> dict[str, KeyHistory]:
    keys: dict[str, KeyHistory] = defaultdict(KeyHistory)
    for operation in operations:
        if operation.key is None or operation.type is OpType.FAIL:
            continue
        invoke, completion = operation.invoke, operation.completion
        history = keys[operation.key]
        if operation.f in (PUT, DELETE):
            context = _clock(invoke.extra.get("context"))
            dot = None
            if operation.type is OpType.OK and completion is not None:
                dot = _dot(completion.extra.get("dot"))
            value = str(invoke.value) if operation.f == PUT else None
            history.writes.append(Write(operation, value, context, dot))
        elif operation.f == GET and operation.type is OpType.OK and completion is not None:
            values = completion.value
            history.reads.append(
                Read(
                    operation,
                    None if values is None else tuple(str(value) for value in values),
                    _clock(completion.extra.get("context")),
                    final=bool(invoke.extra.get("final")),
                )
            )
    return dict(keys)


def check_lost_writes(keys: Mapping[str, KeyHistory], required: bool) -> CheckResult:
    anomalies: list[Anomaly] = []
    acknowledged = undecided = 0
    for key, history in sorted(keys.items()):
        puts_by_value = {write.value: write for write in history.writes if write.value is not None}
        acked_puts = [w for w in history.writes if w.acknowledged and w.value is not None]
        acknowledged += len(acked_puts)
        final = history.final_read()
        if final is None:
            undecided += len(acked_puts)
            continue
        final_values = set(final.values or ())
        for put in acked_puts:
            if put.value in final_values:
                continue
            if put.dot is not None and history.superseders(put.dot, exclude=put):
                continue
            anomalies.append(
                Anomaly(
                    LOST_WRITES,
                    "lost-write",
                    key,
                    f"acknowledged {put.describe()} is missing from the final {final.describe()}"
                    ", and no later write superseded it",
                    (*put.operation.indexes, *final.operation.indexes),
                )
            )
        for value in sorted(final_values):
            write = puts_by_value.get(value)
            if write is None:
                anomalies.append(
                    Anomaly(
                        LOST_WRITES,
                        "phantom",
                        key,
                        f"the final {final.describe()} holds {value!r}, which no put wrote",
                        final.operation.indexes,
                    )
                )
                continue
            if write.dot is None:
                continue  # an indefinite put: its dot is unknown, so is what superseded it
            killers = [
                other
                for other in history.superseders(write.dot, exclude=write)
                if other.acknowledged
            ]
            if killers:
                anomalies.append(
                    Anomaly(
                        LOST_WRITES,
                        "resurrected",
                        key,
                        f"the final {final.describe()} holds {value!r} from {write.describe()}, "
                        f"which the acknowledged {killers[0].describe()} superseded",
                        (
                            *write.operation.indexes,
                            *killers[0].operation.indexes,
                            *final.operation.indexes,
                        ),
                    )
                )
    summary = (
        f"{sum(1 for a in anomalies if a.kind == 'lost-write')} of {acknowledged} acknowledged "
        f"puts lost; {sum(1 for a in anomalies if a.kind == 'resurrected')} resurrected, "
        f"{sum(1 for a in anomalies if a.kind == 'phantom')} phantom values"
        + (f"; {undecided} puts on keys with no final read (undecided)" if undecided else "")
    )
    return checkers.result(
        LOST_WRITES,
        required,
        anomalies,
        summary,
        undecided=undecided,
        counts={"acknowledged": acknowledged, "undecided": undecided},
    )


def check_stale_reads(
    keys: Mapping[str, KeyHistory], required: bool, tombstone_grace_ns: int | None = None
) -> CheckResult:
    anomalies: list[Anomaly] = []
    reads_checked = 0
    for key, history in sorted(keys.items()):
        acked = [w for w in history.writes if w.acknowledged and w.dot is not None]
        for read in history.reads:
            reads_checked += 1
            started = read.operation.invoke_ns
            seen: set[int] | None = None  # computed only when a direct test fails
            for write in acked:
                done = write.operation.complete_ns
                assert done is not None, "acknowledged writes have a completion"
                if done >= started or _sees_directly(read, write, tombstone_grace_ns):
                    continue
                if seen is None:
                    seen = _seen_writes(read, history, tombstone_grace_ns)
                if id(write) in seen:
                    continue
                anomalies.append(
                    Anomaly(
                        STALE_READS,
                        "stale-read",
                        key,
                        f"{read.describe()}, missing {write.describe()}, acknowledged "
                        f"{(started - done) / 1e6:.1f} ms before the read began",
                        (*write.operation.indexes, *read.operation.indexes),
                    )
                )
                break  # one stale write names the read; the rest would repeat it
    summary = f"{len(anomalies)} of {reads_checked} reads missed a write acknowledged before them"
    return checkers.result(
        STALE_READS, required, anomalies, summary, counts={"reads": reads_checked}
    )


def _sees_directly(read: Read, write: Write, tombstone_grace_ns: int | None) -> bool:
    """The read shows the write itself: its dot is in the read's context, its value among the
    read's values, or it is a delete and the read found nothing. A delete's tombstone may be
    collected once its grace period has passed, and its dot then leaves the key's history."""
    if read.values is None:
        return write.value is None
    if write.value is not None and write.value in read.values:
        return True
    if write.dot is not None and covers(read.context, write.dot):
        return True
    done = write.operation.complete_ns
    return (
        write.value is None
        and tombstone_grace_ns is not None
        and done is not None
        and read.operation.invoke_ns >= done + tombstone_grace_ns
    )


def _seen_writes(read: Read, history: KeyHistory, tombstone_grace_ns: int | None) -> set[int]:
    """The writes the read shows directly, or through a write that superseded them and may have
    taken effect before the read returned (ids of Write objects)."""
    read_done = read.operation.complete_ns or 0
    seen: set[int] = set()
    # A superseder saw what it supersedes, so it was invoked later: deciding the latest
    # writes first decides every write's superseders before the write itself.
    for write in sorted(history.writes, key=lambda w: w.operation.invoke_ns, reverse=True):
        if _sees_directly(read, write, tombstone_grace_ns) or (
            write.dot is not None
            and any(
                id(other) in seen and other.operation.invoke_ns <= read_done
                for other in history.superseders(write.dot, exclude=write)
            )
        ):
            seen.add(id(write))
    return seen


def check_convergence(ops: Sequence[Op], replicas: int, required: bool) -> CheckResult:
    """From the observer's last replica-state of each key: {node: digest or None}."""
    states: dict[str, Op] = {}
    for op in ops:
        if op.process == OBSERVER_PROCESS and op.f == REPLICA_STATE and op.key is not None:
            states[op.key] = op
    anomalies = []
    for key, op in sorted(states.items()):
        digests: Mapping[str, str | None] = op.value or {}
        held = {node: digest for node, digest in digests.items() if digest}
        wanted = min(replicas, len(digests))
        # Nothing anywhere is agreement too: a deleted key whose tombstones were collected.
        if held and (len(set(held.values())) > 1 or len(held) < wanted):
            anomalies.append(
                Anomaly(
                    CONVERGENCE,
                    "diverged",
                    key,
                    f"{op.extra.get('waited_s', '?')} s after the faults were healed the "
                    f"replicas of {key!r} still differ: "
                    + ", ".join(
                        f"{node}: {digest or 'nothing'}" for node, digest in digests.items()
                    )
                    + f" (want the same versions on {wanted} replicas)",
                    (op.index,),
                )
            )
    summary = f"{len(anomalies)} of {len(states)} keys with diverged replicas after the run"
    undecided = 0 if states else 1  # no observation: nothing to decide on
    return checkers.result(
        CONVERGENCE, required, anomalies, summary, undecided=undecided, counts={"keys": len(states)}
    )


def check(ops: Sequence[Op], config: KvCheckConfig) -> list[CheckResult]:
    operations = pair(ops)
    keys = by_key(operations)
    return [
        check_lost_writes(keys, config.required(LOST_WRITES)),
        check_stale_reads(
            keys,
            config.required(STALE_READS),
            None if config.tombstone_grace_ms is None else config.tombstone_grace_ms * 1_000_000,
        ),
        check_convergence(ops, config.replicas, config.required(CONVERGENCE)),
        checkers.linearizability(operations, config.required(LINEARIZABILITY)),
    ]
