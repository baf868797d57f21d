"""The KeyValue gRPC servicer of a single node, and the node's entry point.

Thin by design (STYLE.md rule 3): check the request against the node's Limits, call the storage
engine, encode the reply. The engine acknowledges a write only once its WAL record is durable
under the node's fsync policy, so a reply of OK means the write survives kill -9.

A failed fsync poisons the WAL (PostgreSQL's 2018 fsync lesson): the node answers that write
with an indefinite error and stops serving, rather than acknowledge anything after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio

from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.common.group_commit import TooManyPendingAppendsError
from distlab.common.limits import Limits
from distlab.common.logs import log_event
from distlab.common.metrics import NodeMetrics
from distlab.common.rpc import abort_on_error
from distlab.common.server import ServerOptions, run_server
from distlab.common.wal_file import WalFailedError
from distlab.kvstore import codec
from distlab.kvstore.storage import StorageClosedError, StorageEngine, StorageOptions
from distlab.proto import kvstore_pb2, kvstore_pb2_grpc

logger = logging.getLogger("distlab.kvstore")


class KeyValueServicer(kvstore_pb2_grpc.KeyValueServicer):
    def __init__(self, engine: StorageEngine, limits: Limits, stop: asyncio.Event) -> None:
        self.engine = engine
        self.limits = limits
        self.stop = stop

    @abort_on_error
    async def Put(
        self,
        request: kvstore_pb2.PutRequest,
        context: grpc.aio.ServicerContext[kvstore_pb2.PutRequest, kvstore_pb2.PutResponse],
    ) -> kvstore_pb2.PutResponse:
        self.limits.check_key(request.key)
        self.limits.check_value(request.value)
        sequence = await self._write(self.engine.put(request.key, request.value))
        return codec.put_response(sequence)

    @abort_on_error
    async def Get(
        self,
        request: kvstore_pb2.GetRequest,
        context: grpc.aio.ServicerContext[kvstore_pb2.GetRequest, kvstore_pb2.GetResponse],
    ) -> kvstore_pb2.GetResponse:
        self.limits.check_key(request.key)
        value = self.engine.get(request.key)
        if value is None:
            raise DistlabError(errors.NOT_FOUND, "no live value for this key", field="key")
        return codec.get_response([value])

    @abort_on_error
    async def Delete(
        self,
        request: kvstore_pb2.DeleteRequest,
        context: grpc.aio.ServicerContext[kvstore_pb2.DeleteRequest, kvstore_pb2.DeleteResponse],
    ) -> kvstore_pb2.DeleteResponse:
        self.limits.check_key(request.key)
        sequence = await self._write(self.engine.delete(request.key))
        return codec.delete_response(sequence)

    async def _write(self, write: Awaitable[int]) -> int:
        # The engine shields the write itself: once a record may be in the WAL it reaches the
        # memtable even if this handler is cancelled by the caller's deadline, and the caller
        # gets DEADLINE_EXCEEDED, an indefinite error, which is the truth.
        try:
            return await write
        except TooManyPendingAppendsError as error:
            raise DistlabError(errors.RESOURCE_EXHAUSTED, str(error)) from error
        except StorageClosedError as error:
            raise DistlabError(errors.UNAVAILABLE, "the node is shutting down") from error
        except WalFailedError as error:
            log_event(logger, "storage_failed", logging.CRITICAL, error=str(error))
            self.stop.set()
            raise DistlabError(
                errors.STORAGE_FAILED, f"the write-ahead log failed ({error}); the node is stopping"
            ) from error


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path
    server: ServerOptions = field(default_factory=ServerOptions)
    storage: StorageOptions = field(default_factory=StorageOptions)
    node_id: str = "node"


async def run_node(config: NodeConfig, stop: asyncio.Event | None = None) -> None:
    """Recover the storage engine, serve KeyValue until asked to stop, then close cleanly."""
    stop = stop or asyncio.Event()
    engine = StorageEngine.open(config.data_dir, config.storage)
    log_event(logger, "recovered", data_dir=str(config.data_dir), **engine.recovery_fields())
    servicer = KeyValueServicer(engine, config.server.limits, stop)
    metrics = NodeMetrics()
    for name, documentation, read in [
        ("distlab_kv_live_keys", "Keys with a live value", lambda: engine.stats().live_keys),
        ("distlab_kv_tombstones", "Deleted keys still held", lambda: engine.stats().tombstones),
        (
            "distlab_kv_key_and_value_bytes",
            "Bytes of keys and values in the memtable",
            lambda: engine.stats().key_and_value_bytes,
        ),
        ("distlab_kv_wal_segments", "WAL segment files", lambda: engine.stats().wal_segments),
        (
            "distlab_kv_applied_sequence",
            "Every WAL record up to this sequence is applied",
            lambda: engine.stats().applied_sequence,
        ),
        (
            "distlab_kv_checkpoints_written",
            "Checkpoints written since start",
            lambda: engine.stats().checkpoints_written,
        ),
    ]:
        metrics.gauge_function(name, documentation, read)

    def register(server: grpc.aio.Server) -> list[str]:
        kvstore_pb2_grpc.add_KeyValueServicer_to_server(servicer, server)
        return [kvstore_pb2.DESCRIPTOR.services_by_name["KeyValue"].full_name]

    try:
        await run_server(config.server, register, on_stop=engine.close, stop=stop, metrics=metrics)
    finally:
        await engine.close()
