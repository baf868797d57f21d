"""A fixed-size, log-bucketed latency histogram in the manner of HdrHistogram (Gil Tene).

The benchmark runner records one latency per completed operation. Keeping every sample would make
memory grow with the run (a 5 s run at 50 000 ops/s is 250 000 samples; an hour is 180 million),
so, like HdrHistogram (http://hdrhistogram.org), we count samples in buckets whose width grows
with the value: the relative error stays constant while the number of counters stays small.

Layout (a simplified HdrHistogram with one "unit" of 1 ns and 8 significant bits):

- values below ``SUB_BUCKET_COUNT`` (256 ns) each have their own counter, so they are exact;
- every later power-of-two range ``[2**k, 2**(k+1))`` is split into ``SUB_BUCKET_HALF_COUNT``
  (128) equal buckets, each ``2**(k - 7)`` ns wide.

A bucket's width is therefore at most 1/128 of its lowest value. Values are recorded in whole
nanoseconds up to ``LATENCY_NS_MAX`` (100 s) with 3 899 counters (about 30 KiB as Python ints in a
list). A longer latency is counted in the last bucket and reported in ``saturated_count``.

Percentiles use the nearest-rank definition: the p-th percentile of n samples is the smallest
recorded value v such that at least ``ceil(p / 100 * n)`` samples are <= v (so p50 of [1, 2, 3, 4]
is 2, and p100 is the maximum). The histogram answers with the highest value of the bucket that
holds that sample (HdrHistogram's "highest equivalent value"), clamped to the exact maximum seen.

Precision: if ``v`` is the exact nearest-rank percentile of the recorded samples, the reported
value ``r`` satisfies ``v <= r < v * (1 + 1/128)``, that is, it never understates and overstates by
less than 0.79 %; below 256 ns it is exact. The minimum, maximum and mean are exact.

Coordinated omission. Gil Tene's talk "How NOT to measure latency" shows that a load generator
that waits for each response before sending the next request (a closed loop) stops sending while
the system stalls, so a 1 s stall costs each worker one slow sample instead of the hundreds of
requests that would have queued up behind it: the high percentiles then understate what users
would see. HdrHistogram can back-fill the missing samples given an expected interval between
requests. distlab's runner *is* such a closed loop and does *not* correct for it, on purpose: its
questions are closed-loop questions ("how many appends per second do 64 waiting writers get
acknowledged, and how long does each wait?", the group commit question), not "what response time
does an open stream of requests at a given rate see?". Read a stall in the throughput and the
maximum, and do not read p99 here as a response time objective.
"""

from __future__ import annotations

import math
from fractions import Fraction

SIGNIFICANT_BITS = 8
"""Bits of each value kept exactly. 8 gives buckets under 0.8 % wide, which is finer than the
run-to-run noise of any benchmark here, for under four thousand counters."""

SUB_BUCKET_COUNT = 1 << SIGNIFICANT_BITS
SUB_BUCKET_HALF_COUNT = SUB_BUCKET_COUNT // 2

LATENCY_NS_MAX = 100 * 1_000_000_000
"""100 s: far above any operation a benchmark here should see; beyond it a run is measuring a hang,
and the exact maximum (kept separately) already tells that story."""

RELATIVE_PRECISION = Fraction(1, SUB_BUCKET_HALF_COUNT)
"""Upper bound of (reported - exact) / exact for any percentile; see the module docstring."""


def bucket_index(value_ns: int) -> int:
    """The counter that holds ``value_ns`` (0 <= value_ns <= LATENCY_NS_MAX)."""
    if value_ns < SUB_BUCKET_COUNT:
        return value_ns
    # Keep the top SIGNIFICANT_BITS bits: shift >= 1 here, and value_ns >> shift lies in
    # [SUB_BUCKET_HALF_COUNT, SUB_BUCKET_COUNT).
    shift = value_ns.bit_length() - SIGNIFICANT_BITS
    mantissa = value_ns >> shift
    return SUB_BUCKET_COUNT + (shift - 1) * SUB_BUCKET_HALF_COUNT + mantissa - SUB_BUCKET_HALF_COUNT


def bucket_bounds_ns(index: int) -> tuple[int, int]:
    """The lowest and highest value (inclusive) counted by counter ``index``; the inverse of
    ``bucket_index``."""
    if index < SUB_BUCKET_COUNT:
        return index, index
    shift, offset = divmod(index - SUB_BUCKET_COUNT, SUB_BUCKET_HALF_COUNT)
    shift += 1
    lowest = (offset + SUB_BUCKET_HALF_COUNT) << shift
    return lowest, lowest + (1 << shift) - 1


BUCKET_COUNT = bucket_index(LATENCY_NS_MAX) + 1


def nearest_rank(percentile: float, count: int) -> int:
    """The 1-based rank of the nearest-rank ``percentile`` among ``count`` sorted samples.

    The percentile goes through ``str`` so that 99.9 means 999/10 exactly: the binary float just
    beside it would, for 1000 samples, give rank 1000 instead of 999 if it were a hair above.
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be between 0 and 100, not {percentile}")
    if count < 1:
        raise ValueError("a percentile of no samples is undefined")
    return max(1, math.ceil(Fraction(str(percentile)) * count / 100))


class LatencyHistogram:
    """Counts latencies in nanoseconds; see the module docstring for the layout and precision."""

    __slots__ = ("_counts", "count", "max_ns", "min_ns", "saturated_count", "total_ns")

    def __init__(self) -> None:
        self._counts = [0] * BUCKET_COUNT
        self.count = 0
        self.total_ns = 0
        self.min_ns = 0
        self.max_ns = 0
        self.saturated_count = 0

    def record(self, value_ns: int) -> None:
        if value_ns < 0:
            raise ValueError(
                f"a latency cannot be negative ({value_ns} ns): is the clock monotonic?"
            )
        if value_ns > LATENCY_NS_MAX:
            self.saturated_count += 1
        self._counts[bucket_index(min(value_ns, LATENCY_NS_MAX))] += 1
        if self.count == 0 or value_ns < self.min_ns:
            self.min_ns = value_ns
        self.max_ns = max(self.max_ns, value_ns)
        self.count += 1
        self.total_ns += value_ns

    @property
    def mean_ns(self) -> float:
        if self.count == 0:
            raise ValueError("the mean of no samples is undefined")
        return self.total_ns / self.count

    def value_at_percentile(self, percentile: float) -> int:
        """The nearest-rank ``percentile`` (0..100) in nanoseconds, within ``RELATIVE_PRECISION``
        above the exact value (unless samples saturated)."""
        rank = nearest_rank(percentile, self.count)
        seen = 0
        for index, bucket_count in enumerate(self._counts):
            seen += bucket_count
            if seen >= rank:
                _, highest = bucket_bounds_ns(index)
                # The bucket's highest value can lie above every sample, and its lowest below:
                # the exact extremes are the tighter bounds.
                return max(self.min_ns, min(highest, self.max_ns))
        raise AssertionError(f"rank {rank} beyond the {self.count} samples counted")
