"""gRPC channels to the other nodes, one per address, opened on first use and reused.

Every call a node makes to a peer goes through here with a deadline; a failure comes back as a
``DistlabError`` (via ``distlab.common.rpc.error_from_rpc``), never as a raw grpc exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
import grpc.aio

from distlab.chaos.rpc_faults import LinkFaultInterceptor, LinkFaults
from distlab.common.limits import Limits
from distlab.proto import kvstore_pb2_grpc

# Peers down for a while get a fresh connection attempt at most this often; gRPC's own backoff
# would otherwise wait up to two minutes after repeated failures, far longer than our failure
# detector takes to see a node come back.
RECONNECT_BACKOFF_MS_MAX = 1000
# Calls still in flight on a channel being replaced get this long to finish.
CLOSE_GRACE_S = 1.0


class Peers:
    def __init__(
        self,
        limits: Limits,
        faults: LinkFaults | None = None,
        routes: Mapping[str, str] | None = None,
    ) -> None:
        self._limits = limits
        self.faults = faults or LinkFaults()
        # Peer address -> the address actually dialled. The chaos harness routes every link
        # through its own TCP proxy; peers still know each other by their real addresses.
        self._routes = dict(routes or {})
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._replica_stubs: dict[str, kvstore_pb2_grpc.ReplicaAsyncStub] = {}
        self._client_stubs: dict[str, kvstore_pb2_grpc.KeyValueAsyncStub] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            size = self._limits.message_bytes_max
            channel = grpc.aio.insecure_channel(
                self._routes.get(address, address),
                options=[
                    ("grpc.max_receive_message_length", size),
                    ("grpc.max_send_message_length", size),
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS_MAX),
                ],
                interceptors=[LinkFaultInterceptor(self.faults, address)],
            )
            self._channels[address] = channel
        return channel

    def replica(self, address: str) -> kvstore_pb2_grpc.ReplicaAsyncStub:
        stub = self._replica_stubs.get(address)
        if stub is None:
            stub = kvstore_pb2_grpc.ReplicaStub(self._channel(address))
            self._replica_stubs[address] = stub
        return stub

    def key_value(self, address: str) -> kvstore_pb2_grpc.KeyValueAsyncStub:
        stub = self._client_stubs.get(address)
        if stub is None:
            stub = kvstore_pb2_grpc.KeyValueStub(self._channel(address))
            self._client_stubs[address] = stub
        return stub

    async def reset(self, address: str) -> None:
        """Drop the channel to a peer that came back: a channel still in reconnect backoff
        would fail the first calls fast, although the peer is serving again."""
        channel = self._channels.pop(address, None)
        self._replica_stubs.pop(address, None)
        self._client_stubs.pop(address, None)
        if channel is not None:
            # Closed in the background: closing cancels the channel's calls in flight, and the
            # caller (the gossip loop) must not wait on them.
            task = asyncio.create_task(channel.close(grace=CLOSE_GRACE_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for task in list(self._closing):
            await task
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._replica_stubs.clear()
        self._client_stubs.clear()
