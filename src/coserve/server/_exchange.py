"""One inference request served inside coserve's HTTP protocol, by callbacks instead of a task.

Profiling ``coserve serve`` under load (benchmarks/README.md) put most of the event loop's time
per request in the machinery around the work rather than the work: a task per request, ASGI's
message dicts, and uvicorn's per-request ``send``/``receive`` coroutines. On the inference route
the protocol skips all of that: it hands the request to an :class:`InferenceExchange`, which runs
the same steps as the ASGI path (:class:`~coserve.server._infer.InferenceRoute`) as the request's
events arrive: headers, body, the model's future, or the client leaving.

The exchange owns what it starts: the decode of a large body in a decoder process, then the model's
future. When the client leaves first, it cancels them, which withdraws the request from its
batcher before it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from coserve._exceptions import BatcherClosed, QueueFull
from coserve.models import ModelHandle
from coserve.server._codec import DecodedRequest, start_decode
from coserve.server._infer import CLIENT_GONE_STATUS, JSON_HEADERS, Headers, InferenceRoute

__all__ = ["InferenceExchange", "Reply"]

logger = logging.getLogger("coserve.server")

Reply = Callable[[int, Headers, bytes], None]
"""How an exchange sends its one response: ``reply(status, headers, body)``."""


class InferenceExchange:
    """The life of one inference request on a connection, driven by the protocol's events.

    The protocol creates it once the request's head is read (so a request for an unknown model,
    or too large a body, is refused before its body arrives), then calls :meth:`body_complete`
    once, and :meth:`client_gone` if the connection is lost first. The exchange calls ``reply``
    at most once, and not after :meth:`client_gone`.

    Args:
        route: The inference steps and the server's state.
        model: The model named by the path.
        version: The version named by the path, if any.
        headers: The request's headers, names lower-case.
        reply: Sends the response.
        on_full: Called with the model's handle, just before the reply, when the request is
            refused because that model's queue is full (the protocol then holds the connection
            back until the queue has room).
    """

    __slots__ = (
        "_decoded",
        "_handle",
        "_header_length",
        "_model",
        "_on_full",
        "_pending",
        "_reply",
        "_route",
        "_started",
        "finished",
    )

    def __init__(
        self,
        route: InferenceRoute,
        model: str,
        version: str | None,
        headers: list[tuple[bytes, bytes]],
        reply: Reply,
        on_full: Callable[[ModelHandle], None] | None = None,
    ) -> None:
        self._route = route
        self._model = model
        self._reply = reply
        self._on_full = on_full
        self._started = time.perf_counter()
        self._handle: ModelHandle | None = None
        self._header_length: int | None = None
        self._decoded: DecodedRequest | None = None
        self._pending: asyncio.Future[Any] | None = None
        self.finished = False
        """Whether the exchange has answered, or given up because its client left."""
        try:
            self._handle = route.resolve(model, version)
            self._header_length = route.admit(self._handle, headers)
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
                body, self._header_length, max_json_size=self._route.state.limits.max_json_size
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
        self._observe(CLIENT_GONE_STATUS)

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
            pending = self._route.start(handle, decoded)
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
            status, body, headers = self._route.answer(handle, decoded, future.result())
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
        if not isinstance(error, Exception):
            error = RuntimeError(repr(error))
        handle, on_full = self._handle, self._on_full
        # Held only for the model's own full queue (the decoder processes' is not a line).
        if isinstance(error, QueueFull) and on_full and handle is not None and handle.queue_full:
            on_full(handle)
        try:
            status, body, headers = self._route.error_answer(error, self._model)
        except Exception:  # never leave the client without an answer
            logger.exception("inference on %s: cannot describe an error", self._model)
            status, body, headers = 500, b'{"error": "internal error"}', JSON_HEADERS
        self._finish(status, headers, body)

    def _finish(self, status: int, headers: Headers, body: bytes) -> None:
        if self.finished:
            return
        self.finished = True
        self._reply(status, headers, body)
        self._observe(status)

    def _observe(self, status: int) -> None:
        # Metric labels name only models that exist: a URL must not mint a time series.
        handle = self._handle
        model, version = ("_unknown", "") if handle is None else (handle.name, handle.version)
        self._route.observe(model, version, status, time.perf_counter() - self._started)
