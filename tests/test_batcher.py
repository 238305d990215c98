"""The Batcher's behaviour, one behaviour per test.

Timing is never measured in wall-clock time: a gate holds a batch "running" while the test piles
up requests behind it, and tests about waiting use looptime's virtual clock, so a loaded machine
cannot change an outcome.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from coserve import (
    Batcher,
    BatcherClosed,
    BatchFailed,
    CloseReason,
    CoserveError,
    DeadlineExceeded,
    QueueFull,
)
from coserve.batching._queue import RequestQueue
from helpers import RecordingModel, settle, submit_all


class TestPullDispatch:
    @pytest.mark.looptime
    async def test_lone_request_runs_at_once_with_no_wait(self, model: RecordingModel) -> None:
        """With max_wait=0 a single request is dispatched without any delay."""
        loop = asyncio.get_running_loop()
        async with Batcher(model, max_wait=0) as batcher:
            start = loop.time()
            assert await batcher.submit(3) == 30
            assert model.started_at == [start]
            assert batcher.statistics().close_reasons["slot_free"] == 1

    async def test_requests_queued_while_the_slot_is_busy_form_the_next_batch(
        self, model: RecordingModel
    ) -> None:
        """While every slot is busy requests accumulate, and the next batch takes them all."""
        async with Batcher(model, max_batch_size=64) as batcher:
            model.hold()
            first = submit_all(batcher, [0])
            await settle()
            rest = submit_all(batcher, range(1, 11))
            await settle()
            assert model.batches == [[0]]
            model.release()
            results = await asyncio.gather(*first, *rest)
        assert model.batches == [[0], list(range(1, 11))]
        assert results == [i * 10 for i in range(11)]

    async def test_concurrent_submits_in_one_tick_share_a_batch(
        self, model: RecordingModel
    ) -> None:
        """Requests submitted before the dispatcher runs go out together."""
        async with Batcher(model, max_batch_size=64) as batcher:
            results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        assert model.batches == [list(range(20))]
        assert results == [i * 10 for i in range(20)]

    async def test_batches_never_exceed_max_batch_size(self, model: RecordingModel) -> None:
        """However many are queued, a batch holds at most max_batch_size rows."""
        async with Batcher(model, max_batch_size=16) as batcher:
            results = await asyncio.gather(*(batcher.submit(i) for i in range(100)))
        assert max(len(b) for b in model.batches) == 16
        assert sorted(model.seen) == list(range(100))
        assert results == [i * 10 for i in range(100)]

    async def test_concurrent_batches_use_every_slot(self, model: RecordingModel) -> None:
        """With max_concurrent_batches=3, three batches run at the same time."""
        async with Batcher(model, max_batch_size=2, max_concurrent_batches=3) as batcher:
            model.hold()
            tasks = submit_all(batcher, range(10))
            await settle()
            assert batcher.statistics().running_batches == 3
            assert model.batches == [[0, 1], [2, 3], [4, 5]]
            model.release()
            await asyncio.gather(*tasks)

    async def test_size_counts_rows_against_max_batch_size(self, model: RecordingModel) -> None:
        """A request's size counts that many rows; a batch never goes over max_batch_size rows."""
        async with Batcher(model, max_batch_size=4) as batcher:
            model.hold()
            blocker = submit_all(batcher, [99])
            await settle()
            sized = [asyncio.create_task(batcher.submit(i, size=3)) for i in range(3)]
            await settle()
            assert batcher.statistics().queued_rows == 9
            model.release()
            await asyncio.gather(*blocker, *sized)
        assert model.batches == [[99], [0], [1], [2]]
        assert batcher.statistics().batch_sizes == {1: 1, 3: 3}

    async def test_size_larger_than_a_batch_is_refused(self, model: RecordingModel) -> None:
        """An item bigger than max_batch_size rows could never run, so submit refuses it."""
        async with Batcher(model, max_batch_size=4) as batcher:
            with pytest.raises(ValueError, match="size"):
                await batcher.submit(1, size=5)

    @pytest.mark.parametrize("sizes", [[1] * 6, [2, 1, 3, 1, 2, 1]])
    async def test_max_requests_per_batch_one_never_combines(
        self, model: RecordingModel, sizes: list[int]
    ) -> None:
        """max_requests_per_batch=1: queued requests run one per batch, in order, rows aside."""
        async with Batcher(model, max_batch_size=8, max_requests_per_batch=1) as batcher:
            model.hold()
            blocker = submit_all(batcher, [99])
            await settle()
            queued = [
                asyncio.create_task(batcher.submit(i, size=size)) for i, size in enumerate(sizes)
            ]
            await settle()
            model.release()
            await asyncio.gather(*blocker, *queued)
        assert model.batches == [[99], *([i] for i in range(len(sizes)))]

    async def test_max_requests_per_batch_caps_requests(self, model: RecordingModel) -> None:
        """max_requests_per_batch=2 takes two queued requests a batch though more rows fit."""
        async with Batcher(model, max_batch_size=8, max_requests_per_batch=2) as batcher:
            model.hold()
            blocker = submit_all(batcher, [99])
            await settle()
            queued = submit_all(batcher, range(5))
            await settle()
            model.release()
            await asyncio.gather(*blocker, *queued)
        assert model.batches == [[99], [0, 1], [2, 3], [4]]

    async def test_max_requests_per_batch_is_checked(self, model: RecordingModel) -> None:
        """Zero requests a batch could never run anything: refused when built."""
        with pytest.raises(ValueError, match="max_requests_per_batch"):
            Batcher(model, max_requests_per_batch=0)


class TestLinger:
    @pytest.mark.looptime
    async def test_linger_lasts_max_wait_from_the_oldest_request(
        self, model: RecordingModel
    ) -> None:
        """With max_wait > 0 a partial batch goes max_wait after its oldest request arrived."""
        loop = asyncio.get_running_loop()
        async with Batcher(model, max_batch_size=10, max_wait=1.0) as batcher:
            start = loop.time()
            first = asyncio.create_task(batcher.submit(1))
            await asyncio.sleep(0.4)
            second = asyncio.create_task(batcher.submit(2))
            assert await asyncio.gather(first, second) == [10, 20]
        assert model.batches == [[1, 2]]
        assert model.started_at == [pytest.approx(start + 1.0)]
        assert batcher.statistics().close_reasons["max_wait"] == 1

    @pytest.mark.looptime
    async def test_linger_ends_early_when_the_batch_fills(self, model: RecordingModel) -> None:
        """A lingering batch goes as soon as max_batch_size rows are queued."""
        loop = asyncio.get_running_loop()
        async with Batcher(model, max_batch_size=4, max_wait=10.0) as batcher:
            start = loop.time()
            first = submit_all(batcher, range(3))
            await asyncio.sleep(2.0)
            last = submit_all(batcher, [3])
            await asyncio.gather(*first, *last)
        assert model.batches == [[0, 1, 2, 3]]
        assert model.started_at == [pytest.approx(start + 2.0)]
        assert batcher.statistics().close_reasons["full"] == 1

    @pytest.mark.looptime
    async def test_requests_older_than_max_wait_go_as_soon_as_a_slot_frees(
        self, model: RecordingModel
    ) -> None:
        """When the oldest queued request has already waited max_wait, a freed slot takes it."""
        loop = asyncio.get_running_loop()
        async with Batcher(model, max_batch_size=10, max_wait=1.0) as batcher:
            model.hold()
            first = submit_all(batcher, [0])
            await asyncio.sleep(1.5)  # the first batch is running (held)
            queued = submit_all(batcher, [1, 2])
            await asyncio.sleep(5.0)  # these have waited far longer than max_wait
            released_at = loop.time()
            model.release()
            await asyncio.gather(*first, *queued)
        assert model.batches == [[0], [1, 2]]
        assert model.started_at[1] == pytest.approx(released_at)

    @pytest.mark.looptime
    async def test_idle_batcher_schedules_no_timers(self, model: RecordingModel) -> None:
        """The dispatcher sleeps on events, not on polling timers, while nothing is queued."""
        loop = asyncio.get_running_loop()
        async with Batcher(model, max_wait=0.5) as batcher:
            await batcher.submit(1)
            await settle()
            assert not [t for t in loop._scheduled if not t.cancelled()]  # type: ignore[attr-defined]


class TestExecution:
    async def test_sync_function_runs_in_a_worker_thread(self) -> None:
        """A sync batch function never runs on the event loop's thread."""
        threads: list[threading.Thread] = []

        def fn(items: list[int]) -> list[int]:
            threads.append(threading.current_thread())
            return [i + 1 for i in items]

        async with Batcher(fn) as batcher:
            assert await batcher.submit(1) == 2
        assert threads
        assert threads[0] is not threading.main_thread()

    async def test_given_executor_is_used_and_left_running(self) -> None:
        """A batcher runs a sync function in the executor it is given and does not shut it down."""
        with ThreadPoolExecutor(1, thread_name_prefix="given") as pool:
            names: list[str] = []

            def fn(items: list[int]) -> list[int]:
                names.append(threading.current_thread().name)
                return items

            async with Batcher(fn, executor=pool) as batcher:
                await batcher.submit(1)
            assert names[0].startswith("given")
            assert pool.submit(lambda: 5).result() == 5

    async def test_async_callable_object_is_awaited(self) -> None:
        """An object with an async __call__ is treated as an async batch function."""
        model = RecordingModel(transform=str)
        async with Batcher(model) as batcher:
            assert await batcher.submit(4) == "4"


class TestDeadlines:
    @pytest.mark.looptime
    async def test_request_expiring_in_the_queue_never_runs(self, model: RecordingModel) -> None:
        """A request whose timeout passes while queued raises DeadlineExceeded and never runs."""
        async with Batcher(model) as batcher:
            model.hold()
            blocker = submit_all(batcher, [0])
            await settle()
            doomed = asyncio.create_task(batcher.submit(1, timeout=1.0))
            await asyncio.sleep(2.0)
            assert doomed.done()
            with pytest.raises(DeadlineExceeded, match="queued"):
                await doomed
            model.release()
            await asyncio.gather(*blocker)
            assert await batcher.submit(2) == 20
        assert 1 not in model.seen
        assert batcher.statistics().expired == 1

    @pytest.mark.looptime
    async def test_batcher_timeout_is_the_default_deadline(self, model: RecordingModel) -> None:
        """Without a per-request timeout, the batcher's timeout applies."""
        async with Batcher(model, timeout=0.5) as batcher:
            model.hold()
            blocker = submit_all(batcher, [0])
            await settle()
            late = asyncio.create_task(batcher.submit(1))
            with pytest.raises(DeadlineExceeded):
                await late
            model.release()
            with pytest.raises(DeadlineExceeded):  # the running one too: 0.5 s have passed
                await asyncio.gather(*blocker)

    @pytest.mark.looptime
    async def test_deadline_passing_while_running_answers_the_caller_at_once(
        self, model: RecordingModel
    ) -> None:
        """A caller is not kept past its deadline by a slow batch; the late result is dropped."""
        loop = asyncio.get_running_loop()
        async with Batcher(model) as batcher:
            model.hold()
            start = loop.time()
            with pytest.raises(DeadlineExceeded, match="running"):
                await batcher.submit(1, timeout=2.0)
            assert loop.time() == pytest.approx(start + 2.0)
            model.release()
            assert await batcher.submit(2) == 20

    @pytest.mark.looptime
    async def test_expiry_while_running_leaves_batch_mates_unharmed(
        self, model: RecordingModel
    ) -> None:
        """One caller timing out mid-batch does not change the others' results."""
        async with Batcher(model) as batcher:
            model.hold()
            impatient = asyncio.create_task(batcher.submit(1, timeout=1.0))
            patient = submit_all(batcher, [2, 3])
            await asyncio.sleep(2.0)  # the batch [1, 2, 3] is running, held
            with pytest.raises(DeadlineExceeded, match="running"):
                await impatient
            model.release()
            assert await asyncio.gather(*patient) == [20, 30]
        assert model.batches == [[1, 2, 3]]

    @pytest.mark.parametrize("bad", [0, -1.0])
    async def test_non_positive_timeout_is_refused(self, model: RecordingModel, bad: float) -> None:
        """A timeout must be positive."""
        async with Batcher(model) as batcher:
            with pytest.raises(ValueError, match="timeout"):
                await batcher.submit(1, timeout=bad)


class TestCancellation:
    async def test_cancelled_caller_item_is_never_run(self, model: RecordingModel) -> None:
        """If the caller is cancelled while its item is queued, the item is dropped."""
        async with Batcher(model) as batcher:
            model.hold()
            blocker = submit_all(batcher, [0])
            await settle()
            victim = asyncio.create_task(batcher.submit(1))
            survivor = asyncio.create_task(batcher.submit(2))
            await settle()
            victim.cancel()
            await settle()
            assert batcher.statistics().queued == 1
            model.release()
            await asyncio.gather(*blocker, survivor)
            with pytest.raises(asyncio.CancelledError):
                await victim
        assert model.batches == [[0], [2]]
        assert batcher.statistics().cancelled == 1

    async def test_a_cancelled_submit_nowait_future_withdraws_its_item(
        self, model: RecordingModel
    ) -> None:
        """Cancelling a queued item's future drops it at once; a running one is counted."""
        async with Batcher(model, max_batch_size=2) as batcher:
            model.hold()
            running = batcher.submit_nowait(0)
            await settle()
            queued = batcher.submit_nowait(1)
            kept = batcher.submit_nowait(2)
            await settle()
            running.cancel()
            queued.cancel()
            assert batcher.statistics().queued == 1  # a withdrawn item leaves at once
            model.release()
            assert await kept == 20
        assert model.batches == [[0], [2]]
        stats = batcher.statistics()
        assert (stats.completed, stats.cancelled, stats.submitted) == (1, 2, 3)

    async def test_withdrawn_items_give_up_their_places_in_a_full_queue(
        self, model: RecordingModel
    ) -> None:
        async with Batcher(model, max_queue_size=2) as batcher:
            model.hold()
            running = batcher.submit_nowait(0)
            await settle()
            withdrawn = [batcher.submit_nowait(1), batcher.submit_nowait(2)]
            for future in withdrawn:
                future.cancel()
            late = batcher.submit_nowait(3)  # the queue was full, but only of withdrawn items
            assert batcher.statistics().queued == 1
            model.release()
            assert await asyncio.gather(running, late) == [0, 30]
        assert model.batches == [[0], [3]]
        assert batcher.statistics().cancelled == 2

    async def test_submit_nowait_refuses_at_once(self, model: RecordingModel) -> None:
        async with Batcher(model, max_queue_size=1) as batcher:
            model.hold()
            first = batcher.submit_nowait(0)
            await settle()
            second = batcher.submit_nowait(1)
            with pytest.raises(QueueFull):
                batcher.submit_nowait(2)
            model.release()
            assert await asyncio.gather(first, second) == [0, 10]
        with pytest.raises(BatcherClosed):
            batcher.submit_nowait(3)

    async def test_wait_for_timeout_drops_the_queued_item(self, model: RecordingModel) -> None:
        """A caller's own asyncio timeout cancels its request before it runs."""
        async with Batcher(model) as batcher:
            model.hold()
            blocker = submit_all(batcher, [0])
            await settle()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    await batcher.submit(1)
            model.release()
            await asyncio.gather(*blocker)
        assert 1 not in model.seen


class TestErrors:
    async def test_per_item_error_fails_only_its_caller(self) -> None:
        """An Exception in a result slot is raised to that caller alone."""

        async def fn(items: list[int]) -> list[int | Exception]:
            return [ValueError(f"bad {i}") if i == 2 else i for i in items]

        async with Batcher(fn) as batcher:
            outcomes = await asyncio.gather(
                *(batcher.submit(i) for i in range(4)), return_exceptions=True
            )
        assert outcomes[:2] == [0, 1]
        assert outcomes[3] == 3
        assert isinstance(outcomes[2], ValueError)
        assert str(outcomes[2]) == "bad 2"
        assert batcher.statistics().failed == 1

    async def test_raising_fn_fails_every_caller_with_the_cause_chained(self) -> None:
        """If fn raises, each caller of that batch gets BatchFailed chained to the error."""
        boom = RuntimeError("model exploded")

        def fn(items: list[int]) -> list[int]:
            raise boom

        async with Batcher(fn) as batcher:
            outcomes = await asyncio.gather(
                *(batcher.submit(i) for i in range(3)), return_exceptions=True
            )
        assert all(isinstance(o, BatchFailed) for o in outcomes)
        assert all(o.__cause__ is boom for o in outcomes)  # type: ignore[union-attr]
        assert len({id(o) for o in outcomes}) == 3  # one exception object per caller

    @pytest.mark.parametrize(
        ("returned", "message"),
        [([1], "returned 1 results for a batch of 2"), (None, "returned a NoneType")],
    )
    async def test_wrong_result_shape_fails_the_batch_with_a_clear_message(
        self, returned: object, message: str
    ) -> None:
        """A result list of the wrong length (or no list) fails every caller, saying so."""

        async def fn(items: list[int]) -> object:
            return returned

        async with Batcher(fn) as batcher:  # type: ignore[arg-type]
            outcomes = await asyncio.gather(
                batcher.submit(1), batcher.submit(2), return_exceptions=True
            )
        for outcome in outcomes:
            assert isinstance(outcome, BatchFailed)
            assert message in str(outcome)

    async def test_numpy_array_of_results_is_split_by_row(self) -> None:
        """A batch function may return a numpy array: each caller gets its own row."""

        def fn(items: list[int]) -> np.ndarray:
            return np.arange(len(items) * 2).reshape(len(items), 2) + 100 * np.array(items)[:, None]

        async with Batcher(fn) as batcher:  # type: ignore[arg-type]
            rows = await asyncio.gather(batcher.submit(1), batcher.submit(2))
        assert [row.tolist() for row in rows] == [[100, 101], [202, 203]]

    async def test_a_crashed_dispatcher_fails_its_callers_and_refuses_work(
        self,
        model: RecordingModel,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """If the dispatcher itself hits a bug, queued callers fail and the batcher closes."""
        batcher = Batcher(model)
        model.hold()
        first = asyncio.create_task(batcher.submit(0))
        await settle()

        def broken_take(self: RequestQueue[int], max_rows: int) -> None:
            raise RuntimeError("bug in take")

        monkeypatch.setattr(RequestQueue, "take", broken_take)  # fault injection
        queued = asyncio.create_task(batcher.submit(1))
        model.release()
        with pytest.raises(BatcherClosed, match="crashed"):
            await queued
        assert await first == 0
        with pytest.raises(BatcherClosed):
            await batcher.submit(2)
        await batcher.aclose()
        assert any("dispatcher crashed" in r.message for r in caplog.records)

    async def test_batcher_survives_failures(self) -> None:
        """After a failed batch the batcher keeps serving."""
        calls = 0

        async def fn(items: list[int]) -> list[int]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("first call fails")
            return items

        async with Batcher(fn) as batcher:
            with pytest.raises(BatchFailed):
                await batcher.submit(1)
            assert await batcher.submit(2) == 2

    async def test_fn_errors_are_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """A batch function that raises leaves an error in the log with its traceback."""

        def fn(items: list[int]) -> list[int]:
            raise KeyError("missing")

        with caplog.at_level(logging.ERROR, logger="coserve.batching"):
            async with Batcher(fn) as batcher:
                with pytest.raises(BatchFailed):
                    await batcher.submit(1)
        assert any(r.exc_info and r.exc_info[1].args == ("missing",) for r in caplog.records)


class TestLoadShedding:
    async def test_full_queue_rejects_at_once(self, model: RecordingModel) -> None:
        """With max_queue_size requests waiting, submit raises QueueFull immediately."""
        async with Batcher(model, max_queue_size=2) as batcher:
            model.hold()
            running = submit_all(batcher, [0])
            await settle()
            queued = submit_all(batcher, [1, 2])
            await settle()
            with pytest.raises(QueueFull):
                await batcher.submit(3)
            stats = batcher.statistics()
            assert (stats.rejected, stats.rejected_queue_full, stats.rejected_closed) == (1, 1, 0)
            model.release()
            assert await asyncio.gather(*running, *queued) == [0, 10, 20]
            assert await batcher.submit(4) == 40  # room again


class TestPriorities:
    async def test_higher_priority_is_taken_first_and_fifo_within_a_priority(
        self, model: RecordingModel
    ) -> None:
        """Queued requests run highest priority first, first come first served within one."""
        async with Batcher(model, max_batch_size=3) as batcher:
            model.hold()
            blocker = submit_all(batcher, [0])
            await settle()
            plan = [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1), (6, 9)]
            tasks = [asyncio.create_task(batcher.submit(i, priority=p)) for i, p in plan]
            await settle()
            model.release()
            await asyncio.gather(*blocker, *tasks)
        assert model.batches == [[0], [6, 2, 4], [1, 3, 5]]


class TestStatistics:
    async def test_statistics_count_outcomes_sizes_and_reasons(self, model: RecordingModel) -> None:
        """statistics() reports counts, the size histogram, close reasons and timings."""
        async with Batcher(model, max_batch_size=4) as batcher:
            model.hold()
            first = submit_all(batcher, [0])
            await settle()
            rest = submit_all(batcher, range(1, 7))
            await settle()
            during = batcher.statistics()
            model.release()
            await asyncio.gather(*first, *rest)
        assert (during.queued, during.running_batches, during.in_flight) == (6, 1, 1)
        stats = batcher.statistics()
        assert stats.submitted == stats.completed == 7
        assert stats.batches == 3
        assert stats.batch_sizes == {1: 1, 4: 1, 2: 1}
        assert stats.close_reasons[CloseReason.FULL] == 1
        assert stats.close_reasons[CloseReason.SLOT_FREE] == 2
        assert stats.mean_batch_size == pytest.approx(7 / 3)
        assert stats.queue_time.count == 7
        assert stats.execution_time.count == 3
        assert stats.queue_time.max >= stats.queue_time.p50 >= 0


class TestShutdown:
    async def test_submit_after_close_is_refused(self, model: RecordingModel) -> None:
        """After aclose, submit raises BatcherClosed."""
        batcher = Batcher(model)
        async with batcher:
            pass
        with pytest.raises(BatcherClosed):
            await batcher.submit(1)
        stats = batcher.statistics()
        assert (stats.rejected, stats.rejected_queue_full, stats.rejected_closed) == (1, 0, 1)

    async def test_close_finishes_queued_and_running_work(self, model: RecordingModel) -> None:
        """Aclose lets every queued and running request complete within the grace period."""
        batcher = Batcher(model, max_batch_size=2)
        model.hold()
        tasks = submit_all(batcher, range(5))
        await settle()
        closing = asyncio.create_task(batcher.aclose())
        await settle()
        with pytest.raises(BatcherClosed):
            await batcher.submit(9)
        model.release()
        await closing
        assert await asyncio.gather(*tasks) == [0, 10, 20, 30, 40]
        assert batcher.statistics().close_reasons["shutdown"] >= 1

    @pytest.mark.looptime
    async def test_close_flushes_a_lingering_batch_without_waiting(
        self, model: RecordingModel
    ) -> None:
        """Closing dispatches queued work at once instead of lingering for max_wait."""
        loop = asyncio.get_running_loop()
        batcher = Batcher(model, max_wait=100.0)
        task = asyncio.create_task(batcher.submit(1))
        await settle()
        start = loop.time()
        await batcher.aclose()
        assert await task == 10
        assert model.started_at == [start]

    @pytest.mark.looptime
    async def test_grace_period_running_out_fails_the_rest(self, model: RecordingModel) -> None:
        """Work not finished when the grace period ends fails with BatcherClosed; nothing leaks."""
        loop = asyncio.get_running_loop()
        batcher = Batcher(model, max_batch_size=1)
        model.hold()  # never released: the batch function would run forever
        tasks = submit_all(batcher, range(3))
        await settle()
        start = loop.time()
        await batcher.aclose(grace_period=5.0)
        assert loop.time() == pytest.approx(start + 5.0)
        for task in tasks:
            with pytest.raises(BatcherClosed):
                await task
        stats = batcher.statistics()
        assert (stats.aborted, stats.running_batches, stats.queued) == (3, 0, 0)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    async def test_aclose_is_idempotent_and_safe_before_start(self) -> None:
        """Aclose may be called on a batcher never used, and more than once."""
        batcher = Batcher(RecordingModel())
        await batcher.aclose()
        await batcher.aclose()
        assert batcher.closed

    async def test_concurrent_acloses_both_wait_for_the_drain(self, model: RecordingModel) -> None:
        """A second aclose waits for the first to finish draining."""
        batcher = Batcher(model)
        model.hold()
        task = asyncio.create_task(batcher.submit(1))
        await settle()
        closers = [asyncio.create_task(batcher.aclose()) for _ in range(2)]
        await settle()
        assert not any(c.done() for c in closers)
        model.release()
        await asyncio.gather(*closers)
        assert await task == 10

    async def test_owned_thread_pool_is_shut_down(self) -> None:
        """The thread pool a batcher made for a sync function is shut down on close."""
        batcher = Batcher(lambda items: items)
        async with batcher:
            await batcher.submit(1)
            pool = batcher._executor
            assert isinstance(pool, ThreadPoolExecutor)
        with pytest.raises(RuntimeError, match="shutdown"):
            pool.submit(print)


class TestConfiguration:
    @pytest.mark.parametrize(
        ("options", "error"),
        [
            ({"max_batch_size": 0}, ValueError),
            ({"max_batch_size": 2.5}, TypeError),
            ({"max_concurrent_batches": 0}, ValueError),
            ({"max_queue_size": -1}, ValueError),
            ({"max_wait": -0.1}, ValueError),
            ({"max_wait": float("nan")}, ValueError),
            ({"timeout": 0}, ValueError),
            ({"grace_period": -1}, ValueError),
            ({"max_batch_size": True}, TypeError),
            ({"max_batch_size": None}, TypeError),
            ({"max_queue_size": None}, TypeError),
        ],
    )
    def test_bad_options_are_refused_with_the_option_named(
        self, options: dict[str, object], error: type[Exception]
    ) -> None:
        """Out-of-range or mistyped options raise at construction, naming the option."""
        with pytest.raises(error, match=next(iter(options))):
            Batcher(lambda items: items, **options)  # type: ignore[arg-type]

    def test_fn_must_be_callable(self) -> None:
        """A non-callable fn is refused."""
        with pytest.raises(TypeError, match="callable"):
            Batcher(42)  # type: ignore[arg-type]

    def test_a_batcher_is_bound_to_its_event_loop(self) -> None:
        """Using a batcher from a second event loop raises instead of misbehaving."""
        batcher = Batcher(RecordingModel())

        async def use() -> object:
            return await batcher.submit(1)

        # Explicit loops rather than asyncio.Runner: a Runner resets the current-loop policy,
        # which pytest-asyncio 1.3 does not expect.
        first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
        try:
            assert first.run_until_complete(use()) == 10
            with pytest.raises(RuntimeError, match="another event loop"):
                second.run_until_complete(use())
            first.run_until_complete(batcher.aclose())
        finally:
            first.close()
            second.close()

    def test_exceptions_share_one_root(self) -> None:
        """Every batcher error is a CoserveError; DeadlineExceeded is also a TimeoutError."""
        for error in (QueueFull, BatcherClosed, BatchFailed, DeadlineExceeded):
            assert issubclass(error, CoserveError)
        assert issubclass(DeadlineExceeded, TimeoutError)


class TestCumulativeDurations:
    """The sums behind Triton's statistics extension (``coserve.server._statistics``)."""

    @pytest.mark.looptime
    async def test_completed_requests_sum_their_rows_times_and_batch_time(self) -> None:
        """Each completed request adds its rows, its submit-to-answer time and its batch's time."""

        async def fn(items: list[int]) -> list[int]:
            await asyncio.sleep(1.0)  # virtual time: every batch takes exactly 1 s
            return items

        async with Batcher(fn, max_batch_size=4) as batcher:
            first = asyncio.create_task(batcher.submit(0))
            await settle()  # the first runs alone, from t=0 to t=1
            rest = [
                asyncio.create_task(batcher.submit(1, size=2)),
                asyncio.create_task(batcher.submit(2)),
            ]  # queued together until t=1, then one batch of 3 rows to t=2
            await asyncio.gather(first, *rest)
        stats = batcher.statistics()
        assert stats.completed == 3
        assert stats.completed_rows == 4
        assert stats.completed_seconds == pytest.approx(1 + 2 + 2)
        assert stats.completed_execution_seconds == pytest.approx(1 + 1 + 1)
        assert stats.queue_time.mean * stats.queue_time.count == pytest.approx(0 + 1 + 1)
        assert dict(stats.batch_execution_seconds) == pytest.approx({1: 1.0, 3: 1.0})
        assert stats.error_seconds == 0.0
        assert stats.last_batch_end > 0  # wall clock, seconds since the epoch

    @pytest.mark.looptime
    async def test_errors_sum_their_time_and_not_the_completed_ones(self) -> None:
        """Failed, raised-on and expired requests add to error_seconds, not completed_seconds."""

        async def fn(items: list[int]) -> list[int | Exception]:
            await asyncio.sleep(1.0)
            if 9 in items:
                raise RuntimeError("the whole batch fails")
            return [ValueError("bad") if i == 2 else i for i in items]

        async with Batcher(fn, max_batch_size=2) as batcher:
            outcomes = await asyncio.gather(
                batcher.submit(1), batcher.submit(2), return_exceptions=True
            )  # one batch, t=0..1: 1 completes, 2 fails on its own
            raised = await asyncio.gather(batcher.submit(9), return_exceptions=True)  # t=1..2
            blocker = asyncio.create_task(batcher.submit(3))  # t=2..3
            await settle()
            late = await asyncio.gather(batcher.submit(4, timeout=0.5), return_exceptions=True)
            await blocker
        assert outcomes[0] == 1
        assert isinstance(outcomes[1], ValueError)
        assert isinstance(raised[0], BatchFailed)
        assert isinstance(late[0], DeadlineExceeded)
        stats = batcher.statistics()
        assert (stats.completed, stats.failed, stats.expired) == (2, 2, 1)
        assert stats.completed_seconds == pytest.approx(1 + 1)
        assert stats.error_seconds == pytest.approx(1 + 1 + 0.5)
        assert stats.batch_execution_seconds == {1: pytest.approx(2.0), 2: pytest.approx(1.0)}


class TestBuckets:
    """Items submitted with a key share batches only with items of the same key."""

    async def test_items_of_different_keys_never_share_a_batch(self, model: RecordingModel) -> None:
        async with Batcher(model, max_batch_size=8) as batcher:
            model.hold()
            first = asyncio.create_task(batcher.submit(0, key="a"))
            await settle()
            rest = [asyncio.create_task(batcher.submit(i, key="ab"[i % 2])) for i in range(1, 9)]
            await settle()
            model.release()
            results = await asyncio.gather(first, *rest)
        assert results == [i * 10 for i in range(9)]
        # The bucket whose next item came first goes first: b's item 1 before a's item 2.
        assert model.batches == [[0], [1, 3, 5, 7], [2, 4, 6, 8]]

    async def test_the_bucket_waiting_longest_goes_first_so_none_starves(
        self, model: RecordingModel
    ) -> None:
        """A busy bucket refilled all the time does not hold back one that waits."""
        async with Batcher(model, max_batch_size=2) as batcher:
            model.hold()
            tasks = [asyncio.create_task(batcher.submit(0, key="busy"))]
            await settle()
            tasks += [asyncio.create_task(batcher.submit(1, key="busy"))]
            tasks += [asyncio.create_task(batcher.submit(2, key="busy"))]
            tasks += [asyncio.create_task(batcher.submit(100, key="quiet"))]
            tasks += [asyncio.create_task(batcher.submit(3, key="busy"))]
            await settle()
            model.release()
            await asyncio.gather(*tasks)
        assert model.batches == [[0], [1, 2], [100], [3]]

    async def test_priority_comes_before_age_across_buckets(self, model: RecordingModel) -> None:
        async with Batcher(model, max_batch_size=4) as batcher:
            model.hold()
            tasks = [asyncio.create_task(batcher.submit(0, key="a"))]
            await settle()
            tasks += [asyncio.create_task(batcher.submit(1, key="a"))]
            tasks += [asyncio.create_task(batcher.submit(2, key="b", priority=5))]
            await settle()
            model.release()
            await asyncio.gather(*tasks)
        assert model.batches == [[0], [2], [1]]

    @pytest.mark.looptime
    async def test_a_full_bucket_runs_while_another_lingers(self, model: RecordingModel) -> None:
        """max_wait is per bucket: one that fills goes at once, the other when its wait ends."""
        loop = asyncio.get_running_loop()
        async with Batcher(model, max_batch_size=2, max_wait=1.0) as batcher:
            start = loop.time()
            lone = asyncio.create_task(batcher.submit(9, key="slow"))
            await asyncio.sleep(0.1)
            pair = [asyncio.create_task(batcher.submit(i, key="fast")) for i in (1, 2)]
            await asyncio.gather(*pair)
            assert model.batches == [[1, 2]]
            assert model.started_at[0] - start == pytest.approx(0.1)
            await lone
        assert model.batches == [[1, 2], [9]]
        assert model.started_at[1] - start == pytest.approx(1.0)

    async def test_cancelled_items_leave_their_bucket(self, model: RecordingModel) -> None:
        async with Batcher(model, max_batch_size=4, max_queue_size=3) as batcher:
            model.hold()
            first = asyncio.create_task(batcher.submit(0, key="a"))
            await settle()
            gone = batcher.submit_nowait(1, key="b")
            kept = batcher.submit_nowait(2, key="b")
            other = batcher.submit_nowait(3, key="c")
            assert batcher.full
            gone.cancel()
            assert not batcher.full  # its place is free at once
            model.release()
            assert (await first, await kept, await other) == (0, 20, 30)
        assert model.batches == [[0], [2], [3]]
        assert batcher.statistics().cancelled == 1

    @pytest.mark.looptime
    async def test_a_bucket_full_of_requests_stops_the_lingering(
        self, model: RecordingModel
    ) -> None:
        """max_requests_per_batch reached: the batch goes at once, not after max_wait."""
        loop = asyncio.get_running_loop()
        async with Batcher(
            model, max_batch_size=8, max_requests_per_batch=2, max_wait=1.0
        ) as batcher:
            start = loop.time()
            first = asyncio.create_task(batcher.submit(1, key="k"))
            await asyncio.sleep(0.1)  # the dispatcher lingers for more
            await asyncio.gather(first, batcher.submit(2, key="k"))
        assert model.batches == [[1, 2]]
        assert model.started_at[0] - start == pytest.approx(0.1)
