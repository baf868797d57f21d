"""Per-node metrics in the Prometheus text format, served over HTTP on the node's metrics port.

Every node gets, from the bootstrap, ``distlab_rpc_total{method,code}`` and
``distlab_rpc_latency_seconds{method}``; a service adds gauges read at scrape time
(``gauge_function``), so hot paths pay nothing for metrics they do not update.

prometheus-client does the exposition format and the HTTP endpoint: a standard format every
scraper reads is worth more here than a hand-written one. Each node owns its own registry, so
several servers in one process (tests) never collide.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from distlab.common.rpc import Handler, WrappedHandlers

# Buckets from 100 us (an in-memory get) to 10 s (a call near its deadline cap).
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http_server: WSGIServer | None = None
        self.rpc_total = Counter(
            "distlab_rpc_total",
            "RPCs handled, by method and final status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_latency_seconds = Histogram(
            "distlab_rpc_latency_seconds",
            "Time from the handler's start to its reply, by method",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def gauge_function(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read when scraped."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on a daemon thread; returns the bound port (port 0 picks one)."""
        self._http_server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound: int = self._http_server.server_port
        return bound

    def stop_serving(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every unary call by final status and times it."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self._handlers = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return self._handlers.get(handler_call_details.method, handler, self._measured)

    def _measured(self, inner: Handler, method_path: str) -> Handler:
        method = method_path.rsplit("/", 1)[-1]
        total = self.metrics.rpc_total
        latency = self.metrics.rpc_latency_seconds.labels(method)
        counted = {"OK": total.labels(method, "OK")}  # the common case, looked up once

        async def measured(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                status = context.code()
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                raise
            except BaseException:
                code = "UNKNOWN"
                raise
            finally:
                latency.observe(time.perf_counter() - started)
                counter = counted.get(code)
                if counter is None:
                    counter = counted[code] = total.labels(method, code)
                counter.inc()

        return measured
