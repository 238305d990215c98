"""The @batched decorator: per-item awaiting over a batch function, on functions and methods."""

from __future__ import annotations

import asyncio

import pytest

from coserve import Batched, BatchedMethod, BatcherClosed, batched
from helpers import settle


class TestFunctions:
    async def test_decorated_function_is_awaited_per_item_and_batches(self) -> None:
        """Concurrent calls of a decorated function are answered from shared batches."""
        batches: list[list[int]] = []

        @batched(max_batch_size=8)
        async def double(items: list[int]) -> list[int]:
            batches.append(items)
            return [i * 2 for i in items]

        results = await asyncio.gather(*(double(i) for i in range(20)))
        await double.aclose()
        assert results == [i * 2 for i in range(20)]
        assert [len(b) for b in batches] == [8, 8, 4]

    async def test_plain_decorator_without_options(self) -> None:
        """@batched with no arguments uses the Batcher defaults."""

        @batched
        def negate(items: list[int]) -> list[int]:
            return [-i for i in items]

        assert isinstance(negate, Batched)
        assert await negate(3) == -3
        assert negate.batcher.max_batch_size == 64
        await negate.aclose()

    async def test_options_reach_the_batcher(self) -> None:
        """Per-call timeout and priority, and decorator options, are honoured."""
        gate = asyncio.Event()
        order: list[int] = []

        @batched(max_batch_size=1, max_queue_size=3)
        async def record(items: list[int]) -> list[int]:
            await gate.wait()
            order.extend(items)
            return items

        first = asyncio.create_task(record(0))
        await settle()
        low = asyncio.create_task(record(1, priority=0))
        high = asyncio.create_task(record(2, priority=5))
        doomed = asyncio.create_task(record(3, timeout=0.001))
        await settle()
        with pytest.raises(TimeoutError):
            await doomed
        gate.set()
        await asyncio.gather(first, low, high)
        await record.aclose()
        assert order == [0, 2, 1]

    async def test_statistics_before_and_after_use(self) -> None:
        """statistics() is all zero before first use and counts afterwards."""

        @batched
        async def echo(items: list[str]) -> list[str]:
            return items

        assert echo.statistics().submitted == 0
        await asyncio.gather(echo("a"), echo("b"))
        assert echo.statistics().completed == 2
        await echo.aclose()

    async def test_calls_after_aclose_in_the_same_loop_are_refused(self) -> None:
        """Once closed, the decorated function refuses work in that event loop."""

        @batched
        async def echo(items: list[int]) -> list[int]:
            return items

        await echo(1)
        await echo.aclose()
        with pytest.raises(BatcherClosed):
            await echo(2)

    def test_a_new_event_loop_gets_a_fresh_batcher(self) -> None:
        """A module-level decorated function keeps working across separate event loops."""

        @batched
        def square(items: list[int]) -> list[int]:
            return [i * i for i in items]

        for value in (2, 3):
            loop = asyncio.new_event_loop()
            try:
                assert loop.run_until_complete(square(value)) == value * value
                loop.run_until_complete(square.aclose())
            finally:
                loop.close()

    def test_the_decorated_function_keeps_its_docstring(self) -> None:
        """The wrapper exposes the wrapped function and its docstring."""

        @batched
        def documented(items: list[int]) -> list[int]:
            """Documented batch function."""
            return items

        assert documented.__doc__ == "Documented batch function."
        assert documented.__wrapped__.__name__ == "documented"

    def test_invalid_options_fail_at_decoration(self) -> None:
        """A bad option is reported when decorating, not on the first call."""
        with pytest.raises(ValueError, match="max_batch_size"):

            @batched(max_batch_size=0)
            def nothing(items: list[int]) -> list[int]:
                return items

    def test_wrong_arity_is_refused(self) -> None:
        """A function that is neither f(items) nor f(self, items) is refused."""
        with pytest.raises(TypeError, match="f\\(items\\)"):

            @batched
            def three(a: int, b: int, c: int) -> list[int]:
                return []


class Embedder:
    """A class whose method is batched, one batcher per instance."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.calls = 0

    @batched(max_batch_size=16)
    async def embed(self, items: list[int]) -> list[int]:
        self.calls += 1
        return [i + self.offset for i in items]


class TestMethods:
    async def test_method_batches_per_instance_with_self_bound(self) -> None:
        """A batched method sees its own instance, and instances do not share batches."""
        a, b = Embedder(100), Embedder(200)
        results = await asyncio.gather(*(a.embed(i) for i in range(5)), b.embed(1))
        assert results == [100, 101, 102, 103, 104, 201]
        assert (a.calls, b.calls) == (1, 1)
        assert a.embed is a.embed
        assert a.embed is not b.embed
        await a.embed.aclose()
        await b.embed.aclose()

    def test_accessing_on_the_class_gives_the_descriptor(self) -> None:
        """Embedder.embed is the descriptor, not a bound batcher."""
        assert isinstance(Embedder.embed, BatchedMethod)
        assert isinstance(Embedder(0).embed, Batched)
