"""The adaptive batcher (``target_latency``): its fit, its choices and its trim, on a virtual clock.

The model sleeps ``c + a·n`` for a batch of ``n`` rows on the loop (looptime's virtual clock),
as an accelerator would: the loop is free while it runs. So a batch's latency is exact, and each
decision the controller takes can be worked out by hand and checked.
"""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from coserve import AdaptiveState, Batcher, BatchingOptions, DeadlineExceeded, LatencyTarget
from coserve.batching._adaptive import AdaptiveController, LatencyFit

C = 0.002  # seconds a batch costs
A = 0.0002  # seconds a row adds


class SleepModel:
    """``c + a·n`` seconds per batch of ``n``, on the loop; records every batch."""

    def __init__(self, c: float = C, a: float = A, slow_every: int = 0, slow_by: float = 0.0):
        self.c, self.a = c, a
        self.slow_every, self.slow_by = slow_every, slow_by
        self.sizes: list[int] = []
        self.started: list[float] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        self.started.append(asyncio.get_running_loop().time())
        seconds = self.c + self.a * len(items)
        if self.slow_every and len(self.sizes) % self.slow_every == 0:
            seconds += self.slow_by
        await asyncio.sleep(seconds)
        return [item * 2 for item in items]


async def steady(
    batcher: Batcher[int, int],
    rate: float,
    seconds: float,
    *,
    poisson: bool = False,
    deadline: float | None = None,
    seed: int = 7,
) -> list[asyncio.Future[int]]:
    """Submit one request every 1/rate seconds (or Poisson arrivals) for ``seconds``."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    futures: list[asyncio.Future[int]] = []
    end = loop.time() + seconds
    at = loop.time()
    i = 0
    while at < end:
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        futures.append(batcher.submit_nowait(i, timeout=deadline))
        i += 1
        at += rng.expovariate(rate) if poisson else 1.0 / rate
    return futures


def fitted_cap(target: float, c: float = C, a: float = A, margin: float = 0.9) -> int:
    """``B`` by hand: the largest b with 2·(c + a·b) ≤ m·L (no spread on a virtual clock)."""
    return math.floor((margin * target / 2 - c) / a + 1e-9)


class TestLatencyFit:
    def test_fits_a_line_exactly(self) -> None:
        fit = LatencyFit()
        for rows in (1, 4, 8, 16, 3):
            fit.add(rows, C + A * rows)
        assert fit.intercept == pytest.approx(C)
        assert fit.slope == pytest.approx(A)
        assert fit.spread == pytest.approx(0.0, abs=1e-9)
        assert fit.predict(10) == pytest.approx(C + 10 * A)
        assert fit.only_size is None

    def test_one_size_is_its_mean_and_says_so(self) -> None:
        fit = LatencyFit()
        for seconds in (0.002, 0.004, 0.003):
            fit.add(2, seconds)
        assert fit.only_size == 2
        assert (fit.intercept, fit.slope) == (pytest.approx(0.003), 0.0)
        assert fit.spread == pytest.approx(0.001)

    def test_forgets_batches_beyond_its_window(self) -> None:
        fit = LatencyFit(window=8)
        for rows in range(1, 9):
            fit.add(rows, 1.0 + rows)  # an old regime, far off
        for _ in range(3):  # twice round the window: the sums are rebuilt on the way
            for rows in range(1, 9):
                fit.add(rows, C + A * rows)
        assert fit.batches == 8
        assert fit.intercept == pytest.approx(C, abs=1e-12)
        assert fit.slope == pytest.approx(A, abs=1e-12)

    def test_a_negative_slope_is_noise_and_reads_as_flat(self) -> None:
        fit = LatencyFit()
        fit.add(1, 0.004)
        fit.add(8, 0.002)
        assert fit.slope == 0.0
        assert fit.intercept == pytest.approx(0.003)


class TestController:
    def test_the_control_limit_is_the_smallest_batch_that_keeps_up(self) -> None:
        controller = AdaptiveController(LatencyTarget.parse("p99<20ms"), 64, 0.0)
        for rows in (1, 2, 4, 8):
            controller.fit.add(rows, C + A * rows)
        controller.rate = 2000.0  # rows/s
        controller._rate_at = 0.0
        controller.plan(0.0, 0, 1, slots=1)
        # b >= 1.1·λc/(k - λa) = 1.1·2000·0.002/(1 - 0.4) = 7.33
        assert controller.batch_target == 8
        assert controller.batch_cap == fitted_cap(0.020) == 35
        # with one row queued, waiting pays while Δ < c - n·(a + 1/λ) = 2 - 0.7 ms
        assert controller.linger == pytest.approx(C - (A + 1 / 2000))
        controller.plan(0.0, 0, 3, slots=1)  # with three, waiting costs more than it saves
        assert controller.linger == 0.0

    def test_low_load_takes_one_row_and_never_lingers(self) -> None:
        controller = AdaptiveController(LatencyTarget.parse("p99<20ms"), 64, 0.0)
        for rows in (1, 2, 4):
            controller.fit.add(rows, C + A * rows)
        controller.rate = 50.0
        controller._rate_at = 0.0
        controller.plan(0.0, 0, 0, slots=1)
        assert (controller.batch_target, controller.linger) == (1, 0.0)

    def test_past_capacity_it_takes_the_largest_batches(self) -> None:
        controller = AdaptiveController(LatencyTarget.parse("p99<20ms"), 64, 0.0)
        for rows in (1, 8):
            controller.fit.add(rows, C + A * rows)
        controller.rate = 6000.0  # λa = 1.2 ≥ k: nothing keeps up
        controller._rate_at = 0.0
        controller.plan(0.0, 0, 100, slots=1)
        # keeping up comes first: the largest batches clear the queue fastest
        assert controller.batch_target == controller.batch_cap == 64

    def test_max_wait_bounds_the_linger(self) -> None:
        controller = AdaptiveController(LatencyTarget.parse("p99<20ms"), 64, 0.0005)
        for rows in (1, 8):
            controller.fit.add(rows, C + A * rows)
        controller.rate = 2000.0
        controller._rate_at = 0.0
        controller.plan(0.0, 0, 1, slots=1)
        assert controller.batch_target == 8
        assert controller.linger == 0.0005

    def test_one_size_seen_explores_by_doubling(self) -> None:
        controller = AdaptiveController(LatencyTarget.parse("p99<20ms"), 64, 0.0)
        controller.fit.add(4, 0.003)
        controller.plan(0.0, 0, 0, slots=1)
        assert controller.batch_cap == 8
        slow = AdaptiveController(LatencyTarget.parse("p99<20ms"), 64, 0.0)
        slow.fit.add(4, 0.015)  # one batch of 4 already breaks 2·ŝ ≤ m·L: halve
        slow.plan(0.0, 0, 0, slots=1)
        assert slow.batch_cap == 2


def learned(rate: float = 2000.0, max_batch_size: int = 64) -> AdaptiveController:
    """A controller that has fitted c and a exactly and sees ``rate`` rows/s."""
    controller = AdaptiveController(LatencyTarget.parse("p99<20ms"), max_batch_size, 0.0)
    for rows in (1, 2, 4, 8):
        controller.fit.add(rows, C + A * rows)
    controller.rate = controller._rate_raw = rate
    controller._rate_weight = 1.0
    controller._rate_at = 0.0
    return controller


def run_window(
    controller: AdaptiveController,
    latency: float,
    *,
    queued: int = 0,
    rows: int = 8,
    start: float = 0.0,
) -> float:
    """Just over two seconds of 260 batches of ``rows``, answering requests in ``latency``.

    Each batch takes c + a·rows of its 8 ms. Arrivals keep to the controller's rate, so its
    estimate stays where the test set it.
    """
    rate = controller.rate
    step = 2.0 / 250
    now = start
    for _ in range(260):
        controller.plan(now, round(rate * now), queued, slots=1)
        controller.record([latency] * rows)
        now += step
        controller.batch_finished(rows, C + A * rows, now, slots=1)
    return now


class TestTrim:
    def test_a_window_over_the_target_shrinks_the_cap_and_margin(self) -> None:
        controller = learned()
        cap = controller._cap(0.9 * 0.020)
        run_window(controller, latency=0.019)  # over m·L = 18 ms
        assert controller.measured == pytest.approx(0.019)
        assert controller.trims_down == 1
        assert controller.margin == pytest.approx(0.9 * 0.95)
        assert controller._limit == math.floor(0.9 * cap)

    def test_room_to_spare_with_batches_at_the_cap_grows_them_back(self) -> None:
        controller = learned()
        end = run_window(controller, latency=0.019)
        shrunk = controller._limit
        for _ in range(2):  # the first window still holds some of the slow requests
            end = run_window(controller, latency=0.005, queued=100, start=end)  # pressed
        assert controller.trims_up >= 1
        assert controller._limit == shrunk + controller.trims_up
        assert controller.margin == pytest.approx(0.9)

    def test_between_the_bounds_nothing_changes(self) -> None:
        controller = learned()
        end = run_window(controller, latency=0.015)  # 0.7·18 = 12.6 < 15 < 18: the dead band
        run_window(controller, latency=0.005, start=end)  # low, but no batch was held back
        assert (controller.trims_down, controller.trims_up) == (0, 0)
        assert controller.margin == 0.9
        assert controller._limit == 64

    def test_at_low_utilisation_it_does_not_trim(self) -> None:
        controller = learned()
        run_window(controller, latency=0.019, rows=1)  # 2.2 ms in 8: 27% busy
        assert controller.trims_down == 0
        assert controller.measured is None

    def test_under_overload_a_late_window_does_not_shrink_the_cap(self) -> None:
        """Past capacity a smaller batch would only lengthen the queue."""
        controller = learned(rate=6000.0)  # λa = 1.2: nothing keeps up
        run_window(controller, latency=0.050)
        assert controller.trims_down == 0
        assert controller.measured == pytest.approx(0.050)

    def test_a_trim_needs_two_seconds_and_200_batches(self) -> None:
        controller = learned()
        now = 0.0
        for _ in range(150):  # 150 batches over 3 s: enough time, too few batches
            controller.plan(now, 0, 0, slots=1)
            controller.record([0.019])
            now += 0.02
            controller.batch_finished(8, 0.018, now, slots=1)
        assert controller.measured is None


class TestAdaptiveBatcher:
    @pytest.mark.looptime
    async def test_at_low_load_each_request_runs_at_once(self) -> None:
        """At low load adaptive is max_wait=0: no request waits for anything."""
        model = SleepModel()
        loop = asyncio.get_running_loop()
        async with Batcher(model, target_latency="p99<20ms") as batcher:
            sent = []
            for i in range(50):
                sent.append(loop.time())
                assert await batcher.submit(i) == 2 * i
                await asyncio.sleep(0.05)  # 20 requests/s: 4% of one slot
            stats = batcher.statistics()
        assert model.started == sent  # started the instant it was submitted
        assert set(model.sizes) == {1}
        assert stats.close_reasons["slot_free"] == 50
        assert stats.queue_time.max == 0.0
        assert stats.adaptive is not None
        assert stats.adaptive.batch_target == 1
        assert stats.adaptive.linger == 0.0

    @pytest.mark.looptime
    async def test_it_learns_the_model_and_the_cap_that_fits_the_target(self) -> None:
        """It fits c and a exactly, and caps batches where 2·ŝ(B) ≤ m·L."""
        model = SleepModel()
        async with Batcher(model, max_batch_size=64, target_latency="p99<10ms") as batcher:
            for size in (1, 2, 3, 4):  # a few batches of a few sizes
                await asyncio.gather(*(batcher.submit(i) for i in range(size)))
            futures = await steady(batcher, 1000, 2.0)
            await asyncio.gather(*futures)
            state = batcher.statistics().adaptive
        assert state is not None
        assert state.intercept == pytest.approx(C)
        assert state.slope == pytest.approx(A)
        assert state.batch_cap == fitted_cap(0.010) == 12  # (4.5 ms - 2 ms) / 0.2 ms

    @pytest.mark.looptime
    async def test_a_backlog_is_cleared_in_the_largest_batches(self) -> None:
        """Past the cap, keeping up comes first: a flood runs in batches of max_batch_size."""
        model = SleepModel()
        async with Batcher(model, max_batch_size=64, target_latency="p99<10ms") as batcher:
            for size in (1, 2, 3, 4):
                await asyncio.gather(*(batcher.submit(i) for i in range(size)))
            learned = len(model.sizes)
            results = await asyncio.gather(*(batcher.submit(i) for i in range(300)))
        assert results == [2 * i for i in range(300)]
        assert model.sizes[learned:] == [64, 64, 64, 64, 44]

    @pytest.mark.looptime
    async def test_at_a_steady_rate_on_one_slot_it_keeps_up_without_waiting(self) -> None:
        """2000 rows/s on c=2 ms, a=0.2 ms: b* = ⌈1.1·λc/(1-λa)⌉ = 8, yet it hardly lingers.

        On one slot the batches a free slot finds (λc/(1-λa) = 6.7 rows) keep up, and waiting
        for more would cost the queued rows more than it saves the next ones.
        """
        model = SleepModel()
        async with Batcher(model, max_batch_size=64, target_latency="p99<20ms") as batcher:
            futures = await steady(batcher, 2000, 6.0)
            results = await asyncio.gather(*futures)
            stats = batcher.statistics()
        assert results == [2 * i for i in range(len(futures))]
        state = stats.adaptive
        assert state is not None
        assert state.arrival_rate == pytest.approx(2000, rel=0.05)
        assert state.batch_target == 8
        late = model.sizes[len(model.sizes) // 2 :]  # the rate estimate has settled
        assert sum(late) / len(late) == pytest.approx(0.002 * 2000 / (1 - 0.4), abs=0.5)
        assert stats.close_reasons["max_wait"] <= stats.batches // 100
        # each request within the target: at most the batch ahead of it, then its own
        assert stats.queue_time.max + stats.execution_time.max < 0.020

    @pytest.mark.looptime
    async def test_with_two_slots_and_a_large_fixed_cost_lingering_pays(self) -> None:
        """c=20 ms on two slots at 1000 rows/s: waiting where it pays lowers the mean latency.

        Below max_wait=0's, on the same arrivals.
        """
        means = {}
        for target in (None, "p99<100ms"):
            model = SleepModel(c=0.020, a=0.0001)
            async with Batcher(model, max_concurrent_batches=2, target_latency=target) as batcher:
                futures = await steady(batcher, 1000, 4.0)
                await asyncio.gather(*futures)
                stats = batcher.statistics()
            means[target] = stats.completed_seconds / stats.completed
            if target is not None:
                assert stats.close_reasons["max_wait"] + stats.close_reasons["target"] > 0
        assert means["p99<100ms"] < 0.9 * means[None]

    @pytest.mark.looptime
    async def test_requests_that_cannot_meet_their_deadline_fail_early(self) -> None:
        """A request with less time left than its batch takes fails at once, unrun."""
        model = SleepModel()
        async with Batcher(model, target_latency="p99<20ms") as batcher:
            for size in (1, 4) * 8:  # learn c and a: 16 batches before it fails any early
                await asyncio.gather(*(batcher.submit(i) for i in range(size)))
            ran = len(model.sizes)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(DeadlineExceeded, match="could not meet its deadline"):
                await batcher.submit(1, timeout=0.001)  # a batch takes 2.2 ms
            assert loop.time() == start  # failed at once, not at its deadline
            assert len(model.sizes) == ran  # and never ran
            assert await batcher.submit(2, timeout=0.010) == 4  # one with time enough runs
            stats = batcher.statistics()
        assert stats.adaptive is not None
        assert stats.adaptive.failed_early == 1
        assert stats.expired == 1
        assert stats.submitted == stats.completed + stats.expired

    @pytest.mark.looptime
    async def test_a_steady_load_within_the_target_is_the_dead_band(self) -> None:
        """Well inside the target the trim changes nothing: no oscillation."""
        model = SleepModel()
        async with Batcher(model, max_batch_size=64, target_latency="p99<20ms") as batcher:
            futures = await steady(batcher, 1500, 10.0, poisson=True)
            await asyncio.gather(*futures)
            state = batcher.statistics().adaptive
        assert state is not None
        assert state.measured is not None
        assert state.measured < 0.9 * 0.020
        assert (state.trims_down, state.trims_up) == (0, 0)
        assert state.margin == 0.9

    @pytest.mark.looptime
    async def test_target_latency_is_a_live_option(self) -> None:
        """configure() turns the adaptive mode on and off, and options() shows it."""
        model = SleepModel()
        async with Batcher(model, max_batch_size=16) as batcher:
            assert batcher.options().target_latency is None
            assert batcher.statistics().adaptive is None
            options = batcher.configure(target_latency="p99<10ms")
            assert options == BatchingOptions(16, 0.0, 1, 1024, None, None, LatencyTarget(99, 0.01))
            adapting = await steady(batcher, 2000, 1.0)
            state = batcher.statistics().adaptive
            assert isinstance(state, AdaptiveState)
            assert state.target == "p99<10ms"
            assert state.batches_fitted > 0
            batcher.configure(target_latency=None)
            static = await steady(batcher, 2000, 0.5)
            assert batcher.statistics().adaptive is None
            first = await asyncio.gather(*adapting)
            second = await asyncio.gather(*static)
        assert first == [2 * i for i in range(len(adapting))]
        assert second == [2 * i for i in range(len(static))]

    @pytest.mark.looptime
    async def test_a_fit_that_over_predicts_never_fails_everything(self) -> None:
        """One slow first batch must not make every request with a deadline hopeless."""
        model = SleepModel()
        model.c = 0.5  # a warm-up: the first batch takes half a second
        async with Batcher(model, target_latency="p99<20ms") as batcher:
            assert await batcher.submit(1) == 2
            model.c = C
            results = [await batcher.submit(i, timeout=0.05) for i in range(20)]
            stats = batcher.statistics()
        assert results == [2 * i for i in range(20)]  # each ran, and the fit learned
        assert stats.adaptive is not None
        assert stats.adaptive.failed_early == 0

    @pytest.mark.looptime
    async def test_a_stale_fit_lets_a_batch_run_to_refresh_it(self) -> None:
        """With no batch finished for a second, nothing is failed early on the old fit."""
        model = SleepModel(c=0.2, a=0.0)
        async with Batcher(model, target_latency="p99<1s") as batcher:
            for i in range(16):
                await batcher.submit(i)
            model.c = C  # the model got fast; the fit still says 200 ms
            await asyncio.sleep(2.0)
            assert await batcher.submit(7, timeout=0.1) == 14
            stats = batcher.statistics()
        assert stats.adaptive is not None
        assert stats.adaptive.failed_early == 0

    @pytest.mark.looptime
    async def test_a_controller_that_fails_turns_adaptive_off_not_the_batcher(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bug in the controller is logged; the batcher carries on with its options."""
        model = SleepModel()
        async with Batcher(model, target_latency="p99<20ms") as batcher:
            assert await batcher.submit(1) == 2

            def broken(*args: object) -> None:
                raise ZeroDivisionError("a controller bug")

            monkeypatch.setattr(AdaptiveController, "plan", broken)
            assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [
                0, 2, 4, 6, 8
            ]  # fmt: skip
            assert batcher.statistics().adaptive is None
            assert batcher.options().target_latency is None

    async def test_a_target_must_have_a_positive_bound(self) -> None:
        with pytest.raises(ValueError, match="bound must be > 0"):
            LatencyTarget(99, 0.0)
        with pytest.raises(ValueError, match="percentile"):
            LatencyTarget(120, 0.01)

    async def test_a_bad_target_is_refused(self) -> None:
        with pytest.raises(ValueError, match="not a latency target"):
            Batcher(SleepModel(), target_latency="fast please")
        async with Batcher(SleepModel()) as batcher:
            with pytest.raises(ValueError, match="not a latency target"):
                batcher.configure(target_latency="p99 under 20")
            with pytest.raises(TypeError, match="target_latency"):
                batcher.configure(target_latency=20)  # type: ignore[arg-type]
            assert batcher.options().target_latency is None
