"""gRPC server bootstrap shared by every distlab node.

What every node gets, so no service re-implements it:
- grpc.aio with a message-size cap derived from the node's Limits and a cap on concurrent calls
  (past it gRPC itself answers RESOURCE_EXHAUSTED: shedding instead of collapse);
- ``DeadlineCapInterceptor``: no call runs longer than min(its deadline, the server cap);
- Prometheus metrics (``distlab_rpc_total``, ``distlab_rpc_latency_seconds`` and whatever gauges
  the service adds) on ``metrics_port`` over HTTP, when one is given;
- the standard health service (grpc.health.v1) and server reflection, so ``grpcurl`` and load
  balancers work out of the box;
- graceful shutdown on SIGTERM/SIGINT, in this order (the order is what keeps acknowledged writes):
  1. health goes NOT_SERVING, so balancers and probes stop sending new work;
  2. ``before_stop`` runs: a service ends the calls that would never end by themselves (a
     peer's long-lived stream), or the grace below would always run out waiting for them;
  3. ``server.stop(grace)`` refuses new calls and lets in-flight ones finish, up to the grace;
  4. ``on_stop`` runs: the service flushes and fsyncs its storage and closes files;
  5. the port file is removed and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from distlab.common.limits import Limits
from distlab.common.logs import log_event
from distlab.common.metrics import MetricsInterceptor, NodeMetrics
from distlab.common.rpc import DeadlineCapInterceptor

logger = logging.getLogger("distlab.server")

# Long enough for a group commit and a few slow calls to finish, short enough that an operator's
# Ctrl-C or an orchestrator's SIGTERM (Kubernetes waits 30 s by default) ends the node promptly.
SHUTDOWN_GRACE_S_DEFAULT = 10.0

Register = Callable[[grpc.aio.Server], Sequence[str]]


@dataclass(frozen=True, slots=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0  # 0: the kernel picks a free port; it is logged and written to port_file
    limits: Limits = field(default_factory=Limits)
    shutdown_grace_s: float = SHUTDOWN_GRACE_S_DEFAULT
    port_file: Path | None = None  # written once serving: how tests and tools find the port
    metrics_port: int | None = None  # None: no metrics endpoint; 0: the kernel picks a port


class ServerStartError(Exception):
    pass


async def run_server(
    options: ServerOptions,
    register: Register,
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    before_stop: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    metrics: NodeMetrics | None = None,
    on_serving: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or until ``stop`` is set, then shut down gracefully.

    ``register`` adds the node's servicers to the server and returns their full service names
    (for health and reflection). ``on_serving`` runs once the port is bound and serving, with
    the port, before the port file is written (a node announces its address to its peers then).
    """
    stop = stop or asyncio.Event()
    metrics = metrics or NodeMetrics()
    limits = options.limits
    server = grpc.aio.server(
        # Metrics outermost, so a call cut off by the deadline cap is counted with its status.
        interceptors=[MetricsInterceptor(metrics), DeadlineCapInterceptor(limits.deadline_ms_max)],
        options=[
            ("grpc.max_receive_message_length", limits.message_bytes_max),
            ("grpc.max_send_message_length", limits.message_bytes_max),
            # Two nodes must never silently share a port (SO_REUSEPORT would allow it).
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=limits.concurrent_rpcs_max,
    )
    service_names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{options.host}:{options.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise ServerStartError(f"cannot listen on {address}: {error}") from error
    if port == 0:
        raise ServerStartError(f"cannot listen on {address}: the port is taken or not allowed")
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    bound = f"{options.host}:{port}"
    metrics_port = None
    if options.metrics_port is not None:
        metrics_port = metrics.serve(options.host, options.metrics_port)
    if on_serving is not None:
        await on_serving(port)
    if options.port_file is not None:
        _write_atomically(options.port_file, f"{port}\n")
    log_event(
        logger,
        "serving",
        address=bound,
        metrics_port=metrics_port,
        services=service_names,
        pid=os.getpid(),
    )

    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal_number, stop.set)
            installed.append(signal_number)
    try:
        await stop.wait()
        log_event(logger, "stopping", address=bound, grace_s=options.shutdown_grace_s)
        await health_servicer.enter_graceful_shutdown()
        if before_stop is not None:
            await before_stop()
        await server.stop(options.shutdown_grace_s)
        if on_stop is not None:
            await on_stop()
    finally:
        # Reached early only on cancellation or an error in on_stop: stop at once (idempotent).
        await server.stop(None)
        metrics.stop_serving()
        for signal_number in installed:
            loop.remove_signal_handler(signal_number)
        if options.port_file is not None:
            with contextlib.suppress(FileNotFoundError):
                options.port_file.unlink()
    log_event(logger, "stopped", address=bound)


def _write_atomically(path: Path, text: str) -> None:
    # A reader polling for the file must never see it half-written.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
