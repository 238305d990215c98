"""The Open Inference Protocol's REST inference route, ``/v2/models/{m}[/versions/{v}]/infer``.

The driver that turns HTTP requests into calls of the inference service (``_service``) and its
answers into HTTP responses, in the protocol's JSON or binary tensor form (``_v2_codec``). Every
other route goes through Starlette; this one skips its middleware, router and Request/Response
objects, which cost more per request than the batcher and the model together (profiled under
load: see benchmarks/README.md). Two ways to run it:

- under ``coserve serve``, coserve's HTTP protocol (``_native_http``) creates an
  :class:`InferenceExchange` per request and feeds it the request's events (head, body, client
  gone): callbacks, no task, no ASGI messages;
- under any other ASGI server, :class:`InferenceRoute` serves the route as ASGI middleware, in
  the request's task, with a watcher task that notices a client leaving.

Either way: the body limit is checked before reading, the work is dropped if the client
disconnects while it waits, and the latency is recorded per model, version and status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from coserve._exceptions import BatcherClosed, InvalidInput, QueueFull, RequestTooLarge
from coserve.models import ModelHandle
from coserve.server._classification import check_classifiable, classify
from coserve.server._errors import CLIENT_GONE_STATUS, report
from coserve.server._service import Call, InferenceService
from coserve.server._state import ServerState
from coserve.server._v2_codec import (
    DecodedRequest,
    decode_request_async,
    encode_response,
    start_decode,
)

__all__ = [
    "JSON_HEADERS",
    "PROTOCOL",
    "Headers",
    "InferenceExchange",
    "InferenceRoute",
    "Reply",
    "match_infer_path",
]

logger = logging.getLogger("coserve.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

if TYPE_CHECKING:
    from coserve.server._dashboard import Dashboard
    from coserve.server._grpc_server import GrpcServer

PROTOCOL = "http"
"""The ``protocol`` label of this route's requests in the latency metric."""

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]

Reply = Callable[[int, Headers, bytes], None]
"""How an exchange sends its one response: ``reply(status, headers, body)``."""


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


# -- bytes to the service and back ---------------------------------------------------------------


def _lengths(headers: Iterable[tuple[bytes, bytes]]) -> tuple[int | None, int | None]:
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


def _submit(
    service: InferenceService, handle: ModelHandle, decoded: DecodedRequest, call: Call
) -> asyncio.Future[dict[str, np.ndarray]]:
    check_classifiable(handle.output_datatypes, decoded.classification)
    return service.submit(
        handle, decoded.inputs, outputs=decoded.outputs, parameters=decoded.parameters, call=call
    )


def answer(
    handle: ModelHandle, decoded: DecodedRequest, outputs: dict[str, np.ndarray]
) -> tuple[int, bytes, Headers]:
    """The 200 response to a request: status, body and headers (not Content-Length)."""
    selected, datatypes = classify(
        InferenceService.select(outputs, decoded.outputs),
        handle.output_datatypes,
        decoded.classification,
        handle.labels,
        batched=handle.backend.batched,
    )
    body, json_length = encode_response(
        model=handle.name,
        version=handle.version,
        request=decoded,
        outputs=selected,
        datatypes=datatypes,
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


def error_answer(error: BaseException, model: str) -> tuple[int, bytes, Headers]:
    """The response to a failed request, in the protocol's ``{"error": ...}`` shape."""
    failure = report(error, f"inference on {model}")
    return failure.status, orjson.dumps({"error": failure.message}), JSON_HEADERS


# -- natively, inside coserve's HTTP protocol ----------------------------------------------------


class InferenceExchange:
    """The life of one inference request on a connection, driven by the protocol's events.

    The protocol creates it once the request's head is read (so a request for an unknown model,
    or too large a body, is refused before its body arrives), then calls :meth:`body_complete`
    once, and :meth:`client_gone` if the connection is lost first. The exchange calls ``reply``
    at most once, and not after :meth:`client_gone`. It owns what it starts: the decode of a
    large body in a decoder process, then the model's future; when the client leaves first, it
    cancels them, which withdraws the request from its batcher before it runs.

    Args:
        service: The inference service.
        model: The model named by the path.
        version: The version named by the path, if any.
        headers: The request's headers, names lower-case.
        reply: Sends the response.
        on_full: Called with the model's handle, just before the reply, when the request is
            refused because that model's queue is full (the protocol then holds the connection
            back until the queue has room).
    """

    __slots__ = (
        "_call",
        "_decoded",
        "_handle",
        "_header_length",
        "_model",
        "_on_full",
        "_pending",
        "_reply",
        "_service",
        "finished",
    )

    def __init__(
        self,
        service: InferenceService,
        model: str,
        version: str | None,
        headers: list[tuple[bytes, bytes]],
        reply: Reply,
        on_full: Callable[[ModelHandle], None] | None = None,
    ) -> None:
        self._service = service
        self._model = model
        self._reply = reply
        self._on_full = on_full
        self._call = service.begin(PROTOCOL, headers)
        self._handle: ModelHandle | None = None
        self._header_length: int | None = None
        self._decoded: DecodedRequest | None = None
        self._pending: asyncio.Future[Any] | None = None
        self.finished = False
        """Whether the exchange has answered, or given up because its client left."""
        try:
            self._handle = handle = service.resolve(model, version)
            declared, self._header_length = _lengths(headers)
            service.admit(handle, declared)
        except Exception as error:
            self._fail(error)

    @property
    def handle(self) -> ModelHandle | None:
        """The model the request is for, once known."""
        return self._handle

    def body_complete(self, body: bytes) -> None:
        """The whole body is here: decode it (large JSON in a decoder process) and queue it."""
        if self.finished:
            return
        try:
            decoding = start_decode(
                body, self._header_length, max_json_size=self._service.state.limits.max_json_size
            )
        except Exception as error:
            self._fail(error)
            return
        if isinstance(decoding, DecodedRequest):
            self._start(decoding)
            return
        self._pending = decoding
        decoding.add_done_callback(self._decoded_elsewhere)

    def client_gone(self) -> None:
        """The connection was lost: withdraw the work and record the request as dropped."""
        if self.finished:
            return
        self.finished = True
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        logger.debug("client went away; request for %s dropped", self._model)
        self._service.observe(self._call, self._handle, CLIENT_GONE_STATUS)

    # -- callbacks -----------------------------------------------------------------------

    def _decoded_elsewhere(self, future: asyncio.Future[DecodedRequest]) -> None:
        error = self._outcome(future)
        if error is not None:
            self._fail(error)
        elif not self.finished:
            self._start(future.result())

    def _start(self, decoded: DecodedRequest) -> None:
        handle = self._handle
        assert handle is not None
        self._decoded = decoded
        try:
            pending = _submit(self._service, handle, decoded, self._call)
        except Exception as error:
            self._fail(error)
            return
        self._pending = pending
        pending.add_done_callback(self._answered)

    def _answered(self, future: asyncio.Future[Any]) -> None:
        error = self._outcome(future)
        if error is not None:
            self._fail(error)
            return
        if self.finished:
            return
        handle, decoded = self._handle, self._decoded
        assert handle is not None
        assert decoded is not None
        try:
            status, body, headers = answer(handle, decoded, future.result())
        except Exception as bug:  # a bug in encoding: still answer, in the protocol's shape
            self._fail(bug)
            return
        self._finish(status, headers, body)

    def _outcome(self, future: asyncio.Future[Any]) -> BaseException | None:
        """The error a finished step ended with, if the exchange still has to answer it.

        Always retrieves the exception (asyncio logs one that nobody read). A step cancelled by
        anyone but :meth:`client_gone` (an executor shutting down, say) still gets an answer.
        """
        self._pending = None
        if future.cancelled():
            if self.finished:
                return None
            return BatcherClosed("the request was cancelled before it finished")
        error = future.exception()
        return None if self.finished else error

    # -- answering -----------------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        if self.finished:
            return
        handle, on_full = self._handle, self._on_full
        # Held only for the model's own full queue (the decoder processes' is not a line).
        if isinstance(error, QueueFull) and on_full and handle is not None and handle.queue_full:
            on_full(handle)
        try:
            status, body, headers = error_answer(error, self._model)
        except Exception:  # never leave the client without an answer
            logger.exception("inference on %s: cannot describe an error", self._model)
            status, body, headers = 500, b'{"error": "internal error"}', JSON_HEADERS
        self._finish(status, headers, body)

    def _finish(self, status: int, headers: Headers, body: bytes) -> None:
        if self.finished:
            return
        self.finished = True
        self._reply(status, headers, body)
        self._service.observe(self._call, self._handle, status)


# -- under any ASGI server -----------------------------------------------------------------------


class InferenceRoute:
    """ASGI middleware: serves inference paths itself and passes everything else to ``app``.

    Also what coserve's HTTP protocol finds as the app, to serve the route natively.
    """

    def __init__(self, app: ASGIApp, service: InferenceService) -> None:
        self.app = app
        self.service = service
        """The inference service the route drives."""
        self.grpc: GrpcServer | None = None
        """The gRPC server beside it, if ``create_app`` was asked for one."""
        self.dashboard: Dashboard | None = None
        """The live dashboard's streams, which a shutdown ends (``create_app`` sets it)."""

    @property
    def state(self) -> ServerState:
        """The server's shared state (repository, limits, readiness)."""
        return self.service.state

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
        call = self.service.begin(PROTOCOL, scope["headers"])
        served: list[ModelHandle] = []
        try:
            if scope["method"] != "POST":
                status, body, headers = (
                    405,
                    orjson.dumps({"error": "Method Not Allowed"}),
                    JSON_HEADERS,
                )
            else:
                status, body, headers = await self._infer(
                    scope, receive, model, version, served, call
                )
        except Exception as error:
            status, body, headers = error_answer(error, model)
        if status != CLIENT_GONE_STATUS:
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        self.service.observe(call, served[0] if served else None, status)

    async def _infer(
        self,
        scope: Scope,
        receive: Receive,
        model: str,
        version: str | None,
        served: list[ModelHandle],
        call: Call,
    ) -> tuple[int, bytes, Headers]:
        service = self.service
        handle = service.resolve(model, version)
        served.append(handle)
        declared, header_length = _lengths(scope["headers"])
        service.admit(handle, declared)
        limits = service.state.limits
        body = await _read_body(receive, limits.max_request_size)
        decoded = await decode_request_async(
            body, header_length, max_json_size=limits.max_json_size
        )
        future = _submit(service, handle, decoded, call)
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
        return answer(handle, decoded, outputs)


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
