"""Cache-aside in front of the key-value store: read through the cache, write to the store and
then delete the cached copy.

"Scaling Memcache at Facebook" (NSDI 2013), section 3.1, calls this a demand-filled look-aside
cache: a reader asks the cache, and on a miss reads the database and fills the cache; a writer
updates the database and deletes the key from the cache (a delete, not a set: deletes are
idempotent, and a set would race other writers).

Without leases this has a race (the paper's "stale set", 3.2.1): a reader misses and reads the
old value from the database; before it fills the cache, a writer updates the database and
deletes the key; then the reader's fill lands, and the cache serves the old value until it
expires, though the database moved on. ``CacheAside(leases=True)`` (the default) closes it: the
fill carries the lease the miss handed out, and the writer's delete invalidated that lease, so
the fill is refused. ``tests/integration/test_cache_aside.py`` shows the race both ways.
"""

from __future__ import annotations

from distlab.cache.client import CacheClient
from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.kvstore.client import KeyValueClient

# Cached copies expire anyway, so a copy that escaped every invalidation does not live forever.
TTL_MS_DEFAULT = 60_000


class _Absent(Exception):
    """The key is not in the store: nothing to cache."""


class CacheAside:
    def __init__(
        self,
        store: KeyValueClient,
        cache: CacheClient,
        *,
        leases: bool = True,
        ttl_ms: int = TTL_MS_DEFAULT,
    ) -> None:
        self.store = store
        self.cache = cache
        self.leases = leases
        self.ttl_ms = ttl_ms

    async def read(self, key: bytes) -> bytes | None:
        """The value, from the cache or else from the store (filling the cache); None if the
        store does not have the key."""
        try:
            if self.leases:
                return await self.cache.get_or_load(
                    key, lambda: self._load(key), ttl_ms=self.ttl_ms
                )
            cached = await self.cache.get(key)
            if cached is not None:
                return cached
            value = await self._load(key)
            await self.cache.set(key, value, ttl_ms=self.ttl_ms)  # the unguarded fill
            return value
        except _Absent:
            return None

    async def write(self, key: bytes, value: bytes) -> None:
        """Update the store, then invalidate the cached copy."""
        await self.store.update(key, lambda siblings: value)
        await self.cache.delete(key)

    async def _load(self, key: bytes) -> bytes:
        try:
            read = await self.store.get(key)
        except DistlabError as error:
            if error.kind is errors.NOT_FOUND:
                raise _Absent from None
            raise
        return read.value
