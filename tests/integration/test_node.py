"""A real ``distlab node`` process on loopback: the KeyValue contract, limits, health,
reflection, graceful shutdown and durability across kill -9."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.kvstore.client import KeyValueClient

from .conftest import StartNode, single_node_arguments

SINGLE = single_node_arguments()


@pytest.mark.asyncio
async def test_put_get_delete_round_trip(start_node: StartNode) -> None:
    node = start_node("node1", *SINGLE)
    async with KeyValueClient(node.address) as client:
        first = await client.put(b"greeting", b"hello")
        # Written with the first write's context: it supersedes it, no sibling.
        await client.put(b"greeting", b"hello again", context=first.context)
        assert (await client.get(b"greeting")).values == (b"hello again",)
        blind = await client.delete(b"other-key-never-read")
        assert blind.context, "even a blind delete returns the tombstone's context"
        read = await client.get(b"greeting")
        await client.delete(b"greeting", context=read.context)
        with pytest.raises(DistlabError) as missing:
            await client.get(b"greeting")
        assert missing.value.kind is errors.NOT_FOUND
        assert missing.value.definite
        await client.delete(b"never-written")  # deleting a missing key is fine


@pytest.mark.asyncio
async def test_bad_input_is_refused_with_the_field_and_why(start_node: StartNode) -> None:
    node = start_node("node1", *SINGLE, "--key-bytes-max", "16", "--value-bytes-max", "100")
    async with KeyValueClient(node.address) as client:
        cases = [
            (b"", b"v", "key", "must not be empty"),
            (b"k" * 17, b"v", "key", "17 bytes; the limit is 16 bytes"),
            (b"k", b"v" * 101, "value", "101 bytes; the limit is 100 bytes"),
        ]
        for key, value, field, why in cases:
            with pytest.raises(DistlabError) as refused:
                await client.put(key, value)
            assert refused.value.kind is errors.INVALID_ARGUMENT, (key, value)
            assert refused.value.field == field
            assert why in refused.value.message
            assert refused.value.definite
        with pytest.raises(DistlabError) as empty_get:
            await client.get(b"")
        assert empty_get.value.kind is errors.INVALID_ARGUMENT
        # Nothing refused was stored.
        with pytest.raises(DistlabError) as missing:
            await client.get(b"k")
        assert missing.value.kind is errors.NOT_FOUND


@pytest.mark.asyncio
async def test_oversize_message_is_refused_by_grpc_before_decoding(start_node: StartNode) -> None:
    node = start_node("node1", *SINGLE, "--value-bytes-max", "1000")
    # The client's own cap is larger than the node's, so the node's cap is what refuses it.
    channel = grpc.aio.insecure_channel(
        node.address, options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    )
    try:
        from distlab.proto import kvstore_pb2, kvstore_pb2_grpc

        stub = kvstore_pb2_grpc.KeyValueStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Put(
                kvstore_pb2.PutRequest(key=b"k", value=b"v" * (2 * 1024 * 1024)), timeout=10
            )
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await channel.close()


@pytest.mark.asyncio
async def test_health_and_reflection_are_served(start_node: StartNode) -> None:
    node = start_node("node1", *SINGLE)
    async with grpc.aio.insecure_channel(node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "distlab.v1.KeyValue", "distlab.v1.Replica"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = set()
        async for reply in replies:
            names |= {service.name for service in reply.list_services_response.service}
        assert {"distlab.v1.KeyValue", "distlab.v1.Replica", "grpc.health.v1.Health"} <= names


@pytest.mark.asyncio
async def test_sigterm_shuts_down_gracefully_and_data_survives(start_node: StartNode) -> None:
    node = start_node("node1", *SINGLE)
    async with KeyValueClient(node.address) as client:
        await client.put(b"kept", b"across a graceful restart")
    assert node.terminate() == 0, node.log()
    assert not node.port_file.exists(), "a stopped node removes its port file"
    assert '"event": "stopped"' in node.log()
    node.start()
    async with KeyValueClient(node.address) as client:
        assert (await client.get(b"kept")).values == (b"across a graceful restart",)


@pytest.mark.asyncio
async def test_acknowledged_writes_survive_kill_9(start_node: StartNode) -> None:
    """Every put acknowledged before kill -9 is readable after restart (fsync always)."""
    node = start_node("node1", *SINGLE)
    acknowledged: dict[bytes, bytes] = {}

    async def writer(worker: int, client: KeyValueClient) -> None:
        for index in range(50):
            key, value = f"w{worker}-k{index}".encode(), f"value-{worker}-{index}".encode()
            await client.put(key, value)
            acknowledged[key] = value

    async with KeyValueClient(node.address) as client:
        await asyncio.gather(*(writer(worker, client) for worker in range(16)))
    node.kill()
    node.start()
    async with KeyValueClient(node.address) as client:
        for key, value in acknowledged.items():
            assert (await client.get(key)).values == (value,), key
    assert len(acknowledged) == 800


@pytest.mark.asyncio
async def test_unreachable_node_is_a_clear_indefinite_error() -> None:
    async with KeyValueClient("127.0.0.1:1", deadline_ms=2000) as client:
        with pytest.raises(DistlabError) as failed:
            await client.put(b"k", b"v")
    assert failed.value.kind.status == "UNAVAILABLE"
    assert not failed.value.definite


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_round_trip_and_clear_errors(start_node: StartNode) -> None:
    node = start_node("node1", *SINGLE)
    put = run_cli("kv", "put", "colour", "blue", "--to", node.address)
    assert put.returncode == 0, put.stderr
    assert put.stdout.startswith("ok (context ")
    got = run_cli("kv", "get", "colour", "--to", node.address)
    assert (got.returncode, got.stdout) == (0, "blue\n")
    assert run_cli("kv", "delete", "colour", "--to", node.address).returncode == 0
    missing = run_cli("kv", "get", "colour", "--to", node.address)
    assert missing.returncode == 1
    assert missing.stderr == "distlab: error: not found: colour\n"
    too_long = run_cli("kv", "put", "k" * 2000, "v", "--to", node.address)
    assert too_long.returncode == 1
    assert "INVALID_ARGUMENT" in too_long.stderr
    assert "key: is 2000 bytes" in too_long.stderr


def test_cli_errors_are_one_line_not_tracebacks() -> None:
    unreachable = run_cli("kv", "get", "k", "--to", "127.0.0.1:1", "--deadline-ms", "2000")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("distlab: error: 127.0.0.1:1: UNAVAILABLE")
    assert "Traceback" not in unreachable.stderr
    bad_target = run_cli("kv", "get", "k", "--to", "nowhere")
    assert bad_target.returncode == 2
    assert "expected HOST:PORT" in bad_target.stderr
    bad_port = run_cli("node", "--data-dir", "/tmp/unused", "--port", "70000")
    assert bad_port.returncode == 2
    assert "port must be in [0, 65535]" in bad_port.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["node"],
        ["kv"],
        ["kv", "put"],
        ["kv", "get"],
        ["kv", "delete"],
        ["bench"],
        ["bench", "wal"],
    ],
)
def test_help_everywhere(command: list[str]) -> None:
    shown = run_cli(*command, "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: distlab")


@pytest.mark.asyncio
async def test_metrics_count_calls_by_status_and_report_storage(start_node: StartNode) -> None:
    node = start_node("node1", *SINGLE, "--metrics-port", "0")
    serving = next(
        json.loads(line) for line in node.log().splitlines() if '"event": "serving"' in line
    )
    async with KeyValueClient(node.address) as client:
        await client.put(b"a", b"1")
        await client.put(b"b", b"2")
        with pytest.raises(DistlabError):
            await client.get(b"missing")
    url = f"http://127.0.0.1:{serving['metrics_port']}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    assert 'distlab_rpc_total{code="OK",method="Put"} 2.0' in text
    assert 'distlab_rpc_total{code="NOT_FOUND",method="Get"} 1.0' in text
    assert "distlab_kv_live_keys 2.0" in text
    assert "distlab_kv_pending_hints 0.0" in text
    assert "distlab_kv_tombstones_collected 0.0" in text
