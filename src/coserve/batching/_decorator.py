"""``@batched``: turn a function over a list into an awaitable per-item function."""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Executor
from typing import Any, Generic, TypedDict, TypeVar, overload

from coserve.batching._batcher import Batcher, BatchFunction
from coserve.batching._statistics import BatcherStatistics, Counters
from coserve.batching._target import LatencyTarget

__all__ = ["Batched", "BatchedMethod", "batched"]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


class BatcherOptions(TypedDict):
    """The keyword options a :class:`~coserve.Batcher` takes, as ``@batched`` passes them on."""

    max_batch_size: int
    max_wait: float
    max_concurrent_batches: int
    max_queue_size: int
    timeout: float | None
    executor: Executor | None
    grace_period: float
    target_latency: LatencyTarget | str | None


class Batched(Generic[T, R]):
    """A batch function that is awaited one item at a time: ``result = await f(item)``.

    Made by :func:`batched`. The :class:`~coserve.Batcher` behind it starts on first use in a
    running event loop. If that loop closes, the next use in a new loop starts a fresh batcher, so
    a decorated module-level function works across ``asyncio.run`` calls.
    """

    def __init__(self, fn: BatchFunction[T, R], options: BatcherOptions, name: str) -> None:
        self._fn = fn
        self._options = options
        self._name = name
        self._batcher: Batcher[T, R] | None = None
        self.__wrapped__ = fn
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(
        self, item: T, *, timeout: float | None = None, priority: int = 0
    ) -> Coroutine[Any, Any, R]:
        """Submit one item; await the returned coroutine for its result (see ``Batcher.submit``)."""
        loop = asyncio.events._get_running_loop()
        if loop is None:  # e.g. asyncio.run(f(x)): pick the batcher once the loop runs
            return self._submit_when_awaited(item, timeout, priority)
        return self._current(loop).submit(item, timeout=timeout, priority=priority)

    async def _submit_when_awaited(
        self,
        item: T,
        timeout: float | None,  # noqa: ASYNC109 - passed on to Batcher.submit
        priority: int,
    ) -> R:
        batcher = self._current(asyncio.get_running_loop())
        return await batcher.submit(item, timeout=timeout, priority=priority)

    @property
    def batcher(self) -> Batcher[T, R]:
        """The batcher serving the running event loop (started lazily)."""
        return self._current(asyncio.get_running_loop())

    def statistics(self) -> BatcherStatistics:
        """The statistics of the current batcher (all zero before first use)."""
        if self._batcher is None:
            return Counters().snapshot(queued=0, queued_rows=0, running_batches=0, in_flight=0)
        return self._batcher.statistics()

    async def aclose(self, *, grace_period: float | None = None) -> None:
        """Close the current batcher (see ``Batcher.aclose``); later calls in this loop fail."""
        if self._batcher is not None:
            await self._batcher.aclose(grace_period=grace_period)

    def _current(self, loop: asyncio.AbstractEventLoop) -> Batcher[T, R]:
        batcher = self._batcher
        if batcher is not None:
            bound = batcher.loop
            if bound is loop or bound is None:
                return batcher
            if not bound.is_closed():
                raise RuntimeError(f"{self._name} is in use by another event loop")
            batcher.release_executor()
        batcher = self._batcher = Batcher(self._fn, name=self._name, **self._options)
        return batcher

    def __repr__(self) -> str:
        return f"<batched {self._name}>"


class BatchedMethod(Generic[S, T, R]):
    """``@batched`` on a method: each instance gets its own :class:`Batched` (and batcher)."""

    def __init__(
        self,
        fn: Callable[[S, list[T]], Sequence[R | Exception]]
        | Callable[[S, list[T]], Awaitable[Sequence[R | Exception]]],
        options: BatcherOptions,
    ) -> None:
        self._fn = fn
        self._options = options
        self._attribute = fn.__name__
        self._per_instance: weakref.WeakKeyDictionary[Any, Batched[T, R]] = (
            weakref.WeakKeyDictionary()
        )
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self._attribute = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> BatchedMethod[S, T, R]: ...
    @overload
    def __get__(self, instance: S, owner: type | None = None) -> Batched[T, R]: ...
    def __get__(
        self, instance: S | None, owner: type | None = None
    ) -> Batched[T, R] | BatchedMethod[S, T, R]:
        if instance is None:
            return self
        bound = self._per_instance.get(instance)
        if bound is None:
            method: BatchFunction[T, R] = self._fn.__get__(instance, owner)
            name = f"{type(instance).__qualname__}.{self._attribute}"
            bound = self._per_instance[instance] = Batched(method, self._options, name)
        return bound


class _BatchedDecorator:
    """What ``batched(...)`` with options returns: apply it to the batch function."""

    def __init__(self, options: BatcherOptions) -> None:
        self._options = options

    @overload
    def __call__(
        self, fn: Callable[[list[T]], Awaitable[Sequence[R | Exception]]]
    ) -> Batched[T, R]: ...
    @overload
    def __call__(self, fn: Callable[[list[T]], Sequence[R | Exception]]) -> Batched[T, R]: ...
    @overload
    def __call__(
        self, fn: Callable[[S, list[T]], Awaitable[Sequence[R | Exception]]]
    ) -> BatchedMethod[S, T, R]: ...
    @overload
    def __call__(
        self, fn: Callable[[S, list[T]], Sequence[R | Exception]]
    ) -> BatchedMethod[S, T, R]: ...
    def __call__(self, fn: Callable[..., Any]) -> Batched[Any, Any] | BatchedMethod[Any, Any, Any]:
        return _decorate(fn, self._options)


def _decorate(
    fn: Callable[..., Any], options: BatcherOptions
) -> Batched[Any, Any] | BatchedMethod[Any, Any, Any]:
    if not callable(fn):
        raise TypeError(f"@batched needs a function, got {fn!r}")
    Batcher(fn, **options)  # validates the options now, at decoration time, not on first call
    required = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) == 1:
        return Batched(fn, options, getattr(fn, "__qualname__", repr(fn)))
    if len(required) == 2:
        return BatchedMethod(fn, options)
    raise TypeError(
        f"@batched needs f(items) or a method f(self, items); {fn!r} takes {len(required)} "
        "required positional arguments"
    )


@overload
def batched(fn: Callable[[list[T]], Awaitable[Sequence[R | Exception]]], /) -> Batched[T, R]: ...
@overload
def batched(fn: Callable[[list[T]], Sequence[R | Exception]], /) -> Batched[T, R]: ...
@overload
def batched(
    fn: Callable[[S, list[T]], Awaitable[Sequence[R | Exception]]], /
) -> BatchedMethod[S, T, R]: ...
@overload
def batched(fn: Callable[[S, list[T]], Sequence[R | Exception]], /) -> BatchedMethod[S, T, R]: ...
@overload
def batched(
    *,
    max_batch_size: int = 64,
    max_wait: float = 0.0,
    max_concurrent_batches: int = 1,
    max_queue_size: int = 1024,
    timeout: float | None = None,
    executor: Executor | None = None,
    grace_period: float = 30.0,
    target_latency: LatencyTarget | str | None = None,
) -> _BatchedDecorator: ...
def batched(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    max_batch_size: int = 64,
    max_wait: float = 0.0,
    max_concurrent_batches: int = 1,
    max_queue_size: int = 1024,
    timeout: float | None = None,
    executor: Executor | None = None,
    grace_period: float = 30.0,
    target_latency: LatencyTarget | str | None = None,
) -> Batched[Any, Any] | BatchedMethod[Any, Any, Any] | _BatchedDecorator:
    """Decorate ``def f(items: list[X]) -> list[Y]`` (sync or async) so callers ``await f(x)``.

    Concurrent calls are gathered into batches by a :class:`~coserve.Batcher` configured with these
    options (see it for their meaning)::

        @batched(max_batch_size=32)
        async def embed(texts: list[str]) -> list[list[float]]:
            return model.encode(texts)

        vector = await embed("hello")   # one of up to 32 texts in one model call

    Works on methods too (one batcher per instance). The decorated object has ``statistics()`` and
    ``aclose()``, and starts lazily on first use in a running event loop.
    """
    options = BatcherOptions(
        max_batch_size=max_batch_size,
        max_wait=max_wait,
        max_concurrent_batches=max_concurrent_batches,
        max_queue_size=max_queue_size,
        timeout=timeout,
        executor=executor,
        grace_period=grace_period,
        # parsed now, so a bad target fails at the decorator, not at the first call
        target_latency=(
            LatencyTarget.parse(target_latency)
            if isinstance(target_latency, str)
            else target_latency
        ),
    )
    if fn is None:
        return _BatchedDecorator(options)
    return _decorate(fn, options)
