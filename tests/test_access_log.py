"""The access log's lines and the JSON log writer, without a server.

test_tracing.py runs ``coserve serve --log-format json`` end to end.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import sys

import pytest

from coserve.server._access_log import AccessLog, JsonFormatter, _BoundedQueueHandler, json_logging
from coserve.server._service import Call, trace_context

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_trace_context_reads_http_headers_and_grpc_metadata() -> None:
    parent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    assert trace_context([(b"traceparent", parent.encode()), (b"tracestate", b"a=1")]) == (
        parent,
        "a=1",
    )
    assert trace_context((("traceparent", parent), ("x-other", "1"))) == (parent, None)
    assert trace_context([]) == (None, None)


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01", TRACE_ID),
        (f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", TRACE_ID),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # invalid: zeros
        ("not a traceparent", None),
        (f"00-{TRACE_ID[:-1]}z-00f067aa0ba902b7-01", None),
        (None, None),
    ],
)
def test_an_access_line_without_tracing_names_the_incoming_trace(
    caplog: pytest.LogCaptureFixture, traceparent: str | None, trace_id: str | None
) -> None:
    call = Call("http", traceparent)
    with caplog.at_level(logging.INFO, logger="coserve.access"):
        AccessLog().write(call, None, 404, 0.0125)
    (record,) = caplog.records
    fields = record.access  # type: ignore[attr-defined]
    assert fields == {
        "protocol": "http",
        "model": None,
        "version": None,
        "status": 404,
        "latency_ms": 12.5,
        "queue_ms": None,
        "execution_ms": None,
        "batch_size": None,
        "trace_id": trace_id,
    }
    line = json.loads(JsonFormatter({"worker": 1}).format(record))
    assert line["logger"] == "coserve.access"
    assert line["level"] == "info"
    assert line["worker"] == 1
    assert line["trace_id"] == trace_id
    assert line["message"] == "http - 404 12.500 ms"


def test_json_lines_keep_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info=True
        )
        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed here"
    assert "ValueError: boom" in line["exception"]


def test_a_full_log_queue_drops_lines_and_says_how_many() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue(2)
    handler = _BoundedQueueHandler(records)
    logger = logging.Logger("bounded")
    logger.addHandler(handler)
    for i in range(5):
        logger.warning("line %d", i)
    assert handler.dropped == 3
    assert [records.get_nowait().getMessage() for _ in range(2)] == ["line 0", "line 1"]
    logger.warning("line 5")
    assert handler.dropped == 0
    assert records.get_nowait().getMessage() == ("3 log lines dropped: the log writer fell behind")
    assert records.get_nowait().getMessage() == "line 5"


def test_json_logging_writes_every_record_from_its_thread() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stop = json_logging("INFO", stream=stream)
    try:
        logging.getLogger("coserve.server").info("hello %s", "there")
        logging.getLogger("coserve.server").debug("not at info")
    finally:
        stop()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["message"] == "hello there"
    assert line["logger"] == "coserve.server"
