"""Eviction policies weighted by bytes, sans-I/O: LRU and W-TinyLFU.

Implements:
- LRU: evict the least recently used keys until the new one fits.
- W-TinyLFU (Einziger, Friedman, Manes, "TinyLFU: A Highly Efficient Cache Admission Policy",
  ACM Transactions on Storage 13(4), 2017), with the choices Caffeine makes (Ben Manes, "Design
  of a Modern Cache" and Caffeine's wiki page "Efficiency"; `BoundedLocalCache.admit` and
  `FrequencySketch` in its source): a small LRU *window* in front of a *main region* that is a
  segmented LRU (*probation* and *protected*), with TinyLFU *admission* between the two.
- The frequency sketch of TinyLFU: a count-min sketch of small counters with the paper's
  freshness mechanism, "reset" (halve every counter after a sample of W accesses).

The store owns keys and values; a policy only hears of reads, inserts, updates and removals and
answers which keys to evict. Weights are bytes: one insert may evict several small keys.

Theory of operation (W-TinyLFU):
- Every read is counted in the frequency sketch, a hit (`on_hit`) or a miss (`on_miss`); an
  update counts as a read. An insert is a write and is not counted, so the usual read-miss-then-
  insert counts once. A store that wants a blind write to count calls `on_miss` first.
- A new key enters the window's MRU end. The window holds about 1% of the bytes: a recency
  buffer, so a burst of accesses to a new key builds up frequency before it must win admission.
- When the window overflows, its LRU keys leave it, oldest first. Each is a *candidate* for the
  main region. If the cache has room for it, it enters probation. Otherwise it duels the main
  region's *victim* (probation's LRU key, or protected's if probation is empty): if the
  candidate's estimated frequency is strictly greater, the victim is evicted and, if room is
  still lacking, the candidate duels the next victim; if the candidate loses, the candidate is
  evicted. Ties go to the victim, as in Caffeine: the incumbent has already proved itself.
- Against hash flooding (an attacker raising a victim's estimate by colliding keys, so nothing
  new is ever admitted), a candidate that loses with an estimate of at least
  `HASH_FLOODING_FREQUENCY_MIN` is admitted anyway with probability 1/`HASH_FLOODING_ADMIT_ODDS`,
  drawn from a `random.Random(seed)` (Caffeine's `ADMIT_HASHDOS_THRESHOLD` and `& 127`).
- A hit in probation promotes the key to protected; when protected holds more than its share
  (80% of the main region), its LRU keys are demoted to probation's MRU end. A hit in the window
  or in protected only moves the key to the MRU end of its list.
- Capacities are shares of one budget, as in Caffeine: the window must give back any bytes over
  its share, but the main region may borrow what the window does not use. So after the window
  has been served, if the total is still over capacity (the window grew back into bytes main
  had borrowed, or an update grew a key), victims are evicted without a duel: probation's LRU,
  then protected's, then the window's, never the key being updated.
- Frequency sketch: 4 rows of `width` counters; row i indexes a key by
  `mmh3.hash(key, seed_i, signed=False) % width`. Increment adds 1 to the key's counter in every
  row, saturating at 15; the estimate is the minimum over the rows. After `10 * expected_items`
  increments every counter is halved (and the sample count with it), so the sketch estimates
  the frequency in a recent window of the stream and past favourites fade.
- Expected number of items: `expected_items` if the caller gives it; otherwise, once the cache is
  half full, capacity_bytes divided by the mean weight of the keys held (Caffeine likewise sizes
  a weighted cache's sketch lazily, from its entry count). The sketch only grows, and growing
  starts it empty as Caffeine's `ensureCapacity` does, so it rebuilds at most a few times.

Leaves out:
- The doorkeeper (the paper's Bloom filter in front of the sketch, which keeps one-hit wonders
  out of the counters to save space): it saves memory, not hit ratio, and Caffeine omits it.
- Caffeine's hill climber, which resizes the window at run time to suit the workload; the
  window fraction here is fixed.
- Caffeine's 64-bit-word layout of 4-bit counters: here each counter is a byte, capped at 15.
- Expiry and concurrency: the store owns both and calls `on_remove`.
"""

import math
import random
from collections import OrderedDict
from enum import StrEnum
from typing import Protocol

import mmh3

# Share of the capacity given to the window: the TinyLFU paper's W-TinyLFU uses 1% and Caffeine
# starts there. Enough to absorb a burst of accesses to a new key while frequency decides the
# other 99%; recency-heavy workloads want more (Caffeine's hill climber moves it; not here).
WINDOW_FRACTION_DEFAULT = 0.01
# Share of the main region kept for keys hit at least twice (Caffeine's PERCENT_MAIN_PROTECTED):
# probation's 20% is where admitted candidates prove themselves before they can displace anyone.
PROTECTED_FRACTION_DEFAULT = 0.8
# Counters are 4 bits in the paper and in Caffeine: admission only compares a few recent
# accesses, and a small counter ages quickly (a reset halves 15 to 7).
SKETCH_COUNTER_MAX = 15
# Rows of the count-min sketch: each row is a separate hash, and the estimate is the minimum,
# so a key is over-estimated only if it collides with a hot key in all four (Caffeine uses 4).
SKETCH_DEPTH = 4
# Counters per row per expected item. Caffeine spends 16 4-bit counters (8 bytes) per entry;
# 4 rows of 4 is the same count of counters (16 bytes here, a counter being a byte). Measured on
# the benchmark's Zipf trace: 1 per item loses about 0.8 points of hit ratio, 8 gains 0.2.
SKETCH_WIDTH_PER_ITEM = 4
# Reset after this many samples per expected item: the paper's W = 10 x cache size (Caffeine's
# sampleSize), long enough to see a key several times, short enough to follow a shifting workload.
SKETCH_SAMPLE_FACTOR = 10
# Bounds on the sketch: it costs SKETCH_DEPTH * SKETCH_WIDTH_PER_ITEM bytes per expected item, so
# 1 << 22 items is 64 MiB; a cache of byte-sized items and a large capacity cannot ask for more.
SKETCH_ITEMS_MAX = 1 << 22
# The size of a sketch before a cache without `expected_items` has seen enough keys to estimate
# its own (see the module docstring); 1024 items is 16 KiB.
SKETCH_ITEMS_INITIAL = 1024
# Caffeine's hash-flooding defence: a losing candidate this warm (7 is 15 halved, so the threshold
# survives a reset) is admitted with probability 1 in 128, rarely enough not to hurt the hit ratio.
HASH_FLOODING_FREQUENCY_MIN = 6
HASH_FLOODING_ADMIT_ODDS = 128

# Maps a byte b to b >> 1: halving a whole row of counters is one bytes.translate.
_HALVE = bytes(counter >> 1 for counter in range(256))


class EvictionPolicy(Protocol):
    """What a cache store asks of an eviction policy. Keys are bytes, weights are bytes."""

    capacity_bytes: int

    @property
    def weight_bytes(self) -> int:
        """The sum of the weights of the keys the policy holds."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, key: bytes) -> bool: ...

    def on_hit(self, key: bytes) -> None:
        """A read of a key the policy holds."""

    def on_miss(self, key: bytes) -> None:
        """A read of a key the policy does not hold (frequency sketches count it)."""

    def on_insert(self, key: bytes, weight: int) -> list[bytes]:
        """A new key of `weight` bytes. Returns the keys evicted to make room, in eviction order;
        the list may contain `key` itself if the policy refuses to admit it (then it is not held).
        A weight above capacity_bytes is always refused (returned as [key])."""
        ...

    def on_update(self, key: bytes, weight: int) -> list[bytes]:
        """A held key's new weight; counts as a hit. Returns the keys evicted, never `key`
        itself unless its new weight is above capacity_bytes (then it is not held)."""
        ...

    def on_remove(self, key: bytes) -> None:
        """The store deleted the key or it expired; no-op if the policy does not hold it."""


class Region(StrEnum):
    """Where W-TinyLFU holds a key."""

    WINDOW = "window"
    PROBATION = "probation"
    PROTECTED = "protected"


class _LruList:
    """Keys in recency order, least recent first, with their weights and the weights' sum."""

    __slots__ = ("entries", "weight_bytes")

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, int] = OrderedDict()
        self.weight_bytes = 0

    def __contains__(self, key: bytes) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, key: bytes, weight: int) -> None:
        """Add a key at the most recently used end."""
        assert key not in self.entries, "a key is pushed into a list that already holds it"
        self.entries[key] = weight
        self.weight_bytes += weight

    def remove(self, key: bytes) -> int:
        weight = self.entries.pop(key)
        self.weight_bytes -= weight
        return weight

    def pop_lru(self) -> tuple[bytes, int]:
        key, weight = self.entries.popitem(last=False)
        self.weight_bytes -= weight
        return key, weight

    def touch(self, key: bytes) -> None:
        self.entries.move_to_end(key)

    def lru(self, exclude: bytes | None = None) -> bytes | None:
        """The least recently used key other than `exclude`, or None."""
        for key in self.entries:
            if key != exclude:
                return key
        return None


class LruPolicy:
    """Least recently used, by bytes: O(1) per key touched, on one OrderedDict."""

    __slots__ = ("_list", "capacity_bytes")

    def __init__(self, capacity_bytes: int) -> None:
        _check_capacity(capacity_bytes)
        self.capacity_bytes = capacity_bytes
        self._list = _LruList()

    @property
    def weight_bytes(self) -> int:
        return self._list.weight_bytes

    def __len__(self) -> int:
        return len(self._list)

    def __contains__(self, key: bytes) -> bool:
        return key in self._list

    def __repr__(self) -> str:
        return f"LruPolicy(capacity_bytes={self.capacity_bytes}, held={len(self)})"

    def on_hit(self, key: bytes) -> None:
        _check_held(self, key)
        self._list.touch(key)

    def on_miss(self, key: bytes) -> None:
        _check_not_held(self, key)

    def on_insert(self, key: bytes, weight: int) -> list[bytes]:
        _check_weight(weight)
        _check_not_held(self, key)
        if weight > self.capacity_bytes:
            return [key]
        self._list.push(key, weight)
        return self._evict_until_fits()

    def on_update(self, key: bytes, weight: int) -> list[bytes]:
        _check_weight(weight)
        _check_held(self, key)
        self._list.remove(key)
        if weight > self.capacity_bytes:
            return [key]
        self._list.push(key, weight)  # At the MRU end: an update counts as a hit.
        return self._evict_until_fits()

    def on_remove(self, key: bytes) -> None:
        if key in self._list:
            self._list.remove(key)

    def _evict_until_fits(self) -> list[bytes]:
        # The key just pushed is the most recent and fits alone, so the loop stops before it.
        evicted = []
        while self._list.weight_bytes > self.capacity_bytes:
            evicted.append(self._list.pop_lru()[0])
        assert self._list.weight_bytes <= self.capacity_bytes
        return evicted


class FrequencySketch:
    """TinyLFU's approximate frequency: a count-min sketch of 4-bit counters, aged by reset.

    `samples` counts increments since the last reset; at `sample_size` every counter and the
    sample count are halved (the paper's reset, "divide all counters by 2").
    """

    __slots__ = ("_hash_seeds", "_rows", "_width", "expected_items", "sample_size", "samples")

    def __init__(self, expected_items: int, hash_seeds: tuple[int, ...]) -> None:
        _check_expected_items(expected_items)
        if len(hash_seeds) != SKETCH_DEPTH or len(set(hash_seeds)) != SKETCH_DEPTH:
            raise ValueError(f"need {SKETCH_DEPTH} distinct hash seeds, got {hash_seeds!r}")
        if not all(0 <= seed < 1 << 32 for seed in hash_seeds):
            raise ValueError(f"hash seeds must be unsigned 32-bit, got {hash_seeds!r}")
        self._hash_seeds = hash_seeds
        self._allocate(expected_items)

    def _allocate(self, expected_items: int) -> None:
        self.expected_items = expected_items
        # A power of two, so a row index is a mask of the hash rather than a division.
        self._width = 1 << (SKETCH_WIDTH_PER_ITEM * expected_items - 1).bit_length()
        self._rows = [bytearray(self._width) for _ in range(SKETCH_DEPTH)]
        self.sample_size = SKETCH_SAMPLE_FACTOR * expected_items
        self.samples = 0

    def ensure_capacity(self, expected_items: int) -> None:
        """Grow to `expected_items` (capped at SKETCH_ITEMS_MAX), starting empty; never shrinks."""
        expected_items = min(expected_items, SKETCH_ITEMS_MAX)
        if expected_items > self.expected_items:
            self._allocate(expected_items)

    def increment(self, key: bytes) -> None:
        mask = self._width - 1
        for row, seed in zip(self._rows, self._hash_seeds, strict=True):
            index = mmh3.hash(key, seed, signed=False) & mask
            if row[index] < SKETCH_COUNTER_MAX:
                row[index] += 1
        self.samples += 1
        if self.samples >= self.sample_size:
            self.reset()

    def frequency(self, key: bytes) -> int:
        """The estimated count of recent accesses: never below the truth until saturation."""
        mask = self._width - 1
        return min(
            row[mmh3.hash(key, seed, signed=False) & mask]
            for row, seed in zip(self._rows, self._hash_seeds, strict=True)
        )

    def reset(self) -> None:
        """Age the sketch: halve every counter and the sample count."""
        for row in self._rows:
            row[:] = row.translate(_HALVE)
        self.samples //= 2


class WTinyLfuPolicy:
    """W-TinyLFU by bytes: a window LRU, TinyLFU admission, a segmented-LRU main region."""

    __slots__ = (
        "_fixed_expected_items",
        "_probation",
        "_protected",
        "_random",
        "_sketch",
        "_window",
        "capacity_bytes",
        "protected_capacity_bytes",
        "window_capacity_bytes",
    )

    def __init__(
        self,
        capacity_bytes: int,
        *,
        window_fraction: float = WINDOW_FRACTION_DEFAULT,
        protected_fraction: float = PROTECTED_FRACTION_DEFAULT,
        seed: int = 0,
        expected_items: int | None = None,
    ) -> None:
        _check_capacity(capacity_bytes)
        _check_fraction("window_fraction", window_fraction)
        _check_fraction("protected_fraction", protected_fraction)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if expected_items is not None:
            _check_expected_items(expected_items)
        self.capacity_bytes = capacity_bytes
        # As Caffeine rounds: main gets the floor of its share and the window the rest, so a
        # cache of a few bytes still has a window of at least one byte.
        main_capacity_bytes = int(capacity_bytes * (1 - window_fraction))
        self.window_capacity_bytes = capacity_bytes - main_capacity_bytes
        self.protected_capacity_bytes = int(main_capacity_bytes * protected_fraction)
        self._window = _LruList()
        self._probation = _LruList()
        self._protected = _LruList()
        self._random = random.Random(seed)
        hash_seeds = tuple(self._random.sample(range(1 << 32), SKETCH_DEPTH))
        self._fixed_expected_items = expected_items
        initial_items = expected_items or min(capacity_bytes, SKETCH_ITEMS_INITIAL)
        self._sketch = FrequencySketch(initial_items, hash_seeds)

    @property
    def weight_bytes(self) -> int:
        return (
            self._window.weight_bytes + self._probation.weight_bytes + self._protected.weight_bytes
        )

    @property
    def sketch(self) -> FrequencySketch:
        return self._sketch

    def __len__(self) -> int:
        return len(self._window) + len(self._probation) + len(self._protected)

    def __contains__(self, key: bytes) -> bool:
        return key in self._window or key in self._probation or key in self._protected

    def __repr__(self) -> str:
        return (
            f"WTinyLfuPolicy(capacity_bytes={self.capacity_bytes}, window={len(self._window)}, "
            f"probation={len(self._probation)}, protected={len(self._protected)})"
        )

    def region_of(self, key: bytes) -> Region | None:
        """Which region holds the key, or None if the policy does not hold it."""
        for region, lru_list in self._regions():
            if key in lru_list:
                return region
        return None

    def frequency(self, key: bytes) -> int:
        """The frequency sketch's estimate for the key (what admission compares)."""
        return self._sketch.frequency(key)

    def on_hit(self, key: bytes) -> None:
        _check_held(self, key)
        self._sketch.increment(key)
        if key in self._probation:
            self._protected.push(key, self._probation.remove(key))
        elif key in self._protected:
            self._protected.touch(key)
        else:
            self._window.touch(key)
        # A promotion, or an update that grew a protected key, may overfill protected.
        self._demote_protected_overflow()

    def on_miss(self, key: bytes) -> None:
        _check_not_held(self, key)
        self._sketch.increment(key)

    def on_insert(self, key: bytes, weight: int) -> list[bytes]:
        _check_weight(weight)
        _check_not_held(self, key)
        if weight > self.capacity_bytes:
            return [key]
        self._window.push(key, weight)
        evicted = self._evict(keep=None)
        self._grow_sketch()
        return evicted

    def on_update(self, key: bytes, weight: int) -> list[bytes]:
        _check_weight(weight)
        _check_held(self, key)
        lru_list = self._list_of(key)
        lru_list.remove(key)
        if weight > self.capacity_bytes:
            return [key]
        lru_list.push(key, weight)
        self.on_hit(key)
        return self._evict(keep=key)

    def on_remove(self, key: bytes) -> None:
        for _, lru_list in self._regions():
            if key in lru_list:
                lru_list.remove(key)
                return

    def _evict(self, keep: bytes | None) -> list[bytes]:
        """Bring the window back to its share, then the total back under capacity.

        `keep` is a key being updated: it must stay, so it is admitted without a duel.
        """
        evicted: list[bytes] = []
        # Only the key just inserted or updated can overfill the window, so `keep`, if set, is
        # in the window here or not involved: admission never has to spare it in main.
        while self._window.weight_bytes > self.window_capacity_bytes:
            candidate, weight = self._window.pop_lru()
            evicted += self._admit(candidate, weight, must_admit=candidate == keep)
        while self.weight_bytes > self.capacity_bytes:
            victim = self._main_victim(exclude=keep)
            if victim is None:
                victim = self._window.lru(exclude=keep)
            assert victim is not None, "over capacity with nothing but `keep`, which fits alone"
            self._list_of(victim).remove(victim)
            evicted.append(victim)
        assert self.weight_bytes <= self.capacity_bytes, "a policy call left the cache over"
        assert self._protected.weight_bytes <= self.protected_capacity_bytes
        return evicted

    def _admit(self, candidate: bytes, weight: int, must_admit: bool) -> list[bytes]:
        """TinyLFU admission: the window's victim enters probation if it fits or outbids the
        main region's victims one by one; returns the evicted keys (the candidate if it lost)."""
        evicted: list[bytes] = []
        while self.weight_bytes + weight > self.capacity_bytes:
            victim = self._main_victim(exclude=None)
            if victim is None:
                # Nothing left in main: only the window's remaining keys are in the way.
                assert not must_admit, "a kept key leaves the window last, when it is empty"
                return [*evicted, candidate]
            if not (must_admit or self._candidate_wins(candidate, victim)):
                return [*evicted, candidate]
            self._list_of(victim).remove(victim)
            evicted.append(victim)
        self._probation.push(candidate, weight)
        return evicted

    def _candidate_wins(self, candidate: bytes, victim: bytes) -> bool:
        candidate_frequency = self._sketch.frequency(candidate)
        if candidate_frequency > self._sketch.frequency(victim):
            return True
        if candidate_frequency >= HASH_FLOODING_FREQUENCY_MIN:
            return self._random.randrange(HASH_FLOODING_ADMIT_ODDS) == 0
        return False

    def _main_victim(self, exclude: bytes | None) -> bytes | None:
        victim = self._probation.lru(exclude)
        return self._protected.lru(exclude) if victim is None else victim

    def _demote_protected_overflow(self) -> None:
        while self._protected.weight_bytes > self.protected_capacity_bytes:
            self._probation.push(*self._protected.pop_lru())

    def _grow_sketch(self) -> None:
        # Without expected_items, estimate it once the cache is half full, when the mean weight
        # of the keys held says something about the keys to come.
        if self._fixed_expected_items is not None or 2 * self.weight_bytes < self.capacity_bytes:
            return
        mean_weight_bytes = max(1, self.weight_bytes // len(self))
        self._sketch.ensure_capacity(math.ceil(self.capacity_bytes / mean_weight_bytes))

    def _list_of(self, key: bytes) -> _LruList:
        for _, lru_list in self._regions():
            if key in lru_list:
                return lru_list
        raise KeyError(key)

    def _regions(self) -> tuple[tuple[Region, _LruList], ...]:
        return (
            (Region.WINDOW, self._window),
            (Region.PROBATION, self._probation),
            (Region.PROTECTED, self._protected),
        )


def _check_capacity(capacity_bytes: int) -> None:
    if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int):
        raise TypeError(f"capacity_bytes must be an int, got {capacity_bytes!r}")
    if capacity_bytes < 1:
        raise ValueError(f"capacity_bytes must be >= 1, got {capacity_bytes}")


def _check_expected_items(expected_items: int) -> None:
    if isinstance(expected_items, bool) or not isinstance(expected_items, int):
        raise TypeError(f"expected_items must be an int, got {expected_items!r}")
    if not 1 <= expected_items <= SKETCH_ITEMS_MAX:
        raise ValueError(f"expected_items must be in 1..{SKETCH_ITEMS_MAX}, got {expected_items}")


def _check_fraction(name: str, fraction: float) -> None:
    if not (isinstance(fraction, int | float) and math.isfinite(fraction) and 0 <= fraction <= 1):
        raise ValueError(f"{name} must be a number in [0, 1], got {fraction!r}")


def _check_weight(weight: int) -> None:
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise TypeError(f"weight must be an int, got {weight!r}")
    if weight < 0:
        raise ValueError(f"weight must be >= 0 bytes, got {weight}")


def _check_held(policy: EvictionPolicy, key: bytes) -> None:
    if key not in policy:
        raise KeyError(f"the policy does not hold {key!r}")


def _check_not_held(policy: EvictionPolicy, key: bytes) -> None:
    if key in policy:
        raise ValueError(f"the policy already holds {key!r} (use on_hit or on_update)")


__all__ = [
    "HASH_FLOODING_ADMIT_ODDS",
    "HASH_FLOODING_FREQUENCY_MIN",
    "PROTECTED_FRACTION_DEFAULT",
    "SKETCH_COUNTER_MAX",
    "SKETCH_DEPTH",
    "SKETCH_ITEMS_INITIAL",
    "SKETCH_ITEMS_MAX",
    "SKETCH_SAMPLE_FACTOR",
    "SKETCH_WIDTH_PER_ITEM",
    "WINDOW_FRACTION_DEFAULT",
    "EvictionPolicy",
    "FrequencySketch",
    "LruPolicy",
    "Region",
    "WTinyLfuPolicy",
]
