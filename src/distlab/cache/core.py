"""One cache node's store, sans-I/O: memcached's commands, bounded by bytes, with leases.

What it implements
------------------
* The memcached command set (memcached's protocol.txt): get, multi-get, set, add (only if
  absent), compare-and-set against a version token ("cas unique"), delete and touch. Each item
  has a TTL; an expired item is never served. Its memory is reclaimed lazily, when a read finds
  it expired, and by ``sweep``, which the node calls in the background (memcached's LRU crawler
  does the same job).
* A bound in bytes, not in items: an item weighs its key, its value and ``ITEM_OVERHEAD_BYTES``
  (memcached's item header is about 50 bytes). Which items go when the bound is reached is an
  ``EvictionPolicy``'s decision (``distlab.cache.policy``: LRU or W-TinyLFU).
* Leases, after Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013, section 3.2.1:
  - A miss can ask for a lease: a token that gives its holder the right to refill the key.
  - A set that carries a token is stored only if that token is still the key's lease. A delete
    invalidates the lease. So a slow client that read the old value from the database cannot
    put it back after an invalidation: its set is refused (the "stale set" race).
  - Only one lease per key is handed out per ``lease_ms``. A second miss within that time is
    told to wait and retry instead of going to the database too (the "thundering herd"), and
    it is given the value the last delete removed, marked stale, if that is still remembered
    (``stale_ms``): many readers can live with a slightly old value.

Theory of operation
-------------------
* Time comes in as ``now_ms`` on every call; the store never reads a clock.
* Items live in a dict; a heap of (expiry, key, version) finds expired items for ``sweep``.
  Entries for items since replaced or deleted are skipped when popped (lazy deletion).
* Versions are one counter for the whole store, like memcached's cas unique: every store of a
  key gets a new, larger version, so a compare-and-set with an old version always fails.
* Leases and stale values are kept in maps bounded by ``LEASES_MAX`` and ``STALE_VALUES_MAX``,
  oldest first out: both are hints, and losing one only costs a miss or a refused refill.

What it leaves out: memcached's slab allocator (Python owns the memory; the bound counts bytes of
keys and values plus a fixed overhead); incr/decr, append/prepend; the gutter pool and regional
invalidation of the paper.
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict
from dataclasses import dataclass, field

from distlab.cache.policy import EvictionPolicy

# memcached's per-item header (pointers, TTL, flags, cas) is about 50 bytes on 64-bit builds;
# counting it keeps a cache of tiny items from holding far more memory than its bound says.
ITEM_OVERHEAD_BYTES = 48
# memcached's limits: keys up to 250 bytes; values up to 1 MiB (its default item size).
KEY_BYTES_MAX = 250
VALUE_BYTES_MAX = 1024 * 1024
# The protocol's limits on multi-gets, shared by nodes, clients and the router (here, so a
# client need not import the node's server to know them).
# Keys in one multi-get: 100 is the benchmark's batch; beyond a few hundred a caller should
# split its batch rather than hold one call (and one reply buffer) for all of them.
MULTI_GET_KEYS_MAX = 1_000
# Calls in one batch of a MultiGetStream. A client packs the multi-gets waiting at one moment,
# about one per concurrent caller: 256 covers the benchmark's 64 callers several times over,
# and bounds the work one batch holds the event loop for (256 calls of up to 1,000 keys).
MULTI_GET_CALLS_PER_BATCH_MAX = 256
# memcached treats a TTL above 30 days as an absolute time; here it is simply the longest TTL.
TTL_MS_MAX = 30 * 24 * 3600 * 1000
# How long a lease is exclusive: the paper's memcache hands out a token per key at most once
# every 10 seconds. Shorter here, so a refill that died is retried by someone else sooner.
LEASE_MS_DEFAULT = 2_000
# How long a deleted value may still be served as stale to a client told to wait.
STALE_MS_DEFAULT = 2_000
# Outstanding leases and remembered stale values: past these the oldest are forgotten.
LEASES_MAX = 100_000
STALE_VALUES_MAX = 10_000


class SetMode(enum.Enum):
    SET = "set"
    ADD = "add"  # only if absent
    COMPARE_AND_SET = "cas"  # only if the item's version is the expected one


class SetOutcome(enum.Enum):
    STORED = "stored"
    NOT_STORED = "not_stored"  # add of a present key
    EXISTS = "exists"  # compare-and-set against another version (memcached's EXISTS)
    NOT_FOUND = "not_found"  # compare-and-set of an absent key
    LEASE_INVALID = "lease_invalid"  # a refill whose lease was invalidated or expired
    TOO_LARGE = "too_large"  # heavier than the whole cache


@dataclass(frozen=True, slots=True)
class Item:
    key: bytes
    value: bytes
    version: int
    expires_at_ms: int  # 0: never


@dataclass(frozen=True, slots=True)
class GetResult:
    item: Item | None  # a hit
    lease_token: int = 0  # a miss that won the lease: refill with this token
    wait: bool = False  # a miss while someone else holds the lease: retry shortly
    stale_value: bytes | None = None  # with wait: the value the last delete removed, if known


@dataclass(frozen=True, slots=True)
class SetResult:
    outcome: SetOutcome
    version: int = 0  # the stored item's version

    @property
    def stored(self) -> bool:
        return self.outcome is SetOutcome.STORED


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    leases_granted: int = 0
    lease_waits: int = 0
    stale_sets_refused: int = 0


@dataclass(slots=True)
class _Lease:
    token: int
    granted_at_ms: int


@dataclass(slots=True)
class _Stale:
    value: bytes
    deleted_at_ms: int


@dataclass
class CacheStore:
    capacity_bytes: int
    policy: EvictionPolicy
    lease_ms: int = LEASE_MS_DEFAULT
    stale_ms: int = STALE_MS_DEFAULT
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        if self.capacity_bytes < 1:
            raise ValueError("capacity_bytes must be at least 1")
        if self.policy.capacity_bytes != self.capacity_bytes:
            raise ValueError("the policy must have the store's capacity")
        if self.lease_ms < 1 or self.stale_ms < 0:
            raise ValueError("lease_ms must be >= 1 and stale_ms >= 0")
        self._items: dict[bytes, Item] = {}
        self._bytes = 0
        self._expiries: list[tuple[int, bytes, int]] = []  # (expires_at_ms, key, version)
        self._last_version = 0
        self._next_lease = 0
        self._leases: OrderedDict[bytes, _Lease] = OrderedDict()
        self._stale: OrderedDict[bytes, _Stale] = OrderedDict()

    # --- views ---

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    # --- reads ---

    def get(self, key: bytes, now_ms: int, *, want_lease: bool = False) -> GetResult:
        _check_key(key)
        item = self._live(key, now_ms)
        if item is not None:
            self.stats.hits += 1
            self.policy.on_hit(key)
            return GetResult(item)
        self.stats.misses += 1
        self.policy.on_miss(key)
        if not want_lease:
            return GetResult(None)
        lease = self._leases.get(key)
        if lease is not None and now_ms - lease.granted_at_ms < self.lease_ms:
            self.stats.lease_waits += 1
            stale = self._stale.get(key)
            fresh = stale is not None and now_ms - stale.deleted_at_ms <= self.stale_ms
            return GetResult(None, wait=True, stale_value=stale.value if fresh and stale else None)
        self._next_lease += 1
        self._leases[key] = _Lease(self._next_lease, now_ms)
        self._leases.move_to_end(key)
        while len(self._leases) > LEASES_MAX:
            self._leases.popitem(last=False)
        self.stats.leases_granted += 1
        return GetResult(None, lease_token=self._next_lease)

    def multi_get(self, keys: list[bytes], now_ms: int) -> list[Item]:
        """The hits, in request order (no leases: a multi-get is a plain read)."""
        return [result.item for key in keys if (result := self.get(key, now_ms)).item]

    # --- writes ---

    def set(
        self,
        key: bytes,
        value: bytes,
        now_ms: int,
        *,
        ttl_ms: int = 0,
        mode: SetMode = SetMode.SET,
        expected_version: int = 0,
        lease_token: int = 0,
    ) -> SetResult:
        _check_key(key)
        if len(value) > VALUE_BYTES_MAX:
            raise ValueError(f"value of {len(value)} bytes is over {VALUE_BYTES_MAX}")
        if not 0 <= ttl_ms <= TTL_MS_MAX:
            raise ValueError(f"ttl_ms must be in [0, {TTL_MS_MAX}]")
        current = self._live(key, now_ms)
        if lease_token:
            lease = self._leases.get(key)
            if lease is None or lease.token != lease_token:
                self.stats.stale_sets_refused += 1
                return SetResult(SetOutcome.LEASE_INVALID)
        if mode is SetMode.ADD and current is not None:
            return SetResult(SetOutcome.NOT_STORED)
        if mode is SetMode.COMPARE_AND_SET:
            if current is None:
                return SetResult(SetOutcome.NOT_FOUND)
            if current.version != expected_version:
                return SetResult(SetOutcome.EXISTS)
        weight = _weight(key, value)
        if weight > self.capacity_bytes:
            return SetResult(SetOutcome.TOO_LARGE)
        self._leases.pop(key, None)  # the key is filled: the lease, used or not, is over
        self._stale.pop(key, None)
        self._last_version += 1
        expires_at_ms = now_ms + ttl_ms if ttl_ms else 0
        item = Item(key, value, self._last_version, expires_at_ms)
        if current is None:
            self._store(item)
            evicted = self.policy.on_insert(key, weight)
        else:
            self._bytes -= _weight(key, current.value)
            self._store(item)
            evicted = self.policy.on_update(key, weight)
        # The policy may evict the new item itself (W-TinyLFU refusing admission): it was
        # stored, as memcached would say of an item evicted at once, and it is gone.
        self._evict(evicted)
        return SetResult(SetOutcome.STORED, item.version)

    def delete(self, key: bytes, now_ms: int) -> bool:
        """Remove ``key`` and invalidate its lease; True if a live item was there. The value is
        remembered as stale for ``stale_ms``, for readers told to wait."""
        _check_key(key)
        self._leases.pop(key, None)
        item = self._live(key, now_ms)
        if item is None:
            return False
        self._discard(key)
        self.policy.on_remove(key)
        self._stale[key] = _Stale(item.value, now_ms)
        self._stale.move_to_end(key)
        while len(self._stale) > STALE_VALUES_MAX:
            self._stale.popitem(last=False)
        return True

    def touch(self, key: bytes, ttl_ms: int, now_ms: int) -> bool:
        _check_key(key)
        if not 0 <= ttl_ms <= TTL_MS_MAX:
            raise ValueError(f"ttl_ms must be in [0, {TTL_MS_MAX}]")
        item = self._live(key, now_ms)
        if item is None:
            return False
        touched = Item(key, item.value, item.version, now_ms + ttl_ms if ttl_ms else 0)
        self._items[key] = touched
        self.policy.on_hit(key)  # a touch is a use, as memcached's touch bumps the item
        if touched.expires_at_ms:
            heapq.heappush(self._expiries, (touched.expires_at_ms, key, touched.version))
        return True

    def sweep(self, now_ms: int, limit: int) -> int:
        """Reclaim up to ``limit`` expired items; the number reclaimed."""
        reclaimed = 0
        while self._expiries and reclaimed < limit and self._expiries[0][0] <= now_ms:
            _, key, version = heapq.heappop(self._expiries)
            item = self._items.get(key)
            if item is not None and item.version == version and _expired(item, now_ms):
                self._expire(key)
                reclaimed += 1
        return reclaimed

    # --- internals ---

    def _live(self, key: bytes, now_ms: int) -> Item | None:
        item = self._items.get(key)
        if item is not None and _expired(item, now_ms):
            self._expire(key)
            return None
        return item

    def _expire(self, key: bytes) -> None:
        self._discard(key)
        self.policy.on_remove(key)
        self.stats.expirations += 1

    def _store(self, item: Item) -> None:
        self._items[item.key] = item
        self._bytes += _weight(item.key, item.value)
        if item.expires_at_ms:
            heapq.heappush(self._expiries, (item.expires_at_ms, item.key, item.version))

    def _discard(self, key: bytes) -> None:
        item = self._items.pop(key)
        self._bytes -= _weight(key, item.value)

    def _evict(self, keys: list[bytes]) -> None:
        for key in keys:
            if key in self._items:
                self._discard(key)
                self.stats.evictions += 1
        assert self._bytes == self.policy.weight_bytes <= self.capacity_bytes


def _weight(key: bytes, value: bytes) -> int:
    return len(key) + len(value) + ITEM_OVERHEAD_BYTES


def _expired(item: Item, now_ms: int) -> bool:
    return item.expires_at_ms != 0 and item.expires_at_ms <= now_ms


def _check_key(key: bytes) -> None:
    if not 0 < len(key) <= KEY_BYTES_MAX:
        raise ValueError(f"keys must be 1 to {KEY_BYTES_MAX} bytes, got {len(key)}")
