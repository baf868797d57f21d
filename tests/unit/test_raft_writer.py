"""The storage writer of a Raft node (distlab.raft.writer): writes reach the disk in the order
they were handed over, the ones that queue up together share one fsync (group commit), and a
failed write fails everything after it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from distlab.raft.core import Entry, EntryKind, HardState, Snapshot
from distlab.raft.storage import RaftStorage
from distlab.raft.writer import StorageFailedError, StorageWriter

VOTERS = frozenset({"n1", "n2", "n3"})


def entry(index: int, term: int = 1) -> Entry:
    return Entry(term, index, EntryKind.NORMAL, f"command {index}".encode())


@contextlib.asynccontextmanager
async def opened(directory: Path) -> AsyncIterator[tuple[RaftStorage, StorageWriter]]:
    """The storage in ``directory`` and a writer over it (not started), both closed after."""
    storage, _ = RaftStorage.open(directory)
    writer = StorageWriter(storage)
    try:
        yield storage, writer
    finally:
        await writer.close()
        storage.close()


@pytest.mark.asyncio
async def test_writes_handed_over_together_share_an_fsync_and_keep_their_order(
    tmp_path: Path,
) -> None:
    async with opened(tmp_path) as (storage, writer):
        writer.start()
        fsyncs_before = storage.fsync_count
        first = writer.save(HardState(1, "n1", 0), (entry(1),), None, sync=True)
        rest = [writer.save(None, (entry(index),), None, sync=True) for index in range(2, 51)]
        await asyncio.gather(first, *rest)
        # The first write may go down alone; the 49 queued behind it go down as one group.
        assert writer.writes_handed == 50
        assert writer.groups_written <= 2
        assert storage.fsync_count - fsyncs_before <= 2

    _, recovered = RaftStorage.open(tmp_path)
    assert [stored.index for stored in recovered.entries] == list(range(1, 51))


@pytest.mark.asyncio
async def test_flushed_waits_for_every_write_handed_over_before_it(tmp_path: Path) -> None:
    async with opened(tmp_path) as (storage, writer):
        assert writer.idle()
        assert writer.flushed().done()
        written = writer.save(HardState(1, "n1", 0), (entry(1),), None, sync=True)
        barrier = writer.flushed()
        assert not writer.idle()
        assert not barrier.done()  # the writer has not started: nothing is on disk yet
        writer.start()
        await barrier
        assert written.done()
        assert storage.last_index == 1


@pytest.mark.asyncio
async def test_a_compaction_goes_after_the_writes_handed_over_before_it(tmp_path: Path) -> None:
    async with opened(tmp_path) as (storage, writer):
        writer.start()
        entries = tuple(entry(index) for index in (1, 2, 3))
        writer.save(HardState(1, "n1", 3), entries, None, sync=True)
        # Handed over before the entries it covers are written: it must wait for them.
        await writer.compact(Snapshot(3, 1, VOTERS, b"state at 3"))
        assert storage.snapshot is not None
        assert storage.snapshot.index == 3


@pytest.mark.asyncio
async def test_a_failed_write_fails_every_write_after_it(tmp_path: Path) -> None:
    async with opened(tmp_path) as (storage, writer):
        writer.start()
        await writer.save(HardState(1, "n1", 0), (entry(1),), None, sync=True)
        gap = writer.save(None, (entry(5),), None, sync=True)  # does not continue the log
        after = writer.save(None, (entry(2),), None, sync=True)
        with pytest.raises(StorageFailedError, match="refused to save"):
            await gap
        with pytest.raises(StorageFailedError):
            await after  # valid alone, but it was queued behind a write that did not happen
        with pytest.raises(StorageFailedError):
            await writer.save(None, (entry(2),), None, sync=True)
        with pytest.raises(StorageFailedError):
            await writer.flushed()
        assert storage.last_index == 1
