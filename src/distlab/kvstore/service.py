"""The gRPC servicers of a key-value node, and the node's entry point.

Thin by design (STYLE.md rule 3): check the request against the node's Limits, call the node
(``distlab.kvstore.node.KvNode``), encode the reply. ``KeyValueServicer`` is the client contract;
``ReplicaServicer`` is what nodes say to each other.

A failed fsync poisons the WAL (PostgreSQL's 2018 fsync lesson): the node answers that write
with an indefinite error and stops serving, rather than acknowledge anything after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc.aio

from distlab.chaos import injection
from distlab.chaos.injection import FaultInjectionServicer
from distlab.common import errors
from distlab.common.clock import SystemClock
from distlab.common.errors import DistlabError, invalid_argument
from distlab.common.group_commit import TooManyPendingAppendsError
from distlab.common.limits import Limits
from distlab.common.logs import log_event
from distlab.common.metrics import NodeMetrics
from distlab.common.rpc import abort_on_error, deadline_s
from distlab.common.server import ServerOptions, run_server
from distlab.common.wal_file import WalFailedError
from distlab.kvstore import codec
from distlab.kvstore.node import FORWARDED_METADATA_KEY, KvNode, KvNodeOptions, WriteOutcome
from distlab.kvstore.storage import StorageClosedError
from distlab.kvstore.versioning import TooManySiblingsError
from distlab.proto import kvstore_pb2, kvstore_pb2_grpc

logger = logging.getLogger("distlab.kvstore")

ResultT = TypeVar("ResultT")
Context = grpc.aio.ServicerContext[Any, Any]

# Merkle depth a peer may ask for: 2**16 leaves is already 2 MiB of hashes in one reply.
MERKLE_DEPTH_MAX = 16
FETCH_PAGE_KEYS_MAX = 5_000


def _forwarded(context: Context) -> bool:
    return any(key == FORWARDED_METADATA_KEY for key, _ in context.invocation_metadata() or ())


class KeyValueServicer(kvstore_pb2_grpc.KeyValueServicer):
    def __init__(self, node: KvNode, limits: Limits, stop: asyncio.Event) -> None:
        self.node = node
        self.limits = limits
        self.stop = stop

    @abort_on_error
    async def Put(
        self, request: kvstore_pb2.PutRequest, context: Context
    ) -> kvstore_pb2.PutResponse:
        self.limits.check_key(request.key)
        self.limits.check_value(request.value)
        outcome = await _storage_call(
            self.node.write(
                request.key,
                request.value,
                request.context,
                request.w,
                want_trace=request.trace,
                forwarded=_forwarded(context),
                deadline_s=deadline_s(context, self.limits),
            ),
            self.stop,
        )
        return kvstore_pb2.PutResponse(
            context=outcome.context, trace_json=_json(outcome.trace), dot=_dot(outcome)
        )

    @abort_on_error
    async def Get(
        self, request: kvstore_pb2.GetRequest, context: Context
    ) -> kvstore_pb2.GetResponse:
        self.limits.check_key(request.key)
        values, read_context, trace = await _storage_call(
            self.node.read(
                request.key,
                request.r,
                want_trace=request.trace,
                deadline_s=deadline_s(context, self.limits),
            ),
            self.stop,
        )
        return kvstore_pb2.GetResponse(
            siblings=[kvstore_pb2.Sibling(value=value) for value in values],
            context=read_context,
            trace_json=_json(trace),
        )

    @abort_on_error
    async def Delete(
        self, request: kvstore_pb2.DeleteRequest, context: Context
    ) -> kvstore_pb2.DeleteResponse:
        self.limits.check_key(request.key)
        outcome = await _storage_call(
            self.node.write(
                request.key,
                None,
                request.context,
                request.w,
                want_trace=request.trace,
                forwarded=_forwarded(context),
                deadline_s=deadline_s(context, self.limits),
            ),
            self.stop,
        )
        return kvstore_pb2.DeleteResponse(
            context=outcome.context, trace_json=_json(outcome.trace), dot=_dot(outcome)
        )

    @abort_on_error
    async def Ring(
        self, request: kvstore_pb2.RingRequest, context: Context
    ) -> kvstore_pb2.RingResponse:
        return kvstore_pb2.RingResponse(
            members=self.node.ring_view(), replication_factor=self.node.options.quorum.n
        )

    @abort_on_error
    async def Leave(
        self, request: kvstore_pb2.LeaveRequest, context: Context
    ) -> kvstore_pb2.LeaveResponse:
        handed = await _storage_call(self.node.leave(), self.stop)
        self.stop.set()  # the node has left: shut the server down after this reply
        return kvstore_pb2.LeaveResponse(keys_handed_over=handed)


class ReplicaServicer(kvstore_pb2_grpc.ReplicaServicer):
    def __init__(self, node: KvNode, limits: Limits, stop: asyncio.Event) -> None:
        self.node = node
        self.limits = limits
        self.stop = stop

    @abort_on_error
    async def ReplicaPut(
        self, request: kvstore_pb2.ReplicaPutRequest, context: Context
    ) -> kvstore_pb2.ReplicaPutResponse:
        self.limits.check_key(request.key)
        await _storage_call(
            self.node.replica_put(request.key, request.siblings, request.hint_for), self.stop
        )
        return kvstore_pb2.ReplicaPutResponse()

    @abort_on_error
    async def ReplicaGet(
        self, request: kvstore_pb2.ReplicaGetRequest, context: Context
    ) -> kvstore_pb2.ReplicaGetResponse:
        self.limits.check_key(request.key)
        return kvstore_pb2.ReplicaGetResponse(siblings=self.node.replica_get(request.key))

    @abort_on_error
    async def Gossip(
        self, request: kvstore_pb2.GossipRequest, context: Context
    ) -> kvstore_pb2.GossipResponse:
        try:
            states = [codec.member_from_proto(member) for member in request.members]
        except (KeyError, ValueError) as error:
            raise invalid_argument("members", str(error)) from error
        reply = await self.node.gossip_received(states)
        return kvstore_pb2.GossipResponse(members=[codec.member_to_proto(state) for state in reply])

    @abort_on_error
    async def MerkleTree(
        self, request: kvstore_pb2.MerkleTreeRequest, context: Context
    ) -> kvstore_pb2.MerkleTreeResponse:
        if not 1 <= request.depth <= MERKLE_DEPTH_MAX:
            raise invalid_argument("depth", f"must be in [1, {MERKLE_DEPTH_MAX}]")
        tree = self.node.merkle_tree(request.shared_with, request.depth)
        return kvstore_pb2.MerkleTreeResponse(levels=tree.level_bytes())

    @abort_on_error
    async def FetchKeys(
        self, request: kvstore_pb2.FetchKeysRequest, context: Context
    ) -> kvstore_pb2.FetchKeysResponse:
        if not 1 <= request.limit <= FETCH_PAGE_KEYS_MAX:
            raise invalid_argument("limit", f"must be in [1, {FETCH_PAGE_KEYS_MAX}]")
        if request.leaves and not 1 <= request.depth <= MERKLE_DEPTH_MAX:
            raise invalid_argument("depth", f"must be in [1, {MERKLE_DEPTH_MAX}]")
        page, next_after = self.node.fetch_keys(
            request.for_node,
            request.for_node_joining,
            request.for_node_weight or 1.0,
            request.depth,
            list(request.leaves),
            request.after_key,
            request.limit,
        )
        return kvstore_pb2.FetchKeysResponse(
            entries=[kvstore_pb2.KeySiblings(key=key, siblings=value) for key, value in page],
            next_after_key=next_after,
        )

    @abort_on_error
    async def SetBlockedPeers(
        self, request: kvstore_pb2.SetBlockedPeersRequest, context: Context
    ) -> kvstore_pb2.SetBlockedPeersResponse:
        if not self.node.options.allow_fault_injection:
            raise DistlabError(
                errors.FAILED_PRECONDITION,
                "fault injection is off; start the node with --allow-fault-injection",
            )
        try:
            self.node.peers.faults.set_blocked(request.addresses)
        except ValueError as error:
            raise invalid_argument("addresses", str(error)) from error
        log_event(logger, "blocked_peers", addresses=sorted(request.addresses))
        return kvstore_pb2.SetBlockedPeersResponse()


async def _storage_call(call: Awaitable[ResultT], stop: asyncio.Event) -> ResultT:
    """Storage failures as the error table names them; a failed WAL stops the node."""
    try:
        return await call
    except TooManyPendingAppendsError as error:
        raise DistlabError(errors.RESOURCE_EXHAUSTED, str(error)) from error
    except TooManySiblingsError as error:
        raise DistlabError(
            errors.FAILED_PRECONDITION,
            f"{error}; read the key and put one value with the read's context",
        ) from error
    except StorageClosedError as error:
        raise DistlabError(errors.UNAVAILABLE, "the node is shutting down") from error
    except WalFailedError as error:
        log_event(logger, "storage_failed", logging.CRITICAL, error=str(error))
        stop.set()
        raise DistlabError(
            errors.STORAGE_FAILED, f"the write-ahead log failed ({error}); the node is stopping"
        ) from error


def _dot(outcome: WriteOutcome) -> kvstore_pb2.VersionDot:
    return kvstore_pb2.VersionDot(node_id=outcome.dot_node_id, counter=outcome.dot_counter)


def _json(trace: dict[str, Any] | None) -> str:
    return json.dumps(trace, default=str) if trace is not None else ""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: KvNodeOptions
    server: ServerOptions = field(default_factory=ServerOptions)
    advertise_host: str = ""  # the host peers dial; default: the host we listen on


async def run_node(config: NodeConfig, stop: asyncio.Event | None = None) -> None:
    """Recover storage, serve KeyValue and Replica, join the cluster; stop cleanly."""
    stop = stop or asyncio.Event()
    clock = SystemClock()
    node = KvNode(config.node, config.server.limits, clock)
    fault_injection = FaultInjectionServicer(
        config.node.allow_fault_injection, clock, node.peers.faults
    )
    log_event(
        logger, "recovered", data_dir=str(config.node.data_dir), **node.engine.recovery_fields()
    )
    metrics = NodeMetrics()
    _register_gauges(metrics, node)

    def register(server: grpc.aio.Server) -> list[str]:
        kvstore_pb2_grpc.add_KeyValueServicer_to_server(
            KeyValueServicer(node, config.server.limits, stop), server
        )
        kvstore_pb2_grpc.add_ReplicaServicer_to_server(
            ReplicaServicer(node, config.server.limits, stop), server
        )
        return [
            *(
                kvstore_pb2.DESCRIPTOR.services_by_name[name].full_name
                for name in ("KeyValue", "Replica")
            ),
            injection.register(server, fault_injection),
        ]

    async def on_serving(port: int) -> None:
        host = config.advertise_host or config.server.host
        await node.start(f"{host}:{port}")

    try:
        await run_server(
            config.server,
            register,
            on_stop=node.close,
            stop=stop,
            metrics=metrics,
            on_serving=on_serving,
        )
    finally:
        await node.close()


def _register_gauges(metrics: NodeMetrics, node: KvNode) -> None:
    counters = node.counters
    for name, documentation, read in [
        (
            "distlab_kv_live_keys",
            "Keys stored on this replica",
            lambda: node.engine.stats().live_keys,
        ),
        (
            "distlab_kv_pending_hints",
            "Hints held for nodes that were down",
            node.hints.pending_count,
        ),
        (
            "distlab_kv_hints_written",
            "Hints this node asked fallbacks to keep",
            lambda: counters.hints_written,
        ),
        (
            "distlab_kv_hints_delivered",
            "Hints handed off to their owners",
            lambda: counters.hints_delivered,
        ),
        (
            "distlab_kv_read_repairs",
            "Replicas repaired after a read",
            lambda: counters.read_repairs,
        ),
        (
            "distlab_kv_anti_entropy_rounds",
            "Merkle exchanges done",
            lambda: counters.anti_entropy_rounds,
        ),
        (
            "distlab_kv_anti_entropy_keys",
            "Keys exchanged by anti-entropy",
            lambda: counters.anti_entropy_keys_repaired,
        ),
        (
            "distlab_kv_lww_discarded_writes",
            "Live versions last-writer-wins threw away (0 unless --last-writer-wins)",
            lambda: node.replica.discarded_writes,
        ),
        (
            "distlab_kv_tombstones_collected",
            "Deleted keys forgotten after their grace period",
            lambda: counters.tombstones_collected,
        ),
        (
            "distlab_kv_forwarded_writes",
            "Writes forwarded to their coordinator",
            lambda: counters.forwarded,
        ),
    ]:
        metrics.gauge_function(name, documentation, read)
