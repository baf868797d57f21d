"""The cache router (``distlab cache router``): one endpoint that routes like the client does,
for programs that are not written in Python, after Facebook's mcrouter.

It serves the same ``Cache`` service as a node and forwards each call through a
``CacheClient``: the same router, the same ejection of failing nodes and failover. A multi-get
is split by owner and the replies merged in request order; Stats adds the nodes' counters up.

Hot keys. A key that every page reads can overload the one node that owns it; mcrouter answers
with replicated pools. Keys that start with one of ``hot_prefixes`` are kept on ``hot_replicas``
nodes (the first of the key's order): sets, deletes and touches go to all of them, and each get
goes to one at random, which spreads the reads. Leased gets of a hot key go to its first
replica only, so one lease guards its refill; the refill's set then goes to all of them.

What it leaves out: mcrouter's other routes (prefix routing to several pools, shadowing,
warm-up), and consistency among the replicas of a hot key beyond "every write goes to all": a
replica that missed a write (it was out) serves its older value until the TTL ends it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc.aio

from distlab.cache.client import CacheClient
from distlab.cache.core import MULTI_GET_KEYS_MAX
from distlab.common.errors import DistlabError, invalid_argument
from distlab.common.limits import Limits
from distlab.common.rpc import abort_on_error
from distlab.common.server import ServerOptions, run_server
from distlab.proto import cache_pb2, cache_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
# Replicas of a hot key: enough to spread a hot key's reads, few enough that a write stays cheap.
HOT_REPLICAS_DEFAULT = 2
HOT_PREFIXES_MAX = 64
_SUMMED = (
    "hits", "misses", "evictions", "expirations", "items", "bytes", "capacity_bytes",
    "leases_granted", "lease_waits", "stale_sets_refused",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RouterOptions:
    nodes: tuple[str, ...]
    router: str = "consistent"
    hot_prefixes: tuple[bytes, ...] = ()
    hot_replicas: int = HOT_REPLICAS_DEFAULT

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("the router needs at least one cache node")
        if len(self.hot_prefixes) > HOT_PREFIXES_MAX:
            raise ValueError(f"at most {HOT_PREFIXES_MAX} hot prefixes")
        if not 1 <= self.hot_replicas <= len(self.nodes):
            raise ValueError("hot_replicas must be between 1 and the number of nodes")


class CacheRouterServicer(cache_pb2_grpc.CacheServicer):
    def __init__(self, options: RouterOptions, limits: Limits, seed: int | None = None) -> None:
        self.options = options
        self.limits = limits
        self.client = CacheClient(list(options.nodes), router=options.router)
        self._random = random.Random(seed)

    def _hot(self, key: bytes) -> bool:
        return any(key.startswith(prefix) for prefix in self.options.hot_prefixes)

    def _replicas(self, key: bytes) -> list[str]:
        return self.client.router.nodes_for(key, self.options.hot_replicas)

    async def _to_all_replicas(self, key: bytes, method: str, request: Any) -> Any:
        """The call on every replica of a hot key; the first replica's reply, or, if it failed,
        any other's. Raises only if every replica failed."""
        replies = await asyncio.gather(
            *(self.client.call_node(node, method, request) for node in self._replicas(key)),
            return_exceptions=True,
        )
        for reply in replies:
            if not isinstance(reply, BaseException):
                return reply
        first = replies[0]
        assert isinstance(first, BaseException)
        raise first

    def _key(self, key: bytes) -> bytes:
        self.limits.check_key(key)
        return key

    @abort_on_error
    async def Get(
        self, request: cache_pb2.CacheGetRequest, context: Context
    ) -> cache_pb2.CacheGetResponse:
        key = self._key(request.key)
        if self._hot(key) and not request.want_lease:
            replica = self._random.choice(self._replicas(key))
            try:
                reply: cache_pb2.CacheGetResponse = await self.client.call_node(
                    replica, "Get", request
                )
                return reply
            except DistlabError:
                pass  # that replica is out: the key's usual route
        _, routed = await self.client.call(key, "Get", request)
        return routed  # type: ignore[no-any-return]

    @abort_on_error
    async def MultiGet(
        self, request: cache_pb2.CacheMultiGetRequest, context: Context
    ) -> cache_pb2.CacheMultiGetResponse:
        if len(request.keys) > MULTI_GET_KEYS_MAX:
            raise invalid_argument("keys", f"at most {MULTI_GET_KEYS_MAX} per call")
        keys = [self._key(key) for key in request.keys]
        found = await self.client.multi_get_items(keys)
        return cache_pb2.CacheMultiGetResponse(items=[found[key] for key in keys if key in found])

    async def MultiGetStream(  # type: ignore[override]  # grpc.aio's reader/writer form
        self, requests: Any, context: Context
    ) -> None:
        """Not served by the router (as the generated base class would answer): its clients
        send MultiGet, and it pipelines to the nodes itself, through its CacheClient."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the router serves MultiGet only")

    async def _write(self, key: bytes, method: str, request: Any) -> Any:
        if self._hot(key):
            return await self._to_all_replicas(key, method, request)
        _, reply = await self.client.call(key, method, request)
        return reply

    @abort_on_error
    async def Set(
        self, request: cache_pb2.CacheSetRequest, context: Context
    ) -> cache_pb2.CacheSetResponse:
        reply: cache_pb2.CacheSetResponse = await self._write(
            self._key(request.key), "Set", request
        )
        return reply

    @abort_on_error
    async def Delete(
        self, request: cache_pb2.CacheDeleteRequest, context: Context
    ) -> cache_pb2.CacheDeleteResponse:
        reply: cache_pb2.CacheDeleteResponse = await self._write(
            self._key(request.key), "Delete", request
        )
        return reply

    @abort_on_error
    async def Touch(
        self, request: cache_pb2.CacheTouchRequest, context: Context
    ) -> cache_pb2.CacheTouchResponse:
        reply: cache_pb2.CacheTouchResponse = await self._write(
            self._key(request.key), "Touch", request
        )
        return reply

    @abort_on_error
    async def Stats(
        self, request: cache_pb2.CacheStatsRequest, context: Context
    ) -> cache_pb2.CacheStatsResponse:
        """The nodes' counters added up (over the nodes that answered)."""
        replies = (await self.client.stats()).values()
        total = cache_pb2.CacheStatsResponse(policy="router")
        for reply in replies:
            for name in _SUMMED:
                setattr(total, name, getattr(total, name) + getattr(reply, name))
        return total


@dataclass(frozen=True, slots=True)
class RouterConfig:
    router: RouterOptions
    server: ServerOptions = field(default_factory=ServerOptions)


async def run_router(config: RouterConfig, stop: asyncio.Event | None = None) -> None:
    servicer = CacheRouterServicer(config.router, config.server.limits)

    def register(server: grpc.aio.Server) -> Sequence[str]:
        cache_pb2_grpc.add_CacheServicer_to_server(servicer, server)
        return [cache_pb2.DESCRIPTOR.services_by_name["Cache"].full_name]

    try:
        await run_server(config.server, register, stop=stop)
    finally:
        await servicer.client.close()
