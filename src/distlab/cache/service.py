"""The gRPC servicer of a cache node, and its entry point (``distlab cache node``).

Thin by design: check sizes at the edge, call the store (``distlab.cache.core.CacheStore``) with
the monotonic clock's ``now_ms``, encode the reply. The store is in memory only: a restarted node
comes back empty, and its keys are misses until refilled, as with memcached.

One background task sweeps expired items, a bounded number per round, so memory held by items
nobody reads again comes back without a read having to find them (memcached's LRU crawler).

``MultiGetStream`` is the pipelined multi-get (``distlab.cache.pipeline``): a client keeps one
stream per node and sends batches of calls, each answered by id; the node answers a batch's
calls in order, with the same checks as ``MultiGet``. At shutdown the node ends those streams
itself (``close_streams``), because a client keeps its stream open for as long as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc.aio

from distlab.bench.histogram import LatencyHistogram
from distlab.cache.core import (
    KEY_BYTES_MAX,
    LEASE_MS_DEFAULT,
    MULTI_GET_CALLS_PER_BATCH_MAX,
    MULTI_GET_KEYS_MAX,
    STALE_MS_DEFAULT,
    TTL_MS_MAX,
    VALUE_BYTES_MAX,
    CacheStore,
    Item,
    SetMode,
    SetOutcome,
)
from distlab.cache.policy import EvictionPolicy, LruPolicy, WTinyLfuPolicy
from distlab.common.clock import Clock, SystemClock
from distlab.common.errors import (
    DEADLINE_EXCEEDED,
    UNAVAILABLE,
    DistlabError,
    invalid_argument,
)
from distlab.common.limits import Limits
from distlab.common.logs import log_event
from distlab.common.rpc import abort_on_error
from distlab.common.server import ServerOptions, run_server
from distlab.proto import cache_pb2, cache_pb2_grpc

logger = logging.getLogger("distlab.cache")
Context = grpc.aio.ServicerContext[Any, Any]
ResultT = TypeVar("ResultT")

CAPACITY_BYTES_DEFAULT = 64 * 1024 * 1024  # memcached's default -m 64
# A MultiGetStream outlives the server's per-call cap (Limits.deadline_ms_max) by design, so it
# has a cap of its own: longer than distlab's clients keep a stream (the pipeline rotates its
# streams after a minute, under a two-minute deadline), short enough that a stream opened with
# no deadline cannot hold its concurrency slot forever.
MULTI_GET_STREAM_S_MAX = 600.0
# At shutdown, how long a stream's reply already being written may take to finish before the
# stream is ended anyway. Only a client that stopped reading holds a write up that long, and its
# call then ends only when the shutdown grace does.
STREAM_WRITE_FINISH_S = 1.0
# What a result's framing adds to its items' keys and values, at most, in a batch reply: the
# tags and lengths of CacheItem's three fields and of the item itself (22 bytes), and of the
# result and its id (17 bytes). Upper bounds, so a reply cut by them never exceeds the cap.
ITEM_FRAMING_BYTES_MAX = 24
RESULT_FRAMING_BYTES_MAX = 24
SWEEP_INTERVAL_MS_DEFAULT = 1_000
# Expired items reclaimed per sweep round: bounded, so a round never stalls the loop long.
SWEEP_ITEMS_MAX = 10_000
POLICIES: dict[str, Callable[[int], EvictionPolicy]] = {
    "lru": LruPolicy,
    "tinylfu": WTinyLfuPolicy,
}
_MODES = {
    cache_pb2.SET_MODE_UNSPECIFIED: SetMode.SET,
    cache_pb2.SET_MODE_ADD: SetMode.ADD,
    cache_pb2.SET_MODE_COMPARE_AND_SET: SetMode.COMPARE_AND_SET,
}
_OUTCOMES = {
    SetOutcome.STORED: cache_pb2.SET_OUTCOME_STORED,
    SetOutcome.NOT_STORED: cache_pb2.SET_OUTCOME_NOT_STORED,
    SetOutcome.EXISTS: cache_pb2.SET_OUTCOME_EXISTS,
    SetOutcome.NOT_FOUND: cache_pb2.SET_OUTCOME_NOT_FOUND,
    SetOutcome.LEASE_INVALID: cache_pb2.SET_OUTCOME_LEASE_INVALID,
    SetOutcome.TOO_LARGE: cache_pb2.SET_OUTCOME_TOO_LARGE,
}


@dataclass(frozen=True, slots=True)
class CacheNodeOptions:
    capacity_bytes: int = CAPACITY_BYTES_DEFAULT
    policy: str = "lru"
    lease_ms: int = LEASE_MS_DEFAULT
    stale_ms: int = STALE_MS_DEFAULT
    sweep_interval_ms: int = SWEEP_INTERVAL_MS_DEFAULT

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}")
        if self.capacity_bytes < 1 or self.sweep_interval_ms < 1:
            raise ValueError("capacity_bytes and sweep_interval_ms must be positive")

    def new_store(self) -> CacheStore:
        return CacheStore(
            self.capacity_bytes,
            POLICIES[self.policy](self.capacity_bytes),
            lease_ms=self.lease_ms,
            stale_ms=self.stale_ms,
        )


class CacheServicer(cache_pb2_grpc.CacheServicer):
    def __init__(
        self, options: CacheNodeOptions, limits: Limits, clock: Clock | None = None
    ) -> None:
        self.options = options
        self.store = options.new_store()
        self.clock = clock or SystemClock()
        # The node's own limits, and the store's, whichever is smaller.
        self.key_bytes_max = min(limits.key_bytes_max, KEY_BYTES_MAX)
        self.value_bytes_max = min(limits.value_bytes_max, VALUE_BYTES_MAX)
        self.latency = {op: LatencyHistogram() for op in ("get", "multi_get", "set", "delete")}
        # A batch's results are split over several replies where one would pass gRPC's cap on
        # the messages this node sends (set from the same limits by common.server).
        self.reply_bytes_max = limits.message_bytes_max
        self._closing = asyncio.Event()

    def _key(self, key: bytes, field: str = "key") -> bytes:
        if not 0 < len(key) <= self.key_bytes_max:
            raise invalid_argument(field, f"must be 1 to {self.key_bytes_max} bytes")
        return key

    def _timed(self, op: str, started_ns: int) -> None:
        self.latency[op].record(time.perf_counter_ns() - started_ns)

    @abort_on_error
    async def Get(
        self, request: cache_pb2.CacheGetRequest, context: Context
    ) -> cache_pb2.CacheGetResponse:
        started = time.perf_counter_ns()
        result = self.store.get(
            self._key(request.key), self.clock.monotonic_ms(), want_lease=request.want_lease
        )
        self._timed("get", started)
        item = result.item
        if item is not None:
            return cache_pb2.CacheGetResponse(hit=True, value=item.value, version=item.version)
        return cache_pb2.CacheGetResponse(
            lease_token=result.lease_token,
            wait=result.wait,
            has_stale=result.stale_value is not None,
            stale_value=result.stale_value or b"",
        )

    @abort_on_error
    async def MultiGet(
        self, request: cache_pb2.CacheMultiGetRequest, context: Context
    ) -> cache_pb2.CacheMultiGetResponse:
        started = time.perf_counter_ns()
        items = self._multi_get(request.keys, "keys")
        self._timed("multi_get", started)
        return cache_pb2.CacheMultiGetResponse(
            items=[
                cache_pb2.CacheItem(key=item.key, value=item.value, version=item.version)
                for item in items
            ]
        )

    async def close_streams(self) -> None:
        """End every client's MultiGetStream into this node. A stream lasts as long as its
        client keeps it, so at shutdown a graceful stop would otherwise wait out its grace."""
        self._closing.set()

    @abort_on_error
    async def MultiGetStream(  # type: ignore[override]  # grpc.aio's reader/writer form
        self, requests: AsyncIterator[cache_pb2.CacheMultiGetBatch], context: Context
    ) -> None:
        """A client's stream of multi-get batches, open until the client ends it, its deadline
        passes or this node stops. The batches are answered in a task of their own, as
        ``RaftServicer.Step`` reads its stream, because only a handler that returns ends its
        call: cancelling it leaves the call open until the shutdown grace runs out."""
        if self._closing.is_set():
            raise DistlabError(UNAVAILABLE, "this node is stopping")
        ending, writing = asyncio.Event(), asyncio.Event()
        answering = asyncio.create_task(self._answer_stream(requests, context, ending, writing))
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait(
                {answering, closing},
                timeout=MULTI_GET_STREAM_S_MAX,
                return_when=asyncio.FIRST_COMPLETED,
            )
            answered = answering.done()  # before anything asked it to end: the client ended it
            ending.set()
            if writing.is_set():
                # A write cancelled halfway stays in flight in gRPC's core, and the status sent
                # next then fails (TOO_MANY_OPERATIONS): the call never ends and a stop waits
                # out its grace. The answering task starts no write once the stream is ending,
                # so this waits for one at most.
                await asyncio.wait({answering}, timeout=STREAM_WRITE_FINISH_S)
        finally:
            closing.cancel()
            answering.cancel()
        if answered:
            answering.result()  # raises what a batch was refused for
            return
        if self._closing.is_set():
            raise DistlabError(UNAVAILABLE, "this node is stopping")
        raise DistlabError(
            DEADLINE_EXCEEDED, f"a multi-get stream lasts at most {MULTI_GET_STREAM_S_MAX:.0f} s"
        )

    async def _answer_stream(
        self,
        requests: AsyncIterator[cache_pb2.CacheMultiGetBatch],
        context: Context,
        ending: asyncio.Event,
        writing: asyncio.Event,
    ) -> None:
        async for batch in requests:
            for reply in self._answer_batch(batch):
                if ending.is_set():
                    return
                writing.set()
                try:
                    await context.write(reply)
                finally:
                    writing.clear()

    def _answer_batch(
        self, batch: cache_pb2.CacheMultiGetBatch
    ) -> list[cache_pb2.CacheMultiGetBatchReply]:
        """Every call of ``batch`` answered, in order: one reply, or more where one would be
        larger than this node may send. A call that breaks a limit refuses the whole batch
        (and so ends the stream), as a bad key refuses a whole MultiGet."""
        if len(batch.calls) > MULTI_GET_CALLS_PER_BATCH_MAX:
            raise invalid_argument("calls", f"at most {MULTI_GET_CALLS_PER_BATCH_MAX} per batch")
        replies = [cache_pb2.CacheMultiGetBatchReply()]
        reply_bytes = 0
        for call in batch.calls:
            started = time.perf_counter_ns()
            items = self._multi_get(call.keys, "calls.keys")
            self._timed("multi_get", started)
            result_bytes = RESULT_FRAMING_BYTES_MAX + sum(
                len(item.key) + len(item.value) + ITEM_FRAMING_BYTES_MAX for item in items
            )
            if reply_bytes and reply_bytes + result_bytes > self.reply_bytes_max:
                replies.append(cache_pb2.CacheMultiGetBatchReply())
                reply_bytes = 0
            reply_bytes += result_bytes
            replies[-1].results.add(
                id=call.id,
                items=[
                    cache_pb2.CacheItem(key=item.key, value=item.value, version=item.version)
                    for item in items
                ],
            )
        return replies

    def _multi_get(self, keys: Sequence[bytes], field: str) -> list[Item]:
        """The hits among ``keys``, in their order, once every key passed the node's checks."""
        if len(keys) > MULTI_GET_KEYS_MAX:
            raise invalid_argument(field, f"at most {MULTI_GET_KEYS_MAX} per call")
        checked = [self._key(key, field) for key in keys]
        return self.store.multi_get(checked, self.clock.monotonic_ms())

    @abort_on_error
    async def Set(
        self, request: cache_pb2.CacheSetRequest, context: Context
    ) -> cache_pb2.CacheSetResponse:
        started = time.perf_counter_ns()
        key = self._key(request.key)
        if len(request.value) > self.value_bytes_max:
            raise invalid_argument("value", f"is over {self.value_bytes_max} bytes")
        if request.ttl_ms > TTL_MS_MAX:
            raise invalid_argument("ttl_ms", f"is over {TTL_MS_MAX} ms (30 days)")
        mode = _MODES.get(request.mode)
        if mode is None:
            raise invalid_argument("mode", f"unknown set mode {request.mode}")
        result = self.store.set(
            key,
            request.value,
            self.clock.monotonic_ms(),
            ttl_ms=request.ttl_ms,
            mode=mode,
            expected_version=request.expected_version,
            lease_token=request.lease_token,
        )
        self._timed("set", started)
        return cache_pb2.CacheSetResponse(
            stored=result.stored, version=result.version, outcome=_OUTCOMES[result.outcome]
        )

    @abort_on_error
    async def Delete(
        self, request: cache_pb2.CacheDeleteRequest, context: Context
    ) -> cache_pb2.CacheDeleteResponse:
        started = time.perf_counter_ns()
        existed = self.store.delete(self._key(request.key), self.clock.monotonic_ms())
        self._timed("delete", started)
        return cache_pb2.CacheDeleteResponse(existed=existed)

    @abort_on_error
    async def Touch(
        self, request: cache_pb2.CacheTouchRequest, context: Context
    ) -> cache_pb2.CacheTouchResponse:
        if request.ttl_ms > TTL_MS_MAX:
            raise invalid_argument("ttl_ms", f"is over {TTL_MS_MAX} ms (30 days)")
        existed = self.store.touch(
            self._key(request.key), request.ttl_ms, self.clock.monotonic_ms()
        )
        return cache_pb2.CacheTouchResponse(existed=existed)

    @abort_on_error
    async def Stats(
        self, request: cache_pb2.CacheStatsRequest, context: Context
    ) -> cache_pb2.CacheStatsResponse:
        stats = self.store.stats
        return cache_pb2.CacheStatsResponse(
            hits=stats.hits,
            misses=stats.misses,
            evictions=stats.evictions,
            expirations=stats.expirations,
            items=len(self.store),
            bytes=self.store.bytes_used,
            capacity_bytes=self.store.capacity_bytes,
            leases_granted=stats.leases_granted,
            lease_waits=stats.lease_waits,
            stale_sets_refused=stats.stale_sets_refused,
            policy=self.options.policy,
            latency=[
                cache_pb2.CacheOpLatency(
                    op=op,
                    count=histogram.count,
                    p50_ms=histogram.value_at_percentile(50) / 1e6 if histogram.count else 0.0,
                    p99_ms=histogram.value_at_percentile(99) / 1e6 if histogram.count else 0.0,
                )
                for op, histogram in self.latency.items()
            ],
        )

    async def sweep_forever(self) -> None:
        interval_s = self.options.sweep_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            reclaimed = self.store.sweep(self.clock.monotonic_ms(), SWEEP_ITEMS_MAX)
            if reclaimed:
                log_event(logger, "swept", reclaimed=reclaimed, items=len(self.store))


@dataclass(frozen=True, slots=True)
class CacheNodeConfig:
    node: CacheNodeOptions = field(default_factory=CacheNodeOptions)
    server: ServerOptions = field(default_factory=ServerOptions)


async def run_node(config: CacheNodeConfig, stop: asyncio.Event | None = None) -> None:
    servicer = CacheServicer(config.node, config.server.limits)
    sweeper: asyncio.Task[None] | None = None

    def register(server: grpc.aio.Server) -> list[str]:
        cache_pb2_grpc.add_CacheServicer_to_server(servicer, server)
        return [cache_pb2.DESCRIPTOR.services_by_name["Cache"].full_name]

    async def on_serving(port: int) -> None:
        nonlocal sweeper
        sweeper = asyncio.create_task(servicer.sweep_forever(), name="sweep")

    async def on_stop() -> None:
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    await run_server(
        config.server,
        register,
        on_stop=on_stop,
        before_stop=servicer.close_streams,
        stop=stop,
        on_serving=on_serving,
    )
    await on_stop()
