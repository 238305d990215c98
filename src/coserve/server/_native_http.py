"""coserve's HTTP/1.1 protocol: inference requests served natively, everything else by uvicorn.

Profiling ``coserve serve`` under load (benchmarks/README.md) found the event loop spending more
time per inference request in uvicorn's per-request machinery (scope and cycle objects, a task,
ASGI messages, a keep-alive timer per response) than in decoding, batching and encoding
together; and since the loop shares the GIL with the thread that runs the model, every
microsecond of it also delayed the batches. So a connection starts here: requests whose head
:func:`parse_head` accepts (a plain ``POST .../infer`` with a Content-Length) are served by
an :class:`~coserve.server._v2_rest.InferenceExchange`, with one
write per response. At the first request it does not accept, the connection, with every byte not
yet served, is handed to uvicorn's protocol (``UvicornHttpProtocol``) for the rest of its life, so
health checks, metadata, metrics, TF Serving, WebSockets and any malformed request are parsed
and served as under uvicorn (within the same limits; a malformed request's 400 is coserve's
JSON error).

Requests on one connection are served one at a time, in order: a pipelined request waits in the
buffer until the one before it is answered (reading pauses when the buffer is large). A client
that disconnects has its request withdrawn before it runs. One timer per connection (not one per
response) enforces the connection's time limits (``ServerLimits``): keep-alive connections close
after uvicorn's ``timeout_keep_alive`` idle seconds; a head not complete ``head_timeout`` seconds
after it began, or a body that stalls for ``body_timeout`` seconds or, past that, averages less
than ``min_body_rate``, is answered 408 and the connection closed. Past ``max_connections`` open
connections, a new one is answered 503 and closed at once.

Server shutdown (SIGTERM) drains without losing what clients sent: every answer from then on
carries ``Connection: close``; the request being read, and those already in the buffer, are
served; an idle connection stays open for up to ``DRAIN_IDLE_GRACE`` seconds in case its client's
next request is already on its way (a client that just got an answer without ``close`` may have
sent one), and is then closed.

uvicorn options that act per request inside its own protocol (``limit_concurrency``,
``root_path``, proxy headers in the access log) do not apply to natively served requests;
``coserve serve`` sets none of them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Final, cast

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from coserve.models import ModelHandle
from coserve.server._limits import DRAIN_IDLE_GRACE, limits_of
from coserve.server._uvicorn_http import UvicornHttpProtocol
from coserve.server._v2_rest import Headers, InferenceExchange, InferenceRoute

__all__ = ["HANDOFF", "INCOMPLETE", "MAX_HEAD", "CoserveHttpProtocol", "RequestHead", "parse_head"]

# -- the head of an inference request, parsed strictly, or handed off for uvicorn to parse -------
#
# The protocol serves inference requests itself and hands every other connection to uvicorn.
# It only needs the heads of the requests it serves, and those are simple:
# ``POST /v2/models/{m}[/versions/{v}]/infer HTTP/1.1``, a ``Content-Length``, a few headers.
# :func:`parse_head` accepts exactly that and answers :data:`HANDOFF` for anything else: other
# methods, paths and versions, chunked bodies, ``Expect``, upgrades, percent-encoded paths or
# query strings, and any line that is not plainly well-formed (bare LF, folded or malformed headers,
# control characters, repeated Content-Length). uvicorn's parser then handles the request, and its
# errors, as it always has, so nothing this parser lets through is ambiguous.

MAX_HEAD: Final = 16 * 1024
"""A head not complete within this many bytes is handed off (uvicorn decides what to do)."""

_PREFIX: Final = b"POST /v2/models/"
# The request line, with the inference path's model and version. A path segment is visible
# ASCII but "/", "%" and "?": a percent-encoded path or a query string goes to uvicorn, which
# decodes and splits them. The same paths as ``match_infer_path`` (the ASGI path's matcher).
_SEGMENT = rb"([\x21-\x24\x26-\x2e\x30-\x3e\x40-\x7e]*)"
_REQUEST_LINE = re.compile(
    rb"POST /v2/models/" + _SEGMENT + rb"(?:/versions/" + _SEGMENT + rb")?/infer HTTP/1\.1\r\n"
)
# Every header line at once: an RFC 9110 token, a colon, a value without control characters
# (HTAB allowed), CRLF. One match for the block is cheaper than two per line.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_HANDED_OFF_HEADERS: Final = frozenset((b"transfer-encoding", b"expect", b"upgrade"))


class RequestHead:
    """A parsed inference request head."""

    __slots__ = ("content_length", "headers", "keep_alive", "model", "size", "version")

    def __init__(
        self,
        model: str,
        version: str | None,
        headers: list[tuple[bytes, bytes]],
        content_length: int,
        keep_alive: bool,
        size: int,
    ) -> None:
        self.model = model
        self.version = version
        self.headers = headers
        """Every header as ``(lower-case name, value)``, in order."""
        self.content_length = content_length
        self.keep_alive = keep_alive
        """False when the client sent ``Connection: close``."""
        self.size = size
        """Bytes of the head, its blank line included: where the body starts."""


class _Verdict:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


INCOMPLETE: Final = _Verdict("INCOMPLETE")
"""The head is not all here yet."""
HANDOFF: Final = _Verdict("HANDOFF")
"""Not a request this parser serves: hand the connection to uvicorn."""


def parse_head(
    buffer: bytes | bytearray, max_headers: int = 100, max_head: int = MAX_HEAD
) -> RequestHead | _Verdict:
    """Parse the request head at the start of ``buffer``.

    Returns:
        The head; :data:`INCOMPLETE` if more bytes are needed; :data:`HANDOFF` if the request
        is not a plain inference request (or has more than ``max_headers`` header lines, or is
        not complete within ``max_head`` bytes: uvicorn's protocol answers those 431).
    """
    if not buffer.startswith(_PREFIX):
        if len(buffer) >= len(_PREFIX) or not _PREFIX.startswith(bytes(buffer)):
            return HANDOFF
        return INCOMPLETE
    end = buffer.find(b"\r\n\r\n", 0, max_head)
    if end < 0:
        if len(buffer) >= max_head:
            return HANDOFF
        # A line ending in LF alone: not this parser's to judge, and waiting for CRLF CRLF
        # would wait for ever, so the head goes to uvicorn at once (which answers 400). Two
        # counts in C, not a regex: this runs on every read of a partial head.
        if buffer.count(b"\n", 0, max_head) != buffer.count(b"\r\n", 0, max_head):
            return HANDOFF
        return INCOMPLETE
    request_line = _REQUEST_LINE.match(buffer, 0, end + 2)
    if request_line is None:
        return HANDOFF
    fields = bytes(buffer[request_line.end() : end + 2])
    if not _FIELDS.fullmatch(fields):
        return HANDOFF  # also a folded line: it starts with a space, not a token
    model, version = request_line.groups()
    headers = []
    content_length: int | None = None
    keep_alive = True
    lines = fields.split(b"\r\n")[:-1]
    if len(lines) > max_headers:
        return HANDOFF
    for line in lines:
        name, _, value = line.partition(b":")
        value = value.strip(b" \t")
        name = name.lower()
        if name == b"content-length":
            if content_length is not None or not value.isdigit():
                return HANDOFF
            content_length = int(value)
        elif name in _HANDED_OFF_HEADERS:
            return HANDOFF
        elif name == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"upgrade" in tokens:
                return HANDOFF
            if b"close" in tokens:
                keep_alive = False
        headers.append((name, value))
    if content_length is None:
        return HANDOFF
    return RequestHead(
        model.decode("ascii"),
        None if version is None else version.decode("ascii"),
        headers,
        content_length,
        keep_alive,
        end + 4,
    )


# -- the connection ------------------------------------------------------------------------------

_HIGH_WATER = 64 * 1024  # buffered bytes beyond one request's needs that pause reading
# Seconds between a held connection's own looks at its model's queue: a safety net (the line
# wakes it), kept rare because thousands of connections may be held at once.
_HELD_RECHECK = 5.0
_LINGER = 2.0  # seconds a closing connection drops what the client still sends

logger = logging.getLogger("coserve.server")


_TOO_MANY_CONNECTIONS: dict[int, bytes] = {}


def _too_many(limit: int) -> bytes:
    response = _error_response(503, f"the server is at its limit of {limit} connections")
    _TOO_MANY_CONNECTIONS[limit] = response
    return response


def _error_response(status: int, message: str) -> bytes:
    """A complete response that closes the connection: for refusals outside any exchange."""
    body = orjson.dumps({"error": message})
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: application/json\r\nconnection: close\r\n",
            b"content-length: %d\r\n\r\n" % len(body),
            body,
        )
    )


access_logger = logging.getLogger("uvicorn.access")


class CoserveHttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: native inference requests, then uvicorn for anything else.

    Takes the arguments uvicorn gives its HTTP protocols (``http=`` in ``uvicorn.Config``). With
    an app that is not coserve's (``create_app``), every connection goes to uvicorn at once.
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        app = config.app
        self._route: InferenceRoute | None = app if isinstance(app, InferenceRoute) else None
        self._limits = limits_of(app)
        self._max_head = min(MAX_HEAD, self._limits.max_header_size)
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: RequestHead | None = None  # the request whose body is being read...
        self._reading: InferenceExchange | None = None  # ...and its exchange
        self._serving: InferenceExchange | None = None  # the request waiting on its model
        self._discard = 0  # body bytes of a refused request still to skip
        self._keep_alive = True  # False once the client asked to close (or a body was refused)
        self._draining = False  # the server is shutting down: close once nothing is pending
        self._lingering = False  # answered for the last time: dropping input until closed
        self._handed_off = False
        self._advancing = False
        self._read_paused = False
        self._write_paused = False
        self._held = False  # refused for a full queue: read nothing until the queue has room
        self._held_for: ModelHandle | None = None
        self._active_at = 0.0  # when the last byte arrived (or the last answer went out)
        self._head_since: float | None = None  # when the head now being read began
        self._body_since: float | None = None  # when the body now being read (or skipped) began
        self._rate_at = 0.0  # the start of the body's current rate window...
        self._rate_bytes = 0  # ...and the bytes it had then
        self._skipped = 0  # bytes skipped of a refused request's body
        self._drain_since: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._access_log = bool(config.access_log) and access_logger.hasHandlers()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Serve the connection, or give it to uvicorn at once if the app is not coserve's.

        One connection over ``max_connections`` is answered 503 and closed, before any of its
        bytes are read: a flood of connections costs a write each, never a file descriptor
        held.
        """
        self._transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        limit = self._limits.max_connections
        if len(self.server_state.connections) >= limit:
            self._handed_off = True  # nothing more to do here; connection_lost may still come
            self._transport.write(_TOO_MANY_CONNECTIONS.get(limit) or _too_many(limit))
            self._transport.close()
            return
        if self._route is None:
            self._hand_off()
            return
        self.server_state.connections.add(self)
        self._active_at = self.loop.time()
        self._arm_timer(self._active_at + self.config.timeout_keep_alive)

    def data_received(self, data: bytes) -> None:
        """Buffer the bytes; serve the next request unless one is being served."""
        if self._lingering:
            return  # closing: what the client still sends is dropped
        self._active_at = self.loop.time()
        self._buffer += data
        if self._serving is None:
            self._advance()
        else:
            self._regulate_reading()

    def eof_received(self) -> bool:
        """The client closed its side: like uvicorn, close ours (its request is withdrawn)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Withdraw the request being served, if any, and forget the connection."""
        self.server_state.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for exchange in (self._reading, self._serving):
            if exchange is not None:
                exchange.client_gone()
        self._reading = self._serving = None

    def pause_writing(self) -> None:
        """The client is not reading its answers: serve no more until it does."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The client caught up: serve what is buffered."""
        self._write_paused = False
        if self._serving is None:
            self._advance()

    # -- uvicorn's server calls this on shutdown ---------------------------------------------

    def shutdown(self) -> None:
        """Answer what the client has sent, with ``Connection: close``, then close.

        That is the request in progress, any waiting in the buffer, and one that arrives within
        ``DRAIN_IDLE_GRACE`` seconds on an idle connection.
        """
        self._draining = True
        self._held = False  # what the client has sent is served now, full queue or not
        self._held_for = None
        self._drain_since = self.loop.time()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._arm_timer(self._drain_since + DRAIN_IDLE_GRACE)
        if self._serving is None:
            self._advance()

    # -- serving -----------------------------------------------------------------------------

    def _advance(self) -> None:
        """Serve buffered requests in order until one waits on its model or bytes run out."""
        if self._advancing:
            return  # an answer given synchronously inside this loop: it goes on by itself
        self._advancing = True
        try:
            self._serve_buffered()
        finally:
            self._advancing = False
        if self._handed_off:
            return
        transport = self._transport
        assert transport is not None
        self._regulate_reading()
        if self._serving is None and not transport.is_closing():
            self._note_waiting()

    def _note_waiting(self) -> None:
        """Start the clock on the head or body that serving now waits for, if not started."""
        if self._held:  # not reading: the client is not the one who is slow
            self._head_since = self._body_since = None
        elif self._head is not None or self._discard:
            if self._body_since is None:
                self._body_since = self._rate_at = self.loop.time()
                self._rate_bytes = 0
        elif self._buffer and self._head_since is None:
            self._head_since = self.loop.time()

    def _serve_buffered(self) -> None:
        transport = self._transport
        assert transport is not None
        route = self._route
        assert route is not None
        buffer = self._buffer
        while (
            self._serving is None
            and not self._write_paused
            and not self._held
            and not transport.is_closing()
        ):
            if self._discard:
                skipped = min(self._discard, len(buffer))
                self._skipped += skipped
                del buffer[:skipped]
                self._discard -= skipped
                if self._discard:
                    break
                self._body_since = None
            head = self._head
            if head is None:
                if not buffer:
                    break
                parsed = parse_head(buffer, self._limits.max_headers, self._max_head)
                if parsed is INCOMPLETE:
                    break
                if parsed is HANDOFF:
                    self._hand_off()
                    return
                assert isinstance(parsed, RequestHead)
                head = parsed
                self._head_since = None
                del buffer[: head.size]
                too_large = head.content_length > route.state.max_request_size
                if not head.keep_alive or too_large:
                    self._keep_alive = False  # a refused large body is never read: close
                exchange = InferenceExchange(
                    route.service, head.model, head.version, head.headers, self._reply, self._hold
                )
                if exchange.finished:  # refused from its head (404, 413, not ready)
                    self._discard = head.content_length
                    self._skipped = 0
                    continue
                self._head, self._reading = head, exchange
            size = head.content_length
            if len(buffer) < size:
                break  # reading goes on: a body is at most the request size limit
            body = bytes(buffer[:size])
            del buffer[:size]
            serving = self._reading
            assert serving is not None
            self._head = self._reading = None
            self._body_since = None
            self._serving = serving
            serving.body_complete(body)

    def _reply(self, status: int, headers: Headers, body: bytes) -> None:
        """Send an exchange's answer in one write, then serve the next buffered request."""
        served, self._serving = self._serving, None
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            return
        if self._draining and not self._buffer:
            self._keep_alive = False  # the last request the client sent: tell it to go
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        content.append(b"content-length: %d\r\n" % len(body))
        if not self._keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        transport.write(b"".join(content))
        self.server_state.total_requests += 1
        self._active_at = self.loop.time()
        if self._access_log:
            self._log_access(status)
        if not self._keep_alive:
            self._close_softly()
            return
        handle = served.handle if served is not None else None
        if handle is not None and handle.waiting_for_room:
            # Others wait in line for this model's queue: this connection's next request
            # queues behind them rather than taking a place first (and them another 429).
            self._hold(handle)
        if self._buffer or self._read_paused or self._held:
            self._advance()  # the next request, reading to resume, or to pause

    def _log_access(self, status: int) -> None:
        transport = self._transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        access_logger.info('%s - "POST (inference) HTTP/1.1" %d', client, status)

    def _regulate_reading(self) -> None:
        """Read on while the buffer holds at most the body being read plus ``_HIGH_WATER``.

        A client that pipelines requests faster than they are answered (or does not read its
        answers) is held back here, as uvicorn holds back a pipelined request.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head = self._head
        limit = _HIGH_WATER + (head.content_length if head is not None else 0)
        if self._held or len(self._buffer) > limit:
            if not self._read_paused:
                self._read_paused = True
                transport.pause_reading()
        elif self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    # -- a full queue ------------------------------------------------------------------------

    def _hold(self, handle: ModelHandle) -> None:
        """Read no more until the model's queue has a place for this connection.

        When a request met a full queue (answered 429), or when others already wait in line
        for the model whose answer was just sent. Under overload a client that does not back
        off would otherwise send its next request at once, and the event loop would spend
        itself refusing: each refusal is cheap, but a loop pass over thousands of such
        connections delays every batch's hand-over by as much. Held connections wait in the
        kernel, in line, and are resumed one per free place, so in a steady overload few
        requests are refused at all and the model keeps its pace.
        """
        if self._held or self._draining or handle.closed:
            return
        self._held = True
        self._held_for = handle
        handle.notify_when_room(self._room)

    def _room(self) -> bool:
        """The queue has a place for this connection: serve and read again."""
        if not self._held:
            return False  # released by shutdown already: the turn passes on
        self._held = False
        self._held_for = None
        transport = self._transport
        if transport is None or transport.is_closing() or self._handed_off:
            return False
        self._active_at = self.loop.time()  # its wait in line was not idleness
        self._advance()
        return True

    # -- time limits ------------------------------------------------------------------------

    def _arm_timer(self, at: float) -> None:
        self._idle_timer = self.loop.call_at(at, self._check_time)

    def _check_time(self) -> None:
        """Enforce the connection's time limits, then sleep until the next one could be hit.

        Fires rarely: at the keep-alive deadline of an idle connection, at the head or body
        deadline, or every keep-alive period while a request waits on its model. Bytes arriving
        never re-arm it; it re-reads the clocks when it fires.
        """
        self._idle_timer = None
        transport = self._transport
        if transport is None or transport.is_closing() or self._handed_off:
            return
        now = self.loop.time()
        limits = self._limits
        if self._held:
            # A safety net under the line: should a wake-up be missed, a held connection looks
            # for itself now and then (_HELD_RECHECK) whether its model's queue has room.
            handle = self._held_for
            if handle is not None and not handle.queue_full:
                self._room()
                return self._arm_timer(now + self.config.timeout_keep_alive)
            return self._arm_timer(now + _HELD_RECHECK)
        reading = self._serving is None
        if reading and self._head_since is not None:
            deadline = self._head_since + limits.head_timeout
            if now >= deadline:
                self._time_out(f"the request head did not arrive within {limits.head_timeout:g}s")
                return
        elif reading and self._body_since is not None:
            stalled = self._active_at + limits.body_timeout
            if now >= stalled:
                self._time_out(f"no byte of the request body arrived for {limits.body_timeout:g}s")
                return
            # The rate over each window of body_timeout seconds, not since the start: a body
            # sent fast and then a byte every few seconds must not hold its memory for long.
            received = len(self._buffer) if self._head is not None else self._skipped
            window_end = self._rate_at + limits.body_timeout
            if now >= window_end:
                rate = (received - self._rate_bytes) / (now - self._rate_at)
                if rate < limits.min_body_rate:
                    self._time_out(
                        f"the request body arrived at {rate:.0f} bytes/s, under the minimum of "
                        f"{limits.min_body_rate} bytes/s"
                    )
                    return
                self._rate_at, self._rate_bytes = now, received
                window_end = now + limits.body_timeout
            deadline = min(stalled, window_end)
        else:
            idle = reading and self._reading is None and not self._buffer
            if self._draining:
                deadline = (self._drain_since or now) + DRAIN_IDLE_GRACE
            else:
                deadline = self._active_at + self.config.timeout_keep_alive
            if idle and now >= deadline:
                transport.close()
                return
            if not idle:
                deadline = now + self.config.timeout_keep_alive  # look again later
        self._arm_timer(max(deadline, now + 0.001))

    def _close_softly(self) -> None:
        """Close after the last answer without resetting it away.

        Closing with unread bytes makes the kernel send a reset, and the client may then lose
        the answer it has not read yet (a 413 sent before its body, say). So the write side is
        shut, what the client still sends is dropped, and the socket closes when the client
        closes its side or after ``_LINGER`` seconds.
        """
        transport = self._transport
        assert transport is not None
        self._lingering = True
        self._buffer.clear()
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self.loop.call_later(_LINGER, transport.close)
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def _time_out(self, message: str) -> None:
        """Answer 408 to a request that is too slow to arrive, and close the connection."""
        transport = self._transport
        assert transport is not None
        logger.debug("closing a slow connection: %s", message)
        if self._reading is not None:
            self._reading.client_gone()  # its exchange answers nothing now; we do, below
            self._reading = None
        if not self._discard or self._head is not None:
            transport.write(_error_response(408, message))
        self._close_softly()

    # -- handing over to uvicorn -------------------------------------------------------------

    def _hand_off(self) -> None:
        """Give the connection, and every byte not yet served, to uvicorn's protocol."""
        transport = self._transport
        assert transport is not None
        self._handed_off = True
        self.server_state.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        protocol = UvicornHttpProtocol(
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._draining:  # uvicorn told the connections already; this one learns it here
            protocol.shutdown()
        data = bytes(self._buffer)
        self._buffer.clear()
        if data:
            protocol.data_received(data)
