"""The cache cluster's client: routing, failover, and misses turned into loads with leases.

* **Routing.** Every key goes to one node, chosen on the client by a router of
  ``distlab.cache.routing`` (consistent hashing by default, as memcached clients do with
  ketama). Nodes do not know about each other.
* **Failover.** A node that fails ``EJECT_AFTER_FAILURES`` calls in a row (unavailable, or past
  the deadline) is ejected for a while; its keys go to the next node in their order, and one
  call at a time probes it until it answers and is taken back (``NodeHealth``: mcrouter's TKO,
  Envoy's outlier detection). A set that falls over gets a short TTL (``FAILOVER_TTL_MS``), the
  Gutter pool's rule in "Scaling Memcache at Facebook" (NSDI 2013, 3.3): when the owner comes
  back, the copy on its stand-in must not outlive the owner's newer values for long.
* **Pipelined multi-gets.** ``multi_get`` splits its keys by node, as memcached clients do,
  and sends each part as one call on a stream the client keeps open to that node; the calls
  waiting for a node at one moment travel as one message (``distlab.cache.pipeline``, after
  mcrouter's batching over one connection per server). A gRPC message on an open stream costs
  far less CPU in Python than a unary call.
* **Deletes** go to the key's owner only, and do not fall over: a delete that only reached a
  stand-in would leave the owner's copy to be served again once the owner is back. A delete
  the owner did not acknowledge raises, and the writer retries it (Facebook's mcsqueal replays
  deletes until they land). Copies on stand-ins are not deleted; the Gutter TTL bounds them.
* **get_or_load** reads through the cache. A miss asks for a lease (the paper's 3.2.1); the
  winner loads from the backing store and refills with its token, which a delete in between
  invalidates; the others are told to wait and retry, or take the stale value if the node
  still has it. Inside one client, concurrent calls for the same key share one load
  (singleflight, as groupcache does). Any cache failure makes it a plain load: a dead cache node
  costs hits, never errors. ``read_through`` says how each read was served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from distlab.cache.pipeline import MultiGetFailed, MultiGetPipe, PendingGet
from distlab.cache.routing import (
    ConsistentHashRouter,
    JumpHashRouter,
    NodeHealth,
    RendezvousRouter,
    Router,
)
from distlab.common import errors
from distlab.common.clock import Clock, SystemClock
from distlab.common.errors import DistlabError
from distlab.common.limits import CLIENT_DEADLINE_MS_DEFAULT
from distlab.common.rpc import error_from_rpc
from distlab.proto import cache_pb2, cache_pb2_grpc

ResultT = TypeVar("ResultT")
ROUTERS: dict[str, Callable[[Sequence[str]], Router]] = {
    "consistent": ConsistentHashRouter,
    "jump": JumpHashRouter,
    "rendezvous": RendezvousRouter,
}
# Nodes one call tries, its owner first: enough to step over one or two dead nodes without
# walking a whole large cluster on every miss.
FAILOVER_NODES_MAX = 3
# The TTL a set gets when its owner is out (the Gutter pool's short expiry; the paper uses 10 s).
FAILOVER_TTL_MS = 10_000
# A client told to wait for another's lease retries this often, this many times, then loads
# without the cache (the paper's clients wait a few milliseconds and retry).
LEASE_WAIT_MS = 20
LEASE_WAITS_MAX = 50
_FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class Source(StrEnum):
    """How ``read_through`` served a read."""

    HIT = "hit"  # the cache had it
    STALE = "stale"  # another reader held the lease; the value a delete just removed
    LOADED = "loaded"  # this call won the lease, loaded, and refilled the cache
    SHARED = "shared"  # another call in this client was loading the key; its value
    UNCACHED = "uncached"  # loaded with no cache fill: the cache failed, or a lease never ended


@dataclass(frozen=True, slots=True)
class ReadThrough:
    value: bytes
    source: Source


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a leased get said, and which node said it."""

    node: str
    reply: cache_pb2.CacheGetResponse


class CacheClient:
    def __init__(
        self,
        addresses: Sequence[str],
        *,
        router: str = "consistent",
        deadline_ms: int = CLIENT_DEADLINE_MS_DEFAULT,
        clock: Clock | None = None,
        health: NodeHealth | None = None,
        failover_ttl_ms: int = FAILOVER_TTL_MS,
    ) -> None:
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {sorted(ROUTERS)}")
        if failover_ttl_ms < 1:
            raise ValueError("failover_ttl_ms must be >= 1")
        self.failover_ttl_ms = failover_ttl_ms
        self.router = ROUTERS[router](list(addresses))
        self.deadline_s = deadline_ms / 1000
        self.clock = clock or SystemClock()
        self.health = health or NodeHealth()
        self._channels = {address: grpc.aio.insecure_channel(address) for address in addresses}
        # Any: the generated stubs type the blocking API; on an aio channel each call is awaitable.
        self._stubs: dict[str, Any] = {
            address: cache_pb2_grpc.CacheStub(channel)
            for address, channel in self._channels.items()
        }
        self._pipes = {
            address: MultiGetPipe(stub, self.deadline_s) for address, stub in self._stubs.items()
        }
        self._flights: dict[bytes, asyncio.Future[ReadThrough]] = {}

    # --- the memcached commands, routed ---

    async def get(self, key: bytes) -> bytes | None:
        request = cache_pb2.CacheGetRequest(key=key)
        _, reply = await self._routed(key, lambda stub: stub.Get(request, timeout=self.deadline_s))
        return reply.value if reply.hit else None

    async def set(self, key: bytes, value: bytes, *, ttl_ms: int = 0) -> bool:
        owner = self.router.node_for(key)

        def call(stub: Any, node: str) -> Any:
            return stub.Set(
                cache_pb2.CacheSetRequest(
                    key=key, value=value, ttl_ms=self._ttl_on(node, owner, ttl_ms)
                ),
                timeout=self.deadline_s,
            )

        _, reply = await self._routed_to(key, call)
        return bool(reply.stored)

    async def delete(self, key: bytes) -> bool:
        """Delete ``key`` at its owner, even one that is ejected (see the module's docstring);
        whether it was there. Raises if the owner did not acknowledge the delete."""
        reply = await self.call_node(
            self.router.node_for(key), "Delete", cache_pb2.CacheDeleteRequest(key=key)
        )
        return bool(reply.existed)

    async def multi_get(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The hits among ``keys``: one call per node holding some, in parallel, each on the
        node's pipelined stream. A node that fails counts as all misses."""
        return {key: item.value for key, item in (await self.multi_get_items(keys)).items()}

    async def multi_get_items(self, keys: Sequence[bytes]) -> dict[bytes, cache_pb2.CacheItem]:
        """``multi_get`` with each hit's item as its node sent it (value and version token)."""
        now_ms = self.clock.monotonic_ms()
        by_node: dict[str, list[bytes]] = {}
        out = {node for node in self.router.nodes if self.health.is_ejected(node, now_ms)}
        for key in keys:
            owner = self.router.node_for(key)
            if owner in out:  # the slow path, only while some node is out
                nodes = self.health.route(self.router, key, now_ms)
                if not nodes:
                    continue
                owner = nodes[0]
            by_node.setdefault(owner, []).append(key)
        # Every call is queued before the first is awaited: they run in parallel, under one
        # deadline.
        deadline_at = asyncio.get_running_loop().time() + self.deadline_s
        gets: list[tuple[str, PendingGet]] = []
        found: dict[bytes, cache_pb2.CacheItem] = {}
        try:
            for node, batch in by_node.items():
                gets.append((node, self._pipes[node].submit(batch, now_ms)))
            for node, get in gets:
                for item in await self._multi_get_reply(node, get, deadline_at):
                    found[item.key] = item
        except BaseException:
            for _, get in gets:
                get.cancel()  # no call left waiting for an answer nobody reads
            raise
        return found

    async def call(self, key: bytes, method: str, request: Any) -> tuple[str, Any]:
        """Any Cache RPC about ``key``, sent where ``key`` is routed (failover included); the
        node that answered and its reply, untouched. The router service forwards with it."""
        return await self._routed(
            key, lambda stub: getattr(stub, method)(request, timeout=self.deadline_s)
        )

    async def call_node(self, node: str, method: str, request: Any) -> Any:
        """Any Cache RPC, sent to ``node`` itself; its outcome counts toward ejecting it."""
        try:
            reply = await getattr(self._stubs[node], method)(request, timeout=self.deadline_s)
        except grpc.aio.AioRpcError as error:
            if error.code() in _FAILOVER_CODES:
                self.health.record_failure(node, self.clock.monotonic_ms())
            raise error_from_rpc(error) from None
        self.health.record_success(node, self.clock.monotonic_ms())
        return reply

    async def stats(self) -> dict[str, cache_pb2.CacheStatsResponse]:
        replies = await asyncio.gather(
            *(
                stub.Stats(cache_pb2.CacheStatsRequest(), timeout=self.deadline_s)
                for stub in self._stubs.values()
            ),
            return_exceptions=True,
        )
        return {
            address: reply
            for address, reply in zip(self._stubs, replies, strict=True)
            if isinstance(reply, cache_pb2.CacheStatsResponse)
        }

    # --- read-through with leases ---

    async def get_or_load(
        self, key: bytes, load: Callable[[], Awaitable[bytes]], *, ttl_ms: int = 0
    ) -> bytes:
        """The cached value, or ``load()``'s, filling the cache under a lease. Concurrent calls
        for ``key`` in this client share one flight."""
        return (await self.read_through(key, load, ttl_ms=ttl_ms)).value

    async def read_through(
        self, key: bytes, load: Callable[[], Awaitable[bytes]], *, ttl_ms: int = 0
    ) -> ReadThrough:
        """``get_or_load``, saying how the value was found."""
        flight = self._flights.get(key)
        if flight is not None:
            shared = await asyncio.shield(flight)
            return ReadThrough(shared.value, Source.SHARED)
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            value = await self._read_through(key, load, ttl_ms)
        except BaseException as error:
            flight.set_exception(error)
            flight.exception()  # retrieved here: waiters get it from their own await
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            del self._flights[key]

    async def _read_through(
        self, key: bytes, load: Callable[[], Awaitable[bytes]], ttl_ms: int
    ) -> ReadThrough:
        for _ in range(LEASE_WAITS_MAX):
            try:
                lookup = await self._leased_get(key)
            except DistlabError:
                # The cache is unreachable: a miss, not an error.
                return ReadThrough(await load(), Source.UNCACHED)
            reply = lookup.reply
            if reply.hit:
                return ReadThrough(reply.value, Source.HIT)
            if reply.lease_token:
                value = await load()
                await self._refill(lookup.node, key, value, ttl_ms, reply.lease_token)
                return ReadThrough(value, Source.LOADED)
            if reply.has_stale:
                # The paper's choice: slightly old over a stampede.
                return ReadThrough(reply.stale_value, Source.STALE)
            await asyncio.sleep(LEASE_WAIT_MS / 1000)
        # The lease holder never refilled: load, but leave the cache alone.
        return ReadThrough(await load(), Source.UNCACHED)

    async def _leased_get(self, key: bytes) -> Lookup:
        node, reply = await self._routed(
            key,
            lambda stub: stub.Get(
                cache_pb2.CacheGetRequest(key=key, want_lease=True), timeout=self.deadline_s
            ),
        )
        return Lookup(node, reply)

    async def _refill(self, node: str, key: bytes, value: bytes, ttl_ms: int, token: int) -> None:
        """Set under the lease, on the node that granted it; a refused or failed refill only
        means the next reader misses too."""
        ttl_ms = self._ttl_on(node, self.router.node_for(key), ttl_ms)
        try:
            await self._stubs[node].Set(
                cache_pb2.CacheSetRequest(key=key, value=value, ttl_ms=ttl_ms, lease_token=token),
                timeout=self.deadline_s,
            )
        except grpc.aio.AioRpcError:
            pass

    def _ttl_on(self, node: str, owner: str, ttl_ms: int) -> int:
        """The TTL of a set on ``node``: the caller's on the owner, at most the Gutter TTL on a
        stand-in (no TTL, 0, counts as longer than any)."""
        if node == owner:
            return ttl_ms
        return min(ttl_ms or self.failover_ttl_ms, self.failover_ttl_ms)

    # --- routing and failover ---

    async def _routed(self, key: bytes, call: Callable[[Any], Awaitable[Any]]) -> tuple[str, Any]:
        return await self._routed_to(key, lambda stub, node: call(stub))

    async def _routed_to(
        self, key: bytes, call: Callable[[Any, str], Awaitable[Any]]
    ) -> tuple[str, Any]:
        """Send to the key's owner, or, if it is out or fails, to the next node in the key's
        order; the node that answered and its reply."""
        now_ms = self.clock.monotonic_ms()
        last_error: DistlabError | None = None
        for node in self._candidates(key):
            if self.health.is_ejected(node, now_ms) and not self.health.should_probe(node, now_ms):
                continue
            try:
                reply = await call(self._stubs[node], node)
            except grpc.aio.AioRpcError as error:
                if error.code() not in _FAILOVER_CODES:
                    raise error_from_rpc(error) from None
                self.health.record_failure(node, self.clock.monotonic_ms())
                last_error = error_from_rpc(error)
                continue
            self.health.record_success(node, self.clock.monotonic_ms())
            return node, reply
        raise last_error or DistlabError(
            errors.UNAVAILABLE, "every cache node for this key is out of rotation"
        )

    def _candidates(self, key: bytes) -> Iterator[str]:
        """The key's owner, then (only if asked for: the owner usually answers) the next nodes
        of its order."""
        owner = self.router.node_for(key)
        yield owner
        count = min(len(self.router.nodes), FAILOVER_NODES_MAX)
        yield from (node for node in self.router.nodes_for(key, count) if node != owner)

    async def _multi_get_reply(
        self, node: str, get: PendingGet, deadline_at: float
    ) -> Sequence[cache_pb2.CacheItem]:
        try:
            items = await get.result(deadline_at)
        except MultiGetFailed as failed:
            if failed.shed:
                return []  # this client has too many calls pending there: misses, not the node's
            if failed.code not in _FAILOVER_CODES:
                raise failed.error from None
            self.health.record_failure(node, self.clock.monotonic_ms())
            return []  # a node that fails counts as all misses
        self.health.record_success(node, self.clock.monotonic_ms())
        return items

    async def close(self) -> None:
        # Together: each pipe may wait up to its grace for a node that is slow to end a stream.
        await asyncio.gather(*(pipe.close() for pipe in self._pipes.values()))
        for channel in self._channels.values():
            await channel.close()

    async def __aenter__(self) -> CacheClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
