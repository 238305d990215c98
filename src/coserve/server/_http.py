"""What every HTTP endpoint shares: the error-to-status mapping, JSON responses, body limits."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from coserve._exceptions import (
    BatcherClosed,
    CoserveError,
    DeadlineExceeded,
    GraphStopped,
    InvalidInput,
    ModelNotFound,
    QueueFull,
    RequestTooLarge,
    UnmatchedSignal,
)

__all__ = ["endpoint", "error_response", "json_response", "read_body", "status_of"]

logger = logging.getLogger("coserve.server")

_STATUS: list[tuple[type[Exception], int]] = [
    (InvalidInput, 400),
    (UnmatchedSignal, 504),
    (GraphStopped, 503),
    (ModelNotFound, 404),
    (QueueFull, 429),
    (BatcherClosed, 503),
    (DeadlineExceeded, 504),
]


def status_of(error: Exception) -> int:
    """The HTTP status an error maps to (500 only for failures of the model itself)."""
    if isinstance(error, RequestTooLarge):
        return 413
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response encoded with orjson (numpy values included)."""
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status, headers, media_type="application/json")


def error_response(message: str, status: int) -> Response:
    """The protocol's error body: ``{"error": "..."}``."""
    return json_response({"error": message}, status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise RequestTooLarge(
                    f"the request body ({declared} bytes) is over the {limit}-byte limit"
                )
        except ValueError:
            raise InvalidInput(f"bad Content-Length header {declared!r}") from None
    chunks = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise RequestTooLarge(f"the request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def endpoint(
    fn: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Map coserve's errors to protocol error responses, the same way everywhere."""

    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except CoserveError as error:
            status = status_of(error)
            if status == 500:
                logger.error("request %s failed: %s", request.url.path, error, exc_info=error)
            return error_response(str(error), status)
        except ClientDisconnect:
            return Response(status_code=499)  # the client left mid-body: nothing to answer
        except Exception as error:  # a bug: still answer in the protocol's shape, and log it
            logger.exception("request %s: internal error", request.url.path)
            return error_response(f"internal error: {error!r}", 500)

    return wrapped
