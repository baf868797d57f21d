"""The stale-set race of "Scaling Memcache at Facebook" (3.2.1), on a real key-value node and a
real cache node: without leases a slow reader's fill puts an old value back after the writer's
invalidation; with leases the fill is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from distlab.cache.aside import CacheAside
from distlab.cache.client import CacheClient
from distlab.common.processes import NodeProcess
from distlab.kvstore.client import KeyValueClient

from .conftest import StartNode, single_node_arguments

pytestmark = pytest.mark.asyncio


@pytest.fixture
def cache_node(tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(
        "cache1", tmp_path / "cache1", tmp_path / "cache1.log", command=("cache", "node")
    )
    node.start()
    try:
        yield node
    finally:
        node.kill()


class SlowReader(CacheAside):
    """Reads the store, then waits for the test's go-ahead before it may fill the cache: the
    slow reader of the race, paused at the worst moment."""

    def __init__(self, *arguments: object, **options: object) -> None:
        super().__init__(*arguments, **options)  # type: ignore[arg-type]
        self.has_read = asyncio.Event()
        self.may_fill = asyncio.Event()

    async def _load(self, key: bytes) -> bytes:
        value = await super()._load(key)
        self.has_read.set()
        await self.may_fill.wait()
        return value


@pytest.mark.parametrize("leases", [False, True], ids=["without-leases", "with-leases"])
async def test_the_stale_set_race(
    leases: bool, start_node: StartNode, cache_node: NodeProcess
) -> None:
    store_node = start_node("kv1", *single_node_arguments())
    async with (
        KeyValueClient(store_node.address) as store,
        CacheClient([cache_node.address]) as cache,
    ):
        writer = CacheAside(store, cache, leases=leases)
        await writer.write(b"user:1", b"old")
        slow = SlowReader(store, cache, leases=leases)
        reading = asyncio.create_task(slow.read(b"user:1"))
        await asyncio.wait_for(slow.has_read.wait(), 10)  # it missed, and read "old"
        await writer.write(b"user:1", b"new")  # the store moves on; the key is invalidated
        slow.may_fill.set()
        assert await reading == b"old"  # right when it was read
        later = await CacheAside(store, cache, leases=leases).read(b"user:1")
        if leases:
            assert later == b"new"  # the late fill was refused: the next reader loads "new"
            assert await cache.get(b"user:1") == b"new"
        else:
            assert later == b"old"  # the race: the cache serves what the store overwrote
            assert (await store.get(b"user:1")).value == b"new"


async def test_an_absent_key_reads_as_none_and_is_not_cached(
    start_node: StartNode, cache_node: NodeProcess
) -> None:
    store_node = start_node("kv1", *single_node_arguments())
    async with (
        KeyValueClient(store_node.address) as store,
        CacheClient([cache_node.address]) as cache,
    ):
        assert await CacheAside(store, cache).read(b"nobody") is None
        assert await cache.get(b"nobody") is None
