"""The inference service: one path for a request, whatever protocol brought it.

Every protocol driver (native HTTP/1.1 and ASGI for the Open Inference Protocol's REST API, its
WebSocket stream, TensorFlow Serving's REST API, and both gRPC services) only translates bytes;
the rest is here, once:

1. :meth:`InferenceService.resolve` — is the server taking work, and which model version;
2. :meth:`InferenceService.admit` — the model's queue and the request's size, before its body;
3. :meth:`InferenceService.submit` — Triton's ``timeout``, ``priority`` and sequence parameters, the
   requested outputs, the inputs (the model's checks), then the model's batcher; cancelling the
   returned future withdraws the request before it runs (a client gone, a call's deadline);
4. :meth:`InferenceService.observe` — the latency metric, by protocol, model and outcome;

and ``_errors.report`` says what a failure means on each protocol, and logs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from coserve._exceptions import BatcherClosed, DeadlineExceeded, InvalidInput, RequestTooLarge
from coserve.models import ModelHandle, SequenceFlags
from coserve.server._state import ServerState

__all__ = ["EXTENSIONS", "InferenceService", "Observe", "schedule", "sequence_flags"]

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


class InferenceService:
    """The steps every inference request takes, shared by every protocol driver.

    Args:
        state: The server's repository, limits and readiness.
        observe: Records a request's latency (``Metrics.observe_request``).
    """

    __slots__ = ("_observe", "state")

    def __init__(self, state: ServerState, observe: Observe) -> None:
        self.state = state
        """The server's shared state (repository, limits, readiness)."""
        self._observe = observe

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
        return handle.infer_nowait(
            inputs, timeout=queue_timeout, priority=priority, outputs=outputs, sequence=sequence
        )

    async def infer(
        self,
        handle: ModelHandle,
        inputs: Mapping[str, Any],
        *,
        outputs: Sequence[str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the batcher enforces
    ) -> Outputs:
        """:meth:`submit`, awaited; the requested outputs only.

        Cancelling the awaiting task withdraws the request from its batcher before it runs.
        """
        future = self.submit(
            handle, inputs, outputs=outputs, parameters=parameters, timeout=timeout
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

    def observe(
        self, protocol: str, handle: ModelHandle | None, status: int | str, seconds: float
    ) -> None:
        """Record a finished request's latency, by protocol, model version and outcome.

        ``handle`` is None when the request named no loaded model: the metric's labels name
        only models that exist, so a URL never mints a time series.
        """
        if handle is None:
            self._observe(protocol, "_unknown", "", status, seconds)
        else:
            self._observe(protocol, handle.name, handle.version, status, seconds)
