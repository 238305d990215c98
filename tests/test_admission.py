"""Admission under overload: refusing a request stays cheap, and no request takes the queue.

A server under overload refuses far more requests than it serves, so the cost of refusing must
not grow with the queue; and a request's withdrawal must free its place at once. Cost is counted
in Python bytecode instructions executed (``sys.settrace`` with opcode events), which is exact and
does not depend on how loaded the machine is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coserve import Batcher, QueueFull
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

        cost = instructions(lambda: batcher.submit_nowait(0))
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
