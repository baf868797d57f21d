"""Hinted handoff (Dynamo 2007, 4.6): writes a fallback node holds for a replica that was down.

"The replica sent to D will have a hint in its metadata that suggests which node was the
intended recipient of the replica (in this case A). Nodes that receive hinted replicas will keep
them in a separate local database that is scanned periodically. Upon detecting that A has
recovered, D will attempt to deliver the replica to A. Once the transfer succeeds, D may delete
the object from its local store without decreasing the total number of replicas in the system."

The separate local database is a second storage engine (its own WAL, fsynced like the main
one, so a hint is as durable as the write it stands for). Its key is the intended node and the
key; its value the sibling set to hand over, merged when several hints for one key arrive.

A hint is deleted only if it still holds exactly what was delivered: a write hinted while the
delivery was in flight stays behind and goes with the next round. Delivery itself is a merge on
the owner, so delivering twice is harmless.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from distlab.kvstore.replica import KeyLocks
from distlab.kvstore.storage import StorageEngine, StorageOptions
from distlab.kvstore.versioning import Version, decode_siblings, encode_siblings, reconcile

_TARGET_LENGTH = struct.Struct(">H")
# Hints handed over per target per round: bounds the memory and the time of one round; the rest
# wait for the next one (rounds are a second apart by default).
HINTS_PER_ROUND_MAX = 1000


@dataclass(frozen=True, slots=True)
class Hint:
    target: str
    key: bytes
    versions: tuple[Version, ...]


def _hint_key(target: str, key: bytes) -> bytes:
    encoded = target.encode()
    return _TARGET_LENGTH.pack(len(encoded)) + encoded + key


def _split_hint_key(hint_key: bytes) -> tuple[str, bytes]:
    (length,) = _TARGET_LENGTH.unpack_from(hint_key)
    start = _TARGET_LENGTH.size
    return hint_key[start : start + length].decode(), hint_key[start + length :]


class HintStore:
    def __init__(self, engine: StorageEngine) -> None:
        self.engine = engine
        self._locks = KeyLocks()

    @classmethod
    def open(cls, directory: Path, options: StorageOptions) -> HintStore:
        return cls(StorageEngine.open(directory, options))

    async def add(self, target: str, key: bytes, versions: tuple[Version, ...]) -> None:
        """Keep versions for ``target`` durably; merged with any hint already held for key."""
        hint_key = _hint_key(target, key)
        async with self._locks.hold(hint_key):
            stored = self.engine.get(hint_key)
            held = decode_siblings(stored) if stored is not None else ()
            merged = reconcile((*held, *versions))
            if merged != held:
                await self.engine.put(hint_key, encode_siblings(merged))

    def targets(self) -> set[str]:
        """Nodes that have hints waiting, found by skipping from one target's prefix to the next."""
        found: set[str] = set()
        start: bytes | None = None
        while True:
            entries = self.engine.scan(start, None, 1)
            if not entries:
                return found
            hint_key, _ = entries[0]
            target, _ = _split_hint_key(hint_key)
            found.add(target)
            start = _prefix_end(_hint_key(target, b""))

    def pending_for(self, target: str, limit: int = HINTS_PER_ROUND_MAX) -> list[Hint]:
        prefix = _hint_key(target, b"")
        hints = []
        for hint_key, entry in self.engine.scan(prefix, _prefix_end(prefix), limit):
            if entry.value is not None:
                hints.append(Hint(target, hint_key[len(prefix) :], decode_siblings(entry.value)))
        return hints

    def pending_count(self) -> int:
        return self.engine.stats().live_keys

    async def remove_if_unchanged(self, hint: Hint) -> bool:
        """Drop the hint once delivered, unless more arrived for it meanwhile."""
        hint_key = _hint_key(hint.target, hint.key)
        async with self._locks.hold(hint_key):
            stored = self.engine.get(hint_key)
            if stored is None or decode_siblings(stored) != hint.versions:
                return False
            await self.engine.delete(hint_key)
            return True

    def collect_garbage(self) -> int:
        """Drop the tombstones that delivered hints leave behind."""
        return self.engine.collect_tombstones(self.engine.stats().applied_sequence)

    async def close(self) -> None:
        await self.engine.close()


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with prefix (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
