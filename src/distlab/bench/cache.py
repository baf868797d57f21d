"""``distlab bench cache``: a local cache cluster under a zipfian load, next to a bare gRPC echo
and, when the machine has them, memcached driven from Python (issue 7).

Rows:

* ``echo``: the health service's Check on an in-process grpc.aio server, one channel per cache
  node, as in ``distlab bench kv``: what an empty unary call costs here.
* ``get``: unary gets through ``CacheClient`` (routing included), zipfian keys.
* ``mixed``: ``get_fraction`` gets and the rest sets, zipfian keys, ``value_bytes`` values; its
  counters give the hit ratio.
* ``multi-get``: ``CacheClient.multi_get`` of ``batch_keys`` zipfian keys (one call per node
  holding some, in parallel, pipelined: each client keeps one MultiGetStream per node and packs
  the calls its workers have waiting for a node into one message); its counters give keys/s.
* ``memcached-get`` and ``memcached-multi-get``: the same loads on a local ``memcached`` through
  pymemcache, one client per worker thread, each reply awaited, when a ``memcached`` binary and
  the pymemcache package are both installed; otherwise the rows are skipped and a note says so.

The echo and the cache's rows take turns (``runner.run_interleaved``), ``rounds`` times, each
turn a ``rounds``-th of the duration and the warm-up, so that a drift in this machine's speed
reaches them alike and the ratios to the echo hold. The memcached rows run after them, on threads
outside the asyncio runner, one after the other: their ratios are the less steady ones.

The cluster: ``nodes`` ``distlab cache node`` processes on loopback with ``capacity_mb`` each,
loaded with every key, coldest first, before the rows run; where the data outgrows a node's
capacity the coldest keys are evicted, which is what makes the hit ratio a measurement.
Everything shares this machine's cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from distlab.bench.histogram import LatencyHistogram
from distlab.bench.kv import ECHO_NAME, EchoReference
from distlab.bench.runner import (
    ROUNDS_DEFAULT,
    ROUNDS_MAX,
    BenchResult,
    BenchSpec,
    Operation,
    Row,
    result_of,
    run_interleaved,
)
from distlab.cache.traces import zipf_trace
from distlab.common import eventloop
from distlab.common.processes import NodeProcess, start_all

BENCHMARK_NAME = "cache"
GET_NAME, MIXED_NAME, MULTI_GET_NAME = "get", "mixed", "multi-get"
MEMCACHED_GET_NAME, MEMCACHED_MULTI_GET_NAME = "memcached-get", "memcached-multi-get"
# YCSB's zipfian constant: a few keys take most requests, as in production caches.
ZIPF_ALPHA_DEFAULT = 0.99
# Each worker replays its own precomputed zipfian sequence of this many keys, so drawing a key
# costs nothing during the measurement.
KEY_SEQUENCE_LENGTH = 20_000
PRELOAD_CONCURRENCY = 64
CALL_DEADLINE_S = 10.0
MEMCACHED_START_DEADLINE_S = 10.0


class CacheBenchError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CacheBenchSettings:
    nodes: int = 3
    keys: int = 20_000
    value_bytes: int = 100
    capacity_mb: float = 1.0
    policy: str = "lru"
    get_fraction: float = 0.9
    batch_keys: int = 100
    alpha: float = ZIPF_ALPHA_DEFAULT
    concurrency: int = 64
    duration_s: float = 5.0
    warmup_s: float = 1.0
    seed: int = 0
    memcached: bool = True  # run the memcached rows when memcached and pymemcache are here
    rounds: int = ROUNDS_DEFAULT

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 16:
            raise ValueError("nodes must be in [1, 16]")
        if not 0.0 <= self.get_fraction <= 1.0:
            raise ValueError("get_fraction must be in [0, 1]")
        if not 1 <= self.batch_keys <= 1_000:
            raise ValueError("batch_keys must be in [1, 1000]")
        if not 1 <= self.rounds <= ROUNDS_MAX:
            raise ValueError(f"rounds must be in [1, {ROUNDS_MAX}]")

    def spec(self, name: str, **parameters: object) -> BenchSpec:
        return BenchSpec(
            name=name,
            concurrency=self.concurrency,
            duration_s=self.duration_s,
            warmup_s=self.warmup_s,
            parameters={
                "nodes": self.nodes,
                "keys": self.keys,
                "alpha": self.alpha,
                "value_bytes": self.value_bytes,
                "rounds": self.rounds,
                **parameters,
            },
        )


def run_cache_benchmarks(
    settings: CacheBenchSettings, progress: TextIO | None
) -> tuple[list[BenchResult], list[str]]:
    """The rows, and notes for the reader (such as why the memcached rows are missing)."""
    with tempfile.TemporaryDirectory(prefix="distlab-bench-cache-") as directory:
        nodes = [
            NodeProcess(
                name=f"cache{index + 1}",
                data_dir=Path(directory) / f"cache{index + 1}",
                log_path=Path(directory) / f"cache{index + 1}.log",
                arguments=[
                    "--capacity-mb",
                    str(settings.capacity_mb),
                    "--policy",
                    settings.policy,
                ],
                command=("cache", "node"),
            )
            for index in range(settings.nodes)
        ]
        try:
            start_all(nodes)
            results = eventloop.run(_rows(settings, [node.address for node in nodes], progress))
        finally:
            for node in nodes:
                node.terminate()
    notes: list[str] = []
    if settings.memcached:
        memcached_rows, why_not = _memcached_rows(settings, progress)
        results += memcached_rows
        if why_not:
            notes.append(why_not)
    return results, notes


def _key(rank: bytes) -> bytes:
    return b"bench:" + rank


def _sequences(settings: CacheBenchSettings) -> list[list[bytes]]:
    """One zipfian key sequence per worker, each from its own seed."""
    return [
        [
            _key(rank)
            for rank in zipf_trace(
                settings.keys, KEY_SEQUENCE_LENGTH, settings.alpha, settings.seed + worker
            )
        ]
        for worker in range(settings.concurrency)
    ]


async def _rows(
    settings: CacheBenchSettings, addresses: Sequence[str], progress: TextIO | None
) -> list[BenchResult]:
    from distlab.cache.client import CacheClient

    echo = EchoReference(len(addresses))
    sequences = _sequences(settings)
    value = b"v" * settings.value_bytes
    async with CacheClient(addresses, deadline_ms=int(CALL_DEADLINE_S * 1000)) as client:
        await _preload(client, settings, value)
        # Per row, over all its turns (warm-ups included: the hit ratio is the cache's).
        counts_of = {
            name: {"hits": 0, "misses": 0, "keys": 0, "batches": 0}
            for name in (GET_NAME, MIXED_NAME, MULTI_GET_NAME)
        }

        def make_get(worker: int) -> Operation:
            counts = counts_of[GET_NAME]
            keys, position = sequences[worker], [0]

            async def get() -> None:
                key = keys[position[0] % len(keys)]
                position[0] += 1
                counts["hits" if await client.get(key) is not None else "misses"] += 1

            return get

        def make_mixed(worker: int) -> Operation:
            counts = counts_of[MIXED_NAME]
            keys, position = sequences[worker], [0]
            chooser = random.Random(settings.seed * 7919 + worker)

            async def mixed() -> None:
                key = keys[position[0] % len(keys)]
                position[0] += 1
                if chooser.random() < settings.get_fraction:
                    counts["hits" if await client.get(key) is not None else "misses"] += 1
                else:
                    await client.set(key, value)

            return mixed

        def make_multi_get(worker: int) -> Operation:
            counts = counts_of[MULTI_GET_NAME]
            keys, position = sequences[worker], [0]

            async def multi_get() -> None:
                start = position[0] % (len(keys) - settings.batch_keys)
                position[0] += settings.batch_keys
                # A batch asks for distinct keys, as a page rendering them would.
                batch = list(dict.fromkeys(keys[start : start + settings.batch_keys]))
                found = await client.multi_get(batch)
                counts["keys"] += len(batch)
                counts["batches"] += 1
                counts["hits"] += len(found)

            return multi_get

        rows = [
            echo.row(settings.spec(ECHO_NAME, rpc=EchoReference.RPC)),
            Row(settings.spec(GET_NAME), make_get),
            Row(settings.spec(MIXED_NAME, get_fraction=settings.get_fraction), make_mixed),
            Row(settings.spec(MULTI_GET_NAME, batch_keys=settings.batch_keys), make_multi_get),
        ]
        echo_result, *measured = await run_interleaved(rows, settings.rounds, progress=progress)
    return [echo_result, *(_with_counters(result, counts_of[result.name]) for result in measured)]


async def _preload(client: Any, settings: CacheBenchSettings, value: bytes) -> None:
    """Every key, the coldest first: what overflows a node then evicts cold keys, as in a cache
    that has been serving this load (hot keys first would see LRU evict the hottest)."""
    ranks = iter(range(settings.keys, 0, -1))

    async def loader() -> None:
        for rank in ranks:
            await client.set(_key(f"k{rank}".encode()), value)

    await asyncio.gather(*(loader() for _ in range(PRELOAD_CONCURRENCY)))


def _with_counters(result: BenchResult, counts: dict[str, int]) -> BenchResult:
    """Hits and misses counted over the whole row, all its turns (warm-ups included: the hit
    ratio is the cache's, not the window's), and keys/s for a batched row."""
    counters: dict[str, int | float] = {}
    if counts["batches"]:
        keys_per_batch = counts["keys"] / counts["batches"]
        counters["keys_per_s"] = round(result.operations_per_s * keys_per_batch)
        counters["hit_ratio"] = round(counts["hits"] / counts["keys"], 4)
    elif lookups := counts["hits"] + counts["misses"]:
        counters["hit_ratio"] = round(counts["hits"] / lookups, 4)
    return dataclasses.replace(result, counters=counters)


# --- memcached through pymemcache, on threads --------------------------------------------------


def _memcached_rows(
    settings: CacheBenchSettings, progress: TextIO | None
) -> tuple[list[BenchResult], str]:
    binary = shutil.which("memcached")
    if binary is None:
        return [], "no memcached binary on this machine: its rows were skipped"
    try:
        from pymemcache.client.base import Client  # type: ignore[import-untyped]
    except ImportError:
        return [], "pymemcache is not installed (pip install 'distlab[bench]'): rows skipped"
    port = _free_port()
    # memcached refuses to run as root unless told which user to be.
    as_user = ["-u", "root"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", *as_user],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process)
        value = b"v" * settings.value_bytes
        loader = Client(("127.0.0.1", port), timeout=CALL_DEADLINE_S)
        for rank in range(settings.keys, 0, -1):
            loader.set(_key(f"k{rank}".encode()), value, noreply=False)
        loader.close()
        sequences = _sequences(settings)
        clients: list[Any] = []

        def connect() -> Any:
            client = Client(("127.0.0.1", port), timeout=CALL_DEADLINE_S)
            clients.append(client)
            return client

        def make_get(worker: int) -> Callable[[], int]:
            client = connect()
            keys, position = sequences[worker], [0]

            def get() -> int:
                key = keys[position[0] % len(keys)]
                position[0] += 1
                client.get(key)
                return 1

            return get

        def make_multi_get(worker: int) -> Callable[[], int]:
            client = connect()
            keys, position = sequences[worker], [0]

            def multi_get() -> int:
                start = position[0] % (len(keys) - settings.batch_keys)
                position[0] += settings.batch_keys
                batch = list(dict.fromkeys(keys[start : start + settings.batch_keys]))
                client.get_many(batch)
                return len(batch)

            return multi_get

        # One turn each, after the rest: their parameters say rounds=1.
        once = dataclasses.replace(settings, rounds=1)
        try:
            rows = [
                run_threaded(
                    once.spec(MEMCACHED_GET_NAME, client="pymemcache"), make_get, progress
                ),
                run_threaded(
                    once.spec(
                        MEMCACHED_MULTI_GET_NAME,
                        client="pymemcache",
                        batch_keys=settings.batch_keys,
                    ),
                    make_multi_get,
                    progress,
                ),
            ]
        finally:
            for client in clients:
                client.close()
        return rows, ""
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_threaded(
    spec: BenchSpec, make_call: Callable[[int], Callable[[], int]], progress: TextIO | None
) -> BenchResult:
    """The closed loop of ``run_benchmark`` on threads, for a blocking client: each worker is a
    thread calling its own callable again and again; a call completing inside the window is
    recorded. A callable returns how many keys it handled (the keys/s counter)."""
    calls = [make_call(index) for index in range(spec.concurrency)]
    histogram, errors, keys, lock = LatencyHistogram(), [0], [0], threading.Lock()
    start = time.perf_counter() + spec.warmup_s
    end = start + spec.duration_s

    def work(call: Callable[[], int]) -> None:
        while True:
            began = time.perf_counter()
            try:
                handled = call()
            except Exception:  # counted, as the asyncio runner counts errors
                handled = -1
            finished = time.perf_counter()
            if start <= finished < end:
                with lock:
                    if handled < 0:
                        errors[0] += 1
                    else:
                        histogram.record(round((finished - began) * 1e9))
                        keys[0] += handled
            if finished >= end:
                return

    threads = [threading.Thread(target=work, args=(call,), daemon=True) for call in calls]
    if progress is not None:
        print(f"{spec.name}: {spec.concurrency} threads for {spec.duration_s:g} s", file=progress)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result_of(
        spec,
        histogram,
        {"Exception": errors[0]} if errors[0] else {},
        counters={"keys_per_s": round(keys[0] / spec.duration_s)},
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + MEMCACHED_START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CacheBenchError(f"memcached exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise CacheBenchError(f"memcached not listening on {port} after {MEMCACHED_START_DEADLINE_S} s")


def summary_lines(results: Sequence[BenchResult], notes: Sequence[str]) -> list[str]:
    """The comparisons issue 7 sets targets for: unary gets against the echo's calls/s (0.8x),
    and multi-get keys/s against memcached's through pymemcache (0.5x)."""
    by_name = {result.name: result for result in results}
    lines = list(notes)
    echo = by_name.get(ECHO_NAME)
    for name in (GET_NAME, MIXED_NAME):
        row = by_name.get(name)
        if echo and row and echo.operations_per_s:
            lines.append(
                f"{name}: {row.operations_per_s / echo.operations_per_s:.3f}x the echo's calls/s "
                f"({row.operations_per_s:,.0f} of {echo.operations_per_s:,.0f})"
                + (
                    f", hit ratio {row.counters['hit_ratio']:.3f}"
                    if "hit_ratio" in row.counters
                    else ""
                )
            )
    for ours, theirs, what in [
        (MULTI_GET_NAME, MEMCACHED_MULTI_GET_NAME, "keys_per_s"),
        (GET_NAME, MEMCACHED_GET_NAME, None),
    ]:
        row, reference = by_name.get(ours), by_name.get(theirs)
        if row is None or reference is None:
            continue
        mine = float(row.counters[what]) if what else row.operations_per_s
        other = float(reference.counters[what]) if what else reference.operations_per_s
        unit = "keys/s" if what else "calls/s"
        if other:
            lines.append(
                f"{ours}: {mine / other:.3f}x memcached's {unit} through pymemcache "
                f"({mine:,.0f} of {other:,.0f})"
            )
    return lines
