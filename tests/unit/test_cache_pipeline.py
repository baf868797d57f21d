"""The multi-get pipeline (``distlab.cache.pipeline``) against a fake stream, no network: calls
submitted together travel as one batch, results are matched by id, and a stream that fails,
rotates, times out or is closed leaves nothing pending.

No timing is assumed: the writer runs only when the test yields to the loop, so every call
submitted before that is, by construction, waiting when the writer takes its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import grpc.aio
import pytest

from distlab.cache import pipeline
from distlab.cache.core import MULTI_GET_CALLS_PER_BATCH_MAX
from distlab.cache.pipeline import MultiGetFailed, MultiGetPipe, PendingGet
from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.proto import cache_pb2

pytestmark = pytest.mark.asyncio
CALL_DEADLINE_S = 5.0

Answer = Callable[[cache_pb2.CacheMultiGetBatch], list[cache_pb2.CacheMultiGetBatchReply]]


def echo_first_key(batch: cache_pb2.CacheMultiGetBatch) -> list[cache_pb2.CacheMultiGetBatchReply]:
    """A node that holds every key whose value is the key itself, answering in reverse order
    (so only matching by id gets the results right), and only each call's first key."""
    reply = cache_pb2.CacheMultiGetBatchReply()
    for call in reversed(batch.calls):
        reply.results.add(id=call.id, items=[cache_pb2.CacheItem(key=call.keys[0], value=b"v")])
    return [reply]


def never_answer(batch: cache_pb2.CacheMultiGetBatch) -> list[cache_pb2.CacheMultiGetBatchReply]:
    return []


class FakeCall:
    """A MultiGetStream call: what the pipe writes, and the node's replies to read."""

    def __init__(self, answer: Answer, timeout: float) -> None:
        self.answer = answer
        self.timeout = timeout
        self.batches: list[cache_pb2.CacheMultiGetBatch] = []
        self.half_closed = False
        self.cancelled = False
        self.hung = False  # a node that never ends the stream
        self._replies: asyncio.Queue[object] = asyncio.Queue()

    async def write(self, batch: cache_pb2.CacheMultiGetBatch) -> None:
        assert not self.half_closed
        self.batches.append(batch)
        for reply in self.answer(batch):
            self._replies.put_nowait(reply)

    async def done_writing(self) -> None:
        self.half_closed = True
        if not self.hung:
            self._replies.put_nowait(grpc.aio.EOF)  # the node answered everything: it ends

    async def read(self) -> object:
        reply = await self._replies.get()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def fail(self, code: grpc.StatusCode) -> None:
        self._replies.put_nowait(
            grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "fake failure")
        )

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    def __init__(self, answer: Answer = echo_first_key) -> None:
        self.answer = answer
        self.calls: list[FakeCall] = []

    def MultiGetStream(self, timeout: float) -> FakeCall:
        call = FakeCall(self.answer, timeout)
        self.calls.append(call)
        return call


def deadline_at(seconds: float = CALL_DEADLINE_S) -> float:
    return asyncio.get_running_loop().time() + seconds


async def results(gets: list[PendingGet]) -> list[list[bytes]]:
    return [[item.key for item in await get.result(deadline_at())] for get in gets]


async def test_calls_submitted_together_travel_as_one_batch_and_match_by_id() -> None:
    stub = FakeStub()
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    gets = [pipe.submit([f"key-{number}".encode(), b"other"], now_ms=0) for number in range(100)]

    assert await results(gets) == [[f"key-{number}".encode()] for number in range(100)]
    (call,) = stub.calls
    assert [len(batch.calls) for batch in call.batches] == [100]
    assert all(not get.stream.pending for get in gets if get.stream is not None)
    await pipe.close()


async def test_a_batch_holds_at_most_the_nodes_limit_of_calls() -> None:
    stub = FakeStub()
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    count = MULTI_GET_CALLS_PER_BATCH_MAX + 44
    gets = [pipe.submit([b"key"], now_ms=0) for _ in range(count)]

    assert await results(gets) == [[b"key"]] * count
    assert [len(batch.calls) for batch in stub.calls[0].batches] == [
        MULTI_GET_CALLS_PER_BATCH_MAX,
        44,
    ]
    await pipe.close()


async def test_a_batch_holds_at_most_its_budget_of_key_bytes() -> None:
    stub = FakeStub()
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    keys = [bytes([letter]) * 250 for letter in range(1, 101)]  # 100 keys of the largest size
    call_bytes = pipeline.CALL_FRAMING_BYTES_MAX + 100 * (250 + pipeline.KEY_FRAMING_BYTES_MAX)
    fit = pipeline.BATCH_KEY_BYTES_MAX // call_bytes
    gets = [pipe.submit(keys, now_ms=0) for _ in range(fit + 1)]

    await results(gets)
    assert [len(batch.calls) for batch in stub.calls[0].batches] == [fit, 1]
    await pipe.close()


async def test_a_failed_stream_fails_its_pending_calls_and_the_next_call_reopens() -> None:
    stub = FakeStub(never_answer)
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    gets = [pipe.submit([b"key"], now_ms=0) for _ in range(3)]
    await asyncio.sleep(0)  # the writer sends the batch
    stub.calls[0].fail(grpc.StatusCode.UNAVAILABLE)

    for get in gets:
        with pytest.raises(MultiGetFailed) as failed:
            await get.result(deadline_at())
        assert failed.value.code is grpc.StatusCode.UNAVAILABLE
        assert not failed.value.shed

    stub.answer = echo_first_key
    assert await results([pipe.submit([b"again"], now_ms=1)]) == [[b"again"]]
    assert len(stub.calls) == 2
    await pipe.close()


async def test_a_stream_that_ends_with_calls_unanswered_fails_them_as_unavailable() -> None:
    stub = FakeStub(never_answer)
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    get = pipe.submit([b"key"], now_ms=0)
    await asyncio.sleep(0)
    await stub.calls[0].done_writing()  # the node ends the stream cleanly, without an answer

    with pytest.raises(MultiGetFailed) as failed:
        await get.result(deadline_at())
    assert failed.value.code is grpc.StatusCode.UNAVAILABLE
    await pipe.close()


async def test_an_old_stream_is_retired_drained_and_replaced() -> None:
    stub = FakeStub()
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    first = pipe.submit([b"first"], now_ms=0)
    second = pipe.submit([b"second"], now_ms=pipeline.STREAM_ROTATE_MS)

    assert await results([first, second]) == [[b"first"], [b"second"]]
    old, new = stub.calls
    assert old.half_closed  # written, then half-closed: the node answers and ends it
    assert not new.half_closed
    assert [len(batch.calls) for batch in old.batches] == [1]
    # Every call on a stream keeps its whole deadline, even one taken just before rotation.
    assert old.timeout == max(
        pipeline.STREAM_DEADLINE_S, pipeline.STREAM_ROTATE_MS / 1000 + CALL_DEADLINE_S
    )
    await asyncio.sleep(0)  # the old stream's reader sees the end
    assert await results([pipe.submit([b"third"], now_ms=pipeline.STREAM_ROTATE_MS + 1)]) == [
        [b"third"]
    ]
    assert len(stub.calls) == 2
    await pipe.close()


async def test_a_call_past_its_deadline_fails_and_leaves_the_pending_map() -> None:
    stub = FakeStub(never_answer)
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    get = pipe.submit([b"key"], now_ms=0)

    with pytest.raises(MultiGetFailed) as failed:
        await get.result(deadline_at(0.0))
    assert failed.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert get.stream is not None
    assert not get.stream.pending
    await pipe.close()


async def test_past_the_pending_limit_a_call_is_shed_at_once() -> None:
    stub = FakeStub(never_answer)
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    waiting = [pipe.submit([b"key"], now_ms=0) for _ in range(pipeline.PENDING_CALLS_MAX)]
    shed = pipe.submit([b"key"], now_ms=0)

    with pytest.raises(MultiGetFailed) as failed:
        await shed.result(deadline_at())
    assert failed.value.shed
    assert failed.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    await pipe.close()
    for get in waiting:
        with pytest.raises(MultiGetFailed):
            await get.result(deadline_at())


async def test_keys_a_node_would_refuse_are_refused_before_they_reach_the_stream() -> None:
    stub = FakeStub()
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    for keys in ([b""], [b"k" * 251], [b"k"] * 1001):
        with pytest.raises(DistlabError) as refused:
            pipe.submit(keys, now_ms=0)
        assert refused.value.kind is errors.INVALID_ARGUMENT
    assert not stub.calls
    await pipe.close()


async def test_close_fails_pending_calls_and_ends_the_tasks() -> None:
    stub = FakeStub(never_answer)
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    get = pipe.submit([b"key"], now_ms=0)
    await asyncio.sleep(0)
    assert get.stream is not None
    stream = get.stream

    await pipe.close()

    with pytest.raises(MultiGetFailed) as failed:
        await get.result(deadline_at())
    assert failed.value.code is grpc.StatusCode.CANCELLED
    assert stream.writer.done()
    assert stream.reader.done()
    # Half-closed, and ended by the node: nothing is left in flight, nothing was cancelled.
    assert stub.calls[0].half_closed
    assert not stub.calls[0].cancelled
    with pytest.raises(MultiGetFailed):  # a closed pipe refuses at once
        await pipe.submit([b"key"], now_ms=0).result(deadline_at())


async def test_close_cancels_a_stream_the_node_does_not_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "CLOSE_GRACE_S", 0.0)
    stub = FakeStub(never_answer)
    pipe = MultiGetPipe(stub, CALL_DEADLINE_S)
    get = pipe.submit([b"key"], now_ms=0)
    await asyncio.sleep(0)
    stub.calls[0].hung = True

    await pipe.close()

    assert stub.calls[0].cancelled
    with pytest.raises(MultiGetFailed):
        await get.result(deadline_at())
