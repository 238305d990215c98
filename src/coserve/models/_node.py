"""A graph node that runs a model: graph traffic joins the same batches as HTTP traffic."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from coserve._exceptions import CoserveError, EndOfChannel
from coserve.graph import Input, Node, Output, Signal
from coserve.models._handle import ModelHandle

__all__ = ["ModelNode"]

logger = logging.getLogger("coserve.graph")

Prepare = Callable[[Any], Mapping[str, Any] | None]
Combine = Callable[[Any, dict[str, np.ndarray]], Any]


class ModelNode(Node):
    """Calls ``handle.infer`` for each message and sends the result on, in arrival order.

    By default a message's value is the request's inputs by name (arrays with the rows first)
    and the result is the outputs by name. ``prepare`` and ``combine`` adapt other messages:
    ``prepare(value)`` returns the inputs (or None to pass the message on without a model call)
    and ``combine(value, outputs)`` builds what is sent on.

    A request the model refuses or fails (bad input, queue full, deadline, a failed batch), or
    that ``prepare`` or ``combine`` raise on, fails that message only: it becomes a dead letter
    carrying the error, for its requester.
    Up to ``concurrency`` requests are in flight at once (still answered in order), so one
    busy session can fill a batch by itself; every session's node shares the model's batcher.

    Args:
        handle: The model version to call (``repository.get(name)``).
        prepare: Message value to model inputs, or None to skip the model for this message.
        combine: Message value and model outputs to the value sent on.
        outputs: Which outputs to request (default: all).
        timeout: Seconds until each request's deadline (default: the model's).
        concurrency: Requests in flight at once (at least 1).
    """

    inp: Input[Any]
    out: Output[Any]

    def __init__(
        self,
        handle: ModelHandle,
        *,
        prepare: Prepare | None = None,
        combine: Combine | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        self.handle = handle
        self.name = f"model:{handle.name}"
        self._prepare = prepare
        self._combine = combine
        self._wanted = list(outputs) if outputs is not None else None
        self._timeout = timeout
        self._concurrency = concurrency

    async def run(self) -> None:
        """Infer for every message, keeping at most ``concurrency`` in flight, in order.

        A reader takes messages and starts their requests while this loop passes results on
        in arrival order, so an answer goes out as soon as it (and those before it) is ready,
        whether or not another message arrives.
        """
        in_flight: deque[tuple[Signal[Any], asyncio.Future[Any]]] = deque()
        slots = asyncio.Semaphore(self._concurrency)
        arrived = asyncio.Event()

        async def read() -> None:
            try:
                while True:
                    await slots.acquire()
                    try:
                        signal = await self.inp.receive()
                    except EndOfChannel:
                        return
                    self._in_hand[signal.id] = signal  # in this node's hands until passed on
                    in_flight.append((signal, asyncio.ensure_future(self._infer(signal.value))))
                    arrived.set()
            finally:
                arrived.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                if not in_flight:
                    if reader.done():
                        break
                    arrived.clear()
                    await arrived.wait()
                    continue
                await self._pass_on(*in_flight[0])
                in_flight.popleft()
                slots.release()
            await reader  # the reader's crash is this node's crash
        finally:
            # Stopped or crashed: the requests are not wanted; every task ends before we do.
            reader.cancel()
            for _, pending in in_flight:
                pending.cancel()
            await asyncio.gather(reader, *(p for _, p in in_flight), return_exceptions=True)

    async def _infer(self, value: Any) -> Any:
        inputs = self._prepare(value) if self._prepare is not None else value
        if inputs is None:
            return value
        outputs = await self.handle.infer(inputs, outputs=self._wanted, timeout=self._timeout)
        return self._combine(value, outputs) if self._combine is not None else outputs

    async def _pass_on(self, signal: Signal[Any], pending: asyncio.Future[Any]) -> None:
        try:
            result = await pending
        except Exception as error:  # this request's failure, not the node's
            if isinstance(error, CoserveError):
                logger.debug("%s: request %r failed: %s", self.name, signal.id, error)
            else:  # prepare or combine has a bug: say so loudly, but keep serving
                logger.exception("%s: request %r failed", self.name, signal.id)
            self.fail(signal, error)
            return
        await self.out.send(signal.derive(result))

    def _kind(self) -> str:
        return f"ModelNode {self.handle.name} v{self.handle.version}"
