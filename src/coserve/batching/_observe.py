"""Watching batches from outside: what a finished batch did, for the requests someone tagged.

A tracer or an access log wants, per request, its queue time, its execution time and the size
of the batch it ran in, and per batch the requests it held. The batcher knows these only in its
hot path, so it reports them through one process-wide hook, off (None) by default: with no
observer, a request costs one global read when queued and a batch one when it finishes.

A request is *tagged* by whatever object :data:`request_tag` holds (a context variable) when it
is submitted; the batcher keeps the tag with the request and hands it back, untouched, in the
:class:`BatchRecord` of the batch it ran in. Untagged requests are not reported.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass

from coserve.batching._statistics import CloseReason

__all__ = ["BatchObserver", "BatchRecord", "observer", "request_tag", "set_batch_observer"]


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One finished batch, as the batch observer sees it.

    Attributes:
        batcher: The batcher's name (a model's is ``name:version``).
        rows: The rows the batch held (its size).
        requests: The requests it held, tagged or not.
        reason: Why the batch closed.
        started: When it started running, in the event loop's clock.
        finished: When it finished, in the same clock.
        wall_offset: Add to the loop's clock to get ``time.time()`` seconds.
        failed: Whether the batch function raised (or the batch was cancelled).
        failed_items: The items answered with an error of their own (all of them when
            ``failed``).
        tags: ``(tag, queued)`` for each tagged request: its tag and when it was queued (the
            loop's clock).
    """

    batcher: str
    rows: int
    requests: int
    reason: CloseReason
    started: float
    finished: float
    wall_offset: float
    failed: bool
    failed_items: int
    tags: list[tuple[object, float]]


BatchObserver = Callable[[BatchRecord], None]
"""Called on the event loop once per finished batch holding at least one tagged request."""

request_tag: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "coserve_request_tag", default=None
)
"""The tag of the requests submitted in this context (None: untagged)."""

observer: BatchObserver | None = None
"""The process's batch observer; read by the batcher, set with :func:`set_batch_observer`."""


def set_batch_observer(new: BatchObserver | None) -> BatchObserver | None:
    """Install the process's batch observer (None: none); returns the one it replaces.

    Requests queued before the call are not tagged, so batches already under way may report
    fewer requests than they hold.
    """
    global observer
    old, observer = observer, new
    return old
