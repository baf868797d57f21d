"""Pipelined multi-gets: one stream per cache node, and every multi-get waiting for that node
packed into one message.

After mcrouter, Facebook's memcached router, which sends the requests of many clients to a
server over one shared connection, and the batching of "Scaling Memcache at Facebook" (NSDI
2013, 3.1, "Parallel requests and batching"). In Python gRPC a unary call costs far more CPU
than a message on a stream that is already open, so ``CacheClient.multi_get`` sends its
per-node part of a multi-get as one call on a ``MultiGetStream`` rather than as a ``MultiGet``.

Theory of operation, for one ``MultiGetPipe`` (one per node per client):

1. ``submit`` gives the call an id (a counter of the pipe), records it as pending on the
   pipe's current stream, opening one if there is none, queues it and wakes the writer.
2. The writer, the only task that writes on the stream (gRPC allows one write at a time on a
   call), takes every queued call, up to ``MULTI_GET_CALLS_PER_BATCH_MAX`` calls and
   ``BATCH_KEY_BYTES_MAX`` bytes of keys, and writes them as one ``CacheMultiGetBatch``. Calls
   submitted while it writes wait for the next batch: that wait is what packs them.
3. The reader resolves each result's future by id. The node may split a batch's results over
   several replies; each result comes once.
4. ``PendingGet.result`` waits for the future until the caller's deadline; a call that gives
   up leaves the pending map, and a late result for it is dropped.
5. When the stream ends or fails, every call still pending on it fails with the stream's
   status, and the next ``submit`` opens a new stream.

Every RPC has a deadline, a stream too. A stream takes new calls for ``STREAM_ROTATE_MS``; the
next call after that opens a fresh stream, and the old one is retired: the writer sends what
was queued on it and half-closes it (``done_writing``), the node answers the rest and ends it,
and the reader resolves those answers. Its deadline leaves every call on it its full deadline.

Failures say whether they count against the node (``MultiGetFailed.code``); the client turns
them into misses or errors (``CacheClient.multi_get``). One bad call would end the stream for
every call on it (the node refuses the whole stream), so ``submit`` checks keys against the
node's fixed limits first; a node configured with a smaller key limit can still refuse one.

What it leaves out: mcrouter's several connections per server, and its cancellation of a call
already sent (a call that gave up is still answered, and the answer dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from distlab.cache.core import KEY_BYTES_MAX, MULTI_GET_CALLS_PER_BATCH_MAX, MULTI_GET_KEYS_MAX
from distlab.common import errors
from distlab.common.errors import DistlabError, invalid_argument
from distlab.common.rpc import error_from_rpc
from distlab.proto import cache_pb2

Items = Sequence[cache_pb2.CacheItem]

# A stream takes new calls this long, then a fresh one does: every RPC has a deadline, and a
# stream that is rotated never reaches its own. A minute makes opening a stream (one round
# trip) a negligible share of a busy client's calls.
STREAM_ROTATE_MS = 60_000
# A stream's deadline: past the rotation, with room for the calls it took last to finish. The
# pipe lengthens it where the caller's deadline is longer than the difference.
STREAM_DEADLINE_S = 120.0
# Calls pending on one node (sent or queued, not answered) per client. 64 callers each waiting
# on one multi-get use 64; past 4,096 the node is far behind, and queueing more would only add
# latency and memory, so a call past it fails at once and counts as misses ("shed").
PENDING_CALLS_MAX = 4_096
# Bytes of keys in one batch: a quarter of the largest message a node with the default limits
# accepts (its key and value limits plus 64 KiB: about 1.06 MiB), so a batch is not refused for
# its size; 64 multi-gets of 100 short keys (a few KiB each) still fit in one. A single call
# always goes, alone if it must: MULTI_GET_KEYS_MAX keys of KEY_BYTES_MAX bytes fit in that
# message, as they must for MultiGet.
BATCH_KEY_BYTES_MAX = 256 * 1024
# How long closing a client waits for each node to end its stream, after half-closing it. A
# live node answers at once; the wait matters because a call cancelled instead leaves gRPC
# operations completing after the close, possibly on an event loop that is gone by then.
CLOSE_GRACE_S = 1.0
# What a call's framing adds to its keys in a batch, at most: the call's tag and length, its id
# (a varint), and the tag and length of each key.
CALL_FRAMING_BYTES_MAX = 16
KEY_FRAMING_BYTES_MAX = 3


class MultiGetFailed(Exception):
    """A pipelined multi-get that got no answer. ``code`` is the gRPC status it stands for (the
    stream's, or UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED / CANCELLED for the pipe's
    own reasons); ``shed`` says this client refused it before sending it; ``error`` is what the
    caller is told if it raises."""

    def __init__(self, code: grpc.StatusCode, error: DistlabError, *, shed: bool = False) -> None:
        super().__init__(str(error))
        self.code = code
        self.error = error
        self.shed = shed


@dataclass(eq=False, slots=True)
class PendingGet:
    """One submitted call: what the writer sends and the future the reader resolves."""

    call_id: int
    keys: Sequence[bytes]
    key_bytes: int
    future: asyncio.Future[Items]
    stream: _Stream | None  # None: refused before it reached a stream

    async def result(self, deadline_at: float) -> Items:
        """The node's hits for the call (by the loop's clock, ``deadline_at``); raises
        ``MultiGetFailed``."""
        if self.future.done():  # often, for all but the first node a multi-get awaits
            self.forget()
            return self.future.result()
        try:
            async with asyncio.timeout_at(deadline_at):
                return await self.future
        except TimeoutError:
            raise MultiGetFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                DistlabError(errors.DEADLINE_EXCEEDED, "no multi-get result before the deadline"),
            ) from None
        finally:
            self.forget()

    def cancel(self) -> None:
        """Give up on the call (its result, if one comes, is dropped)."""
        if not self.future.done():
            self.future.cancel()
        elif not self.future.cancelled():
            self.future.exception()  # retrieved: nobody will await it now
        self.forget()

    def forget(self) -> None:
        if self.stream is not None:
            self.stream.pending.pop(self.call_id, None)


class _Stream:
    """One MultiGetStream call, with its writer and reader tasks and the calls pending on it."""

    def __init__(
        self, stub: Any, deadline_s: float, opened_ms: int, on_end: Callable[[_Stream], None]
    ) -> None:
        self.call: Any = stub.MultiGetStream(timeout=deadline_s)
        self.opened_ms = opened_ms
        self.pending: dict[int, PendingGet] = {}
        self.queued: list[PendingGet] = []
        self.retired = False  # takes no new calls; half-closed once its queue is written
        self._on_end = on_end
        self._wakeup = asyncio.Event()
        self.writer = asyncio.create_task(self._write(), name="multi-get writer")
        self.reader = asyncio.create_task(self._read(), name="multi-get reader")

    @property
    def ended(self) -> bool:
        return self.reader.done()

    def enqueue(self, get: PendingGet) -> None:
        assert not self.retired
        assert not self.ended
        self.pending[get.call_id] = get
        self.queued.append(get)
        self._wakeup.set()

    def retire(self) -> None:
        self.retired = True
        self._wakeup.set()

    async def _write(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self.queued:
                    batch = self._take_batch()
                    if batch.calls:  # empty when every call taken had given up
                        await self.call.write(batch)
                if self.retired:
                    await self.call.done_writing()
                    return
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the call ended: the reader fails what is pending, with its status

    def _take_batch(self) -> cache_pb2.CacheMultiGetBatch:
        """The queued calls that fit in one batch, oldest first, taken off the queue."""
        batch = cache_pb2.CacheMultiGetBatch()
        batch_bytes = 0
        taken = 0
        for get in self.queued:
            if len(batch.calls) == MULTI_GET_CALLS_PER_BATCH_MAX:
                break
            if batch.calls and batch_bytes + get.key_bytes > BATCH_KEY_BYTES_MAX:
                break
            taken += 1
            if get.future.done():
                continue  # it gave up while queued
            batch_bytes += get.key_bytes
            batch.calls.add(id=get.call_id, keys=get.keys)
        del self.queued[:taken]
        return batch

    async def _read(self) -> None:
        failure = MultiGetFailed(
            grpc.StatusCode.UNAVAILABLE,
            DistlabError(errors.UNREACHABLE, "the multi-get stream ended before answering"),
        )
        try:
            while True:
                reply = await self.call.read()
                if reply is grpc.aio.EOF:
                    break
                for result in reply.results:
                    get = self.pending.pop(result.id, None)
                    if get is not None and not get.future.done():
                        get.future.set_result(result.items)
        except grpc.aio.AioRpcError as error:
            failure = MultiGetFailed(error.code(), error_from_rpc(error))
        finally:
            self.fail_pending(failure)
            self.writer.cancel()
            self._on_end(self)

    def fail_pending(self, failure: MultiGetFailed) -> None:
        for get in self.pending.values():
            if not get.future.done():
                get.future.set_exception(
                    MultiGetFailed(failure.code, failure.error, shed=failure.shed)
                )
        self.pending.clear()
        self.queued.clear()

    async def close(self, grace_s: float) -> None:
        """End the stream as a rotation does, so that gRPC has nothing left in flight on it;
        cancel it only if the node has not ended it within ``grace_s``."""
        self.retire()
        await asyncio.wait({self.reader}, timeout=grace_s)
        if not self.reader.done():
            self.call.cancel()
        for task in (self.writer, self.reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class MultiGetPipe:
    """The multi-gets of one client to one node, pipelined on one stream at a time."""

    def __init__(self, stub: Any, call_deadline_s: float) -> None:
        self._stub = stub
        # The last call a stream takes may start just before the rotation, and must have its
        # whole deadline.
        self._stream_deadline_s = max(STREAM_DEADLINE_S, STREAM_ROTATE_MS / 1000 + call_deadline_s)
        self._current: _Stream | None = None
        self._retired: set[_Stream] = set()  # draining their last answers
        self._next_id = 1
        self._closed = False

    def submit(self, keys: Sequence[bytes], now_ms: int) -> PendingGet:
        """Queue a multi-get of ``keys`` (``now_ms`` by the client's monotonic clock). Raises
        ``DistlabError`` for keys no node would take; a call this client sheds is returned
        already failed, so the caller handles every failure in one place."""
        key_bytes = _check_keys(keys)
        future: asyncio.Future[Items] = asyncio.get_running_loop().create_future()
        call_id = self._next_id
        self._next_id += 1
        refusal = self._refusal()
        if refusal is not None:
            future.set_exception(refusal)
            return PendingGet(call_id, keys, key_bytes, future, None)
        stream = self._stream(now_ms)
        get = PendingGet(call_id, keys, key_bytes, future, stream)
        stream.enqueue(get)
        return get

    def _refusal(self) -> MultiGetFailed | None:
        if self._closed:
            return MultiGetFailed(
                grpc.StatusCode.CANCELLED,
                DistlabError(errors.FAILED_PRECONDITION, "the cache client is closed"),
            )
        if self._pending_count() >= PENDING_CALLS_MAX:
            return MultiGetFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                DistlabError(
                    errors.RESOURCE_EXHAUSTED,
                    f"{PENDING_CALLS_MAX} multi-gets already pending on this node",
                ),
                shed=True,
            )
        return None

    def _pending_count(self) -> int:
        count = sum(len(stream.pending) for stream in self._retired)
        if self._current is not None:
            count += len(self._current.pending)
        return count

    def _stream(self, now_ms: int) -> _Stream:
        """The stream that takes new calls: the current one, or a new one if there is none,
        the current one ended, or it is due to rotate."""
        current = self._current
        if current is not None and not current.ended:
            if now_ms - current.opened_ms < STREAM_ROTATE_MS:
                return current
            current.retire()
            self._retired.add(current)
        current = _Stream(self._stub, self._stream_deadline_s, now_ms, self._ended)
        self._current = current
        return current

    def _ended(self, stream: _Stream) -> None:
        self._retired.discard(stream)
        if self._current is stream:
            self._current = None

    async def close(self) -> None:
        """Fail every pending call and end the streams; later calls fail at once."""
        self._closed = True
        failure = MultiGetFailed(
            grpc.StatusCode.CANCELLED,
            DistlabError(errors.FAILED_PRECONDITION, "the cache client was closed"),
        )
        streams = [*self._retired, *([self._current] if self._current is not None else [])]
        self._retired.clear()
        self._current = None
        for stream in streams:
            stream.fail_pending(failure)
        await asyncio.gather(*(stream.close(CLOSE_GRACE_S) for stream in streams))


def _check_keys(keys: Sequence[bytes]) -> int:
    """The bytes ``keys`` take in a batch. A key or a count that the node would refuse raises
    here: the node refuses it by ending the stream, and so every call on it."""
    if len(keys) > MULTI_GET_KEYS_MAX:
        raise invalid_argument("keys", f"at most {MULTI_GET_KEYS_MAX} per call")
    lengths = [len(key) for key in keys]
    if lengths and not 0 < min(lengths) <= max(lengths) <= KEY_BYTES_MAX:
        raise invalid_argument("keys", f"must be 1 to {KEY_BYTES_MAX} bytes")
    return CALL_FRAMING_BYTES_MAX + sum(lengths) + KEY_FRAMING_BYTES_MAX * len(lengths)
