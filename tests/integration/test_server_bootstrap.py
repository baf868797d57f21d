"""The shared gRPC bootstrap, in-process on loopback: deadline caps, the error table on the wire,
draining in-flight calls at shutdown, and shedding past the concurrency limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import pytest

from distlab.common import errors
from distlab.common.errors import invalid_argument
from distlab.common.limits import Limits
from distlab.common.rpc import abort_on_error, error_from_rpc
from distlab.common.server import ServerOptions, run_server
from distlab.proto import kvstore_pb2, kvstore_pb2_grpc

SERVER_START_DEADLINE_S = 30.0


class ScriptedServicer(kvstore_pb2_grpc.KeyValueServicer):
    """Get hangs until released; Put refuses with a DistlabError; Delete answers at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered: asyncio.Queue[None] = asyncio.Queue()  # one item per Get that started

    @abort_on_error
    async def Get(
        self, request: kvstore_pb2.GetRequest, context: object
    ) -> kvstore_pb2.GetResponse:
        self.entered.put_nowait(None)
        await self.release.wait()
        return kvstore_pb2.GetResponse(siblings=[kvstore_pb2.Sibling(value=b"released")])

    @abort_on_error
    async def Put(
        self, request: kvstore_pb2.PutRequest, context: object
    ) -> kvstore_pb2.PutResponse:
        raise invalid_argument("value", "scripted refusal")

    @abort_on_error
    async def Delete(
        self, request: kvstore_pb2.DeleteRequest, context: object
    ) -> kvstore_pb2.DeleteResponse:
        return kvstore_pb2.DeleteResponse(context=b"scripted")


async def wait_until_entered(servicer: ScriptedServicer, calls: int) -> None:
    for _ in range(calls):
        await asyncio.wait_for(servicer.entered.get(), timeout=SERVER_START_DEADLINE_S)


@asynccontextmanager
async def serving(
    tmp_path: Path, limits: Limits
) -> AsyncIterator[
    tuple[kvstore_pb2_grpc.KeyValueStub, ScriptedServicer, asyncio.Event, asyncio.Task[None]]
]:
    servicer = ScriptedServicer()
    stop = asyncio.Event()
    port_file = tmp_path / "port"

    def register(server: grpc.aio.Server) -> list[str]:
        kvstore_pb2_grpc.add_KeyValueServicer_to_server(servicer, server)
        return ["distlab.v1.KeyValue"]

    options = ServerOptions(port=0, limits=limits, port_file=port_file, shutdown_grace_s=5.0)
    task = asyncio.create_task(run_server(options, register, stop=stop))
    deadline = time.monotonic() + SERVER_START_DEADLINE_S
    while not port_file.exists():
        assert not task.done(), task
        assert time.monotonic() < deadline, "server did not start"
        await asyncio.sleep(0.01)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{int(port_file.read_text())}")
    try:
        yield kvstore_pb2_grpc.KeyValueStub(channel), servicer, stop, task
    finally:
        servicer.release.set()
        stop.set()
        await channel.close()
        await asyncio.wait_for(task, timeout=30)


@pytest.mark.asyncio
async def test_server_caps_a_call_that_has_no_deadline(tmp_path: Path) -> None:
    async with serving(tmp_path, Limits(deadline_ms_max=300)) as (stub, _, _, _):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as capped:
            # No client deadline at all; wait_for only keeps a broken cap from hanging the test.
            await asyncio.wait_for(stub.Get(kvstore_pb2.GetRequest(key=b"k")), timeout=20)
        assert capped.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 20
        error = error_from_rpc(capped.value)
        assert error.kind is errors.DEADLINE_EXCEEDED
        assert not error.definite


@pytest.mark.asyncio
async def test_distlab_errors_cross_the_wire_with_field_and_definiteness(tmp_path: Path) -> None:
    async with serving(tmp_path, Limits()) as (stub, _, _, _):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Put(kvstore_pb2.PutRequest(key=b"k"), timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "value: scripted refusal"
        error = error_from_rpc(refused.value)
        assert (error.kind, error.field, error.definite) == (errors.INVALID_ARGUMENT, "value", True)


@pytest.mark.asyncio
async def test_shutdown_drains_in_flight_calls(tmp_path: Path) -> None:
    async with serving(tmp_path, Limits()) as (stub, servicer, stop, task):
        in_flight = asyncio.ensure_future(stub.Get(kvstore_pb2.GetRequest(key=b"k"), timeout=20))
        await wait_until_entered(servicer, 1)
        stop.set()
        await asyncio.sleep(0)  # let shutdown begin while the call is still hanging
        assert not task.done()
        servicer.release.set()
        reply = await in_flight
        assert reply.siblings[0].value == b"released", "the in-flight call completed"
        await asyncio.wait_for(task, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as after:
            await stub.Delete(kvstore_pb2.DeleteRequest(key=b"k"), timeout=5)
        assert after.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_calls_past_the_concurrency_limit_are_shed(tmp_path: Path) -> None:
    async with serving(tmp_path, Limits(concurrent_rpcs_max=4)) as (stub, servicer, _, _):
        hanging = [
            asyncio.ensure_future(stub.Get(kvstore_pb2.GetRequest(key=b"k"), timeout=20))
            for _ in range(4)
        ]
        await wait_until_entered(servicer, 4)
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await stub.Delete(kvstore_pb2.DeleteRequest(key=b"k"), timeout=10)
        assert shed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_from_rpc(shed.value).definite
        servicer.release.set()
        await asyncio.gather(*hanging)
        assert (
            await stub.Delete(kvstore_pb2.DeleteRequest(key=b"k"), timeout=10)
        ).context == b"scripted"
