"""The inference service: one path for a request, whatever protocol brought it.

Every protocol driver (native HTTP/1.1 and ASGI for the Open Inference Protocol's REST API, its
WebSocket stream, TensorFlow Serving's REST API, and both gRPC services) only translates bytes;
the rest is here, once:

1. :meth:`InferenceService.resolve` — is the server taking work, and which model version;
2. :meth:`InferenceService.admit` — the model's queue and the request's size, before its body;
3. :meth:`InferenceService.submit` — Triton's ``timeout``, ``priority`` and sequence parameters, the
   requested outputs, the inputs (the model's checks), then the model's batcher; cancelling the
   returned future withdraws the request before it runs (a client gone, a call's deadline);
4. :meth:`InferenceService.observe` — the latency metric, by protocol, model and outcome, and,
   when they are on, the request's span and its access-log line;

and ``_errors.report`` says what a failure means on each protocol, and logs it. A request is
one :class:`Call` from :meth:`InferenceService.begin` to ``observe``: its start, the trace
context it came with, and what its batches did (filled in by the batch observer, which the
service installs only while tracing or the access log is on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from coserve._exceptions import BatcherClosed, DeadlineExceeded, InvalidInput, RequestTooLarge
from coserve.batching import _observe
from coserve.graph import _hops
from coserve.models import ModelHandle, SequenceFlags
from coserve.server._state import ServerState

if TYPE_CHECKING:
    from coserve.server._access_log import AccessLog
    from coserve.server._tracing import Tracing

__all__ = [
    "EXTENSIONS",
    "Call",
    "InferenceService",
    "Observe",
    "schedule",
    "sequence_flags",
    "trace_context",
]

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "schedule_policy",
    "statistics",
]
"""The Open Inference Protocol extensions served, as every protocol's server metadata says."""

Observe = Callable[[str, str, str, int | str, float], None]
"""Record one request: ``observe(protocol, model, version, status, seconds)``."""

Outputs = dict[str, np.ndarray]


def schedule(parameters: Mapping[str, Any] | None) -> tuple[float | None, int]:
    """Triton's schedule-policy parameters as ``(timeout in seconds, batcher priority)``.

    ``timeout`` is in µs; ``priority`` 1 is the most urgent, 0 means the default (which ranks
    with 1). The batcher runs higher values first, so the priority comes back negated.

    Raises:
        InvalidInput: Either parameter is not a whole number in range.
    """
    if not parameters:
        return None, -1
    timeout = parameters.get("timeout")
    priority = parameters.get("priority", 0)
    if timeout is not None and (type(timeout) is not int or timeout <= 0):
        raise InvalidInput(f"parameter 'timeout' must be a positive integer of µs, got {timeout!r}")
    if type(priority) is not int or priority < 0:
        raise InvalidInput(f"parameter 'priority' must be a non-negative integer, got {priority!r}")
    return (timeout / 1e6 if timeout else None), -max(priority, 1)


_UINT64_MAX = 2**64 - 1


def sequence_flags(parameters: Mapping[str, Any] | None) -> SequenceFlags | None:
    """Triton's ``sequence_id``, ``sequence_start`` and ``sequence_end`` parameters.

    None when the request names no sequence (no ``sequence_id``, or 0 or ``""``, which Triton
    reserves for requests in no sequence).

    Raises:
        InvalidInput: A parameter has the wrong type, or flags come without a sequence id.
    """
    if not parameters:
        return None
    sequence_id = parameters.get("sequence_id", 0)
    flags = {}
    for key in ("sequence_start", "sequence_end"):
        value = parameters.get(key, False)
        if type(value) is not bool:
            raise InvalidInput(f"parameter {key!r} must be a boolean, got {value!r}")
        flags[key] = value
    if type(sequence_id) is int:
        if not 0 <= sequence_id <= _UINT64_MAX:
            raise InvalidInput(
                f"parameter 'sequence_id' must be an unsigned 64-bit integer, got {sequence_id}"
            )
    elif type(sequence_id) is not str:
        raise InvalidInput(
            f"parameter 'sequence_id' must be an integer or a string, got {sequence_id!r}"
        )
    if sequence_id in (0, ""):
        if flags["sequence_start"] or flags["sequence_end"]:
            raise InvalidInput(
                "parameters 'sequence_start' and 'sequence_end' need a non-zero or non-empty "
                "'sequence_id'"
            )
        return None
    return SequenceFlags(sequence_id, flags["sequence_start"], flags["sequence_end"])


def trace_context(headers: Iterable[tuple[Any, Any]]) -> tuple[str | None, str | None]:
    """The W3C ``traceparent`` and ``tracestate`` among headers (or gRPC metadata), if any.

    Names must be lower-case (as HTTP/1.1 parsers, ASGI and gRPC give them); names and values
    may be bytes or text.
    """
    traceparent = tracestate = None
    for key, value in headers:
        if key in (b"traceparent", "traceparent"):
            traceparent = value.decode("latin-1") if isinstance(value, bytes) else value
        elif key in (b"tracestate", "tracestate"):
            tracestate = value.decode("latin-1") if isinstance(value, bytes) else value
    return traceparent, tracestate


class Call:
    """One inference request, from :meth:`InferenceService.begin` to its ``observe``.

    Attributes:
        protocol: The protocol that brought it (the latency metric's label).
        started: When it began (``time.perf_counter()``).
        wall: When it began (``time.time()``), for its span and log line.
        traceparent: The W3C trace context it came with, if any.
        tracestate: The vendor trace state that came with it, if any.
        span: Its span, once tracing has started one (``_tracing``).
        queue: Seconds it waited in its batchers' queues (None: it never ran in a batch).
        execution: Seconds its batches ran.
        batch_size: The rows of the (last) batch it ran in.
    """

    __slots__ = (
        "batch_size",
        "execution",
        "protocol",
        "queue",
        "span",
        "started",
        "traceparent",
        "tracestate",
        "wall",
    )

    def __init__(
        self, protocol: str, traceparent: str | None = None, tracestate: str | None = None
    ) -> None:
        self.protocol = protocol
        self.started = time.perf_counter()
        self.wall = 0.0  # set by begin() when something will read it
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.span: Any = None
        self.queue: float | None = None
        self.execution: float | None = None
        self.batch_size: int | None = None

    def batched(self, record: _observe.BatchRecord, queued: float) -> None:
        """Take in a finished batch this request ran in.

        An ensemble's requests run in several: their times add up.
        """
        waited = record.started - queued
        ran = record.finished - record.started
        self.queue = waited if self.queue is None else self.queue + waited
        self.execution = ran if self.execution is None else self.execution + ran
        self.batch_size = record.rows


class InferenceService:
    """The steps every inference request takes, shared by every protocol driver.

    Args:
        state: The server's repository, limits and readiness.
        observe: Records a request's latency (``Metrics.observe_request``).
        tracing: Spans for requests and batches (None: no tracing, and nothing of
            OpenTelemetry imported).
        access_log: One line per request (None: no access log).
    """

    __slots__ = ("_access_log", "_observe", "_tracing", "_watched", "state")

    def __init__(
        self,
        state: ServerState,
        observe: Observe,
        *,
        tracing: Tracing | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.state = state
        """The server's shared state (repository, limits, readiness)."""
        self._observe = observe
        self._tracing = tracing
        self._access_log = access_log
        self._watched = tracing is not None or access_log is not None

    def watch(self) -> Callable[[], None]:
        """Install the batch and hop observers that tracing and the access log need.

        Returns the undo. The batch observer is on with either; the graphs' hop observer with
        tracing. Called by the app's lifespan, so batches and hops report to the running server
        only.
        """
        if not self._watched:
            return lambda: None
        batches = _observe.set_batch_observer(self._batch_finished)
        hops = _hops.set_hop_observer(self._tracing.hop if self._tracing is not None else None)

        def undo() -> None:
            _observe.set_batch_observer(batches)
            _hops.set_hop_observer(hops)

        return undo

    def begin(self, protocol: str, headers: Iterable[tuple[Any, Any]] | None = None) -> Call:
        """A request arrives.

        ``headers`` (or gRPC metadata, names lower-case) may carry the trace context it
        continues; they are read only when tracing or the access log is on.
        """
        call = Call(protocol)
        if self._watched:
            call.wall = time.time()
            if headers is not None:
                call.traceparent, call.tracestate = trace_context(headers)
        return call

    def resolve(self, model: str, version: str | None) -> ModelHandle:
        """The model version a request is for.

        Raises:
            BatcherClosed: The server is not serving (starting, or its models unloading).
            ModelNotFound: No such model or version.
        """
        state = self.state
        if not state.accepting:
            raise BatcherClosed("the server is not serving (starting, or its models unloading)")
        handle: ModelHandle = state.repository.get(model, version)
        return handle

    def admit(self, handle: ModelHandle, size: int | None = None) -> None:
        """Check a request against its model's queue and the size limit, before its body.

        Raises:
            QueueFull: The model's queue is full (so the body need not be read or decoded).
            RequestTooLarge: ``size`` (the body's declared bytes) is over the server's limit.
        """
        handle.refuse_if_full()
        limit = self.state.limits.max_request_size
        if size is not None and size > limit:
            raise RequestTooLarge(f"the request body ({size} bytes) is over the {limit}-byte limit")

    def submit(
        self,
        handle: ModelHandle,
        inputs: Mapping[str, Any],
        *,
        outputs: Sequence[str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        call: Call | None = None,
    ) -> asyncio.Future[Outputs]:
        """Queue a decoded request on its model; cancel the future to withdraw it.

        The future's result holds every output: :meth:`select` picks the requested ones.

        Args:
            handle: The model version, from :meth:`resolve`.
            inputs: Arrays by input name, rows first.
            outputs: The outputs asked for (None: all).
            parameters: The request's parameters (Triton's ``timeout`` and ``priority``, and
                ``sequence_id``, ``sequence_start``, ``sequence_end`` for a stateful model).
            timeout: Seconds the caller will wait (a gRPC call's deadline); the earliest of
                this, the ``timeout`` parameter and the model's own timeout applies.
            call: The request's record (from :meth:`begin`), which its batches fill in.

        Raises:
            InvalidInput: Bad parameters, inputs or requested outputs.
            QueueFull: The model's queue is full.
            BatcherClosed: The model is shutting down.
            DeadlineExceeded: ``timeout`` has already run out.
        """
        queue_timeout, priority = schedule(parameters)
        sequence = sequence_flags(parameters)
        if timeout is not None:
            if timeout <= 0:
                raise DeadlineExceeded("the call's deadline passed before it was queued")
            if queue_timeout is None:
                queue_timeout = handle.batching.timeout  # the deadline must not lift the model's
            if queue_timeout is None or timeout < queue_timeout:
                queue_timeout = timeout
        handle.check_outputs(outputs)
        if call is None or not self._watched:
            return handle.infer_nowait(
                inputs, timeout=queue_timeout, priority=priority, outputs=outputs, sequence=sequence
            )
        if self._tracing is not None:
            self._tracing.start(call, handle)
        # The batchers the request reaches (an ensemble's, in tasks started now) tag it.
        token = _observe.request_tag.set(call)
        try:
            return handle.infer_nowait(
                inputs, timeout=queue_timeout, priority=priority, outputs=outputs, sequence=sequence
            )
        finally:
            _observe.request_tag.reset(token)

    async def infer(
        self,
        handle: ModelHandle,
        inputs: Mapping[str, Any],
        *,
        outputs: Sequence[str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the batcher enforces
        call: Call | None = None,
    ) -> Outputs:
        """:meth:`submit`, awaited; the requested outputs only.

        Cancelling the awaiting task withdraws the request from its batcher before it runs.
        """
        future = self.submit(
            handle, inputs, outputs=outputs, parameters=parameters, timeout=timeout, call=call
        )
        try:
            result = await future
        finally:
            future.cancel()  # a no-op once done; withdraws the request if this task was cancelled
        return self.select(result, outputs)

    @staticmethod
    def select(result: Outputs, outputs: Sequence[str] | None) -> Outputs:
        """The requested outputs of a result, in the order asked (None: all, as they are)."""
        if outputs is None:
            return result
        return {name: result[name] for name in outputs}

    def observe(self, call: Call, handle: ModelHandle | None, status: int | str) -> None:
        """Record a finished request, with its span and access-log line when those are on.

        The latency metric is by protocol, model version and outcome.
        ``handle`` is None when the request named no loaded model: the metric's labels name
        only models that exist, so a URL never mints a time series.
        """
        seconds = time.perf_counter() - call.started
        if handle is None:
            self._observe(call.protocol, "_unknown", "", status, seconds)
        else:
            self._observe(call.protocol, handle.name, handle.version, status, seconds)
        if self._tracing is not None:
            self._tracing.finish(call, handle, status, seconds)
        if self._access_log is not None:
            self._access_log.write(call, handle, status, seconds)

    def _batch_finished(self, record: _observe.BatchRecord) -> None:
        """The batch observer: fill in the calls a batch ran, and trace the batch."""
        calls = []
        for tag, queued in record.tags:
            if type(tag) is Call:
                tag.batched(record, queued)
                calls.append(tag)
        if self._tracing is not None and calls:
            self._tracing.batch(record, calls)
