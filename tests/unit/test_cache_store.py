"""The cache node's store (distlab.cache.core): memcached's commands, bytes, TTLs and leases
("Scaling Memcache at Facebook", NSDI 2013, 3.2.1), driven with an explicit clock."""

from __future__ import annotations

import pytest

from distlab.cache.core import (
    ITEM_OVERHEAD_BYTES,
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    CacheStore,
    SetMode,
    SetOutcome,
)
from distlab.cache.policy import LruPolicy


def store(capacity_bytes: int = 10_000, **options: int) -> CacheStore:
    return CacheStore(capacity_bytes, LruPolicy(capacity_bytes), **options)


def weight(key: bytes, value: bytes) -> int:
    return len(key) + len(value) + ITEM_OVERHEAD_BYTES


def test_set_then_get_counts_hits_misses_and_bytes() -> None:
    cache = store()
    assert cache.get(b"a", 0).item is None
    assert cache.set(b"a", b"1", 0).stored
    hit = cache.get(b"a", 1).item
    assert hit is not None
    assert hit.value == b"1"
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    assert cache.bytes_used == weight(b"a", b"1")
    cache.set(b"a", b"22", 2)
    assert cache.bytes_used == weight(b"a", b"22")  # an update replaces the weight


def test_the_bound_is_in_bytes_and_lru_goes_first() -> None:
    one = weight(b"k0", b"x" * 52)  # 102 bytes an item
    cache = store(capacity_bytes=3 * one)
    for number in range(3):
        cache.set(f"k{number}".encode(), b"x" * 52, number)
    cache.get(b"k0", 3)  # k0 is now the most recent; k1 the least
    cache.set(b"k3", b"x" * 52, 4)
    assert [cache.get(f"k{n}".encode(), 5).item is not None for n in range(4)] == [
        True,
        False,
        True,
        True,
    ]
    assert cache.stats.evictions == 1
    big = cache.set(b"big", b"y" * (2 * one), 6)  # 255 of 306 bytes: all three must go
    assert big.stored
    assert cache.bytes_used == weight(b"big", b"y" * (2 * one))
    assert (len(cache), cache.stats.evictions) == (1, 4)


def test_an_item_heavier_than_the_cache_is_refused() -> None:
    cache = store(capacity_bytes=100)
    assert cache.set(b"k", b"x" * 100, 0).outcome is SetOutcome.TOO_LARGE
    assert len(cache) == 0


def test_an_expired_item_is_never_served_and_is_reclaimed() -> None:
    cache = store()
    cache.set(b"a", b"1", 1_000, ttl_ms=500)
    cache.set(b"b", b"2", 1_000, ttl_ms=500)
    cache.set(b"c", b"3", 1_000)
    assert cache.get(b"a", 1_499).item is not None
    assert cache.get(b"a", 1_500).item is None  # expiry is inclusive of its instant
    assert cache.stats.expirations == 1
    assert len(cache) == 2  # reclaimed by the read
    assert cache.sweep(now_ms=1_600, limit=10) == 1  # b, by the sweep
    assert len(cache) == 1
    assert cache.bytes_used == weight(b"c", b"3")


def test_touch_extends_a_ttl_and_the_sweep_skips_replaced_items() -> None:
    cache = store()
    cache.set(b"a", b"1", 0, ttl_ms=100)
    assert cache.touch(b"a", 1_000, now_ms=50)
    assert cache.sweep(now_ms=200, limit=10) == 0
    assert cache.get(b"a", 900).item is not None
    assert cache.get(b"a", 1_050).item is None
    assert not cache.touch(b"missing", 10, now_ms=0)


def test_the_sweep_reclaims_at_most_its_limit() -> None:
    cache = store()
    for number in range(5):
        cache.set(f"k{number}".encode(), b"v", 0, ttl_ms=10)
    assert cache.sweep(now_ms=20, limit=2) == 2
    assert cache.sweep(now_ms=20, limit=10) == 3


def test_add_and_compare_and_set() -> None:
    cache = store()
    assert cache.set(b"a", b"1", 0, mode=SetMode.ADD).stored
    assert cache.set(b"a", b"2", 0, mode=SetMode.ADD).outcome is SetOutcome.NOT_STORED
    item = cache.get(b"a", 0).item
    assert item is not None
    swapped = cache.set(b"a", b"3", 0, mode=SetMode.COMPARE_AND_SET, expected_version=item.version)
    assert swapped.stored
    assert swapped.version > item.version
    late = cache.set(b"a", b"4", 0, mode=SetMode.COMPARE_AND_SET, expected_version=item.version)
    assert late.outcome is SetOutcome.EXISTS
    absent = cache.set(b"z", b"1", 0, mode=SetMode.COMPARE_AND_SET, expected_version=1)
    assert absent.outcome is SetOutcome.NOT_FOUND
    again = cache.get(b"a", 0).item
    assert again is not None
    assert again.value == b"3"


def test_multi_get_returns_the_hits_in_request_order() -> None:
    cache = store()
    cache.set(b"b", b"2", 0)
    cache.set(b"a", b"1", 0)
    assert [item.key for item in cache.multi_get([b"a", b"x", b"b"], 1)] == [b"a", b"b"]


def test_a_delete_invalidates_the_lease_so_a_stale_set_is_refused() -> None:
    """The paper's stale set: a reader misses, reads the database, is slow; meanwhile a writer
    updates the database and deletes the key. The slow reader's set must not land."""
    cache = store()
    miss = cache.get(b"k", 0, want_lease=True)
    assert miss.lease_token > 0
    cache.delete(b"k", 10)  # the writer's invalidation
    late = cache.set(b"k", b"old", 20, lease_token=miss.lease_token)
    assert late.outcome is SetOutcome.LEASE_INVALID
    assert cache.get(b"k", 30).item is None
    assert cache.stats.stale_sets_refused == 1


def test_a_valid_lease_refills_and_ends() -> None:
    cache = store()
    miss = cache.get(b"k", 0, want_lease=True)
    assert cache.set(b"k", b"v", 5, lease_token=miss.lease_token).stored
    again = cache.set(b"k", b"w", 6, lease_token=miss.lease_token)
    assert again.outcome is SetOutcome.LEASE_INVALID  # a lease refills once


def test_a_second_miss_within_the_lease_waits_with_the_stale_value() -> None:
    """Thundering herd: one lease per key per lease_ms; the others wait, and may take the value
    the last delete removed."""
    cache = store(lease_ms=1_000, stale_ms=500)
    cache.set(b"k", b"old", 0)
    cache.delete(b"k", 100)
    first = cache.get(b"k", 200, want_lease=True)
    second = cache.get(b"k", 300, want_lease=True)
    assert first.lease_token > 0
    assert (second.lease_token, second.wait, second.stale_value) == (0, True, b"old")
    late = cache.get(b"k", 900, want_lease=True)  # the stale value is too old by now
    assert (late.wait, late.stale_value) == (True, None)
    retaken = cache.get(b"k", 1_200, want_lease=True)  # the first lease lapsed: a new one
    assert retaken.lease_token > first.lease_token
    assert cache.set(b"k", b"x", 1_300, lease_token=first.lease_token).outcome is (
        SetOutcome.LEASE_INVALID
    )
    assert cache.stats.lease_waits == 2


def test_a_plain_set_ends_the_lease() -> None:
    cache = store()
    miss = cache.get(b"k", 0, want_lease=True)
    cache.set(b"k", b"fresh", 1)  # a writer's set, no lease
    assert cache.set(b"k", b"old", 2, lease_token=miss.lease_token).outcome is (
        SetOutcome.LEASE_INVALID
    )
    item = cache.get(b"k", 3).item
    assert item is not None
    assert item.value == b"fresh"


@pytest.mark.parametrize(
    ("key", "value", "ttl_ms"),
    [
        (b"", b"v", 0),
        (b"k" * (KEY_BYTES_MAX + 1), b"v", 0),
        (b"k", b"v" * (VALUE_BYTES_MAX + 1), 0),
        (b"k", b"v", -1),
    ],
)
def test_sizes_and_ttls_are_checked(key: bytes, value: bytes, ttl_ms: int) -> None:
    with pytest.raises(ValueError, match=r"bytes|ttl_ms"):
        store().set(key, value, 0, ttl_ms=ttl_ms)
