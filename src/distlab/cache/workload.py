"""The chaos workload of the cache cluster: cache-aside over a backing store, with slow loaders.

What it runs is what "Scaling Memcache at Facebook" (NSDI 2013, 3.2) runs in front of MySQL:

* a **write** gives the key its next version in the backing store (``BackingStore``, in this
  process, so it never fails: the faults are all in the cache), then deletes the key in the
  cache. It is acknowledged once the key's owner acknowledged the delete; until then it is
  retried, as mcsqueal replays deletes, for ``write_retry_s``; after that it ends ``info``.
* a **read** is ``CacheClient.read_through``: a hit, or a miss that loads the backing store and
  refills the cache under the lease the miss handed out. Some loads are slow (a reader that
  stalls between reading the database and filling the cache), which is what makes the stale-set
  race of the paper's 3.2.1 happen often enough to see. With ``leases=False`` the read is the
  unguarded cache-aside of ``distlab.cache.aside``: get, load, set. That run is the negative
  control the staleness check must catch.

Values are ``"<key>@<version>"`` (``checker.value_of``), so the checker knows which write every
value read came from. Several ``clients`` stand for several application servers: each has its
own routing, ejection view and singleflight, as separate processes would.

Workers, pacing and process replacement are the harness's (``distlab.chaos.pacing``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distlab.cache.checker import READ, WRITE, value_of
from distlab.cache.client import CacheClient, ReadThrough, Source
from distlab.chaos.history import HistoryRecorder, OpType
from distlab.chaos.pacing import run_paced
from distlab.common.errors import DistlabError

CONCURRENCY_MAX = 256
CLIENTS_MAX = 16
KEYS_MAX = 100_000
# A read that takes longer than this is recorded as failed: get_or_load has to answer, from
# the cache or from the backing store, whatever the cache's faults.
READ_DEADLINE_S = 10.0
WRITE_RETRY_INTERVAL_S = 0.05


@dataclass(frozen=True, slots=True)
class CacheWorkloadOptions:
    duration_s: float
    rate: float = 100.0
    concurrency: int = 10
    # The stale-set race needs a write to land during a slow load, and its stale value to
    # outlive the grace before the next write to the key clears it: 20 writes/s over 32 keys
    # writes each key about every 1.6 s, the grace, which is when the most races show.
    keys: int = 32
    write_fraction: float = 0.2
    slow_load_fraction: float = 0.5
    slow_load_ms: int = 600
    call_timeout_ms: int = 300
    lease_ms: int = 1_000
    stale_ms: int = 500
    failover_ttl_ms: int = 200
    write_retry_s: float = 3.0
    leases: bool = True
    clients: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= CONCURRENCY_MAX:
            raise ValueError(f"concurrency must be in [1, {CONCURRENCY_MAX}]")
        if not 1 <= self.clients <= CLIENTS_MAX:
            raise ValueError(f"clients must be in [1, {CLIENTS_MAX}]")
        if not 1 <= self.keys <= KEYS_MAX:
            raise ValueError(f"keys must be in [1, {KEYS_MAX}]")
        if self.rate <= 0 or self.duration_s <= 0 or self.write_retry_s < 0:
            raise ValueError("rate and duration_s must be positive, write_retry_s >= 0")
        if not (0 <= self.write_fraction <= 1 and 0 <= self.slow_load_fraction <= 1):
            raise ValueError("write_fraction and slow_load_fraction must be in [0, 1]")
        if min(self.call_timeout_ms, self.lease_ms, self.failover_ttl_ms) < 1:
            raise ValueError("call_timeout_ms, lease_ms and failover_ttl_ms must be >= 1")
        if min(self.slow_load_ms, self.stale_ms) < 0:
            raise ValueError("slow_load_ms and stale_ms must be >= 0")

    def grace_ms(self, margin_ms: int) -> int:
        """How long after an acknowledged invalidation a stale value may still be read (the
        checker's module docstring gives the cases): a value deleted at the owner is served
        as stale for ``stale_ms``; a load that began before the delete reaches a stand-in at
        most a slow load and one call later, and lives there ``failover_ttl_ms``."""
        leftover_ms = self.slow_load_ms + self.call_timeout_ms + self.failover_ttl_ms
        return max(self.stale_ms, leftover_ms) + margin_ms


class BackingStore:
    """The database behind the cache: a version per key, starting at 0."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}

    def write(self, key: str) -> int:
        version = self.versions.get(key, 0) + 1
        self.versions[key] = version
        return version

    def read(self, key: str) -> int:
        return self.versions.get(key, 0)


class CacheWorkload:
    def __init__(
        self,
        addresses: Sequence[str],
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        options: CacheWorkloadOptions,
    ) -> None:
        self.recorder = recorder
        self.now_ns = now_ns
        self.options = options
        self.backing = BackingStore()
        self.clients = [
            CacheClient(
                addresses,
                deadline_ms=options.call_timeout_ms,
                failover_ttl_ms=options.failover_ttl_ms,
            )
            for _ in range(options.clients)
        ]

    async def run(self) -> None:
        workers = [_Worker(self, index) for index in range(self.options.concurrency)]
        await run_paced(workers, self.options.rate, self.options.duration_s)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

    def summary(self) -> dict[str, Any]:
        return {"keys": len(self.backing.versions), "clients": len(self.clients)}

    async def read(
        self, process: int, client: CacheClient, key: str, load_delay_s: float
    ) -> OpType:
        self.recorder.record(OpType.INVOKE, process, READ, self.now_ns(), key=key)

        async def load() -> bytes:
            version = self.backing.read(key)
            if load_delay_s:
                await asyncio.sleep(load_delay_s)  # a reader stalled before its fill
            return value_of(key, version).encode()

        try:
            async with asyncio.timeout(READ_DEADLINE_S):
                if self.options.leases:
                    read = await client.read_through(key.encode(), load)
                else:
                    read = await _unguarded_read(client, key.encode(), load)
        except (DistlabError, TimeoutError) as error:
            self.recorder.record(
                OpType.INFO, process, READ, self.now_ns(), key=key, error=repr(error)
            )
            return OpType.INFO
        self.recorder.record(
            OpType.OK,
            process,
            READ,
            self.now_ns(),
            key=key,
            value=read.value.decode(),
            extra={"source": str(read.source)},
        )
        return OpType.OK

    async def write(self, process: int, client: CacheClient, key: str) -> OpType:
        version = self.backing.write(key)
        value = value_of(key, version)
        self.recorder.record(OpType.INVOKE, process, WRITE, self.now_ns(), key=key, value=value)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.options.write_retry_s
        attempts = 0
        while True:
            attempts += 1
            try:
                await client.delete(key.encode())
            except DistlabError as error:
                if loop.time() < give_up_at:
                    await asyncio.sleep(WRITE_RETRY_INTERVAL_S)
                    continue
                self.recorder.record(
                    OpType.INFO,
                    process,
                    WRITE,
                    self.now_ns(),
                    key=key,
                    error=f"{error.kind}: {error}",
                    extra={"attempts": attempts},
                )
                return OpType.INFO
            self.recorder.record(
                OpType.OK,
                process,
                WRITE,
                self.now_ns(),
                key=key,
                value=value,
                extra={"attempts": attempts},
            )
            return OpType.OK


async def _unguarded_read(
    client: CacheClient, key: bytes, load: Callable[[], Awaitable[bytes]]
) -> ReadThrough:
    """Cache-aside without leases: the fill races any delete that lands during the load."""
    try:
        cached = await client.get(key)
    except DistlabError:
        cached = None
    if cached is not None:
        return ReadThrough(cached, Source.HIT)
    value = await load()
    try:
        await client.set(key, value)
    except DistlabError:
        return ReadThrough(value, Source.UNCACHED)
    return ReadThrough(value, Source.LOADED)


class _Worker:
    """One client process: its application server (a ``CacheClient``), its random choices,
    and its process id, replaced after an ``info``."""

    def __init__(self, workload: CacheWorkload, index: int) -> None:
        self.workload = workload
        self.client = workload.clients[index % len(workload.clients)]
        self.rng = random.Random(workload.options.seed * CONCURRENCY_MAX + index)
        self.process = index

    async def __call__(self, elapsed_s: float) -> None:
        options = self.workload.options
        key = f"k{self.rng.randrange(options.keys)}"
        if self.rng.random() < options.write_fraction:
            outcome = await self.workload.write(self.process, self.client, key)
        else:
            slow = self.rng.random() < options.slow_load_fraction
            delay_s = options.slow_load_ms / 1000 if slow else 0.0
            outcome = await self.workload.read(self.process, self.client, key, delay_s)
        if outcome is OpType.INFO:
            self.process += options.concurrency
