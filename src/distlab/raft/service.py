"""The gRPC servicers of a Raft node, and its entry point (``distlab raft node``).

Thin by design: decode, hand to ``distlab.raft.node.RaftNode``, encode. ``RaftServicer`` carries
node-to-node messages; ``RaftKeyValueServicer`` is the linearizable register clients use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc.aio

from distlab.chaos import injection
from distlab.chaos.injection import FaultInjectionServicer
from distlab.chaos.rpc_faults import LinkFaults
from distlab.common.clock import SystemClock
from distlab.common.errors import UNAVAILABLE, DistlabError, invalid_argument
from distlab.common.limits import Limits
from distlab.common.rpc import abort_on_error, deadline_s
from distlab.common.server import ServerOptions, run_server
from distlab.proto import raft_pb2, raft_pb2_grpc
from distlab.raft import codec
from distlab.raft.core import Message
from distlab.raft.node import RaftNode, RaftNodeOptions, Session
from distlab.raft.register import DELETE, PUT, KeyValueRegister, decode_answer, encode_command

Context = grpc.aio.ServicerContext[Any, Any]
# A batch on a node-to-node stream holds at most this many messages (the sender batches 256).
STEP_MESSAGES_MAX = 1024


class RaftServicer(raft_pb2_grpc.RaftServicer):
    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self._closing = asyncio.Event()

    async def close_streams(self) -> None:
        """End every peer's stream into this node. A stream lasts as long as its peer keeps
        it, so at shutdown a graceful stop would otherwise wait out its whole grace."""
        self._closing.set()

    @abort_on_error
    async def Step(
        self, requests: AsyncIterator[raft_pb2.StepRequest], context: Context
    ) -> raft_pb2.StepResponse:
        """A peer's stream of message batches, open for as long as the peer keeps it or until
        this node stops. The stream is read in a task of its own because only a handler that
        returns ends its call: cancelling it leaves the call open until the grace runs out."""
        if self._closing.is_set():
            raise DistlabError(UNAVAILABLE, "this node is stopping")
        reader = asyncio.create_task(self._receive(requests))
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({reader, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            reader.cancel()
        if reader.done() and not reader.cancelled():
            reader.result()  # raises what the stream's messages were refused for
            return raft_pb2.StepResponse()
        raise DistlabError(UNAVAILABLE, "this node is stopping")

    async def _receive(self, requests: AsyncIterator[raft_pb2.StepRequest]) -> None:
        async for request in requests:
            self.node.receive(self._messages(request))

    def _messages(self, request: raft_pb2.StepRequest) -> list[Message]:
        if len(request.messages) > STEP_MESSAGES_MAX:
            raise invalid_argument("messages", f"at most {STEP_MESSAGES_MAX} per batch")
        try:
            messages = [codec.message_from_proto(message) for message in request.messages]
        except ValueError as error:
            raise invalid_argument("messages", str(error)) from error
        if any(message.target != self.node.node_id for message in messages):
            raise invalid_argument(
                "messages", f"addressed to another node than {self.node.node_id}"
            )
        return messages


class RaftKeyValueServicer(raft_pb2_grpc.RaftKeyValueServicer):
    def __init__(self, node: RaftNode, limits: Limits) -> None:
        self.node = node
        self.limits = limits

    @abort_on_error
    async def Put(
        self, request: raft_pb2.RaftPutRequest, context: Context
    ) -> raft_pb2.RaftPutResponse:
        self.limits.check_key(request.key)
        self.limits.check_value(request.value)
        applied = await self.node.propose(
            encode_command(PUT, request.key, request.value),
            deadline_s(context, self.limits),
            _session(request.client_id, request.sequence),
        )
        return raft_pb2.RaftPutResponse(index=applied.index)

    @abort_on_error
    async def Delete(
        self, request: raft_pb2.RaftDeleteRequest, context: Context
    ) -> raft_pb2.RaftDeleteResponse:
        self.limits.check_key(request.key)
        applied = await self.node.propose(
            encode_command(DELETE, request.key),
            deadline_s(context, self.limits),
            _session(request.client_id, request.sequence),
        )
        return raft_pb2.RaftDeleteResponse(index=applied.index)

    @abort_on_error
    async def Get(
        self, request: raft_pb2.RaftGetRequest, context: Context
    ) -> raft_pb2.RaftGetResponse:
        self.limits.check_key(request.key)
        applied = await self.node.read(request.key, deadline_s(context, self.limits))
        value = decode_answer(applied.response)
        return raft_pb2.RaftGetResponse(
            found=value is not None, value=value or b"", index=applied.index
        )

    @abort_on_error
    async def Status(
        self, request: raft_pb2.RaftStatusRequest, context: Context
    ) -> raft_pb2.RaftStatusResponse:
        return raft_pb2.RaftStatusResponse(**self.node.status())


def _session(client_id: int, sequence: int) -> Session | None:
    if client_id == 0 and sequence == 0:
        return None
    if client_id == 0 or sequence == 0:
        raise invalid_argument("client_id", "a session needs both client_id and sequence")
    return Session(client_id, sequence)


@dataclass(frozen=True, slots=True)
class RaftNodeConfig:
    node: RaftNodeOptions
    server: ServerOptions = field(default_factory=ServerOptions)
    allow_fault_injection: bool = False


async def run_node(config: RaftNodeConfig, stop: asyncio.Event | None = None) -> None:
    """Recover the log, serve Raft and RaftKeyValue, stop cleanly."""
    faults = LinkFaults()
    stop = stop or asyncio.Event()
    # A node whose driver failed (its disk refused a write) stops rather than serve without it.
    node = RaftNode(config.node, KeyValueRegister(), faults, on_failure=stop.set)
    # The clock can be skewed, and nothing here reads it: Raft times elections with ticks of
    # the monotonic clock, and serves reads by ReadIndex rather than by clock-based leases.
    fault_injection = FaultInjectionServicer(config.allow_fault_injection, SystemClock(), faults)

    raft_servicer = RaftServicer(node)

    def register(server: grpc.aio.Server) -> list[str]:
        raft_pb2_grpc.add_RaftServicer_to_server(raft_servicer, server)
        raft_pb2_grpc.add_RaftKeyValueServicer_to_server(
            RaftKeyValueServicer(node, config.server.limits), server
        )
        return [
            *(
                raft_pb2.DESCRIPTOR.services_by_name[name].full_name
                for name in ("Raft", "RaftKeyValue")
            ),
            injection.register(server, fault_injection),
        ]

    async def on_serving(port: int) -> None:
        await node.start()

    try:
        await run_server(
            config.server,
            register,
            on_stop=node.close,
            before_stop=raft_servicer.close_streams,
            stop=stop,
            on_serving=on_serving,
        )
    finally:
        await node.close()
