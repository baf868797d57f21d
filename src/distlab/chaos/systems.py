"""The systems the chaos harness can test, each a plug-in of four parts.

A system tells the harness (``distlab.chaos.runner``) how to start its nodes
(``node_arguments``), runs its workload against them (``run_workload``), makes its final
observations once every fault is healed (``finish``) and judges the history (``check``). This
is Maelstrom's split of a workload into a client contract and a checker. The key-value store is
the first; the Raft register and the cache cluster plug in the same way, and the queue and the
job scheduler will when they are built.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from distlab.chaos.checkers import CheckResult
from distlab.chaos.cluster import ChaosCluster
from distlab.chaos.history import HistoryRecorder, Op
from distlab.chaos.nemesis import FaultKind, PartitionShape


@dataclass(frozen=True, slots=True)
class SystemConfig:
    """What the user chose for the system under test (the run's ``--replicas`` and so on)."""

    nodes: int = 3
    replicas: int = 3
    r: int = 2
    w: int = 2
    strict_quorum: bool = True
    fsync: str = "always"
    node_args: tuple[str, ...] = ()  # passed to every node as they are
    require: tuple[str, ...] = ()
    informative: tuple[str, ...] = ()
    rate: float = 100.0
    concurrency: int = 10
    converge_wait_s: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


# After healing, the failure detectors must see every node again before the final reads, or a
# read at R=N is refused; a restarted node takes a few seconds on a busy machine.
SETTLE_S_MAX = 30.0
SETTLE_POLL_S = 0.2


async def poll_views(
    cluster: ChaosCluster,
    view_of: Callable[[str], Awaitable[str]],
    agree: Callable[[dict[str, str]], bool],
) -> dict[str, Any]:
    """Ask every node for its view of the cluster until the views agree or SETTLE_S_MAX passes:
    {"settled", "settle_s", "views"}, the views kept for the report when they never agree."""
    import grpc.aio

    loop = asyncio.get_running_loop()
    started = loop.time()
    views: dict[str, str] = {}
    while True:
        for name in cluster.names:
            try:
                views[name] = await view_of(cluster.address(name))
            except grpc.aio.AioRpcError as error:
                views[name] = f"error {error.code().name}"
        settled = agree(views)
        elapsed_s = round(loop.time() - started, 1)
        if settled or elapsed_s > SETTLE_S_MAX:
            return {"settled": settled, "settle_s": elapsed_s, "views": views}
        await asyncio.sleep(SETTLE_POLL_S)


class ChaosSystem(Protocol):
    name: str
    command: tuple[str, ...]  # the distlab subcommand that runs one node
    fault_kinds: frozenset[FaultKind]  # the faults that mean something to it
    partition_shapes: tuple[PartitionShape, ...] | None  # None: every node-to-node shape
    peer_flags: bool  # whether its nodes take the harness's peer routes, seeds and injection

    def node_arguments(self, config: SystemConfig, seed: int, index: int) -> list[str]: ...

    def workload_options(self, config: SystemConfig, duration_s: float, seed: int) -> Any:
        """The workload's options from the run's (``extra["workload"]`` overrides them);
        raises TypeError or ValueError for an unknown or bad one."""
        ...

    async def run_workload(
        self,
        cluster: ChaosCluster,
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        config: SystemConfig,
        duration_s: float,
        seed: int,
    ) -> None: ...

    async def settle(self, cluster: ChaosCluster) -> dict[str, Any]: ...

    async def finish(
        self,
        cluster: ChaosCluster,
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        config: SystemConfig,
    ) -> dict[str, Any]: ...

    def check(self, ops: Sequence[Op], config: SystemConfig) -> list[CheckResult]: ...


class KvSystem:
    """The Dynamo-style store (``distlab.kvstore``)."""

    name = "kv"
    command: tuple[str, ...] = ("node",)
    fault_kinds: frozenset[FaultKind] = frozenset(FaultKind)
    partition_shapes: tuple[PartitionShape, ...] | None = None
    peer_flags: bool = True

    def __init__(self) -> None:
        self._workload: Any = None

    def node_arguments(self, config: SystemConfig, seed: int, index: int) -> list[str]:
        arguments = [
            "--replicas", str(config.replicas),
            "--r", str(config.r),
            "--w", str(config.w),
            "--fsync", config.fsync,
            "--rng-seed", str(seed * 1000 + index),
            # Fast gossip and failure detection, so a run of seconds sees faults and recovery.
            "--gossip-interval-ms", "100",
            "--failure-timeout-ms", "1500",
            "--anti-entropy-interval-ms", "1000",
        ]  # fmt: skip
        if config.strict_quorum:
            arguments.append("--strict-quorum")
        return [*arguments, *config.node_args]

    async def run_workload(
        self,
        cluster: ChaosCluster,
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        config: SystemConfig,
        duration_s: float,
        seed: int,
    ) -> None:
        from distlab.kvstore.workload import KvWorkload

        options = self.workload_options(config, duration_s, seed)
        self._workload = KvWorkload(cluster.client_addresses(), recorder, now_ns, options)
        await self._workload.run()

    def workload_options(self, config: SystemConfig, duration_s: float, seed: int) -> Any:
        from distlab.kvstore.workload import KvWorkloadOptions

        return _workload_options(KvWorkloadOptions, config, duration_s, seed)

    async def settle(self, cluster: ChaosCluster) -> dict[str, Any]:
        """Wait until every node serves and sees every other alive (its Ring view), so that
        the final reads at R=N are not refused; report the views if they never agree."""
        import grpc.aio

        from distlab.proto import kvstore_pb2, kvstore_pb2_grpc

        async def view_of(address: str) -> str:
            async with grpc.aio.insecure_channel(address) as channel:
                ring = await kvstore_pb2_grpc.KeyValueStub(channel).Ring(
                    kvstore_pb2.RingRequest(), timeout=2.0
                )
            return " ".join(
                f"{member.node_id}:{'up' if member.alive else 'down'}"
                for member in sorted(ring.members, key=lambda member: member.node_id)
            )

        def agree(views: dict[str, str]) -> bool:
            return all(view.count(":up") == len(cluster.names) for view in views.values())

        return await poll_views(cluster, view_of, agree)

    async def finish(
        self,
        cluster: ChaosCluster,
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        config: SystemConfig,
    ) -> dict[str, Any]:
        from distlab.kvstore.workload import observe_replicas

        workload = self._workload
        if workload is None:
            return {}
        try:
            unread = await workload.final_reads(config.replicas)
            diverged = await observe_replicas(
                {name: cluster.address(name) for name in cluster.names},
                sorted(workload.keys),
                config.replicas,
                recorder,
                now_ns,
                wait_s=config.converge_wait_s,
            )
        finally:
            await workload.close()
        return {"keys": len(workload.keys), "unread_keys": unread, "diverged_keys": diverged}

    def check(self, ops: Sequence[Op], config: SystemConfig) -> list[CheckResult]:
        from distlab.kvstore.checker import KvCheckConfig, check

        return check(
            ops,
            KvCheckConfig(
                replicas=config.replicas,
                r=config.r,
                w=config.w,
                strict_quorum=config.strict_quorum,
                require=frozenset(config.require),
                informative=frozenset(config.informative),
                tombstone_grace_ms=_flag_value(config.node_args, "--tombstone-grace-ms"),
            ),
        )


def _workload_options(
    options_class: Callable[..., Any], config: SystemConfig, duration_s: float, seed: int
) -> Any:
    """A workload's options: the run's rate, concurrency, duration and seed, and whatever the
    run set in ``extra["workload"]`` (``--workload-option``)."""
    return options_class(
        duration_s=duration_s,
        rate=config.rate,
        concurrency=config.concurrency,
        seed=seed,
        **config.extra.get("workload", {}),
    )


def _flag_value(arguments: Sequence[str], flag: str) -> int | None:
    """The integer after ``flag`` (or in ``flag=N``) among node arguments, if given."""
    for index, argument in enumerate(arguments):
        if argument == flag and index + 1 < len(arguments):
            return int(arguments[index + 1])
        if argument.startswith(flag + "="):
            return int(argument.split("=", 1)[1])
    return None


class RaftSystem:
    """The linearizable register on Raft (``distlab.raft``): its history must be linearizable
    on every key, whatever the faults."""

    name = "raft"
    command: tuple[str, ...] = ("raft", "node")
    fault_kinds: frozenset[FaultKind] = frozenset(FaultKind)
    partition_shapes: tuple[PartitionShape, ...] | None = None
    peer_flags: bool = True

    def __init__(self) -> None:
        self._workload: Any = None

    def node_arguments(self, config: SystemConfig, seed: int, index: int) -> list[str]:
        return [
            "--peers", "{peers}",
            "--fsync", config.fsync,
            "--rng-seed", str(seed * 1000 + index),
            *config.node_args,
        ]  # fmt: skip

    async def run_workload(
        self,
        cluster: ChaosCluster,
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        config: SystemConfig,
        duration_s: float,
        seed: int,
    ) -> None:
        from distlab.raft.workload import RaftWorkload

        addresses = cluster.client_addresses()
        options = self.workload_options(config, duration_s, seed)
        self._workload = RaftWorkload(
            addresses,
            {
                cluster.address(name): address
                for name, address in zip(cluster.names, addresses, strict=True)
            },
            recorder,
            now_ns,
            options,
        )
        await self._workload.run()

    def workload_options(self, config: SystemConfig, duration_s: float, seed: int) -> Any:
        from distlab.raft.workload import RaftWorkloadOptions

        return _workload_options(RaftWorkloadOptions, config, duration_s, seed)

    async def settle(self, cluster: ChaosCluster) -> dict[str, Any]:
        """Wait until every node names the same leader."""
        import grpc.aio

        from distlab.proto import raft_pb2, raft_pb2_grpc

        async def view_of(address: str) -> str:
            async with grpc.aio.insecure_channel(address) as channel:
                status = await raft_pb2_grpc.RaftKeyValueStub(channel).Status(
                    raft_pb2.RaftStatusRequest(), timeout=2.0
                )
            return f"{status.role} term {status.term} leader {status.leader}"

        def agree(views: dict[str, str]) -> bool:
            leaders = {view.rsplit(" ", 1)[-1] for view in views.values()}
            return len(leaders) == 1 and "" not in leaders and "error" not in str(views)

        return await poll_views(cluster, view_of, agree)

    async def finish(
        self,
        cluster: ChaosCluster,
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        config: SystemConfig,
    ) -> dict[str, Any]:
        if self._workload is not None:
            await self._workload.close()
        return {}

    def check(self, ops: Sequence[Op], config: SystemConfig) -> list[CheckResult]:
        from distlab.chaos import checkers
        from distlab.chaos.history import pair

        informative = "linearizability" in config.informative
        return [checkers.linearizability(pair(ops), required=not informative)]


class CacheSystem:
    """The cache cluster (``distlab.cache``) in front of a backing store, cache-aside: no value
    never written, no stale value once an invalidation has settled, no failed read.

    Cache nodes do not talk to each other, so the faults that mean something are the ones
    between the clients and a node: kill (it comes back empty), pause, a cut from the clients
    and latency."""

    name = "cache"
    command: tuple[str, ...] = ("cache", "node")
    fault_kinds: frozenset[FaultKind] = frozenset(
        {FaultKind.KILL, FaultKind.PAUSE, FaultKind.PARTITION, FaultKind.LATENCY}
    )
    partition_shapes: tuple[PartitionShape, ...] | None = (PartitionShape.CLIENTS,)
    peer_flags: bool = False
    # Room for the scheduling delays of a busy 2-core machine and the harness's latency faults,
    # on top of the leftovers the workload's options bound.
    GRACE_MARGIN_MS = 500

    def __init__(self) -> None:
        self._workload: Any = None

    def workload_options(self, config: SystemConfig, duration_s: float = 1.0, seed: int = 0) -> Any:
        from distlab.cache.workload import CacheWorkloadOptions

        return _workload_options(CacheWorkloadOptions, config, duration_s, seed)

    def node_arguments(self, config: SystemConfig, seed: int, index: int) -> list[str]:
        options = self.workload_options(config)
        return [
            "--lease-ms", str(options.lease_ms),
            "--stale-ms", str(options.stale_ms),
            *config.node_args,
        ]  # fmt: skip

    async def run_workload(
        self,
        cluster: ChaosCluster,
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        config: SystemConfig,
        duration_s: float,
        seed: int,
    ) -> None:
        from distlab.cache.workload import CacheWorkload

        options = self.workload_options(config, duration_s, seed)
        self._workload = CacheWorkload(cluster.client_addresses(), recorder, now_ns, options)
        await self._workload.run()

    async def settle(self, cluster: ChaosCluster) -> dict[str, Any]:
        """Wait until every node answers."""
        import grpc.aio

        from distlab.proto import cache_pb2, cache_pb2_grpc

        async def view_of(address: str) -> str:
            async with grpc.aio.insecure_channel(address) as channel:
                stats = await cache_pb2_grpc.CacheStub(channel).Stats(
                    cache_pb2.CacheStatsRequest(), timeout=2.0
                )
            return f"serving {stats.items} items"

        def agree(views: dict[str, str]) -> bool:
            return all(view.startswith("serving") for view in views.values())

        return await poll_views(cluster, view_of, agree)

    async def finish(
        self,
        cluster: ChaosCluster,
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        config: SystemConfig,
    ) -> dict[str, Any]:
        if self._workload is None:
            return {}
        await self._workload.close()
        summary: dict[str, Any] = self._workload.summary()
        return summary

    def check(self, ops: Sequence[Op], config: SystemConfig) -> list[CheckResult]:
        from distlab.cache.checker import CacheCheckConfig, check

        grace_ms = self.workload_options(config).grace_ms(self.GRACE_MARGIN_MS)
        return check(
            ops,
            CacheCheckConfig(
                grace_ms=grace_ms,
                require=frozenset(config.require),
                informative=frozenset(config.informative),
            ),
        )


SYSTEMS: dict[str, Callable[[], ChaosSystem]] = {
    "kv": KvSystem,
    "raft": RaftSystem,
    "cache": CacheSystem,
}
