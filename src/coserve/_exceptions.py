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
    │   ├── BatcherClosed            shutting down: no new work, and the grace period ran out
    │   └── Unsupported              the request asks for an API the server does not implement
    ├── DeadlineExceeded             a request's deadline passed (also a TimeoutError)
    ├── BatchFailed                  the batch function failed the whole batch
    ├── RequestTooLarge              a request body is over the server's size limit
    ├── GraphError                   a coroutine graph was wired, changed or run wrongly
    │   ├── PortTypeError            connected ports carry incompatible types (also TypeError)
    │   ├── UnmatchedSignal          a join gave up waiting for a message's partners
    │   ├── GraphStopped             the graph stopped before this message was finished
    │   └── GraphFailed              a node crashed more often than supervision allows
    └── ModelError                   a model could not be found, loaded or called as asked
        ├── InvalidInput             a request does not fit the model's inputs (also ValueError)
        ├── ModelNotFound            no such model or version in the repository (also KeyError)
        ├── ModelLoadError           a model's files or config could not be loaded
        │   └── ConfigError          a config.toml is malformed or names an unknown key
        └── MissingDependency        the backend's optional extra is not installed (ImportError)

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
    "ConfigError",
    "CoserveError",
    "DeadlineExceeded",
    "EndOfChannel",
    "GraphError",
    "GraphFailed",
    "GraphStopped",
    "InvalidInput",
    "MissingDependency",
    "ModelError",
    "ModelLoadError",
    "ModelNotFound",
    "PortTypeError",
    "QueueFull",
    "RequestRejected",
    "RequestTooLarge",
    "SessionConflict",
    "SessionError",
    "SessionNotFound",
    "SessionStoreError",
    "UnmatchedSignal",
    "Unsupported",
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


class Unsupported(RequestRejected):
    """The request asks for an API the server does not implement; the message says what it has."""


class DeadlineExceeded(CoserveError, TimeoutError):  # noqa: N818 - the gRPC status name
    """A request's deadline passed before its result was ready."""


class BatchFailed(CoserveError):  # noqa: N818 - reads as an event: "batch failed"
    """The batch function failed the whole batch; the original error is the ``__cause__``."""

    @classmethod
    def caused_by(cls, message: str, cause: BaseException) -> BatchFailed:
        """A new instance chained to ``cause``: one per caller, so tracebacks never mix."""
        failure = cls(message)
        failure.__cause__ = cause
        return failure


class RequestTooLarge(CoserveError):  # noqa: N818 - reads as a status, like HTTP 413's
    """A request body is over the server's size limit; it was refused before being read."""


class GraphError(CoserveError):
    """A coroutine graph was wired, changed or run in a way it cannot support."""


class PortTypeError(GraphError, TypeError):
    """Two ports were connected whose message types do not fit; the message names both."""


class UnmatchedSignal(GraphError):  # noqa: N818 - reads as the message's fate
    """A join could not pair a message with its partners (they timed out or their input ended)."""


class GraphStopped(GraphError):  # noqa: N818 - reads as the message's fate
    """The graph (or the node holding the message) stopped before the message was finished."""


class GraphFailed(GraphError):  # noqa: N818 - reads as an event: "graph failed"
    """A node crashed more often than the graph's supervision allows; the crash is the cause."""


class ModelError(CoserveError):
    """A model could not be found, loaded or called as asked."""


class InvalidInput(ModelError, ValueError):  # noqa: N818 - the gRPC status name
    """A request does not fit the model: it names the input, what was expected and what came."""


class ModelNotFound(ModelError, KeyError):  # noqa: N818 - reads as a status, like HTTP's
    """No model (or version) of that name is loaded."""

    def __str__(self) -> str:
        # KeyError would repr() the message; show it as written.
        return str(self.args[0]) if self.args else "model not found"


class ModelLoadError(ModelError):
    """A model's files could not be loaded."""


class ConfigError(ModelLoadError):
    """A model's config.toml is malformed, names an unknown key, or holds a bad value."""


class MissingDependency(ModelError, ImportError):  # noqa: N818 - reads as a status
    """The backend needs an optional extra that is not installed; the message says which."""


class SessionError(CoserveError):
    """A session's stored state could not be saved, found or resumed."""


class SessionNotFound(SessionError, KeyError):  # noqa: N818 - reads as a status, like HTTP's
    """No stored session matches the resume token (unknown, expired, or another app's)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SessionConflict(SessionError):  # noqa: N818 - reads as a status, like HTTP 409
    """A write lost to a newer owner (fencing) or a newer version: the caller's copy is stale."""


class SessionStoreError(SessionError):
    """The session store failed or cannot be reached; the session cannot be made durable."""
