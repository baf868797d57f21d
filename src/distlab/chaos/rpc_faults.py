"""RPC-level faults between nodes, injected in the caller's gRPC channel (no root needed).

Two kinds, both applied by one client interceptor on every channel a node opens to a peer:

- **Cut links**: a node told to block a peer fails every call it makes to that peer at once
  with UNAVAILABLE, as if the connection were refused; telling both ends cuts the link both
  ways. This is the "connect/disconnect" of MIT 6.824's labrpc.
- **Gray failures** (Huang et al., "Gray Failure: The Achilles' Heel of Cloud-Scale Systems",
  HotOS 2017): rules that match calls by peer and RPC name and fail, drop, lose the reply of,
  delay or duplicate them, each with a probability. A node slow only for some peers, a link that
  loses only replies (the caller times out although the callee did the work, the ambiguity that
  makes an error indefinite), a retransmitted request: faults a network proxy cannot aim at
  one RPC type.

The chaos harness sets both through the FaultInjection service (``distlab.chaos.injection``);
the TCP proxies of ``distlab.chaos.netproxy`` do the packet-like faults.

One-way messages written on a long-lived stream (Raft's node-to-node transport) have no call of
their own to intercept: their sender asks ``LinkFaults.message_fate`` what becomes of each batch
instead, and the same rules apply to it as to a call of that RPC's name.

What it leaves out: faults on the serving side, and calls already in flight when a rule changes
(they finish under the old rules).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import grpc
import grpc.aio

# Addresses one node may block: a partition of the largest cluster we run has fewer peers.
BLOCKED_PEERS_MAX = 256
# Rules per node: a schedule states a handful; more would be a mistake in the harness.
RPC_FAULT_RULES_MAX = 64
# A delay longer than the longest deadline a node accepts would only hold the call.
RPC_FAULT_DELAY_MS_MAX = 60_000
# How long a dropped call without a deadline waits before failing: every call we make has a
# deadline, so this is a backstop, not a setting.
DROPPED_CALL_WAIT_S_MAX = 60.0


class RpcFaultAction(StrEnum):
    FAIL = "fail"
    DROP = "drop"
    DROP_REPLY = "drop_reply"
    DELAY = "delay"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class RpcFaultRule:
    action: RpcFaultAction
    peer: str = ""  # host:port; empty: every peer
    method: str = ""  # the RPC's name, e.g. "ReplicaPut"; empty: every RPC
    probability: float = 1.0
    delay_ms: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.action, RpcFaultAction):
            raise ValueError(f"action must be one of {[a.value for a in RpcFaultAction]}")
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], got {self.probability}")
        if not 0 <= self.delay_ms <= RPC_FAULT_DELAY_MS_MAX:
            raise ValueError(f"delay_ms must be in [0, {RPC_FAULT_DELAY_MS_MAX}]")

    def matches(self, peer: str, method: str) -> bool:
        return (not self.peer or self.peer == peer) and (not self.method or self.method == method)


class LinkFaults:
    """The faults of the calls this node makes, by peer address. Shared by every channel."""

    def __init__(self) -> None:
        self._blocked: frozenset[str] = frozenset()
        self._rules: tuple[RpcFaultRule, ...] = ()
        self._random = random.Random(0)

    @property
    def blocked(self) -> frozenset[str]:
        return self._blocked

    @property
    def rules(self) -> tuple[RpcFaultRule, ...]:
        return self._rules

    def set_blocked(self, addresses: Iterable[str]) -> None:
        blocked = frozenset(addresses)
        if len(blocked) > BLOCKED_PEERS_MAX:
            raise ValueError(f"at most {BLOCKED_PEERS_MAX} blocked peers, got {len(blocked)}")
        self._blocked = blocked

    def set_rules(self, rules: Iterable[RpcFaultRule], seed: int = 0) -> None:
        new_rules = tuple(rules)
        if len(new_rules) > RPC_FAULT_RULES_MAX:
            raise ValueError(f"at most {RPC_FAULT_RULES_MAX} rules, got {len(new_rules)}")
        self._rules = new_rules
        self._random = random.Random(seed)

    def is_blocked(self, address: str) -> bool:
        return address in self._blocked

    def rule_for(self, address: str, method: str) -> RpcFaultRule | None:
        """The first rule matching this call, if its probability draw says it applies."""
        for rule in self._rules:
            if rule.matches(address, method):
                if rule.probability >= 1.0 or self._random.random() < rule.probability:
                    return rule
                return None
        return None


@dataclass(frozen=True, slots=True)
class MessageFate:
    """What becomes of one batch of one-way messages on a stream: ``copies`` of it are
    delivered (0: lost, 2: duplicated) after ``delay_s``."""

    copies: int
    delay_s: float = 0.0


DELIVERED = MessageFate(copies=1)


def message_fate(faults: LinkFaults, address: str, method: str) -> MessageFate:
    """The rules read for a one-way message: a cut link, a failed or a dropped call lose it; a
    lost reply loses nothing (there is none); a delay holds it, and everything behind it on the
    stream, as a slow link would; a duplicate delivers it twice."""
    if faults.is_blocked(address):
        return MessageFate(copies=0)
    rule = faults.rule_for(address, method)
    if rule is None or rule.action is RpcFaultAction.DROP_REPLY:
        return DELIVERED
    if rule.action in (RpcFaultAction.FAIL, RpcFaultAction.DROP):
        return MessageFate(copies=0)
    if rule.action is RpcFaultAction.DELAY:
        return MessageFate(copies=1, delay_s=rule.delay_ms / 1000)
    return MessageFate(copies=2)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code=code,
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(),
        details=details,
    )


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method: object = details.method  # bytes at run time in grpc.aio, whatever the stubs say
    text = method.decode() if isinstance(method, bytes) else str(method)
    return text.rsplit("/", 1)[-1]


class LinkFaultInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Applies a node's LinkFaults to the unary calls of one channel (one peer)."""

    def __init__(self, faults: LinkFaults, address: str) -> None:
        self.faults = faults
        self.address = address

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if self.faults.is_blocked(self.address):
            raise _rpc_error(
                grpc.StatusCode.UNAVAILABLE, f"link to {self.address} cut by fault injection"
            )
        method = _method_name(client_call_details)
        rule = self.faults.rule_for(self.address, method)
        if rule is None:
            return await continuation(client_call_details, request)
        timeout_s = client_call_details.timeout
        wait_s = DROPPED_CALL_WAIT_S_MAX if timeout_s is None else timeout_s
        lost = f"{method} to {self.address}: {rule.action} by fault injection"
        if rule.action is RpcFaultAction.FAIL:
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE, lost)
        if rule.action is RpcFaultAction.DROP:
            await asyncio.sleep(wait_s)
            raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, lost)
        if rule.action is RpcFaultAction.DROP_REPLY:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await (await continuation(client_call_details, request))
            await asyncio.sleep(max(0.0, wait_s - (loop.time() - started)))
            raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, lost)
        if rule.action is RpcFaultAction.DELAY:
            delay_s = rule.delay_ms / 1000
            if timeout_s is not None and delay_s >= timeout_s:
                await asyncio.sleep(timeout_s)
                raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, lost)
            await asyncio.sleep(delay_s)
            remaining_s = None if timeout_s is None else timeout_s - delay_s
            return await continuation(_with_timeout(client_call_details, remaining_s), request)
        # DUPLICATE: the first copy's outcome is ignored, as a retransmission's would be.
        try:
            await (await continuation(client_call_details, request))
        except grpc.aio.AioRpcError:
            pass
        return await continuation(client_call_details, request)


def _with_timeout(
    details: grpc.aio.ClientCallDetails, timeout_s: float | None
) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=timeout_s,
        metadata=details.metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )
