"""``SequenceHandle``: a stateful model, whose requests are the steps of sequences.

Triton's sequence batcher in coserve's form. Each request names its sequence
(:class:`SequenceFlags`: an id, and whether it starts or ends it); the model keeps state per
sequence between steps, so the steps of one sequence must reach it one at a time and in order,
while the steps of different sequences are batched together.

How it runs: every sequence has a queue of its own steps, and at most one of them is in the
model's batcher at a time, so a batch holds at most one step per sequence and a sequence's steps
run in the order they came. A sequence holds a *place* from its first step until its last one
has run (or it expires); there are ``max_sequences`` places, and a new sequence waits for one.

- ``direct``: the places are the rows of the batch (slots). A sequence's steps always run in
  the same row, so the model may keep its state per row; a row without a step gets zeros, with
  the READY control input false. Batches run one at a time.
- ``oldest``: the batch holds the next steps of the sequences that have one, oldest first, in
  any row: the model tells them apart by the CORRID control input (or a Triton Python model by
  ``correlation_id()``). Batches run on as many slots as the model has.

Control inputs are filled in from the request's flags: START on a sequence's first step, END on
its last, READY on rows that hold a step, CORRID the sequence id. A sequence that has had no
request for ``max_idle`` seconds expires: its place is freed, and its next request (which does
not start a new one) is told so. A failed batch fails each of its steps: a stateful model's
steps are never rerun (running a step twice would apply it twice).

Deadlines and withdrawals are the handle's, not the batcher's: a step whose caller gives up
(cancels, or its deadline passes) is answered at once, but stays in the model's queue until its
batch, which skips it if it has not run yet. So a sequence's next step is sent only once the
batch holding the previous one is over, and never runs beside it. A skipped step's START goes to
the sequence's next step. (The batcher counts a skipped step as completed.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from coserve._exceptions import (
    BatcherClosed,
    BatchFailed,
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    ModelLoadError,
)
from coserve.batching import BatcherStatistics
from coserve.batching._queue import RequestFuture
from coserve.models._admission import InFlightAdmission
from coserve.models._backend import Backend, SequenceFlags
from coserve.models._config import BatchingConfig, SequenceConfig, SequenceControl
from coserve.models._handle import ModelHandle, Response
from coserve.models._specs import TensorSpec, dtype_of

__all__ = ["SequenceHandle"]

logger = logging.getLogger("coserve.models")

_REMEMBERED = 4096  # expired sequence ids remembered, to tell their next request why


@dataclass(eq=False, slots=True)
class _Step:
    """One request of a sequence, queued in its sequence until its turn."""

    arrays: dict[str, np.ndarray]
    start: bool
    end: bool
    future: asyncio.Future[Response]
    deadline: float | None
    priority: int
    timer: asyncio.TimerHandle | None = None  # its deadline
    item: _Item | None = None  # once it is in the batcher


@dataclass(eq=False, slots=True)
class _Sequence:
    """A sequence's state in the handle: its place, its queued steps, its idle timer."""

    id: int | str
    place: int | None = None  # the slot (direct: its row); None while waiting for one
    steps: deque[_Step] = field(default_factory=deque)
    running: bool = False  # a step is in the batcher
    open: bool = True  # its END has not come yet
    carry_start: bool = False  # a withdrawn step's START, for the next step
    timer: asyncio.TimerHandle | None = None
    idle_since: float | None = None  # when it last had nothing queued or running


@dataclass(eq=False, slots=True)
class _Item:
    """What the batcher carries for one step: its inputs, its row, its flags.

    ``withdrawn`` is set on the loop when the step's caller has its answer before the model
    ran it (cancelled, or past its deadline): the batch skips it. ``ran`` is set in the batch
    when the model runs it, and read on the loop once the batch is over.
    """

    arrays: dict[str, np.ndarray]
    place: int
    flags: SequenceFlags
    withdrawn: bool = False
    ran: bool = False


class SequenceHandle(InFlightAdmission, ModelHandle):
    """A stateful model's handle: requests name their sequence, and run in its order.

    See the module's documentation for how sequences are scheduled. ``inputs`` are what
    clients send: the model's inputs less its control inputs.

    Args:
        backend: The loaded model (its inputs include the control inputs).
        batching: Its batching policy (``direct`` runs one batch at a time whatever it says).
        sequence: How its sequences are scheduled.
        labels: Class labels, for classifiers.

    Raises:
        ModelLoadError: A control input is not one of the model's inputs, or has a datatype
            its kind cannot have.
    """

    def __init__(
        self,
        backend: Backend,
        batching: BatchingConfig,
        sequence: SequenceConfig,
        *,
        labels: Sequence[str] = (),
    ) -> None:
        direct = sequence.strategy == "direct"
        slots = batching.max_batch_size if backend.batched else 1
        places = sequence.max_sequences or (slots if direct else batching.max_queue_size)
        if direct:
            places = min(places, slots)
        # Direct: batches one at a time, or two batches could hold one row's steps out of
        # order. Rows are never padded: a copied row would be another sequence's step.
        batching = replace(
            batching,
            max_concurrent_batches=1 if direct else batching.max_concurrent_batches,
            max_queue_size=max(batching.max_queue_size, places),
            combine_requests=backend.batched,
            pad_to_allowed_batch_size=False,
        )
        super().__init__(backend, batching, labels=labels)
        self.sequence = sequence
        """How this model's sequences are scheduled."""
        self._controls = _resolve_controls(backend, sequence.controls)
        self._id_range: tuple[int, int] | None = None  # an integer CORRID's range
        for control, dtype in self._controls:
            if control.kind == "corrid" and dtype != np.object_:
                info = np.iinfo(dtype)
                self._id_range = (max(int(info.min), 1), int(info.max))
        names = {control.name for control, _ in self._controls}
        self._client_inputs = tuple(spec for spec in backend.inputs if spec.name not in names)
        # Deadlines are the handle's (a step's covers its wait in its sequence's queue too):
        # the batcher never fails a step that runs, so a sequence's next step never overtakes
        # it. A withdrawn step is skipped when its batch runs.
        self._batcher = self._new_batcher(self._run_steps, replace(batching, timeout=None))
        self._direct = direct
        self._free = list(range(places))[::-1]  # popped from the end: lowest first
        self._backlog: deque[_Sequence] = deque()
        self._sequences: dict[int | str, _Sequence] = {}
        self._expired: OrderedDict[int | str, None] = OrderedDict()
        self._held = 0  # steps accepted and not yet answered
        self._room_waiters: deque[Callable[[], bool]] = deque()
        self._refused_queue_full = 0
        self._drained: asyncio.Future[None] | None = None

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs clients send: the model's, less the control inputs coserve fills in."""
        return self._client_inputs

    @property
    def active_sequences(self) -> int:
        """Sequences holding a place or waiting for one."""
        return len(self._sequences)

    # -- admission ---------------------------------------------------------------------------

    def _in_flight(self) -> int:
        return self._held

    def statistics(self) -> BatcherStatistics:
        """The batcher's statistics, with the requests this handle refused itself."""
        stats = self._batcher.statistics()
        return dataclasses.replace(
            stats,
            rejected=stats.rejected + self._refused_queue_full,
            rejected_queue_full=stats.rejected_queue_full + self._refused_queue_full,
        )

    # -- requests ----------------------------------------------------------------------------

    async def infer(
        self,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the batcher enforces
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        sequence: SequenceFlags | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one step of a sequence and return its outputs.

        Raises:
            InvalidInput: No sequence, a sequence that was never started (or has expired or
                ended) without ``start``, more than one row, or inputs that do not fit.
            QueueFull, DeadlineExceeded, BatcherClosed, BatchFailed: As
                :meth:`ModelHandle.infer`.
        """
        wanted = self.check_outputs(outputs)
        future = self.infer_nowait(
            inputs, timeout=timeout, priority=priority, outputs=outputs, sequence=sequence
        )
        return await self._answer(future, wanted)

    def infer_nowait(
        self,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        sequence: SequenceFlags | None = None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue one step of a sequence; cancel the future to withdraw it before it runs.

        A withdrawn step's START passes to the sequence's next step, and a withdrawn END
        still ends it. Raises what :meth:`infer` raises at once, except the model's errors.
        """
        if sequence is None or sequence.id in (0, ""):
            raise InvalidInput(  # Triton's words, which clients may match
                f"inference request to model {self.name!r} must specify a non-zero or "
                "non-empty correlation ID (the sequence_id parameter)"
            )
        if self._closing or self._batcher.closed:
            raise BatcherClosed(f"model {self.name!r} v{self.version} is being unloaded")
        self.refuse_if_full()
        arrays, rows = self._checked(inputs)
        if self.backend.batched and rows != 1:
            raise InvalidInput(
                f"inference request to model {self.name!r} must specify batch-size 1 due to "
                f"requirements of sequence batcher (each request is one step of its "
                f"sequence), got {rows}"
            )
        if self._id_range is not None:
            low, high = self._id_range
            if isinstance(sequence.id, str) or not low <= sequence.id <= high:
                raise InvalidInput(
                    f"model {self.name!r} takes integer sequence ids from {low} to {high} (its "
                    f"CORRID control input's range), got {sequence.id!r}"
                )
        loop = asyncio.get_running_loop()
        known = self._sequences.get(sequence.id)
        if (
            known is not None
            and known.idle_since is not None
            and loop.time() - known.idle_since >= self.sequence.max_idle
        ):
            self._idle(known)  # its timer is due, and may not have run yet on a busy loop
            known = None
        if not sequence.start and (known is None or not known.open):
            raise InvalidInput(self._not_started(sequence.id))
        if known is None:
            known = _Sequence(sequence.id)
            self._sequences[sequence.id] = known
            self._expired.pop(sequence.id, None)
            self._place(known)
        elif sequence.start and known.open:
            logger.warning(
                "model %s: sequence %r started again before it ended; its queued requests run "
                "first, then the new sequence starts in the same place",
                self.name,
                sequence.id,
            )
        if known.timer is not None:
            known.timer.cancel()
            known.timer = None
        known.idle_since = None
        if timeout is None:
            timeout = self.batching.timeout
        # A RequestFuture marks its step withdrawn inside cancel() itself: a batch taken in
        # the same loop pass as the cancel still skips it.
        future = RequestFuture(loop=loop)
        step = _Step(
            arrays,
            sequence.start,
            sequence.end,
            future,
            None if timeout is None else loop.time() + timeout,
            priority,
        )
        if step.deadline is not None and timeout is not None:
            step.timer = loop.call_at(step.deadline, self._expire_step, step, timeout)
        future.on_cancel = functools.partial(_mark_withdrawn, step)
        self._held += 1
        future.add_done_callback(self._answered)
        future.add_done_callback(functools.partial(_withdraw, step))
        known.steps.append(step)
        known.open = not sequence.end
        self._pump(known)
        return future

    def _not_started(self, sequence_id: int | str) -> str:
        # Triton's words first, which clients match to restart a sequence.
        message = (
            f"inference request for sequence {sequence_id} to model {self.name!r} must "
            "specify the START flag on the first request of the sequence"
        )
        if sequence_id in self._expired:
            return (
                f"{message}: sequence {sequence_id} expired after "
                f"{self.sequence.max_idle:g}s without a request "
                "(max_sequence_idle_microseconds), and its state is gone"
            )
        return message

    def _answered(self, _: asyncio.Future[Response]) -> None:
        self._held -= 1
        if self._room_waiters:
            self._wake_room_waiters()
        if self._drained is not None and not self._held and not self._drained.done():
            self._drained.set_result(None)

    def _expire_step(self, step: _Step, timeout: float) -> None:
        step.timer = None
        if step.future.done():
            return
        where = (
            "waited for its sequence's earlier requests"
            if step.item is None
            else "was in the model's queue or running"
        )
        _mark_withdrawn(step)
        step.future.set_exception(
            DeadlineExceeded(f"the deadline of {timeout:g}s passed while the request {where}")
        )

    # -- places and steps --------------------------------------------------------------------

    def _place(self, sequence: _Sequence) -> None:
        if self._free:
            sequence.place = self._free.pop()
        else:
            logger.debug(
                "model %s: sequence %r waits for a place (%d taken)",
                self.name,
                sequence.id,
                len(self._sequences) - len(self._backlog) - 1,
            )
            self._backlog.append(sequence)

    def _release(self, sequence: _Sequence) -> None:
        """The sequence is over: free its place, for the longest-waiting sequence if any.

        A loop, not a recursion: a waiting sequence whose steps all went (withdrawn, out of
        time) while it waited is over as soon as it has the place, which goes to the next.
        """
        self._forget(sequence)
        place, sequence.place = sequence.place, None
        if place is None:  # it was still waiting: it had no place to free
            self._backlog.remove(sequence)
            return
        while self._backlog:
            waiting = self._backlog.popleft()
            waiting.place = place
            if self._advance(waiting):
                return
            self._forget(waiting)
            waiting.place = None
        self._free.append(place)
        self._free.sort(reverse=True)

    def _forget(self, sequence: _Sequence) -> None:
        if self._sequences.get(sequence.id) is sequence:
            del self._sequences[sequence.id]
        if sequence.timer is not None:
            sequence.timer.cancel()
            sequence.timer = None

    def _pump(self, sequence: _Sequence) -> None:
        """Send the sequence's next step to the batcher, or release it if it is over."""
        if not self._advance(sequence):
            self._release(sequence)

    def _advance(self, sequence: _Sequence) -> bool:
        """Send the next step, unless one is in the batcher or the sequence waits for a place.

        Returns False when the sequence is over: it ended (or the model is closing) and has
        nothing queued or running.
        """
        if sequence.running or sequence.place is None:
            return True
        loop = asyncio.get_running_loop()
        while sequence.steps:
            step = sequence.steps.popleft()
            start = step.start or sequence.carry_start
            sequence.carry_start = False
            if step.future.done():  # withdrawn or expired while it waited
                sequence.carry_start = start and not step.end
                continue
            item = _Item(step.arrays, sequence.place, SequenceFlags(sequence.id, start, step.end))
            try:
                queued = self._batcher.submit_nowait(item, priority=step.priority, size=1)
            except Exception as error:  # closed: this step fails alone
                step.future.set_exception(error)
                sequence.carry_start = start and not step.end
                continue
            step.item = item
            sequence.running = True
            queued.add_done_callback(functools.partial(self._step_done, sequence, step, start))
            return True
        if not sequence.open or self._closing:
            return False
        sequence.idle_since = loop.time()
        sequence.timer = loop.call_at(
            sequence.idle_since + self.sequence.max_idle, self._idle, sequence
        )
        return True

    def _step_done(
        self, sequence: _Sequence, step: _Step, start: bool, queued: asyncio.Future[Response]
    ) -> None:
        """The step's batch is over (or the batcher closed): answer it, send the next."""
        sequence.running = False
        item = step.item
        if item is not None and not item.ran:
            # Skipped (withdrawn) or never run: its START goes to the next step, so the
            # sequence starts at the first step whose caller stayed.
            sequence.carry_start = start and not step.end
        if not step.future.done():
            if queued.cancelled():
                step.future.cancel()
            elif (error := queued.exception()) is not None:
                step.future.set_exception(error)
            else:
                step.future.set_result(queued.result())
        self._pump(sequence)

    def _idle(self, sequence: _Sequence) -> None:
        sequence.timer = None
        if sequence.running or sequence.steps or self._sequences.get(sequence.id) is not sequence:
            return
        logger.info(
            "model %s: sequence %r expired after %gs without a request",
            self.name,
            sequence.id,
            self.sequence.max_idle,
        )
        self._expired[sequence.id] = None
        while len(self._expired) > _REMEMBERED:
            self._expired.popitem(last=False)
        self._release(sequence)

    # -- closing -----------------------------------------------------------------------------

    async def aclose(self, *, grace_period: float | None = None) -> None:
        """Take no new requests; let the queued steps run, up to the grace period; unload.

        Sequences with nothing queued are over at once (they can take no more requests), so
        their places go to the sequences waiting for one.
        """
        self._closing = True
        self._wake_room_waiters()
        for sequence in list(self._sequences.values()):
            if sequence.place is not None and not sequence.running and not sequence.steps:
                self._release(sequence)
        grace = self.batching.grace_period if grace_period is None else grace_period
        loop = asyncio.get_running_loop()
        if self._held:
            if self._drained is None or self._drained.done():
                self._drained = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), grace)
            except TimeoutError:
                logger.warning(
                    "model %s: the grace period of %gs ran out with %d sequence requests "
                    "unanswered; failing them",
                    self.name,
                    grace,
                    self._held,
                )
        for sequence in list(self._sequences.values()):
            for step in sequence.steps:
                if not step.future.done():
                    step.future.set_exception(
                        BatcherClosed(f"model {self.name!r} v{self.version} was unloaded")
                    )
            sequence.steps.clear()
            if sequence.timer is not None:
                sequence.timer.cancel()
        await super().aclose(grace_period=0.0 if self._held else grace_period)

    # -- inside the executor thread ----------------------------------------------------------

    def _run_steps(self, items: list[_Item]) -> list[Response | Exception]:
        """Run one batch of steps (of distinct sequences), skipping the withdrawn ones.

        Steps whose inputs differ in shape run as separate groups. A group that fails fails
        each of its steps: a stateful model's steps are never rerun (the model may have
        applied some of them).
        """
        results: list[Response | Exception] = [{} for _ in items]  # a skipped step's: unread
        groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
        for index, item in enumerate(items):
            if item.withdrawn:
                continue
            item.ran = True
            key = tuple((name, array.shape) for name, array in item.arrays.items())
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            group = [items[i] for i in members]
            try:
                answers = self._run_group_of_steps(group)
            except Exception as error:
                answers = [self._step_failure(error, len(group))] * len(group)
            for index, answer in zip(members, answers, strict=True):
                results[index] = answer
        return results

    def _step_failure(self, error: Exception, steps: int) -> Exception:
        if isinstance(error, InvalidInput):
            logger.debug("model %s refused sequence requests: %s", self.name, error)
            return error
        logger.error(
            "model %s v%s failed on a batch of %d sequence requests",
            self.name,
            self.version,
            steps,
            exc_info=error,
        )
        return BatchFailed.caused_by(f"model {self.name!r} failed: {error!r}", error)

    def _run_group_of_steps(self, items: list[_Item]) -> list[Response | Exception]:
        if not self.backend.batched:  # one step a batch, its tensors as they are
            [item] = items
            batch = dict(item.arrays)
            for control, dtype in self._controls:
                batch[control.name] = np.array([_value(control, item.flags, dtype)], dtype=dtype)
            outputs, errors = self.backend.predict_sequence(batch, [item.flags])
            if 0 in errors:
                return [self._step_failure(errors[0], 1)]
            return [{name: outputs[name] for name in self._output_names}]
        rows_of = [item.place for item in items] if self._direct else list(range(len(items)))
        rows = max(rows_of) + 1
        flags: list[SequenceFlags | None] = [None] * rows
        for row, item in zip(rows_of, items, strict=True):
            flags[row] = item.flags
        batch = {}
        for spec in self._client_inputs:
            if spec.name not in items[0].arrays:  # an optional input this group lacks
                continue
            sample = items[0].arrays[spec.name]
            if sample.dtype == np.object_:
                array = np.full((rows, *sample.shape[1:]), b"", dtype=object)
            else:
                array = np.zeros((rows, *sample.shape[1:]), dtype=sample.dtype)
            for row, item in zip(rows_of, items, strict=True):
                array[row] = item.arrays[spec.name][0]
            batch[spec.name] = array
        for control, dtype in self._controls:
            values = [_value(control, row_flags, dtype) for row_flags in flags]
            batch[control.name] = np.array(values, dtype=dtype).reshape(rows, 1)
        outputs, errors = self.backend.predict_sequence(batch, flags)
        for name in self._output_names:
            given = outputs.get(name)
            if given is None or len(given) != rows:
                got = "nothing" if given is None else f"{len(given)} rows"
                raise ModelError(
                    f"model {self.name!r} returned {got} for output {name!r}; expected {rows}"
                )
        return [
            self._step_failure(errors[row], 1)
            if row in errors
            else {name: outputs[name][row : row + 1] for name in self._output_names}
            for row in rows_of
        ]

    def __repr__(self) -> str:
        return (
            f"<SequenceHandle {self.name} v{self.version} ({self.platform}, "
            f"{self.sequence.strategy})>"
        )


def _mark_withdrawn(step: _Step) -> None:
    """Its caller has its answer: if the model has not run the step yet, its batch skips it."""
    if step.item is not None:
        step.item.withdrawn = True


def _withdraw(step: _Step, _: asyncio.Future[Response]) -> None:
    """The step has its answer: if the model has not run it yet, its batch skips it."""
    if step.timer is not None:
        step.timer.cancel()
        step.timer = None
    if step.item is not None:
        step.item.withdrawn = True


def _value(control: SequenceControl, flags: SequenceFlags | None, dtype: np.dtype[Any]) -> Any:
    """A control input's value for one row (``flags`` None: a free slot)."""
    if control.kind == "corrid":
        if flags is None:
            return b"" if dtype == np.object_ else 0
        if dtype == np.object_:
            return str(flags.id).encode("utf-8")
        return flags.id
    if flags is None:
        on = False
    elif control.kind == "start":
        on = flags.start
    elif control.kind == "end":
        on = flags.end
    else:  # ready
        on = True
    return control.true if on else control.false


def _resolve_controls(
    backend: Backend, controls: Sequence[SequenceControl]
) -> tuple[tuple[SequenceControl, np.dtype[Any]], ...]:
    """Each control input with the dtype it is fed in, checked against the model's inputs."""
    specs = {spec.name: spec for spec in backend.inputs}
    resolved = []
    for control in controls:
        spec = specs.get(control.name)
        if spec is None:
            raise ModelLoadError(
                f"model {backend.name!r}: the {control.kind.upper()} control input "
                f"{control.name!r} is not an input of the model; its inputs are: "
                + ", ".join(specs)
            )
        datatype = control.datatype or spec.datatype
        if datatype != spec.datatype:
            raise ModelLoadError(
                f"model {backend.name!r}: the {control.kind.upper()} control input "
                f"{control.name!r} is {datatype} in the config, the model takes {spec.datatype}"
            )
        if control.kind == "corrid" and datatype not in (
            "UINT64",
            "INT64",
            "UINT32",
            "INT32",
            "BYTES",
        ):
            raise ModelLoadError(
                f"model {backend.name!r}: the CORRID control input {control.name!r} must be "
                f"an integer or BYTES (a string id), not {datatype}"
            )
        resolved.append((control, dtype_of(datatype)))
    return tuple(resolved)
