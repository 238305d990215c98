"""Admission under overload: refusing a request stays cheap, and no request takes the queue.

A server under overload refuses far more requests than it serves, so the cost of refusing must
not grow with the queue; and a request's withdrawal must free its place at once. Cost is counted
in Python bytecode instructions executed (``sys.settrace`` with opcode events), which is exact and
does not depend on how loaded the machine is.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coserve import Batcher, PythonModel, QueueFull, TensorSpec
from coserve.models import BatchingConfig, ModelHandle
from helpers import RecordingModel, settle


def instructions(call: Callable[[], Any]) -> int:
    """How many bytecode instructions ``call()`` executes, in every frame it enters."""
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            count += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        call()
    except QueueFull:
        pass
    finally:
        sys.settrace(previous)
    return count


async def refusal_cost(queue_size: int, withdrawn: int) -> int:
    """Instructions spent refusing one submit to a full queue of ``queue_size`` places.

    ``withdrawn`` requests were queued and then withdrawn (their places refilled) first.
    """
    model = RecordingModel()
    async with Batcher(model, max_queue_size=queue_size, max_batch_size=1) as batcher:
        model.hold()
        futures = [batcher.submit_nowait(-1)]  # runs, and holds the only slot
        await settle()
        for index in range(withdrawn):
            batcher.submit_nowait(index).cancel()
        futures += [batcher.submit_nowait(i) for i in range(queue_size)]
        assert batcher.statistics().queued == queue_size

        def refused() -> None:
            with pytest.raises(QueueFull):
                batcher.submit_nowait(0)

        # The steady cost: the first call in a process can run extra code once (lazy set-up).
        cost = min(instructions(lambda: batcher.submit_nowait(0)) for _ in range(3))
        refused()
        model.release()
        await settle()
        for future in futures:
            future.cancel()
    return cost


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(queue_size=st.integers(1, 4096), withdrawn=st.integers(0, 2048))
async def test_refusing_costs_the_same_whatever_the_queue_holds(
    queue_size: int, withdrawn: int
) -> None:
    """A refused submit executes as many instructions at 4,096 queued as at 1, withdrawn or not."""
    assert await refusal_cost(queue_size, withdrawn) == await refusal_cost(1, 0)


async def test_a_withdrawn_request_frees_its_place_before_the_next_submit() -> None:
    """Cancelling a queued future frees its place synchronously: the next submit is admitted."""
    model = RecordingModel()
    async with Batcher(model, max_queue_size=2, max_batch_size=1) as batcher:
        model.hold()
        running = batcher.submit_nowait(0)
        await settle()
        first, second = batcher.submit_nowait(1), batcher.submit_nowait(2)
        second.cancel()
        assert batcher.statistics().queued == 1
        late = batcher.submit_nowait(3)
        with pytest.raises(QueueFull):
            batcher.submit_nowait(4)
        model.release()
        assert [await running, await first, await late] == [0, 10, 30]
    assert model.seen == [0, 1, 3]
    assert batcher.statistics().cancelled == 1


class GatedSum:
    """Sums each row once its gate opens; records the rows of every batch it runs."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[int] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.gate.wait(30), "the test never opened the gate"
        self.batches.append(len(inputs["x"]))
        return {"total": inputs["x"].sum(axis=1)}


def gated_handle(model: GatedSum, **batching: int) -> ModelHandle:
    backend = PythonModel(
        model,
        name="sum",
        inputs=(TensorSpec.of("x", "FP32", [-1, -1]),),
        outputs=(TensorSpec.of("total", "FP32", [-1]),),
    )
    return ModelHandle(backend, BatchingConfig(**batching))  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_a_request_of_the_most_rows_leaves_room_for_others() -> None:
    """The largest legal request holds at most its window of places; a small one gets in first."""
    model = GatedSum()
    handle = gated_handle(model, max_batch_size=4, max_queue_size=32)
    # a window of 32 // 16 = 2 chunks
    try:
        rows = 4 * 32  # as many rows as the whole queue holds
        big = asyncio.ensure_future(handle.infer({"x": np.arange(rows).reshape(rows, 1)}))
        await wait_for(lambda: handle.statistics().running_batches == 1)
        await settle()
        assert handle.statistics().queued == 1  # the window: one chunk running, one queued
        small = asyncio.ensure_future(handle.infer({"x": [[7.0]]}))
        await settle()
        model.gate.set()
        assert (await small)["total"].tolist() == [7.0]
        assert not big.done()  # the small request did not wait for all 32 chunks
        assert (await big)["total"].tolist() == list(range(rows))
    finally:
        model.gate.set()
        await handle.aclose()
    assert sum(model.batches) == rows + 1


async def test_an_admitted_large_request_is_not_refused_when_the_queue_fills() -> None:
    """Once its first chunk is in, a large request finishes even if others fill the queue."""
    model = GatedSum()
    handle = gated_handle(model, max_batch_size=4, max_queue_size=16)
    try:
        big = asyncio.ensure_future(handle.infer({"x": np.ones((64, 1))}))
        await wait_for(lambda: handle.statistics().running_batches == 1)
        others = [handle.infer_nowait({"x": [[1.0]]}) for _ in range(16)]  # the whole queue
        with pytest.raises(QueueFull):
            handle.infer_nowait({"x": [[1.0]]})
        model.gate.set()
        assert (await big)["total"].tolist() == [1.0] * 64
        assert [(await other)["total"].tolist() for other in others] == [[1.0]] * len(others)
    finally:
        model.gate.set()
        await handle.aclose()


async def test_wait_for_room_returns_once_a_place_frees() -> None:
    """``wait_for_room`` sleeps while the queue is full and wakes when a request leaves it."""
    model = RecordingModel()
    async with Batcher(model, max_queue_size=1, max_batch_size=1) as batcher:
        model.hold()
        running = batcher.submit_nowait(0)
        await settle()
        queued = batcher.submit_nowait(1)
        waiting = asyncio.ensure_future(batcher.wait_for_room())
        await settle()
        assert not waiting.done()
        queued.cancel()
        await settle()
        assert waiting.done()
        model.release()
        assert await running == 0


async def test_a_queued_request_that_expires_gives_its_place_to_the_line() -> None:
    """A place freed by a deadline, not by dispatch, goes to the next in line too."""
    model = RecordingModel()
    async with Batcher(model, max_queue_size=1, max_batch_size=1) as batcher:
        model.hold()
        running = batcher.submit_nowait(0)
        await settle()
        expiring = batcher.submit_nowait(1, timeout=0.05)
        turns: list[str] = []
        batcher.notify_when_room(lambda: turns.append("turn") is None)
        await wait_for(lambda: expiring.done())
        assert turns == ["turn"]
        model.release()
        assert await running == 0
    with pytest.raises(Exception, match="deadline"):
        expiring.result()


async def test_waking_the_line_is_not_reentrant_and_gives_each_place_once() -> None:
    """Callbacks that join the line again from inside their turn neither recurse nor overdraw.

    Each pass gives at most the places free at that moment, whoever is called.
    """
    model = RecordingModel()
    async with Batcher(model, max_queue_size=2, max_batch_size=1) as batcher:
        model.hold()
        running = batcher.submit_nowait(0)
        await settle()
        queued = [batcher.submit_nowait(1), batcher.submit_nowait(2)]
        turns: list[int] = []

        def waiter(index: int) -> Callable[[], bool]:
            def turn() -> bool:
                turns.append(index)
                if not batcher.closed:  # back of the line, as a held connection
                    batcher.notify_when_room(waiter(index))
                return True  # took the place (its request is on its way)

            return turn

        for index in range(500):  # far past the recursion limit if it recursed
            batcher.notify_when_room(waiter(index))
        queued[0].cancel()  # one place free: one turn
        assert turns == [0]
        queued[1].cancel()  # two free (the first turn's request has not come yet): two more
        assert turns == [0, 1, 2]
        model.release()
        assert await running == 0
