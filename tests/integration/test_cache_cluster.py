"""A 3-node cache cluster on loopback, driven through the routing client (issue 7): keys spread
over the nodes, a dead node's keys fall over and come back, leases refuse stale sets and
coalesce loads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc.aio
import pytest

from distlab.cache.client import CacheClient, ReadThrough, Source
from distlab.cache.routing import NodeHealth
from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.common.processes import NodeProcess
from distlab.proto import cache_pb2, cache_pb2_grpc
from tests.integration.cache_nodes import cache_cluster

DEADLINE_S = 20.0
pytestmark = pytest.mark.asyncio


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    yield from cache_cluster(tmp_path, 3, "--capacity-mb", "4", "--lease-ms", "1000")


def keys(count: int) -> list[bytes]:
    return [f"key-{number}".encode() for number in range(count)]


async def test_keys_spread_over_the_nodes_and_read_back(nodes: list[NodeProcess]) -> None:
    async with CacheClient([node.address for node in nodes]) as client:
        for key in keys(300):
            assert await client.set(key, b"v-" + key)
        for key in keys(300):
            assert await client.get(key) == b"v-" + key
        assert await client.multi_get([*keys(5), b"absent"]) == {
            key: b"v-" + key for key in keys(5)
        }
        stats = await client.stats()
        items = [stats[node.address].items for node in nodes]
        assert sum(items) == 300
        assert min(items) > 50  # each node owns a share (consistent hashing, 160 vnodes)
        assert await client.delete(b"key-1")
        assert await client.get(b"key-1") is None
        assert not await client.delete(b"key-1")


async def test_a_dead_node_is_ejected_its_keys_fall_over_and_it_is_taken_back(
    nodes: list[NodeProcess],
) -> None:
    health = NodeHealth(eject_after_failures=2, ejection_ms=300)
    async with CacheClient([node.address for node in nodes], health=health) as client:
        victim = nodes[1]
        owned = [key for key in keys(200) if client.router.node_for(key) == victim.address]
        assert owned
        for key in owned:
            await client.set(key, b"before")
        victim.kill()
        loads = 0

        async def load() -> bytes:
            nonlocal loads
            loads += 1
            return b"loaded"

        # Hits turn into misses, never into errors: the first calls fail over, then the node
        # is ejected and skipped.
        for key in owned:
            assert await client.get_or_load(key, load) == b"loaded"
        assert loads == len(owned)
        assert health.is_ejected(victim.address, client.clock.monotonic_ms())
        for key in owned:  # refilled on the stand-in nodes
            assert await client.get(key) == b"loaded"

        victim.start()  # same port, empty
        deadline = time.monotonic() + DEADLINE_S
        while health.is_ejected(victim.address, client.clock.monotonic_ms()):
            assert time.monotonic() < deadline, "the node was never taken back"
            await client.get(owned[0])  # ordinary traffic carries the probe
            await asyncio.sleep(0.05)
        assert await client.set(owned[0], b"after")
        stats = await client.stats()
        assert stats[victim.address].items == 1  # its key came home


async def test_a_delete_needs_the_owner_and_a_stand_ins_copy_lives_one_failover_ttl(
    nodes: list[NodeProcess],
) -> None:
    """Facebook's Gutter rule: a refill that fell over to a stand-in gets a short TTL, because
    deletes go to the owner only; and a delete the owner cannot take is not acknowledged."""
    health = NodeHealth(eject_after_failures=1, ejection_ms=60_000)  # no probe in this test
    failover_ttl_ms = 300
    addresses = [node.address for node in nodes]
    async with CacheClient(addresses, health=health, failover_ttl_ms=failover_ttl_ms) as client:
        victim = nodes[1]
        key = next(key for key in keys(200) if client.router.node_for(key) == victim.address)
        victim.kill()

        async def load() -> bytes:
            return b"loaded"

        read = await client.read_through(key, load)
        filled_at = time.monotonic()
        assert read == ReadThrough(b"loaded", Source.LOADED)  # leased and refilled elsewhere
        assert await client.get(key) == b"loaded"
        with pytest.raises(DistlabError) as refused:
            await client.delete(key)
        assert refused.value.kind is errors.UNREACHABLE  # it may or may not have happened

        deadline = time.monotonic() + DEADLINE_S
        while await client.get(key) is not None:
            assert time.monotonic() < deadline, "the stand-in's copy never expired"
            await asyncio.sleep(0.02)
        assert time.monotonic() - filled_at >= failover_ttl_ms / 1000


async def test_a_delete_makes_a_slow_refill_fail(nodes: list[NodeProcess]) -> None:
    """The stale-set race of the paper, through the RPCs: the refill carries a lease token that
    the delete invalidated."""
    async with grpc.aio.insecure_channel(nodes[0].address) as channel:
        stub = cache_pb2_grpc.CacheStub(channel)
        miss = await stub.Get(cache_pb2.CacheGetRequest(key=b"k", want_lease=True), timeout=5)
        assert miss.lease_token > 0
        waiting = await stub.Get(cache_pb2.CacheGetRequest(key=b"k", want_lease=True), timeout=5)
        assert waiting.wait
        assert waiting.lease_token == 0
        await stub.Delete(cache_pb2.CacheDeleteRequest(key=b"k"), timeout=5)
        late = await stub.Set(
            cache_pb2.CacheSetRequest(key=b"k", value=b"stale", lease_token=miss.lease_token),
            timeout=5,
        )
        assert late.outcome == cache_pb2.SET_OUTCOME_LEASE_INVALID
        assert not late.stored
        stats = await stub.Stats(cache_pb2.CacheStatsRequest(), timeout=5)
        assert stats.stale_sets_refused == 1


async def test_concurrent_misses_load_once(nodes: list[NodeProcess]) -> None:
    """Singleflight inside a client, leases across clients: twenty concurrent readers of a cold
    key in two clients cause one load."""
    addresses = [node.address for node in nodes]
    loads = 0

    async def slow_load() -> bytes:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.2)
        return b"from the database"

    async with CacheClient(addresses) as first, CacheClient(addresses) as second:
        results = await asyncio.gather(
            *(client.get_or_load(b"cold", slow_load) for client in [first, second] * 10)
        )
    assert results == [b"from the database"] * 20
    assert loads == 1


async def test_bad_requests_are_refused_with_invalid_argument(nodes: list[NodeProcess]) -> None:
    async with grpc.aio.insecure_channel(nodes[0].address) as channel:
        stub = cache_pb2_grpc.CacheStub(channel)
        for request in [
            cache_pb2.CacheSetRequest(key=b"", value=b"v"),
            cache_pb2.CacheSetRequest(key=b"k" * 251, value=b"v"),
            cache_pb2.CacheSetRequest(key=b"k", value=b"v" * (1024 * 1024 + 1)),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Set(request, timeout=5)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await stub.MultiGet(cache_pb2.CacheMultiGetRequest(keys=keys(1001)), timeout=5)
        assert too_many.value.code() is grpc.StatusCode.INVALID_ARGUMENT
