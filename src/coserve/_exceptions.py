"""The coserve exception hierarchy.

Every error that coserve raises on purpose derives from :class:`CoserveError`, so one ``except``
clause catches them all; the subclasses let callers react to the category::

    CoserveError
    ├── ChannelError                 misuse or end of a channel
    │   ├── WouldBlock               a *_nowait operation could not complete at once
    │   ├── EndOfChannel             every send side is closed and the buffer is drained
    │   ├── ClosedChannelError       this handle was closed and then used
    │   └── BrokenChannelError       every receive side is closed: nobody will ever receive
    ├── RequestRejected              the service refused the request, or gave up on it
    │   ├── QueueFull                load shedding: the queue is at its bound
    │   └── BatcherClosed            shutting down: no new work, and the grace period ran out
    ├── DeadlineExceeded             a request's deadline passed (also a TimeoutError)
    └── BatchFailed                  the batch function failed the whole batch

Errors raised by user code (a batch function, a model) are never swallowed: they reach the caller
either as themselves (a per-item error) or chained as the ``__cause__`` of :class:`BatchFailed`.
"""

from __future__ import annotations

__all__ = [
    "BatchFailed",
    "BatcherClosed",
    "BrokenChannelError",
    "ChannelError",
    "ClosedChannelError",
    "CoserveError",
    "DeadlineExceeded",
    "EndOfChannel",
    "QueueFull",
    "RequestRejected",
    "WouldBlock",
]


class CoserveError(Exception):
    """The root of every exception coserve raises on purpose."""


class ChannelError(CoserveError):
    """A channel operation could not be carried out."""


class WouldBlock(ChannelError):  # noqa: N818 - the Trio name, kept on purpose
    """A ``*_nowait`` operation would have had to wait."""


class EndOfChannel(ChannelError):  # noqa: N818 - the Trio name, kept on purpose
    """Every send side of the channel is closed and its buffer is empty."""


class ClosedChannelError(ChannelError):
    """This channel handle was closed and then used."""


class BrokenChannelError(ChannelError):
    """Every receive side of the channel is closed, so a sent value could never be received."""


class RequestRejected(CoserveError):  # noqa: N818 - reads as a sentence: "request rejected"
    """The service refused the request, or abandoned it at shutdown; the caller may retry."""


class QueueFull(RequestRejected):
    """The queue holds its maximum number of requests: the request is shed at once."""


class BatcherClosed(RequestRejected):
    """The batcher is shutting down: no new work, and what the grace period missed fails."""


class DeadlineExceeded(CoserveError, TimeoutError):  # noqa: N818 - the gRPC status name
    """A request's deadline passed before its result was ready."""


class BatchFailed(CoserveError):  # noqa: N818 - reads as an event: "batch failed"
    """The batch function failed the whole batch; the original error is the ``__cause__``."""
