"""The one error table of distlab: every refusal, its gRPC status, and whether it is definite.

Following Maelstrom's error model, an error is *definite* when the operation certainly did not
take effect (bad input, a full queue before anything was written) and *indefinite* when it may
have (a timeout, a node that failed after writing). "When in doubt, indefinite": a client may
retry a definite failure freely, but must treat an indefinite one as "maybe happened", and a
chaos checker records it as ``info``, not ``fail``.

This module is pure: the gRPC status is named by its ``grpc.StatusCode`` member name, and the
service shell (``distlab.common.rpc``) maps it, so cores can raise these without importing grpc.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorKind:
    code: str  # stable machine-readable name, sent to clients in ErrorDetail.code
    status: str  # name of the grpc.StatusCode member that carries it
    definite: bool  # True: the operation certainly did not take effect
    meaning: str


INVALID_ARGUMENT = ErrorKind(
    "invalid_argument", "INVALID_ARGUMENT", True, "the request is malformed or breaks a limit"
)
NOT_FOUND = ErrorKind("not_found", "NOT_FOUND", True, "the key or resource does not exist")
RESOURCE_EXHAUSTED = ErrorKind(
    "resource_exhausted", "RESOURCE_EXHAUSTED", True, "a bounded queue or budget is full; shed"
)
FAILED_PRECONDITION = ErrorKind(
    "failed_precondition", "FAILED_PRECONDITION", True, "the system is not in a state to do it"
)
UNAVAILABLE = ErrorKind(
    "unavailable", "UNAVAILABLE", True, "the node is not serving (starting or stopping)"
)
# What a client concludes when the transport fails with no answer from the server (connection
# refused or reset mid-call): the request may or may not have arrived.
UNREACHABLE = ErrorKind(
    "unreachable", "UNAVAILABLE", False, "the node could not be reached; it may have happened"
)
DEADLINE_EXCEEDED = ErrorKind(
    "deadline_exceeded", "DEADLINE_EXCEEDED", False, "the deadline passed; it may have happened"
)
# Quorum outcomes of the replicated store (Dynamo 4.5). Knowing before writing anything that too
# few replicas are alive is definite; failing after the coordinator's own durable write is not:
# Dynamo has no rollback, so the value may survive there and spread by read repair.
NOT_ENOUGH_REPLICAS = ErrorKind(
    "not_enough_replicas",
    "UNAVAILABLE",
    True,
    "fewer live replicas than the quorum needs; nothing was written",
)
WRITE_QUORUM_NOT_REACHED = ErrorKind(
    "write_quorum_not_reached",
    "UNAVAILABLE",
    False,
    "fewer than W replicas acknowledged; the write may survive on those that did",
)
READ_QUORUM_NOT_REACHED = ErrorKind(
    "read_quorum_not_reached", "UNAVAILABLE", True, "fewer than R replicas answered"
)
STORAGE_FAILED = ErrorKind(
    "storage_failed",
    "UNAVAILABLE",
    False,
    "the node's disk failed (e.g. fsync returned EIO); the node stops serving writes",
)

ERROR_KINDS: tuple[ErrorKind, ...] = (
    INVALID_ARGUMENT,
    NOT_FOUND,
    RESOURCE_EXHAUSTED,
    FAILED_PRECONDITION,
    UNAVAILABLE,
    UNREACHABLE,
    DEADLINE_EXCEEDED,
    NOT_ENOUGH_REPLICAS,
    WRITE_QUORUM_NOT_REACHED,
    READ_QUORUM_NOT_REACHED,
    STORAGE_FAILED,
)
KIND_BY_CODE: dict[str, ErrorKind] = {kind.code: kind for kind in ERROR_KINDS}


class DistlabError(Exception):
    """A refusal described by an ErrorKind, optionally naming the request field at fault."""

    def __init__(self, kind: ErrorKind, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field

    @property
    def definite(self) -> bool:
        return self.kind.definite

    def __str__(self) -> str:
        prefix = f"{self.field}: " if self.field else ""
        return f"{prefix}{self.message}"


def invalid_argument(field: str, why: str) -> DistlabError:
    return DistlabError(INVALID_ARGUMENT, why, field=field)
