"""The chaos workload of the key-value store: clients that record a history, then final reads.

As in Jepsen, a fixed number of logical clients (processes) run one operation at a time each,
bound to one node (process p talks to node p mod n through its client proxy), at a bounded total
rate. Each operation is recorded as an invoke and a completion (``distlab.chaos.history``):
``ok``, ``fail`` when the error is definite, ``info`` when it may have happened; a process whose
write ends ``info`` is retired and replaced (its write may still land later).

The operations: ``get``; ``put`` of a unique value ("p<process>-<n>"), with the context of the
process's last read or write of that key (a process with none reads first), so writes form
causal chains and, among processes, concurrent siblings; ``delete`` with such a context. Each
write records its request context as {node: counter} and the dot it minted, which lets the
checker (``distlab.kvstore.checker``) know exactly which write superseded which.

Keys rotate: the workload uses ``keys_active`` keys at a time, and a new set every
``key_period_s``, so every key's history stays short enough for the linearizability search
while the contention on each key stays high. Choices come from ``random.Random`` seeded per
process, so the same seed gives the same sequence of choices (timings differ, as they must on a
real machine).

After the workload and the healing of every fault: ``final_reads`` reads every key at R=N, and
``observe_replicas`` waits for each key's replicas to agree and records what each holds.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

from distlab.chaos.history import OBSERVER_PROCESS, HistoryRecorder, OpType
from distlab.chaos.pacing import run_paced
from distlab.common.rpc import error_from_rpc
from distlab.kvstore.checker import DELETE, GET, PUT, REPLICA_STATE
from distlab.kvstore.versioning import decode_context, decode_siblings, digest
from distlab.proto import kvstore_pb2, kvstore_pb2_grpc

# Client processes: enough to make concurrent writes to one key common, few enough that a
# 2-core machine runs them and a 3-node cluster.
CONCURRENCY_MAX = 256
RATE_MAX = 10_000.0
# A call longer than this is abandoned and recorded as info: long enough for a quorum under
# the harness's latency faults, short enough that a partition does not stall every process.
CALL_TIMEOUT_S_DEFAULT = 2.0
# The final reads run after healing; a node just restarted may need a few seconds to rejoin.
FINAL_READ_DEADLINE_S = 30.0
FINAL_PROCESS = 1_000_000  # the process id of the final reads, clear of the workload's ids


@dataclass(frozen=True, slots=True)
class KvWorkloadOptions:
    duration_s: float
    rate: float = 100.0  # operations per second, all processes together
    concurrency: int = 10
    keys_active: int = 6
    key_period_s: float = 6.0
    read_fraction: float = 0.5
    delete_fraction: float = 0.05
    call_timeout_s: float = CALL_TIMEOUT_S_DEFAULT
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.rate <= RATE_MAX:
            raise ValueError(f"rate must be in (0, {RATE_MAX}]")
        if not 1 <= self.concurrency <= CONCURRENCY_MAX:
            raise ValueError(f"concurrency must be in [1, {CONCURRENCY_MAX}]")
        if self.duration_s <= 0 or self.key_period_s <= 0 or self.call_timeout_s <= 0:
            raise ValueError("duration_s, key_period_s and call_timeout_s must be positive")
        if not 0 <= self.read_fraction + self.delete_fraction <= 1:
            raise ValueError("read_fraction + delete_fraction must be in [0, 1]")


def clock_of(context: bytes) -> dict[str, int]:
    return {entry.node_id: entry.counter for entry in decode_context(context).entries}


@dataclass
class _Process:
    worker: int
    process: int
    rng: random.Random
    contexts: dict[str, bytes] = field(default_factory=dict)
    writes: int = 0


class KvWorkload:
    """Runs the workload against ``addresses`` (one per node, as clients reach them)."""

    def __init__(
        self,
        addresses: Sequence[str],
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        options: KvWorkloadOptions,
    ) -> None:
        self.addresses = list(addresses)
        self.recorder = recorder
        self.now_ns = now_ns
        self.options = options
        self.keys: set[str] = set()
        self.channels = [grpc.aio.insecure_channel(address) for address in self.addresses]
        self.stubs = [kvstore_pb2_grpc.KeyValueStub(channel) for channel in self.channels]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def run(self) -> None:
        def worker(index: int) -> Callable[[float], Awaitable[None]]:
            state = _Process(
                index, index, random.Random(self.options.seed * CONCURRENCY_MAX + index)
            )
            return lambda elapsed_s: self._one(state, elapsed_s)

        workers = [worker(index) for index in range(self.options.concurrency)]
        await run_paced(workers, self.options.rate, self.options.duration_s)

    async def _one(self, state: _Process, elapsed_s: float) -> None:
        options = self.options
        key = (
            f"k{int(elapsed_s // options.key_period_s)}-{state.rng.randrange(options.keys_active)}"
        )
        self.keys.add(key)
        roll = state.rng.random()
        if roll < options.read_fraction:
            await self._get(state, key)
            return
        if key not in state.contexts:
            # Get, then put with the get's context, as a Dynamo client does (the CLI's put
            # too): a blind write would only add a sibling beside whatever is there.
            await self._get(state, key)
        if roll < options.read_fraction + options.delete_fraction:
            await self._write(state, key, None)
        else:
            state.writes += 1
            await self._write(state, key, f"p{state.process}-{state.writes}")

    def _stub(self, process: int) -> kvstore_pb2_grpc.KeyValueAsyncStub:
        return self.stubs[process % len(self.stubs)]

    async def _get(self, state: _Process, key: str) -> None:
        process = state.process
        self.recorder.record(OpType.INVOKE, process, GET, self.now_ns(), key=key)
        try:
            response = await self._stub(process).Get(
                kvstore_pb2.GetRequest(key=key.encode()), timeout=self.options.call_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                state.contexts.pop(key, None)
                self.recorder.record(OpType.OK, process, GET, self.now_ns(), key=key)
                return
            # A read changes nothing, so a failed read is a definite failure whatever the cause.
            self.recorder.record(
                OpType.FAIL, process, GET, self.now_ns(), key=key, error=_describe(error)
            )
            return
        state.contexts[key] = response.context
        self.recorder.record(
            OpType.OK,
            process,
            GET,
            self.now_ns(),
            key=key,
            value=sorted(sibling.value.decode() for sibling in response.siblings),
            extra={"context": clock_of(response.context)},
        )

    async def _write(self, state: _Process, key: str, value: str | None) -> None:
        process = state.process
        f = PUT if value is not None else DELETE
        context = state.contexts.get(key, b"")
        self.recorder.record(
            OpType.INVOKE,
            process,
            f,
            self.now_ns(),
            key=key,
            value=value,
            extra={"context": clock_of(context), "node": process % len(self.stubs)},
        )
        stub = self._stub(process)
        timeout_s = self.options.call_timeout_s
        try:
            if value is not None:
                put = kvstore_pb2.PutRequest(
                    key=key.encode(), value=value.encode(), context=context
                )
                response: kvstore_pb2.PutResponse | kvstore_pb2.DeleteResponse = await stub.Put(
                    put, timeout=timeout_s
                )
            else:
                delete = kvstore_pb2.DeleteRequest(key=key.encode(), context=context)
                response = await stub.Delete(delete, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            definite = error_from_rpc(error).definite
            self.recorder.record(
                OpType.FAIL if definite else OpType.INFO,
                process,
                f,
                self.now_ns(),
                key=key,
                error=_describe(error),
            )
            if not definite:
                # Jepsen's rule: the operation may still take effect, so this process never
                # invokes again; a new one takes its place.
                state.process += self.options.concurrency
                state.contexts.clear()
            return
        state.contexts[key] = response.context
        self.recorder.record(
            OpType.OK,
            process,
            f,
            self.now_ns(),
            key=key,
            extra={
                "context": clock_of(response.context),
                "dot": [response.dot.node_id, response.dot.counter],
            },
        )

    async def final_reads(self, replicas: int, deadline_s: float = FINAL_READ_DEADLINE_S) -> int:
        """Read every key the workload touched at R=N, retrying each until it succeeds or the
        deadline passes; returns how many keys could not be read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        unread = 0
        for index, key in enumerate(sorted(self.keys)):
            process = FINAL_PROCESS + index
            for attempt in itertools.count():
                stub = self.stubs[(index + attempt) % len(self.stubs)]
                self.recorder.record(
                    OpType.INVOKE, process, GET, self.now_ns(), key=key, extra={"final": True}
                )
                try:
                    response = await stub.Get(
                        kvstore_pb2.GetRequest(key=key.encode(), r=replicas),
                        timeout=self.options.call_timeout_s,
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() is grpc.StatusCode.NOT_FOUND:
                        self.recorder.record(OpType.OK, process, GET, self.now_ns(), key=key)
                        break
                    self.recorder.record(
                        OpType.FAIL, process, GET, self.now_ns(), key=key, error=_describe(error)
                    )
                    if loop.time() > deadline:
                        unread += 1
                        break
                    await asyncio.sleep(0.2)
                    continue
                self.recorder.record(
                    OpType.OK,
                    process,
                    GET,
                    self.now_ns(),
                    key=key,
                    value=sorted(sibling.value.decode() for sibling in response.siblings),
                    extra={"context": clock_of(response.context)},
                )
                break
        return unread


async def observe_replicas(
    nodes: dict[str, str],
    keys: Sequence[str],
    replicas: int,
    recorder: HistoryRecorder,
    now_ns: Callable[[], int],
    wait_s: float,
    poll_s: float = 0.5,
) -> int:
    """Poll every node's copy of every key (ReplicaGet, straight to the nodes) until each key's
    replicas agree or ``wait_s`` passes; record the last observation of each key. Returns how
    many keys still differ."""
    channels = {name: grpc.aio.insecure_channel(address) for name, address in nodes.items()}
    stubs = {name: kvstore_pb2_grpc.ReplicaStub(channel) for name, channel in channels.items()}
    loop = asyncio.get_running_loop()
    started = loop.time()
    states: dict[str, dict[str, str | None]] = {}
    try:
        pending = list(keys)
        while True:
            for key in pending:
                states[key] = await _replica_state(stubs, key)
            pending = [key for key in pending if not _converged(states[key], replicas)]
            if not pending or loop.time() - started > wait_s:
                break
            await asyncio.sleep(poll_s)
    finally:
        for channel in channels.values():
            await channel.close()
    waited_s = round(loop.time() - started, 1)
    for key in keys:
        recorder.record(
            OpType.INFO,
            OBSERVER_PROCESS,
            REPLICA_STATE,
            now_ns(),
            key=key,
            value=states[key],
            extra={"waited_s": waited_s},
        )
    return len(pending)


async def _replica_state(
    stubs: dict[str, kvstore_pb2_grpc.ReplicaAsyncStub], key: str
) -> dict[str, str | None]:
    state: dict[str, str | None] = {}
    for name, stub in sorted(stubs.items()):
        try:
            response = await stub.ReplicaGet(
                kvstore_pb2.ReplicaGetRequest(key=key.encode()), timeout=CALL_TIMEOUT_S_DEFAULT
            )
        except grpc.aio.AioRpcError as error:
            state[name] = f"error: {error.code().name}"
            continue
        held = decode_siblings(response.siblings) if response.siblings else ()
        state[name] = digest(held).hex()[:16] if held else None
    return state


def _converged(state: dict[str, str | None], replicas: int) -> bool:
    held = [digest for digest in state.values() if digest]
    return not held or (len(set(held)) == 1 and len(held) >= min(replicas, len(state)))


def _describe(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details()}"
