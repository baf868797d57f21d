"""The FaultInjection service: how the chaos harness reaches inside a running node.

Served by every distlab node, and refused (FAILED_PRECONDITION) unless the node was started
with ``--allow-fault-injection``, so that a production-like node cannot have its clock skewed
by anyone who can reach its port. Network faults need no help from the node (the TCP proxies
of ``distlab.chaos.netproxy``), and neither do kills and pauses (signals); what remains is what
only the process can change: its wall clock and the faults of the calls it makes.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc.aio

from distlab.chaos.rpc_faults import LinkFaults, RpcFaultAction, RpcFaultRule
from distlab.common import errors
from distlab.common.clock import SystemClock
from distlab.common.errors import DistlabError, invalid_argument
from distlab.common.logs import log_event
from distlab.common.rpc import abort_on_error
from distlab.proto import chaos_pb2, chaos_pb2_grpc

logger = logging.getLogger("distlab.chaos")

# A day either way covers every clock fault worth testing (NTP steps, leap smears, a VM
# restored from a snapshot) and keeps wall times far from the codec's bounds.
CLOCK_OFFSET_MS_MAX = 86_400_000

Context = grpc.aio.ServicerContext[Any, Any]


class FaultInjectionServicer(chaos_pb2_grpc.FaultInjectionServicer):
    def __init__(self, enabled: bool, clock: SystemClock, faults: LinkFaults) -> None:
        self.enabled = enabled
        self.clock = clock
        self.faults = faults

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise DistlabError(
                errors.FAILED_PRECONDITION,
                "fault injection is off; start the node with --allow-fault-injection",
            )

    @abort_on_error
    async def SetClockOffset(
        self, request: chaos_pb2.SetClockOffsetRequest, context: Context
    ) -> chaos_pb2.SetClockOffsetResponse:
        self._check_enabled()
        if abs(request.offset_ms) > CLOCK_OFFSET_MS_MAX:
            raise invalid_argument("offset_ms", f"must be within +-{CLOCK_OFFSET_MS_MAX}")
        self.clock.wall_offset_ms = request.offset_ms
        log_event(logger, "clock_offset", offset_ms=request.offset_ms)
        return chaos_pb2.SetClockOffsetResponse()

    @abort_on_error
    async def SetRpcFaults(
        self, request: chaos_pb2.SetRpcFaultsRequest, context: Context
    ) -> chaos_pb2.SetRpcFaultsResponse:
        self._check_enabled()
        try:
            rules = [
                RpcFaultRule(
                    action=RpcFaultAction(rule.action),
                    peer=rule.peer,
                    method=rule.method,
                    probability=rule.probability or 1.0,
                    delay_ms=rule.delay_ms,
                )
                for rule in request.rules
            ]
            self.faults.set_rules(rules, seed=request.seed)
        except ValueError as error:
            raise invalid_argument("rules", str(error)) from error
        log_event(
            logger,
            "rpc_faults",
            rules=[f"{r.action}:{r.peer or '*'}/{r.method or '*'}" for r in rules],
        )
        return chaos_pb2.SetRpcFaultsResponse()


def register(server: grpc.aio.Server, servicer: FaultInjectionServicer) -> str:
    """Add the service to a server; returns its full name (for reflection)."""
    chaos_pb2_grpc.add_FaultInjectionServicer_to_server(servicer, server)
    return chaos_pb2.DESCRIPTOR.services_by_name["FaultInjection"].full_name
