"""What both gRPC drivers share: method handlers whose messages never fail outside the driver.

Also how they end a call with a failure (:func:`abort`) and answer an RPC they do not serve
(:func:`unimplemented`).

grpcio's asyncio server answers ``UNKNOWN`` (and logs a traceback) when a request's bytes do not
parse, since the deserializer raises before any handler runs. A client's malformed message is
its mistake, so here parsing never raises: undecodable bytes become :class:`Undecodable`, which
the handler answers ``INVALID_ARGUMENT`` (or, on a stream, an error for that one message).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from coserve._exceptions import Unsupported
from coserve.server._errors import Failure, report

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

__all__ = ["Undecodable", "abort", "parser", "unary", "unimplemented"]


class Undecodable:
    """A request whose bytes are not a valid message of its type."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message
        """What was wrong, for the client."""


def parser(message_class: Any) -> Callable[[bytes], Any]:
    """A deserializer for ``message_class`` that returns :class:`Undecodable` instead of raising."""
    from_string = message_class.FromString
    name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return from_string(data)
        except DecodeError as error:
            return Undecodable(f"the request is not a valid {name} message: {error}")

    return parse


def unary(
    method: Callable[[Any, Context], Awaitable[Any]], request_class: Any, response_class: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary method's handler: an undecodable request is ``INVALID_ARGUMENT``."""

    async def handle(request: Any, context: Context) -> Any:
        if type(request) is Undecodable:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await method(request, context)

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=parser(request_class),
        response_serializer=response_class.SerializeToString,
    )


async def abort(context: Context, failure: Failure, *, limit: int | None = None) -> None:
    """End the call with ``failure``'s gRPC status (its message cut at ``limit`` characters)."""
    await context.abort(grpc.StatusCode[failure.grpc_code], failure.message[:limit])


def unimplemented(
    method: str, served: str, *, limit: int | None = None
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that answers UNIMPLEMENTED for ``method``, naming what is ``served``."""
    error = Unsupported(f"{method} is not implemented by coserve; it serves {served}")

    async def handle(request: bytes, context: Context) -> bytes:
        await abort(context, report(error, method), limit=limit)
        raise AssertionError("abort returned")  # abort raises; for the type checker

    return grpc.unary_unary_rpc_method_handler(handle)
