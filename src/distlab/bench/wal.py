"""``distlab bench wal``: acknowledged appends per second of the write-ahead log, per fsync policy
and number of concurrent writers.

The question it answers is the one group commit exists for. With ``fsync=always`` an append is
acknowledged only once it is durable, and one fsync costs a fixed time (hundreds of microseconds
on an SSD, milliseconds on a disk or a cloud volume) whatever the number of records it covers. One
writer therefore gets at most one append per fsync; N concurrent writers, whose appends
``distlab.common.group_commit`` lets share each fsync (DeWitt et al., SIGMOD 1984), should get
many appends per fsync. The issue asks 64 writers to reach at least 10x the acknowledged appends
per second of 1 writer; this workload prints that ratio.

Each run gets a fresh log in its own temporary directory, always removed afterwards. Each worker
appends a payload of its own (``--payload-bytes``) and waits for the acknowledgement: a closed loop,
see ``histogram.py`` on what that means for the percentiles. Reading ``fsyncs`` and
``appends_per_fsync`` in the table: they cover the whole run, warm-up and drain included (the log
counts fsyncs, not when they happened), but not the fsyncs of opening and closing the log.

Under ``fsync=interval`` and ``fsync=never`` an append never waits for the disk: the figure is the
cost of one ``write`` into the page cache plus the committer's bookkeeping, and these appends
complete without suspending, so the runner's periodic yield is what lets the writers take turns.
At those rates a 64 MiB segment fills every few seconds (about 580 000 records of 100 bytes), and
each rotation costs two fsyncs, which is where their few fsyncs come from.

What it leaves out: reading the log back, recovery time, and isolating the cost of rotation.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from distlab.bench.runner import BenchResult, BenchSpec, Operation, run_benchmark, throughput_ratio
from distlab.common.group_commit import AsyncGroupCommitter
from distlab.common.limits import VALUE_BYTES_MAX_DEFAULT
from distlab.common.wal_file import FsyncPolicy, WalOptions, WriteAheadLog

BENCHMARK_NAME = "wal"

WRITERS_DEFAULT = (1, 64)
FSYNC_POLICIES_DEFAULT = (FsyncPolicy.ALWAYS,)
PAYLOAD_BYTES_DEFAULT = 100
"""About the size of a small key-value record (a short key, a short value and a version)."""
DURATION_S_DEFAULT = 5.0
WARMUP_S_DEFAULT = 1.0

PAYLOAD_BYTES_MAX = VALUE_BYTES_MAX_DEFAULT
"""1 MiB, the largest value the key-value store accepts by default: the largest record distlab
writes. Each writer holds its own payload, so this also caps the memory of a run (64 MiB at 64
writers)."""

RUNS_MAX = 32
"""Runs are sequential and each takes warm-up plus duration; 32 runs of the default 6 s is already
three minutes. A longer sweep is a script, not one command."""


@dataclass(frozen=True, slots=True)
class WalBenchSettings:
    writers_counts: tuple[int, ...] = WRITERS_DEFAULT
    fsync_policies: tuple[FsyncPolicy, ...] = FSYNC_POLICIES_DEFAULT
    payload_bytes: int = PAYLOAD_BYTES_DEFAULT
    duration_s: float = DURATION_S_DEFAULT
    warmup_s: float = WARMUP_S_DEFAULT
    directory: Path | None = None
    """Where the temporary log directories go; None for the system's temporary directory. The
    figures are those of this directory's file system: tmpfs makes fsync free."""

    def __post_init__(self) -> None:
        if not self.writers_counts or not self.fsync_policies:
            raise ValueError("give at least one writers count and one fsync policy")
        if len(self.writers_counts) * len(self.fsync_policies) > RUNS_MAX:
            raise ValueError(f"at most {RUNS_MAX} runs (writers counts x fsync policies)")
        if not 1 <= self.payload_bytes <= PAYLOAD_BYTES_MAX:
            raise ValueError(f"payload must be 1..{PAYLOAD_BYTES_MAX} bytes")
        # The runner's BenchSpec checks writers counts and durations.


class WalWorkload:
    """One run: a log opened in ``setup``, one append loop per writer, closed in ``teardown``."""

    def __init__(self, directory: Path, policy: FsyncPolicy, payload_bytes: int) -> None:
        self._directory = directory
        self._policy = policy
        self._payload_bytes = payload_bytes
        self._log: WriteAheadLog | None = None
        self._committer: AsyncGroupCommitter | None = None
        self.appends_total = 0
        # fsync_count at the end of setup and before the log's final close: the fsyncs that the
        # appends caused, without the directory fsyncs of opening and the sync of closing.
        self._fsyncs_at_start = 0
        self._fsyncs_at_end = 0

    async def setup(self) -> None:
        # Opening creates files (blocking I/O): off the event loop, though nothing runs yet.
        log, _ = await asyncio.to_thread(
            WriteAheadLog.open, self._directory, WalOptions(fsync_policy=self._policy)
        )
        self._log = log
        self._committer = AsyncGroupCommitter(log)
        self._fsyncs_at_start = log.fsync_count

    def make_operation(self, worker_index: int) -> Operation:
        committer = self._committer
        assert committer is not None, "setup() builds the committer before operations are made"
        # A payload per writer, so records can be told apart in a hex dump of the segment.
        payload = bytes([worker_index % 256]) * self._payload_bytes

        async def append() -> None:
            await committer.append(payload)
            self.appends_total += 1

        return append

    async def teardown(self) -> None:
        if self._committer is not None:
            await self._committer.close()
        if self._log is not None:
            self._fsyncs_at_end = self._log.fsync_count
            await asyncio.to_thread(self._log.close)

    def counters(self) -> dict[str, int | float]:
        fsyncs = self._fsyncs_at_end - self._fsyncs_at_start
        counters: dict[str, int | float] = {"fsyncs": fsyncs}
        if fsyncs:
            counters["appends_per_fsync"] = self.appends_total / fsyncs
        return counters


async def run_one(
    settings: WalBenchSettings, policy: FsyncPolicy, writers: int, progress: TextIO | None
) -> BenchResult:
    spec = BenchSpec(
        name=BENCHMARK_NAME,
        concurrency=writers,
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        parameters={"fsync": policy.value, "payload_bytes": settings.payload_bytes},
    )
    with tempfile.TemporaryDirectory(
        prefix="distlab-bench-wal-", dir=settings.directory
    ) as directory:
        workload = WalWorkload(Path(directory), policy, settings.payload_bytes)
        result = await run_benchmark(
            spec,
            workload.make_operation,
            setup=workload.setup,
            teardown=workload.teardown,
            progress=progress,
        )
    return replace(result, counters=workload.counters())


async def run_wal_benchmarks(
    settings: WalBenchSettings, *, progress: TextIO | None
) -> list[BenchResult]:
    """Every fsync policy with every writers count, one after the other."""
    return [
        await run_one(settings, policy, writers, progress)
        for policy in settings.fsync_policies
        for writers in settings.writers_counts
    ]


def group_commit_lines(results: Sequence[BenchResult]) -> list[str]:
    """Per fsync policy run with several writers counts, the most writers against the fewest:
    "group commit: 64 writers reach 23.4x the appends/s of 1 writer (fsync=always)". Only
    ``always`` has fsyncs to share; for the other policies the line says ``fsync=...:`` instead."""
    lines = []
    policies = dict.fromkeys(str(result.parameters["fsync"]) for result in results)
    for policy in policies:
        runs = [result for result in results if result.parameters["fsync"] == policy]
        fewest = min(runs, key=lambda result: result.concurrency)
        most = max(runs, key=lambda result: result.concurrency)
        if fewest.concurrency == most.concurrency:
            continue
        ratio = throughput_ratio(most, fewest)
        writer_or_writers = "writer" if fewest.concurrency == 1 else "writers"
        comparison = (
            f"{most.concurrency} writers reach {ratio:.1f}x the appends/s of "
            f"{fewest.concurrency} {writer_or_writers}"
        )
        if policy == FsyncPolicy.ALWAYS.value:
            lines.append(f"group commit: {comparison} (fsync={policy})")
        else:
            lines.append(f"fsync={policy}: {comparison}")
    return lines
