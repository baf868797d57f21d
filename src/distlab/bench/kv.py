"""``distlab bench kv``: operations per second and latency of the replicated key-value store, end
to end through gRPC, next to a bare gRPC echo measured the same way.

What it measures
----------------
Three workloads against the Dynamo-style store (``distlab.kvstore``), one row each:

* ``put``: a blind put (no context, so no read before it) of a ``--value-bytes`` value to a key
  chosen uniformly out of ``--keys``. The client is answered once W replicas hold the value
  durably (Dynamo 4.5; with ``fsync=always`` each of those W writes waited for an fsync, shared by
  group commit).
* ``get``: a get of a key chosen the same way, after an untimed preload that wrote every key once,
  so every get finds its key. The client is answered once R replicas replied.
* ``mixed``: on keys of its own, preloaded the same way, each operation a get with probability
  ``--read-fraction``, a blind put otherwise (its own keys, so that its blind puts do not pile
  siblings onto the keys the ``get`` row reads).

And one reference row:

* ``echo``: a unary call of the standard health service (``grpc.health.v1.Health/Check``) on a
  bare ``grpc.aio`` server started in this process: no interceptors, no storage, no peers. Every
  key-value row is then also given as a ratio of the echo's operations per second. A put costs
  a gRPC call plus the coordinator's work, the calls to the other replicas and their fsyncs; the
  echo costs the gRPC call alone. The ratio says how much of the cost is the store rather than
  gRPC: a ratio near 1 would mean the store is nearly free next to its transport; a small one
  that the quorum, the fsync or the Python around them dominate.

The rows take turns (``runner.run_interleaved``): echo, put, get, mixed, ``--rounds`` times, each
turn a ``--rounds``-th of ``--duration`` and ``--warmup``, so that a drift in this machine's speed
reaches every row alike and the ratios to the echo hold. The preloads run once, before the first
turn.

Workers are spread over the nodes: one ``KeyValueClient`` per node, shared by the workers assigned
to it round-robin (a grpc.aio channel multiplexes concurrent calls, so a channel per worker would
add connections, not throughput). Each client lists every node, its own first: it sends to its own
node and moves to the next only after an error. The echo gets the same number of connections.
Key choices come from ``random.Random(seed + worker)``.

The cluster: by default a local one, ``--nodes`` ``distlab node`` processes on kernel-chosen
loopback ports with their data in a temporary directory, started as the integration tests start
theirs (the first without seeds, the others seeded with the first), waited for until every node
sees every node alive, and always stopped (SIGTERM, then SIGKILL past a deadline) and removed,
however the run ends. Or an existing cluster named by ``--to``, which is only checked for
reachability: its N, R, W and fsync policy are whatever it was started with.

How to read the figures
-----------------------
Each row is a closed loop (see ``distlab.bench.runner``): ``concurrency`` workers each send the
next call as soon as the previous one returns, so a slow call delays the calls behind it instead
of being measured against a schedule, and the percentiles understate what an open-loop client
would see under the same load (coordinated omission; ``histogram.py`` explains why that is
acceptable here). Operations per second is what the system sustains at that concurrency.

A local cluster shares this machine with the benchmark: the node processes, this process's
clients, and the echo's server all compete for the same cores, and the echo's server shares this
process's event loop with its clients. On a machine with few cores the figures are those of the
whole arrangement, not of a node alone; use ``--to`` with nodes elsewhere to separate them.

Blind puts create siblings. A put without a context is concurrent with every version already
stored (Dynamo 4.4), so each blind put to an existing key adds a sibling instead of replacing the
value, until ``versioning.SIBLINGS_MAX`` refuses further puts to that key (a definite error,
counted). Keys are therefore namespaced per run (a random run id) and the ``put`` row writes to a
key space of its own, so that ``get`` reads keys holding exactly the preloaded value; the
``mixed`` row's puts do add siblings to the keys it reads. The ``get`` and ``mixed`` rows count
the siblings their gets returned (``siblings_per_get``, ``siblings_max``; the whole run, warm-up
included), because a get returning several values also costs more.

What it leaves out: deletes, read-modify-write (``update``), skewed (Zipfian) key choices, and
failures: this is the healthy cluster's figure; the chaos harness measures the rest.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from distlab.bench import runner
from distlab.bench.runner import (
    ROUNDS_DEFAULT,
    ROUNDS_MAX,
    WARMUP_S_MAX,
    BenchResult,
    BenchSpec,
    Operation,
    Row,
    run_interleaved,
    throughput_ratio,
)
from distlab.common import errors, eventloop
from distlab.common.errors import DistlabError, ErrorKind
from distlab.common.limits import CLIENT_DEADLINE_MS_DEFAULT, CONCURRENT_RPCS_MAX_DEFAULT
from distlab.common.processes import NodeProcess, NodeStartError
from distlab.common.wal_file import FsyncPolicy
from distlab.kvstore.versioning import SIBLINGS_MAX

if TYPE_CHECKING:
    # grpc is imported where it is used: ``distlab --help`` builds this command's parser from the
    # constants below and should not pay for loading grpc.
    import grpc.aio

    from distlab.kvstore.client import KeyValueClient, RingMember

BENCHMARK_NAME = "kv"
ECHO_NAME = "echo"
PUT_NAME = "put"
GET_NAME = "get"
MIXED_NAME = "mixed"

NODES_DEFAULT = 3
FSYNC_POLICY_DEFAULT = FsyncPolicy.ALWAYS
KEYS_DEFAULT = 10_000
VALUE_BYTES_DEFAULT = 100
"""About the size of a small record: a short value, as in the ``wal`` benchmark."""
READ_FRACTION_DEFAULT = 0.9
"""Read-heavy, as most key-value traffic is (YCSB's read-mostly workload B is 95/5)."""
CONCURRENCY_DEFAULT = 64
DURATION_S_DEFAULT = 10.0
WARMUP_S_DEFAULT = 2.0
SEED_DEFAULT = 0

REPLICAS_DEFAULT = 3
"""N of a local cluster (Dynamo's usual N=3, R=2, W=2); smaller when there are fewer nodes."""

NODES_MAX = 9
"""Every node is a whole Python process with its own interpreter and event loop. Past a handful
on one machine the nodes mostly measure their competition for its cores; a bigger cluster is
measured with ``--to``."""

TARGETS_MAX = 32
"""One client (one connection) per target. A single benchmark process spreading its load over
more nodes than this is the bottleneck itself; run several instead."""

CONCURRENCY_MAX = CONCURRENT_RPCS_MAX_DEFAULT
"""256. A node admits 256 concurrent calls by default and sheds the rest (RESOURCE_EXHAUSTED),
and a client's put becomes three or four calls across the cluster (a forward to the first owner,
the writes to the other replicas). Past 256 workers a small cluster starts shedding, and the
figure is that of admission control, not of the store. Below the runner's own limit."""
assert CONCURRENCY_MAX <= runner.CONCURRENCY_MAX

KEYS_MAX = 100_000
"""The preload writes every key once, untimed, at the put rate: at the 600 to 700 puts/s of a
local cluster on a 2-core machine, 100 000 keys already take two and a half minutes before the
``get`` row starts."""

VALUE_BYTES_MAX = 64 * 1024
"""Past a few tens of KiB a put measures copying bytes through loopback and the WAL, not the cost
of an operation; and every blind put keeps its value as a sibling (see the module docstring)."""

DATA_SET_BYTES_MAX = 4 * 1024 * 1024
"""``keys`` x ``value_bytes``. The nodes keep every value in memory (their memtables), N copies,
all on this machine for a local cluster, in two key spaces (``put``'s and the preloaded one). Blind
puts can grow a key to SIBLINGS_MAX values, so the worst case is 2 x 64 x N x this: 1.5 GiB at
N=3, which a development machine survives. The defaults use 1 MB."""

DURATION_S_MAX = 600.0
"""Per workload. Four workloads run one after the other, so ten minutes each is already a 40
minute run; longer is a soak test, which belongs to the chaos harness."""
assert DURATION_S_MAX <= runner.DURATION_S_MAX

CONVERGE_DEADLINE_S = 30.0
"""How long a fresh local cluster may take until every node sees every other alive. Gossip at
GOSSIP_INTERVAL_MS converges in about a second; the rest is for a busy machine."""

CONVERGE_POLL_INTERVAL_S = 0.1

GOSSIP_INTERVAL_MS = 100
"""Five times the node's default rate, so the local cluster converges in about a second instead
of several; a gossip round is one small call per node, negligible next to the workload."""

FAILURE_TIMEOUT_MS = 5_000
"""The node's default, deliberately not the integration tests' 1 s: under a benchmark's load on a
small machine an event loop can stall for hundreds of milliseconds, and a peer wrongly suspected
dead turns puts into sloppy-quorum fallbacks and hints, which is not the healthy path measured."""

PRELOAD_ERRORS_MAX = 100
"""A healthy cluster fails no preload put. Past a hundred failures it is not healthy, and with
each failure waiting up to the client's deadline the preload would drag on for minutes: stop."""

DEADLINE_MS = CLIENT_DEADLINE_MS_DEFAULT
"""Every call's deadline, the clients' default (5 s); the echo uses the same."""


class KvBenchError(Exception):
    """The benchmark could not run: a node did not start, the cluster did not converge, a target
    is unreachable, or the preload failed. Failures of single operations are counted instead."""


class KeyValueOperationError(Exception):
    """A failed key-value call, re-raised under a type named after its error kind.

    The runner counts errors by exception type, and every failure of ``KeyValueClient`` is a
    ``DistlabError``; re-raising each as a subclass named after its kind (``not_found``,
    ``write_quorum_not_reached``...) makes the table say which failures happened.
    """

    kind: ErrorKind


_ERROR_TYPES: dict[str, type[KeyValueOperationError]] = {}
"""The classes made so far, by kind code. Bounded: the error table's kinds plus gRPC's 17 status
codes (what ``error_from_rpc`` falls back to)."""


def error_type(kind: ErrorKind) -> type[KeyValueOperationError]:
    """``distlab.bench.kv.<kind code>``, made on first use."""
    existing = _ERROR_TYPES.get(kind.code)
    if existing is not None:
        return existing
    created = type(kind.code, (KeyValueOperationError,), {"__module__": __name__, "kind": kind})
    made = cast("type[KeyValueOperationError]", created)
    _ERROR_TYPES[kind.code] = made
    return made


def kind_of_error_name(name: str) -> ErrorKind | None:
    """The kind behind an error name the runner counted, if it is one of ours."""
    module, _, code = name.rpartition(".")
    if module != __name__ or code not in _ERROR_TYPES:
        return None
    return _ERROR_TYPES[code].kind


@dataclass(frozen=True, slots=True)
class KvBenchSettings:
    targets: tuple[str, ...] = ()
    """Nodes of an existing cluster; empty to start a local one."""
    nodes: int = NODES_DEFAULT
    fsync_policy: FsyncPolicy = FSYNC_POLICY_DEFAULT
    directory: Path | None = None
    """Where the local cluster's temporary directory goes; None for the system's temporary
    directory. The figures are those of its file system: tmpfs makes fsync free."""
    keys: int = KEYS_DEFAULT
    value_bytes: int = VALUE_BYTES_DEFAULT
    read_fraction: float = READ_FRACTION_DEFAULT
    concurrency: int = CONCURRENCY_DEFAULT
    duration_s: float = DURATION_S_DEFAULT
    warmup_s: float = WARMUP_S_DEFAULT
    seed: int = SEED_DEFAULT
    rounds: int = ROUNDS_DEFAULT

    def __post_init__(self) -> None:
        if len(self.targets) > TARGETS_MAX:
            raise ValueError(f"at most {TARGETS_MAX} targets")
        if not 1 <= self.nodes <= NODES_MAX:
            raise ValueError(f"nodes must be 1..{NODES_MAX}, not {self.nodes}")
        if not 1 <= self.keys <= KEYS_MAX:
            raise ValueError(f"keys must be 1..{KEYS_MAX}, not {self.keys}")
        if not 1 <= self.value_bytes <= VALUE_BYTES_MAX:
            raise ValueError(f"value must be 1..{VALUE_BYTES_MAX} bytes, not {self.value_bytes}")
        if self.keys * self.value_bytes > DATA_SET_BYTES_MAX:
            raise ValueError(
                f"keys x value bytes is {self.keys * self.value_bytes}, over "
                f"{DATA_SET_BYTES_MAX} bytes: use fewer keys or smaller values"
            )
        # The negated comparisons also reject NaN.
        if not 0 <= self.read_fraction <= 1:
            raise ValueError(f"read fraction must be in [0, 1], not {self.read_fraction}")
        if not 1 <= self.concurrency <= CONCURRENCY_MAX:
            raise ValueError(f"concurrency must be 1..{CONCURRENCY_MAX}, not {self.concurrency}")
        if not 0 < self.duration_s <= DURATION_S_MAX:
            raise ValueError(f"duration must be in (0, {DURATION_S_MAX}] s, not {self.duration_s}")
        if not 0 <= self.warmup_s <= WARMUP_S_MAX:
            raise ValueError(f"warm-up must be in [0, {WARMUP_S_MAX}] s, not {self.warmup_s}")
        if not 1 <= self.rounds <= ROUNDS_MAX:
            raise ValueError(f"rounds must be 1..{ROUNDS_MAX}, not {self.rounds}")

    @property
    def local(self) -> bool:
        return not self.targets

    @property
    def replicas(self) -> int:
        """N of the local cluster."""
        return min(REPLICAS_DEFAULT, self.nodes)

    @property
    def quorum(self) -> int:
        """R and W of the local cluster: a majority of N, so that R + W > N."""
        return self.replicas // 2 + 1


@dataclass(frozen=True, slots=True)
class StartedNode:
    """A local node as it ran: what to look for afterwards to check that it is gone."""

    name: str
    address: str
    pid: int


@dataclass(frozen=True, slots=True)
class KvBenchOutcome:
    """The rows (echo, put, get, mixed), the local nodes that ran them (every one stopped by the
    time this is returned; empty with ``--to``), and warnings for the reader."""

    results: tuple[BenchResult, ...]
    nodes: tuple[StartedNode, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeySpace:
    """``count`` keys under one prefix: ``bench/<run id>/<name>/<index>``."""

    prefix: str
    count: int
    keys: tuple[bytes, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Built once: the workers pick among them on every operation.
        keys = tuple(f"{self.prefix}/{index:06d}".encode() for index in range(self.count))
        object.__setattr__(self, "keys", keys)


@dataclass(slots=True)
class GetStatistics:
    """Siblings returned by gets, over the whole run. asyncio runs the workers on one thread, so
    plain counters need no lock."""

    gets: int = 0
    siblings_total: int = 0
    siblings_max: int = 0

    def record(self, siblings: int) -> None:
        self.gets += 1
        self.siblings_total += siblings
        self.siblings_max = max(self.siblings_max, siblings)

    def counters(self) -> dict[str, int | float]:
        if not self.gets:
            return {}
        return {
            "siblings_per_get": self.siblings_total / self.gets,
            "siblings_max": self.siblings_max,
        }


def run_kv_benchmarks(settings: KvBenchSettings, *, progress: TextIO | None) -> KvBenchOutcome:
    """Start the local cluster (unless ``settings.targets``), run every row, stop the cluster.

    Synchronous on purpose: starting and stopping processes blocks, and doing it outside the event
    loop puts the ``finally`` that stops the nodes where nothing (not even Ctrl-C cancelling the
    loop) can skip it. Raises ``KvBenchError`` when the benchmark cannot run.
    """
    if not settings.local:
        results = eventloop.run(_run_rows(settings, list(settings.targets), (), progress))
        return KvBenchOutcome(tuple(results))
    with tempfile.TemporaryDirectory(
        prefix="distlab-bench-kv-", dir=settings.directory
    ) as directory:
        nodes = _local_nodes(settings, Path(directory))
        try:
            _start(nodes, progress)
            started = tuple(
                StartedNode(node.name, node.address, node.pid)
                for node in nodes
                if node.pid is not None
            )
            names = tuple(node.name for node in nodes)
            addresses = [node.address for node in nodes]
            results = eventloop.run(_run_rows(settings, addresses, names, progress))
            warnings = tuple(_exited_during_run(nodes))
        finally:
            for node in nodes:
                node.terminate()
    return KvBenchOutcome(tuple(results), started, warnings)


def _local_nodes(settings: KvBenchSettings, directory: Path) -> list[NodeProcess]:
    arguments = [
        "--replicas", str(settings.replicas),
        "--r", str(settings.quorum),
        "--w", str(settings.quorum),
        "--fsync", settings.fsync_policy.value,
        "--gossip-interval-ms", str(GOSSIP_INTERVAL_MS),
        "--failure-timeout-ms", str(FAILURE_TIMEOUT_MS),
    ]  # fmt: skip
    return [
        NodeProcess(
            name=f"node{number}",
            data_dir=directory / f"node{number}",
            log_path=directory / f"node{number}.log",
            arguments=list(arguments),
        )
        for number in range(1, settings.nodes + 1)
    ]


def _start(nodes: Sequence[NodeProcess], progress: TextIO | None) -> None:
    """The first node alone (it is the seed, so its port must be known), then the others at
    once, seeded with it."""
    first, *others = nodes
    try:
        first.start()
        for node in others:
            node.arguments = ["--seeds", first.address, *node.arguments]
            node.start(wait=False)
        for node in others:
            node.wait_serving()
    except NodeStartError as error:
        raise KvBenchError(f"a node did not start: {error}") from error
    for node in nodes:
        _say(progress, f"kv: started {node.name} at {node.address}, pid {node.pid}")


def _exited_during_run(nodes: Sequence[NodeProcess]) -> list[str]:
    warnings = []
    for node in nodes:
        if node.process is not None and not node.running():
            warnings.append(
                f"warning: {node.name} exited during the run (status "
                f"{node.process.returncode}); its last log lines:\n{node.log_tail()}"
            )
    return warnings


def _say(progress: TextIO | None, line: str) -> None:
    if progress is not None:
        progress.write(line + "\n")
        progress.flush()


async def _run_rows(
    settings: KvBenchSettings,
    addresses: Sequence[str],
    node_names: Sequence[str],
    progress: TextIO | None,
) -> list[BenchResult]:
    from distlab.kvstore.client import KeyValueClient

    # Client i sends to node i first and falls back to the next ones, in ring order.
    clients = [
        KeyValueClient([*addresses[index:], *addresses[:index]], deadline_ms=DEADLINE_MS)
        for index in range(len(addresses))
    ]
    try:
        if node_names:
            await _wait_until_converged(addresses, set(node_names))
        else:
            await _check_reachable(addresses)
        run_id = secrets.token_hex(4)
        get_statistics, mixed_statistics = GetStatistics(), GetStatistics()
        rows = [
            echo_row(settings, len(clients)),
            put_row(settings, clients, KeySpace(f"bench/{run_id}/put", settings.keys)),
            get_row(
                settings,
                clients,
                KeySpace(f"bench/{run_id}/read", settings.keys),
                get_statistics,
                progress,
            ),
            mixed_row(
                settings,
                clients,
                KeySpace(f"bench/{run_id}/mixed", settings.keys),
                mixed_statistics,
                progress,
            ),
        ]
        echo, put, get, mixed = await run_interleaved(rows, settings.rounds, progress=progress)
    finally:
        for client in clients:
            await client.close()
    return [
        _with_error_note(echo),
        _with_error_note(put),
        _with_error_note(replace(get, counters=get_statistics.counters())),
        _with_error_note(replace(mixed, counters=mixed_statistics.counters())),
    ]


async def _members_seen_by(address: str) -> list[RingMember]:
    """The ring as the node at ``address`` sees it. A client of that node alone: the workers'
    clients would quietly ask another node when this one does not answer."""
    from distlab.kvstore.client import KeyValueClient

    async with KeyValueClient(address, deadline_ms=DEADLINE_MS) as client:
        return await client.ring()


async def _wait_until_converged(addresses: Sequence[str], names: set[str]) -> None:
    """Until every node sees exactly ``names`` as NORMAL members, every one alive."""
    deadline = time.monotonic() + CONVERGE_DEADLINE_S
    views: dict[str, tuple[list[str], list[str]]] = {}
    while time.monotonic() < deadline:
        converged = True
        for address in addresses:
            members = await _members_seen_by(address)
            normal = {member.node_id for member in members if member.status == "NORMAL"}
            alive = {member.node_id for member in members if member.alive}
            views[address] = (sorted(normal), sorted(alive))
            if normal != names or not names <= alive:
                converged = False
        if converged:
            return
        await asyncio.sleep(CONVERGE_POLL_INTERVAL_S)
    raise KvBenchError(
        f"the local cluster did not converge within {CONVERGE_DEADLINE_S} s "
        f"(normal and alive members as each node sees them: {views})"
    )


async def _check_reachable(addresses: Sequence[str]) -> None:
    for address in addresses:
        try:
            await _members_seen_by(address)
        except DistlabError as error:
            raise KvBenchError(f"cannot reach {address}: {error}") from error


def _parameters(settings: KvBenchSettings, **extra: object) -> dict[str, object]:
    """What a row's figure depends on, for the table and the JSON."""
    if settings.local:
        cluster: dict[str, object] = {
            "nodes": settings.nodes,
            "nrw": f"{settings.replicas}/{settings.quorum}/{settings.quorum}",
            "fsync": settings.fsync_policy.value,
        }
    else:
        cluster = {"to": ",".join(settings.targets)}
    return {
        **cluster,
        "keys": settings.keys,
        "value_bytes": settings.value_bytes,
        **extra,
        "seed": settings.seed,
        "rounds": settings.rounds,
    }


def _spec(settings: KvBenchSettings, name: str, parameters: Mapping[str, object]) -> BenchSpec:
    return BenchSpec(
        name=name,
        concurrency=settings.concurrency,
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        parameters=parameters,
    )


class EchoReference:
    """A bare grpc.aio server with the standard health service on 127.0.0.1, started in
    ``setup`` on this event loop, and ``connections`` channels to it, one per key-value node."""

    RPC = "grpc.health.v1.Health/Check"  # what a row's parameters name as the echo's call

    def __init__(self, connections: int) -> None:
        self._connections = connections
        self._server: grpc.aio.Server | None = None
        self._channels: list[grpc.aio.Channel] = []
        # grpc_health ships no type hints (see the mypy overrides in pyproject.toml).
        self._stubs: list[Any] = []
        self._request: Any = None

    def row(self, spec: BenchSpec) -> Row:
        """The echo as a row of ``run_interleaved``: started by its setup, stopped after."""
        return Row(spec, self.make_operation, self.setup, self.teardown)

    async def setup(self) -> None:
        import grpc.aio
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        if port == 0:
            raise KvBenchError("cannot listen on 127.0.0.1 for the echo reference")
        await server.start()
        self._server = server
        # Channels to one address share one connection unless each has its own subchannel
        # pool; the key-value clients have one connection per node, so the echo gets as many.
        options = [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
            for _ in range(self._connections)
        ]
        self._stubs = [health_pb2_grpc.HealthStub(channel) for channel in self._channels]
        self._request = health_pb2.HealthCheckRequest()

    def make_operation(self, worker_index: int) -> Operation:
        assert self._stubs, "setup() connects before operations are made"
        stub = self._stubs[worker_index % len(self._stubs)]
        request = self._request
        deadline_s = DEADLINE_MS / 1000

        async def check() -> None:
            await stub.Check(request, timeout=deadline_s)

        return check

    async def teardown(self) -> None:
        for channel in self._channels:
            await channel.close()
        if self._server is not None:
            await self._server.stop(None)


def echo_row(settings: KvBenchSettings, connections: int) -> Row:
    echo = EchoReference(connections)
    return echo.row(_spec(settings, ECHO_NAME, {"rpc": echo.RPC, "rounds": settings.rounds}))


async def _put(client: KeyValueClient, key: bytes, value: bytes) -> None:
    try:
        await client.put(key, value)
    except DistlabError as error:
        raise error_type(error.kind)(str(error)) from error


async def _get(client: KeyValueClient, key: bytes, statistics: GetStatistics) -> None:
    try:
        read = await client.get(key)
    except DistlabError as error:
        raise error_type(error.kind)(str(error)) from error
    statistics.record(len(read.values))


def _value(worker_index: int, value_bytes: int) -> bytes:
    # A value per worker, so a stored value says which worker wrote it.
    return bytes([worker_index % 256]) * value_bytes


def put_row(settings: KvBenchSettings, clients: Sequence[KeyValueClient], keys: KeySpace) -> Row:
    def make_operation(worker_index: int) -> Operation:
        client = clients[worker_index % len(clients)]
        chooser = random.Random(settings.seed + worker_index)
        value = _value(worker_index, settings.value_bytes)

        async def put() -> None:
            await _put(client, chooser.choice(keys.keys), value)

        return put

    return Row(_spec(settings, PUT_NAME, _parameters(settings)), make_operation)


async def preload(
    settings: KvBenchSettings,
    clients: Sequence[KeyValueClient],
    keys: KeySpace,
    progress: TextIO | None,
) -> None:
    """Write every key once, ``settings.concurrency`` puts at a time. Raises ``KvBenchError``
    past PRELOAD_ERRORS_MAX failed puts."""
    failures: list[DistlabError] = []
    started = time.perf_counter()

    async def load(worker_index: int) -> None:
        client = clients[worker_index % len(clients)]
        value = _value(worker_index, settings.value_bytes)
        for index in range(worker_index, keys.count, settings.concurrency):
            try:
                await client.put(keys.keys[index], value)
            except DistlabError as error:
                failures.append(error)
                if len(failures) > PRELOAD_ERRORS_MAX:
                    raise KvBenchError(
                        f"preload: more than {PRELOAD_ERRORS_MAX} puts failed; the last: "
                        f"{error.kind.code}: {error}"
                    ) from error

    _say(progress, f"kv: preloading {keys.count} keys ({keys.prefix})")
    async with asyncio.TaskGroup() as group:
        for worker_index in range(min(settings.concurrency, keys.count)):
            group.create_task(load(worker_index))
    elapsed_s = time.perf_counter() - started
    _say(
        progress,
        f"kv: preloaded {keys.count - len(failures)} keys in {elapsed_s:.1f} s"
        + (f" ({len(failures)} puts failed: their gets will fail)" if failures else ""),
    )


def get_row(
    settings: KvBenchSettings,
    clients: Sequence[KeyValueClient],
    keys: KeySpace,
    statistics: GetStatistics,
    progress: TextIO | None,
) -> Row:
    def make_operation(worker_index: int) -> Operation:
        client = clients[worker_index % len(clients)]
        chooser = random.Random(settings.seed + worker_index)

        async def get() -> None:
            await _get(client, chooser.choice(keys.keys), statistics)

        return get

    async def setup() -> None:
        await preload(settings, clients, keys, progress)

    return Row(_spec(settings, GET_NAME, _parameters(settings)), make_operation, setup)


def mixed_row(
    settings: KvBenchSettings,
    clients: Sequence[KeyValueClient],
    keys: KeySpace,
    statistics: GetStatistics,
    progress: TextIO | None,
) -> Row:
    """Gets and blind puts on ``keys``, preloaded by its setup."""

    def make_operation(worker_index: int) -> Operation:
        client = clients[worker_index % len(clients)]
        chooser = random.Random(settings.seed + worker_index)
        value = _value(worker_index, settings.value_bytes)

        async def get_or_put() -> None:
            key = chooser.choice(keys.keys)
            if chooser.random() < settings.read_fraction:
                await _get(client, key, statistics)
            else:
                await _put(client, key, value)

        return get_or_put

    async def setup() -> None:
        await preload(settings, clients, keys, progress)

    parameters = _parameters(settings, read_fraction=settings.read_fraction)
    return Row(_spec(settings, MIXED_NAME, parameters), make_operation, setup)


def _with_error_note(result: BenchResult) -> BenchResult:
    """Add how many operations failed, and how many of those may have taken effect anyway."""
    if not result.error_count:
        return result
    indefinite = sum(
        count
        for name, count in result.errors.items()
        if (kind := kind_of_error_name(name)) is None or not kind.definite
    )
    definite = result.error_count - indefinite
    note = (
        f"{result.error_count} operations failed in the window: {definite} definite, "
        f"{indefinite} indefinite (those may have taken effect)"
    )
    if f"{__name__}.{errors.FAILED_PRECONDITION.code}" in result.errors:
        # The node's answer to a put that would leave a key with too many siblings.
        note += f"; failed_precondition: blind puts probably hit SIBLINGS_MAX={SIBLINGS_MAX}"
    return replace(result, notes=(*result.notes, note))


def echo_ratio_lines(results: Sequence[BenchResult]) -> list[str]:
    """Each key-value row's operations per second as a ratio of the echo's: "put: 0.062x the
    echo's operations/s (1,234 of 19,876)". Empty without an echo row that completed anything."""
    echo = next((result for result in results if result.name == ECHO_NAME), None)
    if echo is None or echo.operations == 0:
        return []
    lines = [
        f"reference: a bare gRPC echo ({ECHO_NAME}) at x{echo.concurrency} reached "
        f"{echo.operations_per_s:,.0f} operations/s"
    ]
    lines.extend(
        f"{result.name}: {throughput_ratio(result, echo):.3f}x the echo's operations/s "
        f"({result.operations_per_s:,.0f} of {echo.operations_per_s:,.0f})"
        for result in results
        if result is not echo
    )
    return lines
