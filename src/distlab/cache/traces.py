"""Access traces and hit-ratio simulation for the eviction policies, with Belady's optimum.

Implements:
- Zipf traces: key of rank r drawn with probability proportional to 1 / r**alpha, the skew that
  web and storage traces show (Breslau et al., "Web Caching and Zipf-like Distributions",
  INFOCOM 1999, measured alpha between about 0.6 and 0.8), drawn by inverse transform sampling:
  a uniform draw located in the cumulative table by binary search.
- Trace replay: each key is a hit if the policy holds it, otherwise a miss and an insert, so
  LRU and W-TinyLFU (`distlab.cache.policy`) can be compared on the same trace.
- Belady's optimal offline policy (Belady, "A study of replacement algorithms for a
  virtual-storage computer", IBM Systems Journal 5(2), 1966; the MIN algorithm): on a miss with
  a full cache, evict the key whose next use is farthest in the future (or never). It needs the
  whole future, so it is a bound to print next to real policies, not a policy.

Theory of operation (OPT):
- One backward pass computes next_use[i], the index of the next access to trace[i]'s key, or
  len(trace) for never. Each held key sits in a max-heap by its next use, so the victim is the
  top. Deletion is lazy: when a key is accessed again, its entry is superseded by a new one
  and left in the heap. A superseded entry holds the index at which its key was used again,
  which is now past, while every held key's entry points to the future, so a superseded entry
  sinks and never reaches the top while the cache holds a key: the lazy deletion never even has
  to pop (asserted). Each access pushes at most one entry, so the run is O(n log n).
- Bypass: W-TinyLFU may refuse a new key, which demand paging (Belady's setting, every missed
  page is loaded) may not; a cache that may refuse can beat demand-paging MIN (with one slot,
  on A B A B ... it keeps A and hits half the time, where MIN loads each key and never hits).
  So by default the newcomer competes too: if its own next use is the farthest, it is not
  admitted. That is the optimum for caches that may refuse, so an upper bound for LRU and
  W-TinyLFU alike. `bypass=False` gives the textbook demand-paging MIN.

Leaves out: weights (OPT counts items; with unequal weights the offline optimum is NP-hard), trace
formats other than one key per line, and opening files (the caller passes the lines).
"""

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from distlab.cache.policy import EvictionPolicy

# A trace is held in memory as a list of key objects (about 40 bytes each for short keys), so
# 4 Mi accesses is about 170 MB, and replaying one in pure Python already takes tens of seconds.
TRACE_LENGTH_MAX = 1 << 22
# The cumulative table costs a float object per key (about 32 bytes): 1 Mi keys is 32 MB, ten
# times the benchmark's key space.
ZIPF_KEYS_MAX = 1 << 20
# Measured workloads sit between about 0.5 and 1.5; past 10 nearly every draw is rank 1.
ZIPF_ALPHA_MAX = 10.0


@dataclass(frozen=True, slots=True)
class HitStats:
    """Hits and misses of one replay of a trace."""

    hits: int
    misses: int

    def __post_init__(self) -> None:
        if self.hits < 0 or self.misses < 0:
            raise ValueError(f"hits and misses must be >= 0, got {self.hits}, {self.misses}")

    @property
    def requests(self) -> int:
        return self.hits + self.misses

    @property
    def hit_ratio(self) -> float:
        """Hits per request; 0.0 for an empty trace."""
        return self.hits / self.requests if self.requests else 0.0


def zipf_trace(keys: int, length: int, alpha: float, seed: int) -> list[bytes]:
    """`length` draws of keys b"k1" .. b"k<keys>", rank r with probability ~ 1 / r**alpha."""
    if isinstance(keys, bool) or not isinstance(keys, int) or not 1 <= keys <= ZIPF_KEYS_MAX:
        raise ValueError(f"keys must be an int in 1..{ZIPF_KEYS_MAX}, got {keys!r}")
    _check_length(length)
    if not (
        isinstance(alpha, int | float) and math.isfinite(alpha) and 0 < alpha <= ZIPF_ALPHA_MAX
    ):
        raise ValueError(f"alpha must be a number in (0, {ZIPF_ALPHA_MAX}], got {alpha!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    rng = random.Random(seed)
    # cumulative[i] is the total weight of ranks 1..i+1; r ** -alpha underflows to 0.0 quietly,
    # where 1 / r ** alpha would overflow for a large alpha.
    cumulative = list(itertools.accumulate(rank**-alpha for rank in range(1, keys + 1)))
    total = cumulative[-1]
    names = [b"k%d" % rank for rank in range(1, keys + 1)]
    trace = []
    for _ in range(length):
        # The first rank whose cumulative weight exceeds the draw. min() guards the one draw
        # that rounding could put at `total` itself.
        index = bisect.bisect_right(cumulative, rng.random() * total)
        trace.append(names[min(index, keys - 1)])
    return trace


def read_trace(lines: Iterable[str]) -> list[bytes]:
    """One key per line, UTF-8, surrounding whitespace stripped; blank lines are skipped."""
    trace = []
    for line in lines:
        key = line.strip()
        if key:
            trace.append(key.encode())
            _check_length(len(trace))
    return trace


def simulate(policy: EvictionPolicy, trace: Sequence[bytes], weight: int = 1) -> HitStats:
    """Replay the trace: a held key is a hit, any other a miss followed by an insert."""
    _check_length(len(trace))
    hits = 0
    for key in trace:
        if key in policy:
            policy.on_hit(key)
            hits += 1
        else:
            policy.on_miss(key)
            policy.on_insert(key, weight)
    return HitStats(hits=hits, misses=len(trace) - hits)


def belady_opt_hits(
    trace: Sequence[bytes], capacity_items: int, *, bypass: bool = True
) -> HitStats:
    """Belady's MIN on a cache of `capacity_items` unit-weight keys (module docstring)."""
    if (
        isinstance(capacity_items, bool)
        or not isinstance(capacity_items, int)
        or capacity_items < 1
    ):
        raise ValueError(f"capacity_items must be an int >= 1, got {capacity_items!r}")
    _check_length(len(trace))
    never = len(trace)  # Later than any index: a key never used again is the first to go.
    next_use = [never] * len(trace)
    seen_at: dict[bytes, int] = {}
    for index in range(len(trace) - 1, -1, -1):
        next_use[index] = seen_at.get(trace[index], never)
        seen_at[trace[index]] = index

    held: dict[bytes, int] = {}  # key -> its next use; the heap entry that matches is fresh
    farthest_first: list[tuple[int, bytes]] = []  # (-next use, key): a max-heap by next use
    hits = 0
    for index, key in enumerate(trace):
        if key in held:
            hits += 1
        elif len(held) == capacity_items:
            farthest_next_use, victim = -farthest_first[0][0], farthest_first[0][1]
            assert held[victim] == farthest_next_use, "a superseded entry reached the top"
            if bypass and next_use[index] >= farthest_next_use:
                continue  # The newcomer is the one needed last: do not admit it.
            heapq.heappop(farthest_first)
            del held[victim]
        held[key] = next_use[index]
        heapq.heappush(farthest_first, (-next_use[index], key))
        assert len(held) <= capacity_items
    return HitStats(hits=hits, misses=len(trace) - hits)


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(f"a trace length must be an int, got {length!r}")
    if not 0 <= length <= TRACE_LENGTH_MAX:
        raise ValueError(f"a trace length must be in 0..{TRACE_LENGTH_MAX}, got {length}")


__all__ = [
    "TRACE_LENGTH_MAX",
    "ZIPF_ALPHA_MAX",
    "ZIPF_KEYS_MAX",
    "HitStats",
    "belady_opt_hits",
    "read_trace",
    "simulate",
    "zipf_trace",
]
