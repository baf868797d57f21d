"""RPC-level faults between nodes, injected in the caller's gRPC channel (no root needed).

Today one fault: a cut link. A node told to block a peer fails every call it makes to that peer
at once with UNAVAILABLE, as if the connection were refused; telling both ends cuts the link
both ways, and cutting every link between two groups of nodes is a partition. This is the
"connect/disconnect" of MIT 6.824's labrpc, done where gRPC lets us intervene: a client
interceptor. Gray failures (delays, dropped replies, duplicates per RPC type) will grow here
for the chaos harness.

What it leaves out: the peer still reaches *us* unless it is told too, and calls already in
flight when a link is cut finish normally.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

# Addresses one node may block: a partition of the largest cluster we run has fewer peers.
BLOCKED_PEERS_MAX = 256


class LinkFaults:
    """The peers this node may not call, by address. Shared by every channel of the node."""

    def __init__(self) -> None:
        self._blocked: frozenset[str] = frozenset()

    @property
    def blocked(self) -> frozenset[str]:
        return self._blocked

    def set_blocked(self, addresses: Iterable[str]) -> None:
        blocked = frozenset(addresses)
        if len(blocked) > BLOCKED_PEERS_MAX:
            raise ValueError(f"at most {BLOCKED_PEERS_MAX} blocked peers, got {len(blocked)}")
        self._blocked = blocked

    def is_blocked(self, address: str) -> bool:
        return address in self._blocked


class CutLinkInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Fails a unary call at once when the channel's peer is blocked."""

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
            raise grpc.aio.AioRpcError(
                code=grpc.StatusCode.UNAVAILABLE,
                initial_metadata=grpc.aio.Metadata(),
                trailing_metadata=grpc.aio.Metadata(),
                details=f"link to {self.address} cut by fault injection",
            )
        return await continuation(client_call_details, request)
