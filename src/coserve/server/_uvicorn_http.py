"""uvicorn's httptools HTTP/1.1 protocol: one write per response, and bounds on what a client holds.

The connections that coserve's own protocol (``_protocol``) hands over, everything but plain
inference requests, run on this: health, metadata, metrics, TF Serving, WebSocket handshakes and
malformed heads. Parsing, keep-alive, pipelining and WebSocket upgrades are uvicorn's own code;
this subclass adds what uvicorn lacks.

One write per response. Profiling the server under load (benchmarks/README.md) found a third of
the event loop's time in ``transport.write``: uvicorn writes a response's head and body
separately. Here writes made during one pass of the event loop are joined and sent once at the
end of it (or at once, past 64 KiB, so that the transport's flow control sees them).

Limits (``ServerLimits``, from the app's state). The parser is fed one request head at a time, cut
at its blank line, so what it holds is counted before it is fed: a head over ``max_header_size``
bytes, or with more than ``max_headers`` header lines, gets 431 without its excess ever reaching
the parser (a head right behind a chunked body, which only the parser can delimit, may reach it
within that one read, and is measured when complete). A malformed request gets 400, in coserve's
error shape, with uvicorn's message. A head must arrive within ``head_timeout`` of its first byte;
a body may go ``body_timeout`` without a byte, and once it has taken longer than that it must
average ``min_body_rate`` bytes/s; else 408. One timer per connection watches those deadlines; it
is armed only while a head or body is incomplete, and it stops while reading is paused (the client
cannot send then). A request whose body is complete is never timed out: its handler runs. A
WebSocket handshake carrying a body is refused with 400 before upgrading. A refusal is sent after
the responses to the requests before it, then the connection is half-closed and what the client
still sends is read and dropped for a moment (so that it reads the answer rather than a reset),
then closed.

Memory per connection. Reading pauses while the transport's write buffer is over its high-water
mark (the client is not reading its answers), while ``_MAX_PIPELINED`` parsed requests wait
behind the one being answered (8), and while more than 64 KiB of request body waits for the app;
bytes already read but not yet parsed are held (one read, at most 256 KiB) and parsed once the
client catches up. So a connection holds at most about: one read (256 KiB) + ``_MAX_PIPELINED``
request heads (each under ``max_header_size``) + 64 KiB and one read of request body not yet
taken by the app + the write buffer's high-water mark (64 KiB) and one response's largest single
write (plus what the app itself keeps, such as a body it reads whole, at most
``max_request_size``). A client that never reads its answers holds its connection, with that
bound, until it reads or goes.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from typing import Any, Final

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from coserve.server._limits import DRAIN_IDLE_GRACE, limits_of

__all__ = ["UvicornHttpProtocol"]

_MAX_PIPELINED: Final = 8
"""Parsed requests that may wait behind the one being answered before reading pauses."""
_FLUSH_AT: Final = HIGH_WATER_LIMIT
"""Coalesced bytes that are written at once rather than at the end of the loop pass."""
_LINGER: Final = 2.0
"""Seconds a refused connection, half-closed, still reads (and drops) before it closes."""
_SLACK: Final = 0.001  # timers may fire a clock tick early

_IDLE, _HEAD, _BODY = 0, 1, 2  # where the parser is in the current request
_BLANK_LINES = re.compile(rb"[\r\n]*")  # skipped between requests, as the parser does
_HEAD_END: Final = b"\r\n\r\n"
_CRLF: Final = b"\r\n"


class _CoalescingTransport:
    """A transport whose writes wait for the end of the current loop pass, then go as one.

    Past ``_FLUSH_AT`` buffered bytes it writes at once, so that a response streamed within one
    pass reaches the transport's write buffer, and its high-water mark pauses the sender.
    """

    __slots__ = ("_buffer", "_loop", "_size", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer:
            self._loop.call_soon(self.flush)
        buffer.append(data)
        self._size += len(data)
        if self._size >= _FLUSH_AT:
            self.flush()

    def writelines(self, lines: Iterable[bytes]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is buffered now."""
        buffer = self._buffer
        if not buffer:
            return
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._size = 0
        if not self.transport.is_closing():
            self.transport.write(data)

    def discard(self) -> None:
        """Drop what is buffered (the connection is gone)."""
        self._buffer.clear()
        self._size = 0

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.discard()
        self.transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + self._size

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, pause_reading, set_protocol, ...: the real transport's.
        return getattr(self.transport, name)


class _ReadGate(FlowControl):
    """uvicorn's flow control, whose resumes the protocol may refuse.

    uvicorn resumes reading whenever a response completes or the app asks for body; the
    protocol keeps it paused while the client is not reading its answers, while requests are
    queued or while body waits for the app.
    """

    def __init__(self, transport: asyncio.Transport, protocol: UvicornHttpProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def pause_reading(self) -> None:
        self._protocol._freeze()
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self._protocol._may_read():
            super().resume_reading()
            self._protocol._thaw()


class _RejectedError(Exception):
    """Raised from a parser callback to stop the parser; the refusal is on the protocol."""


def _skip_blank_lines(data: bytes, pos: int) -> int:
    blank = _BLANK_LINES.match(data, pos)
    return pos if blank is None else blank.end()


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class UvicornHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` with coalesced writes, limits and bounded buffering.

    Takes the arguments of uvicorn's HTTP protocols; the limits are those of the app
    (``limits_of(config.app)``).
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = limits_of(config.app)
        self._max_header_size = limits.max_header_size
        self._max_headers = limits.max_headers
        self._head_timeout = limits.head_timeout
        self._body_timeout = limits.body_timeout
        self._min_body_rate = limits.min_body_rate
        # How much later than due a timer re-checks (bounds re-arming for a steady body).
        self._recheck = min(limits.head_timeout, limits.body_timeout) / 8
        self._coalescing: _CoalescingTransport | None = None
        # Where the parser is, and the current request's counts.
        self._phase = _IDLE
        self._head_size = 0  # head bytes fed so far
        self._tail = b""  # the head's last bytes fed: its blank line may straddle two reads
        self._content_length = -1  # -1: none or not known
        self._chunked = False
        self._body_received = 0
        # Clocks (loop time) and the one timer.
        self._now = 0.0
        self._head_started_at = 0.0
        self._body_started_at = 0.0
        self._rate_at = 0.0  # the start of the body's current rate window...
        self._rate_bytes = 0  # ...and the body bytes received by then
        self._last_byte_at = 0.0
        self._frozen_at: float | None = None  # reading paused since (deadlines stop)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Bytes read but not yet parsed (held while reading is paused), from ``_stash_at``.
        self._stash = b""
        self._stash_at = 0
        self._headers_done: list[tuple[bytes, bytes]] | None = None  # the last complete head's
        self._running: RequestResponseCycle | None = None  # the request whose task runs
        self._rejection: tuple[int, str] | None = None  # raised from a parser callback
        self._refused = False
        self._refusal: bytes | None = None  # the answer to send once the earlier ones are out
        self._upgraded = False
        self._draining = False
        self._closing_cycle: RequestResponseCycle | None = None  # the one whose answer closes

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Set up the connection as uvicorn does, then buffer its writes and gate its reads."""
        super().connection_made(transport)
        self.flow = _ReadGate(transport, self)
        self._coalescing = _CoalescingTransport(transport, self.loop)
        self.transport = self._coalescing  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Feed the parser a head or a body at a time, within the limits."""
        if self._refused:
            return  # refused: what the client still sends is dropped
        if self._stash:  # reading was paused with bytes in hand: keep the order
            self._stash = self._stash[self._stash_at :] + data
            self._stash_at = 0
            return
        self._now = self._last_byte_at = self.loop.time()
        if self._phase and self.timeout_keep_alive_task is not None:
            self._unset_keepalive_if_required()
        self._feed(data, 0)

    def eof_received(self) -> None:
        """The client half-closed: send what is buffered before the transport closes itself."""
        if self._coalescing is not None:
            self._coalescing.flush()
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop what is buffered (nobody to send it to), then clean up as uvicorn does."""
        self._cancel_timer()
        self._stash = b""
        if self._coalescing is not None:
            self._coalescing.discard()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its requests too."""
        super().pause_writing()
        self.flow.pause_reading()

    def resume_writing(self) -> None:
        """The client caught up: parse what is held, and read on."""
        super().resume_writing()
        self._continue()

    # -- uvicorn's hooks ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Server shutdown: answer what the client has sent, each answer closing the connection.

        uvicorn closes an idle connection at once, which loses a request its client sent just
        before; here an idle connection waits ``DRAIN_IDLE_GRACE`` seconds for one, as coserve's
        own protocol does.
        """
        self._draining = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._close_after(cycle)
            return
        self.loop.call_later(DRAIN_IDLE_GRACE, self._close_if_idle)

    def _close_after(self, cycle: RequestResponseCycle) -> None:
        """Make ``cycle``'s answer the one that closes the connection, in place of an earlier one.

        Only the newest request parsed carries the close: one parsed later (pipelined, or
        held while reading was paused) must not be cut off by an earlier answer's close. An
        earlier mark whose answer has begun stays (its close is on its way).
        """
        previous = self._closing_cycle
        if previous is cycle or not cycle.keep_alive:
            return  # marked already, or the client asked to close anyway
        if previous is not None and not previous.response_started:
            previous.keep_alive = True
        cycle.keep_alive = False
        self._closing_cycle = cycle

    def _close_if_idle(self) -> None:
        if self._upgraded or self.transport.is_closing():
            return
        cycle = self.cycle
        if (cycle is None or cycle.response_complete) and self._phase == _IDLE:
            self.transport.close()
        elif cycle is not None:
            self._close_after(cycle)  # it closes once this answer is out

    def handle_websocket_upgrade(self) -> None:
        """Hand the real transport, reading, to the WebSocket protocol: it does its own framing."""
        self._upgraded = True
        self._cancel_timer()
        if self._coalescing is not None:
            self._coalescing.flush()
            self.transport = self._coalescing.transport
            self._coalescing = None
        if self.flow.read_paused:  # the handshake came from held bytes
            self.flow.read_paused = False
            self.transport.resume_reading()
        super().handle_websocket_upgrade()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        """Start the next queued request as uvicorn does; then parse on, or send a refusal."""
        super().on_response_complete()
        cycle = self.cycle
        if (
            not self._refused
            and self._phase == _BODY
            and cycle is not None
            and cycle.response_complete
        ):
            # Answered before its body was all read (a 413 from the declared length, say): the
            # rest of the body is nobody's, and waiting for the app to take it would hold the
            # connection for ever. Close it, after a linger, as after a refusal.
            self._refuse(400, "")
            return
        if self._phase:  # the next request is under way: its deadlines apply, not keep-alive's
            self._unset_keepalive_if_required()
        if self._refused:
            if self._refusal is not None and not self._in_flight():
                self._send_refusal()
        else:
            self._continue()

    # -- parser callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep the header as uvicorn does; count the lines, note how the body is framed."""
        headers = self.headers
        if len(headers) >= self._max_headers:
            self._rejection = (431, f"the request has more than {self._max_headers} headers")
            raise _RejectedError
        name = name.lower()
        if name == b"content-length":
            self._content_length = int(value) if value.isdigit() else -1
        elif name == b"transfer-encoding":
            self._chunked = True
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Refuse an oversized head or a WebSocket handshake with a body; else uvicorn's."""
        if self._phase == _IDLE and self._head_too_large():  # began inside a body's slice
            self._rejection = (431, self._too_large())
            raise _RejectedError
        if (
            (self._chunked or self._content_length > 0)
            and self.parser.should_upgrade()
            and self._should_upgrade()
        ):
            self._rejection = (400, "a WebSocket handshake must not carry a body")
            raise _RejectedError
        HttpToolsProtocol.on_headers_complete(self)
        if self._draining and self.cycle is not None:
            self._close_after(self.cycle)  # the server is stopping: this answer says so
        self._phase = _BODY
        self._body_started_at = self._rate_at = self._now
        self._rate_bytes = 0
        self._headers_done = self.headers

    def on_body(self, body: bytes) -> None:
        """Count the body's bytes (for its rate), then uvicorn's."""
        self._body_received += len(body)
        HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        """The request is all here: no deadline applies to it any more."""
        HttpToolsProtocol.on_message_complete(self)
        self._phase = _IDLE
        self._content_length = -1
        self._chunked = False
        self._body_received = 0

    def _head_too_large(self) -> bool:
        """Whether a head fed uncut (it began inside a chunked body's slice) is over the limit.

        Counted from what the parser gave (a little under the bytes sent): every other head
        is cut to the limit before it is fed.
        """
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        return size > self._max_header_size

    # -- feeding the parser ------------------------------------------------------------------

    def _feed(self, data: bytes, pos: int) -> None:
        """Feed ``data[pos:]`` to the parser in slices that end where each head or body does.

        A head slice is cut at the head's blank line, and never past what the head may still
        take, so an oversized head is refused before its excess is fed; a body slice is cut at
        the end of its Content-Length. So the parser never takes more than one request per
        slice (a chunked body aside), and reading can stop between any two.
        """
        size = len(data)
        view: memoryview | None = None
        limit = self._max_header_size
        while pos < size:
            if self.flow.write_paused or (self.pipeline and self._queue_full()):
                self._stash, self._stash_at = data, pos  # parsed once the client catches up
                self.flow.pause_reading()
                return
            start = pos
            if self._phase == _BODY:
                remaining = -1 if self._chunked else self._content_length - self._body_received
                end = start + remaining if 0 < remaining < size - start else size
            else:
                if self._phase == _IDLE:
                    if data[start] in _CRLF:
                        start = _skip_blank_lines(data, start)
                        if start == size:
                            return  # blank lines between requests, ignored as the parser does
                    if self.timeout_keep_alive_task is not None:
                        self._unset_keepalive_if_required()  # a request is under way
                    self._phase = _HEAD
                    self._head_size = 0
                    self._tail = b""
                    self._head_started_at = self._now
                budget = limit - self._head_size
                if self._tail:
                    end = self._head_end(data, start, budget)
                else:
                    end = data.find(_HEAD_END, start, start + budget)
                    end = end + 4 if end >= 0 else -1
                if end < 0:
                    if size - start > budget:
                        self._refuse(431, self._too_large())
                        return
                    end = size
            if start or end != size:
                if view is None:
                    view = memoryview(data)  # slices without copies
                piece: bytes | memoryview = view[start:end]
            else:
                piece = data
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                    return
                self._unsupported_upgrade_warning()  # served as plain HTTP, as uvicorn does
            except httptools.HttpParserError:
                self._parser_error()
                return
            pos = end
            if self._phase == _HEAD:  # the head goes on past this slice
                self._head_size += end - start
            elif self._phase == _IDLE and self.headers is not self._headers_done:
                # A head began inside this slice, after a (chunked) body ended: it starts
                # after the slice's last blank line.
                blank = data.rfind(_HEAD_END, start, end)
                start = blank + 4 if blank >= 0 else start
                self._phase = _HEAD
                self._head_started_at = self._now
                self._head_size, self._tail = end - start, b""
            else:
                continue
            self._tail = (self._tail + data[max(start, end - 3) : end])[-3:]
            if self._head_size > limit:
                self._refuse(431, self._too_large())
                return
        if self._phase and self._frozen_at is None:
            self._arm_timer(0.0)

    def _parser_error(self) -> None:
        """Refuse what a parser callback rejected, or a malformed request (400)."""
        rejection, self._rejection = self._rejection, None
        if rejection is None:
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            rejection = (400, message)
        self._refuse(*rejection)

    def _head_end(self, data: bytes, start: int, budget: int) -> int:
        """Where the head's blank line ends in ``data``, if within ``budget`` bytes; else -1.

        Its first bytes may be the end of the previous slice (``_tail``).
        """
        tail = self._tail
        straddle = (tail + data[start : start + 3]).find(_HEAD_END)
        if straddle >= 0:
            end = start + straddle + 4 - len(tail)
            return end if end - start <= budget else -1
        blank = data.find(_HEAD_END, start, start + max(budget, 0))
        return blank + 4 if blank >= 0 else -1

    def _queue_full(self) -> bool:
        """Too many requests, or too much of their bodies, wait behind the one answered."""
        pipeline = self.pipeline
        return len(pipeline) >= _MAX_PIPELINED or (
            sum(len(cycle.body) for cycle, _ in pipeline) > HIGH_WATER_LIMIT
        )

    def _may_read(self) -> bool:
        """Whether reading may resume: nothing held, nothing queued too deep, room to write."""
        if self._refused or self._stash or self.flow.write_paused:
            return False
        if self.pipeline and self._queue_full():
            return False
        cycle = self.cycle
        return not (
            self._phase == _BODY and cycle is not None and len(cycle.body) > HIGH_WATER_LIMIT
        )

    def _continue(self) -> None:
        """Parse the bytes held while reading was paused, if it may go on; then read on."""
        if self._refused or self._upgraded or self.transport.is_closing():
            return
        if self._stash and not (self.flow.write_paused or (self.pipeline and self._queue_full())):
            data, pos = self._stash, self._stash_at
            self._stash = b""
            self._thaw()
            self._now = self.loop.time()
            self._feed(data, pos)
        self.flow.resume_reading()
        if self.flow.read_paused:  # still paused (body waits for the app): deadlines stop
            self._freeze()

    def _too_large(self) -> str:
        return f"the request head is over the {self._max_header_size}-byte limit"

    # -- deadlines ---------------------------------------------------------------------------

    def _freeze(self) -> None:
        """Reading pauses: the client cannot send, so its deadlines stop."""
        if self._frozen_at is None:
            self._frozen_at = self.loop.time()
            self._cancel_timer()

    def _thaw(self) -> None:
        """Reading resumes: deadlines go on from where they stopped."""
        frozen_at = self._frozen_at
        if frozen_at is None:
            return
        self._frozen_at = None
        now = self.loop.time()
        paused = now - frozen_at
        self._head_started_at += paused
        self._body_started_at += paused
        self._rate_at += paused
        self._last_byte_at += paused
        if self._phase and not self._refused:
            self._arm_timer(0.0)

    def _deadline(self) -> float:
        if self._phase == _HEAD:
            return self._head_started_at + self._head_timeout
        timeout = self._body_timeout
        return min(self._last_byte_at, self._rate_at) + timeout

    def _arm_timer(self, earliest: float) -> None:
        """Have the timer fire by the current deadline (one timer, moved only to fire sooner)."""
        when = max(self._deadline(), earliest)
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return  # it fires sooner, and then looks again
            timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """Refuse a head or body past its deadline; else look again at the next one."""
        self._timer = None
        if self._refused or self._upgraded or self._frozen_at is not None:
            return
        if self.transport.is_closing():
            return
        now = self.loop.time() + _SLACK
        if self._phase == _HEAD:
            if now >= self._head_started_at + self._head_timeout:
                self._refuse(408, f"the request head took over {self._head_timeout:g} s")
                return
        elif self._phase == _BODY:
            cycle = self.cycle
            if cycle is not None and cycle.waiting_for_100_continue:
                # The client waits for "100 Continue", sent when the app asks for the body.
                self._body_started_at = self._last_byte_at = self._rate_at = now
                self._rate_bytes = self._body_received
            elif now >= self._last_byte_at + self._body_timeout:
                self._refuse(408, f"no byte of the request body for {self._body_timeout:g} s")
                return
            elif now >= self._rate_at + self._body_timeout:
                # The rate over each window of body_timeout seconds, not since the start: a
                # body sent fast and then a byte every few seconds must not hold on for long.
                elapsed = now - self._rate_at
                if self._body_received - self._rate_bytes < self._min_body_rate * elapsed:
                    self._refuse(
                        408, f"the request body came slower than {self._min_body_rate} bytes/s"
                    )
                    return
                self._rate_at, self._rate_bytes = now, self._body_received
        else:
            return
        self._arm_timer(now + self._recheck)

    # -- refusing ----------------------------------------------------------------------------

    def _in_flight(self) -> bool:
        """Whether an earlier request is still being answered (or waits to be)."""
        running = self._running
        busy = running is not None and not running.response_complete and not running.disconnected
        return busy or bool(self.pipeline)

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` to the request being read, once the ones before it are answered.

        Then the connection closes; nothing more is parsed.
        """
        if self._refused:
            return
        self._refused = True
        self._stash = b""
        self._cancel_timer()
        self.flow.pause_reading()
        answer = True
        cycle = self.cycle
        if self._phase == _BODY and cycle is not None and not cycle.response_complete:
            # The request refused is the one whose body was being read: it gets no other answer.
            if self.pipeline and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()  # it was queued: it never runs
            else:  # it runs: its app sees the client gone
                answer = not cycle.response_started
                cycle.disconnected = True
                cycle.message_event.set()
        elif self._phase == _BODY:
            answer = False  # answered already (before its body was read): just close
        if answer:
            body = _error_body(message)
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content += (name, b": ", value, b"\r\n")
            content += (
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
                body,
            )
            self._refusal = b"".join(content)
        else:
            self._refusal = b""
        if not self._in_flight():
            self._send_refusal()

    def _send_refusal(self) -> None:
        """Send the refusal, half-close, and drop what the client still sends for a moment.

        Closing with unread bytes would reset the connection, and the client could lose the
        answer; so the read side stays open for ``_LINGER`` seconds or until the client closes.
        """
        refusal, self._refusal = self._refusal, None
        transport = self.transport
        if transport.is_closing():
            return
        if refusal:
            transport.write(refusal)
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._cancel_timer()
        self._timer = self.loop.call_later(_LINGER, transport.close)
        if self.flow.read_paused:  # read and drop
            self.flow.read_paused = False
            transport.resume_reading()
