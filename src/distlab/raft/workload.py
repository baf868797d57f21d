"""The chaos workload of the Raft register: clients that record a history for the
linearizability checker (``distlab.chaos.linearizability``), which this system must pass.

As in ``distlab.kvstore.workload``: a fixed number of processes, one operation at a time each,
at a bounded total rate; puts of unique values and gets on a few keys at a time (they rotate so
that each key's history stays short for the search). A "not the leader" answer is a definite
failure (nothing was proposed), and the process talks to the named leader from then on. A
timeout or a lost connection is ``info``, and the process is replaced (Jepsen's rule).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from distlab.chaos.history import HistoryRecorder, OpType
from distlab.chaos.pacing import run_paced
from distlab.common.rpc import error_from_rpc
from distlab.proto import raft_pb2, raft_pb2_grpc

CONCURRENCY_MAX = 256
CALL_TIMEOUT_S_DEFAULT = 2.0
_LEADER_HINT = re.compile(r"address=(\S+)")


@dataclass(frozen=True, slots=True)
class RaftWorkloadOptions:
    duration_s: float
    rate: float = 100.0
    concurrency: int = 10
    keys_active: int = 4
    key_period_s: float = 5.0
    read_fraction: float = 0.5
    call_timeout_s: float = CALL_TIMEOUT_S_DEFAULT
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= CONCURRENCY_MAX:
            raise ValueError(f"concurrency must be in [1, {CONCURRENCY_MAX}]")
        if self.rate <= 0 or self.duration_s <= 0 or self.key_period_s <= 0:
            raise ValueError("rate, duration_s and key_period_s must be positive")


class RaftWorkload:
    """``addresses``: where clients reach each node; ``client_address_of``: a node's real
    address (as leader hints name it) to the address clients use for it."""

    def __init__(
        self,
        addresses: Sequence[str],
        client_address_of: Mapping[str, str],
        recorder: HistoryRecorder,
        now_ns: Callable[[], int],
        options: RaftWorkloadOptions,
    ) -> None:
        self.addresses = list(addresses)
        self.client_address_of = dict(client_address_of)
        self.recorder = recorder
        self.now_ns = now_ns
        self.options = options
        self.channels = {address: grpc.aio.insecure_channel(address) for address in self.addresses}

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()

    async def run(self) -> None:
        workers = [_Worker(self, index) for index in range(self.options.concurrency)]
        await run_paced(workers, self.options.rate, self.options.duration_s)

    def _stub(self, target: str) -> raft_pb2_grpc.RaftKeyValueAsyncStub:
        return raft_pb2_grpc.RaftKeyValueStub(self.channels[target])

    def _leader_hint(self, error: grpc.aio.AioRpcError) -> str | None:
        found = _LEADER_HINT.search(error.details() or "")
        return self.client_address_of.get(found.group(1)) if found else None

    async def get(self, process: int, target: str, key: str) -> tuple[OpType, str | None]:
        self.recorder.record(OpType.INVOKE, process, "get", self.now_ns(), key=key)
        try:
            reply = await self._stub(target).Get(
                raft_pb2.RaftGetRequest(key=key.encode()), timeout=self.options.call_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            # A read changes nothing: whatever went wrong, it did not happen.
            self.recorder.record(
                OpType.FAIL, process, "get", self.now_ns(), key=key, error=_describe(error)
            )
            return OpType.FAIL, self._leader_hint(error)
        value = [reply.value.decode()] if reply.found else None
        self.recorder.record(OpType.OK, process, "get", self.now_ns(), key=key, value=value)
        return OpType.OK, None

    async def put(
        self, process: int, target: str, key: str, value: str
    ) -> tuple[OpType, str | None]:
        self.recorder.record(OpType.INVOKE, process, "put", self.now_ns(), key=key, value=value)
        try:
            await self._stub(target).Put(
                raft_pb2.RaftPutRequest(key=key.encode(), value=value.encode()),
                timeout=self.options.call_timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            outcome = OpType.FAIL if error_from_rpc(error).definite else OpType.INFO
            self.recorder.record(
                outcome, process, "put", self.now_ns(), key=key, error=_describe(error)
            )
            return outcome, self._leader_hint(error)
        self.recorder.record(OpType.OK, process, "put", self.now_ns(), key=key)
        return OpType.OK, None


class _Worker:
    """One client: a process id (replaced after an ``info``), the node it talks to (the last
    leader named to it), and its own random choices."""

    def __init__(self, workload: RaftWorkload, index: int) -> None:
        options = workload.options
        self.workload = workload
        self.rng = random.Random(options.seed * CONCURRENCY_MAX + index)
        self.process = index
        self.target = workload.addresses[index % len(workload.addresses)]
        self.writes = 0

    async def __call__(self, elapsed_s: float) -> None:
        options = self.workload.options
        generation = int(elapsed_s // options.key_period_s)
        key = f"k{generation}-{self.rng.randrange(options.keys_active)}"
        if self.rng.random() < options.read_fraction:
            outcome, hint = await self.workload.get(self.process, self.target, key)
        else:
            self.writes += 1
            value = f"p{self.process}-{self.writes}"
            outcome, hint = await self.workload.put(self.process, self.target, key, value)
        if hint is not None:
            self.target = hint
        if outcome is OpType.INFO:
            self.process += options.concurrency


def _describe(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details()}"
