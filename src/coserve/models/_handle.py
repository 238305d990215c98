"""``ModelHandle``: one model version behind its own Batcher, awaited by any number of callers."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from coserve._exceptions import (
    BatcherClosed,
    BatchFailed,
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    QueueFull,
)
from coserve.batching import Batcher, BatcherStatistics, LatencyTarget
from coserve.models._backend import Backend, SequenceFlags
from coserve.models._config import BatchingConfig, ModelConfig
from coserve.models._padding import Padded, Padder, shape_key
from coserve.models._specs import TensorSpec
from coserve.models._validation import check_inputs

__all__ = ["ModelHandle"]

logger = logging.getLogger("coserve.models")

Request = dict[str, np.ndarray]
Response = dict[str, np.ndarray]


class ModelHandle:
    """A loaded model version that callers ``await handle.infer(...)`` on, batched together.

    A request carries one or more rows; batch size is counted in rows. A request with more rows
    than ``max_batch_size`` is split across batches and its rows come back together, in order;
    at most ``chunk_window`` of its chunks are queued or running at once, so it takes a bounded
    share of the queue and other requests interleave with it.
    Rows whose trailing shapes differ are never concatenated: each request goes to the
    batcher's bucket of its shapes, so a batch holds one shape (the batcher picks buckets
    oldest first, so none starves). With a ``[padding]`` table, variable-length inputs are
    padded to a few lengths first (:mod:`coserve.models._padding`), so requests of different
    lengths share batches. With ``pad_to_allowed_batch_size``, a group is padded with
    copies of its last row up to the next allowed batch size, and the padding is cut from the
    outputs.

    Args:
        backend: The loaded model.
        batching: Its batching policy.
        labels: Class labels, for classifiers.
    """

    def __init__(
        self, backend: Backend, batching: BatchingConfig, *, labels: Sequence[str] = ()
    ) -> None:
        self.backend = backend
        self.batching = batching
        self._loaded = batching  # the limits live changes stay within (configure)
        self.labels = tuple(labels)
        self._output_names = tuple(spec.name for spec in backend.outputs)
        self.output_datatypes = {spec.name: spec.datatype for spec in backend.outputs}
        """Each output's protocol datatype, for response encoders."""
        self._max_rows = batching.max_batch_size * batching.max_queue_size
        self.chunk_window = max(1, batching.max_queue_size // 16)
        """The most chunks of one large request queued or running at once (1/16 of the queue)."""
        self._signature_handles: dict[str, ModelHandle] = {}
        self._closing = False
        padder = (
            None
            if batching.padding is None
            else Padder(backend.name, batching.padding, backend.inputs, backend.outputs)
        )
        self.padder = padder if padder is not None and padder.pads else None
        """The model's variable-length padding, if it has a ``[padding]`` table."""
        self._client_inputs = backend.inputs if self.padder is None else self.padder.client_inputs
        self._batcher: Batcher[Any, Response] = self._new_batcher(self._run_batch, batching)

    def _new_batcher(
        self, fn: Callable[[list[Any]], list[Response | Exception]], batching: BatchingConfig
    ) -> Batcher[Any, Response]:
        """The batcher that runs ``fn`` on this model's batches, with ``batching``'s options."""
        return Batcher(
            fn,
            max_batch_size=batching.max_batch_size,
            max_wait=batching.max_wait,
            max_concurrent_batches=batching.max_concurrent_batches,
            max_queue_size=batching.max_queue_size,
            timeout=batching.timeout,
            grace_period=batching.grace_period,
            name=f"{self.backend.name}:{self.backend.version}",
            max_requests_per_batch=None if batching.combine_requests else 1,
            target_latency=batching.target_latency,
        )

    @property
    def name(self) -> str:
        """The model's name."""
        return self.backend.name

    @property
    def version(self) -> str:
        """The version this handle serves."""
        return self.backend.version

    @property
    def platform(self) -> str:
        """The backend's platform string."""
        return self.backend.platform

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs requests give (a padded one of any length; no mask or lengths input)."""
        return self._client_inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model's output specs."""
        return self.backend.outputs

    def for_signature(self, name: str) -> ModelHandle:
        """The handle that runs another signature of the model (this one for its own or ``""``).

        Made on first use, with the same batching policy and its own batcher; it closes with
        this handle.

        Raises:
            InvalidInput: The model has no such signature.
            BatcherClosed: This handle is closing.
        """
        backend = self.backend.for_signature(name)
        if backend is self.backend:
            return self
        handle = self._signature_handles.get(name)
        if handle is None:
            if self._closing or self.closed:
                raise BatcherClosed(f"model {self.name!r} v{self.version} is being unloaded")
            # Padding names this signature's inputs; another signature's are not padded.
            handle = ModelHandle(
                backend, dataclasses.replace(self.batching, padding=None), labels=self.labels
            )
            self._signature_handles[name] = handle
        return handle

    LIVE_OPTIONS = (
        "max_batch_size",
        "max_wait",
        "max_concurrent_batches",
        "max_queue_size",
        "timeout",
        "target_latency",
    )
    """The batching options :meth:`configure` changes while the model serves."""

    _live: Mapping[str, Any] = {}  # the changes configure() made since load (read-only here)

    def live_config(self, config: ModelConfig) -> ModelConfig:
        """The model's loaded config with the batching changes :meth:`configure` made since."""
        if not self._live:
            return config
        return dataclasses.replace(
            config, batching=dataclasses.replace(config.batching, **self._live)
        )

    def configure(self, changes: Mapping[str, Any]) -> BatchingConfig:
        """Change this model version's batching while it serves; no request is lost or failed.

        ``changes`` maps some of :data:`LIVE_OPTIONS` to new values (``timeout`` may be None:
        no default deadline; ``target_latency`` is text such as ``"p99<20ms"`` or a
        :class:`~coserve.LatencyTarget`, or None to stop adapting). They apply from the next
        batch, as :meth:`Batcher.configure <coserve.Batcher.configure>` describes, to this
        handle and its other signatures'. The model's ``max_batch_size`` and
        ``max_concurrent_batches`` as loaded are the most a change may set: the model (and its
        backend's instances) were loaded and warmed up for them; raise them in the model's
        config to go further.

        Returns:
            The batching policy now in force (also :attr:`batching`).

        Raises:
            InvalidInput: An unknown option, a value out of range, or above the loaded limit;
                nothing changed.
        """
        unknown = sorted(set(changes) - set(self.LIVE_OPTIONS))
        if unknown:
            raise InvalidInput(
                f"model {self.name!r}: {', '.join(map(repr, unknown))} cannot be changed while "
                f"serving; the options that can are: {', '.join(self.LIVE_OPTIONS)}"
            )
        for option, value in changes.items():
            if value is None and option not in ("timeout", "target_latency"):
                raise InvalidInput(f"model {self.name!r}: {option} needs a value, got None")
        target = changes.get("target_latency")
        if isinstance(target, str):
            try:
                changes = {**changes, "target_latency": LatencyTarget.parse(target)}
            except ValueError as error:
                raise InvalidInput(f"model {self.name!r}: target_latency: {error}") from None
        allowed = self.batching.allowed_batch_sizes
        new_max = changes.get("max_batch_size")
        if allowed and new_max is not None and new_max not in allowed:
            raise InvalidInput(
                f"model {self.name!r}: max_batch_size must be one of its allowed batch sizes "
                f"({', '.join(map(str, allowed))}), got {new_max!r}"
            )
        loaded = self._loaded
        for option in ("max_batch_size", "max_concurrent_batches"):
            value = changes.get(option)
            limit = getattr(loaded, option)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise InvalidInput(
                    f"model {self.name!r}: {option} {value} is above the {limit} the model was "
                    "loaded with; raise it in the model's config"
                )
        handles = [self, *self._signature_handles.values()]
        try:
            for handle in handles:  # each checks all before changing any; all agree
                handle._batcher.configure(**changes)
        except (TypeError, ValueError) as error:
            raise InvalidInput(f"model {self.name!r}: {error}") from None
        for handle in handles:
            handle._apply(changes)
        self._live = {**self._live, **changes}
        return self.batching

    def _apply(self, changes: Mapping[str, Any]) -> None:
        """Record live changes in :attr:`batching`, and what is derived from it."""
        self.batching = dataclasses.replace(self.batching, **changes)
        self._max_rows = self.batching.max_batch_size * self.batching.max_queue_size
        self.chunk_window = max(1, self.batching.max_queue_size // 16)

    @property
    def closed(self) -> bool:
        """Whether the handle has begun shutting down."""
        return self._batcher.closed

    @property
    def queue_full(self) -> bool:
        """Whether the queue is at its bound: a request now would be refused with QueueFull."""
        return self._batcher.full

    def refuse_if_full(self) -> None:
        """Raise ``QueueFull`` (counted as a refusal) if the queue is at its bound."""
        self._batcher.refuse_if_full()

    @property
    def waiting_for_room(self) -> int:
        """How many callers wait in line for a place in the queue."""
        return self._batcher.waiting_for_room

    def notify_when_room(self, callback: Callable[[], bool]) -> None:
        """Call ``callback()`` once the queue has room (see ``Batcher.notify_when_room``)."""
        self._batcher.notify_when_room(callback)

    async def infer(
        self,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the batcher enforces
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        sequence: SequenceFlags | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model on a request's rows, batched with everyone else's, and return outputs.

        Args:
            inputs: Arrays (or nested lists) by input name; the first dimension is the rows.
            timeout: Seconds until the request's deadline (default: the model's).
            priority: Higher runs first.
            outputs: Which outputs to return (default: all).
            sequence: The request's sequence, for a stateful model (a
                :class:`~coserve.models.SequenceHandle`); other models take requests in no
                sequence, and ignore it, as Triton does.

        Returns:
            The output arrays by name, one row per request row, in order.

        Raises:
            InvalidInput: The request does not fit the model's inputs (checked before queueing).
            QueueFull: The model's queue is full.
            DeadlineExceeded: The deadline passed first.
            BatcherClosed: The model is being unloaded or the server is shutting down.
            BatchFailed: The model failed on this request's batch.
        """
        wanted = self.check_outputs(outputs)
        arrays, rows = self._prepared(inputs)
        limit = self.batching.max_batch_size
        if rows > limit and self.backend.takes_requests:
            raise InvalidInput(self._too_many_rows(limit))
        if rows <= limit:
            result = await self._batcher.submit(
                arrays, timeout=timeout, priority=priority, size=rows, key=shape_key(arrays)
            )
        else:
            result = await self._infer_in_chunks(arrays, rows, limit, timeout, priority)
        if outputs is None:
            return result  # already every output, in order: no need to rebuild it
        return {name: result[name] for name in wanted}

    @staticmethod
    async def _answer(
        future: asyncio.Future[dict[str, np.ndarray]], wanted: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Await a request's future, withdrawing it if the awaiting task is cancelled."""
        try:
            result = await future
        finally:
            future.cancel()  # a no-op once done; withdraws the request if this task was cancelled
        return {name: result[name] for name in wanted}

    def infer_nowait(
        self,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        sequence: SequenceFlags | None = None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue a request's rows and return a future of every output, without awaiting.

        ``outputs`` names the outputs the caller will pick: a model computes them all anyway
        (a composite, an ensemble, may compute only those).

        For callbacks that cannot await, such as the HTTP protocol's inference path. The inputs
        are checked here (``InvalidInput``, ``QueueFull`` and ``BatcherClosed`` are raised at
        once); the other errors of :meth:`infer` arrive through the future. Cancel the future to
        withdraw the request: rows that have not run yet never run. Pick outputs from the result
        with names that :meth:`check_outputs` accepted.
        """
        arrays, rows = self._prepared(inputs)
        limit = self.batching.max_batch_size
        if rows > limit and self.backend.takes_requests:
            raise InvalidInput(self._too_many_rows(limit))
        if rows <= limit:
            return self._batcher.submit_nowait(
                arrays, timeout=timeout, priority=priority, size=rows, key=shape_key(arrays)
            )
        return asyncio.ensure_future(self._infer_in_chunks(arrays, rows, limit, timeout, priority))

    def _too_many_rows(self, limit: int) -> str:
        # A model that answers each request on its own would see a larger one in chunks, each
        # as a request of its own: refused, as Triton refuses it (its words).
        return f"inference request batch-size must be <= {limit} for {self.name!r}"

    def _prepared(self, inputs: Mapping[str, Any]) -> tuple[Request, int]:
        """The request checked, and padded if the model pads; its rows."""
        arrays, rows = self._checked(inputs)
        if self.padder is not None:
            return self.padder.pad(arrays, rows), rows
        return arrays, rows

    def _checked(self, inputs: Mapping[str, Any]) -> tuple[Request, int]:
        """The request's arrays checked against the model's inputs, and its rows."""
        return check_inputs(
            self.name,
            self.inputs,
            inputs,
            max_rows=self._max_rows,
            strict_shapes=self.backend.strict_shapes,
            batched=self.backend.batched,
        )

    async def _infer_in_chunks(
        self,
        arrays: Request,
        rows: int,
        limit: int,
        timeout: float | None,  # noqa: ASYNC109 - passed on to the batcher
        priority: int,
    ) -> Response:
        """Run a request larger than a batch as batch-sized chunks, a window at a time.

        At most ``chunk_window`` chunks are queued or running at once, so one very large
        request never holds more than that share of the queue, and requests from other callers
        interleave with its chunks. The first chunk is admitted or refused (``QueueFull``) like
        any request; a later chunk that finds the queue full waits for one of the request's own
        chunks to finish, or for room, so an admitted request is never refused halfway. The
        request's deadline covers all its chunks.
        """
        batcher = self._batcher
        loop = asyncio.get_running_loop()
        if timeout is None:
            timeout = self.batching.timeout
        deadline = None if timeout is None else loop.time() + timeout
        starts = iter(enumerate(range(0, rows, limit)))
        pending: dict[asyncio.Future[Response], int] = {}
        parts: list[Response | None] = [None] * -(-rows // limit)

        def submit(index: int, start: int) -> None:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(f"the deadline of {timeout:g}s passed between chunks")
            chunk: Request = (
                arrays.rows(start, start + limit)
                if isinstance(arrays, Padded)
                else {name: array[start : start + limit] for name, array in arrays.items()}
            )
            size = min(limit, rows - start)
            future = batcher.submit_nowait(
                chunk, timeout=remaining, priority=priority, size=size, key=shape_key(chunk)
            )
            pending[future] = index

        try:
            submit(*next(starts))  # QueueFull here refuses the whole request
            following = next(starts, None)
            while pending or following is not None:
                while following is not None and len(pending) < self.chunk_window:
                    if batcher.full:  # wait for room: not a refusal, so not counted as one
                        break
                    try:
                        submit(*following)
                    except QueueFull:
                        break
                    following = next(starts, None)
                if not pending:  # the queue is full and none of this request's chunks is in it
                    remaining = None if deadline is None else deadline - loop.time()
                    try:
                        async with asyncio.timeout(remaining):
                            await batcher.wait_for_room()
                    except TimeoutError:
                        raise DeadlineExceeded(
                            f"the deadline of {timeout:g}s passed waiting for room in the queue"
                        ) from None
                    continue
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                errors = [future.exception() for future in done]  # read every outcome
                for error in errors:
                    if error is not None:
                        raise error
                for future in done:
                    parts[pending.pop(future)] = future.result()
        finally:
            for future in pending:  # one chunk failed: the others' rows are no use any more
                future.cancel()
        return {
            name: np.concatenate([part[name] for part in parts if part is not None])
            for name in self._output_names
        }

    def check_outputs(self, outputs: Sequence[str] | None) -> tuple[str, ...]:
        """The output names a request asks for (None: every output), checked.

        Raises:
            InvalidInput: The model has no output of one of the names.
        """
        if outputs is None:
            return self._output_names
        for name in outputs:
            if name not in self._output_names:
                raise InvalidInput(
                    f"model {self.name!r} has no output {name!r}; its outputs are: "
                    + ", ".join(self._output_names)
                )
        return tuple(outputs)

    def statistics(self) -> BatcherStatistics:
        """The batcher's statistics for this model version."""
        return self._batcher.statistics()

    async def aclose(self, *, grace_period: float | None = None) -> None:
        """Stop taking requests, drain the queued and running ones, then release the model."""
        self._closing = True  # before the gather: no signature handle may be made after it
        await asyncio.gather(
            self._batcher.aclose(grace_period=grace_period),
            *(h.aclose(grace_period=grace_period) for h in self._signature_handles.values()),
        )
        await asyncio.to_thread(self.backend.close)

    # -- inside the executor thread ----------------------------------------------------------

    def _run_batch(self, requests: list[Request]) -> list[Response | Exception]:
        """Group the requests by row shape, run the model once per group, split the outputs.

        A group that fails with more than one request runs again one request at a time, so a
        request the model cannot take (one no check before the queue could catch) fails alone,
        never anyone else's rows.
        """
        if self.backend.takes_requests:
            return self._run_requests(requests)
        groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
        for index, request in enumerate(requests):
            # By shape, and by which inputs it has (an optional one may be left out).
            key = tuple((name, array.shape[1:]) for name, array in request.items())
            groups.setdefault(key, []).append(index)
        results: list[Response | Exception] = [None] * len(requests)  # type: ignore[list-item]
        for members in groups.values():
            try:
                self._run_group([requests[i] for i in members], members, results)
            except Exception as error:  # this group fails; other shape groups are unaffected
                if len(members) == 1:
                    results[members[0]] = self._failure(error)
                    continue
                # One traceback for the batch; each request's own outcome then follows.
                logger.error(
                    "model %s v%s failed on a batch of %d requests; running each alone",
                    self.name,
                    self.version,
                    len(members),
                    exc_info=error,
                )
                for i in members:
                    self._run_alone(requests[i], i, results)
        return results

    def _run_requests(self, requests: list[Request]) -> list[Response | Exception]:
        """Hand the model the batch's requests as they came, for a model that takes them so.

        A whole batch that fails (the model raised) with more than one request runs again one
        request at a time, as a concatenated batch does.
        """
        try:
            answers = self.backend.predict_requests(requests)
            if len(answers) != len(requests):
                raise ModelError(
                    f"model {self.name!r} answered {len(answers)} of {len(requests)} requests"
                )
        except Exception as error:
            if len(requests) == 1:
                return [self._failure(error)]
            logger.error(
                "model %s v%s failed on a batch of %d requests; running each alone",
                self.name,
                self.version,
                len(requests),
                exc_info=error,
            )
            return [self._run_requests([request])[0] for request in requests]
        results: list[Response | Exception] = []
        for request, answer in zip(requests, answers, strict=True):
            if isinstance(answer, Exception):
                results.append(self._failure(answer))
                continue
            rows = next(iter(request.values())).shape[0]
            missing = [name for name in self._output_names if name not in answer]
            short = [
                name
                for name in self._output_names
                if self.backend.batched and name in answer and len(answer[name]) != rows
            ]
            if missing or short:
                problem = (
                    f"no output {missing[0]!r}"
                    if missing
                    else f"{len(answer[short[0]])} rows for output {short[0]!r}; expected {rows}"
                )
                results.append(self._failure(ModelError(f"model {self.name!r} returned {problem}")))
                continue
            results.append({name: answer[name] for name in self._output_names})
        return results

    def _run_alone(self, request: Request, index: int, results: list[Response | Exception]) -> None:
        try:
            self._run_group([request], [index], results)
        except Exception as error:  # logged with its batch's; this request's outcome only
            logger.debug(
                "model %s v%s failed on a request alone: %r", self.name, self.version, error
            )
            results[index] = self._as_failure(error)

    def _failure(self, error: Exception) -> Exception:
        """What a request whose run (alone) failed is told, logged.

        The model's refusal of its input is the request's fault (400); anything else is the
        model's failure (500).
        """
        if isinstance(error, InvalidInput):
            logger.debug("model %s v%s refused a request: %s", self.name, self.version, error)
        else:
            logger.error(
                "model %s v%s failed on a request", self.name, self.version, exc_info=error
            )
        return self._as_failure(error)

    def _as_failure(self, error: Exception) -> Exception:
        if isinstance(error, InvalidInput):
            return error
        return BatchFailed.caused_by(f"model {self.name!r} failed: {error!r}", error)

    def _run_group(
        self, group: list[Request], members: list[int], results: list[Response | Exception]
    ) -> None:
        names = list(group[0])
        if len(group) == 1:
            batch = dict(group[0])
        else:
            batch = {name: np.concatenate([r[name] for r in group]) for name in names}
        rows = next(iter(batch.values())).shape[0]
        padded = self._padded_size(rows)
        if padded > rows:
            batch = {name: _pad_rows(array, padded) for name, array in batch.items()}
        outputs = self.backend.predict(batch)
        if not self.backend.batched:  # one request, whole: its outputs are its own, any shape
            missing = [name for name in self._output_names if name not in outputs]
            if missing:
                raise ModelError(f"model {self.name!r} returned no output {missing[0]!r}")
            [index] = members
            results[index] = {name: outputs[name] for name in self._output_names}
            return
        for name in self._output_names:
            array = outputs.get(name)
            if array is None or len(array) != padded:
                got = "nothing" if array is None else f"{len(array)} rows"
                raise ModelError(
                    f"model {self.name!r} returned {got} for output {name!r}; expected {padded}"
                )
        padder = self.padder
        offset = 0
        for index, request in zip(members, group, strict=True):
            n = next(iter(request.values())).shape[0]
            result = {name: outputs[name][offset : offset + n] for name in self._output_names}
            if padder is not None and isinstance(request, Padded):
                result = padder.trim(result, request)
            results[index] = result
            offset += n
        if padder is not None:  # counted once it ran (a refused or failed one is not)
            padder.count([r for r in group if isinstance(r, Padded)])

    def _padded_size(self, rows: int) -> int:
        allowed = self.batching.allowed_batch_sizes
        if not self.batching.pad_to_allowed_batch_size or rows in allowed:
            return rows
        return allowed[bisect.bisect_left(allowed, rows)]

    def __repr__(self) -> str:
        return f"<ModelHandle {self.name} v{self.version} ({self.platform})>"


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Pad the first dimension to ``rows`` with copies of the last row (always valid input)."""
    extra = np.repeat(array[-1:], rows - array.shape[0], axis=0)
    return np.concatenate([array, extra])
