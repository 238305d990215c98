"""The adaptive batcher: concurrent single submits in, batched calls of one function out.

Dispatch is *pull with slots* (DESIGN.md §3): a dispatcher task waits until an execution slot is
free and something is queued, then takes greedily, up to ``max_batch_size`` rows. With
``max_wait > 0`` it lingers for more, until the batch is full or ``max_wait`` has passed since the
oldest queued request arrived. While every slot is busy requests pile up, so batches grow with the
load by themselves and a lone request at low load runs at once.

The dispatcher never polls: it sleeps on one future, woken by a submit that matters (the first
request, or enough rows to fill a batch while lingering), by a finished batch (a free slot), by its
linger deadline, or by close. Each waiting caller is a suspended coroutine on its own future;
deadlines are timers set once at submit.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import inspect
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from coserve._exceptions import (
    BatcherClosed,
    BatchFailed,
    DeadlineExceeded,
    QueueFull,
)
from coserve.batching import _observe
from coserve.batching._adaptive import AdaptiveController
from coserve.batching._queue import BucketedQueue, QueuedRequest, RequestFuture, RequestState
from coserve.batching._statistics import BatcherStatistics, CloseReason, Counters
from coserve.batching._target import LatencyTarget

__all__ = [
    "UNSET",
    "AsyncBatchFunction",
    "BatchFunction",
    "Batcher",
    "BatchingOptions",
    "SyncBatchFunction",
]

T = TypeVar("T")
R = TypeVar("R")

SyncBatchFunction = Callable[[list[T]], Sequence[R | Exception]]
"""A function from a list of items to a list of results (an ``Exception`` fails only its item)."""
AsyncBatchFunction = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]
"""The coroutine-function form of :data:`SyncBatchFunction`."""
BatchFunction = SyncBatchFunction[T, R] | AsyncBatchFunction[T, R]
"""What a :class:`Batcher` runs: sync (in an executor) or async (awaited on the loop)."""

logger = logging.getLogger("coserve.batching")

_NEVER = sys.maxsize  # a wake threshold no submit reaches: only a finished batch or close wakes


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine (functions, partials, methods, objects)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - we want the method, not callable()
    )


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    """The options a :class:`Batcher` forms batches with now (see :meth:`Batcher.configure`)."""

    max_batch_size: int
    max_wait: float
    max_concurrent_batches: int
    max_queue_size: int
    timeout: float | None
    max_requests_per_batch: int | None
    target_latency: LatencyTarget | None = None
    """The adaptive mode's latency target (None: batches formed by the options above)."""


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = _Unset.UNSET
"""An option :meth:`Batcher.configure` leaves as it is (for those where None means something)."""


def _check_options(
    *,
    max_batch_size: int | None = None,
    max_wait: float | None = None,
    max_concurrent_batches: int | None = None,
    max_queue_size: int | None = None,
    timeout: float | None = None,
    max_requests_per_batch: int | None = None,
) -> None:
    """Check the batching options given (None: not given, or None where None is allowed)."""
    for option, value in (
        ("max_batch_size", max_batch_size),
        ("max_concurrent_batches", max_concurrent_batches),
        ("max_queue_size", max_queue_size),
        ("max_requests_per_batch", max_requests_per_batch),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{option} must be an int, got {value!r}")
        _check_positive(option, value)
    _check_positive("max_wait", max_wait, allow_zero=True)
    _check_positive("timeout", timeout)


def _as_target(value: LatencyTarget | str | None) -> LatencyTarget | None:
    """A latency target from its text (``p99<20ms``), or as given."""
    if value is None or isinstance(value, LatencyTarget):
        return value
    if isinstance(value, str):
        return LatencyTarget.parse(value)
    raise TypeError(
        f"target_latency must be a LatencyTarget or text such as 'p99<20ms', got {value!r}"
    )


def _check_positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or not math.isfinite(value):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


class Batcher(Generic[T, R]):
    """Gathers items submitted concurrently into batches and runs ``fn`` once per batch.

    ``fn`` takes a list of items and returns a list of results of the same length, in order. A
    result slot holding an ``Exception`` instance fails only that item's caller. A sync ``fn`` runs
    in ``executor`` (by default a thread pool of ``max_concurrent_batches`` threads that the
    batcher owns), so the event loop never blocks on it; an async ``fn`` is awaited on the loop.

    Use it as an async context manager, or call :meth:`aclose` when done::

        async with Batcher(model_fn, max_batch_size=32) as batcher:
            result = await batcher.submit(item, timeout=0.5)

    A batcher binds to the event loop it first runs in (on ``async with`` or the first submit).

    Args:
        fn: The batch function, sync or async.
        max_batch_size: The most rows in one batch.
        max_wait: Seconds to linger for a fuller batch, counted from the oldest queued request;
            0 dispatches whatever is queued as soon as a slot is free.
        max_concurrent_batches: Execution slots: batches that may run at the same time.
        max_queue_size: Requests that may wait; one more is rejected with ``QueueFull`` at once.
        timeout: The default deadline of each request in seconds (None: no deadline).
        executor: Where a sync ``fn`` runs; the batcher does not shut down an executor it was given.
        grace_period: Seconds :meth:`aclose` lets queued and running work finish before failing
            the rest with ``BatcherClosed``.
        name: A name for logs and statistics; defaults to the function's qualified name.
        max_requests_per_batch: The most submits in one batch, whatever their rows (None: as
            many as fit). 1 runs every request as a batch of its own: no batching across
            requests, as TensorFlow Serving without ``--enable_batching`` and Triton without
            ``dynamic_batching`` run them.
        target_latency: Batch adaptively to meet this latency (``"p99<20ms"`` or a
            :class:`LatencyTarget`), from submit to answer: the batcher fits each batch's
            latency to its size, estimates the arrival rate, and at each free slot chooses how
            many rows to take (at most ``max_batch_size``) and whether to linger (at most
            ``max_wait``, when that is > 0), and fails a request early when its deadline would
            pass before its batch ends (see :mod:`coserve.batching._adaptive`). At low load it
            runs each request at once, as ``max_wait=0`` does. None: batch by the options alone.

    Raises:
        TypeError: ``fn`` is not callable, or an option has the wrong type.
        ValueError: An option is out of range.
    """

    def __init__(
        self,
        fn: BatchFunction[T, R],
        *,
        max_batch_size: int = 64,
        max_wait: float = 0.0,
        max_concurrent_batches: int = 1,
        max_queue_size: int = 1024,
        timeout: float | None = None,
        executor: Executor | None = None,
        grace_period: float = 30.0,
        name: str | None = None,
        max_requests_per_batch: int | None = None,
        target_latency: LatencyTarget | str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        for option, value in (
            ("max_batch_size", max_batch_size),
            ("max_concurrent_batches", max_concurrent_batches),
            ("max_queue_size", max_queue_size),
            ("max_wait", max_wait),
        ):
            if value is None:  # _check_options reads None as "not given"; here it is required
                raise TypeError(f"{option} must be a number, got None")
        _check_options(
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            max_concurrent_batches=max_concurrent_batches,
            max_queue_size=max_queue_size,
            timeout=timeout,
            max_requests_per_batch=max_requests_per_batch,
        )
        _check_positive("grace_period", grace_period, allow_zero=True)
        target = _as_target(target_latency)

        self._fn = fn
        self._is_async = is_async_callable(fn)
        self._max_batch_size = max_batch_size
        # The largest max_batch_size it has had: a request sized under it (the later chunks of
        # a large request split before configure() lowered the limit) is taken, and runs alone.
        self._size_limit = max_batch_size
        self._max_requests = max_requests_per_batch
        self._max_wait = float(max_wait)
        self._slots = max_concurrent_batches
        self._max_queue_size = max_queue_size
        self._timeout = timeout
        self._executor = executor
        self._owns_executor = False
        self._pool_size = 0  # threads of the pool it owns
        self._grace_period = grace_period
        self._name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        self._adaptive = (
            None if target is None else AdaptiveController(target, max_batch_size, float(max_wait))
        )

        self._queue: BucketedQueue[T] = BucketedQueue()
        self._counters = Counters()
        self._running: dict[asyncio.Future[Any], list[QueuedRequest[T]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wake_rows = _NEVER
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        # Callbacks waiting for a free place, first come first served; each returns whether it
        # took its turn (False: its caller had gone, so the turn passes to the next).
        self._room_waiters: deque[Callable[[], bool]] = deque()
        self._waking = False

    # -- public surface ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name used in logs."""
        return self._name

    @property
    def max_batch_size(self) -> int:
        """The most rows in one batch."""
        return self._max_batch_size

    def options(self) -> BatchingOptions:
        """The options in force now (they change with :meth:`configure`)."""
        return BatchingOptions(
            max_batch_size=self._max_batch_size,
            max_wait=self._max_wait,
            max_concurrent_batches=self._slots,
            max_queue_size=self._max_queue_size,
            timeout=self._timeout,
            max_requests_per_batch=self._max_requests,
            target_latency=None if self._adaptive is None else self._adaptive.target,
        )

    def configure(
        self,
        *,
        max_batch_size: int | None = None,
        max_wait: float | None = None,
        max_concurrent_batches: int | None = None,
        max_queue_size: int | None = None,
        timeout: float | _Unset | None = UNSET,
        max_requests_per_batch: int | _Unset | None = UNSET,
        target_latency: LatencyTarget | str | _Unset | None = UNSET,
    ) -> BatchingOptions:
        """Change batching options while the batcher serves; nothing queued or running is lost.

        Options not given stay as they are (``timeout`` and ``max_requests_per_batch`` take
        None as a value, so they are left out rather than passed None to keep them). Every
        option is checked before any changes. The next batch is formed with the new options:

        - ``max_batch_size``: a request queued under a larger limit still runs, alone if it
          does not fit the new one; requests of up to the largest limit the batcher has had
          are still taken (run alone), so a large request split under the old one completes;
        - ``max_wait``: the lingering of the buckets waiting now is reckoned with the new value;
        - ``max_concurrent_batches``: more slots start batches at once (the thread pool the
          batcher owns grows); fewer let the running batches finish, starting none until one
          is free under the new count;
        - ``max_queue_size``: a smaller bound refuses new requests until the queue is below it
          (nothing queued is dropped); a larger one lets waiters in;
        - ``timeout``: the default deadline of requests submitted from now on;
        - ``target_latency``: adaptive batching to a new target (what it learned of the
          model's latency and the arrival rate stays), or None to stop adapting.

        Call it from the batcher's event loop (or before it starts).

        Returns:
            The options now in force.

        Raises:
            TypeError, ValueError: An option has the wrong type or is out of range; nothing
                changed.
            RuntimeError: Called from another event loop than the batcher's.
        """
        _check_options(
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            max_concurrent_batches=max_concurrent_batches,
            max_queue_size=max_queue_size,
            timeout=None if timeout is UNSET else timeout,
            max_requests_per_batch=(
                None if max_requests_per_batch is UNSET else max_requests_per_batch
            ),
        )
        target = None if isinstance(target_latency, _Unset) else _as_target(target_latency)
        loop = self._loop
        if loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                raise RuntimeError(f"batcher {self._name!r}: configure it from its event loop")
        if max_batch_size is not None:
            self._max_batch_size = max_batch_size
            self._size_limit = max(self._size_limit, max_batch_size)
        if max_wait is not None:
            self._max_wait = float(max_wait)
        if max_queue_size is not None:
            self._max_queue_size = max_queue_size
        if not isinstance(timeout, _Unset):
            self._timeout = timeout
        if not isinstance(max_requests_per_batch, _Unset):
            self._max_requests = max_requests_per_batch
        adaptive = self._adaptive
        if not isinstance(target_latency, _Unset):
            if target is None:
                adaptive = None
            elif adaptive is None:
                adaptive = AdaptiveController(target, self._max_batch_size, self._max_wait)
        if adaptive is not None:
            adaptive.reset(
                adaptive.target if target is None else target,
                self._max_batch_size,
                self._max_wait,
            )
        self._adaptive = adaptive
        if max_concurrent_batches is not None and max_concurrent_batches != self._slots:
            if self._owns_executor and max_concurrent_batches > self._pool_size:
                # A pool cannot grow in place: the old one finishes what it runs, then exits.
                old = self._executor
                assert old is not None
                self._executor = ThreadPoolExecutor(
                    max_workers=max_concurrent_batches,
                    thread_name_prefix=f"coserve-batch-{self._name}",
                )
                old.shutdown(wait=False)
                self._pool_size = max_concurrent_batches
            self._slots = max_concurrent_batches
        logger.info("batcher %r: options now %s", self._name, self.options())
        self._wake()  # the dispatcher decides again, with the new options
        if self._room_waiters and self._queue.count < self._max_queue_size:
            self._wake_room_waiters()
        return self.options()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has begun: submits are refused from then on."""
        return self._closing

    @property
    def full(self) -> bool:
        """Whether ``max_queue_size`` requests are waiting: the next submit would be refused."""
        return self._queue.count >= self._max_queue_size

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this batcher is bound to, or None before it first runs."""
        return self._loop

    async def submit(
        self,
        item: T,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the batcher enforces itself
        priority: int = 0,
        size: int = 1,
        key: Hashable = None,
    ) -> R:
        """Queue ``item``, wait for its batch to run, and return its result.

        Args:
            item: One input for the batch function.
            timeout: Seconds until this request's deadline; overrides the batcher's default. A
                request still queued at its deadline is never run.
            priority: Higher runs first; equal priorities run first come, first served.
            size: How many rows this item counts for against ``max_batch_size``.
            key: The bucket: only items of equal keys share a batch (rows padded to one length,
                say). Of the buckets ready to run, the next batch is the one whose next item has
                the highest priority, then the one that has waited longest, so none starves;
                ``max_wait`` lingers per bucket.

        Returns:
            The batch function's result for this item.

        Raises:
            QueueFull: ``max_queue_size`` requests are already waiting.
            BatcherClosed: The batcher is closing, or closed before this request was answered.
            DeadlineExceeded: The deadline passed first.
            BatchFailed: The batch function raised, or returned the wrong number of results.
            Exception: The per-item error the batch function returned for this item.
        """
        request = self._enqueue(item, timeout, priority, size, key)
        future: asyncio.Future[R] = request.future
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(request)
            raise

    def submit_nowait(
        self,
        item: T,
        *,
        timeout: float | None = None,
        priority: int = 0,
        size: int = 1,
        key: Hashable = None,
    ) -> asyncio.Future[R]:
        """Queue ``item`` and return a future of its result, for callers that cannot await.

        The same as :meth:`submit` (same arguments, and ``QueueFull`` or ``BatcherClosed`` raised
        at once), for code that runs in callbacks, such as a protocol's, where a task per request
        would cost more than the batching saves. Cancel the future to withdraw the request: it
        leaves the queue at once (its place is free for the next submit) and, if its batch has
        not started, never runs; it is counted as cancelled. Must be called from the batcher's
        event loop.
        """
        future: asyncio.Future[R] = self._enqueue(item, timeout, priority, size, key).future
        return future

    async def wait_for_room(self) -> None:
        """Wait until the queue has a free place, or the batcher closes.

        For a caller that submits one request after another (the chunks of a request larger
        than a batch) and met ``QueueFull`` with nothing of its own queued. Another submit may
        still take the place first: submit, and wait again on ``QueueFull``.
        """
        loop = self._loop or self._start()
        while self._queue.count >= self._max_queue_size and not self._closing:
            waiter: asyncio.Future[None] = loop.create_future()
            self.notify_when_room(functools.partial(_resolve_turn, waiter))
            await waiter

    def notify_when_room(self, callback: Callable[[], bool]) -> None:
        """Call ``callback()`` once the queue has a place for it, or the batcher closes.

        Callbacks are called first come, first served, as many at a time as places free, from
        the event loop; each returns whether it took its turn (False if its caller has gone, and
        the place goes to the next). For protocols that stop reading a connection whose request
        met a full queue, and resume it when there is room: under overload the connections
        then wait in the kernel, in order, instead of costing the event loop a refusal each.
        """
        self._room_waiters.append(callback)
        if self._closing or self._queue.count < self._max_queue_size:
            self._wake_room_waiters()

    @property
    def waiting_for_room(self) -> int:
        """How many callers wait in line for a place (:meth:`notify_when_room`)."""
        return len(self._room_waiters)

    def refuse_if_full(self) -> None:
        """Raise ``QueueFull`` now if a submit would be refused, counting the refusal.

        Lets a protocol refuse a request from its head, before reading or decoding its body.
        """
        if self._queue.count >= self._max_queue_size:
            self._counters.rejected_queue_full += 1
            raise QueueFull(f"batcher {self._name!r} has a full queue; retry later")

    def statistics(self) -> BatcherStatistics:
        """A snapshot of the queue, the running batches and every counter."""
        return self._counters.snapshot(
            queued=self._queue.count,
            queued_rows=self._queue.rows,
            running_batches=len(self._running),
            in_flight=sum(
                1
                for batch in self._running.values()
                for r in batch
                if r.state is RequestState.RUNNING
            ),
            adaptive=None if self._adaptive is None else self._adaptive.state(),
        )

    async def aclose(self, *, grace_period: float | None = None) -> None:
        """Stop taking work, let queued and running work finish, then fail what is left.

        New submits raise ``BatcherClosed`` at once. Everything queued is dispatched without
        lingering; whatever has not finished when the grace period runs out fails with
        ``BatcherClosed`` (a sync function already running in a thread cannot be interrupted; its
        result is dropped). Safe to call more than once, and concurrently.

        Args:
            grace_period: Overrides the batcher's ``grace_period`` for this call.
        """
        _check_positive("grace_period", grace_period, allow_zero=True)
        self._closing = True
        self._wake_room_waiters()
        loop = self._loop
        if loop is None:
            return
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = loop.create_future()
        try:
            await self._shut_down(self._grace_period if grace_period is None else grace_period)
        finally:
            self._closed.set_result(None)

    async def __aenter__(self) -> Self:
        if self._loop is None:
            self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closing else "running" if self._loop else "not started"
        return (
            f"<Batcher {self._name!r} {state} max_batch_size={self._max_batch_size} "
            f"max_wait={self._max_wait} queued={self._queue.count} running={len(self._running)}>"
        )

    # -- queueing ---------------------------------------------------------------------------

    def _enqueue(
        self, item: T, timeout: float | None, priority: int, size: int, key: Hashable = None
    ) -> QueuedRequest[T]:
        counters = self._counters
        if self._closing:
            counters.rejected_closed += 1
            raise BatcherClosed(f"batcher {self._name!r} is closed")
        loop = self._loop or self._start()
        if asyncio.get_running_loop() is not loop:
            raise RuntimeError(f"batcher {self._name!r} is bound to another event loop")
        queue = self._queue
        if queue.count >= self._max_queue_size:  # O(1): withdrawn requests left at once
            counters.rejected_queue_full += 1
            raise QueueFull(
                f"batcher {self._name!r} has {queue.count} requests queued, its maximum"
            )
        if size != 1 and (isinstance(size, bool) or not 1 <= size <= self._size_limit):
            raise ValueError(f"size must be between 1 and {self._size_limit}, got {size!r}")
        if timeout is None:
            timeout = self._timeout
        elif timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")

        future = RequestFuture(loop=loop)
        request = QueuedRequest(item, future, priority, size, loop.time(), key)
        # A cycle (future -> partial -> request -> future) until the request settles, when
        # every settling path clears on_cancel: no garbage for the collector per request.
        future.on_cancel = functools.partial(self._cancelled, request)
        if _observe.observer is not None:
            request.tag = _observe.request_tag.get()
        if timeout is not None:
            request.deadline = request.enqueued_at + timeout
            request.deadline_timer = loop.call_at(request.deadline, self._expire, request, timeout)
        queue.push(request)
        counters.submitted += 1
        counters.submitted_rows += size
        waiter = self._waiter
        if (
            waiter is not None
            and not waiter.done()
            and (
                queue.rows_in(key) >= self._wake_rows
                # a bucket full of requests (max_requests_per_batch) is ready too, unless
                # every slot is busy (then only a finished batch wakes the dispatcher)
                or (
                    self._max_requests is not None
                    and self._wake_rows != _NEVER
                    and queue.count_in(key) >= self._max_requests
                )
            )
        ):
            waiter.set_result(None)
        return request

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._closing:
            raise BatcherClosed(f"batcher {self._name!r} is closed")
        if not self._is_async and self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._slots, thread_name_prefix=f"coserve-batch-{self._name}"
            )
            self._owns_executor = True
            self._pool_size = self._slots
        self._loop = loop
        # A context of its own: started by the first request, the dispatcher must not carry
        # that request's context (its batch observer's tag, say) into every batch it runs.
        self._dispatcher = loop.create_task(
            self._dispatch(), name=f"coserve-batcher-{self._name}", context=contextvars.Context()
        )
        return loop

    async def _shut_down(self, grace_period: float) -> None:
        dispatcher = self._dispatcher
        assert dispatcher is not None
        self._wake()
        finished, _ = await asyncio.wait({dispatcher}, timeout=grace_period)
        if not finished:
            logger.warning(
                "batcher %r: grace period of %gs ran out with %d queued and %d running batches;"
                " failing them with BatcherClosed",
                self._name,
                grace_period,
                self._queue.count,
                len(self._running),
            )
            await self._abort(
                f"the batcher closed and its grace period of {grace_period:g}s ran out"
            )
        elif not dispatcher.cancelled():
            dispatcher.exception()  # a crash was logged when it happened; mark it retrieved
        self.release_executor()

    async def _abort(self, reason: str) -> None:
        dispatcher = self._dispatcher
        assert dispatcher is not None
        dispatcher.cancel()
        for request in self._queue.drain():
            self._fail(request, BatcherClosed(reason))
        running = list(self._running.items())
        for future, batch in running:
            for request in batch:
                self._fail(request, BatcherClosed(reason))
            future.cancel()
        # Await what we cancelled so no task outlives the batcher; a sync fn's thread cannot be
        # interrupted, but its asyncio wrapper future is already cancelled.
        await asyncio.wait([dispatcher, *(future for future, _ in running)])

    def release_executor(self) -> None:
        """Shut down the thread pool made for a sync ``fn`` (never an executor it was given)."""
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self._owns_executor = False

    # -- the dispatcher ----------------------------------------------------------------------

    def _wake_room_waiters(self) -> None:
        """Give each free place (every place, when closing) to the next waiter in line.

        Not re-entrant: a callback may submit, or join the line again, synchronously; a call
        made from inside one returns at once, and the outer loop sees the new state.
        """
        if self._waking:
            return
        self._waking = True
        waiters = self._room_waiters
        given = 0  # turns taken whose submits may still be on their way
        # Closing wakes everyone in line now; those who join it meanwhile go in a later pass.
        turns = len(waiters) if self._closing else sys.maxsize
        try:
            while (
                waiters
                and turns
                and (self._closing or self._queue.count + given < self._max_queue_size)
            ):
                turns -= 1
                count = self._queue.count
                try:
                    took = waiters.popleft()()
                except Exception:  # a caller's bug must not stop the dispatcher, or the line
                    logger.exception("batcher %r: a room callback failed", self._name)
                    took = False
                if took and self._queue.count == count:
                    given += 1  # it submits later (its bytes are on their way): keep its place
        finally:
            self._waking = False
        if self._closing and waiters and self._loop is not None:
            self._loop.call_soon(self._wake_room_waiters)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep(self, wake_rows: int, deadline: float | None = None) -> None:
        """Wait for a submit that brings ``wake_rows`` rows, a wake-up, or ``deadline``."""
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        self._wake_rows = wake_rows
        timer = None if deadline is None else loop.call_at(deadline, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            self._wake_rows = _NEVER
            if timer is not None:
                timer.cancel()

    async def _dispatch(self) -> None:
        loop = self._loop
        assert loop is not None
        queue = self._queue
        try:
            while True:
                # Read each pass: configure() may change them (and wakes this loop when it does).
                max_rows = self._max_batch_size
                max_wait = self._max_wait
                adaptive = self._adaptive
                if len(self._running) >= self._slots:
                    await self._sleep(_NEVER)  # until a batch finishes and frees a slot
                    continue
                if not queue.count:
                    if self._closing and not self._running:
                        return  # drained: nothing queued, nothing running
                    if self._room_waiters:  # an empty queue has room for all: never sleep on it
                        self._wake_room_waiters()
                        if self._queue.count:  # a waiter submitted at once
                            continue
                    await self._sleep(1)
                    continue
                now = loop.time()
                ready_rows = max_rows  # rows that make a bucket ready at once
                slack = None
                if adaptive is not None and self._plan(adaptive, now):
                    max_rows = adaptive.batch_cap  # it chose the batch's size and lingering
                    ready_rows = adaptive.batch_target
                    max_wait = adaptive.linger
                    slack = adaptive.slack
                # Lingering (max_wait) is per bucket: one is ready when full or old enough.
                key, found, ready_at = queue.choose(
                    now, ready_rows, self._max_requests, 0.0 if self._closing else max_wait, slack
                )
                if not found:
                    await self._sleep(ready_rows, ready_at)  # or a submit that fills a bucket
                    continue
                batch, rows, full = queue.take(key, max_rows, self._max_requests)
                if full:
                    reason = CloseReason.FULL
                elif self._closing:
                    reason = CloseReason.SHUTDOWN
                elif ready_rows > 1 and rows >= ready_rows:
                    reason = CloseReason.TARGET
                elif max_wait:
                    reason = CloseReason.MAX_WAIT
                else:
                    reason = CloseReason.SLOT_FREE
                self._start_batch(batch, rows, reason)
                if self._room_waiters:  # after the batch is on its way to the model
                    self._wake_room_waiters()
        except asyncio.CancelledError:
            self._fail_queued("the batcher's dispatcher was cancelled")
            raise
        except BaseException as exc:  # a bug in here must not leave callers waiting forever
            logger.exception("batcher %r: dispatcher crashed; closing the batcher", self._name)
            self._closing = True
            self._fail_queued(f"the batcher's dispatcher crashed: {exc!r}")
            raise

    def _plan(self, adaptive: AdaptiveController, now: float) -> bool:
        """Let the adaptive controller decide the next batch; False if it failed (and is off)."""
        try:
            adaptive.plan(now, self._counters.submitted_rows, self._queue.rows, self._slots)
        except Exception:  # a bug in the controller must not stop the batcher: batch without it
            self._controller_failed("plan the next batch")
            return False
        return True

    def _controller_failed(self, what: str) -> None:
        logger.exception(
            "batcher %r: the adaptive controller failed to %s; adaptive batching is off, the "
            "batcher carries on with its options",
            self._name,
            what,
        )
        self._adaptive = None

    def _fail_queued(self, reason: str) -> None:
        for request in self._queue.drain():
            self._fail(request, BatcherClosed(reason))
        self._wake_room_waiters()  # closing: each hears it, and is refused when it submits

    def _start_batch(self, batch: list[QueuedRequest[T]], rows: int, reason: CloseReason) -> None:
        loop = self._loop
        assert loop is not None
        counters = self._counters
        if any(request.future.done() for request in batch):
            batch, rows = self._drop_withdrawn(batch)
            if not batch:
                return
        adaptive = self._adaptive
        if adaptive is not None:
            # A request whose deadline falls before its batch would end fails now, not late.
            now = loop.time()
            hopeless = adaptive.hopeless_before(now, rows)
            if any(request.deadline < hopeless for request in batch):
                batch, rows = self._fail_hopeless(batch, now, hopeless - now)
                if not batch:
                    return
        counters.batches += 1
        counters.batch_sizes[rows] += 1
        counters.close_reasons[reason] += 1
        now = loop.time()
        counters.queue_time.record_many([now - request.enqueued_at for request in batch])
        items = [request.item for request in batch]
        future: asyncio.Future[Sequence[R | Exception]]
        try:
            if self._is_async:
                call = self._fn(items)
                future = asyncio.ensure_future(call)  # type: ignore[arg-type]
            else:
                future = loop.run_in_executor(self._executor, self._fn, items)  # type: ignore[arg-type]
        except Exception as exc:  # e.g. fn(items) raised before returning a coroutine
            future = loop.create_future()
            future.set_exception(exc)
        self._running[future] = batch
        future.add_done_callback(functools.partial(self._finish_batch, batch, rows, now, reason))

    def _fail_hopeless(
        self, batch: list[QueuedRequest[T]], now: float, takes: float
    ) -> tuple[list[QueuedRequest[T]], int]:
        """Fail the requests whose deadline falls before ``now + takes``; return the others."""
        adaptive = self._adaptive
        assert adaptive is not None
        ends = now + takes
        live = []
        for request in batch:
            if request.deadline >= ends:
                live.append(request)
                continue
            self._fail(
                request,
                DeadlineExceeded(
                    f"the request could not meet its deadline: "
                    f"{max(0.0, request.deadline - now) * 1e3:.3g} ms were left, and its batch "
                    f"would take about {takes * 1e3:.3g} ms"
                ),
            )
            adaptive.failed_early += 1
        logger.debug("batcher %r: failed %d requests early", self._name, len(batch) - len(live))
        return live, sum(request.size for request in live)

    def _drop_withdrawn(self, batch: list[QueuedRequest[T]]) -> tuple[list[QueuedRequest[T]], int]:
        """Drop requests whose futures were cancelled while queued (``submit_nowait``)."""
        live = []
        for request in batch:
            if request.future.done():
                self._withdrawn(request)
            else:
                live.append(request)
        return live, sum(request.size for request in live)

    def _finish_batch(
        self,
        batch: list[QueuedRequest[T]],
        rows: int,
        started_at: float,
        reason: CloseReason,
        future: asyncio.Future[Sequence[R | Exception]],
    ) -> None:
        loop = self._loop
        assert loop is not None
        del self._running[future]
        now = loop.time()
        counters = self._counters
        counters.execution_time.record(now - started_at)
        counters.batch_seconds[rows] += now - started_at
        counters.last_batch_end = time.time()  # wall clock: Triton's last_inference is epoch ms
        try:
            self._deliver(batch, future, started_at, now)
        except Exception:  # never let a delivery bug leave callers waiting
            logger.exception("batcher %r: failed to deliver a batch's results", self._name)
            for request in batch:
                self._fail(request, BatchFailed("coserve failed to deliver this batch's results"))
        finally:
            self._wake()
        if _observe.observer is not None:
            self._report(batch, rows, started_at, now, reason, future)
        adaptive = self._adaptive
        if adaptive is not None and not future.cancelled() and future.exception() is None:
            try:
                adaptive.batch_finished(rows, now - started_at, now, self._slots)
            except Exception:
                self._controller_failed("take in a finished batch")

    def _report(
        self,
        batch: list[QueuedRequest[T]],
        rows: int,
        started_at: float,
        now: float,
        reason: CloseReason,
        future: asyncio.Future[Sequence[R | Exception]],
    ) -> None:
        """Tell the batch observer about a finished batch's tagged requests, if it held any."""
        observer = _observe.observer
        tags = [(r.tag, r.enqueued_at) for r in batch if r.tag is not None]
        if observer is None or not tags:
            return
        failed = future.cancelled() or future.exception() is not None
        if failed:
            failed_items = len(batch)
        else:
            try:
                failed_items = sum(isinstance(result, Exception) for result in future.result())
            except TypeError:  # not a sequence: _deliver failed every item
                failed_items = len(batch)
        record = _observe.BatchRecord(
            batcher=self._name,
            rows=rows,
            requests=len(batch),
            reason=reason,
            started=started_at,
            finished=now,
            wall_offset=time.time() - now,
            failed=failed,
            failed_items=failed_items,
            tags=tags,
        )
        try:
            observer(record)
        except Exception:  # an observer's bug must not reach the batcher's callers
            logger.exception("batcher %r: the batch observer failed", self._name)

    def _deliver(
        self,
        batch: list[QueuedRequest[T]],
        future: asyncio.Future[Sequence[R | Exception]],
        started_at: float,
        now: float,
    ) -> None:
        if future.cancelled():  # only _abort cancels a batch, and it already failed its callers
            for request in batch:
                self._fail(request, BatcherClosed("the batcher closed while this batch ran"))
            return
        error = future.exception()
        if error is not None:
            logger.error(
                "batcher %r: the batch function raised on a batch of %d",
                self._name,
                len(batch),
                exc_info=error,
            )
            for request in batch:
                self._fail(
                    request, BatchFailed.caused_by(f"the batch function raised {error!r}", error)
                )
            return
        results = future.result()
        try:
            count: int | None = len(results)  # a list, a tuple, a numpy array of rows...
        except TypeError:
            count = None
        if count != len(batch):
            got = f"{count} results" if count is not None else f"a {type(results).__name__}"
            message = f"the batch function returned {got} for a batch of {len(batch)} items"
            logger.error("batcher %r: %s", self._name, message)
            for request in batch:
                self._fail(request, BatchFailed(message))
            return
        # The hot loop of the batcher: keep it to what every item needs.
        item_errors: list[Exception] = []
        delivered = 0
        delivered_rows = 0
        cancelled = 0
        answered = 0.0  # summed submit-to-answer seconds of the delivered requests
        errored = 0.0  # the same for the items answered with their own error
        # Each answered request's latency, for the adaptive mode's trim on the measured target.
        latencies: list[float] | None = None if self._adaptive is None else []
        done = RequestState.DONE
        for request, result in zip(batch, results, strict=False):  # lengths checked above
            if request.state is done:  # its outcome came first: cancelled or expired
                continue
            request.state = done
            if request.deadline_timer is not None:
                request.deadline_timer.cancel()
            caller = request.future
            if caller.done():  # settled from outside while it ran (not through cancel())
                cancelled += 1
                continue
            caller.on_cancel = None
            if isinstance(result, Exception):
                caller.set_exception(result)
                item_errors.append(result)
                errored += now - request.enqueued_at
            else:
                caller.set_result(result)
                delivered += 1
                delivered_rows += request.size
                answered += now - request.enqueued_at
                if latencies is not None:
                    latencies.append(now - request.enqueued_at)
        counters = self._counters
        counters.completed += delivered
        counters.completed_rows += delivered_rows
        counters.completed_seconds += answered
        # Each delivered request waited for its whole batch: charge it the batch's wall time.
        counters.completed_execution_seconds += delivered * (now - started_at)
        counters.failed += len(item_errors)
        counters.error_seconds += errored
        counters.cancelled += cancelled
        if latencies and self._adaptive is not None:
            self._adaptive.record(latencies)  # a bounded list extend: nothing to fail
        if item_errors:
            logger.warning(
                "batcher %r: %d of %d items failed, the first with %r",
                self._name,
                len(item_errors),
                len(batch),
                item_errors[0],
            )

    # -- request outcomes other than success -------------------------------------------------

    def _fail(self, request: QueuedRequest[T], error: Exception) -> None:
        """Fail one request with ``error`` unless it already has an outcome."""
        if request.future.done():
            if request.state is not RequestState.DONE:
                self._withdrawn(request)
            return
        timer = request.deadline_timer
        if timer is not None:
            timer.cancel()
            request.deadline_timer = None
        request.state = RequestState.DONE
        request.future.on_cancel = None
        request.future.set_exception(error)
        if self._loop is not None:  # an error path: one clock read per request is cheap enough
            self._counters.error_seconds += self._loop.time() - request.enqueued_at
        if isinstance(error, BatcherClosed):
            self._counters.aborted += 1
        elif isinstance(error, DeadlineExceeded):  # failed early: it could not make it
            self._counters.expired += 1
        else:
            self._counters.failed += 1

    def _cancelled(self, request: QueuedRequest[T]) -> None:
        """Its future was cancelled (a withdrawn ``submit_nowait``, a cancelled ``submit``).

        Runs inside ``cancel()``: a queued request leaves the queue now, and a running one's
        result will be dropped. O(1) either way.
        """
        if request.state is RequestState.DONE:
            return
        if request.state is RequestState.QUEUED:
            self._queue.discard(request)
            if self._room_waiters:
                self._wake_room_waiters()
        self._withdrawn(request)

    def _withdrawn(self, request: QueuedRequest[T]) -> None:
        """Account for a request whose future its caller cancelled."""
        timer = request.deadline_timer
        if timer is not None:
            timer.cancel()
            request.deadline_timer = None
        request.state = RequestState.DONE
        request.future.on_cancel = None
        self._counters.cancelled += 1

    def _expire(self, request: QueuedRequest[T], timeout: float) -> None:
        request.deadline_timer = None
        if request.future.done():
            return
        if request.state is RequestState.QUEUED:
            self._queue.discard(request)
            where = "queued"
            if self._room_waiters:
                self._wake_room_waiters()
        else:
            request.state = RequestState.DONE
            where = "running"
        request.future.on_cancel = None
        request.future.set_exception(
            DeadlineExceeded(f"the deadline of {timeout:g}s passed while the request was {where}")
        )
        self._counters.expired += 1
        if self._loop is not None:
            self._counters.error_seconds += self._loop.time() - request.enqueued_at
        logger.debug("batcher %r: a request expired while %s", self._name, where)

    def _abandon(self, request: QueuedRequest[T]) -> None:
        """The caller was cancelled: drop its request if it has not run yet."""
        timer = request.deadline_timer
        if timer is not None:
            timer.cancel()
            request.deadline_timer = None
        if not request.future.cancelled():
            return  # it already had its outcome when the cancellation arrived
        if request.state is RequestState.DONE:
            return  # the batcher saw the cancelled future first and counted it
        if request.state is RequestState.QUEUED:
            self._queue.discard(request)
        request.state = RequestState.DONE
        self._counters.cancelled += 1


def _resolve_turn(future: asyncio.Future[None]) -> bool:
    if future.done():  # its waiter was cancelled: the turn passes on
        return False
    future.set_result(None)
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
