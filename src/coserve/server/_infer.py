"""The inference hot path, ``/v2/models/{m}[/versions/{v}]/infer``, as plain ASGI.

Every other route goes through Starlette; this one skips its middleware, router and
Request/Response objects, which cost more per request than the batcher and the model together
(profiled under load: see benchmarks/README.md). Behaviour is the same as everywhere else: the
shared error mapping, the body limit checked before reading, the work dropped if the client
disconnects while it waits, and the latency recorded per model, version and status.

Under ``coserve serve`` the HTTP protocol (``_protocol``) reports a lost client through a scope
hook; under any other ASGI server a watcher task per request waits for ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from coserve._exceptions import BatcherClosed, CoserveError, InvalidInput, RequestTooLarge
from coserve.server._codec import decode_request_async, encode_response
from coserve.server._http import status_of
from coserve.server._protocol import CLIENT_GONE, DISCONNECT_HOOK

__all__ = ["InferenceRoute"]

logger = logging.getLogger("coserve.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, but logs and metrics do


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
    """ASGI middleware: serves inference paths itself and passes everything else to ``app``."""

    def __init__(
        self, app: ASGIApp, state: Any, observe: Callable[[str, str, int, float], None]
    ) -> None:
        self.app = app
        self.state = state
        """The server's shared state (repository, limits, readiness)."""
        self.observe = observe

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
        headers: list[tuple[bytes, bytes]] = _JSON
        # Metric labels name only models that exist: a URL must not mint a time series.
        served = ["_unknown", ""]
        try:
            if scope["method"] != "POST":
                status, body = 405, orjson.dumps({"error": "Method Not Allowed"})
            else:
                status, body, headers = await self._infer(scope, receive, model, version, served)
        except CoserveError as error:
            status = status_of(error)
            if status == 500:
                logger.error("inference on %s failed: %s", model, error, exc_info=error)
            body = orjson.dumps({"error": str(error)})
        except Exception as error:  # a bug: still answer in the protocol's shape, and log it
            logger.exception("inference on %s: internal error", model)
            status, body = 500, orjson.dumps({"error": f"internal error: {error!r}"})
        if status != _CLIENT_GONE:
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
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        state = self.state
        if not state.ready:
            raise BatcherClosed("the server is not ready (starting or shutting down)")
        handle = state.repository.get(model, version)
        served[:] = [handle.name, handle.version]
        declared, header_length = _headers(scope)
        limit = state.max_request_size
        if declared is not None and declared > limit:
            raise RequestTooLarge(
                f"the request body ({declared} bytes) is over the {limit}-byte limit"
            )
        body = await _read_body(receive, limit)
        decoded = await decode_request_async(body, header_length)
        timeout, priority = _timeout_and_priority(decoded.parameters)

        # A client that goes away while its request waits: drop the work before it runs. The
        # server's protocol (or, under another ASGI server, a watcher task) cancels this task;
        # the request then ends quietly with no response to send.
        task = asyncio.current_task()
        assert task is not None
        gone: list[bool] = []

        def client_gone() -> None:
            gone.append(True)
            task.cancel()

        watcher: asyncio.Future[None] | None = None
        if DISCONNECT_HOOK in scope:
            if scope[DISCONNECT_HOOK] is CLIENT_GONE:  # left while the body was read or decoded
                logger.debug("client went away; request for %s dropped", model)
                return _CLIENT_GONE, b"", []
            scope[DISCONNECT_HOOK] = client_gone
        else:
            watcher = asyncio.ensure_future(_disconnected(receive))
            watcher.add_done_callback(lambda w: None if w.cancelled() else client_gone())
        try:
            outputs = await handle.infer(
                decoded.inputs, timeout=timeout, priority=priority, outputs=decoded.outputs
            )
        except asyncio.CancelledError:
            if not gone:
                raise  # cancelled for another reason (shutdown): let it propagate
            task.uncancel()
            logger.debug("client went away; request for %s dropped", model)
            return _CLIENT_GONE, b"", []
        finally:
            if watcher is None:
                scope[DISCONNECT_HOOK] = None
            else:
                watcher.cancel()
        body, json_length = encode_response(
            model=handle.name,
            version=handle.version,
            request=decoded,
            outputs=outputs,
            datatypes=handle.output_datatypes,
        )
        if json_length is None:
            return 200, body, _JSON
        return (
            200,
            body,
            [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(json_length).encode()),
            ],
        )


def _headers(scope: Scope) -> tuple[int | None, int | None]:
    """Content-Length and Inference-Header-Content-Length, as numbers."""
    declared = header = None
    for key, value in scope["headers"]:
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
