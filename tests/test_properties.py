"""Property tests: nothing is lost or duplicated, whatever the interleaving.

Each example runs a random scenario on its own event loop with looptime's virtual clock: sleeps,
deadlines and lingering take no real time, and the same scenario always interleaves the same way,
so a failure hypothesis finds is reproducible and no outcome depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import looptime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coserve import (
    Batcher,
    BatcherClosed,
    BatchFailed,
    DeadlineExceeded,
    QueueFull,
    ReceiveChannel,
    SendChannel,
    open_channel,
)

T = TypeVar("T")

PROPERTY_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
VIRTUAL_TIME_LIMIT = 10_000.0  # a scenario still running after this much virtual time is a hang

times = st.integers(0, 40).map(lambda q: q / 4)  # 0 … 10 s in quarter seconds: ties happen


def run_virtual(scenario: Coroutine[Any, Any, T]) -> T:
    """Run one scenario on a fresh virtual-time loop (not asyncio.run: see test_batcher.py)."""
    loop = looptime.new_event_loop(start=0.0)
    try:
        return loop.run_until_complete(asyncio.wait_for(scenario, VIRTUAL_TIME_LIMIT))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# -- the batcher -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    arrives_at: float
    timeout: float | None
    priority: int
    cancel_after: float | None
    nowait: bool  # submit_nowait, awaiting the future (a cancellation withdraws it)
    key: int = 0  # the bucket: only equal keys share a batch


@dataclass(frozen=True)
class BatchBehaviour:
    kind: str  # ok | raise | wrong_length | item_error
    duration: float


@dataclass(frozen=True)
class BatcherScenario:
    options: dict[str, Any]
    sync_fn: bool
    requests: list[Request]
    behaviours: list[BatchBehaviour]
    close_at: float
    grace_period: float


@st.composite
def batcher_scenarios(draw: st.DrawFn) -> BatcherScenario:
    sync_fn = draw(st.booleans())
    options = {
        "max_batch_size": draw(st.integers(1, 5)),
        "max_wait": draw(st.sampled_from([0.0, 0.5, 2.0])),
        "max_concurrent_batches": draw(st.integers(1, 3)),
        "max_queue_size": draw(st.integers(1, 8)),
        "timeout": draw(st.sampled_from([None, 3.0])),
    }
    requests = draw(
        st.lists(
            st.builds(
                Request,
                arrives_at=times,
                timeout=st.none() | times.filter(bool),
                priority=st.integers(0, 2),
                cancel_after=st.none() | times,
                nowait=st.booleans(),
                key=st.integers(0, 2),
            ),
            min_size=1,
            max_size=25,
        )
    )
    behaviours = draw(
        st.lists(
            st.builds(
                BatchBehaviour,
                kind=st.sampled_from(["ok", "ok", "ok", "raise", "wrong_length", "item_error"]),
                # A sync fn runs in a real thread, which virtual time cannot stretch.
                duration=st.just(0.0) if sync_fn else times,
            ),
            min_size=1,
            max_size=10,
        )
    )
    return BatcherScenario(
        options=options,
        sync_fn=sync_fn,
        requests=requests,
        behaviours=behaviours,
        close_at=draw(times),
        grace_period=draw(times),
    )


def item_result(item: int) -> int:
    return item * 10


def apply_behaviour(kind: str, items: list[int]) -> list[int | Exception]:
    if kind == "raise":
        raise RuntimeError("batch failed on purpose")
    if kind == "wrong_length":
        return [item_result(i) for i in items[1:]] + [0, 0]
    if kind == "item_error":
        return [ValueError(f"item {i}") if i % 2 else item_result(i) for i in items]
    return [item_result(i) for i in items]


@dataclass
class BatcherRun:
    outcomes: dict[int, tuple[str, object]]
    attempts: set[int]
    batches: list[tuple[float, list[int], str]]
    stats: Any


async def play(scenario: BatcherScenario) -> BatcherRun:
    loop = asyncio.get_running_loop()
    batches: list[tuple[float, list[int], str]] = []

    def next_behaviour(items: list[int]) -> BatchBehaviour:
        behaviour = scenario.behaviours[len(batches) % len(scenario.behaviours)]
        batches.append((loop.time(), list(items), behaviour.kind))
        return behaviour

    async def async_fn(items: list[int]) -> list[int | Exception]:
        behaviour = next_behaviour(items)
        await asyncio.sleep(behaviour.duration)
        return apply_behaviour(behaviour.kind, items)

    def sync_fn(items: list[int]) -> list[int | Exception]:
        return apply_behaviour(next_behaviour(items).kind, items)

    fn: Any = sync_fn if scenario.sync_fn else async_fn
    batcher: Batcher[int, int] = Batcher(fn, **scenario.options)
    outcomes: dict[int, tuple[str, object]] = {}
    attempts: set[int] = set()

    async def client(item: int, request: Request) -> None:
        try:
            await asyncio.sleep(request.arrives_at)
            attempts.add(item)
            submit = batcher.submit_nowait if request.nowait else batcher.submit
            result = await submit(
                item, timeout=request.timeout, priority=request.priority, key=request.key
            )
            outcomes[item] = ("ok", result)
        except asyncio.CancelledError:
            outcomes[item] = ("cancelled", loop.time())
        except (QueueFull, BatcherClosed, DeadlineExceeded, BatchFailed, ValueError) as error:
            outcomes[item] = (type(error).__name__, str(error))

    clients = []
    for item, request in enumerate(scenario.requests):
        task = asyncio.create_task(client(item, request))
        if request.cancel_after is not None:
            loop.call_at(request.arrives_at + request.cancel_after, task.cancel)
        clients.append(task)

    await asyncio.sleep(scenario.close_at)
    await batcher.aclose(grace_period=scenario.grace_period)
    await asyncio.gather(*clients)
    return BatcherRun(outcomes, attempts, batches, batcher.statistics())


@PROPERTY_SETTINGS
@given(batcher_scenarios())
def test_every_request_gets_exactly_one_outcome(scenario: BatcherScenario) -> None:
    """Every request ends exactly once, nothing runs twice, and dropped requests never run.

    The scenarios mix submits to three buckets, deadlines, cancellations, failing and slow
    batches, and close.
    """
    run = run_virtual(play(scenario))
    outcomes, stats = run.outcomes, run.stats

    # Every client finished with one recorded outcome.
    assert set(outcomes) == set(range(len(scenario.requests)))

    # Nothing was passed to the batch function twice, and no batch mixed buckets.
    ran = Counter(item for _, items, _ in run.batches for item in items)
    assert all(n == 1 for n in ran.values()), ran
    for _, items, _ in run.batches:
        assert len({scenario.requests[item].key for item in items}) == 1, items

    started_at = {item: at for at, items, _ in run.batches for item in items}
    behaviour_of = {item: kind for _, items, kind in run.batches for item in items}
    for item, (kind, detail) in outcomes.items():
        # An error outcome must come from a batch that produced exactly that error.
        if kind == "BatchFailed":
            assert behaviour_of.get(item) in ("raise", "wrong_length"), (item, detail)
        if kind == "ValueError":
            assert behaviour_of.get(item) == "item_error"
            assert item % 2
        if kind == "ok":  # a result is the right one, from a batch that produced it
            assert detail == item_result(item)
            assert behaviour_of[item] == "ok" or (
                behaviour_of[item] == "item_error" and not item % 2
            )
        elif kind == "DeadlineExceeded" and "queued" in str(detail):
            assert item not in started_at  # expired in the queue: never ran
        elif kind in ("QueueFull",):
            assert item not in started_at
        elif kind == "cancelled" and item in started_at:
            # A cancelled request may only have run if its batch started before (or as) the
            # cancellation arrived; one cancelled while queued must never run later.
            assert isinstance(detail, float)
            assert started_at[item] <= detail

    # The counters agree with what the callers saw.
    assert stats.queued == stats.in_flight == stats.running_batches == 0
    submitted = len(run.attempts) - stats.rejected
    assert stats.submitted == submitted
    assert (
        stats.completed + stats.failed + stats.expired + stats.cancelled + stats.aborted
        == submitted
    )
    seen = Counter(kind for kind, _ in outcomes.values())
    # A caller cancelled in the instant after its outcome was set sees the cancellation, so the
    # batcher's own outcome counts can only exceed what callers saw, never fall short.
    assert stats.completed >= seen["ok"]
    assert stats.expired >= seen["DeadlineExceeded"]
    assert stats.failed >= seen["BatchFailed"] + seen["ValueError"]
    assert stats.rejected + stats.aborted >= seen["QueueFull"] + seen["BatcherClosed"]


# -- channels --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelScenario:
    capacity: int
    producers: list[list[float]]  # per producer: the delay before each of its sends
    producer_cancels: list[float | None]
    consumers: list[list[float]]  # per consumer: the delay after each receive (cycled)
    consumer_cancels: list[float | None]


@st.composite
def channel_scenarios(draw: st.DrawFn) -> ChannelScenario:
    n_producers = draw(st.integers(1, 4))
    n_consumers = draw(st.integers(1, 4))
    delays = st.lists(times, min_size=1, max_size=8)
    return ChannelScenario(
        capacity=draw(st.integers(0, 3)),
        producers=[draw(delays) for _ in range(n_producers)],
        producer_cancels=[draw(st.none() | times) for _ in range(n_producers)],
        consumers=[draw(delays) for _ in range(n_consumers)],
        consumer_cancels=[draw(st.none() | times) for _ in range(n_consumers)],
    )


async def play_channel(scenario: ChannelScenario) -> tuple[set[int], list[int]]:
    loop = asyncio.get_running_loop()
    send, receive = open_channel[int](scenario.capacity)
    delivered: set[int] = set()  # values whose send returned
    received: list[int] = []

    async def producer(channel: SendChannel[int], index: int, delays: list[float]) -> None:
        with channel:
            for n, delay in enumerate(delays):
                await asyncio.sleep(delay)
                value = index * 100 + n
                await channel.send(value)
                delivered.add(value)

    async def consumer(channel: ReceiveChannel[int], delays: list[float]) -> None:
        with channel:
            n = 0
            async for value in channel:
                received.append(value)
                await asyncio.sleep(delays[n % len(delays)])
                n += 1

    def spawn(coro: Coroutine[Any, Any, None], cancel_at: float | None) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        if cancel_at is not None:
            loop.call_at(cancel_at, task.cancel)
        return task

    with send:
        producers = [
            spawn(producer(send.clone(), i, delays), cancel)
            for i, (delays, cancel) in enumerate(
                zip(scenario.producers, scenario.producer_cancels, strict=True)
            )
        ]
    consumers = [
        spawn(consumer(receive.clone(), delays), cancel)
        for delays, cancel in zip(scenario.consumers, scenario.consumer_cancels, strict=True)
    ]
    # After every scheduled cancellation, a last consumer drains whatever is left (and unblocks
    # producers whose consumers were all cancelled).
    await asyncio.sleep(100.0)
    with receive:
        received.extend([value async for value in receive])
    for task in (*producers, *consumers):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return delivered, received


@PROPERTY_SETTINGS
@given(channel_scenarios())
def test_channels_deliver_exactly_what_was_sent(scenario: ChannelScenario) -> None:
    """Every value whose send returned is received once; no cancelled send's value arrives.

    Producers and consumers are cancelled at random moments, mid-send and mid-receive.
    """
    delivered, received = run_virtual(play_channel(scenario))
    assert len(received) == len(set(received)), "a value was received twice"
    assert set(received) == delivered
