"""Adaptive batching to a latency target: how many rows to take, and how long to linger.

A batcher with a ``target_latency`` (``p99<20ms``) asks an :class:`AdaptiveController` at each
free slot. The rule is a control limit with a model of the accelerator, and a slow trim on
the measured latency (``research/adaptive-and-bench.md`` §5):

- **Model.** Least squares over the last 256 batches gives a batch's latency as
  ``s(b) = c + a·b`` for ``b`` rows, with the residuals' spread ``sd``;
  ``ŝ(b) = s(b) + 3sd`` is a batch's latency with room for its noise.
- **Arrival rate.** ``λ``, rows per second, an exponentially weighted mean over about 1 s.
- **Cap.** ``B``, the largest batch with ``2·ŝ(B) ≤ m·L``: a request may wait for the batch
  running when it came, then run in its own, so two batches must fit in the target ``L``
  (less a margin ``m``, 0.9 to start).
- **Control limit.** ``b*``, the smallest batch that keeps up with the arrivals: ``k`` slots
  each serve ``b`` rows per ``s(b)``, so ``b ≥ λc / (k - λa)``; 10% more for headroom, within
  ``[1, B]``. When ``b* > B`` the target cannot hold at this rate, and keeping up comes first:
  the cap rises to ``b*`` (to ``max_batch_size`` when nothing keeps up), or the queue and
  everyone's latency would grow without bound. With a free slot the batcher runs what is queued
  (at most ``B`` rows) once ``b*`` rows are queued; with fewer, it lingers only while waiting
  pays: ``n`` rows run now hold the slot for ``c + a·n`` and the rows arriving meanwhile wait
  that out, while waiting ``Δ`` delays the ``n``; summed over both, waiting wins while
  ``Δ < c - n·(a + 1/λ)`` (one step of look-ahead). It never lingers past
  ``age + ŝ(b*) = m·L/2``, nor so long that the oldest request's deadline comes within
  ``ŝ(b*)``. On one slot the batches a free slot finds already keep up, so waiting rarely pays;
  with several slots and a large ``c`` it does. At low load ``b* = 1``: every request runs at
  once, exactly as with ``max_wait=0``.
- **Early failure.** A request whose deadline falls before its batch would end
  (``now + c + a·rows``, once 16 batches are fitted and one finished in the last second) fails
  at once with ``DeadlineExceeded`` instead of running late.
- **Trim.** Every 2 s (and 200 batches at least), the statistic the target names is measured
  over the requests answered since the last trim. Above ``m·L`` while the load was one the
  batcher keeps up with: ``B`` shrinks by 10% and ``m`` by 5% (the model under-predicts: noise,
  or time it cannot see; under overload a smaller batch would only make it worse). Below
  ``0.7·m·L`` with batches held at the cap or a backlog: ``B`` grows by a row and ``m`` relaxes
  toward 0.9. In between, a dead band: nothing changes, so it never oscillates. Below 30%
  utilisation it does not trim at all (too little to learn from).

The controller only computes; the batcher owns the clock, the queue and the requests.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from coserve.batching._target import LatencyTarget

__all__ = ["AdaptiveController", "AdaptiveState", "LatencyFit"]

_FIT_WINDOW = 256
_RATE_TIME_CONSTANT = 1.0  # seconds: the arrival rate's memory
_SPREAD_SIGMAS = 3.0
_HEADROOM = 1.1
_START_MARGIN = 0.9
_MIN_MARGIN = 0.5
_TRIM_EVERY = 2.0  # seconds
_TRIM_MIN_BATCHES = 200
_TRIM_LOW = 0.7  # below 0.7·m·L the target has room to spare
_FREEZE_UTILISATION = 0.3
_SAMPLES_KEPT = 1 << 17  # latencies kept per trim window (its first ones, if it has more)
_EARLY_MIN_BATCHES = 16  # batches fitted before a request is failed early on the fit's word
_EARLY_FRESH = 1.0  # seconds: with no batch finished for longer, the fit may be stale
_FLAT = 1e-9  # seconds per row below which the slope reads as flat


class LatencyFit:
    """Least squares of batch latency on batch size over the last ``window`` batches.

    Running sums make each batch O(1); they are summed afresh once per window so that
    subtracting old batches leaves no drift. With one batch size seen there is no slope to
    fit: :attr:`only_size` says which, and the latency is its mean whatever the rows.
    """

    __slots__ = ("_batches", "_since_resum", "_sums", "intercept", "only_size", "slope", "spread")

    def __init__(self, window: int = _FIT_WINDOW) -> None:
        self._batches: deque[tuple[int, float]] = deque(maxlen=window)
        self._sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # Σb, Σt, Σb², Σbt, Σt²
        self._since_resum = 0
        self.intercept = 0.0
        """``c``: seconds a batch costs whatever its size."""
        self.slope = 0.0
        """``a``: seconds each row adds."""
        self.spread = 0.0
        """``sd``: the standard deviation of the batches' latency around the fit."""
        self.only_size: int | None = None
        """The one batch size the fit has seen, while it has seen only one (no slope yet)."""

    @property
    def batches(self) -> int:
        """How many batches the fit is over."""
        return len(self._batches)

    def add(self, rows: int, seconds: float) -> None:
        """Take one finished batch into the fit."""
        batches = self._batches
        window = batches.maxlen or _FIT_WINDOW
        if len(batches) == window:
            old_rows, old_seconds = batches[0]
            self._accumulate(old_rows, old_seconds, -1.0)
        batches.append((rows, seconds))
        self._accumulate(rows, seconds, 1.0)
        self._since_resum += 1
        if self._since_resum >= window:
            self._since_resum = 0
            self._sums[:] = [0.0] * 5
            for b, t in batches:
                self._accumulate(b, t, 1.0)
        self._solve()

    def predict(self, rows: int) -> float:
        """``ŝ(rows)``: a batch's latency with three spreads of margin (0.0 before any batch)."""
        if not self._batches:
            return 0.0
        return self.intercept + self.slope * rows + _SPREAD_SIGMAS * self.spread

    def _accumulate(self, rows: int, seconds: float, sign: float) -> None:
        sums = self._sums
        sums[0] += sign * rows
        sums[1] += sign * seconds
        sums[2] += sign * rows * rows
        sums[3] += sign * rows * seconds
        sums[4] += sign * seconds * seconds

    def _solve(self) -> None:
        n = len(self._batches)
        sb, st, sbb, sbt, stt = self._sums
        mean_b, mean_t = sb / n, st / n
        var_b = sbb / n - mean_b * mean_b
        if var_b > 1e-9 * max(1.0, mean_b * mean_b):
            self.only_size = None
            slope = (sbt / n - mean_b * mean_t) / var_b
            intercept = mean_t - slope * mean_b
            if slope < 0:  # larger batches measured faster: noise; read it as flat
                slope, intercept = 0.0, mean_t
            elif intercept < 0:  # a line through the origin instead
                slope, intercept = sbt / sbb, 0.0
        else:
            self.only_size = round(mean_b)
            slope, intercept = 0.0, mean_t
        # Σ(t - c - a·b)², expanded over the sums.
        sse = (
            stt
            - 2 * intercept * st
            - 2 * slope * sbt
            + n * intercept * intercept
            + 2 * intercept * slope * sb
            + slope * slope * sbb
        )
        self.intercept = intercept
        self.slope = slope
        fitted = 1 if self.only_size is not None else 2  # parameters: the mean, or c and a
        self.spread = math.sqrt(max(sse, 0.0) / (n - fitted)) if n > fitted else 0.0


@dataclass(frozen=True, slots=True)
class AdaptiveState:
    """What the adaptive batcher knows and chose, as :class:`BatcherStatistics` reports it.

    Attributes:
        target: The latency target, as written (``p99<20ms``).
        margin: ``m``: the share of the target the batcher plans for (0.9, lower after trims).
        intercept: ``c``, seconds a batch costs whatever its size (fitted).
        slope: ``a``, seconds each row adds (fitted).
        spread: ``sd``, the standard deviation of batch latency around the fit.
        batches_fitted: How many recent batches the fit is over.
        arrival_rate: ``λ``, rows per second arriving (estimated).
        batch_target: ``b*``, the rows queued that start a batch at once.
        batch_cap: ``B``, the most rows a batch takes now.
        linger: How long the oldest request may wait for ``b*`` rows, in seconds.
        failed_early: Requests failed at once because their deadline fell before their batch
            would end (also counted in ``expired``).
        measured: The target's statistic over the last trim window, in seconds (None before).
        trims_down: Times the trim shrank the cap and margin.
        trims_up: Times the trim grew them back.
    """

    target: str
    margin: float
    intercept: float
    slope: float
    spread: float
    batches_fitted: int
    arrival_rate: float
    batch_target: int
    batch_cap: int
    linger: float
    failed_early: int
    measured: float | None
    trims_down: int
    trims_up: int


class AdaptiveController:
    """Decides, for one batcher, how many rows a batch takes and how long it lingers.

    The batcher calls :meth:`plan` when a slot is free and something is queued,
    :meth:`batch_finished` when a batch ends, and :meth:`record` with the latencies of the
    requests it answered; it fails early the requests whose deadline falls before
    :meth:`hopeless_before`. Times are the batcher's loop clock, in seconds.

    Args:
        target: The latency target.
        max_batch_size: The most rows a batch may take (the batcher's option).
        max_wait: The longest a request may linger for a fuller batch; 0: as long as the
            target allows.
    """

    def __init__(self, target: LatencyTarget, max_batch_size: int, max_wait: float) -> None:
        self.target = target
        self.fit = LatencyFit()
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.margin = _START_MARGIN
        self._limit = max_batch_size  # the trim's bound on the cap
        self.rate = 0.0
        self._rate_raw = 0.0  # the weighted mean before its start-up correction
        self._rate_weight = 0.0  # the weight its samples hold so far: 1 - exp(-T/tau)
        self._rate_at: float | None = None
        self._rate_rows = 0
        self.batch_target = 1
        self.batch_cap = max_batch_size
        self.linger = 0.0
        self.slack = 0.0
        """The time a batch of ``batch_target`` takes (``ŝ``): lingering stops when the oldest
        request has only this long left before its deadline."""
        self.failed_early = 0
        self.latencies: list[float] = []
        """Answered requests' latencies (submit to answer) since the last trim."""
        self.measured: float | None = None
        self.trims_down = 0
        self.trims_up = 0
        self._last_batch_at: float | None = None
        self._window_start: float | None = None
        self._window_batches = 0
        self._window_busy = 0.0
        self._window_pressed = False  # a batch held at the cap, or more queued than it took
        self._window_overloaded = False  # arrivals beyond what the cap keeps up with

    def reset(self, target: LatencyTarget, max_batch_size: int, max_wait: float) -> None:
        """Take new options (``Batcher.configure``).

        The fit and the rate stay; the trim's bound on the cap starts again from
        ``max_batch_size``.
        """
        self.target = target
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self._limit = max_batch_size

    def hopeless_before(self, now: float, rows: int) -> float:
        """The deadline before which a request in a batch of ``rows`` starting now is hopeless.

        The fit's own estimate ``c + a·rows``, without the margin for noise: a request is
        failed early only when even a typical batch would end past its deadline. And only on a
        fit of 16 batches or more, one of them finished in the last second: a request failed
        early never runs, so a fit that over-predicts (one slow warm-up batch, an outlier)
        would otherwise fail every request with a deadline, for good. Returns ``-inf`` when
        no request should be failed early.
        """
        fit = self.fit
        last = self._last_batch_at
        if fit.batches < _EARLY_MIN_BATCHES or last is None or now - last > _EARLY_FRESH:
            return -math.inf
        return now + fit.intercept + fit.slope * rows

    def plan(self, now: float, arrived_rows: int, queued_rows: int, slots: int) -> None:
        """Decide :attr:`batch_target`, :attr:`batch_cap` and :attr:`linger` for the next batch.

        Args:
            now: The loop's time.
            arrived_rows: Rows submitted since the batcher started (a running count).
            queued_rows: Rows waiting now (of every bucket).
            slots: Execution slots (``max_concurrent_batches``).
        """
        self._update_rate(now, arrived_rows)
        fit = self.fit
        budget = self.margin * self.target.limit
        cap = self._cap(budget)
        # Rows queued beyond one batch are a backlog to clear within the target, on top of the
        # arrivals: so after a burst the batches grow until it is gone.
        backlog = max(0, queued_rows - cap)
        rate = self.rate + backlog / budget
        c, a = fit.intercept, fit.slope
        if not fit.batches:
            needed = 1.0
        elif rate * a >= slots:
            needed = math.inf
        else:
            needed = _HEADROOM * rate * c / (slots - rate * a)
        if needed > cap:
            # The target cannot hold at this rate: batches that keep up come first, or the
            # queue (and everyone's latency) grows without bound. Past what any batch keeps up
            # with, the largest batches drain the backlog fastest.
            self._window_overloaded = True
            cap = self.max_batch_size if needed > self.max_batch_size else math.ceil(needed)
            target = cap
        else:
            target = max(1, math.ceil(needed))
        self.batch_cap = cap
        self.batch_target = target
        self.slack = fit.predict(target)  # ŝ(b*)
        linger = 0.0
        if target > max(1, queued_rows) and rate > 0:
            # Waiting pays only while the rows it waits for would save more than it costs: a
            # batch of n now holds the slot for c + a·n, and the rows arriving meanwhile wait
            # that out; waiting Δ instead delays the n. Summed over both, lingering wins while
            # Δ < c - n·(a + 1/λ) (one step of look-ahead); never past m·L/2 - ŝ(b*) either.
            pays = c - queued_rows * (a + 1.0 / rate)
            linger = max(0.0, min(budget / 2 - self.slack, pays))
        if self.max_wait:
            linger = min(linger, self.max_wait)
        self.linger = linger
        if queued_rows > cap:
            self._window_pressed = True

    def batch_finished(self, rows: int, seconds: float, now: float, slots: int) -> None:
        """Take a finished batch into the fit; trim when a window is complete."""
        self.fit.add(rows, seconds)
        self._last_batch_at = now
        if rows >= self.batch_cap:
            self._window_pressed = True
        if self._window_start is None:
            self._window_start = now - seconds
        self._window_batches += 1
        self._window_busy += seconds
        elapsed = now - self._window_start
        if elapsed >= _TRIM_EVERY and self._window_batches >= _TRIM_MIN_BATCHES:
            self._trim(elapsed, slots)
            self._window_start = now
            self._window_batches = 0
            self._window_busy = 0.0
            self._window_pressed = False
            self._window_overloaded = False
            self.latencies = []

    def record(self, latencies: list[float]) -> None:
        """Add answered requests' latencies to the trim window (bounded)."""
        room = _SAMPLES_KEPT - len(self.latencies)
        if room > 0:
            self.latencies.extend(latencies[:room])

    def state(self) -> AdaptiveState:
        """A snapshot for ``statistics()``."""
        fit = self.fit
        return AdaptiveState(
            target=str(self.target),
            margin=self.margin,
            intercept=fit.intercept,
            slope=fit.slope,
            spread=fit.spread,
            batches_fitted=fit.batches,
            arrival_rate=self.rate,
            batch_target=self.batch_target,
            batch_cap=self.batch_cap,
            linger=self.linger,
            failed_early=self.failed_early,
            measured=self.measured,
            trims_down=self.trims_down,
            trims_up=self.trims_up,
        )

    # -- the parts ---------------------------------------------------------------------------

    def _cap(self, budget: float) -> int:
        """``B``: the largest batch whose worst case, two batches, fits in ``budget``."""
        fit = self.fit
        limit = min(self._limit, self.max_batch_size)
        if not fit.batches:
            return limit
        room = budget / 2 - fit.intercept - _SPREAD_SIGMAS * fit.spread
        only = fit.only_size
        if only is not None:
            # No slope yet: explore by doubling while the one size fits, halve if it does not.
            return max(1, min(limit, 2 * only if room >= 0 else only // 2))
        if fit.slope <= _FLAT:
            return limit if room >= 0 else 1
        rows = room / fit.slope + 1e-6  # 1e-6: float dust
        return max(1, min(limit, math.floor(rows))) if math.isfinite(rows) else limit

    def _update_rate(self, now: float, arrived_rows: int) -> None:
        if self._rate_at is None:
            self._rate_at, self._rate_rows = now, arrived_rows
            return
        elapsed = now - self._rate_at
        if elapsed < 1e-3:  # too short to tell a rate from a burst; keep counting
            return
        sample = (arrived_rows - self._rate_rows) / elapsed
        keep = math.exp(-elapsed / _RATE_TIME_CONSTANT)
        self._rate_raw = keep * self._rate_raw + (1.0 - keep) * sample
        # Divided by the weight its samples hold, the mean is unbiased from the first second
        # (a mean that starts at 0 would read a sudden load as light for a second).
        self._rate_weight = keep * self._rate_weight + (1.0 - keep)
        self.rate = self._rate_raw / self._rate_weight
        self._rate_at, self._rate_rows = now, arrived_rows

    def _trim(self, elapsed: float, slots: int) -> None:
        utilisation = self._window_busy / (elapsed * slots)
        if utilisation < _FREEZE_UTILISATION or not self.latencies:
            return
        samples = np.fromiter(self.latencies, float)
        percentile = self.target.percentile
        measured = (
            float(samples.mean())
            if percentile is None
            else float(np.percentile(samples, percentile))
        )
        self.measured = measured
        planned = self.margin * self.target.limit
        if measured > planned and not self._window_overloaded:
            self._limit = max(1, math.floor(0.9 * self.batch_cap))
            self.margin = max(_MIN_MARGIN, 0.95 * self.margin)
            self.trims_down += 1
        elif (
            measured < _TRIM_LOW * planned
            and self._window_pressed
            and (self._limit < self.max_batch_size or self.margin < _START_MARGIN)
        ):
            self._limit = min(self.max_batch_size, self._limit + 1)
            self.margin = min(_START_MARGIN, self.margin / 0.95)
            self.trims_up += 1
