"""One node's replica of the keys it holds: sibling sets, merged durably.

The storage engine keeps opaque bytes per key; here those bytes are a reconciled sibling set
(``versioning.encode_siblings``). Every change to a key is a read-modify-write under that key's
lock: read the stored set, merge, and write back only if the merge changed it. Merging is the
semilattice join of ``versioning.reconcile``, so replicas converge whatever order the merges
arrive in (a replica put, a read repair, a hint handed off, an anti-entropy exchange: they are
all just merges).

The coordinator's own write (``write_new_version``) also runs under the key's lock, so two
concurrent puts coordinated here cannot compute the same dot (versioning.next_version's duty),
and it is durable here before any other replica is asked (Dynamo 4.4: the coordinator "writes
the new version locally" first).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from distlab.kvstore.storage import StorageEngine
from distlab.kvstore.versioning import (
    VectorClock,
    Version,
    decode_siblings,
    encode_siblings,
    last_writer_wins,
    next_version,
    reconcile,
)


class KeyLocks:
    """One asyncio.Lock per key in use; a lock lives only while someone holds or awaits it, so
    the table is bounded by the number of requests in flight (itself bounded by the server)."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    siblings: tuple[Version, ...]
    changed: bool


class LocalReplica:
    def __init__(
        self, engine: StorageEngine, node_id: str, *, last_writer_wins: bool = False
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self.locks = KeyLocks()
        self.last_writer_wins = last_writer_wins
        # Live versions that last-writer-wins threw away: the loss it hides, made visible.
        self.discarded_writes = 0

    def resolve_last_writer(self, siblings: tuple[Version, ...]) -> tuple[Version, ...]:
        """In last-writer-wins mode, keep only the newest sibling by wall clock (lossy)."""
        if not self.last_writer_wins or len(siblings) <= 1:
            return siblings
        winner, discarded = last_writer_wins(siblings)
        self.discarded_writes += discarded
        return (winner,)

    def read(self, key: bytes) -> tuple[Version, ...]:
        stored = self.engine.get(key)
        return decode_siblings(stored) if stored is not None else ()

    async def merge(self, key: bytes, incoming: tuple[Version, ...]) -> MergeOutcome:
        """Join ``incoming`` into the stored set; durable before it returns."""
        async with self.locks.hold(key):
            return await self._merge_locked(key, incoming)

    async def write_new_version(
        self,
        key: bytes,
        context: VectorClock,
        value: bytes | None,
        now_wall_ms: int,
        clock_entries_max: int,
    ) -> tuple[Version, tuple[Version, ...]]:
        """Coordinate a put (value) or delete (None): mint the new version from what is stored
        here and the client's context, and store it durably. Returns it and the merged set."""
        async with self.locks.hold(key):
            local = self.read(key)
            version = next_version(
                local,
                context,
                self.node_id,
                value,
                now_wall_ms,
                clock_entries_max,
                # Dots must not repeat after the key is forgotten: see next_version.
                counter_floor=self.engine.last_sequence,
            )
            outcome = await self._merge_locked(key, (version,))
            return version, outcome.siblings

    async def delete_if_unchanged(self, key: bytes, expected: tuple[Version, ...]) -> bool:
        """Forget key entirely (tombstone GC), unless its sibling set changed meanwhile."""
        async with self.locks.hold(key):
            if self.read(key) != expected:
                return False
            await self.engine.delete(key)
            return True

    async def _merge_locked(self, key: bytes, incoming: tuple[Version, ...]) -> MergeOutcome:
        local = self.read(key)
        merged = self.resolve_last_writer(reconcile((*local, *incoming)))
        if merged == local:
            return MergeOutcome(local, changed=False)
        await self.engine.put(key, encode_siblings(merged))
        return MergeOutcome(merged, changed=True)
