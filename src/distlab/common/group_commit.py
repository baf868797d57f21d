"""Group commit for asyncio: many coroutines appending to one write-ahead log share each fsync.

What it implements
------------------
Group commit (DeWitt et al., "Implementation Techniques for Main Memory Database Systems",
SIGMOD 1984, which names it; Helland et al., "Group Commit Timers and High Volume Transaction
Systems", HPTS 1987): a commit is acknowledged only once its log record is on disk, and every
record written while one fsync is in flight waits for the *next* fsync, which then covers all of
them. With an fsync of time F, one writer reaches at most 1/F acknowledged appends per second;
N writers reach up to N/F, until the CPU cost of writing the records is the bound instead.

This is the asyncio shell over ``WriteAheadLog``: the write (one ``os.write``, microseconds)
runs on the event loop's thread; only the fsync, which blocks for as long as the disk takes, is
sent to an executor thread, once per batch rather than once per record, so the loop does not hop
threads per append.

The recipe, for a log whose policy is ``FsyncPolicy.ALWAYS``:

1. Write the frame (``wal.write``) on the loop thread; it gets the next sequence.
2. If the record is already durable (another thread's fsync covered it), acknowledge it.
3. Otherwise queue a waiter (sequence, future); waiters are queued in sequence order.
4. If no sync is in flight, start one (``loop.run_in_executor(executor, wal.sync)``). At most
   one sync is in flight: the records written while it runs wait for the next one.
5. When a sync returns its durable sequence D, resolve every waiter with sequence <= D, oldest
   first, so acknowledgements go out in log order.
6. If waiters remain, start the next sync at once (step 4).
7. If a sync raises, the log is poisoned (see ``wal_file``): every waiter, and every later
   append, raises ``WalFailedError``. Nothing is acknowledged after a failed fsync.

Under ``INTERVAL`` and ``NEVER`` an append returns right after step 1.

Errors are definite or indefinite (Maelstrom's error model, ``distlab.common.errors``):
``TooManyPendingAppendsError`` and ``WalClosedError`` are raised before anything is written
(definite: the record does not exist); ``WalFailedError`` from a waiter is indefinite (the record
was written and may or may not be on disk). A cancelled append is indefinite too: its record is
written and will become durable; only the caller stops waiting.

What it leaves out: a commit delay (Helland's timer, PostgreSQL's ``commit_delay``) that waits
a little before fsyncing to grow the batch; here the batch is whatever was written while the
previous fsync ran, which needs no tuning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque

from distlab.common.wal_file import FsyncPolicy, WalClosedError, WalFailedError, WriteAheadLog

# Appends waiting for an fsync at once. Each waiter costs a future (a few hundred bytes), but the
# real bound is latency: at the tens of thousands of acknowledged appends per second a 2-core
# machine reaches, 10,000 waiters are a fraction of a second of queue; past that, shedding
# (RESOURCE_EXHAUSTED) serves clients better than queueing. It is far above the server's
# concurrent-RPC limit, so in a server it trips only when something else is wrong.
PENDING_APPENDS_MAX = 10_000


class TooManyPendingAppendsError(Exception):
    """PENDING_APPENDS_MAX appends already wait for an fsync; this one was refused before it
    was written (definite). A server maps it to RESOURCE_EXHAUSTED."""


class AsyncGroupCommitter:
    """Appends from coroutines on one event loop, acknowledged per the log's fsync policy.

    The committer does not own the log: ``close`` waits for pending appends but leaves closing
    the log to whoever opened it.
    """

    def __init__(
        self, wal: WriteAheadLog, executor: concurrent.futures.Executor | None = None
    ) -> None:
        self._wal = wal
        self._executor = executor  # None: the event loop's default executor
        self._wait_for_fsync = wal.options.fsync_policy is FsyncPolicy.ALWAYS
        # (sequence, future) in increasing sequence order: appends write on the loop thread,
        # one at a time, so each one's sequence is above every earlier waiter's.
        self._waiters: deque[tuple[int, asyncio.Future[int]]] = deque()
        self._sync_in_flight: asyncio.Future[int] | None = None
        self._failure: BaseException | None = None
        self._closed = False

    @property
    def pending_appends(self) -> int:
        """Appends written and waiting for an fsync."""
        return len(self._waiters)

    async def append(self, payload: bytes) -> int:
        """Write a record; return its sequence once it is acknowledged (durable under ALWAYS)."""
        if self._failure is not None:
            raise _failed_error(self._failure)
        if self._closed:
            raise WalClosedError("the group committer is closed")
        if len(self._waiters) >= PENDING_APPENDS_MAX:
            raise TooManyPendingAppendsError(
                f"{len(self._waiters)} appends already wait for an fsync "
                f"(PENDING_APPENDS_MAX = {PENDING_APPENDS_MAX}); nothing was written"
            )
        sequence = self._wal.write(payload)  # step 1
        if not self._wait_for_fsync or sequence <= self._wal.durable_sequence:  # step 2
            return sequence
        assert not self._waiters or self._waiters[-1][0] < sequence, "waiters out of order"
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append((sequence, waiter))  # step 3
        if self._sync_in_flight is None:
            self._start_sync()  # step 4
        return await waiter

    async def close(self) -> None:
        """Refuse new appends and wait until every pending one is resolved. Idempotent."""
        self._closed = True
        while self._sync_in_flight is not None:
            # asyncio.wait neither raises the sync's error (the waiters get it) nor cancels the
            # sync if close() itself is cancelled: the waiters still depend on it.
            await asyncio.wait([self._sync_in_flight])

    def _start_sync(self) -> None:
        loop = asyncio.get_running_loop()
        sync = loop.run_in_executor(self._executor, self._wal.sync)
        self._sync_in_flight = sync
        sync.add_done_callback(self._on_sync_done)

    def _on_sync_done(self, sync: asyncio.Future[int]) -> None:
        # Runs on the loop thread, as a done callback: no await between reading the outcome and
        # resolving the waiters, so no append can interleave.
        self._sync_in_flight = None
        if sync.cancelled():
            self._fail_waiters(WalFailedError("the fsync was cancelled"))  # step 7
            return
        error = sync.exception()
        if error is not None:
            self._fail_waiters(error)  # step 7
            return
        durable_sequence = sync.result()
        waiters = self._waiters
        while waiters and waiters[0][0] <= durable_sequence:  # step 5
            sequence, waiter = waiters.popleft()
            if not waiter.done():  # its append may have been cancelled
                waiter.set_result(sequence)
        if waiters:
            self._start_sync()  # step 6

    def _fail_waiters(self, error: BaseException) -> None:
        self._failure = error
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_failed_error(error))


def _failed_error(cause: BaseException) -> WalFailedError:
    # A fresh exception per waiter: one instance raised in many tasks would collect all their
    # tracebacks.
    error = WalFailedError(f"the write-ahead log failed; nothing more is acknowledged ({cause})")
    error.__cause__ = cause
    return error
