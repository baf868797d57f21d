"""The shared benchmark runner and its histogram, driven by fake operations.

Counts are asserted on an injected clock that only the fake operations move, so they do not
depend on how busy the machine is; nothing here asserts a timing figure.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from distlab.bench import runner
from distlab.bench.histogram import (
    BUCKET_COUNT,
    LATENCY_NS_MAX,
    RELATIVE_PRECISION,
    SUB_BUCKET_COUNT,
    LatencyHistogram,
    bucket_bounds_ns,
    bucket_index,
    nearest_rank,
)
from distlab.bench.runner import (
    CONCURRENCY_MAX,
    BenchResult,
    BenchSpec,
    Operation,
    format_table,
    run_benchmark,
    throughput_ratio,
    write_json,
)

# A power of two, so that sums of steps are exact in binary floating point.
STEP_S = 1 / 1024


class ManualClock:
    """Seconds that move only when an operation says so."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def ticking_operation(
    clock: ManualClock, completions: list[float], fail: Callable[[int], Exception | None]
) -> Operation:
    """Each call takes one STEP_S of manual time, records its completion instant, and raises
    ``fail(call_number)`` if that is not None."""

    async def operation() -> None:
        await asyncio.sleep(0)
        clock.advance(STEP_S)
        completions.append(clock())
        failure = fail(len(completions))
        if failure is not None:
            raise failure

    return operation


def never_fails(_: int) -> Exception | None:
    return None


def spec(concurrency: int = 1, warmup_steps: int = 10, duration_steps: int = 100) -> BenchSpec:
    return BenchSpec(
        name="fake",
        concurrency=concurrency,
        duration_s=duration_steps * STEP_S,
        warmup_s=warmup_steps * STEP_S,
        parameters={"kind": "ticking"},
    )


def in_window(completions: list[float], warmup_steps: int = 10, duration_steps: int = 100) -> int:
    start, end = warmup_steps * STEP_S, (warmup_steps + duration_steps) * STEP_S
    return sum(1 for instant in completions if start <= instant < end)


@pytest.mark.asyncio
async def test_warm_up_is_excluded_and_the_window_is_exact() -> None:
    clock = ManualClock()
    completions: list[float] = []
    operation = ticking_operation(clock, completions, never_fails)

    result = await run_benchmark(spec(), lambda _: operation, clock=clock, progress=None)

    # Calls 1..9 complete in warm-up, 10..109 in the window, and call 110 ends it.
    assert len(completions) == 110
    assert result.operations == 100
    assert result.duration_s == 100 * STEP_S
    assert result.operations_per_s == 1024
    assert result.errors == {}
    step_ms = round(STEP_S * 1e9) / 1e6
    assert result.latency_ms == {
        "p50": step_ms,
        "p90": step_ms,
        "p99": step_ms,
        "p999": step_ms,
        "max": step_ms,
        "mean": step_ms,
    }
    assert result.notes == ()


@pytest.mark.asyncio
async def test_each_worker_gets_its_own_operation_and_only_window_completions_count() -> None:
    clock = ManualClock()
    completions: list[float] = []
    built: list[int] = []

    def make_operation(worker_index: int) -> Operation:
        built.append(worker_index)
        return ticking_operation(clock, completions, never_fails)

    result = await run_benchmark(spec(concurrency=8), make_operation, clock=clock, progress=None)

    assert built == list(range(8))
    assert result.concurrency == 8
    assert 0 < result.operations <= len(completions)
    assert result.operations == in_window(completions)


@pytest.mark.asyncio
async def test_errors_are_counted_by_type_and_the_workers_go_on() -> None:
    clock = ManualClock()
    completions: list[float] = []

    def fail(call: int) -> Exception | None:
        if call % 3 == 0:
            return ValueError("every third")
        if call % 5 == 0:
            return TimeoutError()
        return None

    operation = ticking_operation(clock, completions, fail)
    result = await run_benchmark(spec(), lambda _: operation, clock=clock, progress=None)

    window_calls = range(10, 110)  # call k completes at k * STEP_S
    value_errors = sum(1 for call in window_calls if call % 3 == 0)
    timeouts = sum(1 for call in window_calls if call % 3 != 0 and call % 5 == 0)
    assert result.errors == {"ValueError": value_errors, "TimeoutError": timeouts}
    assert result.operations == 100 - value_errors - timeouts
    assert not result.every_operation_failed


@pytest.mark.asyncio
async def test_when_every_operation_fails_the_result_says_so() -> None:
    clock = ManualClock()
    completions: list[float] = []
    operation = ticking_operation(clock, completions, lambda _: OSError("disk gone"))

    result = await run_benchmark(spec(), lambda _: operation, clock=clock, progress=None)

    assert result.every_operation_failed
    assert result.operations == 0
    assert result.errors == {"OSError": 100}
    assert result.latency_ms == {}
    assert any("every operation failed" in note for note in result.notes)
    assert "every operation failed" in format_table([result])
    assert result.to_json()["every_operation_failed"] is True


@pytest.mark.asyncio
async def test_error_names_carry_the_module_outside_builtins() -> None:
    class StoreError(Exception):
        pass

    clock = ManualClock()
    operation = ticking_operation(clock, [], lambda _: StoreError())
    result = await run_benchmark(spec(), lambda _: operation, clock=clock, progress=None)

    [name] = result.errors
    assert name.startswith(__name__)
    assert name.endswith("StoreError")


@pytest.mark.asyncio
async def test_no_task_is_left_behind_and_a_stuck_operation_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "DRAIN_S_MAX", 0.01)
    clock = ManualClock()
    never = asyncio.Event()
    cancelled: list[int] = []

    def make_operation(worker_index: int) -> Operation:
        async def operation() -> None:
            if worker_index == 0 and clock() >= 50 * STEP_S:
                try:
                    await never.wait()  # stuck: only cancellation gets it out
                finally:
                    cancelled.append(worker_index)
            await asyncio.sleep(0)
            clock.advance(STEP_S)

        return operation

    before = asyncio.all_tasks()
    result = await run_benchmark(spec(concurrency=3), make_operation, clock=clock, progress=None)

    assert asyncio.all_tasks() == before
    assert cancelled == [0]
    assert any("cancelled" in note for note in result.notes)


@pytest.mark.asyncio
async def test_an_operation_that_never_suspends_cannot_starve_the_loop() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1

    stream = io.StringIO()
    result = await run_benchmark(
        BenchSpec("busy", concurrency=2, duration_s=0.05, warmup_s=0.01, parameters={}),
        lambda _: operation,
        progress=stream,
        progress_interval_s=0.01,
    )

    assert 0 < result.operations <= calls
    assert "busy x2" in stream.getvalue()


@pytest.mark.asyncio
async def test_setup_runs_before_operations_are_built_and_teardown_always_runs() -> None:
    events: list[str] = []

    async def setup() -> None:
        events.append("setup")

    async def teardown() -> None:
        events.append("teardown")

    def broken_factory(worker_index: int) -> Operation:
        events.append(f"make {worker_index}")
        raise RuntimeError("cannot connect")

    with pytest.raises(RuntimeError, match="cannot connect"):
        await run_benchmark(
            spec(), broken_factory, setup=setup, teardown=teardown, clock=ManualClock()
        )
    assert events == ["setup", "make 0", "teardown"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream_kind", [io.StringIO, Terminal])
@pytest.mark.asyncio
async def test_progress_shows_elapsed_operations_rate_and_p99(
    stream_kind: Callable[[], io.StringIO],
) -> None:
    stream = stream_kind()

    async def operation() -> None:
        await asyncio.sleep(0)

    await run_benchmark(
        BenchSpec("tick", concurrency=1, duration_s=0.1, warmup_s=0.02, parameters={"n": 1}),
        lambda _: operation,
        progress=stream,
        progress_interval_s=0.01,
    )

    text = stream.getvalue()
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("tick n=1 x1 | 0.1/0.1 s |")  # the final update
    assert " ops | " in last
    assert " ops/s" in last
    assert "p99 " in last
    if stream_kind is Terminal:
        assert "\r" in text
        assert text.endswith("\n")
    else:
        assert "\r" not in text


@pytest.mark.parametrize(
    ("concurrency", "duration_s", "warmup_s"),
    [
        (0, 1.0, 0.0),
        (CONCURRENCY_MAX + 1, 1.0, 0.0),
        (1, 0.0, 0.0),
        (1, math.nan, 0.0),
        (1, runner.DURATION_S_MAX * 2, 0.0),
        (1, 1.0, -1.0),
        (1, 1.0, runner.WARMUP_S_MAX * 2),
    ],
)
def test_spec_rejects_out_of_range_values(
    concurrency: int, duration_s: float, warmup_s: float
) -> None:
    with pytest.raises(ValueError, match="must be"):
        BenchSpec("x", concurrency, duration_s, warmup_s, {})


# --- histogram -------------------------------------------------------------------------------


def exact_percentile(sorted_values: list[int], percentile: float) -> int:
    """Nearest rank, computed independently of the histogram's helper."""
    rank = max(1, math.ceil(Fraction(str(percentile)) * len(sorted_values) / 100))
    return sorted_values[rank - 1]


def test_nearest_rank_definition() -> None:
    assert nearest_rank(50, 4) == 2
    assert nearest_rank(0, 4) == 1
    assert nearest_rank(100, 4) == 4
    assert nearest_rank(99.9, 1000) == 999  # not 1000: 99.9 is read as 999/10
    assert nearest_rank(99.9, 1001) == 1000
    with pytest.raises(ValueError, match="between 0 and 100"):
        nearest_rank(101, 4)


def test_buckets_tile_the_range_without_gaps() -> None:
    expected_lowest = 0
    for index in range(BUCKET_COUNT):
        lowest, highest = bucket_bounds_ns(index)
        assert lowest == expected_lowest
        assert bucket_index(lowest) == index == bucket_index(highest)
        if lowest >= SUB_BUCKET_COUNT:
            assert Fraction(highest + 1 - lowest, lowest) <= RELATIVE_PRECISION
        expected_lowest = highest + 1
    assert bucket_bounds_ns(BUCKET_COUNT - 1)[0] <= LATENCY_NS_MAX <= expected_lowest - 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_the_documented_precision(seed: int) -> None:
    generator = random.Random(seed)
    # Log-uniform from 1 ns to 10 s, plus ties, so every bucket size is exercised.
    values = [int(10 ** generator.uniform(0, 10)) for _ in range(20_000)]
    values += [1_234_567] * 500
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    values.sort()

    for percentile in (0, 1, 25, 50, 90, 99, 99.9, 99.99, 100):
        exact = exact_percentile(values, percentile)
        reported = histogram.value_at_percentile(percentile)
        assert exact <= reported < exact * (1 + RELATIVE_PRECISION) or exact == reported, (
            f"seed {seed} p{percentile}: exact {exact}, reported {reported}"
        )
    assert histogram.count == len(values)
    assert histogram.min_ns == values[0]
    assert histogram.max_ns == values[-1]
    assert histogram.mean_ns == sum(values) / len(values)


def test_small_values_are_exact_and_huge_ones_saturate() -> None:
    histogram = LatencyHistogram()
    for value in (3, 7, 255):
        histogram.record(value)
    assert [histogram.value_at_percentile(p) for p in (0, 50, 100)] == [3, 7, 255]

    histogram.record(LATENCY_NS_MAX * 2)
    assert histogram.saturated_count == 1
    assert histogram.max_ns == LATENCY_NS_MAX * 2
    with pytest.raises(ValueError, match="negative"):
        histogram.record(-1)


# --- reporting -------------------------------------------------------------------------------


def sample_result(concurrency: int, operations_per_s: float) -> BenchResult:
    return BenchResult(
        name="wal",
        parameters={"fsync": "always", "payload_bytes": 100},
        concurrency=concurrency,
        duration_s=5.0,
        warmup_s=1.0,
        operations=int(operations_per_s * 5),
        errors={"OSError": 2} if concurrency > 1 else {},
        operations_per_s=operations_per_s,
        latency_ms={
            "p50": 1.5,
            "p90": 2.0,
            "p99": 3.25,
            "p999": 4.125,
            "max": 9.0,
            "mean": 1.75,
        },
        counters={"fsyncs": 1200, "appends_per_fsync": 12.5},
    )


def test_format_table_shows_every_column() -> None:
    table = format_table([sample_result(1, 400.0), sample_result(64, 9_000.0)])
    header, rule, first, second = table.splitlines()[:4]
    for column in ("name", "parameters", "concurrency", "ops/s", "p50 ms", "p99 ms", "p999 ms"):
        assert column in header
    assert "errors" in header
    assert "counters" in header
    assert set(rule) == {"-", " "}
    assert "fsync=always payload_bytes=100" in first
    assert "400" in first
    assert "1.500" in first
    assert "3.250" in first
    assert "4.125" in first
    assert "9,000" in second
    assert "OSError=2" in second
    assert "fsyncs=1200 appends_per_fsync=12.5" in second
    assert "nearest-rank" in table


def test_throughput_ratio() -> None:
    assert throughput_ratio(sample_result(64, 9_000.0), sample_result(1, 400.0)) == 22.5
    assert throughput_ratio(sample_result(64, 1.0), sample_result(1, 0.0)) == math.inf


def test_to_json_and_write_json(tmp_path: Path) -> None:
    result = sample_result(64, 9_000.0)
    assert set(result.to_json()) >= {
        "name",
        "parameters",
        "concurrency",
        "duration_s",
        "warmup_s",
        "operations",
        "operations_per_s",
        "errors",
        "latency_ms",
        "counters",
        "notes",
    }

    path = tmp_path / "nested" / "out.json"
    write_json([sample_result(1, 400.0), result], path)

    document = json.loads(path.read_text())
    assert document["benchmark"] == "wal"
    assert set(document["machine"]) == {"platform", "python", "cpu_count"}
    assert "T" in document["started_at"]
    assert [entry["concurrency"] for entry in document["results"]] == [1, 64]
    assert document["results"][1]["latency_ms"]["p999"] == 4.125


def drifting_operation(clock: ManualClock, cost_steps: int) -> Operation:
    """A call costing ``cost_steps`` steps on a machine that runs at half speed once the manual
    clock has passed 100 steps (a busy neighbour arriving halfway through a run)."""

    async def operation() -> None:
        await asyncio.sleep(0)
        slowdown = 2 if clock() >= 100 * STEP_S else 1
        clock.advance(cost_steps * slowdown * STEP_S)

    return operation


@pytest.mark.asyncio
async def test_interleaved_rows_see_the_same_drift() -> None:
    """Row b costs twice row a. Run one after the other, a runs before the slowdown and b after,
    so b looks four times slower; interleaved, both catch it alike and the ratio is 2."""
    clock = ManualClock()
    specs = [
        BenchSpec(name, concurrency=1, duration_s=100 * STEP_S, warmup_s=0.0) for name in ("a", "b")
    ]
    sequential = [
        await run_benchmark(specs[0], lambda _: drifting_operation(clock, 1), clock=clock,
                            progress=None),
        await run_benchmark(specs[1], lambda _: drifting_operation(clock, 2), clock=clock,
                            progress=None),
    ]  # fmt: skip
    assert throughput_ratio(sequential[0], sequential[1]) == pytest.approx(4, rel=0.1)

    clock.now_s = 0.0
    rows = [
        runner.Row(specs[0], lambda _: drifting_operation(clock, 1)),
        runner.Row(specs[1], lambda _: drifting_operation(clock, 2)),
    ]
    interleaved = await runner.run_interleaved(rows, rounds=10, clock=clock, progress=None)
    assert [result.name for result in interleaved] == ["a", "b"]
    assert throughput_ratio(interleaved[0], interleaved[1]) == pytest.approx(2, rel=0.15)
    assert interleaved[0].duration_s == specs[0].duration_s


@pytest.mark.asyncio
async def test_an_interleaved_rows_progress_rate_is_its_turns_own() -> None:
    """A row's recorder counts across its turns; the rate on each turn's progress line must
    not include the turns before it (it read 2x, then 3x the true rate)."""
    clock = ManualClock()
    stream = io.StringIO()
    row = runner.Row(
        BenchSpec("steady", concurrency=1, duration_s=300 * STEP_S, warmup_s=30 * STEP_S),
        lambda _: drifting_operation(clock, 1),
    )
    clock.advance(-1000 * STEP_S)  # stay below the drifting operation's slowdown at 100 steps
    await runner.run_interleaved([row], rounds=3, clock=clock, progress=stream,
                                 progress_interval_s=3600.0)  # fmt: skip
    rates = [
        float(rate.replace(",", "")) for rate in re.findall(r"([\d,.]+) ops/s", stream.getvalue())
    ]
    assert len(rates) >= 3  # at least each turn's final line
    for rate in rates:
        assert rate == pytest.approx(1 / STEP_S, rel=0.2)


@pytest.mark.asyncio
async def test_interleaved_rows_are_set_up_once_and_torn_down_even_on_failure() -> None:
    clock = ManualClock()
    events: list[str] = []

    async def setup() -> None:
        events.append("setup")

    async def teardown() -> None:
        events.append("teardown")

    def broken(_: int) -> Operation:
        raise RuntimeError("cannot make the operation")

    rows = [
        runner.Row(spec(), lambda _: drifting_operation(clock, 1), setup, teardown),
        runner.Row(spec(), broken),
    ]
    with pytest.raises(RuntimeError, match="cannot make"):
        await runner.run_interleaved(rows, rounds=3, clock=clock, progress=None)
    assert events == ["setup", "teardown"]
    with pytest.raises(ValueError, match="rounds"):
        await runner.run_interleaved(rows, rounds=0, clock=clock, progress=None)
