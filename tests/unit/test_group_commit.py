"""Group commit on an event loop (``distlab.common.group_commit``): concurrent appends share
fsyncs (group commit, DeWitt et al., SIGMOD 1984: one log write and flush for many commits),
nobody is acknowledged before its record is durable, and a failed fsync fails every waiter and
everything after it (chaos matrix row 17: no acknowledgement after a failed fsync).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from distlab.common import group_commit
from distlab.common.group_commit import AsyncGroupCommitter, TooManyPendingAppendsError
from distlab.common.wal import Record
from distlab.common.wal_file import (
    FsyncPolicy,
    WalClosedError,
    WalFailedError,
    WalOptions,
    WriteAheadLog,
)

# Upper bound on waiting for an append that must finish; generous for a busy CI machine.
APPEND_DEADLINE_S = 30.0


class GatedFsync:
    """An fsync to inject: blocks while the gate is closed, raises EIO while ``failing``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.failing = False

    def __call__(self, descriptor: int) -> None:
        self.entered.set()
        if not self.gate.wait(timeout=APPEND_DEADLINE_S):
            raise OSError(errno.ETIMEDOUT, "the test never opened the fsync gate")
        if self.failing:
            raise OSError(errno.EIO, "injected fsync failure")
        os.fsync(descriptor)


def open_log(directory: Path, policy: FsyncPolicy = FsyncPolicy.ALWAYS) -> WriteAheadLog:
    log, _ = WriteAheadLog.open(directory, WalOptions(fsync_policy=policy))
    return log


def reopen(directory: Path) -> list[Record]:
    log, records = WriteAheadLog.open(directory)
    log.close()
    return records


@pytest.mark.asyncio
async def test_concurrent_appends_share_fsyncs_and_are_durable_when_acknowledged(
    tmp_path: Path,
) -> None:
    writers, appends_per_writer = 64, 20
    log = open_log(tmp_path)
    committer = AsyncGroupCommitter(log)
    fsyncs_at_open = log.fsync_count
    acknowledged: list[int] = []
    not_durable: list[tuple[int, int]] = []

    async def writer(index: int) -> None:
        for counter in range(appends_per_writer):
            sequence = await committer.append(f"{index}:{counter}".encode())
            # Checked right after the await, before anything else can run on the loop.
            if sequence > log.durable_sequence:
                not_durable.append((sequence, log.durable_sequence))
            acknowledged.append(sequence)

    await asyncio.wait_for(
        asyncio.gather(*(writer(index) for index in range(writers))), APPEND_DEADLINE_S
    )
    fsyncs = log.fsync_count - fsyncs_at_open
    await committer.close()
    log.close()

    total = writers * appends_per_writer
    assert not_durable == []
    assert sorted(acknowledged) == list(range(1, total + 1))
    assert fsyncs <= total // 8, f"{fsyncs} fsyncs for {total} appends: group commit not sharing"
    assert [record.sequence for record in reopen(tmp_path)] == list(range(1, total + 1))


@pytest.mark.asyncio
async def test_sixty_four_appends_at_once_need_only_a_few_fsyncs(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    committer = AsyncGroupCommitter(log)
    fsyncs_at_open = log.fsync_count

    sequences = await asyncio.wait_for(
        asyncio.gather(*(committer.append(b"x") for _ in range(64))), APPEND_DEADLINE_S
    )

    # All 64 are written before the loop yields; at most one fsync is in flight meanwhile, so
    # the first fsync covers some and the next one covers the rest.
    assert log.fsync_count - fsyncs_at_open <= 3
    assert sorted(sequences) == list(range(1, 65))
    assert log.durable_sequence == 64
    await committer.close()
    log.close()


@pytest.mark.asyncio
async def test_acknowledgements_come_in_sequence_order(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    committer = AsyncGroupCommitter(log)
    order: list[int] = []

    async def append_and_note() -> None:
        order.append(await committer.append(b"x"))

    await asyncio.wait_for(
        asyncio.gather(*(append_and_note() for _ in range(100))), APPEND_DEADLINE_S
    )

    assert order == sorted(order)
    await committer.close()
    log.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", [FsyncPolicy.NEVER, FsyncPolicy.INTERVAL])
async def test_without_always_an_append_returns_after_the_write(
    tmp_path: Path, policy: FsyncPolicy
) -> None:
    fsync = GatedFsync()
    log, _ = WriteAheadLog.open(tmp_path, WalOptions(fsync_policy=policy), fsync=fsync)
    fsync.gate.clear()  # any fsync now would block: the appends must not wait for one
    committer = AsyncGroupCommitter(log)

    sequences = [await committer.append(b"x") for _ in range(10)]

    assert sequences == list(range(1, 11))
    assert committer.pending_appends == 0
    fsync.gate.set()
    await committer.close()
    log.close()
    assert len(reopen(tmp_path)) == 10


@pytest.mark.asyncio
async def test_a_failed_fsync_fails_every_waiter_and_every_later_append(tmp_path: Path) -> None:
    fsync = GatedFsync()
    log, _ = WriteAheadLog.open(tmp_path, fsync=fsync)
    committer = AsyncGroupCommitter(log)
    assert await committer.append(b"durable") == 1
    fsync.gate.clear()
    fsync.entered.clear()
    fsync.failing = True

    waiters = [asyncio.ensure_future(committer.append(b"doomed")) for _ in range(10)]
    await asyncio.to_thread(fsync.entered.wait, APPEND_DEADLINE_S)
    assert committer.pending_appends == 10
    fsync.gate.set()
    outcomes = await asyncio.wait_for(
        asyncio.gather(*waiters, return_exceptions=True), APPEND_DEADLINE_S
    )

    assert all(isinstance(outcome, WalFailedError) for outcome in outcomes), outcomes
    fsync.failing = False  # a retried fsync would now succeed; it must not be trusted
    last_sequence = log.last_sequence
    with pytest.raises(WalFailedError):
        await committer.append(b"later")
    assert log.last_sequence == last_sequence  # refused before writing
    assert log.durable_sequence == 1
    await committer.close()
    log.close()


@pytest.mark.asyncio
async def test_too_many_pending_appends_are_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit, "PENDING_APPENDS_MAX", 4)
    fsync = GatedFsync()
    log, _ = WriteAheadLog.open(tmp_path, fsync=fsync)
    committer = AsyncGroupCommitter(log)
    fsync.gate.clear()
    try:
        waiters = [asyncio.ensure_future(committer.append(b"x")) for _ in range(4)]
        await asyncio.sleep(0)  # let the four write and queue (a scheduling step, not a delay)
        assert committer.pending_appends == 4

        with pytest.raises(TooManyPendingAppendsError, match="PENDING_APPENDS_MAX = 4"):
            await committer.append(b"one too many")
        assert log.last_sequence == 4
    finally:
        fsync.gate.set()
    assert sorted(await asyncio.wait_for(asyncio.gather(*waiters), APPEND_DEADLINE_S)) == [
        1,
        2,
        3,
        4,
    ]
    assert await committer.append(b"room again") == 5
    await committer.close()
    log.close()


@pytest.mark.asyncio
async def test_close_waits_for_pending_appends_then_refuses_new_ones(tmp_path: Path) -> None:
    fsync = GatedFsync()
    log, _ = WriteAheadLog.open(tmp_path, fsync=fsync)
    committer = AsyncGroupCommitter(log)
    fsync.gate.clear()
    fsync.entered.clear()
    waiters = [asyncio.ensure_future(committer.append(b"x")) for _ in range(5)]
    await asyncio.to_thread(fsync.entered.wait, APPEND_DEADLINE_S)

    closing = asyncio.ensure_future(committer.close())
    await asyncio.sleep(0)
    assert not closing.done()
    fsync.gate.set()
    await asyncio.wait_for(closing, APPEND_DEADLINE_S)

    assert all(waiter.done() for waiter in waiters)
    assert sorted(waiter.result() for waiter in waiters) == [1, 2, 3, 4, 5]
    with pytest.raises(WalClosedError):
        await committer.append(b"late")
    log.close()


@pytest.mark.asyncio
async def test_a_cancelled_append_does_not_disturb_the_others(tmp_path: Path) -> None:
    fsync = GatedFsync()
    log, _ = WriteAheadLog.open(tmp_path, fsync=fsync)
    committer = AsyncGroupCommitter(log)
    fsync.gate.clear()
    fsync.entered.clear()
    waiters = [asyncio.ensure_future(committer.append(b"x")) for _ in range(3)]
    await asyncio.to_thread(fsync.entered.wait, APPEND_DEADLINE_S)

    waiters[1].cancel()
    fsync.gate.set()
    outcomes = await asyncio.wait_for(
        asyncio.gather(*waiters, return_exceptions=True), APPEND_DEADLINE_S
    )

    assert outcomes[0] == 1
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert outcomes[2] == 3
    await committer.close()
    log.close()
    # Cancelling stops the waiting, not the write: the record is in the log (indefinite).
    assert [record.sequence for record in reopen(tmp_path)] == [1, 2, 3]
