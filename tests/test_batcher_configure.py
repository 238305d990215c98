"""Changing a Batcher's options while it serves (``Batcher.configure``).

As in test_batcher.py, nothing depends on wall-clock time: a gate holds batches "running" while
requests pile up, and lingering runs on looptime's virtual clock. The property test drives a
batcher with random reconfigurations among its submits and checks that every request is
answered exactly once, with its own result, and that each batch respected the options in force
when it started.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coserve import Batcher, BatchingOptions, QueueFull
from helpers import RecordingModel, settle, submit_all


async def test_options_reads_what_configure_set(model: RecordingModel) -> None:
    """configure() returns, and options() shows, the options in force; the rest stay."""
    async with Batcher(model, max_batch_size=8, max_wait=0.001, timeout=5.0) as batcher:
        assert batcher.options() == BatchingOptions(8, 0.001, 1, 1024, 5.0, None)
        after = batcher.configure(max_batch_size=16, timeout=None)
        assert after == BatchingOptions(16, 0.001, 1, 1024, None, None)
        assert batcher.options() == after
        assert batcher.max_batch_size == 16


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_batch_size": 0}, ValueError),
        ({"max_batch_size": 2.5}, TypeError),
        ({"max_concurrent_batches": 0}, ValueError),
        ({"max_queue_size": True}, TypeError),
        ({"max_wait": -1}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"max_requests_per_batch": 0}, ValueError),
    ],
)
async def test_a_bad_option_changes_nothing(
    model: RecordingModel, options: dict[str, object], error: type[Exception]
) -> None:
    """Every option is checked before any is applied: one bad value leaves all as they were."""
    async with Batcher(model, max_batch_size=8) as batcher:
        before = batcher.options()
        good = {"max_queue_size": 7} if "max_queue_size" not in options else {"max_wait": 0.5}
        with pytest.raises(error, match=next(iter(options))):
            batcher.configure(**good, **options)  # type: ignore[arg-type]
        assert batcher.options() == before


async def test_a_larger_max_batch_size_forms_the_next_batch(model: RecordingModel) -> None:
    """Requests queued behind a busy slot take the new, larger limit when it frees."""
    async with Batcher(model, max_batch_size=4) as batcher:
        model.hold()
        first = submit_all(batcher, [0])
        await settle()
        rest = submit_all(batcher, range(1, 11))
        await settle()
        batcher.configure(max_batch_size=10)
        model.release()
        await asyncio.gather(*first, *rest)
        assert model.batches == [[0], list(range(1, 11))]


async def test_a_request_larger_than_a_lowered_limit_runs_alone(model: RecordingModel) -> None:
    """A 6-row request queued under max_batch_size 8 still runs after the limit drops to 2."""
    async with Batcher(model, max_batch_size=8) as batcher:
        model.hold()
        first = submit_all(batcher, [0])
        await settle()
        big = asyncio.create_task(batcher.submit(1, size=6))
        small = submit_all(batcher, [2, 3, 4])
        await settle()
        batcher.configure(max_batch_size=2)
        model.release()
        assert await big == 10
        assert await asyncio.gather(*first, *small) == [0, 20, 30, 40]
        assert model.batches == [[0], [1], [2, 3], [4]]
        # Sizes up to the largest limit it has had are still taken (the later chunks of a
        # request split under it), and run alone; larger ones are refused.
        assert await batcher.submit(5, size=3) == 50
        assert model.batches[-1] == [5]
        with pytest.raises(ValueError, match="size must be between 1 and 8"):
            await batcher.submit(6, size=9)


@pytest.mark.looptime
async def test_a_shorter_max_wait_ends_a_linger_at_once(model: RecordingModel) -> None:
    """A request lingering under max_wait 60 s is dispatched when max_wait drops to 0."""
    loop = asyncio.get_running_loop()
    async with Batcher(model, max_batch_size=8, max_wait=60.0) as batcher:
        waiting = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(1.0)
        assert model.batches == []
        changed_at = loop.time()
        batcher.configure(max_wait=0.0)
        assert await waiting == 10
        assert model.started_at == [changed_at]


async def test_more_slots_start_batches_alongside_the_running_one() -> None:
    """Raising max_concurrent_batches of a sync fn grows its thread pool: a second batch runs."""
    gate = threading.Event()
    started: list[list[int]] = []
    lock = threading.Lock()

    def blocking(items: list[int]) -> list[int]:
        with lock:
            started.append(list(items))
        gate.wait(10)  # set by the test; the bound only ends a failed run
        return [i * 2 for i in items]

    async with Batcher(blocking, max_batch_size=2) as batcher:
        tasks = submit_all(batcher, [0])
        for _ in range(200):
            await asyncio.sleep(0.01)
            if started:
                break
        tasks += submit_all(batcher, range(1, 4))
        await settle()
        assert started == [[0]]
        batcher.configure(max_concurrent_batches=2)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(started) == 2:
                break
        assert started == [[0], [1, 2]]  # started while [0] still holds the first thread
        gate.set()
        assert await asyncio.gather(*tasks) == [0, 2, 4, 6]


async def test_fewer_slots_let_running_batches_finish() -> None:
    """Lowering max_concurrent_batches starts no new batch until one is free under it."""
    gates = {i: asyncio.Event() for i in range(5)}
    started: list[int] = []

    async def fn(items: list[int]) -> list[int]:
        started.extend(items)
        await gates[items[0]].wait()
        return [i * 10 for i in items]

    async with Batcher(fn, max_batch_size=1, max_concurrent_batches=3) as batcher:
        running = submit_all(batcher, range(3))
        await settle()
        assert started == [0, 1, 2]
        batcher.configure(max_concurrent_batches=2)
        queued = submit_all(batcher, [3, 4])
        await settle()
        gates[0].set()  # 2 still run: not below the new count, so nothing starts
        await settle()
        assert started == [0, 1, 2]
        gates[1].set()  # 1 runs now: one more may start
        await settle()
        assert started == [0, 1, 2, 3]
        for gate in gates.values():
            gate.set()
        assert await asyncio.gather(*running, *queued) == [0, 10, 20, 30, 40]


async def test_a_smaller_queue_bound_refuses_new_requests_and_keeps_the_queued(
    model: RecordingModel,
) -> None:
    """Below the queued count nothing is dropped; new submits are refused until it drains."""
    async with Batcher(model, max_batch_size=1, max_queue_size=10) as batcher:
        model.hold()
        tasks = submit_all(batcher, range(6))
        await settle()
        batcher.configure(max_queue_size=2)
        with pytest.raises(QueueFull):
            await batcher.submit(99)
        model.release()
        assert await asyncio.gather(*tasks) == [0, 10, 20, 30, 40, 50]
        assert await batcher.submit(7) == 70


async def test_a_larger_queue_bound_lets_waiters_in(model: RecordingModel) -> None:
    """A caller waiting for room (wait_for_room) gets in when the bound is raised."""
    async with Batcher(model, max_batch_size=1, max_queue_size=1) as batcher:
        model.hold()
        first = submit_all(batcher, [0])
        await settle()  # it runs (held)
        first += submit_all(batcher, [1])
        await settle()  # it waits: the queue is full
        waiter = asyncio.create_task(batcher.wait_for_room())
        await settle()
        assert not waiter.done()
        batcher.configure(max_queue_size=4)
        await asyncio.wait_for(waiter, 5)
        model.release()
        assert await asyncio.gather(*first) == [0, 10]


@pytest.mark.looptime
async def test_a_new_default_timeout_applies_to_later_requests(model: RecordingModel) -> None:
    """Requests queued before a timeout change keep their deadline (none); later ones get it."""
    async with Batcher(model, max_batch_size=1) as batcher:
        model.hold()
        busy = submit_all(batcher, [0])
        await settle()
        before = asyncio.create_task(batcher.submit(1))
        await settle()
        batcher.configure(timeout=1.0)
        after = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(2.0)
        assert after.done()
        assert isinstance(after.exception(), TimeoutError)
        assert not before.done()
        model.release()
        assert await asyncio.gather(*busy, before) == [0, 10]


def test_configure_from_another_loop_is_refused() -> None:
    """configure() mutates dispatcher state: only the batcher's own loop may call it."""
    batcher = Batcher(RecordingModel())
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()

    async def use() -> object:
        return await batcher.submit(1)

    async def change() -> None:
        batcher.configure(max_batch_size=2)

    try:
        assert first.run_until_complete(use()) == 10
        with pytest.raises(RuntimeError, match="its event loop"):
            second.run_until_complete(change())
        with pytest.raises(RuntimeError, match="its event loop"):
            batcher.configure(max_batch_size=2)  # no loop running at all
        first.run_until_complete(batcher.aclose())
    finally:
        first.close()
        second.close()


class InlineExecutor(Executor):
    """Runs each call at once, on the caller's thread: a batch's fn runs as the batch starts."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


# Each step: submit some requests (with a size), let the loop run, or change an option.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.lists(st.integers(1, 4), min_size=1, max_size=6)),
        st.tuples(st.just("run"), st.integers(0, 3)),
        st.tuples(st.just("max_batch_size"), st.integers(1, 8)),
        st.tuples(st.just("max_concurrent_batches"), st.integers(1, 3)),
        st.tuples(st.just("max_queue_size"), st.integers(1, 30)),
        st.tuples(st.just("max_requests_per_batch"), st.one_of(st.none(), st.integers(1, 4))),
        st.tuples(
            st.just("target_latency"), st.sampled_from([None, "p99<1ms", "p99<50ms", "mean<5ms"])
        ),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_reconfiguring_under_load_loses_nothing(plan: list[tuple[str, object]]) -> None:
    """Any interleaving of submits and option changes: each request answered exactly once.

    Each batch holds at most the max_batch_size in force when it started (or one request,
    queued under a larger limit), at most max_requests_per_batch requests, and no more batches
    run at once than the slots in force when the last of them started; adaptive batching
    (target_latency) turned on and off among them keeps within the same bounds.
    """

    async def scenario() -> None:
        violations: list[str] = []

        def fn(items: list[tuple[int, int]]) -> list[int]:
            # Runs inline as its batch starts (InlineExecutor), so options() are those the
            # batch was formed with, and running_batches the batches started before it.
            options = batcher.options()
            rows = sum(size for _, size in items)
            if rows > options.max_batch_size and len(items) > 1:
                violations.append(f"{rows} rows > {options.max_batch_size} in {items}")
            if options.max_requests_per_batch and len(items) > options.max_requests_per_batch:
                violations.append(f"{len(items)} requests > {options.max_requests_per_batch}")
            running = batcher.statistics().running_batches
            if running >= options.max_concurrent_batches:
                violations.append(f"{running} running, {options.max_concurrent_batches} slots")
            return [number * 10 for number, _ in items]

        batcher: Batcher[tuple[int, int], int] = Batcher(
            fn, max_batch_size=4, max_queue_size=20, executor=InlineExecutor()
        )
        tasks: dict[int, asyncio.Task[int]] = {}
        refused = 0
        counter = 0
        async with batcher:
            for action, value in plan:
                if action == "submit":
                    for size in value:  # type: ignore[attr-defined]
                        size = min(size, batcher.max_batch_size)
                        try:
                            future = batcher.submit_nowait((counter, size), size=size)
                        except QueueFull:
                            refused += 1
                        else:
                            tasks[counter] = asyncio.ensure_future(future)
                        counter += 1
                elif action == "run":
                    for _ in range(int(value)):  # type: ignore[call-overload]
                        await asyncio.sleep(0)
                else:
                    batcher.configure(**{action: value})  # type: ignore[arg-type]
            results = await asyncio.wait_for(asyncio.gather(*tasks.values()), 30)
        assert results == [number * 10 for number in tasks]
        assert violations == []
        stats = batcher.statistics()
        assert stats.completed == len(tasks)
        assert stats.rejected_queue_full == refused
        assert stats.submitted == len(tasks)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
