"""Pipelined multi-gets (``MultiGetStream``) on real cache nodes: concurrent callers get exactly
their hits, a node that dies costs misses and its pipe reopens when it is back, the node checks
batches like MultiGet, splits replies that would be too large, and a node with open streams
stops without waiting out its shutdown grace."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from distlab.cache.client import CacheClient
from distlab.cache.core import MULTI_GET_CALLS_PER_BATCH_MAX
from distlab.cache.routing import NodeHealth
from distlab.common.processes import NodeProcess
from distlab.common.server import SHUTDOWN_GRACE_S_DEFAULT
from distlab.proto import cache_pb2, cache_pb2_grpc
from tests.integration.cache_nodes import cache_cluster, cache_node

DEADLINE_S = 20.0
NODE_ARGUMENTS = ("--capacity-mb", "16")
SEED = 20_240_607
pytestmark = pytest.mark.asyncio


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    yield from cache_cluster(tmp_path, 3, *NODE_ARGUMENTS)


def keys(count: int) -> list[bytes]:
    return [f"key-{number}".encode() for number in range(count)]


async def fill(client: CacheClient, stored: dict[bytes, bytes]) -> None:
    for key, value in stored.items():
        assert await client.set(key, value)


async def test_concurrent_multi_gets_return_exactly_their_hits(nodes: list[NodeProcess]) -> None:
    """200 callers at once, 50 keys each, drawn with repeats from keys of which a third were
    never set: each gets exactly the hits a reference dict says."""
    rng = random.Random(SEED)
    universe = keys(600)
    stored = {key: b"v-" + key for index, key in enumerate(universe) if index % 3}
    batches = [[rng.choice(universe) for _ in range(50)] for _ in range(200)]
    async with CacheClient([node.address for node in nodes]) as client:
        await fill(client, stored)

        found = await asyncio.gather(*(client.multi_get(batch) for batch in batches))

        for batch, hits in zip(batches, found, strict=True):
            expected = {key: stored[key] for key in batch if key in stored}
            assert hits == expected, f"seed {SEED}"
        assert any(len(set(batch)) < len(batch) for batch in batches)  # repeats were asked
        stats = await client.stats()
        assert sum(reply.misses for reply in stats.values()) > 0


async def test_a_killed_node_costs_misses_and_its_pipe_reopens_after_restart(
    nodes: list[NodeProcess],
) -> None:
    # Never ejected: every multi-get keeps asking the victim, so the pipe must reopen to it.
    health = NodeHealth(eject_after_failures=1_000_000)
    stored = {key: b"v-" + key for key in keys(300)}
    async with CacheClient([node.address for node in nodes], health=health) as client:
        await fill(client, stored)
        victim = nodes[1]
        owned = {key for key in stored if client.router.node_for(key) == victim.address}
        assert owned
        assert await client.multi_get(list(stored)) == stored
        killed = asyncio.Event()
        after_kill: list[dict[bytes, bytes]] = []

        async def caller() -> None:
            while not after_kill:
                started_after_kill = killed.is_set()
                hits = await client.multi_get(list(stored))
                assert hits.items() <= stored.items()
                if started_after_kill:
                    after_kill.append(hits)

        callers = [asyncio.create_task(caller()) for _ in range(20)]
        await asyncio.sleep(0.2)  # the callers are mid-way
        victim.kill()
        killed.set()
        await asyncio.wait_for(asyncio.gather(*callers), DEADLINE_S)  # no caller raised
        assert after_kill[0] == {key: value for key, value in stored.items() if key not in owned}

        victim.start()  # same port, empty
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert time.monotonic() < deadline, "the victim's keys never came back"
            try:
                for key in owned:
                    await client.call_node(
                        victim.address,
                        "Set",
                        cache_pb2.CacheSetRequest(key=key, value=stored[key]),
                    )
            except Exception:
                await asyncio.sleep(0.05)
                continue
            if await client.multi_get(list(stored)) == stored:
                break
            await asyncio.sleep(0.05)


async def test_the_stream_is_checked_like_multi_get_and_large_replies_are_split(
    nodes: list[NodeProcess],
) -> None:
    async with grpc.aio.insecure_channel(nodes[0].address) as channel:
        stub = cache_pb2_grpc.CacheStub(channel)
        large = b"x" * (600 * 1024)  # two of these are more than a node may send at once
        for key in [b"a", b"b", b"c"]:
            await stub.Set(cache_pb2.CacheSetRequest(key=key, value=large), timeout=5)
        stream = stub.MultiGetStream(timeout=DEADLINE_S)
        # One batch, three results of 600 KiB: one reply each, where one reply would be refused.
        batch = cache_pb2.CacheMultiGetBatch()
        batch.calls.add(id=7, keys=[b"absent", b"a"])
        batch.calls.add(id=8, keys=[b"b"])
        batch.calls.add(id=9, keys=[b"c", b"absent"])
        await stream.write(batch)
        results: dict[int, list[bytes]] = {}
        replies = 0
        while len(results) < 3:
            reply = await stream.read()
            assert isinstance(reply, cache_pb2.CacheMultiGetBatchReply)
            replies += 1
            for result in reply.results:
                results[result.id] = [item.key for item in result.items]
        assert results == {7: [b"a"], 8: [b"b"], 9: [b"c"]}
        assert replies == 3
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() is grpc.StatusCode.OK

        for refused in [
            [cache_pb2.CacheMultiGetCall(id=1, keys=[b"k"])] * (MULTI_GET_CALLS_PER_BATCH_MAX + 1),
            [cache_pb2.CacheMultiGetCall(id=1, keys=keys(1001))],
            [cache_pb2.CacheMultiGetCall(id=1, keys=[b""])],
        ]:
            stream = stub.MultiGetStream(timeout=DEADLINE_S)
            await stream.write(cache_pb2.CacheMultiGetBatch(calls=refused))
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stream.read()
            assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_node_with_open_streams_stops_without_waiting_out_its_grace(
    tmp_path: Path,
) -> None:
    """A client keeps its stream into a node for as long as it runs; a graceful stop must end
    it rather than wait the whole shutdown grace for it."""
    node = cache_node(tmp_path, "cache1", *NODE_ARGUMENTS)
    node.start()
    try:
        async with CacheClient([node.address]) as client:
            assert await client.set(b"key", b"value")
            assert await client.multi_get([b"key"]) == {b"key": b"value"}  # the stream is open

            started = time.monotonic()
            # In a thread, so the client's loop keeps running while the node stops.
            status = await asyncio.to_thread(node.terminate, SHUTDOWN_GRACE_S_DEFAULT * 2)
            stopped_s = time.monotonic() - started

            assert status == 0
            assert stopped_s < SHUTDOWN_GRACE_S_DEFAULT / 2, stopped_s
            assert '"event": "stopped"' in node.log_path.read_text()
            assert await client.multi_get([b"key"]) == {}  # a stopped node costs misses
    finally:
        node.kill()
