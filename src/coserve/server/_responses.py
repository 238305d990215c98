"""What the Starlette endpoints share: JSON responses, the error shape, the body limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from coserve._exceptions import InvalidInput, RequestTooLarge
from coserve.server._errors import CLIENT_GONE_STATUS, report

__all__ = ["endpoint", "error_response", "json_response", "read_body"]


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
    """Answer an endpoint's errors in the protocol's shape, with ``_errors``' statuses."""

    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except ClientDisconnect:  # the client left mid-body: nothing to answer
            return Response(status_code=CLIENT_GONE_STATUS)
        except Exception as error:  # the status by _errors' table; a bug is a logged 500
            failure = report(error, f"request {request.url.path}")
            return error_response(failure.message, failure.status)

    return wrapped
