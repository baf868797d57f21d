"""``distlab bench raft``: linearizable puts and gets per second on a local Raft group, next to a
bare gRPC echo measured the same way (issue 6).

Rows, in order: ``echo`` (the health service's Check on an in-process grpc.aio server, as in
``distlab bench kv``), ``put`` (a put of a ``value_bytes`` value to a key chosen uniformly out of
``keys``: answered once the entry is committed by a majority, each of which fsynced it, and
applied by the leader) and ``get`` (a ReadIndex read of such a key: answered once a heartbeat
round confirms the leader and the read index is applied). Clients talk to the leader; every
worker shares one channel to it, and the echo gets one channel too.

The rows take turns, ``rounds`` times each (``run_interleaved``), so that a drift in this
machine's speed reaches the echo and the Raft rows alike and their ratio holds.

Puts are batched by the node's driver: proposals that arrive while an fsync runs go into the
next Ready together, so one append message and one fsync per follower carry many entries.

The group is local: ``nodes`` ``distlab raft node`` processes on loopback, data in a temporary
directory, always stopped and removed. They share this machine's cores with the benchmark's
clients and the echo's server, so the figures are those of the whole arrangement.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from distlab.bench.kv import ECHO_NAME, EchoReference
from distlab.bench.runner import (
    ROUNDS_DEFAULT,
    ROUNDS_MAX,
    BenchResult,
    BenchSpec,
    Operation,
    Row,
    run_interleaved,
)
from distlab.common import eventloop
from distlab.common.processes import NodeProcess, start_all
from distlab.common.wal_file import FsyncPolicy

BENCHMARK_NAME = "raft"
PUT_NAME = "put"
GET_NAME = "get"
NODES_DEFAULT = 3
KEYS_DEFAULT = 10_000
VALUE_BYTES_DEFAULT = 100
CALL_DEADLINE_S = 10.0
LEADER_DEADLINE_S = 30.0


class RaftBenchError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class RaftBenchSettings:
    nodes: int = NODES_DEFAULT
    fsync_policy: FsyncPolicy = FsyncPolicy.ALWAYS
    keys: int = KEYS_DEFAULT
    value_bytes: int = VALUE_BYTES_DEFAULT
    concurrency: int = 64
    duration_s: float = 5.0
    warmup_s: float = 1.0
    seed: int = 0
    rounds: int = ROUNDS_DEFAULT
    async_writes: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 7:
            raise ValueError("nodes must be in [1, 7]")
        if self.keys < 1 or self.value_bytes < 0:
            raise ValueError("keys must be >= 1 and value_bytes >= 0")
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
                "fsync": self.fsync_policy.value,
                "value_bytes": self.value_bytes,
                "keys": self.keys,
                "rounds": self.rounds,
                **({"async_writes": True} if self.async_writes else {}),
                **parameters,
            },
        )


def run_raft_benchmarks(settings: RaftBenchSettings, progress: TextIO | None) -> list[BenchResult]:
    from distlab.chaos.cluster import reserve_ports

    with tempfile.TemporaryDirectory(prefix="distlab-bench-raft-") as directory:
        ports = reserve_ports(settings.nodes)
        peers = ",".join(f"n{index + 1}=127.0.0.1:{port}" for index, port in enumerate(ports))
        nodes = [
            NodeProcess(
                name=f"n{index + 1}",
                data_dir=Path(directory) / f"n{index + 1}",
                log_path=Path(directory) / f"n{index + 1}.log",
                arguments=[
                    "--peers",
                    peers,
                    "--fsync",
                    settings.fsync_policy.value,
                    *(["--async-writes"] if settings.async_writes else []),
                ],
                port=port,
                command=("raft", "node"),
            )
            for index, port in enumerate(ports)
        ]
        try:
            start_all(nodes)
            return eventloop.run(_rows(settings, nodes, progress))
        finally:
            for node in nodes:
                node.terminate()


async def _leader(nodes: Sequence[NodeProcess]) -> str:
    import grpc.aio

    from distlab.proto import raft_pb2, raft_pb2_grpc

    deadline = time.monotonic() + LEADER_DEADLINE_S
    while time.monotonic() < deadline:
        for node in nodes:
            async with grpc.aio.insecure_channel(node.address) as channel:
                try:
                    status = await raft_pb2_grpc.RaftKeyValueStub(channel).Status(
                        raft_pb2.RaftStatusRequest(), timeout=2
                    )
                except grpc.aio.AioRpcError:
                    continue
            if status.role == "leader":
                return node.address
        await asyncio.sleep(0.1)
    raise RaftBenchError(f"no leader elected within {LEADER_DEADLINE_S:.0f} s")


async def _rows(
    settings: RaftBenchSettings, nodes: Sequence[NodeProcess], progress: TextIO | None
) -> list[BenchResult]:
    import grpc.aio

    from distlab.proto import raft_pb2, raft_pb2_grpc

    leader = await _leader(nodes)
    echo = EchoReference(1)
    keys = [f"bench/{index}".encode() for index in range(settings.keys)]
    async with grpc.aio.insecure_channel(leader) as channel:
        stub = raft_pb2_grpc.RaftKeyValueStub(channel)

        def make_put(worker_index: int) -> Operation:
            chooser = random.Random(settings.seed + worker_index)
            value = bytes([worker_index % 256]) * settings.value_bytes

            async def put() -> None:
                await stub.Put(
                    raft_pb2.RaftPutRequest(key=chooser.choice(keys), value=value),
                    timeout=CALL_DEADLINE_S,
                )

            return put

        def make_get(worker_index: int) -> Operation:
            chooser = random.Random(settings.seed + worker_index)

            async def get() -> None:
                await stub.Get(
                    raft_pb2.RaftGetRequest(key=chooser.choice(keys)), timeout=CALL_DEADLINE_S
                )

            return get

        return await run_interleaved(
            [
                echo.row(settings.spec(ECHO_NAME, rpc=EchoReference.RPC)),
                Row(settings.spec(PUT_NAME), make_put),
                Row(settings.spec(GET_NAME), make_get),
            ],
            settings.rounds,
            progress=progress,
        )
