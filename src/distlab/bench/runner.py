"""The benchmark runner shared by every ``distlab bench`` workload.

A workload is a closed loop of async operations: ``concurrency`` workers each call their own
operation again as soon as the previous call returns. The runner owns everything else: warm-up,
a fixed measurement window, latency percentiles, error counts, a progress line, a human table and
JSON. It imports no gRPC; a gRPC workload simply supplies operations that make calls.

Theory of operation (``run_benchmark``):

1. ``setup()``, if given (not timed).
2. ``make_operation(i)`` for every worker ``i``, so each worker can own its state (a payload, a
   channel, a key range).
3. Fix the timeline from one clock reading: warm-up ``[start, start + warmup_s)``, then the
   measurement window ``[start + warmup_s, start + warmup_s + duration_s)``.
4. Start the workers. An operation belongs to the window in which it *completes*: its latency (or
   its error, counted by exception type) is recorded only if it completed inside the measurement
   window. Deciding by completion timestamp, rather than by a flag that the controller flips when
   it wakes up, keeps the window exact even when the event loop is late.
5. A worker stops by itself after its first operation that completes at or after the end of the
   window; the controller waits up to ``DRAIN_S_MAX`` for operations still in flight, then
   cancels the rest and waits for every task, so nothing is left pending.
6. ``teardown()``, if given, even when the run failed.

Errors are recorded, not raised: a worker whose operation raises continues with the next call.
Latency is recorded for successful operations only. If no operation succeeded in the window the
result says so in ``notes`` and its ``latency_ms`` is empty.

Being a closed loop, the runner suffers from coordinated omission; ``histogram.py`` explains why
and why that is acceptable for the questions distlab's benchmarks ask.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TextIO

from distlab.bench.histogram import RELATIVE_PRECISION, LatencyHistogram

Operation = Callable[[], Awaitable[None]]
"""One unit of work, awaited in a loop by one worker."""

OperationFactory = Callable[[int], Operation]
"""Builds the operation of worker ``i`` (0-based), called once per worker before the run."""

Hook = Callable[[], Awaitable[None]]
"""An async setup or teardown step, run outside the timed part."""

CONCURRENCY_MAX = 4096
"""Each worker is an asyncio task and usually holds a file handle, a channel or a stream. 4096 is
well beyond the concurrency any distlab system is designed for, and stops a typo such as 64000
from starting tens of thousands of tasks (and file descriptors) on a laptop."""

DURATION_S_MAX = 3600.0
"""An hour: longer runs are soak tests, which belong to the chaos harness."""

WARMUP_S_MAX = 600.0
"""Ten minutes covers filling caches and page caches of any data set a benchmark here builds."""

DRAIN_S_MAX = 2.0
"""How long operations still in flight when the window closes may take to finish before they are
cancelled. Letting them finish means the system under test sees normal completions rather than
cancellations mid-call (a cancelled append is an indefinite outcome, and noisy to tear down);
2 s is ample for any operation here and bounds how long a stuck one delays the report."""

YIELD_S_MIN = 0.005
"""A worker whose operation completes without ever suspending (a CPU-only fake, a synchronous
cache hit) would otherwise keep the event loop to itself: no other worker and no progress line
would run. Every 5 ms such a worker yields once; the cost is negligible for all others."""

PROGRESS_INTERVAL_S_TERMINAL = 1.0
"""On a terminal one line is rewritten in place, so it can refresh often."""

PROGRESS_INTERVAL_S_PIPE = 5.0
"""In a log or a CI transcript every refresh is a new line: every few seconds is enough."""

PERCENTILES: Mapping[str, float] = MappingProxyType(
    {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
)
"""The reported percentiles (nearest rank), by the key they have in ``latency_ms``."""

NANOSECONDS_PER_MILLISECOND = 1_000_000
NANOSECONDS_PER_SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """What to run: ``concurrency`` workers for ``warmup_s`` unrecorded, then ``duration_s``
    recorded. ``parameters`` describe the workload (for the table and the JSON); they must be
    JSON-serialisable or have a meaningful ``str``."""

    name: str
    concurrency: int
    duration_s: float
    warmup_s: float
    parameters: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a benchmark needs a name")
        if not 1 <= self.concurrency <= CONCURRENCY_MAX:
            raise ValueError(f"concurrency must be 1..{CONCURRENCY_MAX}, not {self.concurrency}")
        # The negated comparisons also reject NaN.
        if not 0 < self.duration_s <= DURATION_S_MAX:
            raise ValueError(f"duration must be in (0, {DURATION_S_MAX}] s, not {self.duration_s}")
        if not 0 <= self.warmup_s <= WARMUP_S_MAX:
            raise ValueError(f"warm-up must be in [0, {WARMUP_S_MAX}] s, not {self.warmup_s}")


@dataclass(frozen=True, slots=True)
class BenchResult:
    """The outcome of one run.

    ``duration_s`` is the length of the measurement window as read on the run's clock; since
    operations are assigned to the window by completion timestamp (see the module docstring) it is
    the denominator of ``operations_per_s`` whatever the controller's wake-up lateness.
    ``warmup_s`` is the unrecorded time before it.
    ``operations`` counts successful operations; ``errors`` counts failed ones by exception type.
    ``latency_ms`` holds p50, p90, p99, p999, max and mean of the successful operations, and is
    empty if there were none. ``counters`` are figures a workload adds after the run (for example
    the WAL's fsync count); ``notes`` are warnings a reader of the table should see.
    """

    name: str
    parameters: Mapping[str, object]
    concurrency: int
    duration_s: float
    warmup_s: float
    operations: int
    errors: Mapping[str, int]
    operations_per_s: float
    latency_ms: Mapping[str, float]
    counters: Mapping[str, int | float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def every_operation_failed(self) -> bool:
        return self.operations == 0 and self.error_count > 0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "parameters": dict(self.parameters),
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "operations": self.operations,
            "operations_per_s": self.operations_per_s,
            "errors": dict(self.errors),
            "every_operation_failed": self.every_operation_failed,
            "latency_ms": dict(self.latency_ms),
            "counters": dict(self.counters),
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class _Window:
    start: float
    end: float

    def contains(self, instant: float) -> bool:
        return self.start <= instant < self.end


class _Recorder:
    """What the workers share. asyncio runs them on one thread, so no lock is needed."""

    __slots__ = ("completed_total", "errors", "histogram")

    def __init__(self) -> None:
        self.histogram = LatencyHistogram()
        self.errors: Counter[str] = Counter()
        # Every completion, warm-up and drain included: only the progress line reads it.
        self.completed_total = 0

    @property
    def recorded(self) -> int:
        return self.histogram.count + self.errors.total()


def _error_name(error: BaseException) -> str:
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


async def _work(
    operation: Operation,
    window: _Window,
    recorder: _Recorder,
    clock: Callable[[], float],
) -> None:
    last_yield = clock()
    while True:
        started = clock()
        try:
            await operation()
        except Exception as error:
            finished = clock()
            if window.contains(finished):
                recorder.errors[_error_name(error)] += 1
        else:
            finished = clock()
            if window.contains(finished):
                recorder.histogram.record(round((finished - started) * NANOSECONDS_PER_SECOND))
        recorder.completed_total += 1
        if finished >= window.end:
            return
        if finished - last_yield >= YIELD_S_MIN:
            await asyncio.sleep(0)
            last_yield = clock()


class _ProgressLine:
    """Elapsed/total, operations so far, current operations per second and p99 so far."""

    def __init__(
        self,
        label: str,
        spec: BenchSpec,
        window: _Window,
        stream: TextIO | None,
        interval_s: float | None,
        completed_before: int = 0,
    ) -> None:
        self._label = label
        self._spec = spec
        self._window = window
        self._stream = stream
        self._terminal = stream is not None and stream.isatty()
        if interval_s is None:
            interval_s = (
                PROGRESS_INTERVAL_S_TERMINAL if self._terminal else PROGRESS_INTERVAL_S_PIPE
            )
        self.interval_s = interval_s
        self._last_time = window.start - spec.warmup_s
        # An interleaved row's recorder keeps counting across its turns; a rate is this turn's.
        self._last_completed = completed_before
        self._last_width = 0

    def update(self, now: float, recorder: _Recorder) -> None:
        if self._stream is None:
            return
        rate = (recorder.completed_total - self._last_completed) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_completed = now, recorder.completed_total
        if now < self._window.start:
            elapsed = self._spec.warmup_s - (self._window.start - now)
            phase = f"warm-up {elapsed:.1f}/{self._spec.warmup_s:.1f} s"
            operations = recorder.completed_total
        else:
            elapsed = min(now, self._window.end) - self._window.start
            phase = f"{elapsed:.1f}/{self._spec.duration_s:.1f} s"
            operations = recorder.recorded
        parts = [self._label, phase, f"{operations} ops", f"{rate:,.0f} ops/s"]
        if recorder.histogram.count:
            p99_ms = recorder.histogram.value_at_percentile(99) / NANOSECONDS_PER_MILLISECOND
            parts.append(f"p99 {p99_ms:.3f} ms")
        if recorder.errors:
            parts.append(f"{recorder.errors.total()} errors")
        self._write(" | ".join(parts))

    def finish(self) -> None:
        if self._stream is not None and self._terminal and self._last_width:
            self._stream.write("\n")
            self._stream.flush()

    def _write(self, line: str) -> None:
        assert self._stream is not None
        if self._terminal:
            # Pad with spaces so a shorter line fully covers the previous one.
            self._stream.write("\r" + line.ljust(self._last_width))
            self._last_width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def describe(name: str, parameters: Mapping[str, object], concurrency: int) -> str:
    """``wal fsync=always payload_bytes=100 x64``: one run, in one line."""
    words = [name, *(f"{key}={value}" for key, value in parameters.items()), f"x{concurrency}"]
    return " ".join(words)


async def _wait_for_window(
    tasks: Sequence[asyncio.Task[None]],
    window: _Window,
    recorder: _Recorder,
    clock: Callable[[], float],
    progress: _ProgressLine,
) -> None:
    next_progress = clock() + progress.interval_s
    while (now := clock()) < window.end:
        timeout = max(0.0, min(window.end, next_progress) - now)
        # Waiting on the tasks rather than sleeping returns early when every worker has stopped
        # (they stop by themselves at the end of the window, as read on the injected clock).
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        if not pending:
            break
        now = clock()
        if now >= next_progress:
            progress.update(now, recorder)
            next_progress = now + progress.interval_s
    progress.update(clock(), recorder)
    progress.finish()


async def _stop(tasks: Sequence[asyncio.Task[None]]) -> int:
    """Drain, then cancel; returns how many workers had to be cancelled."""
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_S_MAX)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            # Workers catch Exception, so this is a BaseException such as SystemExit.
            raise failure
    return len(pending)


def latency_ms(histogram: LatencyHistogram) -> dict[str, float]:
    if histogram.count == 0:
        return {}
    latency_ms = {
        key: histogram.value_at_percentile(percentile) / NANOSECONDS_PER_MILLISECOND
        for key, percentile in PERCENTILES.items()
    }
    latency_ms["max"] = histogram.max_ns / NANOSECONDS_PER_MILLISECOND
    latency_ms["mean"] = histogram.mean_ns / NANOSECONDS_PER_MILLISECOND
    return latency_ms


def _notes(recorder: _Recorder, cancelled: int) -> tuple[str, ...]:
    notes = []
    errors = recorder.errors.total()
    if recorder.histogram.count == 0 and errors:
        notes.append(f"every operation failed ({errors} errors): no latency to report")
    elif recorder.histogram.count == 0:
        notes.append("no operation completed during the measurement window")
    if recorder.histogram.saturated_count:
        notes.append(
            f"{recorder.histogram.saturated_count} latencies exceeded the histogram's range;"
            " percentiles near them are understated (max is exact)"
        )
    if cancelled:
        notes.append(
            f"{cancelled} operations still running {DRAIN_S_MAX} s after the end were cancelled"
        )
    return tuple(notes)


async def run_benchmark(
    spec: BenchSpec,
    make_operation: OperationFactory,
    *,
    setup: Hook | None = None,
    teardown: Hook | None = None,
    clock: Callable[[], float] = time.perf_counter,
    progress: TextIO | None = sys.stderr,
    progress_interval_s: float | None = None,
) -> BenchResult:
    """Run ``spec`` and return its result; see the module docstring for the recipe.

    ``clock`` returns monotonic seconds (a test can inject a manual one; the event loop's own
    timeouts still run on real time). ``progress`` receives the progress line (``None`` for
    silence); ``progress_interval_s`` defaults to 1 s on a terminal and 5 s otherwise.
    """
    if setup is not None:
        await setup()
    recorder = _Recorder()
    try:
        cancelled = await _run_window(
            spec, make_operation, recorder, clock, progress, progress_interval_s
        )
    finally:
        if teardown is not None:
            await teardown()
    return _result(spec, recorder, cancelled)


@dataclass(frozen=True, slots=True)
class Row:
    """One row of an interleaved run: what ``run_benchmark`` takes, as a value."""

    spec: BenchSpec
    make_operation: OperationFactory
    setup: Hook | None = None
    teardown: Hook | None = None


# run_interleaved's turns per row, for the benchmarks that offer --rounds: this machine's speed
# drifts by a third over minutes, and rows run one after the other would each catch a different
# moment.
ROUNDS_DEFAULT = 3
ROUNDS_MAX = 100


async def run_interleaved(
    rows: Sequence[Row],
    rounds: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
    progress: TextIO | None = sys.stderr,
    progress_interval_s: float | None = None,
) -> list[BenchResult]:
    """Run every row in ``rounds`` turns (row 1, row 2, ..., row 1, row 2, ...), each turn a
    ``rounds``-th of its duration and of its warm-up, and return one result per row, all its
    turns together. A machine whose speed drifts during the run (a shared CI host, a laptop
    throttling) then slows every row alike, so their ratio holds even when their absolute
    figures move: rows run one after the other would each catch a different moment."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    recorders = [_Recorder() for _ in rows]
    cancelled = [0] * len(rows)
    set_up: list[Row] = []
    try:
        for row in rows:
            if row.setup is not None:
                await row.setup()
            set_up.append(row)
        for _ in range(rounds):
            for index, row in enumerate(rows):
                turn = dataclasses.replace(
                    row.spec,
                    duration_s=row.spec.duration_s / rounds,
                    warmup_s=row.spec.warmup_s / rounds,
                )
                cancelled[index] += await _run_window(
                    turn, row.make_operation, recorders[index], clock, progress,
                    progress_interval_s,
                )  # fmt: skip
    finally:
        for row in reversed(set_up):
            if row.teardown is not None:
                await row.teardown()
    return [
        _result(row.spec, recorder, dropped)
        for row, recorder, dropped in zip(rows, recorders, cancelled, strict=True)
    ]


async def _run_window(
    spec: BenchSpec,
    make_operation: OperationFactory,
    recorder: _Recorder,
    clock: Callable[[], float],
    progress: TextIO | None,
    progress_interval_s: float | None,
) -> int:
    """Steps 2 to 5 of the recipe, recording into ``recorder``; how many operations had to be
    cancelled."""
    operations = [make_operation(index) for index in range(spec.concurrency)]
    started = clock()
    window = _Window(start=started + spec.warmup_s, end=started + spec.warmup_s + spec.duration_s)
    label = describe(spec.name, spec.parameters, spec.concurrency)
    progress_line = _ProgressLine(
        label, spec, window, progress, progress_interval_s, recorder.completed_total
    )
    tasks = [
        asyncio.create_task(_work(operation, window, recorder, clock), name=f"{label} #{index}")
        for index, operation in enumerate(operations)
    ]
    try:
        await _wait_for_window(tasks, window, recorder, clock, progress_line)
        return await _stop(tasks)
    finally:
        # Only reached with tasks still running if the run itself was cancelled or failed.
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


def _result(spec: BenchSpec, recorder: _Recorder, cancelled: int) -> BenchResult:
    return result_of(
        spec, recorder.histogram, dict(recorder.errors), notes=_notes(recorder, cancelled)
    )


def result_of(
    spec: BenchSpec,
    histogram: LatencyHistogram,
    errors: Mapping[str, int],
    *,
    counters: Mapping[str, int | float] | None = None,
    notes: tuple[str, ...] = (),
) -> BenchResult:
    """The result of a run of ``spec`` that recorded ``histogram`` over its whole window and
    failed ``errors`` times by type. Runners outside this module (``bench.cache``'s threads)
    build theirs with it too."""
    return BenchResult(
        name=spec.name,
        parameters=dict(spec.parameters),
        concurrency=spec.concurrency,
        duration_s=spec.duration_s,
        warmup_s=spec.warmup_s,
        operations=histogram.count,
        errors=dict(errors),
        operations_per_s=histogram.count / spec.duration_s,
        latency_ms=latency_ms(histogram),
        counters=dict(counters or {}),
        notes=notes,
    )


def throughput_ratio(result: BenchResult, baseline: BenchResult) -> float:
    """How many times the operations per second of ``baseline`` ``result`` reached (inf if the
    baseline completed nothing)."""
    if baseline.operations_per_s == 0:
        return math.inf
    return result.operations_per_s / baseline.operations_per_s


def _format_ms(latency_ms: Mapping[str, float], key: str) -> str:
    return f"{latency_ms[key]:.3f}" if key in latency_ms else "-"


def _format_errors(errors: Mapping[str, int]) -> str:
    if not errors:
        return "0"
    return " ".join(f"{name}={count}" for name, count in sorted(errors.items()))


def _format_counters(counters: Mapping[str, int | float]) -> str:
    return " ".join(
        f"{name}={value:.1f}" if isinstance(value, float) else f"{name}={value}"
        for name, value in counters.items()
    )


TABLE_HEADERS = (
    "name",
    "parameters",
    "concurrency",
    "ops/s",
    "p50 ms",
    "p99 ms",
    "p999 ms",
    "errors",
)
TABLE_LEFT_ALIGNED = frozenset({"name", "parameters", "errors", "counters"})


def format_table(results: Sequence[BenchResult]) -> str:
    """A plain-text table, one row per result, then each result's notes.

    A ``counters`` column appears when any result has counters.
    """
    headers = list(TABLE_HEADERS)
    show_counters = any(result.counters for result in results)
    if show_counters:
        headers.append("counters")
    rows = []
    for result in results:
        row = [
            result.name,
            " ".join(f"{key}={value}" for key, value in result.parameters.items()),
            str(result.concurrency),
            f"{result.operations_per_s:,.0f}",
            _format_ms(result.latency_ms, "p50"),
            _format_ms(result.latency_ms, "p99"),
            _format_ms(result.latency_ms, "p999"),
            _format_errors(result.errors),
        ]
        if show_counters:
            row.append(_format_counters(result.counters))
        rows.append(row)
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        aligned = (
            cell.ljust(width) if header in TABLE_LEFT_ALIGNED else cell.rjust(width)
            for cell, width, header in zip(cells, widths, headers, strict=True)
        )
        return "  ".join(aligned).rstrip()

    lines = [line(headers), line(["-" * width for width in widths])]
    lines.extend(line(row) for row in rows)
    for result in results:
        lines.extend(
            f"note: {describe(result.name, result.parameters, result.concurrency)}: {note}"
            for note in result.notes
        )
    lines.append(
        f"latencies: nearest-rank percentiles, at most {float(RELATIVE_PRECISION):.2%} above exact"
    )
    return "\n".join(lines)


def machine_description() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def write_json(
    results: Sequence[BenchResult],
    path: Path,
    *,
    benchmark: str | None = None,
    started_at: datetime | None = None,
) -> None:
    """Write ``{"benchmark", "machine", "started_at", "results"}`` to ``path``, creating its parent
    directory. ``benchmark`` defaults to the results' names; ``started_at`` to now."""
    if benchmark is None:
        benchmark = ",".join(dict.fromkeys(result.name for result in results))
    if started_at is None:
        started_at = datetime.now(UTC)
    document = {
        "benchmark": benchmark,
        "machine": machine_description(),
        "started_at": started_at.isoformat(),
        "results": [result.to_json() for result in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # default=str: parameters may hold a Path or an Enum; their str is what a reader wants.
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
