"""The storage writer of a Raft node: every write to its ``RaftStorage`` goes through one queue,
in order, and the writes that queue up while one group is on its way to disk go down together
under one fsync (group commit).

This is what lets a leader write asynchronously (``RaftCore.accept``, after etcd's
``AsyncStorageWrites``): its driver hands a Ready's write over and goes on to the next input
while the disk works, and many Readies share an fsync. Two rules make that safe:

* **Order.** Writes reach the disk in the order they were handed over, because each may truncate
  what an earlier one wrote (Raft 2014, 5.3) and a commit index may only follow the entries it
  covers. One task drains the queue; one worker thread writes each group.
* **Barriers.** ``flushed()`` completes once every write handed over so far is durable. A Ready
  whose messages promise the disk (a vote, a follower's acknowledgement) waits for it first.

A failed write fails every write queued after it, and every later one: what follows a write that
did not happen cannot be applied on top of it. The node stops on such a failure, as it did when
its writes were synchronous.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from distlab.raft.core import Entry, HardState, Snapshot
from distlab.raft.storage import RaftStorage


class StorageFailedError(RuntimeError):
    """A write failed: this one, or one queued before it. Not a ValueError, which the node's
    driver takes for a refused input and survives."""


@dataclass(frozen=True, slots=True)
class _Write:
    hard_state: HardState | None
    entries: Sequence[Entry]
    snapshot: Snapshot | None  # received from a leader (``save``)
    compaction: Snapshot | None  # the application's own (``compact``)
    sync: bool
    done: asyncio.Future[None]


class StorageWriter:
    def __init__(self, storage: RaftStorage) -> None:
        self._storage = storage
        self._queue: list[_Write] = []
        self._last: asyncio.Future[None] | None = None  # the last write handed over
        self._wake = asyncio.Event()
        self._closing = False
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        # writes_handed / groups_written is the batching the queue achieved: writes per fsync.
        self.writes_handed = 0
        self.groups_written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="storage-writer")

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        *,
        sync: bool,
    ) -> asyncio.Future[None]:
        """Queue ``RaftStorage.save``; the future completes once it is on disk (durable if
        ``sync``: a write without it, a commit index alone, is made durable by the next fsync)."""
        return self._hand_over(hard_state, entries, snapshot, None, sync)

    def compact(self, snapshot: Snapshot) -> asyncio.Future[None]:
        """Queue ``RaftStorage.compact``, after every write handed over before it."""
        return self._hand_over(None, (), None, snapshot, True)

    def flushed(self) -> asyncio.Future[None]:
        """Completes once every write handed over so far is on disk."""
        if self._failure is not None:
            return self._failed_future()
        last = self._last
        if last is None or last.done():
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return asyncio.shield(last)  # a waiter cancelled must not cancel the write

    def idle(self) -> bool:
        """Nothing queued and nothing being written: a write made now directly, on this thread,
        keeps the order."""
        return self._last is None or self._last.done()

    async def close(self) -> None:
        """Write what is queued, then stop. Later writes fail."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    def _hand_over(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        compaction: Snapshot | None,
        sync: bool,
    ) -> asyncio.Future[None]:
        if self._failure is not None or self._closing:
            return self._failed_future()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(hard_state, entries, snapshot, compaction, sync, done))
        self._last = done
        self.writes_handed += 1
        self._wake.set()
        return done

    def _failed_future(self) -> asyncio.Future[None]:
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(self._failure or StorageFailedError("the storage writer is closed"))
        return failed

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group, self._queue = self._queue, []
                try:
                    await asyncio.to_thread(self._write_group, group)
                except Exception as error:
                    failure = StorageFailedError(f"a write to the Raft log failed: {error!r}")
                    failure.__cause__ = error
                    self._failure = failure
                    for write in (*group, *self._queue):
                        if not write.done.done():
                            write.done.set_exception(failure)
                    self._queue.clear()
                    return
                self.groups_written += 1
                for write in group:
                    if not write.done.done():
                        write.done.set_result(None)
            if self._closing:
                return

    def _write_group(self, group: list[_Write]) -> None:
        """In the worker thread: every write in order, then one fsync for all of them."""
        storage = self._storage
        for write in group:
            if write.compaction is not None:
                storage.compact(write.compaction)  # fsyncs its mark, and so what came before
            else:
                storage.save(write.hard_state, write.entries, write.snapshot, sync=False)
        if any(write.sync for write in group):
            storage.sync()  # a no-op if a compaction's fsync already covered the group
