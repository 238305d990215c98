"""The one error policy: every protocol gets its statuses and log level from ``_errors``."""

from __future__ import annotations

import logging

import pytest

from coserve import (
    BatcherClosed,
    BatchFailed,
    DeadlineExceeded,
    GraphStopped,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    QueueFull,
    RequestTooLarge,
    UnmatchedSignal,
    Unsupported,
)
from coserve.server._errors import describe, report, status_of


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidInput("bad"), 400, "INVALID_ARGUMENT"),
        (ModelNotFound("no model 'x'"), 404, "NOT_FOUND"),
        (RequestTooLarge("big"), 413, "RESOURCE_EXHAUSTED"),
        (QueueFull("full"), 429, "UNAVAILABLE"),
        (Unsupported("no classify"), 501, "UNIMPLEMENTED"),
        (BatcherClosed("closing"), 503, "UNAVAILABLE"),
        (GraphStopped("stopped"), 503, "UNAVAILABLE"),
        (DeadlineExceeded("late"), 504, "UNAVAILABLE"),
        (UnmatchedSignal("alone"), 504, "DEADLINE_EXCEEDED"),
        (BatchFailed("the model raised"), 500, "INTERNAL"),
        (ModelLoadError("cannot load"), 500, "INTERNAL"),
    ],
)
def test_each_error_has_one_http_status_and_one_grpc_code(
    error: Exception, status: int, code: str
) -> None:
    """The same table answers for HTTP and gRPC; the message is the error's own."""
    failure = describe(error)
    assert (failure.status, failure.grpc_code) == (status, code)
    assert failure.message == str(error)
    assert status_of(error) == status
    assert failure.internal == (status == 500)


def test_a_client_mistake_is_not_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """Only the model's failures and bugs reach the error log."""
    with caplog.at_level(logging.DEBUG, logger="coserve.server"):
        report(InvalidInput("input 'x' is missing"), "inference on m")
        report(QueueFull("full"), "inference on m")
    assert caplog.records
    assert all(record.levelno < logging.WARNING for record in caplog.records)


def test_a_bug_is_a_logged_internal_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Anything that is not a CoserveError is the server's fault: 500, INTERNAL, logged."""
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError as bug:
        with caplog.at_level(logging.ERROR, logger="coserve.server"):
            failure = report(bug, "inference on m")
    assert (failure.status, failure.grpc_code) == (500, "INTERNAL")
    assert "ZeroDivisionError" in failure.message
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
