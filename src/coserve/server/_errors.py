"""The one error policy of every protocol: an exception's HTTP status, gRPC status and log level.

Every driver (native HTTP, ASGI, WebSocket, TF Serving REST, both gRPC services, sessions) asks
:func:`describe` what a failure means, so a client's mistake is never a 500 or an ``INTERNAL`` on
one protocol and a 400 on another. The gRPC column follows Triton's mapping; the log level keeps
a client's mistakes out of the error log, which is for the model's own failures and bugs.

==========================  ======  ===================  =====  ================================
error                       HTTP    gRPC                 log    when
==========================  ======  ===================  =====  ================================
InvalidInput                400     INVALID_ARGUMENT     debug  the request does not fit
ModelNotFound               404     NOT_FOUND            debug  unknown model or version
RequestTooLarge             413     RESOURCE_EXHAUSTED   debug  over a size limit
QueueFull                   429     UNAVAILABLE          debug  shed: retry later
Unsupported                 501     UNIMPLEMENTED        debug  the API is not implemented
BatcherClosed               503     UNAVAILABLE          debug  starting, or shutting down
GraphStopped                503     UNAVAILABLE          debug  a session's graph stopped
DeadlineExceeded            504     UNAVAILABLE          debug  the request's ``timeout`` passed
UnmatchedSignal             504     DEADLINE_EXCEEDED    debug  a join gave up on its partners
anything else               500     INTERNAL             error  the model failed, or a bug
==========================  ======  ===================  =====  ================================

A queue timeout is ``UNAVAILABLE`` on gRPC, as Triton answers ("Request timeout expired"); the
call's own gRPC deadline is ``DEADLINE_EXCEEDED``, which the gRPC driver reports itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from coserve._exceptions import (
    BatcherClosed,
    CoserveError,
    DeadlineExceeded,
    GraphStopped,
    InvalidInput,
    ModelNotFound,
    QueueFull,
    RequestTooLarge,
    UnmatchedSignal,
    Unsupported,
)

__all__ = ["CLIENT_GONE_STATUS", "Failure", "describe", "report", "status_of"]

logger = logging.getLogger("coserve.server")

CLIENT_GONE_STATUS = 499
"""nginx's "client closed request": never sent, but recorded in the latency metric."""

_TABLE: tuple[tuple[type[Exception], int, str, int], ...] = (
    (InvalidInput, 400, "INVALID_ARGUMENT", logging.DEBUG),
    (ModelNotFound, 404, "NOT_FOUND", logging.DEBUG),
    (RequestTooLarge, 413, "RESOURCE_EXHAUSTED", logging.DEBUG),
    (QueueFull, 429, "UNAVAILABLE", logging.DEBUG),
    (Unsupported, 501, "UNIMPLEMENTED", logging.DEBUG),
    (BatcherClosed, 503, "UNAVAILABLE", logging.DEBUG),
    (GraphStopped, 503, "UNAVAILABLE", logging.DEBUG),
    (DeadlineExceeded, 504, "UNAVAILABLE", logging.DEBUG),
    (UnmatchedSignal, 504, "DEADLINE_EXCEEDED", logging.DEBUG),
)


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed request means to its client and to the log."""

    status: int
    """The HTTP status."""
    grpc_code: str
    """The gRPC status code's name (``grpc.StatusCode[name]``), e.g. ``"INVALID_ARGUMENT"``."""
    level: int
    """The level to log it at: ``ERROR`` only for the model's failures and bugs."""
    message: str
    """What the client is told."""

    @property
    def internal(self) -> bool:
        """Whether the server, not the client, is at fault (HTTP 500, gRPC ``INTERNAL``)."""
        return self.status == 500


def describe(error: BaseException) -> Failure:
    """What ``error`` means: statuses, log level and message, the same on every protocol."""
    if isinstance(error, CoserveError):
        for kind, status, code, level in _TABLE:
            if isinstance(error, kind):
                return Failure(status, code, level, str(error))
        # BatchFailed and the model's own errors: the server failed, not the request.
        return Failure(500, "INTERNAL", logging.ERROR, str(error) or repr(error))
    return Failure(500, "INTERNAL", logging.ERROR, f"internal error: {error!r}")


def status_of(error: BaseException) -> int:
    """The HTTP status ``error`` maps to (500 only for the model's failures and bugs)."""
    return describe(error).status


def report(error: BaseException, what: str) -> Failure:
    """:func:`describe` ``error``, and log it at its level (``what``: the failed request)."""
    failure = describe(error)
    if failure.level >= logging.ERROR:
        logger.error("%s failed: %s", what, failure.message, exc_info=error)
    elif logger.isEnabledFor(failure.level):
        logger.log(failure.level, "%s refused: %s", what, failure.message)
    return failure
