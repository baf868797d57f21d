"""The mcrouter-like router on loopback: one endpoint for a 3-node cache cluster, hot keys kept
on two nodes with their reads spread, and a dead node costing misses, not errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from distlab.common.processes import NodeProcess
from distlab.proto import cache_pb2, cache_pb2_grpc


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[NodeProcess], NodeProcess]]:
    nodes = [
        NodeProcess(
            f"cache{index + 1}",
            tmp_path / f"cache{index + 1}",
            tmp_path / f"cache{index + 1}.log",
            command=("cache", "node"),
        )
        for index in range(3)
    ]
    started: list[NodeProcess] = []
    try:
        for node in nodes:
            node.start(wait=False)
            started.append(node)
        for node in nodes:
            node.wait_serving()
        router = NodeProcess(
            "router",
            tmp_path / "router",
            tmp_path / "router.log",
            arguments=[
                "--nodes", ",".join(node.address for node in nodes),
                "--hot-prefix", "hot:",
                "--hot-replicas", "2",
            ],
            command=("cache", "router"),
        )  # fmt: skip
        started.append(router)
        router.start()
        yield nodes, router
    finally:
        for process in started:
            process.kill()


def stub(process: NodeProcess) -> tuple[grpc.Channel, cache_pb2_grpc.CacheStub]:
    channel = grpc.insecure_channel(process.address)
    return channel, cache_pb2_grpc.CacheStub(channel)


def test_one_endpoint_routes_like_the_client(
    cluster: tuple[list[NodeProcess], NodeProcess],
) -> None:
    nodes, router = cluster
    channel, cache = stub(router)
    with channel:
        for number in range(30):
            key = f"k{number}".encode()
            assert cache.Set(cache_pb2.CacheSetRequest(key=key, value=b"v" + key), timeout=5).stored
        got = cache.Get(cache_pb2.CacheGetRequest(key=b"k7"), timeout=5)
        assert (got.hit, got.value) == (True, b"vk7")
        many = cache.MultiGet(
            cache_pb2.CacheMultiGetRequest(keys=[b"k3", b"absent", b"k1", b"k2"]), timeout=5
        )
        assert [item.key for item in many.items] == [b"k3", b"k1", b"k2"]  # request order
        # Each item keeps its node's version token, so a compare-and-set can follow.
        k3 = many.items[0]
        assert k3.version > 0
        cas = cache_pb2.CacheSetRequest(
            key=b"k3",
            value=b"new",
            mode=cache_pb2.SET_MODE_COMPARE_AND_SET,
            expected_version=k3.version,
        )
        assert cache.Set(cas, timeout=5).stored
        assert not cache.Set(cas, timeout=5).stored  # the version moved on
        assert cache.Delete(cache_pb2.CacheDeleteRequest(key=b"k7"), timeout=5).existed
        stats = cache.Stats(cache_pb2.CacheStatsRequest(), timeout=5)
        assert stats.items == 29  # the nodes' counts added up
    per_node = []
    for node in nodes:
        node_channel, node_stub = stub(node)
        with node_channel:
            per_node.append(node_stub.Stats(cache_pb2.CacheStatsRequest(), timeout=5).items)
    assert sum(per_node) == 29
    assert min(per_node) > 0  # the router spread them


def test_a_hot_key_lives_on_two_nodes_and_its_reads_are_spread(
    cluster: tuple[list[NodeProcess], NodeProcess],
) -> None:
    nodes, router = cluster
    channel, cache = stub(router)
    with channel:
        cache.Set(cache_pb2.CacheSetRequest(key=b"hot:front-page", value=b"news"), timeout=5)
        for _ in range(60):
            assert cache.Get(cache_pb2.CacheGetRequest(key=b"hot:front-page"), timeout=5).hit
    holders, hits = [], []
    for node in nodes:
        node_channel, node_stub = stub(node)
        with node_channel:
            reply = node_stub.Get(cache_pb2.CacheGetRequest(key=b"hot:front-page"), timeout=5)
            stats = node_stub.Stats(cache_pb2.CacheStatsRequest(), timeout=5)
        if reply.hit:
            holders.append(node.name)
            hits.append(stats.hits)
    assert len(holders) == 2
    assert all(count > 5 for count in hits)  # 60 reads, both replicas took a share


def test_a_dead_node_costs_misses_not_errors(
    cluster: tuple[list[NodeProcess], NodeProcess],
) -> None:
    nodes, router = cluster
    channel, cache = stub(router)
    with channel:
        keys = [f"k{number}".encode() for number in range(30)]
        for key in keys:
            cache.Set(cache_pb2.CacheSetRequest(key=key, value=b"v"), timeout=5)
        nodes[0].kill()
        hits = sum(cache.Get(cache_pb2.CacheGetRequest(key=key), timeout=5).hit for key in keys)
    assert 0 < hits < len(keys)  # the dead node's keys miss; the others still hit
