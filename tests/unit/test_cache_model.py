"""The cache node's store (distlab.cache.core) with LRU (distlab.cache.policy) against a model.

Chaos matrix row 6: random operations against a cache of capacity C; the LRU order and the byte
bound must match a simple model, with no divergence. A Hypothesis state machine drives the store
with get, multi-get, set, add, compare-and-set, delete, touch, a full sweep and the passing of
time, and replays every operation on an obviously correct model: an ``OrderedDict`` in recency
order, least recent first, whose items weigh what ``core.py`` documents (key bytes + value bytes
+ ``ITEM_OVERHEAD_BYTES``), and which drops its least recent items until the total fits.

The semantics modelled are the ones ``core.py`` documents after memcached's protocol.txt:
* An item's TTL ends at ``now + ttl_ms``, inclusive; a TTL of 0 never ends. An expired item is
  never served. Its bytes are reclaimed lazily: by the next command on its key, or by a sweep.
  Until then it still counts toward the bound and still sits in the LRU order, where eviction
  may take it, and the model keeps it there too, so byte totals can be compared exactly.
* A hit refreshes recency; so do a stored set of a present key and a touch (memcached's too).
* An item heavier than the whole cache is refused (``TOO_LARGE``) and changes nothing, but the
  add and compare-and-set checks come first.
* Every store takes a new version from one store-wide counter, so versions only grow.

Leases (the "Scaling Memcache at Facebook" half of the store) are not exercised: every get is a
plain read. A sweep with a limit below the number of expired items is left out too: which of
them it reclaims first is not part of the store's contract, so a model would have to guess.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from distlab.cache.core import ITEM_OVERHEAD_BYTES, CacheStore, Item, SetMode, SetOutcome
from distlab.cache.policy import LruPolicy

# A few hundred bytes hold only a handful of items (each weighs at least ITEM_OVERHEAD_BYTES),
# so almost every run of stores evicts, and one near-limit value empties the cache.
CAPACITY_BYTES = 300
# Eight keys of eight lengths: collisions on a key are frequent, and the key's own bytes matter
# to the weight, so an accounting that forgot them would drift.
KEYS = tuple(bytes([ord("a") + index]) * (index + 1) for index in range(8))
# Small values: three to six items fit at once, so stores evict one or two at a time.
SMALL_VALUE_SIZES = st.integers(min_value=0, max_value=24)
# Values a few bytes either side of the largest that fits alone, which depends on the key's
# length: each one empties the cache or is refused as too large.
VALUE_BYTES_FIT_MIN = CAPACITY_BYTES - ITEM_OVERHEAD_BYTES - len(KEYS[-1])
VALUE_BYTES_FIT_MAX = CAPACITY_BYTES - ITEM_OVERHEAD_BYTES - len(KEYS[0])
LARGE_VALUE_SIZES = st.integers(
    min_value=VALUE_BYTES_FIT_MIN - 4, max_value=VALUE_BYTES_FIT_MAX + 4
)
ANY_VALUE_SIZES = st.one_of(SMALL_VALUE_SIZES, LARGE_VALUE_SIZES)
# TTLs of the same order as the steps of time, so items expire mid-run; 0 is "never".
POSITIVE_TTLS_MS = st.integers(min_value=1, max_value=50)
TTLS_MS = st.one_of(st.just(0), POSITIVE_TTLS_MS)
TIME_STEPS_MS = st.integers(min_value=1, max_value=40)
FILLS = st.binary(min_size=1, max_size=1)
# A compare-and-set against the item's version, or one just before or after it.
VERSION_OFFSETS = st.sampled_from([0, 0, -1, 1])


def weight(key: bytes, value: bytes) -> int:
    return len(key) + len(value) + ITEM_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class ModelItem:
    value: bytes
    version: int
    expires_at_ms: int  # 0: never, as in core.Item


@dataclass
class ModelStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0


class LruModel:
    """The store as the docs describe it, with nothing clever: every total is recomputed."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        # Least recently used first; expired items stay until something reclaims them.
        self.items: OrderedDict[bytes, ModelItem] = OrderedDict()
        self.stats = ModelStats()

    @property
    def bytes_used(self) -> int:
        return sum(weight(key, item.value) for key, item in self.items.items())

    def live(self, key: bytes, now_ms: int) -> ModelItem | None:
        """The key's item if it has not expired; an expired one is reclaimed here."""
        item = self.items.get(key)
        if item is not None and item.expires_at_ms != 0 and item.expires_at_ms <= now_ms:
            del self.items[key]
            self.stats.expirations += 1
            return None
        return item

    def get(self, key: bytes, now_ms: int) -> ModelItem | None:
        item = self.live(key, now_ms)
        if item is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self.items.move_to_end(key)
        return item

    def expected_set_outcome(
        self, key: bytes, value: bytes, now_ms: int, mode: SetMode, expected_version: int
    ) -> SetOutcome:
        """What a set would answer; reclaims the key's item if it has expired, as the store
        does before any check."""
        current = self.live(key, now_ms)
        if mode is SetMode.ADD and current is not None:
            return SetOutcome.NOT_STORED
        if mode is SetMode.COMPARE_AND_SET:
            if current is None:
                return SetOutcome.NOT_FOUND
            if current.version != expected_version:
                return SetOutcome.EXISTS
        if weight(key, value) > self.capacity_bytes:
            return SetOutcome.TOO_LARGE
        return SetOutcome.STORED

    def store(self, key: bytes, value: bytes, version: int, expires_at_ms: int) -> None:
        """Put the item at the most recent end, then evict from the least recent end."""
        self.items.pop(key, None)
        self.items[key] = ModelItem(value, version, expires_at_ms)
        while self.bytes_used > self.capacity_bytes:
            self.items.popitem(last=False)
            self.stats.evictions += 1

    def delete(self, key: bytes, now_ms: int) -> bool:
        if self.live(key, now_ms) is None:
            return False
        del self.items[key]
        return True

    def touch(self, key: bytes, ttl_ms: int, now_ms: int) -> bool:
        item = self.live(key, now_ms)
        if item is None:
            return False
        # A touch is a use (memcached's touch bumps the item): it becomes the most recent.
        expires_at_ms = now_ms + ttl_ms if ttl_ms else 0
        self.items[key] = ModelItem(item.value, item.version, expires_at_ms)
        self.items.move_to_end(key)
        return True

    def sweep_everything(self, now_ms: int) -> int:
        reclaimed = 0
        for key in list(self.items):
            if self.live(key, now_ms) is None:
                reclaimed += 1
        return reclaimed


class CacheStoreAgainstLruModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = CacheStore(CAPACITY_BYTES, LruPolicy(CAPACITY_BYTES))
        self.model = LruModel(CAPACITY_BYTES)
        self.now_ms = 0
        self.last_version = 0
        # The last version each key was stored with, kept after the item is gone, so a
        # compare-and-set can be tried with a version that was once right.
        self.versions_seen: dict[bytes, int] = {}

    # --- rules ---

    @rule(step_ms=TIME_STEPS_MS)
    def advance_time(self, step_ms: int) -> None:
        self.now_ms += step_ms

    @rule(key=st.sampled_from(KEYS))
    def get(self, key: bytes) -> None:
        expected = self.model.get(key, self.now_ms)
        result = self.store.get(key, self.now_ms)
        assert (result.lease_token, result.wait, result.stale_value) == (0, False, None)
        self.check_read(key, result.item, expected)

    @rule(keys=st.lists(st.sampled_from(KEYS), max_size=4))
    def multi_get(self, keys: list[bytes]) -> None:
        # A multi-get is a get of each key in request order, so recency follows that order.
        expected = [(key, self.model.get(key, self.now_ms)) for key in keys]
        hits = self.store.multi_get(keys, self.now_ms)
        expected_hits = [(key, item) for key, item in expected if item is not None]
        assert [item.key for item in hits] == [key for key, _ in expected_hits]
        for item, (key, expected_item) in zip(hits, expected_hits, strict=True):
            self.check_read(key, item, expected_item)

    @rule(key=st.sampled_from(KEYS), size=SMALL_VALUE_SIZES, fill=FILLS)
    def set_without_ttl(self, key: bytes, size: int, fill: bytes) -> None:
        self.write(key, fill * size, ttl_ms=0, mode=SetMode.SET, expected_version=0)

    @rule(key=st.sampled_from(KEYS), size=SMALL_VALUE_SIZES, fill=FILLS, ttl_ms=POSITIVE_TTLS_MS)
    def set_with_ttl(self, key: bytes, size: int, fill: bytes, ttl_ms: int) -> None:
        self.write(key, fill * size, ttl_ms=ttl_ms, mode=SetMode.SET, expected_version=0)

    # A rule of its own, so near-limit values come about once a dozen steps: often enough to
    # empty the cache and be refused, not so often that the cache seldom holds several items.
    # An add of a present key must answer NOT_STORED before it is weighed.
    @rule(
        key=st.sampled_from(KEYS),
        size=LARGE_VALUE_SIZES,
        fill=FILLS,
        ttl_ms=TTLS_MS,
        mode=st.sampled_from([SetMode.SET, SetMode.ADD]),
    )
    def set_near_the_limit(
        self, key: bytes, size: int, fill: bytes, ttl_ms: int, mode: SetMode
    ) -> None:
        self.write(key, fill * size, ttl_ms=ttl_ms, mode=mode, expected_version=0)

    @rule(key=st.sampled_from(KEYS), size=SMALL_VALUE_SIZES, fill=FILLS, ttl_ms=TTLS_MS)
    def add(self, key: bytes, size: int, fill: bytes, ttl_ms: int) -> None:
        self.write(key, fill * size, ttl_ms=ttl_ms, mode=SetMode.ADD, expected_version=0)

    @rule(
        key=st.sampled_from(KEYS),
        key_may_be_absent=st.booleans(),
        size=ANY_VALUE_SIZES,
        fill=FILLS,
        ttl_ms=TTLS_MS,
        version_offset=VERSION_OFFSETS,
    )
    def compare_and_set(
        self,
        key: bytes,
        key_may_be_absent: bool,
        size: int,
        fill: bytes,
        ttl_ms: int,
        version_offset: int,
    ) -> None:
        # Half the time a key the model holds, if any: with an absent key, a compare-and-set
        # only ever answers NOT_FOUND. (Held is not live: an expired item still answers it.)
        held = list(self.model.items)
        if not key_may_be_absent and held:
            key = held[KEYS.index(key) % len(held)]
        # The last version this key was stored with is right if the item is still there, and
        # stale if it was replaced, evicted or deleted since; the offsets are never right.
        expected_version = self.versions_seen.get(key, self.last_version) + version_offset
        self.write(
            key,
            fill * size,
            ttl_ms=ttl_ms,
            mode=SetMode.COMPARE_AND_SET,
            expected_version=expected_version,
        )

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: bytes) -> None:
        assert self.store.delete(key, self.now_ms) == self.model.delete(key, self.now_ms)

    @rule(key=st.sampled_from(KEYS), ttl_ms=TTLS_MS)
    def touch(self, key: bytes, ttl_ms: int) -> None:
        touched = self.store.touch(key, ttl_ms, self.now_ms)
        assert touched == self.model.touch(key, ttl_ms, self.now_ms)

    @rule()
    def sweep_everything(self) -> None:
        # A limit above the number of items: every expired item goes, in whatever order.
        reclaimed = self.store.sweep(self.now_ms, limit=len(KEYS) + 1)
        assert reclaimed == self.model.sweep_everything(self.now_ms)

    # --- invariants ---

    @invariant()
    def bytes_agree_and_fit(self) -> None:
        assert self.store.bytes_used == self.model.bytes_used <= CAPACITY_BYTES
        assert self.store.policy.weight_bytes == self.store.bytes_used

    @invariant()
    def held_keys_agree(self) -> None:
        # Held, not live: an expired item not yet reclaimed is held by both. Which held items
        # are live is checked by the reads, which compare each hit's expiry with the model's.
        assert len(self.store) == len(self.model.items)
        held = [key for key in KEYS if key in self.store.policy]
        assert held == [key for key in KEYS if key in self.model.items]

    @invariant()
    def counters_agree(self) -> None:
        stats = self.store.stats
        expected = self.model.stats
        assert (stats.hits, stats.misses) == (expected.hits, expected.misses)
        assert (stats.evictions, stats.expirations) == (expected.evictions, expected.expirations)

    # --- helpers ---

    def write(
        self, key: bytes, value: bytes, ttl_ms: int, mode: SetMode, expected_version: int
    ) -> None:
        expected = self.model.expected_set_outcome(key, value, self.now_ms, mode, expected_version)
        result = self.store.set(
            key, value, self.now_ms, ttl_ms=ttl_ms, mode=mode, expected_version=expected_version
        )
        assert result.outcome is expected
        if expected is not SetOutcome.STORED:
            assert result.version == 0
            return
        assert result.version > self.last_version  # one store-wide counter, only growing
        self.last_version = result.version
        self.versions_seen[key] = result.version
        expires_at_ms = self.now_ms + ttl_ms if ttl_ms else 0
        self.model.store(key, value, result.version, expires_at_ms)

    def check_read(self, key: bytes, item: Item | None, expected: ModelItem | None) -> None:
        if expected is None:
            assert item is None
            return
        assert item is not None
        assert item.key == key
        assert (item.value, item.version, item.expires_at_ms) == (
            expected.value,
            expected.version,
            expected.expires_at_ms,
        )
        # Never serve an expired item: the model agreeing is not enough if both are wrong.
        assert item.expires_at_ms == 0 or item.expires_at_ms > self.now_ms


# derandomize: every run tries the same examples, so a failure replays; the steps are enough to
# fill, evict and expire many times over with eight keys in a few hundred bytes.
CacheStoreAgainstLruModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, derandomize=True, database=None
)
TestCacheStoreAgainstLruModel = CacheStoreAgainstLruModel.TestCase
