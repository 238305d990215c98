"""What a batcher counts, and the frozen snapshot ``statistics()`` returns."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

import numpy as np

from coserve.batching._adaptive import AdaptiveState

__all__ = ["BatcherStatistics", "CloseReason", "DurationSummary"]

_SAMPLES_KEPT = 4096


class CloseReason(StrEnum):
    """Why the dispatcher closed a batch when it did."""

    FULL = "full"
    """``max_batch_size`` rows were queued (or the next request would not fit)."""
    MAX_WAIT = "max_wait"
    """``max_wait`` passed since the oldest queued request arrived (adaptive mode: the
    oldest request's linger, as long as the target allows, passed)."""
    SLOT_FREE = "slot_free"
    """An execution slot was free, so whatever was queued went at once (``max_wait=0``)."""
    SHUTDOWN = "shutdown"
    """The batcher was closing and flushed its queue without lingering."""
    TARGET = "target"
    """Adaptive mode: the rows the controller chose (``batch_target``, over 1) were queued."""


@dataclass(frozen=True, slots=True)
class DurationSummary:
    """A summary of durations in seconds; percentiles over the most recent samples.

    Attributes:
        count: How many durations were recorded in all.
        mean: The mean over all of them.
        p50: Median of the recent samples.
        p90: 90th percentile of the recent samples.
        p99: 99th percentile of the recent samples.
        max: The largest ever recorded.
    """

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0


class DurationRecorder:
    """Keeps a running count, sum and max, and a window of recent samples for percentiles."""

    __slots__ = ("_max", "_samples", "_sum", "count")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=_SAMPLES_KEPT)
        self._sum = 0.0
        self._max = 0.0
        self.count = 0

    def record(self, seconds: float) -> None:
        """Add one duration."""
        self._samples.append(seconds)
        self._sum += seconds
        self.count += 1
        if seconds > self._max:
            self._max = seconds

    def record_many(self, seconds: list[float]) -> None:
        """Add several durations at once (cheaper than one ``record`` call each)."""
        self._samples.extend(seconds)
        self._sum += sum(seconds)
        self.count += len(seconds)
        longest = max(seconds)
        if longest > self._max:
            self._max = longest

    def summary(self) -> DurationSummary:
        """Summarise what was recorded so far."""
        if not self.count:
            return DurationSummary()
        p50, p90, p99 = np.percentile(np.fromiter(self._samples, float), [50, 90, 99])
        return DurationSummary(
            count=self.count,
            mean=self._sum / self.count,
            p50=float(p50),
            p90=float(p90),
            p99=float(p99),
            max=self._max,
        )


@dataclass(frozen=True, slots=True)
class BatcherStatistics:
    """A snapshot of a batcher's state and counters, as returned by ``statistics()``.

    Every accepted request ends in exactly one of ``completed``, ``failed``, ``expired``,
    ``cancelled`` or ``aborted``; until then it is ``queued`` or ``in_flight``. So
    ``submitted == completed + failed + expired + cancelled + aborted + queued + in_flight``.
    ``rejected`` counts submits refused outright (queue full, or closed); they are not submitted.

    Attributes:
        queued: Requests waiting in the queue.
        queued_rows: Rows (sizes) of the queued requests.
        running_batches: Batches executing now.
        in_flight: Requests in executing batches whose caller still waits.
        submitted: Requests accepted into the queue.
        completed: Requests answered with a result.
        failed: Requests answered with an error from the batch function.
        expired: Requests whose deadline passed (queued ones never ran).
        cancelled: Requests whose caller stopped waiting (queued ones never ran).
        aborted: Requests failed with ``BatcherClosed`` when the grace period ran out.
        rejected: Submits refused at once (``QueueFull`` or ``BatcherClosed``).
        rejected_queue_full: Of those, refused because the queue was full.
        rejected_closed: Of those, refused because the batcher was closing.
        batches: Batches started.
        batch_sizes: How many batches had each size, in rows.
        close_reasons: How many batches closed for each :class:`CloseReason` value.
        queue_time: Time from submit to the start of the request's batch.
        execution_time: Wall time of each batch function call.
        completed_rows: Rows (sizes) of the completed requests.
        completed_seconds: Summed time from submit to answer of the completed requests.
        completed_execution_seconds: Summed execution time of the completed requests' batches,
            each request charged its whole batch's wall time (it waited all of it).
        error_seconds: Summed time from submit to answer of the requests that ended with an
            error: ``failed``, ``expired`` and ``aborted``.
        batch_execution_seconds: Summed wall time of the finished batches of each size, in rows
            (a batch still running is in ``batch_sizes`` but not here yet).
        last_batch_end: When the last batch finished, in seconds since the epoch (0.0 before the
            first).
        adaptive: The adaptive mode's model and choices (None when the batcher has no
            ``target_latency``).
    """

    queued: int
    queued_rows: int
    running_batches: int
    in_flight: int
    submitted: int
    completed: int
    failed: int
    expired: int
    cancelled: int
    aborted: int
    rejected: int
    rejected_queue_full: int
    rejected_closed: int
    batches: int
    batch_sizes: Mapping[int, int] = field(default_factory=dict)
    close_reasons: Mapping[str, int] = field(default_factory=dict)
    queue_time: DurationSummary = DurationSummary()
    execution_time: DurationSummary = DurationSummary()
    completed_rows: int = 0
    completed_seconds: float = 0.0
    completed_execution_seconds: float = 0.0
    error_seconds: float = 0.0
    batch_execution_seconds: Mapping[int, float] = field(default_factory=dict)
    last_batch_end: float = 0.0
    adaptive: AdaptiveState | None = None

    @property
    def mean_batch_size(self) -> float:
        """The mean batch size in rows (0.0 before the first batch)."""
        total = sum(size * n for size, n in self.batch_sizes.items())
        return total / self.batches if self.batches else 0.0


class Counters:
    """The mutable counters behind :class:`BatcherStatistics`; plain attributes, cheap to bump."""

    __slots__ = (
        "aborted",
        "batch_seconds",
        "batch_sizes",
        "batches",
        "cancelled",
        "close_reasons",
        "completed",
        "completed_execution_seconds",
        "completed_rows",
        "completed_seconds",
        "error_seconds",
        "execution_time",
        "expired",
        "failed",
        "last_batch_end",
        "queue_time",
        "rejected_closed",
        "rejected_queue_full",
        "submitted",
        "submitted_rows",
    )

    def __init__(self) -> None:
        self.submitted = 0
        self.submitted_rows = 0  # the adaptive mode's arrival rate counts rows
        self.completed = 0
        self.failed = 0
        self.expired = 0
        self.cancelled = 0
        self.aborted = 0
        self.rejected_queue_full = 0
        self.rejected_closed = 0
        self.batches = 0
        # By size: dicts, not lists of max_batch_size + 1 (a model without a batch dimension
        # allows 65536 rows, and a snapshot would walk them all).
        self.batch_sizes: defaultdict[int, int] = defaultdict(int)
        self.close_reasons = dict.fromkeys(CloseReason, 0)
        self.queue_time = DurationRecorder()
        self.execution_time = DurationRecorder()
        # Sums kept beside the recorders for Triton's statistics extension, which reports
        # cumulative durations per outcome and per batch size, not percentiles.
        self.completed_rows = 0
        self.completed_seconds = 0.0
        self.completed_execution_seconds = 0.0
        self.error_seconds = 0.0
        self.batch_seconds: defaultdict[int, float] = defaultdict(float)
        self.last_batch_end = 0.0

    def snapshot(
        self,
        *,
        queued: int,
        queued_rows: int,
        running_batches: int,
        in_flight: int,
        adaptive: AdaptiveState | None = None,
    ) -> BatcherStatistics:
        """Freeze the counters together with the queue's current state."""
        return BatcherStatistics(
            queued=queued,
            queued_rows=queued_rows,
            running_batches=running_batches,
            in_flight=in_flight,
            submitted=self.submitted,
            completed=self.completed,
            failed=self.failed,
            expired=self.expired,
            cancelled=self.cancelled,
            aborted=self.aborted,
            rejected=self.rejected_queue_full + self.rejected_closed,
            rejected_queue_full=self.rejected_queue_full,
            rejected_closed=self.rejected_closed,
            batches=self.batches,
            batch_sizes=MappingProxyType(dict(sorted(self.batch_sizes.items()))),
            close_reasons=MappingProxyType({r.value: n for r, n in self.close_reasons.items()}),
            queue_time=self.queue_time.summary(),
            execution_time=self.execution_time.summary(),
            completed_rows=self.completed_rows,
            completed_seconds=self.completed_seconds,
            completed_execution_seconds=self.completed_execution_seconds,
            error_seconds=self.error_seconds,
            batch_execution_seconds=MappingProxyType(
                {s: self.batch_seconds.get(s, 0.0) for s in sorted(self.batch_sizes)}
            ),
            last_batch_end=self.last_batch_end,
            adaptive=adaptive,
        )
