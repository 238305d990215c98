"""The inference route, ``/v2/models/{m}[/versions/{v}]/infer``: its steps, and plain ASGI.

Every other route goes through Starlette; this one skips its middleware, router and
Request/Response objects, which cost more per request than the batcher and the model together
(profiled under load: see benchmarks/README.md). :class:`InferenceRoute` holds the steps of a
request, each plain code that raises ``CoserveError``: :meth:`~InferenceRoute.open` (readiness,
the model, its queue, the body's declared size), :meth:`~InferenceRoute.start` (queue the
decoded request), :meth:`~InferenceRoute.answer` and :meth:`~InferenceRoute.error_answer` (the
response), and ``observe`` (the latency metric). Two paths run them:

- under ``coserve serve`` the HTTP protocol serves the route itself, with callbacks and no task
  per request (``_exchange``);
- under any other ASGI server, :meth:`InferenceRoute.__call__` runs them in the request's task,
  with a watcher task that notices a client leaving.

Either way: the body limit is checked before reading, the work is dropped if the client
disconnects while it waits, and the latency is recorded per model, version and status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import numpy as np
import orjson

from coserve._exceptions import BatcherClosed, CoserveError, InvalidInput, RequestTooLarge
from coserve.models import ModelHandle
from coserve.server._codec import DecodedRequest, decode_request_async, encode_response
from coserve.server._http import status_of

__all__ = ["CLIENT_GONE_STATUS", "JSON_HEADERS", "InferenceRoute", "match_infer_path"]

logger = logging.getLogger("coserve.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
CLIENT_GONE_STATUS = 499
"""nginx's "client closed request": never sent, but recorded in the latency metric."""


def match_infer_path(path: str) -> tuple[str, str | None] | None:
    """``(model, version)`` for an inference path, else None; no regex on the hot path."""
    parts = path.split("/")
    if parts[-1] != "infer" or parts[1:3] != ["v2", "models"]:
        return None
    if len(parts) == 5:
        return parts[3], None
    if len(parts) == 7 and parts[4] == "versions":
        return parts[3], parts[5]
    return None


def _timeout_and_priority(parameters: dict[str, Any]) -> tuple[float | None, int]:
    """Triton's schedule-policy parameters: ``timeout`` in µs, ``priority`` (1 is the highest)."""
    timeout = parameters.get("timeout")
    priority = parameters.get("priority", 0)
    if timeout is not None and (type(timeout) is not int or timeout <= 0):
        raise InvalidInput(f"parameter 'timeout' must be a positive integer of µs, got {timeout!r}")
    if type(priority) is not int or priority < 0:
        raise InvalidInput(f"parameter 'priority' must be a non-negative integer, got {priority!r}")
    # Lower value is more urgent; 0 means "default", which ranks with 1.
    return (timeout / 1e6 if timeout else None), -max(priority, 1)


class InferenceRoute:
    """ASGI middleware: serves inference paths itself and passes everything else to ``app``.

    Also the steps that coserve's HTTP protocol runs to serve the route without ASGI.
    """

    def __init__(
        self, app: ASGIApp, state: Any, observe: Callable[[str, str, int, float], None]
    ) -> None:
        self.app = app
        self.state = state
        """The server's shared state (repository, limits, readiness)."""
        self.observe = observe
        """Record a request's latency: ``observe(model, version, status, seconds)``."""

    # -- the steps ---------------------------------------------------------------------------

    def open(
        self, model: str, version: str | None, headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[ModelHandle, int | None]:
        """The model a request is for, and its Inference-Header-Content-Length.

        :meth:`resolve`, then :meth:`admit`.
        """
        handle = self.resolve(model, version)
        return handle, self.admit(handle, headers)

    def resolve(self, model: str, version: str | None) -> ModelHandle:
        """The model a request is for.

        Raises:
            BatcherClosed: The server is not serving (starting, or its models unloading).
            ModelNotFound: No such model or version.
        """
        state = self.state
        if not state.accepting:
            raise BatcherClosed("the server is not serving (starting, or its models unloading)")
        handle: ModelHandle = state.repository.get(model, version)
        return handle

    def admit(self, handle: ModelHandle, headers: Iterable[tuple[bytes, bytes]]) -> int | None:
        """Check a request's head against its model's queue and the limits, before its body.

        Returns its Inference-Header-Content-Length, if any.

        Raises:
            QueueFull: The model's queue is full (so the body need not be read or decoded).
            InvalidInput: A length header is not a number.
            RequestTooLarge: The declared body is over the server's limit.
        """
        handle.refuse_if_full()
        declared, header_length = _headers(headers)
        limit = self.state.max_request_size
        if declared is not None and declared > limit:
            raise RequestTooLarge(
                f"the request body ({declared} bytes) is over the {limit}-byte limit"
            )
        return header_length

    def start(
        self, handle: ModelHandle, decoded: DecodedRequest
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue a decoded request on its model; cancel the future to withdraw it.

        Raises:
            InvalidInput: Bad parameters, inputs or requested outputs.
            QueueFull: The model's queue is full.
            BatcherClosed: The model is shutting down.
        """
        timeout, priority = _timeout_and_priority(decoded.parameters)
        handle.check_outputs(decoded.outputs)
        return handle.infer_nowait(decoded.inputs, timeout=timeout, priority=priority)

    def answer(
        self, handle: ModelHandle, decoded: DecodedRequest, outputs: dict[str, np.ndarray]
    ) -> tuple[int, bytes, Headers]:
        """The 200 response to a request: status, body and headers (not Content-Length)."""
        if decoded.outputs is not None:
            outputs = {name: outputs[name] for name in decoded.outputs}
        body, json_length = encode_response(
            model=handle.name,
            version=handle.version,
            request=decoded,
            outputs=outputs,
            datatypes=handle.output_datatypes,
        )
        if json_length is None:
            return 200, body, JSON_HEADERS
        return (
            200,
            body,
            [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(json_length).encode()),
            ],
        )

    def error_answer(self, error: Exception, model: str) -> tuple[int, bytes, Headers]:
        """The response to a failed request, in the protocol's ``{"error": ...}`` shape.

        A ``CoserveError`` maps to its status; anything else is a bug: logged, and a 500.
        """
        if isinstance(error, CoserveError):
            status = status_of(error)
            if status == 500:
                logger.error("inference on %s failed: %s", model, error, exc_info=error)
            return status, orjson.dumps({"error": str(error)}), JSON_HEADERS
        logger.error("inference on %s: internal error", model, exc_info=error)
        return 500, orjson.dumps({"error": f"internal error: {error!r}"}), JSON_HEADERS

    # -- the ASGI path -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = match_infer_path(scope["path"])
            if target is not None:
                await self._serve(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        start = time.perf_counter()
        # Metric labels name only models that exist: a URL must not mint a time series.
        served = ["_unknown", ""]
        try:
            if scope["method"] != "POST":
                status, body, headers = (
                    405,
                    orjson.dumps({"error": "Method Not Allowed"}),
                    JSON_HEADERS,
                )
            else:
                status, body, headers = await self._infer(scope, receive, model, version, served)
        except Exception as error:
            status, body, headers = self.error_answer(error, model)
        if status != CLIENT_GONE_STATUS:
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        self.observe(served[0], served[1], status, time.perf_counter() - start)

    async def _infer(
        self, scope: Scope, receive: Receive, model: str, version: str | None, served: list[str]
    ) -> tuple[int, bytes, Headers]:
        handle, header_length = self.open(model, version, scope["headers"])
        served[:] = [handle.name, handle.version]
        body = await _read_body(receive, self.state.max_request_size)
        decoded = await decode_request_async(
            body, header_length, max_json_size=self.state.limits.max_json_size
        )
        future = self.start(handle, decoded)
        # A client that goes away while its request waits: drop the work before it runs. The
        # watcher cancels this task, which withdraws the request; it then ends quietly.
        task = asyncio.current_task()
        assert task is not None
        gone: list[bool] = []

        def client_gone(watcher: asyncio.Future[None]) -> None:
            if not watcher.cancelled():
                gone.append(True)
                task.cancel()

        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(client_gone)
        try:
            outputs = await future
        except asyncio.CancelledError:
            if not gone:
                raise  # cancelled for another reason (shutdown): let it propagate
            task.uncancel()
            logger.debug("client went away; request for %s dropped", model)
            return CLIENT_GONE_STATUS, b"", []
        finally:
            watcher.cancel()
        return self.answer(handle, decoded, outputs)


def _headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[int | None, int | None]:
    """Content-Length and Inference-Header-Content-Length, as numbers."""
    declared = header = None
    for key, value in headers:
        if key == b"content-length":
            declared = _number(key, value)
        elif key == b"inference-header-content-length":
            header = _number(key, value)
    return declared, header


def _number(key: bytes, value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(
            f"bad {key.decode()} header {value.decode(errors='replace')!r}"
        ) from None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client went away while sending the body")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise RequestTooLarge(f"the request body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
