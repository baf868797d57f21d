"""Typed asyncio client for one KeyValue node.

Every call has a deadline (``deadline_ms``, default ``CLIENT_DEADLINE_MS_DEFAULT``) and every
failure arrives as a ``DistlabError`` whose ``kind`` and ``definite`` say what happened and
whether the operation may have taken effect. The client does not retry: a put is not idempotent
under siblings, so retrying is the caller's decision, made with ``error.definite`` in hand.
"""

from __future__ import annotations

from types import TracebackType

import grpc
import grpc.aio

from distlab.common.limits import CLIENT_DEADLINE_MS_DEFAULT, Limits
from distlab.common.rpc import error_from_rpc
from distlab.kvstore import codec
from distlab.proto import kvstore_pb2, kvstore_pb2_grpc


class KeyValueClient:
    def __init__(
        self,
        target: str,
        *,
        deadline_ms: int = CLIENT_DEADLINE_MS_DEFAULT,
        limits: Limits | None = None,
    ) -> None:
        if deadline_ms <= 0:
            raise ValueError(f"deadline_ms must be > 0, got {deadline_ms}")
        message_bytes_max = (limits or Limits()).message_bytes_max
        self.target = target
        self.deadline_s = deadline_ms / 1000
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", message_bytes_max),
                ("grpc.max_send_message_length", message_bytes_max),
            ],
        )
        self._stub = kvstore_pb2_grpc.KeyValueStub(self._channel)

    async def put(self, key: bytes, value: bytes) -> int:
        """Store value under key; returns the node's WAL sequence of the write."""
        try:
            response = await self._stub.Put(
                kvstore_pb2.PutRequest(key=key, value=value), timeout=self.deadline_s
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return response.sequence

    async def get(self, key: bytes) -> list[bytes]:
        """The key's sibling values (one, on a single node); NOT_FOUND raises DistlabError."""
        try:
            response = await self._stub.Get(
                kvstore_pb2.GetRequest(key=key), timeout=self.deadline_s
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return codec.sibling_values(response)

    async def delete(self, key: bytes) -> int:
        try:
            response = await self._stub.Delete(
                kvstore_pb2.DeleteRequest(key=key), timeout=self.deadline_s
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return response.sequence

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> KeyValueClient:
        return self

    async def __aexit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
