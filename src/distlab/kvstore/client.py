"""Typed clients of the replicated key-value store: ``KeyValueClient`` (asyncio) and
``SyncKeyValueClient`` (blocking, for scripts and the CLI).

Point them at one node or several (calls go round robin): any node coordinates any request
(Dynamo 4.5). Every call has
a deadline and every failure arrives as a ``DistlabError`` whose ``definite`` says whether the
operation may have taken effect.

Retries: a get is idempotent, so it is retried on the next node after any UNAVAILABLE or
DEADLINE_EXCEEDED. A put or delete is retried only after a *definite* failure (it certainly did
not happen, e.g. the node knew it could not reach W replicas): retrying an indefinite one could
write the value twice, as two siblings.

Siblings: ``get`` returns every concurrent value and an opaque context. Resolve them however the
application wants (``update`` does the read-resolve-write loop) and put the result back *with
that context*, which supersedes everything that was read (Dynamo 4.4, "semantic reconciliation").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.common.limits import CLIENT_DEADLINE_MS_DEFAULT, Limits
from distlab.common.rpc import error_from_rpc
from distlab.proto import kvstore_pb2, kvstore_pb2_grpc

# One try per node given, bounded: a client pointed at a large cluster should not walk it all.
ATTEMPTS_MAX = 3


@dataclass(frozen=True, slots=True)
class ReadResult:
    values: tuple[bytes, ...]  # one value, or several concurrent siblings
    context: bytes  # pass to put/delete to supersede every value read
    trace: dict[str, Any] | None = None

    @property
    def value(self) -> bytes:
        """The value when there is exactly one; siblings must be resolved by the caller."""
        if len(self.values) != 1:
            raise ValueError(f"{len(self.values)} siblings: resolve them (see update)")
        return self.values[0]


@dataclass(frozen=True, slots=True)
class WriteResult:
    context: bytes  # the new version's context: a later put with it supersedes this write
    trace: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RingMember:
    node_id: str
    address: str
    status: str
    alive: bool
    vnodes: int
    share: float


class KeyValueClient:
    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        deadline_ms: int = CLIENT_DEADLINE_MS_DEFAULT,
        limits: Limits | None = None,
    ) -> None:
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        if not self.targets:
            raise ValueError("targets must name at least one node")
        if deadline_ms <= 0:
            raise ValueError(f"deadline_ms must be > 0, got {deadline_ms}")
        self.deadline_s = deadline_ms / 1000
        size = (limits or Limits()).message_bytes_max
        options = [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
        ]
        self._channels = [
            grpc.aio.insecure_channel(target, options=options) for target in self.targets
        ]
        self._stubs = [kvstore_pb2_grpc.KeyValueStub(channel) for channel in self._channels]
        self._next = 0

    async def get(self, key: bytes, *, r: int = 0, trace: bool = False) -> ReadResult:
        """Every sibling of key and their context; NOT_FOUND raises DistlabError."""
        request = kvstore_pb2.GetRequest(key=key, r=r, trace=trace)
        response: kvstore_pb2.GetResponse = await self._call(
            lambda stub: stub.Get(request, timeout=self.deadline_s), idempotent=True
        )
        return ReadResult(
            tuple(sibling.value for sibling in response.siblings),
            response.context,
            _trace(response.trace_json),
        )

    async def put(
        self, key: bytes, value: bytes, *, context: bytes = b"", w: int = 0, trace: bool = False
    ) -> WriteResult:
        request = kvstore_pb2.PutRequest(key=key, value=value, context=context, w=w, trace=trace)
        response: kvstore_pb2.PutResponse = await self._call(
            lambda stub: stub.Put(request, timeout=self.deadline_s), idempotent=False
        )
        return WriteResult(response.context, _trace(response.trace_json))

    async def delete(
        self, key: bytes, *, context: bytes = b"", w: int = 0, trace: bool = False
    ) -> WriteResult:
        request = kvstore_pb2.DeleteRequest(key=key, context=context, w=w, trace=trace)
        response: kvstore_pb2.DeleteResponse = await self._call(
            lambda stub: stub.Delete(request, timeout=self.deadline_s), idempotent=False
        )
        return WriteResult(response.context, _trace(response.trace_json))

    async def update(
        self, key: bytes, resolve: Callable[[tuple[bytes, ...]], bytes], *, w: int = 0
    ) -> WriteResult:
        """Read key, resolve its siblings (none when missing) into one value, write it back with
        the read's context so it supersedes everything read."""
        try:
            read = await self.get(key)
        except DistlabError as error:
            if error.kind is not errors.NOT_FOUND:
                raise
            read = ReadResult((), b"")
        return await self.put(key, resolve(read.values), context=read.context, w=w)

    async def ring(self) -> list[RingMember]:
        response: kvstore_pb2.RingResponse = await self._call(
            lambda stub: stub.Ring(kvstore_pb2.RingRequest(), timeout=self.deadline_s),
            idempotent=True,
        )
        return [
            RingMember(m.node_id, m.address, m.status, m.alive, m.vnodes, m.share)
            for m in response.members
        ]

    async def leave(self) -> int:
        """Decommission the first target node; returns the number of keys it handed over."""
        try:
            response = await self._stubs[0].Leave(
                kvstore_pb2.LeaveRequest(), timeout=self.deadline_s
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return response.keys_handed_over

    async def _call(
        self, call: Callable[[kvstore_pb2_grpc.KeyValueAsyncStub], Any], *, idempotent: bool
    ) -> Any:
        attempts = min(ATTEMPTS_MAX, len(self._stubs))
        last_error: DistlabError | None = None
        for _ in range(attempts):
            # Round robin: calls spread over every node given, and a retry goes to the next one.
            stub = self._stubs[self._next % len(self._stubs)]
            self._next += 1
            try:
                return await call(stub)
            except grpc.RpcError as rpc_error:
                error = error_from_rpc(rpc_error)
            last_error = error
            retryable = error.kind.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
            if not retryable or not (idempotent or error.definite):
                raise error
        assert last_error is not None
        raise last_error

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> KeyValueClient:
        return self

    async def __aexit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class SyncKeyValueClient:
    """The asyncio client run on a private event loop, so both share one implementation."""

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        deadline_ms: int = CLIENT_DEADLINE_MS_DEFAULT,
        limits: Limits | None = None,
    ) -> None:
        self._runner = asyncio.Runner()
        self._client = self._runner.run(_make_client(targets, deadline_ms, limits))

    def get(self, key: bytes, *, r: int = 0, trace: bool = False) -> ReadResult:
        return self._runner.run(self._client.get(key, r=r, trace=trace))

    def put(
        self, key: bytes, value: bytes, *, context: bytes = b"", w: int = 0, trace: bool = False
    ) -> WriteResult:
        return self._runner.run(self._client.put(key, value, context=context, w=w, trace=trace))

    def delete(
        self, key: bytes, *, context: bytes = b"", w: int = 0, trace: bool = False
    ) -> WriteResult:
        return self._runner.run(self._client.delete(key, context=context, w=w, trace=trace))

    def update(
        self, key: bytes, resolve: Callable[[tuple[bytes, ...]], bytes], *, w: int = 0
    ) -> WriteResult:
        return self._runner.run(self._client.update(key, resolve, w=w))

    def ring(self) -> list[RingMember]:
        return self._runner.run(self._client.ring())

    def leave(self) -> int:
        return self._runner.run(self._client.leave())

    def close(self) -> None:
        self._runner.run(self._client.close())
        self._runner.close()

    def __enter__(self) -> SyncKeyValueClient:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


async def _make_client(
    targets: str | Sequence[str], deadline_ms: int, limits: Limits | None
) -> KeyValueClient:
    # Channels bind to the loop they are created on: create them on the runner's loop.
    return KeyValueClient(targets, deadline_ms=deadline_ms, limits=limits)


def _trace(trace_json: str) -> dict[str, Any] | None:
    if not trace_json:
        return None
    decoded: dict[str, Any] = json.loads(trace_json)
    return decoded
