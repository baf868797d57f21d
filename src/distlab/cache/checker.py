"""Chaos checkers of the cache cluster, in front of a backing store (issue 7, item 6).

The workload (``distlab.cache.workload``) is cache-aside, as "Scaling Memcache at Facebook"
(NSDI 2013, 3.2) runs it: a **write** updates the backing store, which gives the key its next
version, and then deletes the key in the cache; a **read** is ``get_or_load``: a hit, or a
miss filled from the backing store under a lease. Values are ``"<key>@<version>"``, so every
value read names the write it came from; version 0 is the value every key starts with.

The checks:

1. **phantom-values** (always required): a read never returns a value that was not written for
   its key. A cache that mixed up keys, or kept half of a value, shows here.
2. **stale-reads** (required; with leases off, the run is the negative control that must fail):
   after a write's invalidation was acknowledged, a read that begins at least ``grace_ms`` later
   returns that write's version or a newer one. With leases, a value set at the key's owner
   after the delete was loaded under a lease granted after it (the delete invalidated every
   older lease, 3.2.1), so only bounded leftovers can be stale: a stale value a waiting reader
   may take (``stale_ms``), a copy on a stand-in node the delete could not reach (the failover
   TTL, Gutter's rule of 3.3), and a load another reader in the same client began earlier and
   shares (the slowest load plus one call). ``grace_ms`` is the longest of these; the
   workload's system computes it. Without leases a slow reader puts its old value back after
   the delete and it stays there until the next write: stale, for as long as nobody writes.
3. **read-errors** (always required): ``get_or_load`` never fails while the backing store
   works. A dead, paused or unreachable cache node costs hits, not errors.

The counts say how reads were served (hit, stale, loaded, shared), which is how a reader of the
report sees a killed node turn hits into loads.

Pure: standard library and the pure chaos modules only.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from distlab.chaos import checkers
from distlab.chaos.checkers import Anomaly, CheckResult
from distlab.chaos.history import Op, Operation, OpType, pair

READ = "read"
WRITE = "write"
# How a read was served, as the workload records it (``extra["source"]``).
SOURCES = ("hit", "stale", "loaded", "shared", "uncached")
STALE_READS = "stale-reads"
PHANTOM_VALUES = "phantom-values"
READ_ERRORS = "read-errors"


@dataclass(frozen=True, slots=True)
class CacheCheckConfig:
    grace_ms: int
    require: frozenset[str] = frozenset()
    informative: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.grace_ms < 0:
            raise ValueError("grace_ms must be >= 0")

    def required(self, name: str) -> bool:
        return name not in self.informative or name in self.require


def value_of(key: str, version: int) -> str:
    """The value the workload writes for ``key`` at ``version``."""
    return f"{key}@{version}"


def parse_value(value: object) -> tuple[str, int] | None:
    """(key, version) of a value written by the workload, or None for anything else."""
    if not isinstance(value, str) or "@" not in value:
        return None
    key, _, version = value.rpartition("@")
    if not version.isdigit():
        return None
    return key, int(version)


@dataclass(slots=True)
class _KeyWrites:
    """One key's writes: every version invoked, and the acknowledged invalidations in the
    order of their acknowledgement, with the newest version acknowledged by each time."""

    invoked: set[int] = field(default_factory=lambda: {0})
    acked_ns: list[int] = field(default_factory=list)
    newest_acked: list[tuple[int, Operation]] = field(default_factory=list)


def _writes_by_key(operations: Sequence[Operation]) -> dict[str, _KeyWrites]:
    keys: dict[str, _KeyWrites] = defaultdict(_KeyWrites)
    acked: list[tuple[int, str, int, Operation]] = []
    for operation in operations:
        if operation.f != WRITE or operation.key is None:
            continue
        parsed = parse_value(operation.invoke.value)
        if parsed is None:
            continue
        keys[operation.key].invoked.add(parsed[1])
        completion = operation.completion
        if operation.type is OpType.OK and completion is not None:
            acked.append((completion.time_ns, operation.key, parsed[1], operation))
    for time_ns, key, version, operation in sorted(acked, key=lambda item: item[0]):
        writes = keys[key]
        newest = writes.newest_acked[-1] if writes.newest_acked else None
        writes.acked_ns.append(time_ns)
        writes.newest_acked.append(
            newest if newest is not None and newest[0] >= version else (version, operation)
        )
    return keys


def _reads(operations: Sequence[Operation]) -> list[Operation]:
    return [operation for operation in operations if operation.f == READ]


def check_phantoms(
    reads: Sequence[Operation], writes: dict[str, _KeyWrites], required: bool
) -> CheckResult:
    anomalies = []
    checked = 0
    for read in reads:
        if read.type is not OpType.OK or read.key is None:
            continue
        checked += 1
        parsed = parse_value(read.result)
        written = writes[read.key].invoked if read.key in writes else {0}
        if parsed is None or parsed[0] != read.key or parsed[1] not in written:
            anomalies.append(
                Anomaly(
                    check=PHANTOM_VALUES,
                    kind="phantom",
                    key=read.key,
                    message=f"read {read.result!r}, which no write put under {read.key!r}",
                    ops=read.indexes,
                )
            )
    return checkers.result(
        PHANTOM_VALUES,
        required,
        anomalies,
        f"{len(anomalies)} of {checked} reads returned a value never written for their key",
        counts={"reads": checked, "phantoms": len(anomalies)},
    )


def check_stale_reads(
    reads: Sequence[Operation], writes: dict[str, _KeyWrites], grace_ms: int, required: bool
) -> CheckResult:
    """Each read against the newest version whose invalidation was acknowledged at least
    ``grace_ms`` before the read began (a binary search in the key's acknowledgement times)."""
    grace_ns = grace_ms * 1_000_000
    anomalies = []
    within_grace = checked = 0
    for read in reads:
        parsed = parse_value(read.result)
        if read.type is not OpType.OK or read.key is None or parsed is None:
            continue
        writes_of_key = writes.get(read.key)
        if writes_of_key is None or not writes_of_key.acked_ns:
            continue
        checked += 1
        version = parsed[1]
        settled = bisect.bisect_right(writes_of_key.acked_ns, read.invoke_ns - grace_ns)
        if settled and writes_of_key.newest_acked[settled - 1][0] > version:
            newest, write = writes_of_key.newest_acked[settled - 1]
            source = read.completion.extra.get("source") if read.completion else None
            anomalies.append(
                Anomaly(
                    check=STALE_READS,
                    kind="stale-read",
                    key=read.key,
                    message=(
                        f"read version {version} ({source}), but version {newest}'s "
                        f"invalidation was acknowledged more than {grace_ms} ms before it began"
                    ),
                    ops=(*write.indexes, *read.indexes),
                )
            )
            continue
        # What the grace hides, for the reader: stale answers soon after an invalidation.
        everything = bisect.bisect_right(writes_of_key.acked_ns, read.invoke_ns)
        if everything and writes_of_key.newest_acked[everything - 1][0] > version:
            within_grace += 1
    return checkers.result(
        STALE_READS,
        required,
        anomalies,
        f"{len(anomalies)} of {checked} reads older than an invalidation acknowledged "
        f"{grace_ms} ms or more before they began; {within_grace} within the grace",
        counts={"reads": checked, "stale": len(anomalies), "stale_within_grace": within_grace},
    )


def check_read_errors(reads: Sequence[Operation], required: bool) -> CheckResult:
    anomalies = [
        Anomaly(
            check=READ_ERRORS,
            kind="read-error",
            key=read.key,
            message=f"get_or_load failed: {_error_of(read)}",
            ops=read.indexes,
        )
        for read in reads
        if read.type is not OpType.OK
    ]
    counts = {"reads": len(reads), "errors": len(anomalies)}
    for source in SOURCES:
        counts[source] = sum(
            1
            for read in reads
            if read.type is OpType.OK
            and read.completion is not None
            and read.completion.extra.get("source") == source
        )
    return checkers.result(
        READ_ERRORS,
        required,
        anomalies,
        f"{len(anomalies)} of {len(reads)} reads failed; served: "
        + ", ".join(f"{counts[source]} {source}" for source in SOURCES),
        counts=counts,
    )


def _error_of(operation: Operation) -> str:
    completion = operation.completion
    return str(completion.error) if completion is not None else "it never ended"


def check(ops: Sequence[Op], config: CacheCheckConfig) -> list[CheckResult]:
    operations = pair(ops)
    writes = _writes_by_key(operations)
    reads = _reads(operations)
    return [
        check_phantoms(reads, writes, config.required(PHANTOM_VALUES)),
        check_stale_reads(reads, writes, config.grace_ms, config.required(STALE_READS)),
        check_read_errors(reads, config.required(READ_ERRORS)),
    ]
