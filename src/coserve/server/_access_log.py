"""Structured logs: an access-log line per request, and JSON lines for every log record.

``coserve serve --log-format json`` writes each log record as one JSON object per line, and adds
a line per inference request on the ``coserve.access`` logger with its protocol, model, version,
status, latency, queue time, execution time, batch size and trace id. The lines are written by a
thread behind a bounded queue (:func:`json_logging`), so a slow log pipe never stalls the event
loop; lines that find the queue full are dropped, counted, and the count is logged once there is
room again.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import orjson

if TYPE_CHECKING:
    from coserve.models import ModelHandle
    from coserve.server._service import Call

__all__ = ["AccessLog", "JsonFormatter", "json_logging"]

ACCESS_LOGGER = "coserve.access"
_QUEUE_SIZE = 10_000  # lines held for the writer thread; beyond, lines are dropped and counted


def _trace_id(call: Call) -> str | None:
    """The request's trace id: its span's, else the one in the ``traceparent`` it came with."""
    span = call.span
    if span is not None:
        context = span.get_span_context()
        if context.is_valid:
            return f"{context.trace_id:032x}"
    parent = call.traceparent
    # version "-" 32 hex "-" 16 hex "-" 2 hex; the id is all zeros when invalid
    if parent and len(parent) >= 55 and parent[2] == "-" and parent[35] == "-":
        trace_id = parent[3:35].lower()
        if trace_id.strip("0") and all(c in "0123456789abcdef" for c in trace_id):
            return trace_id
    return None


class AccessLog:
    """Writes one ``coserve.access`` record per finished request.

    The record's message is a short text line; its ``access`` attribute holds the fields, which
    :class:`JsonFormatter` writes as the line's own keys.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)

    def write(
        self, call: Call, handle: ModelHandle | None, status: int | str, seconds: float
    ) -> None:
        """Log one request."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        fields = {
            "protocol": call.protocol,
            "model": handle.name if handle is not None else None,
            "version": handle.version if handle is not None else None,
            "status": status,
            "latency_ms": round(seconds * 1e3, 3),
            "queue_ms": None if call.queue is None else round(call.queue * 1e3, 3),
            "execution_ms": None if call.execution is None else round(call.execution * 1e3, 3),
            "batch_size": call.batch_size,
            "trace_id": _trace_id(call),
        }
        logger.info(
            "%s %s %s %.3f ms",
            call.protocol,
            fields["model"] or "-",
            status,
            fields["latency_ms"],
            extra={"access": fields},
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and an access line's fields.

    Args:
        static: Keys written on every line (a worker's index, say).
    """

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object, without a newline."""
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self._static,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class _BoundedQueueHandler(logging.handlers.QueueHandler):
    """A queue handler that drops (and counts) records when its queue is full."""

    def __init__(self, records: queue.Queue[Any]) -> None:
        super().__init__(records)
        self.dropped = 0
        self._lock = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The stock prepare formats with this handler's formatter (text); the writer's JSON
        # formatter needs the record as it is, with its message merged and exception text kept.
        record = logging.makeLogRecord(record.__dict__)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:  # say how many went missing, first thing once there is room
                with self._lock:
                    dropped, self.dropped = self.dropped, 0
                note = logging.makeLogRecord(
                    {
                        "name": "coserve.server",
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "msg": f"{dropped} log lines dropped: the log writer fell behind",
                    }
                )
                try:
                    self.queue.put_nowait(note)
                except queue.Full:
                    with self._lock:
                        self.dropped += dropped
                    raise
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self.dropped += 1


def json_logging(
    level: int | str, *, static: dict[str, Any] | None = None, stream: TextIO | None = None
) -> Callable[[], None]:
    """Send every log record to ``stream`` (stderr) as JSON lines, written by a thread.

    Returns:
        A function that stops the writer thread, after it has written what is queued.
    """
    records: queue.Queue[Any] = queue.Queue(_QUEUE_SIZE)
    writer = logging.StreamHandler(stream if stream is not None else sys.stderr)
    writer.setFormatter(JsonFormatter(static))
    listener = logging.handlers.QueueListener(records, writer)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_BoundedQueueHandler(records))
    root.setLevel(level)
    listener.start()
    return listener.stop
