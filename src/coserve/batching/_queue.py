"""The batcher's request queue: buckets, priority lanes, FIFO within a lane, O(1) removal.

Removal is lazy: a cancelled or expired request leaves the counts at once but stays in its lane
until it reaches the head, where ``take`` drops it. Dead entries are compacted away when they
outnumber the live ones, so the memory held stays bounded by the queue's bound.

Requests that may not share a batch (rows padded to different lengths, say) go to different
*buckets*, by the key they were submitted with: :class:`BucketedQueue` holds a
:class:`RequestQueue` per key and says which bucket the next batch comes from.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections import deque
from collections.abc import Callable, Hashable
from enum import IntEnum
from typing import Any, Generic, TypeVar

__all__ = ["BucketedQueue", "QueuedRequest", "RequestFuture", "RequestQueue", "RequestState"]

T = TypeVar("T")

_COMPACT_MIN_DEAD = 64
_EARLY = 1e-6  # seconds a lingering bucket may be judged ready before its time


class RequestState(IntEnum):
    """Where a request is in its life; it only ever moves forward."""

    QUEUED = 0
    RUNNING = 1
    DONE = 2


class RequestFuture(asyncio.Future[Any]):
    """A request's future that gives up its place in the queue the moment it is cancelled.

    Withdrawing on ``cancel()`` itself, rather than in a done callback a loop pass later, keeps
    the queue's counts exact at every instant, so a full queue never refuses a request because
    of withdrawn ones, and refusing costs the same whatever the queue's size.
    """

    __slots__ = ("on_cancel",)

    def __init__(self, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.on_cancel: Callable[[], None] | None = None
        """Called once, synchronously, when the future is cancelled; None once settled."""

    def cancel(self, msg: Any | None = None) -> bool:
        """Cancel the future and withdraw its request."""
        if not super().cancel(msg):
            return False
        on_cancel = self.on_cancel
        if on_cancel is not None:
            self.on_cancel = None
            on_cancel()
        return True


class QueuedRequest(Generic[T]):
    """One submitted item, with its caller's future and its place in the queue."""

    __slots__ = (
        "deadline",
        "deadline_timer",
        "enqueued_at",
        "future",
        "item",
        "key",
        "priority",
        "size",
        "state",
        "tag",
    )

    def __init__(
        self,
        item: T,
        future: RequestFuture,
        priority: int,
        size: int,
        enqueued_at: float,
        key: Hashable = None,
    ) -> None:
        self.item = item
        self.future = future
        self.priority = priority
        self.size = size
        self.enqueued_at = enqueued_at
        self.key = key
        self.state = RequestState.QUEUED
        self.deadline = math.inf
        """The loop time of its deadline (infinity: none)."""
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.tag: object | None = None
        """What the batch observer reports the request as (``_observe``); None: unreported."""


class RequestQueue(Generic[T]):
    """Queued requests in priority lanes; higher priority first, first in first out within one."""

    __slots__ = ("_dead", "_descending", "_lanes", "count", "rows")

    def __init__(self) -> None:
        self._lanes: dict[int, deque[QueuedRequest[T]]] = {}
        self._descending: list[int] = []  # lane priorities, highest first
        self._dead = 0
        self.count = 0
        """Live requests queued."""
        self.rows = 0
        """Sum of the live requests' sizes."""

    def push(self, request: QueuedRequest[T]) -> None:
        """Queue a request at the back of its priority's lane."""
        lane = self._lanes.get(request.priority)
        if lane is None:
            lane = self._lanes[request.priority] = deque()
            # bisect on negated priorities keeps the list sorted highest first.
            index = bisect.bisect_left([-p for p in self._descending], -request.priority)
            self._descending.insert(index, request.priority)
        lane.append(request)
        self.count += 1
        self.rows += request.size

    def discard(self, request: QueuedRequest[T]) -> None:
        """Forget a queued request (cancelled or expired) and mark it done."""
        request.state = RequestState.DONE
        self.count -= 1
        self.rows -= request.size
        self._dead += 1
        if self._dead > _COMPACT_MIN_DEAD and self._dead > self.count:
            self._compact()

    def head(self) -> tuple[int, float] | None:
        """The next request ``take`` would start with: its priority and when it was queued."""
        for priority in self._descending:
            lane = self._lanes[priority]
            self._drop_dead_head(lane)
            if lane:
                return priority, lane[0].enqueued_at
        return None

    def oldest(self) -> QueuedRequest[T] | None:
        """The longest-waiting live request, or None if none is."""
        oldest: QueuedRequest[T] | None = None
        for lane in self._lanes.values():
            self._drop_dead_head(lane)
            if lane and (oldest is None or lane[0].enqueued_at < oldest.enqueued_at):
                oldest = lane[0]
        return oldest

    def take(
        self, max_rows: int, max_requests: int | None = None
    ) -> tuple[list[QueuedRequest[T]], int, bool]:
        """Take requests in priority order while their rows fit in ``max_rows``.

        Never skips ahead: when the next request does not fit, taking stops there, so order is
        kept; so it does after ``max_requests`` requests. Returns the requests taken (now
        RUNNING), their rows, and whether the batch is full (of rows or of requests).
        """
        if not self._dead and self.rows == self.count:  # one row each: rows count requests
            return self._take_unit_rows(
                max_rows if max_requests is None else min(max_rows, max_requests)
            )
        batch: list[QueuedRequest[T]] = []
        rows = 0
        for priority in self._descending:
            lane = self._lanes[priority]
            while lane:
                request = lane[0]
                if request.state is not RequestState.QUEUED:
                    lane.popleft()
                    self._dead -= 1
                    continue
                # A request larger than max_rows (queued before the limit was lowered) runs
                # alone rather than never.
                if rows + request.size > max_rows and batch:
                    self._account_taken(batch, rows)
                    return batch, rows, True
                lane.popleft()
                request.state = RequestState.RUNNING
                batch.append(request)
                rows += request.size
                if rows >= max_rows or len(batch) == max_requests:
                    self._account_taken(batch, rows)
                    return batch, rows, True
        self._account_taken(batch, rows)
        return batch, rows, False

    def _take_unit_rows(self, max_rows: int) -> tuple[list[QueuedRequest[T]], int, bool]:
        """``take`` when no lane holds a dead entry and every request is one row: slice lanes."""
        batch: list[QueuedRequest[T]] = []
        for priority in self._descending:
            lane = self._lanes[priority]
            wanted = min(max_rows - len(batch), len(lane))
            if wanted:
                popleft = lane.popleft
                batch += [popleft() for _ in range(wanted)]
                if len(batch) == max_rows:
                    break
        running = RequestState.RUNNING
        for request in batch:
            request.state = running
        taken = len(batch)
        self.count -= taken
        self.rows -= taken
        return batch, taken, taken == max_rows

    def queued(self) -> list[QueuedRequest[T]]:
        """Every live request, in no particular order."""
        return [r for lane in self._lanes.values() for r in lane if r.state is RequestState.QUEUED]

    def drain(self) -> list[QueuedRequest[T]]:
        """Remove and return every live request (used when aborting; the caller settles them)."""
        live = self.queued()
        self._lanes.clear()
        self._descending.clear()
        self._dead = 0
        self.count = 0
        self.rows = 0
        return live

    def _account_taken(self, batch: list[QueuedRequest[T]], rows: int) -> None:
        self.count -= len(batch)
        self.rows -= rows

    def _drop_dead_head(self, lane: deque[QueuedRequest[T]]) -> None:
        while lane and lane[0].state is not RequestState.QUEUED:
            lane.popleft()
            self._dead -= 1

    def _compact(self) -> None:
        for priority, lane in self._lanes.items():
            self._lanes[priority] = deque(r for r in lane if r.state is RequestState.QUEUED)
        self._dead = 0


class BucketedQueue(Generic[T]):
    """Queued requests in buckets by key, each a :class:`RequestQueue`; a batch is one bucket's.

    ``count`` and ``rows`` are over every bucket (the batcher's bound). :meth:`choose` picks the
    bucket the next batch comes from: of the buckets that are *ready* (full, or lingered long
    enough), the one whose next request has the highest priority, then the one waiting longest.
    Oldest first means no bucket starves: a bucket's wait is bounded by the batches of the
    buckets whose requests came before its own. With one key (every submit's is None), it is
    exactly one :class:`RequestQueue`.
    """

    __slots__ = ("_buckets", "count", "rows")

    def __init__(self) -> None:
        self._buckets: dict[Hashable, RequestQueue[T]] = {}
        self.count = 0
        """Live requests queued, in every bucket."""
        self.rows = 0
        """Sum of the live requests' sizes, in every bucket."""

    def push(self, request: QueuedRequest[T]) -> None:
        """Queue a request at the back of its priority's lane in its key's bucket."""
        bucket = self._buckets.get(request.key)
        if bucket is None:
            bucket = self._buckets[request.key] = RequestQueue()
        bucket.push(request)
        self.count += 1
        self.rows += request.size

    def rows_in(self, key: Hashable) -> int:
        """The live rows queued in one bucket."""
        bucket = self._buckets.get(key)
        return 0 if bucket is None else bucket.rows

    def count_in(self, key: Hashable) -> int:
        """The live requests queued in one bucket."""
        bucket = self._buckets.get(key)
        return 0 if bucket is None else bucket.count

    def discard(self, request: QueuedRequest[T]) -> None:
        """Forget a queued request (cancelled or expired) and mark it done."""
        bucket = self._buckets[request.key]
        bucket.discard(request)
        self.count -= 1
        self.rows -= request.size
        if not bucket.count:
            del self._buckets[request.key]  # its dead entries go with it

    def choose(
        self,
        now: float,
        max_rows: int,
        max_requests: int | None,
        max_wait: float,
        slack: float | None = None,
    ) -> tuple[Hashable, bool, float | None]:
        """The bucket to take the next batch from, or when one will be ready.

        A bucket is ready when it is full (``max_rows`` rows or ``max_requests`` requests), or
        its oldest request has waited ``max_wait`` (0: at once), or (with ``slack``) has only
        ``slack`` seconds left before its deadline. Returns ``(key, True, None)``
        for the chosen ready bucket, else ``(None, False, when)``: the earliest time one will
        be ready by waiting alone (a submit may fill one sooner; None: nothing is queued).
        """
        best: tuple[int, float, Hashable] | None = None
        soonest: float | None = None
        for key, bucket in self._buckets.items():
            head = bucket.head()
            if head is None:
                continue
            priority, enqueued_at = head
            full = bucket.rows >= max_rows or (
                max_requests is not None and bucket.count >= max_requests
            )
            if not full and max_wait:
                oldest = bucket.oldest()
                assert oldest is not None
                ready_at = oldest.enqueued_at + max_wait
                if slack is not None:  # lingering must leave the batch time to end in time
                    ready_at = min(ready_at, oldest.deadline - slack)
                # A timer may fire up to a clock tick early (asyncio's clock resolution, a
                # virtual clock's microsecond): within one, it is time, or it would spin.
                if ready_at - now > _EARLY:
                    soonest = ready_at if soonest is None else min(soonest, ready_at)
                    continue
            if best is None or (-priority, enqueued_at) < (-best[0], best[1]):
                best = (priority, enqueued_at, key)
        if best is not None:
            return best[2], True, None
        return None, False, soonest

    def take(
        self, key: Hashable, max_rows: int, max_requests: int | None = None
    ) -> tuple[list[QueuedRequest[T]], int, bool]:
        """``RequestQueue.take`` from one bucket."""
        bucket = self._buckets[key]
        batch, rows, full = bucket.take(max_rows, max_requests)
        self.count -= len(batch)
        self.rows -= rows
        if not bucket.count:
            del self._buckets[key]
        return batch, rows, full

    def queued(self) -> list[QueuedRequest[T]]:
        """Every live request, in no particular order."""
        return [r for bucket in self._buckets.values() for r in bucket.queued()]

    def drain(self) -> list[QueuedRequest[T]]:
        """Remove and return every live request (used when aborting; the caller settles them)."""
        live = [r for bucket in self._buckets.values() for r in bucket.drain()]
        self._buckets.clear()
        self.count = 0
        self.rows = 0
        return live
