"""Triton ensembles: a DAG of composing-model steps served behind one model's handle.

A ``config.pbtxt`` with ``platform: "ensemble"`` names steps; each step feeds ensemble tensors
to a composing model's inputs (``input_map``) and names its outputs as new ensemble tensors
(``output_map``). :class:`EnsembleHandle` serves it at ``/v2/models/{ensemble}/infer`` like any
model: it is a :class:`ModelHandle` to the server (same specs, admission, statistics, drain), but
runs no model itself. Per request, each step runs through its composing model's own handle, so
batching still happens per composing model, across ensemble and direct traffic alike.

How it relates to :mod:`coserve.graph`: the research plan (one node per step, ports for the
tensors, sources and sinks for the ensemble's inputs and outputs) is what this is, but the
graph layer's nodes are long-running tasks wired by bounded channels, made for sessions that
live for many messages. An ensemble request is one message through a small DAG whose shape is
fixed at load; building, running and tearing down a ``Graph`` per request would cost a
supervisor, a channel per edge and a task per node each time, and a single long-running graph
shared by all requests would need a per-request join (by id) at every node with two or more
inputs and per-request failure and cancellation paths through every port. So the DAG is
checked and ordered once at load (``_triton_config`` checks the dataflow: one producer per
tensor, no cycle, every output produced; :func:`check_steps` checks it against the composing
models), and each request runs it with one asyncio task per step: a step's task awaits the
tasks of the steps producing its inputs, so independent steps run concurrently and a step
starts as soon as its inputs are ready. This is the same dataflow a graph of
:class:`~coserve.ModelNode` would run, with the per-request overhead of a few tasks.

Semantics:

- The first step to fail fails the request with its error (``BatchFailed``, ``InvalidInput``,
  ``DeadlineExceeded``...); the other steps are cancelled, which withdraws their queued rows.
- The request's ``timeout`` is one deadline over all steps: each step gets what is left.
  Its priority goes to every step.
- Requested outputs prune the DAG: only the steps they need run (``infer(outputs=...)``).
- Composing handles are resolved through the repository when each step starts, so a
  reloaded composing model (a new version) is used by the next request's steps.
- ``max_inflight_requests`` bounds each step's calls in flight (a semaphore per step).
- Admission: at most ``batching.max_queue_size`` requests in flight through the ensemble;
  past it a request is refused with ``QueueFull`` (each step's model also has its own queue).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from coserve._exceptions import (
    BatcherClosed,
    ConfigError,
    DeadlineExceeded,
    ModelError,
    ModelNotFound,
)
from coserve.batching import BatcherStatistics
from coserve.models._admission import InFlightAdmission
from coserve.models._backend import Backend, SequenceFlags, Tensors
from coserve.models._config import EnsembleStep, ModelConfig
from coserve.models._handle import ModelHandle
from coserve.models._sequence import SequenceHandle
from coserve.models._specs import TensorSpec

__all__ = ["EnsembleHandle", "Resolve", "check_steps"]

logger = logging.getLogger("coserve.models")

Resolve = Callable[[str, str | None], ModelHandle]
"""``resolve(model, version)``: a loaded model's handle (version None: its newest), or
``ModelNotFound``."""

Response = dict[str, np.ndarray]


def check_steps(config: ModelConfig, resolve: Resolve) -> None:
    """Check an ensemble's steps against its composing models as ``resolve`` finds them.

    Every step's model is loaded, each ``input_map`` key is one of its inputs and each
    ``output_map`` key one of its outputs, and datatypes agree along every edge.

    Raises:
        ConfigError: Naming the file and line of the step or map entry at fault.
    """
    assert config.ensemble is not None
    datatypes = {spec.name: spec.datatype for spec in config.inputs or ()}
    for index, step in enumerate(config.ensemble.steps):
        label = f"ensemble {config.name!r} step {index}"
        try:
            handle = resolve(step.model, step.version)
        except ModelNotFound as error:
            raise ConfigError(
                f"{step.where}: {label}: composing model {step.model!r} is missing ({error})"
            ) from None
        if isinstance(handle, SequenceHandle):
            raise ConfigError(
                f"{step.where}: {label}: composing model {step.model!r} is a sequence model; "
                "ensembles of stateful models are not supported (an ensemble request names no "
                "sequence)"
            )
        model_inputs = {spec.name: spec for spec in handle.inputs}
        model_outputs = {spec.name: spec for spec in handle.outputs}
        for (name, tensor), where in zip(step.inputs, step.input_where, strict=True):
            spec = model_inputs.get(name)
            if spec is None:
                raise ConfigError(
                    f"{where}: {label}: model {step.model!r} has no input {name!r}; its inputs "
                    f"are: {', '.join(model_inputs)}"
                )
            # A tensor from an unchecked producer (a step later in the file) is checked below.
            given = datatypes.get(tensor)
            if given is not None and given != spec.datatype:
                raise ConfigError(
                    f"{where}: {label}: ensemble tensor {tensor!r} is {given}, but input "
                    f"{name!r} of model {step.model!r} is {spec.datatype}"
                )
        for (name, tensor), where in zip(step.outputs, step.output_where, strict=True):
            spec = model_outputs.get(name)
            if spec is None:
                raise ConfigError(
                    f"{where}: {label}: model {step.model!r} has no output {name!r}; its "
                    f"outputs are: {', '.join(model_outputs)}"
                )
            datatypes[tensor] = spec.datatype
    for index, step in enumerate(config.ensemble.steps):
        model_inputs = {spec.name: spec for spec in resolve(step.model, step.version).inputs}
        for (name, tensor), where in zip(step.inputs, step.input_where, strict=True):
            if datatypes[tensor] != model_inputs[name].datatype:
                raise ConfigError(
                    f"{where}: ensemble {config.name!r} step {index}: ensemble tensor "
                    f"{tensor!r} is {datatypes[tensor]}, but input {name!r} of model "
                    f"{step.model!r} is {model_inputs[name].datatype}"
                )
    for spec in config.outputs or ():
        if datatypes[spec.name] != spec.datatype:
            raise ConfigError(
                f"{config.ensemble.where}: ensemble {config.name!r}: output {spec.name!r} is "
                f"{spec.datatype}, but the step producing it gives {datatypes[spec.name]}"
            )


class _EnsembleBackend(Backend):
    """What an ensemble shows where a handle's backend is read (its specs, no signatures)."""

    platform = "ensemble"

    def predict(self, inputs: Tensors) -> dict[str, np.ndarray]:
        raise ModelError(f"ensemble {self.name!r} runs its steps, not a model")


class _Counters:
    """An ensemble's request counters, as a batcher's statistics name them."""

    __slots__ = (
        "aborted",
        "cancelled",
        "completed",
        "completed_rows",
        "completed_seconds",
        "error_seconds",
        "expired",
        "failed",
        "rejected_closed",
        "submitted",
    )

    def __init__(self) -> None:
        self.submitted = self.completed = self.failed = self.expired = 0
        self.cancelled = self.aborted = self.rejected_closed = 0
        self.completed_rows = 0
        self.completed_seconds = self.error_seconds = 0.0


class EnsembleHandle(InFlightAdmission, ModelHandle):
    """A Triton ensemble behind a :class:`ModelHandle`'s interface, running its steps per request.

    It is a subclass so that every protocol driver takes it where it takes a model's handle;
    it has no batcher (it does not call ``ModelHandle.__init__``) and overrides every method
    that would use one.

    Args:
        config: The ensemble's config (``config.ensemble`` set), already checked with
            :func:`check_steps`.
        version: The version it serves (its version folder's).
        resolve: Finds a composing model's handle when a step starts (the repository's
            ``get``), so reloaded composing models are picked up.
    """

    def __init__(self, config: ModelConfig, version: str, resolve: Resolve) -> None:
        assert config.ensemble is not None
        inputs: tuple[TensorSpec, ...] = config.inputs or ()
        outputs: tuple[TensorSpec, ...] = config.outputs or ()
        self.config = config
        self.backend = _EnsembleBackend(config.name, version, inputs, outputs)
        # max_batch_size 0: its tensors are whole (checked in every dimension, one row each).
        self.backend.batched = config.batched
        self._client_inputs = inputs
        self.padder = None
        self.batching = config.batching
        self.labels = config.labels
        self._output_names = tuple(spec.name for spec in outputs)
        self.output_datatypes = {spec.name: spec.datatype for spec in outputs}
        self._max_rows = config.batching.max_batch_size * config.batching.max_queue_size
        self.chunk_window = 1
        self._signature_handles: dict[str, ModelHandle] = {}
        self._closing = False
        self._resolve = resolve
        self._steps = config.ensemble.steps
        producer = {t: i for i, step in enumerate(self._steps) for _, t in step.outputs}
        self._after = tuple(
            tuple(sorted({producer[t] for _, t in step.inputs if t in producer}))
            for step in self._steps
        )
        self._producer = producer
        bound = config.ensemble.max_inflight
        self._limits = tuple(asyncio.Semaphore(bound) if bound else None for _ in self._steps)
        self._running: set[asyncio.Task[Response]] = set()
        self._aborted: set[asyncio.Task[Response]] = set()  # cancelled at the grace period's end
        self._room_waiters: deque[Callable[[], bool]] = deque()
        self._refused_queue_full = 0
        self._counters = _Counters()

    # -- admission ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the ensemble has begun shutting down."""
        return self._closing

    def _in_flight(self) -> int:
        return len(self._running)

    def for_signature(self, name: str) -> ModelHandle:
        """This handle for its own signature (``""``); an ensemble has no others.

        Raises:
            InvalidInput: Any other signature.
        """
        self.backend.for_signature(name)
        return self

    # -- requests ----------------------------------------------------------------------------

    async def infer(
        self,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - one deadline over every step
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        sequence: SequenceFlags | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the steps the requested outputs need and return those outputs.

        Raises what :meth:`ModelHandle.infer` raises; a step's failure is the request's.
        An ensemble keeps no sequences: ``sequence`` is ignored, as by any stateless model.
        """
        wanted = self.check_outputs(outputs)
        return await self._answer(self._submit(inputs, timeout, priority, wanted), wanted)

    def infer_nowait(
        self,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        sequence: SequenceFlags | None = None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Start the request and return a future of its outputs (cancel it to withdraw).

        Only the steps the requested ``outputs`` need run (None: every output).
        ``InvalidInput``, ``QueueFull`` and ``BatcherClosed`` are raised at once.
        """
        return self._submit(inputs, timeout, priority, self.check_outputs(outputs))

    def _submit(
        self,
        inputs: Mapping[str, Any],
        timeout: float | None,
        priority: int,
        wanted: Sequence[str],
    ) -> asyncio.Task[Response]:
        if self._closing:
            self._counters.rejected_closed += 1
            raise BatcherClosed(f"ensemble {self.name!r} v{self.version} is being unloaded")
        arrays, rows = self._checked(inputs)
        self.refuse_if_full()
        if timeout is None:
            timeout = self.batching.timeout
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        task = loop.create_task(self._run(arrays, deadline, priority, wanted))
        self._counters.submitted += 1
        self._running.add(task)
        started = time.perf_counter()
        task.add_done_callback(lambda done: self._finished(done, rows, started))
        return task

    def _finished(self, task: asyncio.Task[Response], rows: int, started: float) -> None:
        self._running.discard(task)
        counters, seconds = self._counters, time.perf_counter() - started
        if task in self._aborted:
            self._aborted.discard(task)
            counters.aborted += 1
            counters.error_seconds += seconds
        elif task.cancelled():
            counters.cancelled += 1
        else:
            error = task.exception()  # read, so an unawaited failure is not reported as lost
            if error is None:
                counters.completed += 1
                counters.completed_rows += rows
                counters.completed_seconds += seconds
            else:
                if isinstance(error, DeadlineExceeded):
                    counters.expired += 1
                elif isinstance(error, BatcherClosed) and self._closing:
                    counters.aborted += 1
                else:
                    counters.failed += 1
                counters.error_seconds += seconds
        self._wake_room_waiters()

    def _needed(self, wanted: Sequence[str]) -> list[int]:
        """The steps the wanted outputs need, in the file's order."""
        needed: set[int] = set()
        stack = [self._producer[name] for name in wanted if name in self._producer]
        while stack:
            index = stack.pop()
            if index not in needed:
                needed.add(index)
                stack.extend(self._after[index])
        return sorted(needed)

    async def _run(
        self, inputs: Response, deadline: float | None, priority: int, wanted: Sequence[str]
    ) -> Response:
        """Run the needed steps, each once its inputs are ready; the first failure is raised."""
        values: dict[str, np.ndarray] = dict(inputs)
        tasks: dict[int, asyncio.Task[None]] = {}
        loop = asyncio.get_running_loop()
        for index in self._needed(wanted):
            # Created in the file's order, but a task only awaits its producers' tasks, which
            # exist by the time it first runs (creating tasks does not run them).
            tasks[index] = loop.create_task(self._step(index, tasks, values, deadline, priority))
        try:
            if tasks:
                done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    error = None if task.cancelled() else task.exception()
                    if error is not None:
                        raise error
        finally:
            for task in tasks.values():
                task.cancel()  # a failed step: the others' results are no use any more
            # Collect every outcome, so none is logged as an exception never retrieved.
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        return {name: values[name] for name in wanted}

    async def _step(
        self,
        index: int,
        tasks: Mapping[int, asyncio.Task[None]],
        values: dict[str, np.ndarray],
        deadline: float | None,
        priority: int,
    ) -> None:
        for producer in self._after[index]:
            await tasks[producer]  # its failure is this step's too (the first one is reported)
        step: EnsembleStep = self._steps[index]
        # Resolved now, not at load: a composing model reloaded since serves this step.
        handle = self._resolve(step.model, step.version)
        request = {name: values[tensor] for name, tensor in step.inputs}
        limit = self._limits[index]
        if limit is not None:
            await limit.acquire()
        try:
            timeout = None
            if deadline is not None:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    raise DeadlineExceeded(
                        f"ensemble {self.name!r}: the deadline passed before step {index} "
                        f"({step.model}) could start"
                    )
            outputs = await handle.infer(
                request,
                timeout=timeout,
                priority=priority,
                outputs=[name for name, _ in step.outputs],
            )
        finally:
            if limit is not None:
                limit.release()
        for name, tensor in step.outputs:
            values[tensor] = outputs[name]

    # -- statistics and shutdown -------------------------------------------------------------

    def statistics(self) -> BatcherStatistics:
        """The ensemble's requests, counted as a batcher counts them (it forms no batches)."""
        c = self._counters
        return BatcherStatistics(
            queued=0,
            queued_rows=0,
            running_batches=0,
            in_flight=len(self._running),
            submitted=c.submitted,
            completed=c.completed,
            failed=c.failed,
            expired=c.expired,
            cancelled=c.cancelled,
            aborted=c.aborted,
            rejected=self._refused_queue_full + c.rejected_closed,
            rejected_queue_full=self._refused_queue_full,
            rejected_closed=c.rejected_closed,
            batches=0,
            completed_rows=c.completed_rows,
            completed_seconds=c.completed_seconds,
            error_seconds=c.error_seconds,
        )

    async def aclose(self, *, grace_period: float | None = None) -> None:
        """Stop taking requests; let those in flight finish (up to the grace period)."""
        self._closing = True
        self._wake_room_waiters()  # they find it closed, and say so to their callers
        running = list(self._running)
        if not running:
            return
        grace = self.batching.grace_period if grace_period is None else grace_period
        _, late = await asyncio.wait(running, timeout=grace)
        for task in late:
            logger.warning(
                "ensemble %s v%s: a request still running after %gs is cancelled",
                self.name,
                self.version,
                grace,
            )
            self._aborted.add(task)
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)

    def __repr__(self) -> str:
        return f"<EnsembleHandle {self.name} v{self.version} ({len(self._steps)} steps)>"
