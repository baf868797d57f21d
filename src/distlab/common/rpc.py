"""The gRPC edge shared by every service: errors to statuses and back, and deadline caps.

Server side, a handler raises ``DistlabError``; ``abort_on_error`` turns it into the status the
error table names, with an ``ErrorDetail`` (code, field, definite) in the trailing metadata.
Client side, ``error_from_rpc`` turns any ``grpc.RpcError`` back into a ``DistlabError``, so
callers branch on ``error.kind`` and ``error.definite`` and never on gRPC internals.

``DeadlineCapInterceptor`` bounds every unary call by min(client deadline, server cap): a call
without a deadline cannot hold a slot forever (CHAOS-MATRIX row 20: "server caps deadlines").
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar, cast

import grpc
import grpc.aio

from distlab.common import errors
from distlab.common.errors import DistlabError, ErrorKind
from distlab.common.limits import Limits
from distlab.proto import common_pb2

ERROR_DETAIL_METADATA_KEY = "distlab-error-bin"  # "-bin": gRPC carries the value as raw bytes

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
MethodT = TypeVar("MethodT", bound=Callable[..., Awaitable[Any]])


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: DistlabError) -> NoReturn:
    detail = common_pb2.ErrorDetail(
        code=error.kind.code, field=error.field, definite=error.definite, message=error.message
    )
    await context.abort(
        grpc.StatusCode[error.kind.status],
        str(error),
        trailing_metadata=((ERROR_DETAIL_METADATA_KEY, detail.SerializeToString()),),
    )


def deadline_s(context: grpc.aio.ServicerContext[Any, Any], limits: Limits) -> float:
    """What is left of the call's deadline, capped by the node's limit (a call with none gets
    the cap): the budget a servicer hands on to the work it starts."""
    remaining = context.time_remaining()
    cap_s = limits.deadline_ms_max / 1000
    return cap_s if remaining is None else max(0.0, min(remaining, cap_s))


def abort_on_error(method: MethodT) -> MethodT:
    """Decorate a servicer method so a DistlabError becomes its gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except DistlabError as error:
            await abort_with(context, error)

    return cast(MethodT, wrapper)


def error_from_rpc(error: grpc.RpcError) -> DistlabError:
    """The DistlabError a failed call stands for; unknown statuses count as indefinite."""
    # Both grpc.aio.AioRpcError and the sync channel's errors (grpc.Call) carry these methods;
    # grpc.RpcError itself declares none of them.
    call: Any = error
    code: grpc.StatusCode = call.code()
    details: str = call.details() or code.name
    trailing: tuple[tuple[str, str | bytes], ...] = call.trailing_metadata() or ()
    for key, value in trailing:
        if key == ERROR_DETAIL_METADATA_KEY and isinstance(value, bytes):
            detail = common_pb2.ErrorDetail.FromString(value)
            kind = errors.KIND_BY_CODE.get(detail.code)
            if kind is not None:
                return DistlabError(kind, detail.message, field=detail.field)
    return DistlabError(_kind_for_status(code), details)


def _kind_for_status(code: grpc.StatusCode) -> ErrorKind:
    if code is grpc.StatusCode.UNAVAILABLE:
        # No ErrorDetail: the transport failed, not the server (connection refused, reset).
        return errors.UNREACHABLE
    for kind in errors.ERROR_KINDS:
        if kind.status == code.name and kind.definite is False:
            return kind
    for kind in errors.ERROR_KINDS:
        if kind.status == code.name:
            return kind
    return ErrorKind(code.name.lower(), code.name, False, "unexpected status")


class WrappedHandlers:
    """The unary handlers a server interceptor wrapped, made once per method rather than once
    per call: grpc asks the interceptor for every call, and building the wrapper each time is a
    measurable share of a small call's cost."""

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], Any]] = {}

    def get(
        self,
        method: str,
        handler: grpc.RpcMethodHandler[Any, Any],
        wrap: Callable[[Handler, str], Handler],
    ) -> grpc.RpcMethodHandler[Any, Any]:
        cached = self._by_method.get(method)
        if cached is not None and cached[0] is handler:
            wrapped: grpc.RpcMethodHandler[Any, Any] = cached[1]
            return wrapped
        # On a grpc.aio server the unary handler is a coroutine function, whatever the stubs say.
        inner: Handler = handler.unary_unary  # type: ignore[assignment]
        wrapped = grpc.unary_unary_rpc_method_handler(
            wrap(inner, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._by_method[method] = (handler, wrapped)
        return wrapped


class DeadlineCapInterceptor(grpc.aio.ServerInterceptor):
    """Runs each unary handler under min(the client's deadline, deadline_ms_max)."""

    def __init__(self, deadline_ms_max: int) -> None:
        self.deadline_s_max = deadline_ms_max / 1000
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
        return self._handlers.get(handler_call_details.method, handler, self._bound)

    def _bound(self, inner: Handler, method: str) -> Handler:
        cap_s = self.deadline_s_max

        async def bounded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            remaining_s = context.time_remaining()
            if remaining_s is not None and remaining_s <= cap_s:
                # grpc cancels the handler at the client's deadline itself: no timer needed.
                return await inner(request, context)
            try:
                async with asyncio.timeout(cap_s):
                    return await inner(request, context)
            except TimeoutError:
                await abort_with(
                    context,
                    DistlabError(
                        errors.DEADLINE_EXCEEDED,
                        f"gave up after the server cap of {cap_s * 1000:.0f} ms",
                    ),
                )

        return bounded
